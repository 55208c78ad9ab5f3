"""Successive halving (``early_stop=halving``): a grid sweep trains in waves; at a rung only the
best runs by a validation task's score go on, the rest stop there ("stopped", not failed), and
the winners resume with the full run's learning-rate schedule.

Real torchtune on the tiny model, real inspect evals, real submitit (locally and on the SLURM test
cluster). lr=1e-6 learns nothing in an epoch; lr=3e-3 and 1e-2 do.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import compose_config, launch
from cruijff.config import early_stop, task_specs
from cruijff.errors import ConfigError
from cruijff.sweep.halving import decide

TASKS = "eval.tasks=[{name: exact_match}, {name: exact_match, label: val, args: {split: validation}}]"
GRID = ["early_stop=halving", "early_stop.eta=2", "training.epochs=2", "training.max_steps_per_epoch=8",
        "optimizer.lr=1e-6,3e-3,1e-2", "peft.lora_rank=8", "eval.limit=20", TASKS]
SLOW = "rank8_lr1e-6_epochs2_steps8"

pytestmark = pytest.mark.xdist_group("halving")


def _json(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def halved(tmp_path_factory, tiny_model_dir):
    """One local halving sweep: 3 runs x 2 epochs, a rung after epoch 1, eta 2."""
    root = tmp_path_factory.mktemp("halving")
    proc = launch("-m", "experiment.name=halved", *GRID, cwd=root, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, root / "outputs" / "halved", proc


@pytest.mark.slow
def test_the_losing_run_stops_at_its_rung_and_the_best_trains_every_epoch(halved):
    root, sweep_dir, proc = halved
    record = _json(sweep_dir / "halving.json")
    (rung,) = record["rungs"]
    scores = rung["scores"]
    assert rung["epochs"] == 1 and len(scores) == 3
    assert (rung["went_on"], rung["stopped"], rung["cut"]) == (*decide(scores, 2, rung["losses"]),)  # the rule, on them
    assert all(loss > 0 for loss in rung["losses"].values())
    assert rung["stopped"] == [SLOW]  # it learned nothing in its first epoch
    best = max(scores, key=scores.get)
    for name in rung["went_on"]:
        state = _json(sweep_dir / name / "run.json")
        assert state["status"] == "finished" and state["checkpoints"] == ["epoch_0", "epoch_1"]
    assert _json(sweep_dir / best / "run.json")["status"] == "finished"
    slow = _json(sweep_dir / SLOW / "run.json")
    assert slow["status"] == "stopped" and slow["stopped_at"] == 1 and slow["checkpoints"] == ["epoch_0"]
    assert slow["note"].startswith("halving: stopped at epoch 1/2: val 0.000 <")
    assert not (sweep_dir / SLOW / "epoch_1").exists()
    # every checkpoint is evaluated on the test task too, the stopped run's like any other
    cell = _json(sweep_dir / SLOW / "eval" / "epoch_0" / "results.json")
    assert cell["tasks"]["exact_match"]["status"] == "success" and cell["tasks"]["val"]["value"] == scores[SLOW]
    assert "cruijff: early stopping: after epoch 1: 2 of 3 went on" in proc.stdout
    assert f"stopped {SLOW}" in proc.stdout and "cruijff: 2/3 runs finished, 1 stopped early" in proc.stdout
    log = (sweep_dir / "run-experiment.log").read_text()
    assert log.count("ACTION: Wave") == 2 and "ACTION: Rung" in log and f"stopped: {SLOW}" in log
    summary = (sweep_dir / "summary.md").read_text()
    assert "Early stopping was used (successive halving on val, eta 2)" in summary
    assert "## Early stopping" in summary and "Epochs trained: 5 of the full grid's 6 (83%)." in summary
    assert "2/3 runs finished, 1 stopped early." in summary and "## Failed runs" not in summary
    assert "Resumed after an interruption" not in summary  # going on after a rung is not one
    status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)], capture_output=True,
                            text=True, cwd=root)
    assert status.returncode == 0, status.stderr
    assert re.search(rf"{SLOW}\s*│\s*stopped\s*│\s*1/2", status.stdout)


@pytest.mark.slow
def test_a_run_that_goes_on_keeps_the_full_runs_learning_rate_schedule(halved):
    """The winners stopped after epoch 1 and resumed: each step's learning rate is the one
    torchtune's cosine schedule gives a 2-epoch run at that step (not a 1-epoch one's)."""
    from torchtune.training.lr_schedulers import get_cosine_schedule_with_warmup
    import torch

    _, sweep_dir, _ = halved
    for name, lr in (("rank8_lr3e-3_epochs2_steps8", 3e-3), ("rank8_lr0.01_epochs2_steps8", 1e-2)):
        rows = [json.loads(line) for line in (sweep_dir / name / "logs" / "loss.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(1, 17))
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=5, num_training_steps=16)
        expected = []
        for _ in rows:
            opt.step()
            sched.step()
            expected.append(opt.param_groups[0]["lr"])
        assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-6)
        assert _json(sweep_dir / name / "run.json")["resumed_from"] == "epoch_0"


@pytest.mark.slow
def test_a_rerun_keeps_stopped_runs_stopped_and_early_stop_none_resumes_them(halved, tmp_path):
    root, _, _ = halved
    shutil.copytree(root / "outputs", tmp_path / "outputs", symlinks=True)  # a moved sweep dir
    sweep_dir = tmp_path / "outputs" / "halved"
    before = _json(sweep_dir / SLOW / "run.json")
    # a run that went on, then failed in its last wave (its node died before epoch 1 was saved)
    winner = "rank8_lr0.01_epochs2_steps8"
    shutil.rmtree(sweep_dir / winner / "epoch_1")
    state = _json(sweep_dir / winner / "run.json")
    state.update(status="failed", error="node died", checkpoints=["epoch_0"])
    (sweep_dir / winner / "run.json").write_text(json.dumps(state))
    again = launch("-m", "experiment.name=halved", *GRID, cwd=tmp_path, timeout=1200)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "after epoch 1: 2 of 3 went on" in again.stdout  # it is still compared at the rung it reached
    assert again.stdout.count("submitted as") == 1 and f"{winner}: submitted as local job" in again.stdout
    assert _json(sweep_dir / winner / "run.json")["checkpoints"] == ["epoch_0", "epoch_1"]
    assert _json(sweep_dir / SLOW / "run.json")["status"] == "stopped"
    noop = launch("-m", "experiment.name=halved", *GRID, cwd=tmp_path, timeout=1200)
    assert noop.returncode == 0 and "submitted as" not in noop.stdout
    assert _json(sweep_dir / SLOW / "run.json")["status"] == "stopped"
    grid = [a for a in GRID if not a.startswith("early_stop")]
    full = launch("-m", "experiment.name=halved", "early_stop=none", *grid, cwd=tmp_path, timeout=1200)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    assert f"{SLOW}: submitted as local job" in full.stdout and full.stdout.count("submitted as") == 1
    assert f"Details: {SLOW}: from epoch_0 (epochs 0..0 kept)" in (sweep_dir / "run-experiment.log").read_text()
    state = _json(sweep_dir / SLOW / "run.json")
    assert state["status"] == "finished" and state["checkpoints"] == ["epoch_0", "epoch_1"]
    assert state["config_hash"] == before["config_hash"] and state["resumed_from"] == "epoch_0"
    assert "cruijff: 3/3 runs finished" in full.stdout


@pytest.mark.parametrize("args, message", [
    (["eval.tasks=[{name: exact_match}]"],
     "early_stop.metric=None: early_stop=halving ranks runs on a validation task, and eval.tasks has none"),
    ([TASKS, "early_stop.metric=exact_match"],
     "early_stop.metric='exact_match': must be the label of a validation task (a task of eval.tasks with args "
     "{split: validation}: ranking on test scores would leak them): val"),
    ([TASKS, "early_stop.eta=1"], "early_stop.eta=1: must be an integer >= 2"),
    ([TASKS, "early_stop.rungs=[2]", "training.epochs=2"], "early_stop.rungs=[2]: each rung is a number of epochs "
                                                           "trained, 1 to 1 (training.epochs=2)"),
    ([TASKS, "eval=none"], "early_stop='halving': ranks runs on a validation task's scores"),
])
def test_bad_settings_are_one_line_naming_the_key(args, message):
    from cruijff.config import validate

    cfg = compose_config("early_stop=halving", *args)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert str(e.value).startswith(message), str(e.value)


def test_rungs_default_to_every_epoch_from_min_epochs():
    cfg = compose_config("early_stop=halving", TASKS, "training.epochs=5", "early_stop.min_epochs=2")
    h = early_stop.halving(cfg, task_specs(cfg.eval.tasks))
    assert (h.metric, h.eta, h.rungs, h.epochs) == ("val", 3, (2, 3, 4), 5)
    assert early_stop.halving(compose_config(TASKS), task_specs(cfg.eval.tasks)) is None


def test_the_top_third_go_on_and_ties_at_the_cut_go_on_too():
    assert decide({"a": 0.9, "b": 0.5, "c": 0.1, "d": 0.7, "e": 0.2, "f": 0.3}, 3) == (["a", "d"], ["b", "c", "e", "f"], 0.7)
    assert decide({"a": 0.5, "b": 0.5, "c": 0.1}, 3) == (["a", "b"], ["c"], 0.5)  # which of a, b: a coin toss
    assert decide({"a": 0.5, "b": 0.5, "c": 0.1}, 3, {"a": 0.9, "b": 0.4}) == (["b"], ["a", "c"], 0.5)  # b fits better
    assert decide({"a": 0.5, "b": 0.5, "c": 0.1}, 3, {"a": 0.4, "b": 0.4}) == (["a", "b"], ["c"], 0.5)
    assert decide({"a": 0.0, "b": 0.0}, 2) == (["a", "b"], [], 0.0)
    assert decide({"a": 0.4, "b": None}, 3) == (["a"], ["b"], 0.4)  # no score: stopped
    assert decide({"a": None}, 3) == ([], ["a"], None)
    nan = float("nan")  # a metric of no samples: no score, whichever order the runs come in
    assert decide({"a": 0.9, "b": nan, "c": 0.1, "d": 0.2}, 2) == (["a", "d"], ["b", "c"], 0.2)
    assert decide({"b": nan, "a": 0.9, "c": 0.1, "d": 0.2}, 2) == (["a", "d"], ["b", "c"], 0.2)


def test_a_single_run_is_refused(tmp_path, tiny_model_dir):
    single = launch("early_stop=halving", TASKS, "dry_run=true", cwd=tmp_path, timeout=300)
    assert single.returncode == 2
    assert "early_stop='halving': stops the losing runs of a grid sweep" in single.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_each_wave_is_one_job_array_and_the_loser_stops(slurm, tmp_path, tiny_model_dir):
    grid = [a if not a.startswith("optimizer.lr=") else "optimizer.lr=1e-6,1e-2" for a in GRID]  # 2 runs, 1 goes on
    proc = launch("-m", "experiment.name=halved", *grid, "cluster=slurm", "cluster.gpus_per_node=0",
                  "cluster.cpus_per_task=1", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "halved"
    waves = re.findall(r"Submit fine-tune\n  Details: (.*)\n  Result: slurm job ids (.*) \(array (\d+)\)",
                       (sweep_dir / "run-experiment.log").read_text())
    assert [len(names.split(", ")) for names, _, _ in waves] == [2, 1]  # one array per wave
    assert SLOW not in waves[1][0]
    assert _json(sweep_dir / SLOW / "run.json")["status"] == "stopped"
    went_on = _json(sweep_dir / "halving.json")["rungs"][0]["went_on"]
    for name in went_on:
        state = _json(sweep_dir / name / "run.json")
        assert state["status"] == "finished" and len(state["checkpoints"]) == 2
        assert state["job_id"].split("_")[0] == waves[1][2]  # trained to the end by the second wave's array
    assert went_on == ["rank8_lr0.01_epochs2_steps8"]
    assert "cruijff: 1/2 runs finished, 1 stopped early" in proc.stdout
