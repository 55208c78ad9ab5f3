"""Every use of submitit's private parts, in one place: a job array's sbatch script as submitit
would submit it, and the exit status of a local job's process. A submitit upgrade that moves
them breaks here only."""

from __future__ import annotations

from typing import Any


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
