"""Runs on several GPUs: torchtune's distributed LoRA recipe through torchrun.

There is no GPU here, so the recipe runs for real with 2 CPU processes (gloo); what a GPU node adds
(NCCL, one GPU per process) is checked as rendered text: the ``tune run`` command and the sbatch
script a multi-GPU model gets.
"""

from __future__ import annotations

import json

import pytest

from conftest import compose_config, launch
from cruijff import config, finetune
from cruijff.cluster import backend, make_executor
from cruijff.records import layout


def test_gpus_of_a_slurm_run_become_torchrun_processes_and_sbatch_gpus(tmp_path):
    cfg = compose_config("cluster=slurm", "model.resources.gpus=8", "cluster.partition=gpu")
    assert config.processes(cfg) == 8
    finetune.write_config({"output_dir": "/o"}, tmp_path / "finetune.yaml", "r", config.processes(cfg))
    header = (tmp_path / "finetune.yaml").read_text()
    assert "tune run --nproc_per_node 8 lora_finetune_distributed --config" in header
    script = backend(cfg.cluster).array_script(make_executor(cfg.cluster, tmp_path / "%j", name="x"), 1)
    assert "#SBATCH --gpus-per-node=8" in script and "#SBATCH --nodes=1" in script
    assert "--ntasks" not in script  # one task: the job starts torchrun, torchrun starts the 8
    # one GPU per run, or training forced onto the CPU: the single-device recipe in the job process
    assert config.processes(compose_config("cluster=slurm")) == 1
    assert config.processes(compose_config("model.resources.gpus=4", "training.device=cpu")) == 1
    assert config.processes(compose_config("training.nproc=2")) == 2


def test_local_jobs_each_get_their_own_gpus(monkeypatch):
    """No GPU here: the GPU count is set by hand; the test checks which devices each job is given."""
    from cruijff import hardware as sweep

    monkeypatch.setattr(sweep, "gpu_count", lambda: 8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # recorded first, so the test leaves it as it found it
    assert sweep.local_parallel("auto", 2) == 4 and sweep.local_parallel("auto", 1) == 8
    assert sweep.local_parallel("auto", 16) == 1 and sweep.local_parallel(3, 2) == 3
    seen = []
    for slot in range(5):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        sweep.pin_gpus(slot, 2)
        seen.append(__import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0,1", "2,3", "4,5", "6,7", "0,1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # SLURM or the user chose already: left alone
    sweep.pin_gpus(1, 1)
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "5"


@pytest.mark.slow
def test_two_process_run_trains_checkpoints_and_evaluates(tmp_path, tiny_model_dir):
    proc = launch("training.nproc=2", "training.epochs=2", "training.max_steps_per_epoch=3",
                  "experiment.name=dist", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "dist"
    run_dir = sweep_dir / "nproc2_epochs2_steps3"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["checkpoints"] == ["epoch_0", "epoch_1"]
    assert [e["steps"] for e in state["epochs"]] == [3, 3]
    assert "tune run --nproc_per_node 2 lora_finetune_distributed" in (run_dir / "finetune.yaml").read_text()
    assert "lora_finetune_distributed on 2 processes" in (sweep_dir / "run-experiment.log").read_text()
    # rank 0 tidies each adapter-only epoch as one device does: PEFT's files, no weights, no .pt
    for epoch in (0, 1):
        names = sorted(p.name for p in (run_dir / f"epoch_{epoch}").iterdir())
        assert "adapter_config.json" in names and "adapter_model.safetensors" in names, names
        assert not any(n.startswith("model-") or n.endswith(".pt") for n in names), names
    assert json.loads((run_dir / "epoch_1" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    # ... and marks each complete: the id is the adapter's content hash
    assert [layout.checkpoint_id(run_dir / f"epoch_{e}") for e in (0, 1)] == [
        layout.adapter_id(run_dir / f"epoch_{e}") for e in (0, 1)]
    for epoch in (0, 1):
        cell = json.loads((run_dir / "eval" / f"epoch_{epoch}" / "results.json").read_text())
        assert cell["tasks"]["exact_match"]["status"] == "success"


@pytest.mark.slow
def test_two_process_full_finetuning_trains_and_marks_its_epoch(tmp_path, tiny_model_dir):
    """torchtune's full_finetune_distributed starts its own process group and saves through its
    checkpoint client; rank 0 marks the epoch complete after it."""
    proc = launch("training.nproc=2", "peft=none", "optimizer.lr=1e-4", "training.epochs=1",
                  "training.max_steps_per_epoch=2", "eval=none", "experiment.name=distfull", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "distfull" / "nproc2_peft-none_lr1e-4_epochs1_steps2"
    assert "tune run --nproc_per_node 2 full_finetune_distributed" in (run_dir / "finetune.yaml").read_text()
    marker = json.loads(layout.complete_marker(run_dir / "epoch_0").read_text())
    assert marker["kind"] == "full" and marker["epoch"] == 0 and len(marker["checkpoint_id"]) == 32
    assert json.loads((run_dir / "run.json").read_text())["checkpoints"] == ["epoch_0"]


@pytest.mark.slow
def test_two_process_run_that_diverges_is_recorded_with_its_reason(tmp_path):
    proc = launch("training.nproc=2", "optimizer.lr=1e6", "training.epochs=1", "eval=none",
                  "experiment.name=distnan", cwd=tmp_path)
    assert proc.returncode == 1
    state = json.loads((tmp_path / "outputs" / "distnan" / "nproc2_lr1e6_epochs1" / "run.json").read_text())
    assert state["status"] == "failed" and state["error"].startswith("loss became nan at epoch 0 step ")
    assert state["checkpoints"] == []
