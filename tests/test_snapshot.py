"""Code frozen at submit: a sweep's jobs import the project's code as the launch copied it into
``<sweep dir>/.code/<hash>/``, whatever is edited while they wait; the next launch sees the edit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import LAUNCH, _git
from cruijff.records import snapshot as active
from cruijff.sweep import snapshot

HELPER = 'WORDS = ["ab", "cd", "ef"]\n'
TASK = '''\
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate

from shared import SUFFIX  # a module of the project's
from words import WORDS  # a module beside the task file

PREFIX = "old"


@task
def probe():
    samples = [Sample(id=i + 1, input=f"Repeat: {w}", target=f"{PREFIX}-{w}{SUFFIX}") for i, w in enumerate(WORDS)]
    return Task(dataset=MemoryDataset(samples), solver=generate(), scorer=match(location="exact"))
'''
EXPERIMENT = """\
# @package _global_
experiment:
  name: frozen
seed: 7
"""


def _project(root: Path) -> Path:
    """A project dir: conf/ with an experiment, a task file importing a module beside it and one
    of the project dir, data."""
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "probe.py").write_text(TASK)
    (root / "tasks" / "words.py").write_text(HELPER)
    (root / "shared.py").write_text('SUFFIX = "."\n')
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "frozen.yaml").write_text(EXPERIMENT)
    (root / "data").mkdir()
    (root / "data" / "big.bin").write_bytes(b"\0" * (snapshot.SIZE_LIMIT + 1))
    return root


def _config(*tasks: str):
    return OmegaConf.create({"eval": {"tasks": [{"name": t} for t in tasks]}})


def _take(root: Path, *tasks: str) -> snapshot.Snapshot:
    cwd = Path.cwd()
    os.chdir(root)
    try:
        return snapshot.take(_config(*tasks), root / "outputs" / "x")
    finally:
        os.chdir(cwd)


def _files(snap: snapshot.Snapshot) -> dict[str, bytes]:
    return {p.relative_to(snap.root).as_posix(): p.read_bytes() for p in snap.root.rglob("*")
            if p.is_file() and not p.is_symlink()}


def test_a_copy_holds_the_tasks_their_modules_and_conf_and_links_the_rest(tmp_path):
    root = _project(tmp_path / "p")
    snap = _take(root, "tasks/probe.py@probe", "exact_match")
    assert sorted(_files(snap)) == ["conf/experiment/frozen.yaml", "shared.py", "tasks/probe.py", "tasks/words.py"]
    assert (snap.root / "data").is_symlink() and os.readlink(snap.root / "data") == str(root.resolve() / "data")
    assert not (snap.root / "outputs").exists()
    assert snap.root == root / "outputs" / "x" / ".code" / snap.digest and snap.written


def test_the_same_content_twice_is_one_copy_and_an_edit_is_another(tmp_path):
    root = _project(tmp_path / "p")
    first = _take(root, "tasks/probe.py@probe")
    again = _take(root, "tasks/probe.py@probe")
    assert again.digest == first.digest and not again.written
    (root / "tasks" / "probe.py").write_text(TASK.replace('"old"', '"new"'))
    edited = _take(root, "tasks/probe.py@probe")
    assert edited.digest != first.digest
    assert sorted(p.name for p in (root / "outputs" / "x" / ".code").iterdir()) == sorted([first.digest, edited.digest])
    assert b'"old"' in (first.root / "tasks" / "probe.py").read_bytes()  # the first copy is as it was


def test_the_hash_covers_every_byte_and_path_and_not_mtimes(tmp_path):
    files = {"tasks/a.py": b"x = 1\n", "conf/b.yaml": b"k: v\n"}
    base = snapshot.content_hash(files, "/p")
    assert snapshot.content_hash(dict(reversed(files.items())), "/p") == base
    assert snapshot.content_hash({**files, "tasks/a.py": b"x = 2\n"}, "/p") != base
    assert snapshot.content_hash({"tasks/A.py": b"x = 1\n", "conf/b.yaml": b"k: v\n"}, "/p") != base
    assert snapshot.content_hash(files, "/q") != base  # its links point elsewhere
    root = _project(tmp_path / "p")
    first = _take(root, "tasks/probe.py@probe")
    os.utime(root / "tasks" / "probe.py", (1, 1))
    assert _take(root, "tasks/probe.py@probe").digest == first.digest


def test_in_a_git_repo_the_tracked_tree_is_copied_with_its_uncommitted_changes(tmp_path):
    root = _project(tmp_path / "p")
    (root / "lib.py").write_text("VALUE = 1\n")
    (root / ".gitignore").write_text("outputs/\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "lib.py", ".gitignore", "tasks", "data")
    _git(root, "commit", "-q", "-m", "init")
    (root / "lib.py").write_text("VALUE = 2\n")  # uncommitted
    (root / "notes.txt").write_text("untracked\n")
    snap = _take(root, "tasks/probe.py@probe")
    files = _files(snap)
    assert files["lib.py"] == b"VALUE = 2\n" and ".gitignore" in files
    assert (snap.root / "notes.txt").is_symlink()  # untracked: read live, not copied
    assert (snap.root / "data").is_symlink()  # too big to copy: read live
    assert snap.skipped == [("data/big.bin", snapshot.SIZE_LIMIT + 1)]
    assert not any(p.startswith(".git/") for p in files)


def test_a_copy_killed_while_written_leaves_nothing_under_a_hash(tmp_path):
    """A temporary copy is removed when its launch ran on this host and is gone, or when it is old;
    a recent one of another host (a login node sharing the filesystem) may still be written: kept."""
    root = _project(tmp_path / "p")
    code = root / "outputs" / "x" / ".code"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here = socket.gethostname()
    (code / f"{snapshot.TMP_PREFIX}{here}-{dead.pid}-0000").mkdir(parents=True)  # a launch killed mid-copy
    elsewhere = code / f"{snapshot.TMP_PREFIX}other-node-{dead.pid}-0001"
    elsewhere.mkdir()
    old = code / f"{snapshot.TMP_PREFIX}other-node-{dead.pid}-0002"
    old.mkdir()
    os.utime(old, (time.time() - snapshot.ABANDONED_S - 60,) * 2)
    snap = _take(root, "tasks/probe.py@probe")
    assert sorted(p.name for p in code.iterdir()) == sorted([snap.digest, elsewhere.name])


def test_a_new_untracked_file_is_no_new_copy_and_is_read_live(tmp_path):
    root = _project(tmp_path / "p")
    first = _take(root, "tasks/probe.py@probe")
    (root / "notes.txt").write_text("new\n")
    (root / "tasks" / "extra.json").write_text("{}\n")
    again = _take(root, "tasks/probe.py@probe")
    assert again.digest == first.digest and not again.written
    assert (first.root / "tasks" / "extra.json").read_text() == "{}\n"  # linked into the copy there is


def test_a_job_whose_copy_is_gone_fails_naming_it_and_never_runs_live_code(tmp_path, monkeypatch):
    from cruijff.errors import CruijffError

    root = _project(tmp_path / "p")
    snap = _take(root, "tasks/probe.py@probe")
    monkeypatch.chdir(root)
    job = snapshot.InSnapshot(lambda: "ran", str(snap.root), snap.digest, ["tasks/probe.py"])
    shutil.rmtree(snap.root)
    with pytest.raises(CruijffError, match=f"frozen code .* is missing: {snap.root} "):
        job()
    assert active.active_digest() is None


SCORING_TASK = '''\
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample

from scoring import VERDICT


@task
def probe():
    return Task(dataset=MemoryDataset([Sample(id=1, input="x", target=VERDICT)]))
'''


def _scoring_project(root: Path, beside: str | None = None) -> Path:
    """A task importing ``scoring`` (the project dir's; another beside the task file when given)."""
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "probe.py").write_text(SCORING_TASK)
    (root / "scoring.py").write_text('VERDICT = "INCORRECT"\n')
    if beside is not None:
        (root / "tasks" / "scoring.py").write_text(f"VERDICT = {beside!r}\n")
    return root


