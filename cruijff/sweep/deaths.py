"""Jobs that end without a result: why they died, from what is left, written into the run's record.

Hydra's stock submitit launcher raises when a job dies (killed, cancelled, out of memory, over its
time limit), which aborts the sweep and skips the post-sweep callback; here the death is written to
the run's ``run.json`` and the sweep goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cluster import killed_by, scheduler_state
from ..errors import CruijffError
from ..config import load_run
from ..records import Retry, RunState, RunStatus, complete_epochs, layout, mark_failed, record_finished


def may_be_at_work(state: RunState | None, job_id: str) -> bool:
    """Whether the latest SLURM job submitted for a run may still be at work on it, so that the
    run must not be submitted again: its record is missing or says running, or the record was
    written by an earlier job (a failed run resubmitted and still queued). A failure its own latest
    job wrote is final, even while that job is still winding down in the queue."""
    return (state is None or state.status is RunStatus.RUNNING
            or state.job_id not in (None, str(job_id)))


def dead_reason(job: Any, error: Exception | None, run_dir: Path) -> str:
    """Why the job of the run in ``run_dir`` ended without a result, from what is left: the
    scheduler's word, its process, the run's record, the job's last line of stderr."""
    try:
        state = RunState.of(run_dir)
    except CruijffError:
        state = None
    running = state is not None and state.status is RunStatus.RUNNING
    sched = scheduler_state(job)
    if sched and not sched.startswith(("COMPLETED", "RUNNING", "PENDING")):
        if running:
            done = len(layout.checkpoints(run_dir))
            return (f"SLURM job {job.job_id} ended {sched} while fine-tuning "
                    f"({done} epoch{'' if done == 1 else 's'} saved)")
        last = last_error_line(job)  # it never reached fine-tuning: the job's own last word says why
        return f"SLURM job {job.job_id} ended {sched}" + (f": {last}" if last else "")
    killed = killed_by(job)
    if killed:
        return f"job killed by {killed}"
    if running:  # the job's own record stops mid-training
        return (f"job process {state.pid or '?'} on {state.host or '?'} died while fine-tuning "
                "(killed by a signal or out of memory); it raised no error")
    fallback = [ln for ln in str(error or "").splitlines() if ln.strip()] or [type(error).__name__ if error else "no output"]
    last = last_error_line(job) or fallback[-1].strip()[:300]
    return f"job ended without a result ({job.state}): {last}"


def last_error_line(job: Any) -> str:
    """The last line of a job's stderr that is not a traceback frame or srun's own epilogue."""
    try:
        lines = (job.stderr() or "").splitlines()
    except Exception:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ") and not ln.startswith("srun:")]
    return lines[-1][:300] if lines else ""


def record_death(run_dir: Path, reason: str, job_id: str | None = None) -> None:
    """Mark a run whose job died as failed, with the job that died."""
    mark_failed(run_dir, reason, job_id)


def job_end(job: Any) -> str:
    """How a job ended, in a few words (``SLURM job 12_3 ended CANCELLED by alice``, ``its job was
    killed by SIGKILL``); empty where it ended as it should."""
    sched = scheduler_state(job)
    if sched:
        return "" if sched.startswith(("COMPLETED", "RUNNING", "PENDING", "COMPLETING")) else \
            f"SLURM job {job.job_id} ended {sched}"
    if job.paths.result_pickle.exists():
        return ""
    killed = killed_by(job)
    return f"its job was killed by {killed}" if killed else "its job ended without a result"


def every_epoch_saved(run_dir: Path) -> bool:
    """Whether every epoch the run's saved config trains has a complete checkpoint (False where
    there is no saved config: it did not get as far as training)."""
    try:
        epochs = int(load_run(run_dir).training.epochs)
    except Exception:
        return False
    return complete_epochs(run_dir) >= epochs


def after_save(how: str) -> str:
    """How a job ended (:func:`job_end`) after every epoch of its run was saved, in one line."""
    return f"{how}; every epoch was saved before it ended"


def finished_anyway(run_dir: Path, how: str) -> RunState | None:
    """A run whose job ended without a result (``how``: :func:`job_end`) after the run's last
    epoch was saved is finished: its record says so, and how its job ended (a cancelled job goes
    on until SLURM kills it, and may save its last epoch meanwhile). None where an epoch is missing."""
    if not every_epoch_saved(run_dir):
        return None
    state = record_finished(run_dir)
    return state and ended_after_save(run_dir, state, how)


def ended_after_save(run_dir: Path, state: RunState, how: str) -> RunState:
    """A finished run's record, saying how its job ended after the last save (``how``; nothing
    where it ended as it should)."""
    if how and state.finished:
        state.note = after_save(how)
        state.save(run_dir)
    return state


GROWTH = 1.5  # a job ended for its memory asks for this much more next time


def memory_cap(cluster: Any, planned_mem_gb: float) -> float:
    """The most memory (GB) a run's job may ask for after running out: ``cluster.max_mem_gb``,
    or (null) 4 x the memory the run's config asks for."""
    value = cluster.get("max_mem_gb")
    return float(value) if value is not None else 4 * float(planned_mem_gb)


MB_GB = 1 / 1024  # the smallest step of a job's memory, and the least memory SLURM is asked for


def next_memory(asked_gb: float, cap_gb: float) -> float | None:
    """The memory (GB) a job ended for exceeding ``asked_gb`` asks for next: 1.5 x, at least 1 MB
    more, at most the cap; None where it asked for the cap already."""
    if asked_gb >= cap_gb:
        return None
    return min(max(round(asked_gb * GROWTH, 3), round(asked_gb + MB_GB, 3)), cap_gb)


def at_memory_cap(job_id: str, asked_gb: float, cap_gb: float, why: str) -> str:
    """Why a run failed whose job ran out of memory with as much as the cap allows, in one line."""
    said = why.split(": slurmstepd")[0]  # sacct's word where it has one; slurmstepd's line is in run.json's retries
    return (f"SLURM job {job_id} ran out of memory with {asked_gb:g} GB ({said}); cluster.max_mem_gb={cap_gb:g} "
            "allows no more: raise it (sinfo -o '%P %m' lists the nodes' memory, MB)")


def record_retry(run_dir: Path, retry: Retry, job_id: str) -> None:
    """Append a retry to the run's ``run.json`` (started anew where its job died before writing
    one, or wrote one that cannot be read)."""
    try:
        state = RunState.of(run_dir)
    except CruijffError:
        state = None
    if state is None:
        state = RunState(RunStatus.FAILED, name=run_dir.name, error=f"{retry.kind} in job {job_id}", job_id=job_id)
    state.retries.append(retry)
    state.save(run_dir)


def learned_memory(run_dir: Path) -> float | None:
    """The memory (GB) the run's latest job resubmitted for running out of it asked for, from
    ``run.json``'s ``host_oom`` retries (None: none)."""
    try:
        state = RunState.of(run_dir)
    except CruijffError:
        return None
    grown = [r.after.get("mem_gb") for r in (state.retries if state else []) if r.kind == "host_oom"]
    return float(grown[-1]) if grown and grown[-1] is not None else None
