"""`python launch.py -m`: a grid through submitit's local executor, evals after the grid, a report.

Real torchtune, real inspect-ai, real submitit (local executor: the code path SLURM also takes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
import pytest

from conftest import LAUNCH, launch

pytestmark = pytest.mark.slow

TASKS = Path(__file__).parent / "tasks" / "capitalize.py"
# a 2 x 2 grid, one epoch each, evaluated on the test split, its validation counterpart (the pick),
# a task of 12 samples clustered by their initial letter, and one of 4 samples (too few to show a gain)
GRID = ["-m", "experiment.name=grid", "training.epochs=1", "eval.limit=20",
        "eval.tasks=[{name:exact_match},{name:exact_match,label:val,args:{split:validation}},"
        f"{{name:'{TASKS}@capitalize',label:cap,cluster:initial,args:{{n:12}}}},{{name:'{TASKS}@capitalize',label:cap4,args:{{n:4}}}}]",
        "peft.lora_rank=8,16", "optimizer.lr=1e-3,3e-3"]
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
    assert (df[(df["run"] != "base") & (df["task"] == "exact_match")]["score"] > 0.5).all()
    md = (sweep_dir / "summary.md").read_text()
    assert "3/4 runs finished, 1 failed" in md and BAD in md
    # it opens with what the scores say: per test task the checkpoint picked, its CI, its paired gain and p
    assert md.startswith("# grid\n\n## Findings\n\n- **cap**: `")
    assert "95% CI" in md
    assert re.search(r"\*\*exact_match\*\*: `[^`]+` at epoch_0, selected on val \(validation[^)]*\), scores [^;]+ on 20 of "
                     r"100 samples; \+[01]\.\d{3} \[[^]]+\] over the base model on the same samples \(McNemar mid-p: p "
                     r"(= [01]\.\d{3}|< 0\.001), Holm over 3 tasks p", md), md
    assert {"ci_low", "ci_high", "gain", "gain_low", "gain_high", "p", "p_holm", "role", "n", "of", "clusters"} <= set(df.columns)
    for png in ("accuracy_vs_epoch.png", "loss.png"):
        assert (sweep_dir / "plots" / png).stat().st_size > 5000
    log = (sweep_dir / "run-experiment.log").read_text()
    assert "ACTION: Plan sweep" in log and "ACTION: Submit fine-tune" in log and "ACTION: Submit eval" in log and "ACTION: Sweep done" in log


def test_findings_declare_one_comparison_per_task_cluster_aware_and_what_a_null_could_detect(sweep):
    """One Finding per test task (not for the validation counterpart): the clustered task's n counts
    its clusters, and the 4-sample task's gain, which cannot be significant, says what it could
    have detected."""
    _, sweep_dir, _ = sweep
    md = (sweep_dir / "summary.md").read_text()
    findings = md.split("## Findings")[1].split("\n## ")[0]
    lines = [ln for ln in findings.splitlines() if ln.startswith("- **")]
    assert [ln.split("**")[1] for ln in lines] == ["cap", "cap4", "exact_match"]
    df = pd.read_csv(sweep_dir / "summary.csv")
    cap = df[(df["task"] == "cap") & (df["run"] != "base")]
    clusters = int(cap["clusters"].iloc[0])
    assert 1 < clusters < 12 and (cap["test"] == "clustered McNemar").all()  # 12 words, 9 initials
    assert f"on 12 samples in {clusters} clusters (initial)" in lines[0], lines[0]
    assert re.search(r"not significant: with 4 samples, no gain within the score's range would be detected with 80% "
                     r"power at α = 0\.0167 \(0\.05 over 3 declared comparisons; McNemar's mid-p, its exact power\)", lines[1]), lines[1]
    assert (df.groupby("task")["role"].apply(lambda r: (r == "declared").sum()).to_dict()
            == {"cap": 1, "cap4": 1, "exact_match": 1, "val": 0})


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


def _submissions(sweep_dir: Path) -> set[str]:
    return {p.name for p in (sweep_dir / ".submitit").iterdir()}


def test_noop_rerun_submits_nothing(sweep):
    work, sweep_dir, _ = sweep
    assert json.loads((sweep_dir / BAD / "run.json").read_text())["status"] == "finished"  # after the rerun
    before, summary = _submissions(sweep_dir), (sweep_dir / "summary.md").stat().st_mtime_ns
    proc = launch(*GRID, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all 4 runs finished earlier; nothing to submit" in proc.stdout
    assert _submissions(sweep_dir) == before  # no fine-tune job, no eval job
    assert (sweep_dir / "summary.md").stat().st_mtime_ns == summary
    last = (sweep_dir / "run-experiment.log").read_text().rsplit("ACTION: Plan sweep", 1)[1]
    assert "ACTION: Submit" not in last and "ACTION: Skip eval" in last


def test_plan_of_a_larger_grid_estimates_from_the_runs_measured_here(sweep):
    """No GPU throughput table applies to CPU runs; the sweep's finished runs give the time instead."""
    work, sweep_dir, _ = sweep
    proc = launch(*GRID[:-2], "peft.lora_rank=8,16,32", "optimizer.lr=1e-3,3e-3", "dry_run=true", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = [line for line in proc.stdout.splitlines() if "rank32_" in line]
    # a time measured here (*), in whatever unit it comes to on a loaded machine
    assert len(new) == 2 and all("new" in line and re.search(r" \d+(\.\d+)? (s|min|h)\* ", line) for line in new), new
    assert "throughput (*): measured from this sweep's finished runs" in proc.stdout
    assert "?" not in proc.stdout.split("time:")[1].splitlines()[0]


def test_status_shows_every_run_and_the_base_control(sweep):
    _, sweep_dir, _ = sweep
    proc = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in RUNS:
        [row] = [ln for ln in lines if f" {name} " in ln]
        assert "finished" in row and "1/1" in row
    assert any("base (tiny_llama-" in ln and "evaluated" in ln for ln in lines)
    assert "4 finished" in proc.stdout and "no launch running" in proc.stdout


def test_report_command_rebuilds_the_sweep_report(sweep):
    _, sweep_dir, _ = sweep
    (sweep_dir / "summary.md").unlink()
    for png in (sweep_dir / "plots").glob("*.png"):
        png.unlink()
    proc = subprocess.run([sys.executable, "-m", "cruijff", "report", str(sweep_dir)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "4/4 runs finished" in (sweep_dir / "summary.md").read_text()
    assert {p.name for p in (sweep_dir / "plots").glob("*.png")} == {
        "accuracy_vs_epoch.png", "loss.png", "heatmap.png"}


def test_changed_config_is_refused_before_anything_is_submitted(sweep):
    work, sweep_dir, _ = sweep
    state_file = sweep_dir / RUNS[0] / "run.json"
    original = state_file.read_text()
    state = json.loads(original)
    state["config_hash"] = "0123456789abcdef"  # as if conf/ had changed since this run
    state_file.write_text(json.dumps(state))
    before = _submissions(sweep_dir)
    try:
        proc = launch(*GRID, cwd=work)
        assert proc.returncode == 2
        [line] = proc.stderr.strip().splitlines()
        assert "overwrite=False:" in line and RUNS[0] in line and "different config" in line
        assert _submissions(sweep_dir) == before
        assert json.loads(state_file.read_text()) == state  # nothing on disk touched
    finally:
        state_file.write_text(original)


def test_second_launch_on_a_busy_sweep_dir_is_refused(tmp_path):
    from cruijff.records import acquire_lock, release_lock

    acquire_lock(tmp_path)
    try:
        proc = launch("-m", "experiment.name=x", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    finally:
        release_lock(tmp_path)
    assert proc.returncode == 2
    assert "in use by a running launch" in proc.stderr


def test_killed_job_is_recorded_the_others_finish_and_a_rerun_completes_it(tmp_path, tiny_model_dir):
    """A job SIGKILLed mid-training (as the OOM killer would): recorded, not hung, then redone."""
    # long enough for the kill to land while the victim trains (it comes after a status call)
    args = ["-m", "experiment.name=kill", "training.epochs=2", "training.max_steps_per_epoch=60", "peft.lora_rank=8",
            "optimizer.lr=1e-3,3e-3", "eval.limit=20"]
    sweep_dir = tmp_path / "outputs" / "kill"
    victim = "rank8_lr1e-3_epochs2_steps60"
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    proc = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:  # wait for its first training step
        state = json.loads((sweep_dir / victim / "run.json").read_text()) if (
            sweep_dir / victim / "run.json").exists() else {}
        steps = list((sweep_dir / victim / "logs").glob("log_*.txt"))  # torchtune's per-step log
        if state.get("status") == "running" and steps and "loss" in steps[0].read_text():
            break
        time.sleep(0.2)
    status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)],
                            capture_output=True, text=True)  # mid-sweep, from files only
    assert status.returncode == 0, status.stderr
    assert any(f" {victim} " in ln and "running" in ln for ln in status.stdout.splitlines())
    assert "launch running (pid" in status.stdout
    os.kill(state["pid"], signal.SIGKILL)  # the training process, as the OOM killer would
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    assert f"1/2 runs finished, 1 failed: {victim}: job process {state['pid']}" in out
    state = json.loads((sweep_dir / victim / "run.json").read_text())
    assert state["status"] == "failed" and "died while fine-tuning" in state["error"]
    other = sweep_dir / "rank8_lr3e-3_epochs2_steps60"
    assert json.loads((other / "eval" / "epoch_1" / "results.json").read_text())["tasks"]["exact_match"][
        "status"] == "success"

    again = launch(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2/2 runs finished" in again.stdout
    assert "rank8_lr3e-3_epochs2_steps60: submitted" not in again.stdout
    state = json.loads((sweep_dir / victim / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 2


def test_optuna_sweeper_tells_each_trial_its_score_and_a_failed_trial_as_failed(tmp_path, tiny_model_dir):
    # the seeded sampler draws both learning rates: 1e6 diverges (NaN), 1e-3 learns
    proc = launch("-m", "experiment=lr_search", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=choice(1e6,1e-3)", "peft.lora_rank=choice(8)",
                  "training.epochs=1", "eval.limit=20", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]  # a run failed; the search itself went on
    sweep_dir = tmp_path / "outputs" / "lr_search"
    trials = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert sorted(r["name"] for r in trials) == ["lr1e-3_rank8_epochs1", "lr1e6_rank8_epochs1"]
    assert "1/2 runs finished, 1 failed: lr1e6_rank8_epochs1: loss became nan" in proc.stdout
    assert "Failed experiment: lr1e6_rank8_epochs1: loss became nan" in proc.stderr + proc.stdout
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == pytest.approx(1e-3)
    df = pd.read_csv(sweep_dir / "summary.csv")
    runs = df[df["run"] != "base"]
    assert set(runs["run"]) == {"lr1e-3_rank8_epochs1"}
    assert best["best_value"] == pytest.approx(runs["score"].max())  # the objective is the eval score
    assert (df[df["run"] == "base"]["score"] == 0).all()  # the control, evaluated once after the trials


@pytest.mark.slow
def test_smoke_preset_runs_a_whole_sweep_in_a_few_steps_with_a_base_control_per_model(tmp_path, tiny_model_dir):
    """``training=smoke`` over two base models (here the tiny model under two names): each model's
    untouched base gets its own control cell. The jobs' files go where ``hydra.launcher.submitit_folder``
    says, the fine-tuning and the eval jobs' alike."""
    jobs = tmp_path / "jobs"
    proc = launch("-m", "training=smoke", "experiment.name=smoke", "model.name=tiny_a,tiny_b",
                  f"model.path={tiny_model_dir}", "peft.lora_rank=8", "optimizer.lr=1e-3",
                  f"hydra.launcher.submitit_folder={jobs}/%j", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "smoke"
    assert not (sweep_dir / ".submitit").exists()
    kinds = {b"evaluate_group" in p.read_bytes() for p in jobs.glob("*/*_submitted.pkl")}
    assert kinds == {True, False}  # fine-tuning jobs and eval jobs
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/run.json"))
    assert len(runs) == 2
    for name in runs:
        state = json.loads((sweep_dir / name / "run.json").read_text())
        assert state["checkpoints"] == ["epoch_0"] and state["epochs"][0]["steps"] == 5
        cell = json.loads((sweep_dir / name / "eval" / "epoch_0" / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["samples"] == 10
    for model in ("tiny_a", "tiny_b"):
        [base] = (sweep_dir / "base").glob(f"{model}-*")
        cell = json.loads((base / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["status"] == "success", model
    assert "2/2 runs finished" in (sweep_dir / "summary.md").read_text()
    # the accuracy plot draws each model's control
    from cruijff.report import accuracy_figure, collect

    fig = accuracy_figure(collect(sweep_dir, [])[0])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "base: tiny_a" in labels and "base: tiny_b" in labels, labels


def test_a_trials_own_config_error_reaches_its_record_the_log_and_the_summary(tmp_path):
    """A search range that leaves the allowed values is only seen inside the job (the sweeper
    draws the value there): the job records why in run.json instead of dying "did not start"."""
    # the seeded sampler draws both values (as in the test above): one trial trains, one cannot
    proc = launch("-m", "experiment=lr_search", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=choice(-1,1e-3)", "peft.lora_rank=choice(8)", "training=smoke", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "lr_search"
    name = "lr-1_rank8_training-smoke"
    assert name in [r["name"] for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]]
    state = json.loads((sweep_dir / name / "run.json").read_text())
    reason = "optimizer.lr=-1: must be a number > 0"
    assert state["status"] == "failed" and state["error"] == reason
    assert f"1/2 runs finished, 1 failed: {name}: {reason}" in proc.stdout
    assert reason in (sweep_dir / "summary.md").read_text()
    assert f"ACTION: Run refused\n  Details: {name}\n  Result: {reason}" in (sweep_dir / "run-experiment.log").read_text()



def test_a_search_whose_every_trial_failed_ends_with_its_summary_not_a_traceback(tmp_path):
    proc = launch("-m", "experiment=lr_search", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=choice(-1,-2)", "peft.lora_rank=choice(8)", "training=smoke", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "No trials are completed" not in proc.stderr
    assert "0/2 runs finished, 2 failed: " in proc.stdout and "must be a number > 0" in proc.stdout
    assert "alembic" not in proc.stdout  # optuna's database layer keeps its INFO lines
    assert (tmp_path / "outputs" / "lr_search" / "summary.md").is_file()


def test_seeds_are_replicates_in_the_report(tmp_path, tiny_model_dir):
    """``seed=1,2`` x two learning rates: the runs that differ only in seed form a group whose mean
    over seeds comes with a t-interval and each seed's value; the plot draws the group's spread."""
    from cruijff.config import run_name

    args = ["-m", "experiment.name=seeds", "training.epochs=1", "training.max_steps_per_epoch=10", "eval.limit=10", "seed=1,2",
            "optimizer.lr=1e-3,3e-3", "peft.lora_rank=8"]
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "seeds"
    members: dict[str, list[str]] = {}
    for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]:
        members.setdefault(run_name([o for o in r["overrides"] if not o.startswith("seed=")]), []).append(r["name"])
    assert len(members) == 2 and all(len(m) == 2 for m in members.values())
    groups = pd.read_csv(sweep_dir / "summary_seeds.csv")
    assert set(groups["group"]) == set(members)
    assert (groups["seeds"] == 2).all() and (groups["t_low"] <= groups["mean"]).all()
    assert (groups["mean"] <= groups["t_high"]).all()
    scores = pd.read_csv(sweep_dir / "summary.csv")
    for row in groups.itertuples():
        mine = scores[scores["run"].isin(members[row.group]) & (scores["task"] == row.task)
                      & (scores["epoch"] == row.epoch)]
        assert row.mean == pytest.approx(mine["score"].mean())
        assert row.per_seed.startswith("1: ") and ", 2: " in row.per_seed
    md = (sweep_dir / "summary.md").read_text()
    assert "## Over seeds (mean, 95% t-interval)" in md and md.startswith("# seeds\n\n## Findings")
    from cruijff.records import sweep_runs
    from cruijff.report import accuracy_figure
    from cruijff.report.analysis import seed_groups

    fig = accuracy_figure(scores, seed_groups(sweep_runs(sweep_dir)))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {f"{g} (mean of 2 seeds)" for g in members} <= set(labels), labels
    again = launch(*args, cwd=tmp_path)
    assert "all 4 runs finished earlier; nothing to submit" in again.stdout  # resume keeps working
