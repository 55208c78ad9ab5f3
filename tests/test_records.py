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