def _identity_and_targets(root: Path, snap: snapshot.Snapshot | None = None) -> tuple[dict, list[str]]:
    """The task's part of an eval cell's key and the targets of its samples, as a single run (the
    project dir) or a sweep's launch and jobs (``snap``, its frozen copy) see them."""
    from cruijff.config import TaskSpec
    from cruijff.evaluate import check_tasks_load, task_identity
    from cruijff.evaluate.backend import build_task
    from cruijff.evaluate.tasks import importable_beside

    for name in [n for n in sys.modules if n == "scoring" or n.startswith("cruijff_user_tasks_")]:
        sys.modules.pop(name)  # each launch and job is a new process: it imports them anew
    spec = TaskSpec("tasks/probe.py@probe")
    data = root / "data" / "none.json"
    try:
        if snap is not None:
            snapshot.use(snap)
        check_tasks_load([spec], data, "input", "output")
        with importable_beside(spec):
            targets = [str(s.target) for s in build_task(spec, data, "input", "output").dataset]
            return task_identity(spec, data, "input", "output"), targets
    finally:
        active.deactivate()
        sys.modules.pop("scoring", None)


def test_an_edited_module_a_task_imports_is_a_new_cell_key_the_same_live_and_frozen(tmp_path, monkeypatch):
    root = _scoring_project(tmp_path / "p")
    monkeypatch.chdir(root)
    live, _ = _identity_and_targets(root)
    snap = _take(root, "tasks/probe.py@probe")
    frozen, _ = _identity_and_targets(root, snap)
    assert live == frozen and list(live["modules"]) == ["scoring.py"]
    (root / "scoring.py").write_text('VERDICT = "CORRECT"\n')
    edited, _ = _identity_and_targets(root)
    assert edited["modules"] != live["modules"]
    assert _identity_and_targets(root, _take(root, "tasks/probe.py@probe"))[0] == edited


