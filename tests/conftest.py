"""Shared fixtures: the real launcher, run as a user runs it, on the embedded tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def launch(*args: str, cwd: Path, check: bool = False, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python launch.py ARGS`` from ``cwd`` (outputs/ lands there)."""
    env = {**os.environ, "INSPECT_DISPLAY": "none", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(LAUNCH), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from cruijff import assets

    return assets.tiny_model_dir()


@pytest.fixture(scope="session")
def demo(tmp_path_factory, tiny_model_dir):
    """One demo run (``python launch.py``) in a dirty git work tree; returns (workdir, run_dir, proc)."""
    work = tmp_path_factory.mktemp("demo")
    _git(work, "init", "-q", "-b", "main")
    (work / "notes.txt").write_text("experiment notes\n")
    _git(work, "add", "notes.txt")
    _git(work, "commit", "-q", "-m", "init")
    (work / "notes.txt").write_text("experiment notes, edited\n")  # dirty
    proc = launch(cwd=work, check=True)
    return work, work / "outputs" / "demo" / "default", proc
