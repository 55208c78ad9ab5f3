"""The one interface to where jobs run, chosen once from ``cluster.executor``: :func:`backend`.

Callers ask the backend, never the executor's name: whether jobs run on this machine, whether
they wait in a scheduler's queue (and so outlive the launcher, and the queue says how each
ended), the submitit executor for a run's resources, array sizes and throttles, the check
before submitting, watching jobs until they end, and why a job ended.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from omegaconf import DictConfig

from ..errors import ConfigError


class Backend:
    """Where a sweep's jobs run. The defaults are those of a backend without a scheduler."""

    name: ClassVar[str]
    on_this_machine: ClassVar[bool] = False  # jobs run here, sharing this machine's GPUs and CPUs
    queued: ClassVar[bool] = False           # jobs wait in a scheduler's queue: they outlive the launcher,
                                             # and the queue says which still run and how each ended
    stock_launcher: ClassVar[str]            # hydra-submitit's launcher whose job side runs a task
    poll_s: ClassVar[float] = 3.0            # how often watched jobs are looked at

    def __init__(self, cluster: DictConfig):
        self.cluster = cluster

    def executor(self, folder: Path | str, *, name: str, dependency: str | None = None,
                 resources: dict[str, Any] | None = None, parallel: int | None = None) -> Any:
        """A submitit executor; ``resources`` replace the preset's GPUs, CPUs, memory and time
        limit, ``parallel`` its array throttle (``cluster.max_parallel``)."""
        raise NotImplementedError

    def resources(self, cfg: DictConfig) -> dict[str, Any]:
        """What one run's job asks the scheduler for (empty where there is none)."""
        return {}

    def max_array_size(self) -> int:
        """Tasks per job array."""
        return 1_000_000

    def slots(self, sizes: list[int]) -> list[int | None]:
        """Each array's share of the throttle, for arrays of these sizes (None: the preset's)."""
        return [None] * len(sizes)

    def preflight(self, name: str, resources: dict[str, Any] | None = None, tasks: int = 1) -> None:
        """Raise the one line of a job the scheduler would refuse, before anything is submitted."""

    def submitted(self, submit: Callable[[], Any], resources: dict[str, Any] | None = None) -> Any:
        """``submit()`` (a submitit submission), a refusal as its one line."""
        return submit()

    def script_header(self, name: str, resources: dict[str, Any] | None = None) -> list[str] | None:
        """A job script's scheduler lines (None: no scheduler reads scripts)."""
        return None

    def array_script(self, executor: Any, tasks: int) -> str | None:
        """The script an array of ``tasks`` tasks of ``executor`` is submitted as (None: none)."""
        return None

    def refresh(self, jobs: list) -> None:
        """Ask the scheduler once about every watched job (before :meth:`ended` of each)."""

    def ended(self, job: Any) -> bool:
        """Whether a watched job has ended (its result is there, or it will not give one)."""
        return job.paths.result_pickle.exists() or job.done()

    def state(self, job: Any) -> str:
        """The scheduler's word on a job (empty: none)."""
        return ""

    def active(self, job_ids: list[str]) -> set[str]:
        """Which of these jobs the scheduler still holds (pending or running)."""
        return set()

    def ended_jobs(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        """Those of these jobs that ended, with the scheduler's state and end time."""
        return {}

    def memory_exceeded(self, job: Any) -> str | None:
        """How the scheduler said it ended a job for using more memory than it asked for (None: it did not)."""
        return None

    def watch(self, jobs: list, on_end: Callable[[Any], list | None],
              on_poll: Callable[[], None] | None = None) -> None:
        """Call ``on_end(job)`` for each job as it ends, polling every few seconds; returns when all
        ended. ``on_end`` may return new jobs (an eval job for a run that just finished, a job
        resubmitted with more memory): they are watched too. ``on_poll`` is called at each poll
        (a live view redraws)."""
        pending = list(jobs)
        while pending:
            if on_poll:
                on_poll()
            self.refresh(pending)
            still = []
            for job in pending:
                if self.ended(job):
                    still += on_end(job) or []
                else:
                    still.append(job)
            pending = still
            if pending:
                time.sleep(self.poll_s)


def backends() -> dict[str, type[Backend]]:
    """Each backend by its ``cluster.executor`` value."""
    from .local import LocalBackend
    from .slurm import SlurmBackend

    return {b.name: b for b in (LocalBackend, SlurmBackend)}


def backend_class(executor: Any) -> type[Backend]:
    """The backend of ``cluster.executor=<executor>``; any other value is a ConfigError naming the key."""
    known = backends()
    if str(executor) not in known:
        raise ConfigError("cluster.executor", executor, "one of " + ", ".join(known))
    return known[str(executor)]


def backend(cluster: DictConfig) -> Backend:
    """The backend of a ``cluster`` preset (``cfg.cluster``)."""
    return backend_class(cluster.executor)(cluster)
