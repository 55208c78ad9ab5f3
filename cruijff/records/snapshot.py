"""The code a process runs from: the project's code as a sweep's launch froze it, or the live project.

A sweep's launch copies what its jobs import from the project (task files, the local modules they
import, ``conf/``, a git repo's tracked files as they are in the working tree) into
``<sweep dir>/.code/<hash>/``, a mirror of the project dir (:mod:`cruijff.sweep.snapshot`). A job
of that launch, and the launch itself once it has taken the copy, runs from it: a task file named
``path/to/file.py@task`` is imported from the copy, and the copy's task dirs, then its root, come
first on ``sys.path`` (as Python runs a script: the modules beside the task file first), so the
task's own imports of the project's modules are the copy's too. Whatever the copy does not hold
(data, files too big to copy) is read from the project as it is; a copy that is gone (deleted or
moved since the launch) is an error, never the live code instead.

A task's local modules (:func:`task_modules`) are found the way Python imports them, from the task
file's dir, then the project dir: the copy holds them, and an eval cell's key holds their content.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path
from typing import Iterable

from ..errors import CruijffError

_active: dict = {}  # root (the copy's dir), digest, origin (the project dir it mirrors)


def activate(root: Path, digest: str, task_paths: list[str] = ()) -> None:
    """Run this process from the frozen copy at ``root``: task files resolve into it, and the dirs of
    ``task_paths``' copies, then the copy's root, come first on ``sys.path`` (a module beside a task
    file is found before one of the project dir, as when Python runs the task file). A copy that is
    gone raises one line naming it."""
    deactivate()
    if not Path(root).is_dir():
        raise CruijffError(f"the frozen code of this sweep's launch is missing: {root} (deleted or moved since "
                           f"the launch; its jobs never run the live code instead): launch the sweep again")
    _active.update(root=Path(root).absolute(), digest=digest, origin=Path.cwd().resolve())
    dirs = list(dict.fromkeys([str(Path(frozen_path(p)).absolute().parent) for p in task_paths]
                              + [str(_active["root"])]))
    _active["paths"] = [d for d in dirs if d not in sys.path]
    sys.path[:0] = _active["paths"]


def deactivate() -> None:
    """Back to the live project: the copy's dirs leave ``sys.path``."""
    for d in _active.get("paths", []):
        if d in sys.path:
            sys.path.remove(d)
    _active.clear()


def active_digest() -> str | None:
    """The hash of the frozen copy this process runs from, or None (the live project)."""
    return _active.get("digest")


def code_root() -> Path:
    """The dir this process's project code is imported from: the frozen copy, else the working dir."""
    return _active.get("root") or Path.cwd()


def relative_in(path: str | os.PathLike, origin: Path) -> str | None:
    """Where ``path`` (relative to ``origin``, or absolute) lies inside ``origin``, as a relative
    POSIX path; None when it lies outside it."""
    p = Path(os.path.normpath(Path(origin) / path))
    try:
        rel = p.relative_to(Path(os.path.normpath(origin)))
    except ValueError:
        return None
    return rel.as_posix() if rel.parts else None


def frozen_path(path: str) -> str:
    """The file this process reads for ``path`` (a task file, as the config names it): its frozen
    copy when this process runs from one that holds it, else ``path`` itself."""
    if not _active:
        return path
    rel = relative_in(path, _active["origin"])
    if rel is None:
        return path
    copy = _active["root"] / rel
    return str(copy) if copy.is_file() else path


def task_modules(task_file: str | os.PathLike, root: Path) -> list[Path]:
    """The files of the local modules a task file imports, in turn (not the task file itself): found
    as Python imports them while the task file's dir, then ``root`` (the project dir, or the copy of
    it a process runs from), come first on ``sys.path``: packages' ``__init__.py``, modules, the
    modules of a namespace package (a dir without ``__init__.py``), submodules named in
    ``from pkg import mod``, and relative imports within a package."""
    task = Path(os.path.abspath(task_file))
    search = list(dict.fromkeys([task.parent, Path(os.path.abspath(root))]))
    todo, seen, found = [task], {task}, []
    while todo:
        for path in _imported(todo.pop(), search):
            if path not in seen:
                seen.add(path)
                found.append(path)
                todo.append(path)
    return found


def module_hashes(task_file: str | os.PathLike, root: Path) -> dict[str, str]:
    """The content of a task file's local modules (:func:`task_modules`): sha256 by path relative to
    ``root`` (absolute when outside it), so the project and a frozen copy of it agree."""
    out = {}
    for path in task_modules(task_file, root):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        out[relative_in(path, root) or str(path)] = hashlib.sha256(data).hexdigest()
    return dict(sorted(out.items()))


def _imported(path: Path, search: list[Path]) -> list[Path]:
    """The files of the local modules one Python file imports (absolute imports found in
    ``search``, relative ones in its own package)."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    out: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out += _module_files(alias.name.split("."), search)
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(path.parents):
                continue
            base = [path.parents[node.level - 1]] if node.level else search
            parts = node.module.split(".") if node.module else []
            out += _module_files(parts, base)
            for alias in node.names:  # a submodule: ``from pkg import mod``
                out += _module_files(parts + [alias.name], base)
    return out


def _module_files(parts: list[str], search: Iterable[Path]) -> list[Path]:
    """The files module ``a.b.c`` is made of, found as Python finds it in ``search``: at each level
    the first dir with a package (``__init__.py``) or module file wins; dirs without either are the
    portions of a namespace package, searched together for the next level."""
    out: list[Path] = []
    dirs = list(search)
    for part in parts:
        if part == "*" or not part.isidentifier():
            break
        portions: list[Path] = []
        for d in dirs:
            if (d / part / "__init__.py").is_file():
                out.append(d / part / "__init__.py")
                portions = [d / part]
                break
            if (d / f"{part}.py").is_file():
                out.append(d / f"{part}.py")
                return out
            if (d / part).is_dir():
                portions.append(d / part)
        if not portions:
            break
        dirs = portions
    return out
