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
from pathlib import Path

import pandas as pd
import yaml
import pytest

from conftest import LAUNCH, launch, wait_for

pytestmark = pytest.mark.slow

TASKS = Path(__file__).parent / "tasks" / "capitalize.py"
# a 2 x 2 grid, one epoch each, evaluated on the test split, its validation counterpart (the pick),
# a task of 12 samples clustered by their initial letter, and one of 4 samples (too few to show a gain)
GRID = ["-m", "experiment.name=grid", "training.epochs=1", "eval.limit=20",
        "eval.tasks=[{name:exact_match},{name:exact_match,label:val,args:{split:validation}},"
        f"{{name:'{TASKS}@capitalize',label:cap,cluster:initial,args:{{n:12}}}},{{name:'{TASKS}@capitalize',label:cap4,args:{{n:4}}}}]",
        "peft.lora_rank=8,16", "optimizer.lr=1e-3,3e-3"]
RUNS = ["rank8_lr1e-3_epochs1", "rank8_lr3e-3_epochs1", "rank16_lr1e-3_epochs1", "rank16_lr3e-3_epochs1"]
VICTIM, BAD = RUNS[0], RUNS[3]


def _training(run_dir: Path) -> dict:
    """The run's record once it says running and torchtune has logged a loss (its first step), else {}."""
    state = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    steps = list((run_dir / "logs").glob("log_*.txt"))  # torchtune's per-step log
    return state if state.get("status") == "running" and steps and "loss" in steps[0].read_text() else {}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_model_dir):
    """The grid, launched once, with two runs failing two ways: BAD as a full disk or a bad mount would
    (its checkpoint path is taken by a file), VICTIM's training process SIGKILLed mid-training (as the
    OOM killer would), once ``cruijff status`` has shown it running.
    Returns (work, sweep_dir, the launch, status mid-sweep, the pid killed)."""
    work = tmp_path_factory.mktemp("sweep")
    sweep_dir = work / "outputs" / "grid"
    (sweep_dir / BAD).mkdir(parents=True)
    (sweep_dir / BAD / "epoch_0").write_text("in the way\n")
    env = {**os.environ, "INSPECT_DISPLAY": "none", "PYTHONUNBUFFERED": "1"}
    with open(work / "launch.out", "w") as out, open(work / "launch.err", "w") as err:
        proc = subprocess.Popen([sys.executable, str(LAUNCH), *GRID], cwd=work, env=env, stdout=out, stderr=err)
    try:
        wait_for(lambda: _training(sweep_dir / VICTIM), 600, f"{VICTIM}'s first training step", every=0.2)
        status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)],
                                capture_output=True, text=True)  # mid-sweep, from files only
        pid = _training(sweep_dir / VICTIM)["pid"]
        os.kill(pid, signal.SIGKILL)  # the training process, as the OOM killer would
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, (work / "launch.out").read_text(),
                                       (work / "launch.err").read_text())
    return work, sweep_dir, done, status, pid


