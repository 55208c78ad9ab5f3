"""What a sweep's finished runs measure for the time limits of runs like them
(:mod:`cruijff.plan.timing`), from run dirs written as a finished run leaves them: ``run.json``,
the manifest's inputs, the saved config, ``logs/loss.jsonl`` and the epochs' completion markers,
whose times are set by hand (a real run's take minutes)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from cruijff.plan.timing import sweep_timings
from cruijff.records import EpochLoss, RunState, RunStatus, layout

CONFIG = """model:
  name: tiny
  tokenizer:
    path: tokenizer.model
    max_seq_len: {seq}
  training:
    batch_size: 99
training:
  epochs: 2
  batch_size: {batch}
  gradient_accumulation_steps: 1
  dtype: auto
  compile: false
  enable_activation_checkpointing: false
  log_every_n_steps: {every}
eval:
  batch_size: 32
"""


def _run(sweep_dir: Path, name: str, *, steps: int = 3, every: int = 1, batch: int = 2, seq: int = 256,
         epoch_s: float = 10.0, copied: bool = False) -> Path:
    """A finished 2-epoch run of ``steps`` optimizer steps per epoch, ``epoch_s`` seconds each."""
    run_dir = sweep_dir / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    layout.saved_config(run_dir).write_text(CONFIG.format(seq=seq, batch=batch, every=every))
    (run_dir / layout.MANIFEST_FILE).write_text(json.dumps({"inputs": {"model": "m1", "data": "d1"}}))
    logged = [{"epoch": (s - 1) // steps, "step": s, "loss": 1.0, "lr": 0.1}  # torchtune: the run-wide step
              for s in range(1, 2 * steps + 1) if s % every == 0]
    layout.loss_file(run_dir).write_text("".join(json.dumps(r) + "\n" for r in logged))
    started = time.time() - 1000
    for e in range(2):
        ckpt = run_dir / f"epoch_{e}"
        ckpt.mkdir()
        marker = layout.complete_marker(ckpt)
        marker.write_text(json.dumps({"version": 1, "checkpoint_id": f"{name}{e}", "kind": "lora"}))
        if not copied:
            os.utime(marker, (started + 5 + (e + 1) * epoch_s,) * 2)
    epochs = [EpochLoss(e, 1.0, 1.0, sum(1 for r in logged if r["epoch"] == e)) for e in range(2)]
    RunState(RunStatus.FINISHED, name=name, started=started, ended=started + 5 + 2 * epoch_s + 1, nproc=1,
             device="cpu", effective_batch=batch, checkpoints=["epoch_0", "epoch_1"], epochs=epochs).save(run_dir)
    return run_dir


@pytest.mark.parametrize("every", [1, 2, 3])
def test_seconds_per_example_count_every_optimizer_step_whatever_is_logged(tmp_path, every):
    _run(tmp_path, "r", steps=3, every=every, batch=2, epoch_s=12.0)
    (measured,) = sweep_timings(tmp_path).values()
    assert measured.runs == 1
    assert measured.s_per_example * 3 * 2 == pytest.approx(12.0)  # 3 steps x 2 examples take 12 s
    assert measured.describe(6) == "measured: 1 run, 12 s/epoch"


def test_a_last_step_not_logged_errs_towards_a_longer_limit(tmp_path):
    """Every 4th of 2 x 3 steps logged: only step 4, in epoch 1, so an epoch has 2 or 3 steps."""
    _run(tmp_path, "r", steps=3, every=4, batch=2, epoch_s=12.0)
    (measured,) = sweep_timings(tmp_path).values()
    assert measured.describe(6) == "measured: 1 run, 18 s/epoch"  # 2 steps counted: slower, never faster


def test_runs_of_another_micro_batch_or_sequence_length_measure_apart(tmp_path):
    _run(tmp_path, "a", batch=2, epoch_s=10.0)
    _run(tmp_path, "b", batch=4, epoch_s=10.0)
    _run(tmp_path, "c", batch=2, seq=1024, epoch_s=40.0)
    _run(tmp_path, "d", batch=2, epoch_s=20.0)
    timings = sweep_timings(tmp_path)
    assert len(timings) == 3
    by = {key[5:7]: m for key, m in timings.items()}  # (batch_size, gradient_accumulation_steps)
    assert by[("4", "1")].runs == 1
    short = next(m for k, m in timings.items() if k[5] == "2" and k[7] == "256")
    assert short.runs == 2 and short.s_per_example * 6 == pytest.approx(15.0)  # a and d only


def test_a_copied_sweep_dir_measures_nothing(tmp_path):
    """``cp -r`` gives every file the time of the copy: epochs of no length, after the run ended."""
    _run(tmp_path / "orig", "r")
    shutil.copytree(tmp_path / "orig", tmp_path / "copy", copy_function=shutil.copy)  # as cp -r: times not kept
    assert sweep_timings(tmp_path / "orig")
    assert sweep_timings(tmp_path / "copy") == {}
    _run(tmp_path / "same", "r", copied=True)  # markers written at one moment now, long after started
    assert sweep_timings(tmp_path / "same") == {}
