"""A fine-tuning job told it nears its SLURM time limit (submitit's USR2, ``cluster.signal_delay_s``
before it) requeues itself; the requeued job gets a time limit from this attempt's measured epoch
time for the epochs left (:mod:`cruijff.plan.timing`), at most the preset's ``cluster.timeout_min``.

Runs in the job, inside submitit's signal handler. The new limit is set with ``scontrol update
JobId=<job> TimeLimit=<minutes>`` right after submitit's ``scontrol requeue`` (a running job whose
limit were lowered below its elapsed time first could be ended by SLURM's time check before the
requeue). A refused update leaves the old limit; the requeue goes on whatever happens here. Each
change is a ``time_limit`` entry of ``run.json``'s ``retries``, a ``Retry`` line of the sweep's
``run-experiment.log`` and a line of the job's output. A grid's jobs only fine-tune (evals are jobs of
their own); an Optuna trial's job also evaluates, which no record times yet, so it keeps its limit.
"""

from __future__ import annotations

import re
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
from omegaconf import OmegaConf

from .. import cluster
from ..cluster import signal_delay
from ..plan.timing import SLACK, START_S, attempt_timing, limit_minutes
from ..records import ActionLog, Retry, RunState, complete_epochs, layout, slurm_job_id
from ..ui import say


class DelayedSubmission(submitit.helpers.DelayedSubmission):
    """submitit's requeued call, holding the new time limit: submitit reads it to tell a time limit
    (counted against ``cluster.max_requeue``) from a preemption. submitit loads it by this name."""

    limit_min: int | None = None

    def set_timeout(self, timeout_min: int, max_num_timeout: int) -> None:
        super().set_timeout(self.limit_min or timeout_min, max_num_timeout)


@dataclass
class Limit:
    """What a requeue after a time limit does to the job's limit, and why."""

    run_dir: Path
    job_id: str
    before: int         # minutes: the job's limit now
    after: int          # minutes: the requeued job's
    why: str            # what it was computed from, or why the limit is kept


def requeue(function: Any, *args: Any, began: float | None = None) -> DelayedSubmission:
    """submitit's checkpoint: the same call again; after a time limit, with the limit the rest
    needs, set once submitit has requeued the job."""
    delayed = DelayedSubmission(function, *args)
    try:
        limit = decide(began)
    except Exception as e:  # the requeue goes on with the old limit
        say(f"cruijff: time limit not recomputed: {type(e).__name__}: {e}")
        traceback.print_exc()
        return delayed
    if limit is not None:
        delayed.limit_min = limit.after
        after_requeue(lambda: apply(limit))
    return delayed


def decide(began: float | None) -> Limit | None:
    """The requeued job's limit, when this job is stopped at its time limit (by submitit's rule:
    it ran at least min(80 %, limit - 10 min) of it); None when it is preempted or not on SLURM."""
    from hydra.core.hydra_config import HydraConfig

    job_id = slurm_job_id()
    before = job_minutes(job_id) if job_id else None
    if job_id is None or before is None:
        return None
    ran = time.time() - (began or time.time())
    if ran < min(0.8 * before * 60, before * 60 - 600):
        return None
    hydra = HydraConfig.get()
    run_dir = Path(str(hydra.runtime.output_dir))
    cfg = OmegaConf.load(layout.saved_config(run_dir))
    cap = int(cfg.cluster.timeout_min)
    if not str(hydra.sweeper._target_).endswith("GridSweeper"):
        return Limit(run_dir, job_id, before, before, "its eval runs in the same job and is not measured: limit kept")
    timing = attempt_timing(run_dir, RunState.of(run_dir))
    if timing is None:
        return Limit(run_dir, job_id, before, before, "no epoch completed in this attempt to measure: limit kept")
    left = int(cfg.training.epochs) - complete_epochs(run_dir)
    need = timing.startup_s + left * timing.epoch_s
    delay = signal_delay(cfg.cluster, cap)
    after = limit_minutes(need, delay, cap)
    startup = (f" + {timing.startup_s:.0f} s start-up" if timing.epochs > 1
               else " (its one epoch timed with the start-up)")
    return Limit(run_dir, job_id, before, after,
                 f"measured {timing.epoch_s:.0f} s/epoch x {left} epochs left{startup}, x{SLACK:g} + {delay} s "
                 f"signal delay + {START_S} s job start, at most cluster.timeout_min={cap}")


def job_minutes(job_id: str) -> int | None:
    """A SLURM job's time limit in minutes (``scontrol show job``); None when SLURM does not say."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60).stdout
    m = re.search(r"\bTimeLimit=(?:(\d+)-)?(\d+):(\d+):(\d+)", out)
    if not m:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def after_requeue(action: Callable[[], None]) -> None:
    """Run ``action`` in this job right after submitit's ``scontrol requeue`` (the last thing its
    signal handler does before the job exits): the job is requeued whatever ``action`` does; an
    error of it only loses the new limit, and says so."""

    def guarded() -> None:
        try:
            action()
        except Exception as e:  # the job is requeued; only its new limit is lost
            say(f"cruijff: time limit not changed: {type(e).__name__}: {e}")

    cluster.after_requeue(guarded)


def apply(limit: Limit) -> None:
    """Set the requeued job's limit; record it in ``run.json``, the sweep's log and the job's output."""
    error = None
    if limit.after != limit.before:
        proc = subprocess.run(["scontrol", "update", f"JobId={limit.job_id}", f"TimeLimit={limit.after}"],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
            error = f"scontrol update TimeLimit={limit.after} refused: {lines[-1]}; the limit stays {limit.before} min"
    after = limit.before if error else limit.after
    name = limit.run_dir.name
    if after != limit.before or error:
        state = RunState.of(limit.run_dir)
        if state is not None:
            state.retries.append(Retry(kind="time_limit", at=f"job {limit.job_id}",
                                       before={"timeout_min": limit.before}, after={"timeout_min": after},
                                       time=time.time(), error=error))
            state.save(limit.run_dir)
    result = (f"requeued with time limit {limit.before} min: {error}" if error
              else f"requeued with its time limit {after} min: {limit.why}" if after == limit.before
              else f"requeued with time limit {after} min (was {limit.before} min): {limit.why}")
    ActionLog(layout.action_log(limit.run_dir.parent))("Retry", f"{name}: time limit (job {limit.job_id})", result)
    say(f"cruijff: {name}: time limit: {result}")