def test_a_module_beside_the_task_wins_over_the_project_dirs_in_a_run_and_in_a_sweep(tmp_path, monkeypatch):
    """As Python runs a script: the task file's dir comes first, in the copy, its jobs and the key."""
    root = _scoring_project(tmp_path / "p", beside="CORRECT")
    monkeypatch.chdir(root)
    snap = _take(root, "tasks/probe.py@probe")
    assert "tasks/scoring.py" in _files(snap)
    live, live_targets = _identity_and_targets(root)
    frozen, frozen_targets = _identity_and_targets(root, snap)
    assert live_targets == frozen_targets == ["CORRECT"]
    assert live == frozen and list(live["modules"]) == ["tasks/scoring.py"]


def test_a_namespace_package_submodules_and_relative_imports_are_frozen(tmp_path, monkeypatch):
    root = _scoring_project(tmp_path / "p")
    (root / "tasks" / "probe.py").write_text(SCORING_TASK.replace(
        "from scoring import VERDICT", "from utils.scoring import VERDICT\nfrom utils import helpers"))
    (root / "utils" / "sub").mkdir(parents=True)  # no __init__.py: a namespace package
    (root / "utils" / "scoring.py").write_text("from .sub import consts\nVERDICT = consts.VERDICT\n")
    (root / "utils" / "helpers.py").write_text("")
    (root / "utils" / "sub" / "consts.py").write_text('VERDICT = "INCORRECT"\n')
    (root / "utils" / "unused.py").write_text("")
    snap = _take(root, "tasks/probe.py@probe")
    assert sorted(_files(snap)) == ["tasks/probe.py", "utils/helpers.py", "utils/scoring.py",
                                    "utils/sub/consts.py"]
    assert not (snap.root / "utils").is_symlink() and (snap.root / "utils" / "unused.py").is_symlink()
    (root / "utils" / "sub" / "consts.py").write_text('VERDICT = "CORRECT"\n')  # edited after submit
    for name in ("utils", "utils.scoring", "utils.sub", "utils.sub.consts", "utils.helpers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(root)
    frozen, targets = _identity_and_targets(root, snap)
    assert targets == ["INCORRECT"]  # the job scores with the code of its launch
    assert list(frozen["modules"]) == ["utils/helpers.py", "utils/scoring.py", "utils/sub/consts.py"]
    for name in ("utils", "utils.scoring", "utils.sub", "utils.sub.consts", "utils.helpers"):
        sys.modules.pop(name, None)
    assert _identity_and_targets(root)[0]["modules"] != frozen["modules"]  # the next launch: a new cell


def test_a_task_resolves_into_the_copy_a_process_runs_from(tmp_path, monkeypatch):
    from cruijff.config import TaskSpec

    root = _project(tmp_path / "p")
    snap = _take(root, "tasks/probe.py@probe")
    monkeypatch.chdir(root)
    spec = TaskSpec("tasks/probe.py@probe")
    assert spec.name == "tasks/probe.py@probe"
    try:
        snapshot.use(snap)
        assert spec.name == f"{snap.root}/tasks/probe.py@probe" and spec.label == "probe"
        assert active.active_digest() == snap.digest
    finally:
        active.deactivate()


def test_a_task_checked_in_a_frozen_process_imports_the_project_modules_of_the_copy(tmp_path, monkeypatch):
    """What a job checks before it evaluates (every task loads) imports the copy's modules too, not
    the edited ones of the project dir."""
    from cruijff.config import TaskSpec
    from cruijff.evaluate import check_tasks_load
    from cruijff.evaluate.backend import build_task

    root = _project(tmp_path / "p")
    snap = _take(root, "tasks/probe.py@probe")
    (root / "shared.py").write_text('SUFFIX = "?"\n')
    monkeypatch.chdir(root)
    for name in ("shared", "words"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = TaskSpec("tasks/probe.py@probe")
    try:
        snapshot.use(snap)
        check_tasks_load([spec], root / "data" / "none.json", "input", "output")
        task = build_task(spec, root / "data" / "none.json", "input", "output")
        assert [s.target for s in task.dataset] == ["old-ab.", "old-cd.", "old-ef."]
    finally:
        active.deactivate()
        for name in ("shared", "words"):
            sys.modules.pop(name, None)


def _launch(cwd: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = ["-m", "experiment=frozen", "training=smoke", "peft.lora_rank=8", "optimizer.lr=1e-3",
            "eval.base_model=false", "eval.tasks=[{name: tasks/probe.py@probe}]", *extra]
    return subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "INSPECT_DISPLAY": "none", "PYTHONUNBUFFERED": "1", **(env or {})})


def _targets(run_dir: Path) -> list[str]:
    from inspect_ai.log import read_eval_log

    (log,) = (run_dir / "eval" / "epoch_0").glob("*.eval")
    return sorted(str(s.target) for s in read_eval_log(str(log)).samples)


@pytest.mark.slow
def test_jobs_run_the_code_of_the_launch_and_the_next_launch_sees_the_edit(tmp_path, tiny_model_dir):
    """The task file, the module beside it and conf/ are edited once the launch has frozen them, while
    its fine-tuning job runs (each step made slower for the test: CRUIJFF_TEST_STEP_DELAY_S) and
    before its eval job is even submitted: the jobs run what was launched. The next launch
    evaluates the cell again with the edited code."""
    root = _project(tmp_path)
    sweep = root / "outputs" / "frozen"
    proc = _launch(root, env={"CRUIJFF_TEST_STEP_DELAY_S": "1"})
    deadline = time.time() + 300
    while not (sweep / "sweep.json").exists() or not json.loads((sweep / "sweep.json").read_text()).get(
            "code_snapshot"):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    (root / "tasks" / "probe.py").write_text(TASK.replace('"old"', '"new"'))
    (root / "tasks" / "words.py").write_text('WORDS = ["xy"]\n')
    (root / "shared.py").write_text('SUFFIX = "?"\n')
    (root / "conf" / "experiment" / "frozen.yaml").write_text(EXPERIMENT.replace("seed: 7", "seed: 8"))
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    (run_dir,) = [p.parent for p in sweep.glob("*/run.json")]
    frozen = json.loads((sweep / "sweep.json").read_text())["code_snapshot"]
    assert f"cruijff: code frozen for the jobs: outputs/frozen/.code/{frozen} (4 files)" in out
    assert _targets(run_dir) == ["old-ab.", "old-cd.", "old-ef."]
    assert json.loads((run_dir / "manifest.json").read_text())["code_snapshot"] == frozen
    assert "seed: 7" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert [p.name for p in (sweep / ".code").iterdir()] == [frozen]

    (root / "conf" / "experiment" / "frozen.yaml").write_text(EXPERIMENT)  # the run's config as it trained
    again = _launch(root)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out[-3000:]
    now = json.loads((sweep / "sweep.json").read_text())["code_snapshot"]
    assert now != frozen and sorted(p.name for p in (sweep / ".code").iterdir()) == sorted([frozen, now])
    assert "fine-tuning finished" not in out  # only its eval cell was done again
    assert _targets(run_dir) == ["new-xy?"]
    assert list((run_dir / "eval" / ".stale").rglob("*.eval"))


def _finished(job: str) -> str | None:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", job], capture_output=True,
                         text=True).stdout
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    state = states.get(job, "")
    return state if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None