def test_failed_runs_leave_the_others_evaluated_and_exit_nonzero(sweep):
    _, sweep_dir, proc, _, _ = sweep
    assert proc.returncode != 0
    assert "2/4 runs finished, 2 failed: " in proc.stdout and f"; {BAD}: " in proc.stdout, proc.stdout
    failed = json.loads((sweep_dir / BAD / "run.json").read_text())
    assert failed["status"] == "failed" and failed["error"]
    for name in RUNS[1:3]:
        cell = json.loads((sweep_dir / name / "eval" / "epoch_0" / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["status"] == "success"
    assert not (sweep_dir / BAD / "eval").exists() and not (sweep_dir / VICTIM / "eval").exists()


def test_killed_job_is_recorded_not_hung_and_the_runs_after_it_go_on(sweep):
    """A job SIGKILLed mid-training (as the OOM killer would): ``status`` showed it running under a
    running launch; the launch records it as died (the runs after it trained and were evaluated,
    above), and the rerun below redoes it."""
    _, sweep_dir, proc, status, pid = sweep
    assert status.returncode == 0, status.stderr
    assert any(f" {VICTIM} " in ln and "running" in ln for ln in status.stdout.splitlines()), status.stdout
    assert "launch running (pid" in status.stdout
    assert f"2/4 runs finished, 2 failed: {VICTIM}: job process {pid} " in proc.stdout, proc.stdout
    state = json.loads((sweep_dir / VICTIM / "run.json").read_text())
    assert state["status"] == "failed" and "died while fine-tuning" in state["error"]


def test_report_has_the_finished_runs_and_base_and_plots(sweep):
    _, sweep_dir, *_ = sweep
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *RUNS[1:3]}
    assert (df[df["run"] == "base"]["score"] == 0).all()
    assert (df[(df["run"] != "base") & (df["task"] == "exact_match")]["score"] > 0.5).all()
    md = (sweep_dir / "summary.md").read_text()
    assert "2/4 runs finished, 2 failed" in md and BAD in md and VICTIM in md
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
    _, sweep_dir, *_ = sweep
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


def test_rerun_redoes_only_the_failed_runs(sweep):
    work, sweep_dir, *_ = sweep
    (sweep_dir / BAD / "epoch_0").unlink()
    before = {n: json.loads((sweep_dir / n / "run.json").read_text())["attempts"] for n in RUNS}
    proc = launch(*GRID, cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4/4 runs finished" in proc.stdout
    assert f"{RUNS[1]}: submitted" not in proc.stdout and f"{BAD}: submitted" in proc.stdout
    after = {n: json.loads((sweep_dir / n / "run.json").read_text()) for n in before}
    assert {n: s["attempts"] for n, s in after.items()} == {**before, BAD: before[BAD] + 1, VICTIM: 2}
    assert all(s["status"] == "finished" for s in after.values())
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *RUNS}


def _submissions(sweep_dir: Path) -> set[str]:
    return {p.name for p in (sweep_dir / ".submitit").iterdir()}


def test_noop_rerun_submits_nothing(sweep):
    work, sweep_dir, *_ = sweep
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
    work, sweep_dir, *_ = sweep
    proc = launch(*GRID[:-2], "peft.lora_rank=8,16,32", "optimizer.lr=1e-3,3e-3", "dry_run=true", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = [line for line in proc.stdout.splitlines() if "rank32_" in line]
    # a time measured here (*), in whatever unit it comes to on a loaded machine
    assert len(new) == 2 and all("new" in line and re.search(r" \d+(\.\d+)? (s|min|h)\* ", line) for line in new), new
    assert "throughput (*): measured from this sweep's finished runs" in proc.stdout
    assert "?" not in proc.stdout.split("time:")[1].splitlines()[0]


def test_status_shows_every_run_and_the_base_control(sweep):
    _, sweep_dir, *_ = sweep
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
    _, sweep_dir, *_ = sweep
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
    work, sweep_dir, *_ = sweep
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


def test_optuna_sweeper_tells_each_trial_its_score_and_a_failed_trial_as_failed(tmp_path, tiny_model_dir):
    """Three trials: 1e6 diverges (NaN), -1 leaves the allowed values, 1e-3 learns. A search range that
    leaves the allowed values is only seen inside the job (the sweeper draws the value there): the job
    records why in run.json instead of dying "did not start"."""
    # the sampler, seeded so, draws the three learning rates in this order
    proc = launch("-m", "experiment=lr_search", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                  "hydra.sweeper.sampler.seed=28", "optimizer.lr=choice(1e6,-1,1e-3)", "peft.lora_rank=choice(8)",
                  "training.epochs=1", "eval.limit=20", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]  # runs failed; the search itself went on
    sweep_dir = tmp_path / "outputs" / "lr_search"
    trials = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert [r["name"] for r in trials] == ["lr1e6_rank8_epochs1", "lr-1_rank8_epochs1", "lr1e-3_rank8_epochs1"]
    assert "1/3 runs finished, 2 failed: lr1e6_rank8_epochs1: loss became nan" in proc.stdout, proc.stdout
    assert "Failed experiment: lr1e6_rank8_epochs1: loss became nan" in proc.stderr + proc.stdout
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_params"]["optimizer.lr"] == pytest.approx(1e-3)
    df = pd.read_csv(sweep_dir / "summary.csv")
    runs = df[df["run"] != "base"]
    assert set(runs["run"]) == {"lr1e-3_rank8_epochs1"}
    assert best["best_value"] == pytest.approx(runs["score"].max())  # the objective is the eval score
    assert best["best_value"] > 0
    assert (df[df["run"] == "base"]["score"] == 0).all()  # the control, evaluated once after the trials
    # the trial whose own config is refused
    name, reason = "lr-1_rank8_epochs1", "optimizer.lr=-1: must be a number > 0"
    state = json.loads((sweep_dir / name / "run.json").read_text())
    assert state["status"] == "failed" and state["error"] == reason
    assert f"; {name}: {reason}" in proc.stdout
    assert reason in (sweep_dir / "summary.md").read_text()
    assert f"ACTION: Run refused\n  Details: {name}\n  Result: {reason}" in (sweep_dir / "run-experiment.log").read_text()


@pytest.mark.slow
def test_smoke_preset_runs_a_whole_sweep_in_a_few_steps_with_a_base_control_per_model_and_seeds_as_replicates(
        tmp_path, tiny_model_dir):
    """``training=smoke`` over two base models (here the tiny model under two names) and two seeds: each
    model's untouched base gets its own control cell. The jobs' files go where
    ``hydra.launcher.submitit_folder`` says, the fine-tuning and the eval jobs' alike. The runs that
    differ only in seed form a group whose mean over seeds comes with a t-interval and each seed's value;
    the plot draws each model's control and each group's spread."""
    from cruijff.config import run_name
    from cruijff.records import sweep_runs
    from cruijff.report import accuracy_figure, collect
    from cruijff.report.analysis import seed_groups

    jobs = tmp_path / "jobs"
    args = ["-m", "training=smoke", "experiment.name=smoke", "model.name=tiny_a,tiny_b", f"model.path={tiny_model_dir}",
            "peft.lora_rank=8", "optimizer.lr=3e-3", "seed=1,2", f"hydra.launcher.submitit_folder={jobs}/%j"]
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "smoke"
    assert not (sweep_dir / ".submitit").exists()
    kinds = {b"evaluate_group" in p.read_bytes() for p in jobs.glob("*/*_submitted.pkl")}
    assert kinds == {True, False}  # fine-tuning jobs and eval jobs
    runs = sorted(p.parent.name for p in sweep_dir.glob("*/run.json"))
    assert len(runs) == 4
    for name in runs:
        state = json.loads((sweep_dir / name / "run.json").read_text())
        assert state["checkpoints"] == ["epoch_0"] and state["epochs"][0]["steps"] == 5
        cell = json.loads((sweep_dir / name / "eval" / "epoch_0" / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["samples"] == 10
    for model in ("tiny_a", "tiny_b"):
        [base] = (sweep_dir / "base").glob(f"{model}-*")
        cell = json.loads((base / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["status"] == "success", model
    md = (sweep_dir / "summary.md").read_text()
    assert "4/4 runs finished" in md
    # seeds: one group per model, of its two seeds
    members: dict[str, list[str]] = {}
    for r in json.loads((sweep_dir / "sweep.json").read_text())["runs"]:
        members.setdefault(run_name([o for o in r["overrides"] if not o.startswith("seed=")]), []).append(r["name"])
    assert len(members) == 2 and all(len(m) == 2 for m in members.values())
    groups = pd.read_csv(sweep_dir / "summary_seeds.csv")
    assert set(groups["group"]) == set(members)
    assert (groups["seeds"] == 2).all() and (groups["t_low"] <= groups["mean"]).all()
    assert (groups["mean"] <= groups["t_high"]).all()
    scores = pd.read_csv(sweep_dir / "summary.csv")
    assert scores[scores["run"] != "base"]["score"].nunique() > 1  # the seeds score apart: the means below bite
    for row in groups.itertuples():
        mine = scores[scores["run"].isin(members[row.group]) & (scores["task"] == row.task)
                      & (scores["epoch"] == row.epoch)]
        assert row.mean == pytest.approx(mine["score"].mean())
        assert row.per_seed.startswith("1: ") and ", 2: " in row.per_seed
    assert "## Over seeds (mean, 95% t-interval)" in md and md.startswith("# smoke\n\n## Findings")
    # the accuracy plot draws each model's control, and each group's mean over its seeds
    labels = [t.get_text() for t in accuracy_figure(collect(sweep_dir, [])[0]).axes[0].get_legend().get_texts()]
    assert "base: tiny_a" in labels and "base: tiny_b" in labels, labels
    fig = accuracy_figure(scores, seed_groups(sweep_runs(sweep_dir)))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {f"{g} (mean of 2 seeds)" for g in members} <= set(labels), labels
    again = launch(*args, cwd=tmp_path)
    assert "all 4 runs finished earlier; nothing to submit" in again.stdout  # resume keeps working


def test_a_search_whose_every_trial_failed_ends_with_its_summary_not_a_traceback(tmp_path):
    proc = launch("-m", "experiment=lr_search", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=choice(-1,-2)", "peft.lora_rank=choice(8)", "training=smoke", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "No trials are completed" not in proc.stderr
    assert "0/2 runs finished, 2 failed: " in proc.stdout and "must be a number > 0" in proc.stdout
    assert "alembic" not in proc.stdout  # optuna's database layer keeps its INFO lines
    assert (tmp_path / "outputs" / "lr_search" / "summary.md").is_file()
