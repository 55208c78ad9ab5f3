"""Code frozen at submit: a sweep's launch copies what its jobs import from the project into
``<sweep dir>/.code/<hash>/``, and every job it submits (fine-tuning, eval, a detached finish job)
runs from that copy, however long it waits in a queue while the project is edited.

The copy mirrors the project dir (the launch's working dir). It holds
- the task files ``eval.tasks`` names (``path/to/file.py@task``) and the local modules they import
  (found by reading their ``import`` lines as Python would import them: beside the task file
  first, then in the project dir; namespace packages, submodules and relative imports included),
- the project's ``conf/``, which the jobs compose their configs from,
- in a git repo, the tracked files as they are in the working tree (uncommitted changes included;
  untracked files are not copied unless a task imports them),
and, for every other entry of the dirs along those files' paths, a link to the live file or dir:
data a task finds beside itself (``Path(__file__).parent / "data"``) is read as it is now. Never
copied: ``outputs/``, the sweep dir, ``.git``, and files over :data:`SIZE_LIMIT` (besides task
files and ``conf/``), which are linked instead; a launch says in one line what it left out.

Its name is the hash of what it copies (each copied file's path and bytes, and the project dir its
links point into): the same code launched twice is one copy, written once (a new untracked file
gets a link in it, not a new copy). It is written to a temporary dir and renamed into place, so a
launch killed while copying leaves no half copy under a hash. A job whose copy is gone fails with
one line naming it; it never runs the live code instead.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from ..config import project_conf, task_specs
from ..records import SweepPlan, layout, snapshot
from ..ui import say

SIZE_LIMIT = 1 << 20  # bytes: a tracked file larger than this is linked, not copied
NEVER = (".git",)     # entries of any dir never copied nor linked
TMP_PREFIX = ".tmp-"  # then the host, the process id and a random part
ABANDONED_S = 3600    # a temporary copy older than this is removed, whoever wrote it


@dataclass
class Snapshot:
    """A frozen copy of the project's code: its hash, its dir, and what was left out of it."""

    digest: str
    root: Path
    files: int
    written: bool = False
    skipped: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes) linked for their size
    outside: list[str] = field(default_factory=list)              # task files outside the project dir
    tasks: list[str] = field(default_factory=list)                # task paths as the config names them


def take(config: DictConfig, sweep_dir: Path, origin: Path | None = None) -> Snapshot:
    """Freeze the code the jobs of this launch will import (see the module's docstring); reuse the
    copy of the same content when there is one."""
    origin = (origin or Path.cwd()).resolve()
    sweep_dir = Path(sweep_dir).absolute()
    exclude = _excluded(origin, sweep_dir)
    tasks = [s.path for s in task_specs(OmegaConf.select(config, "eval.tasks", default=None)) if s.path]
    named, outside = _task_files(tasks, origin, exclude)
    conf = project_conf(origin)
    conf_rel = snapshot.relative_in(conf, origin) if conf is not None else None
    wanted: dict[str, bool] = {}  # rel path -> copied whatever its size
    for rel in _git_files(origin):
        wanted.setdefault(rel, False)
    if conf_rel is not None:
        for rel in _walk(origin, conf_rel):
            wanted[rel] = True
    for rel in named:
        wanted[rel] = True
    files, skipped = {}, []
    for rel in sorted(wanted):
        if _is_excluded(rel, exclude):
            continue
        data = _read(origin / rel, None if wanted[rel] else SIZE_LIMIT)
        if isinstance(data, int):
            skipped.append((rel, data))
        elif data is not None:
            files[rel] = data
    links = _links(origin, set(files), exclude)
    digest = content_hash(files, str(origin))
    root = layout.code_snapshot(sweep_dir, digest)
    written = False
    if not root.is_dir():
        written = _write(root, files, links)
    else:
        _add_links(root, links)
    return Snapshot(digest, root, len(files), written, skipped, outside, tasks)


def content_hash(files: dict[str, bytes], origin: str) -> str:
    """The name of a copy: sha256 over each copied file's path and bytes, in path order, and the
    project dir its links point into (mtimes, modes and the names of what is linked play no part:
    a new untracked file is no new copy)."""
    digest = hashlib.sha256(b"O\0" + origin.encode() + b"\0")
    for rel in sorted(files):
        digest.update(b"F\0" + rel.encode() + b"\0" + hashlib.sha256(files[rel]).digest())
    return digest.hexdigest()[:16]