@pytest.mark.slow
@pytest.mark.slurm
def test_a_held_slurm_job_released_after_an_edit_runs_the_code_of_its_launch(slurm, tmp_path, tiny_model_dir):
    """Detached on SLURM, its jobs held in the queue (``+cluster.sbatch.hold=true``); the task file
    is edited, then the jobs released: the eval+report job scores with the code of the launch."""
    root = _project(tmp_path)
    sweep = root / "outputs" / "frozen"
    proc = _launch(root, "cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=2",
                   "detach=true", "+cluster.sbatch.hold=true")
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    plan = json.loads((sweep / "sweep.json").read_text())
    held = [*plan["detached"]["arrays"], plan["detached"]["finish_job"]]
    try:
        (root / "tasks" / "probe.py").write_text(TASK.replace('"old"', '"new"'))
        subprocess.run(["scontrol", "release", ",".join(held)], check=True, capture_output=True)
        end = time.time() + 600
        while _finished(plan["detached"]["finish_job"]) is None:
            assert time.time() < end, "the eval+report job did not end in 600 s"
            time.sleep(1)
        assert _finished(plan["detached"]["finish_job"]) == "COMPLETED"
    finally:
        subprocess.run(["scancel", *held], capture_output=True)
    (run_dir,) = [p.parent for p in sweep.glob("*/run.json")]
    assert _targets(run_dir) == ["old-ab.", "old-cd.", "old-ef."]
    assert json.loads((run_dir / "manifest.json").read_text())["code_snapshot"] == plan["code_snapshot"]
