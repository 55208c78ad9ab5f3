"""The code a process runs from: the project's code as a sweep's launch froze it, or the live project.

A sweep's launch copies what its jobs import from the project (task files, the local modules they
import, ``conf/``, a git repo's tracked files as they are in the working tree) into
``<sweep dir>/.code/<hash>/``, a mirror of the project dir (:mod:`cruijff.sweep.snapshot`). A job
of that launch, and the launch itself once it has taken the copy, runs from it: a task file named
``path/to/file.py@task`` is imported from the copy, and the copy's dir comes first on ``sys.path``,
so the task's own imports of the project's modules are the copy's too. Whatever the copy does not
hold (data, files too big to copy) is read from the project as it is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_active: dict = {}  # root (the copy's dir), digest, origin (the project dir it mirrors)


def activate(root: Path, digest: str, task_paths: list[str] = ()) -> None:
    """Run this process from the frozen copy at ``root``: task files resolve into it, and it (with
    the dirs of ``task_paths``' copies, for imports of modules beside a task file) comes first on
    ``sys.path``."""
    deactivate()
    _active.update(root=Path(root).absolute(), digest=digest, origin=Path.cwd().resolve())
    dirs = list(dict.fromkeys([str(_active["root"])] + [str(Path(frozen_path(p)).parent) for p in task_paths]))
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
