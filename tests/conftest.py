"""Shared fixtures: the real launcher, run as a user runs it, on the embedded tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch.py"
SLURM_CLUSTER = ROOT / "scripts" / "slurm-cluster"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# chats a prompt-parity check lays out: one turn, a system prompt, a system prompt and two turns
CHATS = [
    [{"role": "user", "content": "Capitalize: paris"}, {"role": "assistant", "content": "Paris"}],
    [{"role": "system", "content": "Answer in one word."},
     {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capitalize: paris"},
     {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "And: rome "},
     {"role": "assistant", "content": "Rome"}],
]


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


def wait_for(predicate, timeout: float, what: str, every: float = 0.5) -> None:
    """Poll ``predicate`` until it holds; after ``timeout`` seconds fail, naming ``what`` was awaited."""
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def fake_model_dir(path: Path, cfg) -> Path:
    """A model directory holding (empty) every file the model config names: planning, rendering and
    validating need no weights."""
    from cruijff.config import model_files

    for f in model_files(cfg.model):
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        (path / f).write_bytes(b"")
    return path


def compose_config(*overrides: str):
    """The composed config, as ``python launch.py OVERRIDES`` would see it (no run)."""
    from hydra import compose, initialize_config_dir

    from cruijff.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


# Tests run on three processes (pytest-xdist, --dist loadgroup in pyproject.toml). Tests that share an
# expensive fixture run on one of them, so it is built once; the SLURM tests share one node, so they
# run one at a time.
SHARED = ("array_sweep", "sweep", "merged_run", "installed", "demo")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        group = "slurm" if item.get_closest_marker("slurm") else next(
            (f for f in SHARED if f in getattr(item, "fixturenames", ())), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def model_loads(monkeypatch) -> list:
    """Every ``AutoModelForCausalLM.from_pretrained`` of the test (inspect's hf provider loads through it)."""
    import transformers

    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counting(cls, *a, **kw):
        loads.append(a[0] if a else kw.get("pretrained_model_name_or_path"))
        return real(cls, *a, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counting))
    return loads


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


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM cluster (scripts/slurm-cluster), started if it is not up.

    Tests using it are skipped, with the reason, where it cannot start (not root, no packages).
    """
    conf = Path(os.environ.get("CRUIJFF_SLURM_DIR", "/tmp/cruijff-slurm")) / "etc" / "slurm.conf"
    started = False
    if subprocess.run([str(SLURM_CLUSTER), "status"], capture_output=True).returncode != 0:
        if os.geteuid() != 0:
            pytest.skip("SLURM: starting the single-node cluster needs root (scripts/slurm-cluster start)")
        proc = subprocess.run([str(SLURM_CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["no output"]
            pytest.skip(f"SLURM could not start here: {lines[-1]}")
        started = True
    os.environ["SLURM_CONF"] = str(conf)
    yield conf
    if started:
        subprocess.run([str(SLURM_CLUSTER), "stop"], capture_output=True)
