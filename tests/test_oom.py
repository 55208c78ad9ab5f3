"""Out of GPU memory, a run retries itself in the same job: from its last complete epoch, with half
the micro-batch and twice the gradient accumulation (the same effective batch, learning rates and
data order, the same config hash), up to ``training.oom_retries`` times; then it fails in one line.

There is no GPU here: the out-of-memory error is ``CRUIJFF_TEST_OOM`` (cruijff.finetune.recipe), a
real ``torch.OutOfMemoryError`` raised in the recipe's setup or in a step's forward pass while the
micro-batch is at least a given size. Everything else is real: the launcher, torchtune's recipe on
the tiny model, the resume, the sweep, ``status`` and the report.

torchtune 0.6.1 weighs each micro-batch's loss by its unmasked tokens and divides the accumulated
gradients and the logged loss by the step's tokens, so a step of 2 x 2 examples computes what a step
of 4 x 1 does (the same examples: the sampler orders examples, not batches); the losses differ only
by float rounding (padding to another length changes the matmul shapes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config, launch
from cruijff.records import layout

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("oom")]

ARGS = ["training.epochs=3", "training.batch_size=4", "eval=none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """18 training rows: 4 steps of 4 per epoch, the last 2 rows left out (torchtune drops a partial
    micro-batch). Micro-batches of 2 would fit a ninth: a retried epoch still ends after 4 steps."""
    from cruijff import assets

    rows = json.loads(Path(assets.capitalization_file()).read_text())
    path = tmp_path_factory.mktemp("oom-data") / "small.json"
    path.write_text(json.dumps({"train": rows["train"][:18], "validation": rows["validation"][:8],
                                "test": rows["test"][:8]}))
    return path


def _train(work: Path, data: Path, oom: str | None, *args: str, experiment: str = "oom"):
    """One launch with ``args`` (``oom``: the CRUIJFF_TEST_OOM setting, or none); (process, run dir)."""
    os.environ.pop("CRUIJFF_TEST_OOM", None)
    if oom:
        os.environ["CRUIJFF_TEST_OOM"] = oom
    try:
        proc = launch(*args, "dataset=json", f"dataset.path={data}", f"experiment.name={experiment}", cwd=work)
    finally:
        os.environ.pop("CRUIJFF_TEST_OOM", None)
    runs = [p.parent for p in (work / "outputs" / experiment).glob("*/finetune.yaml")]
    return proc, runs[0] if len(runs) == 1 else None


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in layout.loss_file(run_dir).read_text().splitlines()]


def _state(run_dir: Path) -> dict:
    return json.loads(layout.run_file(run_dir).read_text())


def _trained_with(run_dir: Path) -> tuple[int, int]:
    import yaml

    conf = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    return conf["batch_size"], conf["gradient_accumulation_steps"]


def _same_steps(rows: list[dict], reference: list[dict]) -> None:
    """The same steps and learning rates; the same losses up to float rounding."""
    assert [(r["epoch"], r["step"], r["lr"]) for r in rows] == [(r["epoch"], r["step"], r["lr"]) for r in reference]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in reference], rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data, tiny_model_dir):
    """A run never out of memory: micro-batch 4, no accumulation."""
    proc, run_dir = _train(tmp_path_factory.mktemp("reference"), data, None, *ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def epoch_oom(tmp_path_factory, data, tiny_model_dir):
    """Micro-batches of 4 run out of memory at epoch 1 step 6; 2 fit."""
    return _train(tmp_path_factory.mktemp("epoch-oom"), data, "1:6:4", *ARGS)


@pytest.fixture(scope="module")
def every_size(tmp_path_factory, data, tiny_model_dir):
    """Every micro-batch runs out of memory at epoch 0 step 2: (process, run dir, its run.json, the
    status command's output) as the failed launch left them."""
    proc, run_dir = _train(tmp_path_factory.mktemp("every-size"), data, "0:2:1", *ARGS)
    status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(run_dir.parent)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"})
    return proc, run_dir, _state(run_dir), status


def test_out_of_memory_in_an_epoch_retries_it_with_half_the_micro_batch_as_the_same_training(epoch_oom, reference):
    proc, run_dir = epoch_oom
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = "out of GPU memory at epoch 1 step 6; retrying with micro-batch 4 -> 2, gradient accumulation 1 -> 2"
    assert line in proc.stdout
    state, ref = _state(run_dir), _state(reference)
    assert state["status"] == "finished" and state["attempts"] == 1 and state["resumed_from"] == "epoch_0"
    (retry,) = state["retries"]
    assert retry["kind"] == "cuda_oom" and retry["at"] == "epoch 1 step 6"
    assert retry["before"] == {"batch_size": 4, "gradient_accumulation_steps": 1}
    assert retry["after"] == {"batch_size": 2, "gradient_accumulation_steps": 2}
    assert retry["error"].startswith("CUDA out of memory.")
    assert state["effective_batch"] == ref["effective_batch"] == 4
    assert state["config_hash"] == ref["config_hash"]  # only finetune.yaml says otherwise
    assert _trained_with(run_dir) == (2, 2) and _trained_with(reference) == (4, 1)
    manifest = json.loads((run_dir / layout.MANIFEST_FILE).read_text())
    assert (manifest["batch_size"], manifest["gradient_accumulation_steps"]) == (2, 2)
    assert manifest["retries"] == state["retries"]
    # epoch_0 was kept, not trained again: its files are older than the retry, its adapter the reference's
    assert max(p.stat().st_mtime for p in (run_dir / "epoch_0").iterdir()) < retry["time"]
    assert layout.checkpoint_id(run_dir / "epoch_0") == layout.checkpoint_id(reference / "epoch_0")
    # epochs 1 and 2 trained with 2 x 2 as the reference did with 4 x 1: the same 16 of the 18 rows an epoch
    rows = _rows(run_dir)
    assert [r for r in rows if r["epoch"] == 0] == [r for r in _rows(reference) if r["epoch"] == 0]
    _same_steps(rows, _rows(reference))
    assert [e["steps"] for e in state["epochs"]] == [4, 4, 4]
    assert "ACTION: Retry\n  Details: " + run_dir.name + ": " + line.replace("; retrying with", ";") in \
        (run_dir.parent / "run-experiment.log").read_text()
    # the run's report says how it was retried
    retried = "Retried: cuda_oom at epoch 1 step 6: batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2"
    assert f"{run_dir.name}: {retried}" in proc.stdout
    assert retried in layout.run_table(run_dir, "md").read_text()


def test_out_of_memory_at_every_micro_batch_fails_in_one_line_naming_the_smallest(every_size):
    proc, run_dir, state, status = every_size
    assert proc.returncode == 1
    error = ("out of GPU memory at epoch 0 step 2 with micro-batch 1 (tried 4, 2, 1; training.oom_retries=2): "
             "tiny_llama is sized for 1 GPU (model.resources.gpus) and trained on 1; try "
             "training.enable_activation_checkpointing=true, more GPUs (training.nproc=2), GPUs with more memory "
             "or shorter sequences (model.tokenizer.max_seq_len, 256 now)")
    assert f"cruijff: {run_dir.name}: fine-tuning failed: {error}" in proc.stderr
    assert state["status"] == "failed" and state["error"] == error
    assert [(r["before"]["batch_size"], r["after"]["batch_size"], r["after"]["gradient_accumulation_steps"])
            for r in state["retries"]] == [(4, 2, 2), (2, 1, 4)]
    assert {r["at"] for r in state["retries"]} == {"epoch 0 step 2"}
    assert "torch.OutOfMemoryError" in layout.error_file(run_dir).read_text()
    assert status.returncode == 1, status.stderr[-2000:]  # a run failed
    assert "retried cuda_oom x2" in status.stdout
    for retry in ("cuda_oom at epoch 0 step 2: batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2",
                  "cuda_oom at epoch 0 step 2: batch_size 2 -> 1, gradient_accumulation_steps 2 -> 4"):
        assert f"{run_dir.name}: retried {retry}" in status.stdout


def test_a_later_attempt_starts_from_the_smallest_micro_batch_needed(every_size, data, reference):
    """Launched again (memory to spare now), the run starts at micro-batch 1 x 4 instead of running
    out of memory at 4 and 2 again, and trains what micro-batch 4 x 1 trains."""
    _, run_dir, _, _ = every_size
    proc, again = _train(run_dir.parent.parent.parent, data, "0:2:2", *ARGS)  # 2 and more would still not fit
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again == run_dir and "out of GPU memory at" not in proc.stdout
    assert ("training with micro-batch 1 x gradient accumulation 4: an earlier attempt ran out of GPU memory "
            "with more") in proc.stdout
    state = _state(run_dir)
    assert state["status"] == "finished" and state["attempts"] == 2 and len(state["retries"]) == 2
    assert _trained_with(run_dir) == (1, 4)
    assert "training.batch_size 4 x training.gradient_accumulation_steps 1 ran out of GPU memory" in \
        (run_dir / "finetune.yaml").read_text()
    _same_steps(_rows(run_dir), _rows(reference))


def test_out_of_memory_in_setup_is_retried_and_the_sweep_says_so(tmp_path, data, tiny_model_dir):
    """A sweep of micro-batch 4 and 2 where 4 does not fit (from setup on): the first run is retried
    with 2 x 2, the second trains as it is; the orchestration log and the sweep's summary say which."""
    proc, _ = _train(tmp_path, data, "setup:4", "-m", "peft.lora_rank=8", "optimizer.lr=1e-3", "training.epochs=1",
                     "training.batch_size=4,2", "eval=none", experiment="oom-sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "oom-sweep"
    (big,) = [d for d in sweep.iterdir() if "_bs4_" in d.name]
    (small,) = [d for d in sweep.iterdir() if "_bs2_" in d.name]
    (retry,) = _state(big)["retries"]
    assert retry["at"] == "setup" and retry["after"] == {"batch_size": 2, "gradient_accumulation_steps": 2}
    assert _state(big)["status"] == "finished" and _state(big)["epochs"][0]["steps"] == 4  # 18 rows / 4 per step, 2 left out
    assert _state(small)["retries"] == [] and _trained_with(small) == (2, 1)
    log = (sweep / "run-experiment.log").read_text()
    assert (f"ACTION: Retry\n  Details: {big.name}: out of GPU memory at setup; micro-batch 4 -> 2, "
            "gradient accumulation 1 -> 2") in log
    assert log.count("ACTION: Retry") == 1
    summary = (sweep / "summary.md").read_text()
    assert f"- `{big.name}`: cuda_oom at setup: batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2" in summary
    assert small.name not in summary.split("Retried with other resources")[1].split("\n\n")[1]


def test_oom_retries_is_checked_and_not_part_of_the_run(tmp_path, tiny_model_dir):
    from cruijff.config import config_hash
    from cruijff.config.identity import run_name

    proc = launch("training.oom_retries=-1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "training.oom_retries=-1: must be an integer >= 0" in proc.stderr
    assert config_hash(compose_config("training.oom_retries=0")) == config_hash(compose_config())
    assert run_name(["training.oom_retries=5", "optimizer.lr=1e-3"]) == run_name(["optimizer.lr=1e-3"])
