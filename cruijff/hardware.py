"""The machine a job runs on: GPUs, how many jobs fit, which GPUs a job gets, device, dtype, threads.

Nothing here reads a config: callers pass plain values, so the planner, the jobs and the tests
ask the same questions the same way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def gpu_count() -> int:
    """GPUs this process may use (``CUDA_VISIBLE_DEVICES``, else the NVIDIA devices), without starting CUDA."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def gpus_per_run(nproc: Any = "auto", hint: Any = 1) -> int:
    """GPUs one local job uses: ``training.nproc``, else the model's ``resources.gpus`` hint."""
    return max(1, int(hint or 1) if nproc in ("auto", None) else int(nproc))


def local_parallel(value: Any, per_run: int = 1) -> int:
    """Jobs at once on this machine: ``auto`` = as many as the visible GPUs hold (``per_run`` GPUs
    each), or 1 on a CPU-only machine."""
    if value != "auto":
        return max(1, int(value))
    return max(1, gpu_count() // max(1, int(per_run)))


def pin_gpus(slot: int, per_run: int) -> None:
    """A local job in ``slot`` on a machine with K GPUs uses only its own ``per_run`` of them
    (set before CUDA starts): slot n gets GPUs [m*per_run, (m+1)*per_run) with m = n mod (K // per_run)."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    k = gpu_count()
    if k <= per_run:
        return
    first = (slot % (k // per_run)) * per_run
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(first, first + per_run))


def limit_threads(parallel: int) -> None:
    """CPU threads for this job: the CPUs SLURM gave it, or this machine's share among ``parallel``
    local jobs. torch otherwise starts one thread per core of the node in every job, and jobs
    sharing a node slow each other down many times over."""
    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n is None and parallel > 1:
        n = str(max(1, (os.cpu_count() or 1) // parallel))
    if n:
        os.environ.setdefault("OMP_NUM_THREADS", n)
        import torch

        torch.set_num_threads(int(n))


def resolve_device(device: str) -> str:
    """``auto``: cuda where a GPU is visible, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bf16 on a GPU that has it (also when rendered ahead of time for a GPU node), else fp32."""
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # rendered ahead of time for a GPU node
            return "bf16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def eval_device(device: str, gpus: int) -> str:
    """The ``device`` inspect's hf provider gets: a large model is sharded over the node's GPUs."""
    if device.startswith("cuda") and gpus > 1:
        return "auto"
    if device == "cuda":
        return "cuda:0"
    return device
