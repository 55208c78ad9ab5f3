"""One run on several GPUs: torchtune's stock ``lora_finetune_distributed`` recipe (or
``full_finetune_distributed`` with ``peft=none``) under torchrun.

``launch`` (in the job) starts ``torchrun --standalone --nproc_per_node N -m
cruijff.finetune.rank finetune.yaml loss.jsonl`` (each rank: :mod:`.rank`), which is what ``tune run --nproc_per_node N
lora_finetune_distributed --config finetune.yaml`` does, plus two things the job needs from the
recipe: rank 0 appends each step's loss to ``loss.jsonl`` (and stops the run on a NaN loss, as on
one device), and a failure's one-line reason is left in ``logs/train-error-<rank>.json`` (each rank) for the job's
record; a rank that ran out of GPU memory (``torch.OutOfMemoryError``) is raised as
:class:`~.recipe.OutOfGPUMemory`, which the stage retries with a smaller micro-batch. On GPUs the process group is the stock recipe's own (NCCL, with gloo for CPU tensors). On a
CPU-only machine, where the stock recipe cannot start (it asks for NCCL and for CUDA memory calls),
the group is gloo and those calls do nothing: that is how the distributed path is tested
without GPUs.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ..records import layout
from .recipe import OutOfGPUMemory, TrainingDiverged

try:  # looked up here: the child between fork and exec must not load libraries
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """torchrun gets SIGTERM (and stops its workers) if the job process dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(config: Path, nproc: int, loss_file: Path | None, method: str = "lora") -> None:
    """Run ``config`` with ``nproc`` processes; raise with the failure's reason if training failed."""
    run_dir = config.parent
    loss_file = loss_file or layout.loss_file(run_dir)
    for stale in run_dir.glob(layout.rank_error_file(Path("."), "*").as_posix()):
        stale.unlink()
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the workers import cruijff from here too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    # the job's CPU threads are shared among its processes instead of oversubscribing the cores
    threads = int(env.get("OMP_NUM_THREADS") or env.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc_per_node", str(nproc), "-m", f"{__package__}.rank", str(config), str(loss_file), method]
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
    for path in sorted(run_dir.glob(layout.rank_error_file(Path("."), "*").as_posix()), key=lambda p: p.stat().st_mtime):
        try:
            reason = json.loads(path.read_text())
            break
        except ValueError:
            continue
    if reason and reason.get("type") == "TrainingDiverged":
        raise TrainingDiverged(reason["message"])
    if reason and reason.get("type") in ("OutOfGPUMemory", "OutOfMemoryError"):  # the stage retries it
        raise OutOfGPUMemory.from_message(reason["message"], f"rank {reason.get('rank', '?')}")
    if reason:
        raise RuntimeError(f"{reason['type']}: {reason['message']}")
    raise RuntimeError(f"torchrun with {nproc} processes exited with code {code}; see the job's stderr")
