"""``manifest.json``: how to reproduce a run — git commit/branch/dirty (+ ``git.diff``), seed,
package versions, the exact command, host, SLURM ids, start/end times, the micro-batch the run
trains with and its retries (``batch_size``, ``gradient_accumulation_steps``, ``retries``)."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from . import layout, snapshot
from .io import read_json, write_json
from .log import stamp

PACKAGES = ("torch", "torchtune", "torchao", "inspect_ai", "transformers", "hydra-core", "submitit", "cruijff")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
              "SLURM_JOB_PARTITION")


def slurm_job_id() -> str | None:
    """This process's SLURM job as squeue and sacct name it (``12_3`` for an array task)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(cwd: Path) -> dict[str, Any]:
    commit = _git(["rev-parse", "HEAD"], cwd)
    if commit is None:
        return {"repo": None}
    status = _git(["status", "--porcelain", "--untracked-files=no"], cwd) or ""
    return {
        "repo": (_git(["rev-parse", "--show-toplevel"], cwd) or "").strip(),
        "commit": commit.strip(),
        "branch": (_git(["rev-parse", "--abbrev-ref", "HEAD"], cwd) or "").strip(),
        "dirty": bool(status.strip()),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


# How the user started cruijff ("python launch.py", "cruijff"), for the jobs it starts: a job's own
# command line is submitit's, so a run of a sweep records the entry and its own overrides.
ENTRY_ENV = "CRUIJFF_ENTRY"


def launcher_argv() -> list[str] | None:
    """The launching command as the Python interpreter runs it again — ``[launch.py or the cruijff
    script, *args]``, or ``["-m", "cruijff", *args]`` — or None in a job cruijff started."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "__main__.py" and argv0.parent.name == "cruijff":
        return ["-m", "cruijff", *sys.argv[1:]]
    if argv0.name in ("launch.py", "cruijff"):
        return [str(argv0.resolve()), *sys.argv[1:]]
    return None


def entry() -> str:
    """How the user started cruijff, as they typed it: ``python launch.py``, ``cruijff`` or ``python -m cruijff``."""
    argv = launcher_argv()
    if argv is None:
        return os.environ.get(ENTRY_ENV, "python launch.py")
    if argv[0] == "-m":
        return "python -m cruijff"
    return "cruijff" if Path(argv[0]).name == "cruijff" else "python " + Path(argv[0]).name


def command_line(run_dir: Path) -> str:
    """The command that runs this run again: the user's own, or, for a run of a sweep, the entry
    with the run's overrides (as one run it lands in the same dir)."""
    if launcher_argv() is not None:
        args = sys.argv[1:]
    else:
        import yaml

        saved = layout.saved_overrides(run_dir)
        args = [str(a) for a in (yaml.safe_load(saved.read_text()) or [])] if saved.exists() else []
    return " ".join([entry(), *(shlex.quote(a) for a in args)])


def write_manifest(run_dir: Path, *, seed: int, config_hash: str, extra: dict | None = None) -> dict:
    cwd = Path.cwd()
    git = git_state(cwd)
    if git.get("dirty"):
        diff = _git(["diff", "HEAD"], cwd) or ""
        (run_dir / "git.diff").write_text(diff)
        git["diff_file"] = "git.diff"
    manifest = {
        "command": command_line(run_dir),
        "cwd": str(cwd),
        "seed": seed,
        "config_hash": config_hash,
        "git": git,
        "versions": versions(),
        "host": socket.gethostname(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
        "start": stamp(),
        "end": None,
        "code_snapshot": snapshot.active_digest(),  # the frozen code it ran from: <sweep dir>/.code/<hash>
        **(extra or {}),
    }
    write_json(run_dir / layout.MANIFEST_FILE, manifest)
    return manifest


def finish_manifest(run_dir: Path) -> None:
    """Record the run's end time in its manifest."""
    update_manifest(run_dir, end=stamp())


def update_manifest(run_dir: Path, **fields: Any) -> None:
    """Set ``fields`` in a run's manifest (the micro-batch it trains with after a retry, its retries)."""
    path = run_dir / layout.MANIFEST_FILE
    write_json(path, {**(read_json(path) or {}), **fields})
