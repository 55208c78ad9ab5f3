"""Crash-consistent runs: a job killed at any point of an epoch's save is resumed as if it had never
stopped, a checkpoint counts only once its completion marker is written, and a run whose every
epoch is complete is finished whatever its run.json says.

Real torchtune on the tiny model, 3 epochs of 4 steps (``max_steps_per_epoch`` unset, so epochs
end where the data does). The kill is ``CRUIJFF_TEST_CRASH`` (cruijff.finetune.recipe), a SIGKILL
the fine-tuning process sends itself at a chosen point of a save.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import launch
from cruijff.records import RunStanding, layout, run_standing

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("resume")]

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """32 training rows: 4 steps of 8 per epoch, fewer than the 5 warmup steps of the schedule."""
    from cruijff import assets

    rows = json.loads(Path(assets.capitalization_file()).read_text())
    path = tmp_path_factory.mktemp("resume-data") / "small.json"
    path.write_text(json.dumps({"train": rows["train"][:32], "validation": rows["validation"][:8],
                                "test": rows["test"][:8]}))
    return path


def _args(data: Path, *extra: str) -> list[str]:
    return ["dataset=json", f"dataset.path={data}", f"training.epochs={EPOCHS}", "training.batch_size=8",
            "eval=none", "experiment.name=resume", *extra]


def _train(work: Path, args: list[str], crash: str | None = None):
    os.environ.pop("CRUIJFF_TEST_CRASH", None)
    if crash:
        os.environ["CRUIJFF_TEST_CRASH"] = crash
    try:
        proc = launch(*args, cwd=work)
    finally:
        os.environ.pop("CRUIJFF_TEST_CRASH", None)
    (run_dir,) = [p.parent for p in (work / "outputs" / "resume").glob("*/finetune.yaml")]
    return proc, run_dir


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in layout.loss_file(run_dir).read_text().splitlines()]


def _same_training(resumed: list[dict], uninterrupted: list[dict]) -> None:
    """The resumed run's steps are the uninterrupted run's: the same step numbers, exactly the same
    learning rates, the same losses."""
    assert [(r["epoch"], r["step"]) for r in resumed] == [(r["epoch"], r["step"]) for r in uninterrupted]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in uninterrupted]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in uninterrupted], rel=1e-5, abs=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data, tiny_model_dir):
    """Per method (LoRA, full fine-tuning): the loss rows and checkpoint ids of a run never stopped."""
    done = {}

    def get(*extra: str):
        if extra not in done:
            proc, run_dir = _train(tmp_path_factory.mktemp("uninterrupted"), _args(data, *extra))
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[extra] = _rows(run_dir), [layout.checkpoint_id(d) for d in layout.checkpoints(run_dir)]
        return done[extra]

    return get


def test_a_run_killed_after_its_first_epoch_resumes_as_the_uninterrupted_run(tmp_path, data, uninterrupted):
    """torchtune 0.6.1's single-device LoRA recipe counted steps from 1 again on resume and warmed
    the learning rate up again (without max_steps_per_epoch); the resumed run now goes on at step
    5 with the uninterrupted run's learning rate, and ends with the same adapters."""
    rows, ids = uninterrupted()
    proc, run_dir = _train(tmp_path, _args(data), crash="after-marker:0")
    assert proc.returncode != 0
    assert [d.name for d in layout.checkpoints(run_dir)] == ["epoch_0"]
    assert run_standing(run_dir, json.loads(layout.run_file(run_dir).read_text())["config_hash"], EPOCHS)[0] \
        is RunStanding.REDO

    proc, run_dir = _train(tmp_path, _args(data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch_0" in proc.stdout
    state = json.loads(layout.run_file(run_dir).read_text())
    assert state["status"] == "finished" and state["resumed_from"] == "epoch_0" and state["attempts"] == 2
    _same_training(_rows(run_dir), rows)
    assert [layout.checkpoint_id(d) for d in layout.checkpoints(run_dir)] == ids  # adapters: content hashes
    assert not (run_dir / "recipe_state").exists()  # nothing resumes after the last epoch
    # status and the sweep report say that it resumed
    from cruijff.report import report_sweep
    from cruijff.sweep.table import rows as status_rows

    assert [r["attempts"] for r in status_rows(run_dir.parent)] == ["2, resumed after epoch_0"]
    report_sweep(run_dir.parent)
    assert f"`{run_dir.name}` after epoch_0 (attempt 2)" in (run_dir.parent / "summary.md").read_text()


def test_a_save_cut_short_is_not_a_checkpoint_and_is_redone(tmp_path, data, uninterrupted):
    """Full fine-tuning killed in epoch 1's save, after torchtune wrote its files and its recipe state
    but before the completion marker: epoch_1 does not count, and the run resumes after epoch_0
    from that epoch's own weights (the recipe state of epoch_0 was set aside before the save), as
    the uninterrupted run. Full weights get a fresh id per save."""
    full = ("peft=none", "optimizer.lr=1e-4")
    rows, ids = uninterrupted(*full)
    proc, run_dir = _train(tmp_path, _args(data, *full), crash="before-marker:1")
    assert proc.returncode != 0
    assert layout.checkpoint_kind(run_dir / "epoch_1") == "full"  # its files are all there ...
    assert layout.checkpoint_id(run_dir / "epoch_1") is None  # ... but it is not complete
    assert [d.name for d in layout.checkpoints(run_dir)] == ["epoch_0"]

    proc, run_dir = _train(tmp_path, _args(data, *full))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after epoch_0" in proc.stdout
    assert "epoch_0/model-00001-of-00001.safetensors" in (run_dir / "finetune.yaml").read_text()
    _same_training(_rows(run_dir), rows)
    new_ids = [layout.checkpoint_id(d) for d in layout.checkpoints(run_dir)]
    assert len(new_ids) == EPOCHS and len(set(new_ids + ids)) == 2 * EPOCHS
    assert json.loads(layout.complete_marker(run_dir / "epoch_2").read_text())["kind"] == "full"


def test_a_run_killed_after_its_last_marker_is_finished_not_trained_again(tmp_path, data, tiny_model_dir):
    """Killed after the last epoch's marker, before run.json said finished: the re-run trains
    nothing (the checkpoints' files are untouched), says finished, and brings run.json up to date."""
    proc, run_dir = _train(tmp_path, _args(data), crash=f"after-marker:{EPOCHS - 1}")
    assert proc.returncode != 0
    assert json.loads(layout.run_file(run_dir).read_text())["status"] == "running"
    files = {p: p.stat().st_mtime_ns for d in layout.checkpoints(run_dir) for p in d.iterdir()}
    assert len(layout.checkpoints(run_dir)) == EPOCHS

    proc, run_dir = _train(tmp_path, _args(data))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning finished earlier; skipped" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == files
    state = json.loads(layout.run_file(run_dir).read_text())
    assert state["status"] == "finished" and state["attempts"] == 1
    assert state["checkpoints"] == [f"epoch_{e}" for e in range(EPOCHS)]
    assert [e["steps"] for e in state["epochs"]] == [4] * EPOCHS
    assert "run.json brought up to date" in (run_dir.parent / "run-experiment.log").read_text()
