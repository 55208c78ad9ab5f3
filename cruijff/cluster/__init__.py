"""Where jobs run: one backend per ``cluster.executor``, chosen once from the config
(:func:`backend`), behind one small interface (:class:`Backend`).

``local`` (:mod:`.local`) runs jobs on this machine; ``slurm`` (:mod:`.slurm`) submits them as
sbatch job arrays of at most the cluster's MaxArraySize tasks, throttled by ``cluster.max_parallel``.
Resources come from the cluster preset, which defaults them to the model's hint (``model.resources``).
Every use of submitit's private parts is in :mod:`._submitit`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from ._submitit import after_requeue
from .backend import Backend, backend, backend_class, backends
from .jobs import RESOURCES, job_folder, job_name, largest, share, time_limit_message
from .local import LocalBackend, killed_by
from .slurm import (SlurmBackend, active_slurm_jobs, array_ids, ended_jobs, refusal, sbatch_directives, sbatch_test,
                    scheduler_state, signal_delay, with_user_names)


def make_executor(cluster: DictConfig, folder: Path | str, *, name: str, dependency: str | None = None,
                  resources: dict[str, Any] | None = None, parallel: int | None = None) -> Any:
    """A submitit executor for ``cluster`` (:meth:`Backend.executor`)."""
    return backend(cluster).executor(folder, name=name, dependency=dependency, resources=resources, parallel=parallel)


def submitted(submit: Callable[[], Any], cluster: DictConfig, resources: dict[str, Any] | None = None) -> Any:
    """``submit()`` (a submitit submission), with a refusal by sbatch as its one line (:meth:`Backend.submitted`)."""
    return backend(cluster).submitted(submit, resources)


def job_resources(cfg: DictConfig) -> dict[str, Any]:
    """What one run's job asks for, from the run's own config: the cluster preset derives these
    from the model's hint and the epochs, so runs of one grid may differ (a grid over models or
    ``training.epochs``). Empty off SLURM."""
    return backend(cfg.cluster).resources(cfg)


__all__ = ["after_requeue", "Backend", "backend", "backend_class", "backends", "LocalBackend", "SlurmBackend", "RESOURCES",
           "job_folder", "job_name", "largest", "share", "time_limit_message", "make_executor", "submitted",
           "job_resources", "killed_by", "active_slurm_jobs", "array_ids", "ended_jobs", "refusal", "sbatch_directives",
           "sbatch_test", "scheduler_state", "signal_delay", "with_user_names"]