def freeze(config: DictConfig, sweep_dir: Path) -> Snapshot:
    """Take this launch's copy, run this process from it (the eval cells it plans are keyed by
    the code its jobs run), record it in ``sweep.json`` and say what it left out."""
    snap = take(config, sweep_dir)
    use(snap)
    record(sweep_dir, snap)
    if snap.written:
        say(f"cruijff: code frozen for the jobs: {layout.relative(snap.root, Path.cwd())} ({snap.files} files)")
        if snap.skipped:
            big = max(snap.skipped, key=lambda s: s[1])
            say(f"cruijff: not copied, read live: {len(snap.skipped)} files over {SIZE_LIMIT >> 20} MiB "
                f"(largest {big[0]}, {big[1] >> 20} MiB)")
        if snap.outside:
            say(f"cruijff: not frozen, outside the project dir: {', '.join(snap.outside)}")
    return snap


def use(snap: Snapshot) -> None:
    """Run this process from the copy."""
    snapshot.activate(snap.root, snap.digest, snap.tasks)


def record(sweep_dir: Path, snap: Snapshot) -> None:
    """``sweep.json`` names the copy the launch's jobs run from."""
    plan = SweepPlan.of(sweep_dir)
    if plan is not None and plan.code_snapshot != snap.digest:
        plan.code_snapshot = snap.digest
        plan.save(sweep_dir)


class InSnapshot:
    """A job's function, run from a launch's frozen code (pickled with the job; the copy's dir is
    absolute, as the job's other paths are)."""

    def __init__(self, fn: Callable, root: str, digest: str, tasks: list[str]):
        self.fn, self.root, self.digest, self.tasks = fn, root, digest, tasks
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        snapshot.activate(Path(self.root), self.digest, self.tasks)
        return self.fn(*args, **kwargs)


def frozen(fn: Callable, sweep_dir: Path) -> Callable:
    """``fn`` as a job of this sweep runs it: from the copy its ``sweep.json`` names (as is when none)."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None or not plan.code_snapshot:
        return fn
    root = layout.code_snapshot(Path(sweep_dir).absolute(), plan.code_snapshot)
    if not root.is_dir():
        snapshot.activate(root, plan.code_snapshot)  # one line naming the missing copy
    tasks = [s.path for s in task_specs((plan.eval or {}).get("tasks")) if s.path]
    return InSnapshot(fn, str(root), plan.code_snapshot, tasks)


def freeze_jobs(launcher: Any, runner: Any, sweep_dir: Path) -> Any:
    """The fine-tuning jobs' runner, run from the launch's frozen code: its task function in the
    copy, its configs composed from the copy's ``conf/`` (the copy is taken here when the sweeper
    took none, e.g. Optuna's first batch)."""
    from hydra.types import HydraContext

    snap = getattr(launcher, "code_snapshot", None)
    if snap is None:
        snap = launcher.code_snapshot = freeze(launcher.config, sweep_dir)
    else:
        record(sweep_dir, snap)
    runner.task_function = InSnapshot(runner.task_function, str(snap.root), snap.digest, snap.tasks)
    ctx = runner.hydra_context
    runner.hydra_context = HydraContext(config_loader=_frozen_loader(ctx.config_loader, snap), callbacks=ctx.callbacks)
    return runner


