"""cruijff installed from a wheel, used from a project dir of the user's own (``cruijff init``)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

pytestmark = pytest.mark.slow

# A run as short as the checks need: one epoch of a few steps, ten samples per task.
QUICK = ["optimizer.lr=1e-3", "peft.lora_rank=8", "training.epochs=1", "eval.limit=10"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The ``bin/`` of a fresh venv with cruijff's wheel (built with ``python -m build``) installed
    without ``-e``. The venv sees this machine's libraries (torch, torchtune, inspect: installing
    them again would take minutes) through a path entry, not the checkout's editable cruijff."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "outputs", "build", "*.egg-info", "__pycache__",
                                                              ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True)
    wheel, = (tmp / "dist").glob("cruijff-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    purelib = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "machine.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "-q",
                    "--no-deps", "--ignore-installed", str(wheel)], check=True, capture_output=True)
    return env_dir / "bin"


def venv_env(bin_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "INSPECT_DISPLAY": "none", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def cruijff(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["cruijff", *args], cwd=cwd, env=venv_env(bin_dir), capture_output=True, text=True,
                          timeout=600)


def test_installed_cruijff_runs_a_project_of_its_own(installed, tmp_path):
    where = subprocess.run(["python", "-c", "import cruijff; print(cruijff.__file__)"], env=venv_env(installed),
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed.parent)), where  # the wheel's cruijff, not the checkout's

    project = tmp_path / "my-study"
    init = cruijff(installed, "init", str(project), cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    for name in ("conf/experiment/example.yaml", "conf/cluster/site.yaml", "data/example.jsonl", "tasks/example.py",
                 ".gitignore", "README.md"):
        assert (project / name).is_file(), name
    again = cruijff(installed, "init", cwd=project)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr

    # a project option shadows the packaged one of the same name
    (project / "conf" / "training").mkdir()
    (project / "conf" / "training" / "smoke.yaml").write_text(
        "defaults:\n  - default\n  - _self_\nepochs: 1\nmax_steps_per_epoch: 7\n")
    proc = cruijff(installed, "-m", "experiment=example", "training=smoke", *QUICK, cwd=project)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1/1 runs finished" in proc.stdout
    sweep_dir = project / "outputs" / "example"
    run_dir, = [p for p in sweep_dir.iterdir() if (p / "run.json").exists()]
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["training"]["max_steps_per_epoch"] == 7  # the project's smoke, not cruijff's (5)
    assert Path(saved["dataset"]["path"]) == Path("data/example.jsonl")
    scores = json.loads((run_dir / "eval" / "epoch_0" / "results.json").read_text())["tasks"]
    assert set(scores) == {"example", "exact_match"}  # the project's own task beside the built-in
    assert all(t["status"] == "success" for t in scores.values())
    assert len(list((sweep_dir / "base").glob("tiny_llama-*"))) == 1 and (sweep_dir / "summary.md").is_file()

    # the run says how to run it again, and that command finds it done
    command = json.loads((run_dir / "manifest.json").read_text())["command"]
    assert command.startswith("cruijff ") and "training=smoke" in command
    rerun = cruijff(installed, *shlex.split(command)[1:], cwd=project)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{run_dir.name}: fine-tuning finished earlier; skipped" in rerun.stdout
    assert json.loads((sweep_dir / "sweep.json").read_text())["command"]["argv"][0] == str(installed / "cruijff")
