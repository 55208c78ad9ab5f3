"""The records a sweep leaves: typed state files, the one score reader, the sweep lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from cruijff.records import CellResults, RunState, RunStatus, SweepPlan, TaskResult, current_cell
from cruijff.errors import CruijffError


def _inspect_log(log_dir, data, answers: list[str]) -> str:
    """A real inspect eval of the built-in exact-match task, answered by inspect's mock model."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import ModelOutput, get_model

    from cruijff.evaluate import exact_match_task

    model = get_model("mockllm/model", custom_outputs=[ModelOutput.from_content("mockllm/model", a) for a in answers])
    [log] = inspect_eval(exact_match_task(str(data)), model=model, log_dir=str(log_dir), display="none")
    return log.location


def test_a_re_evaluated_cell_reports_its_newest_score(tmp_path):
    """inspect lists a cell's logs newest first; the report showed the oldest. It now reads the
    cell's results.json, as the run table does."""
    from cruijff.report import report_sweep

    data = tmp_path / "data.json"
    rows = [{"input": "Capitalize: ab", "output": "Ab"}, {"input": "Capitalize: cd", "output": "Cd"}]
    data.write_text(json.dumps({"train": rows, "test": rows}))
    sweep_dir = tmp_path / "sweep"
    run_dir = sweep_dir / "r"
    cell = run_dir / "eval" / "epoch_0"
    _inspect_log(cell, data, ["ab", "cd"])  # the first evaluation: both wrong
    time.sleep(1.1)  # inspect names its logs by the second
    newest = _inspect_log(cell, data, ["Ab", "Cd"])  # evaluated again: both right
    CellResults(model="m", tasks={"exact_match": TaskResult("success", newest, "exact_match", "accuracy", 1.0, 2)}
                ).save(cell)
    RunState(RunStatus.FINISHED, name="r", checkpoints=["epoch_0"]).save(run_dir)
    SweepPlan("x", runs=[]).save(sweep_dir)
    report_sweep(sweep_dir)
    scores = pd.read_csv(sweep_dir / "summary.csv")
    assert scores[scores["run"] == "r"]["score"].tolist() == [1.0]
    assert current_cell(cell, None).scores() == {"exact_match": 1.0}