def _frozen_loader(loader: Any, snap: Snapshot) -> Any:
    """Hydra's config loader with the project's ``conf/`` replaced by the copy's."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    search = copy.deepcopy(loader.get_search_path())
    changed = False
    for element in search.get_path():
        if element.provider == "cruijff-project" and str(element.path).startswith("file://"):
            rel = snapshot.relative_in(Path(str(element.path)[len("file://"):]).resolve(), Path.cwd().resolve())
            if rel is not None and (snap.root / rel).is_dir():
                element.path = f"file://{snap.root / rel}"
                changed = True
    return ConfigLoaderImpl(config_search_path=search) if changed else loader


def _excluded(origin: Path, sweep_dir: Path) -> list[str]:
    """Paths (relative to the project dir) never copied or linked: outputs/ and the sweep dir."""
    out = ["outputs"]
    rel = snapshot.relative_in(sweep_dir, origin)
    if rel is not None:
        out.append(rel)
    return out


def _is_excluded(rel: str, exclude: list[str]) -> bool:
    parts = rel.split("/")
    return (any(p in NEVER for p in parts) or "__pycache__" in parts
            or any(rel == e or rel.startswith(e + "/") for e in exclude))


def _task_files(tasks: list[str], origin: Path, exclude: list[str]) -> tuple[list[str], list[str]]:
    """The task files (relative to the project dir) and the local modules they import, found as
    Python imports them (:func:`cruijff.records.snapshot.task_modules`); and the task files outside
    the project dir."""
    outside, found = [], []
    for t in tasks:
        rel = snapshot.relative_in(t, origin)
        if rel is None:
            outside.append(t)
            continue
        if not (origin / rel).is_file():
            continue
        for path in [origin / rel, *snapshot.task_modules(origin / rel, origin)]:
            r = snapshot.relative_in(path, origin)
            if r is not None and not _is_excluded(r, exclude) and r not in found:
                found.append(r)
    return found, outside


def _git_files(origin: Path) -> list[str]:
    """The files git tracks under the project dir (relative to it); none outside a git repo."""
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "--cached"], cwd=origin, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return [p for p in proc.stdout.decode(errors="surrogateescape").split("\0") if p]


def _walk(origin: Path, rel: str) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(origin / rel):
        dirnames[:] = [d for d in dirnames if d not in NEVER and d != "__pycache__"]
        for name in filenames:
            yield (Path(dirpath) / name).relative_to(origin).as_posix()


def _read(path: Path, limit: int | None) -> bytes | int | None:
    """A regular file's bytes (a link to one: its target's); its size when over ``limit``; None
    when it is no file (a tracked file deleted, a submodule) or cannot be read (it is linked)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if limit is not None and size > limit:
                return size
            return f.read()
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError, PermissionError):
        return None


def _links(origin: Path, files: set[str], exclude: list[str]) -> dict[str, str]:
    """For each dir along the copied files' paths, a link to every entry it has that is not copied
    (nor holds a copied file): what the copy leaves out is read live through it."""
    dirs = {""}
    for rel in files:
        parts = rel.split("/")[:-1]
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    links = {}
    for d in dirs:
        try:
            entries = os.listdir(origin / d)
        except OSError:
            continue
        for name in entries:
            rel = f"{d}/{name}" if d else name
            if rel in files or rel in dirs or _is_excluded(rel, exclude):
                continue
            links[rel] = str(origin / rel)
    return links


def _write(root: Path, files: dict[str, bytes], links: dict[str, str]) -> bool:
    """Write the copy under a temporary name, then rename it into place (False: another launch
    put the same copy there first). Files are read-only: the copy is what the jobs run."""
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(parent)
    tmp = parent / f"{TMP_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        for rel, data in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            dest.chmod(0o444)
        for rel, target in links.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, dest)
        tmp.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, root)
        return True
    except OSError:
        if root.is_dir():  # the same content, put there by another launch meanwhile
            return False
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _add_links(root: Path, links: dict[str, str]) -> None:
    """Links for what the project holds now and the copy of the same code does not (a file made
    since it was written): read live, as in a new copy."""
    for rel, target in links.items():
        dest = root / rel
        if not os.path.lexists(dest) and dest.parent.is_dir():
            try:
                os.symlink(target, dest)
            except OSError:
                pass


def _remove_abandoned(parent: Path) -> None:
    """Temporary dirs a launch killed while copying left: one of this host whose process is gone, or
    any untouched for :data:`ABANDONED_S` (another host's launch may still be writing a newer one)."""
    host = socket.gethostname()
    for d in parent.glob(f"{TMP_PREFIX}*"):
        name, pid = d.name[len(TMP_PREFIX):].rsplit("-", 2), ""
        if len(name) == 3:
            pid = name[1]
        dead_here = len(name) == 3 and name[0] == host and pid.isdigit() and not Path(f"/proc/{pid}").exists()
        try:
            old = time.time() - d.stat().st_mtime > ABANDONED_S
        except OSError:
            continue
        if dead_here or old:
            shutil.rmtree(d, ignore_errors=True)
