"""Every use of submitit's private parts, in one place: a job array's sbatch script as submitit
would submit it, the exit status of a local job's process, and a hook after a SLURM job's requeue. A submitit upgrade that moves
them breaks here only."""

from __future__ import annotations

from typing import Any, Callable


def array_script(auto_executor: Any, tasks: int) -> str:
    """The sbatch script submitit would submit for an array of ``tasks`` tasks of this
    ``AutoExecutor`` (a SLURM one)."""
    executor = auto_executor._executor
    executor.parameters["map_count"] = tasks
    return executor._make_submission_file_text(executor._submitit_command_str, "scaffold")


def process_returncode(job: Any) -> int | None:
    """A local job's process exit status (negative: the signal that killed it); None while it
    runs, or for a job that has no process here."""
    rc = getattr(getattr(job, "_process", None), "returncode", None)
    return rc if isinstance(rc, int) else None


def after_requeue(action: Callable[[], None]) -> None:
    """Run ``action`` in this SLURM job right after submitit's ``scontrol requeue`` (the last thing
    its signal handler does before the job exits): submitit has no hook there, so its SLURM job
    environment's requeue is wrapped, in this process only."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    requeue_job = SlurmJobEnvironment._requeue

    def _requeue(env: Any, countdown: int) -> None:
        requeue_job(env, countdown)
        action()

    SlurmJobEnvironment._requeue = _requeue