def test_an_unreadable_or_unknown_state_file_is_an_error_naming_it(tmp_path):
    assert RunState.of(tmp_path) is None  # nothing ran there yet
    (tmp_path / "run.json").write_text("{ not json")
    with pytest.raises(CruijffError, match=f"{tmp_path / 'run.json'}: not valid JSON"):
        RunState.of(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished", "version": 9}))
    with pytest.raises(CruijffError, match="version 9 of its format is not known"):
        RunState.of(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished"}))  # written before versions
    assert RunState.of(tmp_path).status is RunStatus.FINISHED
    (tmp_path / "run.json").write_text(json.dumps({"status": "done"}))
    with pytest.raises(CruijffError, match="not a valid RunState record"):
        RunState.of(tmp_path)


def test_status_never_makes_a_launch_fail(tmp_path):
    """``status`` asks who holds the sweep lock while a launch may be taking it: it must never hold
    the lock itself, not even for a moment. One process asks as fast as it can while this one takes
    and releases the lock 300 times."""
    from cruijff.records import acquire_lock, lock_holder, release_lock

    acquire_lock(tmp_path)
    release_lock(tmp_path)
    asker = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from cruijff.records import lock_holder
        end = time.time() + 60
        print("asking", flush=True)
        while time.time() < end:
            lock_holder(Path({str(tmp_path)!r}))
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert asker.stdout.readline().strip() == "asking"
        refused = 0
        for _ in range(300):
            try:
                acquire_lock(tmp_path)
            except CruijffError:
                refused += 1
            else:
                release_lock(tmp_path)
            time.sleep(0.002)
    finally:
        asker.kill()
    assert refused == 0
    # and what status reports: nobody while no launch runs, the launch while one does
    assert lock_holder(tmp_path) is None


def _status_text(sweep_dir) -> str:
    from rich.console import Console

    from cruijff.sweep import status_table

    console = Console(width=220, record=True)
    console.print(status_table(sweep_dir, "no launch running"))
    return console.export_text()


def _saved_config(run_dir, epochs: int, eval_epochs) -> None:
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        f"model:\n  name: tiny_llama\ntraining:\n  epochs: {epochs}\neval:\n  enabled: true\n  epochs: {eval_epochs}\n")


def test_status_shows_the_epochs_mean_loss_not_its_last_step(tmp_path):
    """A finished run's loss column is its last epoch's mean train loss (not the last batch's,
    which reads as divergence); a running run's is the mean so far of the epoch it trains, labelled."""
    from cruijff.records import EpochLoss, SweepPlan, PlannedRunRecord, write_jsonl

    sweep_dir = tmp_path / "sweep"
    SweepPlan("sweep", runs=[PlannedRunRecord("done", []), PlannedRunRecord("busy", [])]).save(sweep_dir)
    RunState(RunStatus.FINISHED, name="done", epochs=[EpochLoss(0, 2.386, 5.367, 10)]).save(sweep_dir / "done")
    busy = sweep_dir / "busy"
    RunState(RunStatus.RUNNING, name="busy", epochs=[EpochLoss(0, 3.0, 2.5, 2)]).save(busy)
    write_jsonl([{"epoch": 0, "step": 1, "loss": 3.5}, {"epoch": 0, "step": 2, "loss": 2.5},
                 {"epoch": 1, "step": 3, "loss": 1.0}, {"epoch": 1, "step": 4, "loss": 4.0}], busy / "logs" / "loss.jsonl")
    text = _status_text(sweep_dir)
    assert "mean loss" in text
    done = next(ln for ln in text.splitlines() if " done " in ln)
    assert "2.3860" in done and "5.367" not in done, text
    row = next(ln for ln in text.splitlines() if " busy " in ln)
    assert "2.5000 (epoch 1 so far)" in row and "4.0000" not in row, text
    # the next look reads on: a step more in epoch 1
    with (busy / "logs" / "loss.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 1, "step": 5, "loss": 7.0}) + "\n")
    row = next(ln for ln in _status_text(sweep_dir).splitlines() if " busy " in ln)
    assert "4.0000 (epoch 1 so far)" in row


def test_status_counts_evals_over_the_epochs_asked_for(tmp_path):
    """eval.epochs=[14] of 15: a run with its one cell evaluated shows evals 1/1, not 1/15; before
    its cells are planned it shows 0/1 whatever checkpoints it has."""
    from cruijff.records import EvalPlan, ExpectedCell, PlannedRunRecord, SweepPlan

    sweep_dir = tmp_path / "sweep"
    SweepPlan("sweep", runs=[PlannedRunRecord("r", []), PlannedRunRecord("q", [])],
              eval={"enabled": True, "epochs": [14], "tasks": ["exact_match"]}).save(sweep_dir)
    for name in ("r", "q"):
        run_dir = sweep_dir / name
        _saved_config(run_dir, 15, "[14]")
        for e in range(15):
            (run_dir / f"epoch_{e}").mkdir()
            (run_dir / f"epoch_{e}" / ".complete").write_text(json.dumps({"checkpoint_id": f"id{e}"}))
        RunState(RunStatus.FINISHED, name=name, checkpoints=[f"epoch_{e}" for e in range(15)]).save(run_dir)
    log_dir = sweep_dir / "r" / "eval" / "epoch_14"
    (log_dir / "t.eval").parent.mkdir(parents=True)
    (log_dir / "t.eval").write_text("")
    CellResults(model="m", tasks={"t": TaskResult("success", "t.eval", "t", "accuracy", 1.0, 1)}, key="k").save(log_dir)
    EvalPlan({"epoch_14": ExpectedCell("r/eval/epoch_14", "k")}).save(sweep_dir / "r")
    text = _status_text(sweep_dir)
    r = next(ln for ln in text.splitlines() if " r " in ln)
    q = next(ln for ln in text.splitlines() if " q " in ln)
    assert " 1/1 " in r and "/15 " not in r.split("15/15")[-1], text
    assert " 0/1 " in q, text


def test_a_changed_run_is_refused_naming_what_changed(tmp_path):
    """A run dir of another config is refused with the keys that changed, old -> new, and the data
    file whose content changed, in one line cut to a readable length; not with two hashes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from conftest import ROOT
    from cruijff.config import config_changes, input_identity, register_resolvers, resolve_paths
    from cruijff.plan import Planner
    from cruijff.records import layout, write_json

    register_resolvers()
    data = tmp_path / "d.json"
    rows = [{"input": "a", "output": "b"}] * 16
    data.write_text(json.dumps({"train": rows, "validation": rows, "test": rows}))
    common = ["dataset=json", f"dataset.path={data}"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        old = compose("config", overrides=common + ["optimizer.lr=1e-3", "training.epochs=1"])
        many = compose("config", overrides=common + ["optimizer.lr=3e-3", "training.epochs=2", "seed=3",
                                                     "peft.lora_rank=2", "peft.lora_alpha=8"])
        master = compose("config", overrides=common, return_hydra_config=True)
    GlobalHydra.instance().clear()
    job = ["optimizer.lr=3e-3", "training.epochs=1"]
    run_dir = tmp_path / "sweep" / "lr3e-3_epochs1"
    layout.saved_config(run_dir).parent.mkdir(parents=True)
    OmegaConf.save(old, layout.saved_config(run_dir), resolve=True)
    write_json(run_dir / layout.MANIFEST_FILE, {"inputs": input_identity(old, *resolve_paths(old, build=False))})
    RunState(RunStatus.FINISHED, name=run_dir.name, config_hash="0" * 16).save(run_dir)
    data.write_text(json.dumps({"train": rows[:12], "validation": rows, "test": rows}))
    with pytest.raises(CruijffError) as e:
        Planner(master, tmp_path / "sweep").plan([job])
    line = str(e.value)
    assert "(optimizer.lr 0.001 -> 0.003, data file " in line and f"{data}: content changed)" in line, line
    assert "!=" not in line and "\n" not in line
    # more changes than are shown: the first three, and how many more
    text = config_changes(old, None, many, *resolve_paths(many, build=False))
    assert text.count(" -> ") == 3 and text.endswith(" and 2 more"), text


def test_status_exits_1_while_a_run_of_the_sweep_is_failed(tmp_path):
    """A script can tell from status's exit code whether anything failed: 1 with a failed run, 0
    once it finished."""
    import subprocess
    import sys

    from cruijff.records import PlannedRunRecord, RunState, RunStatus, SweepPlan

    sweep_dir = tmp_path / "sweep"
    SweepPlan("sweep", runs=[PlannedRunRecord("a", ["x=1"]), PlannedRunRecord("b", ["x=2"])]).save(sweep_dir)
    RunState(RunStatus.FINISHED, name="a", checkpoints=["epoch_0"]).save(sweep_dir / "a")
    RunState(RunStatus.FAILED, name="b", error="CUDA out of memory").save(sweep_dir / "b")

    def status():
        return subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)], capture_output=True, text=True)

    failed = status()
    assert failed.returncode == 1, failed.stderr
    assert " b " in failed.stdout and "failed" in failed.stdout
    RunState(RunStatus.FINISHED, name="b", checkpoints=["epoch_0"]).save(sweep_dir / "b")
    assert status().returncode == 0


def test_a_cancelled_jobs_state_names_the_user_not_the_uid():
    import os
    import pwd

    from cruijff.cluster import with_user_names

    me = pwd.getpwuid(os.getuid()).pw_name
    assert with_user_names(f"CANCELLED by {os.getuid()}") == f"CANCELLED by {me}"
    assert with_user_names("CANCELLED by 4294967") == "CANCELLED by uid 4294967"
    assert with_user_names("TIMEOUT") == "TIMEOUT"
