"""What every backend's jobs share: their names, the resources a run asks for, the folder
submitit keeps their files in, and what a job stopped at its time limit records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from ..records import layout

RESOURCES = {"timeout_min": int, "gpus_per_node": int, "cpus_per_task": int, "mem_gb": float}


def job_name(experiment: str, kind: str) -> str:
    """A job name SLURM shows in squeue: no spaces or shell characters, whatever the experiment name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", f"cruijff-{kind}-{experiment}")[:100]


def preset_resources(cluster: DictConfig, resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's GPUs, CPUs, memory and time limit, with ``resources`` in their place where given."""
    return {k: cluster.get(k) for k in RESOURCES} | (resources or {})


def largest(resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Enough for any of these runs (one job that evaluates them all)."""
    out: dict[str, Any] = {}
    for r in resources:
        for k, v in r.items():
            out[k] = max(out.get(k, v), v)
    return out


def job_folder(config: DictConfig) -> Path:
    """Where submitit keeps the files of every job of a sweep — training, eval, the detached finish
    job: ``hydra.launcher.submitit_folder``, default ``<sweep dir>/.submitit/%j`` (``%j``: the job id)."""
    folder = OmegaConf.select(config, "hydra.launcher.submitit_folder", default=None)
    return Path(str(folder)) if folder else layout.submitit_folder(Path(str(config.hydra.sweep.dir)))


def share(total: int, sizes: list[int]) -> list[int]:
    """``total`` array slots shared by groups of these sizes, in proportion, at least 1 each: the
    grid's arrays together run about ``cluster.max_parallel`` tasks at once."""
    n = sum(sizes)
    return [max(1, total * size // n) for size in sizes]


def time_limit_message(error: BaseException, cluster: DictConfig) -> str | None:
    """What to record when submitit stopped a job at its time limit with no requeue left (its
    ``UncompletedJobError``, raised wherever the job was); None for any other error."""
    if type(error).__name__ != "UncompletedJobError" or "timed-out" not in str(error):
        return None
    return (f"stopped at its time limit (cluster.timeout_min={cluster.get('timeout_min')}) with no requeue left "
            f"(cluster.max_requeue={cluster.get('max_requeue')}); a re-run resumes after its last complete epoch")
