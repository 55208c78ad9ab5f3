"""Reproducibility records: the run manifest, run state, and the orchestration log.

- ``manifest.json``: how to reproduce a run — git commit/branch/dirty (+ ``git.diff``), seed, package
  versions, the exact command, host, SLURM ids, start/end times.
- ``run.json``: what happened — status, error, checkpoints, loss per epoch. Written atomically.
- ``run-experiment.log``: one line per action, ``[YYYY-MM-DD HH:MM:SS] ACTION: …``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchtune", "torchao", "inspect_ai", "transformers", "hydra-core", "submitit", "cruijff")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
              "SLURM_JOB_PARTITION")
# Environment variables never copied into a record, whatever their value.
SECRET_HINTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASS", "CREDENTIAL")


def slurm_job_id() -> str | None:
    """This process's SLURM job as squeue and sacct name it (``12_3`` for an array task)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (readers never see a half-written file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


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


def command_line() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv[0].endswith("launch.py") else sys.argv[0], *sys.argv[1:]]
    return "python " + " ".join(shlex.quote(a) for a in argv)


def write_manifest(run_dir: Path, *, seed: int, config_hash: str, extra: dict | None = None) -> dict:
    cwd = Path.cwd()
    git = git_state(cwd)
    if git.get("dirty"):
        diff = _git(["diff", "HEAD"], cwd) or ""
        (run_dir / "git.diff").write_text(diff)
        git["diff_file"] = "git.diff"
    manifest = {
        "command": command_line(),
        "cwd": str(cwd),
        "seed": seed,
        "config_hash": config_hash,
        "git": git,
        "versions": versions(),
        "host": socket.gethostname(),
        "slurm": {k: os.environ[k] for k in SLURM_VARS if k in os.environ},
        "start": stamp(),
        "end": None,
        **(extra or {}),
    }
    write_json(run_dir / "manifest.json", manifest)
    return manifest


def finish_manifest(run_dir: Path) -> None:
    manifest = read_json(run_dir / "manifest.json")
    manifest["end"] = stamp()
    write_json(run_dir / "manifest.json", manifest)


class ActionLog:
    """The orchestration log: ``[YYYY-MM-DD HH:MM:SS] ACTION: …`` then indented Details/Result."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, action: str, details: str | None = None, result: str | None = None) -> None:
        lines = [f"[{stamp()}] ACTION: {action}"]
        if details:
            lines.append(f"  Details: {details}")
        if result:
            lines.append(f"  Result: {result}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("\n".join(lines) + "\n")
