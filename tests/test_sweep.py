"""`python launch.py -m`: a grid through submitit's local executor, evals after the grid, a report.

Real torchtune, real inspect-ai, real submitit (local executor: the code path SLURM also takes).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import launch

pytestmark = pytest.mark.slow

# the default experiment's grid (peft.lora_rank 8,16 x optimizer.lr 1e-3,3e-3), one epoch each
GRID = ["-m", "experiment.name=grid", "training.epochs=1"]
RUNS = ["rank8_lr1e-3_epochs1", "rank8_lr3e-3_epochs1", "rank16_lr1e-3_epochs1", "rank16_lr3e-3_epochs1"]
BAD = RUNS[3]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("sweep")
    sweep_dir = work / "outputs" / "grid"
    # make one run fail as a full disk or a bad mount would: its checkpoint path is taken by a file
    (sweep_dir / BAD).mkdir(parents=True)
    (sweep_dir / BAD / "epoch_0").write_text("in the way\n")
    proc = launch(*GRID, cwd=work)
    return work, sweep_dir, proc


def test_one_failed_run_leaves_the_others_evaluated_and_exit_nonzero(sweep):
    _, sweep_dir, proc = sweep
    assert proc.returncode != 0
    assert f"3/4 runs finished, 1 failed: {BAD}:" in proc.stdout
    failed = json.loads((sweep_dir / BAD / "run.json").read_text())
    assert failed["status"] == "failed" and failed["error"]
    for name in RUNS[:3]:
        cell = json.loads((sweep_dir / name / "eval" / "epoch_0" / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["status"] == "success"
    assert not (sweep_dir / BAD / "eval").exists()


def test_report_has_three_runs_and_base_and_plots(sweep):
    _, sweep_dir, _ = sweep
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *RUNS[:3]}
    assert (df[df["run"] == "base"]["score"] == 0).all()
    assert (df[df["run"] != "base"]["score"] > 0.5).all()
    md = (sweep_dir / "summary.md").read_text()
    assert "3/4 runs finished, 1 failed" in md and BAD in md
    for png in ("accuracy_vs_epoch.png", "loss.png"):
        assert (sweep_dir / "plots" / png).stat().st_size > 5000
    log = (sweep_dir / "run-experiment.log").read_text()
    assert "ACTION: Sweep start" in log and "ACTION: Submit eval" in log and "ACTION: Sweep done" in log


def test_rerun_redoes_only_the_failed_run(sweep):
    work, sweep_dir, _ = sweep
    (sweep_dir / BAD / "epoch_0").unlink()
    before = {n: json.loads((sweep_dir / n / "run.json").read_text())["attempts"] for n in RUNS}
    proc = launch(*GRID, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4/4 runs finished" in proc.stdout
    after = {n: json.loads((sweep_dir / n / "run.json").read_text()) for n in before}
    assert {n: s["attempts"] for n, s in after.items()} == {**before, BAD: before[BAD] + 1}
    assert all(s["status"] == "finished" for s in after.values())
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *RUNS}


def test_second_launch_on_a_busy_sweep_dir_is_refused(tmp_path):
    from cruijff.sweep import acquire_lock, release_lock

    acquire_lock(tmp_path)
    try:
        proc = launch("-m", "experiment.name=x", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    finally:
        release_lock(tmp_path)
    assert proc.returncode == 2
    assert "in use by a running launch" in proc.stderr
