"""One run on several GPUs: torchtune's stock ``lora_finetune_distributed`` recipe under torchrun.

``launch`` (in the job) starts ``torchrun --standalone --nproc_per_node N -m
cruijff.finetune.distributed finetune.yaml loss.jsonl``, which is what ``tune run --nproc_per_node N
lora_finetune_distributed --config finetune.yaml`` does, plus two things the job needs from the
recipe: rank 0 appends each step's loss to ``loss.jsonl`` (and stops the run on a NaN loss, as on
one device), and a failure's one-line reason is left in ``logs/train-error-<rank>.json`` (each rank) for the job's
record. On GPUs the process group is the stock recipe's own (NCCL, with gloo for CPU tensors). On a
CPU-only machine, where the stock recipe cannot start (it asks for NCCL and for CUDA memory calls),
the group is gloo and those calls do nothing: that is how the distributed path is tested
without GPUs.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .recipe import TrainingDiverged, _clone_before_merge, _load_recipe_module, _LossTap
from .render import DISTRIBUTED

try:  # looked up here: the child between fork and exec must not load libraries
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """torchrun gets SIGTERM (and stops its workers) if the job process dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(config: Path, nproc: int, loss_file: Path | None) -> None:
    """Run ``config`` with ``nproc`` processes; raise with the failure's reason if training failed."""
    loss_file = loss_file or config.parent / "logs" / "loss.jsonl"
    for stale in loss_file.parent.glob("train-error*.json"):
        stale.unlink()
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the workers import cruijff from here too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # the job's CPU threads are shared among its processes instead of oversubscribing the cores
    threads = int(env.get("OMP_NUM_THREADS") or env.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "-m", __name__, str(config), str(loss_file)]
    proc = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
    try:
        code = proc.wait()
    except BaseException:  # the job is being stopped (signal, time limit): stop the workers with it
        proc.terminate()  # torchrun stops its workers (it gives them 30 s before SIGKILL)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code == 0:
        return
    reason = None  # the first rank to fail says why; the others fail after it
    for path in sorted(loss_file.parent.glob("train-error*.json"), key=lambda p: p.stat().st_mtime):
        try:
            reason = json.loads(path.read_text())
            break
        except ValueError:
            continue
    if reason and reason.get("type") == "TrainingDiverged":
        raise TrainingDiverged(reason["message"])
    if reason:
        raise RuntimeError(f"{reason['type']}: {reason['message']}")
    raise RuntimeError(f"torchrun with {nproc} processes exited with code {code}; see the job's stderr")


def main(argv: list[str]) -> None:
    """One rank of a distributed run (started by torchrun)."""
    from omegaconf import OmegaConf
    from torch.distributed import init_process_group
    from torchtune import config as tt_config


    config, loss_file = Path(argv[0]), Path(argv[1])
    cfg = OmegaConf.load(config)
    rank = int(os.environ.get("RANK", "0"))
    module = _load_recipe_module(DISTRIBUTED)
    on_gpu = str(cfg.device).startswith("cuda")
    init_process_group("cuda:nccl,cpu:gloo" if on_gpu else "gloo")
    if not on_gpu:
        # the same in-place merge fix as on one device; and the recipe's unconditional memory
        # report after loading the model, which raises on CPU, is skipped (this process only)
        module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
        module.training.get_memory_stats = lambda device: {}
        module.training.log_memory_stats = lambda stats, *a, **k: None
        module.training.cleanup_before_training = gc.collect  # it also resets CUDA memory counters
    try:
        tt_config.log_config(recipe_name="LoRAFinetuneRecipeDistributed", cfg=cfg)
        recipe = module.LoRAFinetuneRecipeDistributed(cfg=cfg)
        recipe.setup(cfg=cfg)
        if recipe._is_rank_zero:
            loss_file.parent.mkdir(parents=True, exist_ok=True)
            sink = loss_file.open("a")

            def on_step(row: dict) -> None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()

            recipe._metric_logger = _LossTap(recipe._metric_logger, recipe, on_step)
        recipe.train()
        recipe.cleanup()
    except BaseException as e:
        (loss_file.parent / f"train-error-{rank}.json").write_text(
            json.dumps({"type": type(e).__name__, "message": str(e), "rank": rank}))
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
