"""Where each run of a sweep stands, from its ``run.json`` and, on SLURM, the queue."""

from __future__ import annotations

from pathlib import Path

from ..cluster import active_slurm_jobs, ended_jobs
from ..errors import CruijffError
from ..records import ActionLog, RunState, RunStatus, SweepPlan, liveness, sweep_runs
from .deaths import finished_anyway, may_be_at_work, record_death


def settle(sweep_dir: Path, slurm: bool, act: ActionLog) -> tuple[list[str], set[str], dict[str, str]]:
    """Each planned run's standing: the finished runs, the runs a job is still at work on (an
    earlier detached or orphaned launch's: a SLURM job in the queue, or a local job's live process),
    and the failed runs with their reasons. A run whose record says running but whose SLURM job
    is gone is recorded as dead here (a local job's death is recorded by the launch that redoes it)."""
    plan = SweepPlan.of(sweep_dir)
    jobs = plan.jobs if plan else {}
    states = {r.name: RunState.of(sweep_dir / r.name) for r in sweep_runs(sweep_dir)}
    active: set[str] = set()
    if slurm:
        maybe = [n for n, st in states.items() if n in jobs and may_be_at_work(st, jobs[n])]
        try:
            alive = active_slurm_jobs([jobs[n] for n in maybe])
        except CruijffError as e:  # those runs then count as not finished
            act("squeue failed", str(e))
        else:
            active = {n for n in maybe if jobs[n] in alive}
            gone = [n for n in maybe if n not in active and states[n] is not None
                    and states[n].status is RunStatus.RUNNING]
            ended = ended_jobs([jobs[n] for n in gone])
            for name in gone:
                job = jobs[name]
                how = f"SLURM job {job} ended " + (ended[job][0] if job in ended else "(cancelled, timed out or killed)")
                if finished_anyway(sweep_dir / name, how) is None:
                    record_death(sweep_dir / name, f"{how} while fine-tuning", job)
                states[name] = RunState.of(sweep_dir / name)
    dead: dict[str, str] = {}  # a local job's, by its record: the launch that redoes it records it
    for name, st in states.items():  # a local job an earlier launch left running (its launcher was killed)
        if name in active or st is None:
            continue
        if liveness.at_work(st):
            active.add(name)
        elif liveness.gone(st):
            dead[name] = liveness.death(st)
    # a run stopped at a rung (early_stop=halving) ended as planned: evaluated like a finished one
    finished = [n for n, st in states.items() if st is not None and (st.finished or st.stopped)]
    failed = {n: ((dead.get(n) or st.error or st.status.value) if st is not None else "did not start")
              for n, st in states.items() if n not in finished and n not in active}
    return finished, active, failed


def summary_line(total: int, finished: list[str], active: set[str], failed: dict[str, str],
                 cells_failed: dict[str, str] | None = None, stopped: list[str] | None = None) -> str:
    """``finished``: the runs that ended as planned, ``stopped`` (early stopping) among them."""
    stopped = stopped or []
    summary = f"{len(finished) - len(stopped)}/{total} runs finished"
    if stopped:
        summary += f", {len(stopped)} stopped early"
    if active:
        summary += f", {len(active)} still running in earlier jobs ({', '.join(sorted(active))})"
    if failed:
        summary += f", {len(failed)} failed: " + "; ".join(f"{n}: {w}" for n, w in failed.items())
    if cells_failed:
        summary += (f", {len(cells_failed)} eval cell{'s' if len(cells_failed) > 1 else ''} without a score: "
                    + "; ".join(f"{n}: {w}" for n, w in cells_failed.items()))
    return summary
