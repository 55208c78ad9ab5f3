"""The launcher (``hydra/launcher=cruijff``): fine-tuning jobs through submitit, locally or as
SLURM job arrays, watched until they end; a job that dies is recorded, never raised. A job SLURM
ends for exceeding its memory is resubmitted with 1.5 x the memory, up to ``cluster.max_mem_gb``.

Every job of a sweep — training, eval, the detached finish job — keeps its submitit files in one
folder, :func:`cruijff.cluster.job_folder`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from ..cluster import array_ids, backend, job_folder, job_name, largest
from ..config import run_name
from ..plan.table import ENDS, shown_rows
from ..ui import say
from ..errors import ConfigError, CruijffError
from ..records import ActionLog, PlannedRunRecord, Retry, RunState, SweepPlan, layout
from .deaths import (at_memory_cap, dead_reason, ended_after_save, finished_anyway, job_end, learned_memory, memory_cap,
                     next_memory, record_death, record_retry)
from .evals import EvalJobs, eval_todo
from .plan_file import add_runs, record_jobs
from .snapshot import freeze_jobs
from .table import SweepView


def submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit one batch through submitit and wait; every job yields a JobReturn, dead ones too."""
    from hydra.core.utils import JobReturn, JobStatus

    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    names, jobs = submit_jobs(launcher, job_overrides, initial_job_idx)
    act = ActionLog(layout.action_log(sweep_dir))
    where = backend(config.cluster)
    by_job = {id(j): (n, list(o), initial_job_idx + i) for i, (n, j, o) in enumerate(zip(names, jobs, job_overrides))}
    returns: dict[str, Any] = {}
    evals = EvalJobs(config, sweep_dir, act) if eval_per_run(config) else None

    def evaluate(name: str, state: RunState | None) -> list | None:
        """Evaluate a finished run now, while the rest of the grid trains."""
        if evals and state is not None and state.finished:
            todo = eval_todo(sweep_dir, [name], config.eval)
            return evals.submit(todo) if todo else None
        return None

    def ended(job: Any) -> list | None:
        if evals and evals.owns(job):
            return evals.ended(job)
        name, overrides, job_num = by_job[id(job)]
        run_dir = sweep_dir / name
        reason = None
        if job.paths.result_pickle.exists():
            try:
                returns[name] = job.results()[0]
            except Exception as e:
                reason = dead_reason(job, e, run_dir)
            else:
                try:
                    state = RunState.of(run_dir)
                except CruijffError as e:  # the callback names it after the grid
                    act("Record unreadable", name, str(e))
                    state = None
                if state is not None and state.finished and (how := job_end(job)):  # cancelled after its last save
                    state = ended_after_save(run_dir, state, how)
                    act("Job ended after the last save", f"{name} (job {job.job_id})", state.note or "")
                say_ended(name, state)
                return evaluate(name, state)
        elif (state := finished_anyway(run_dir, job_end(job))) is not None:  # cancelled or killed after its last save
            act("Job ended after the last save", f"{name} (job {job.job_id})", state.note or "")
            say_ended(name, state)
            returns[name] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=float("nan"))
            return evaluate(name, state)
        if reason is None and (why := where.memory_exceeded(job)):
            again = more_memory(launcher, job, name, overrides, job_num, why, act)
            if not isinstance(again, str):
                by_job[id(again)] = (name, overrides, job_num)
                if evals:  # its eval job asks for as much
                    evals.resources[name] = launcher.asked_resources[name]
                return [again]
            reason = again
        if reason is None:  # ended without a result; asking submitit would wait ~30 s for the file first
            reason = dead_reason(job, None, run_dir)
        record_death(run_dir, reason, job.job_id)
        act("Job died", f"{name} (job {job.job_id})", reason)
        print(f"cruijff: {name}: {reason}", file=sys.stderr)
        returns[name] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=float("nan"))
        return None

    with SweepView(sweep_dir) as view:
        where.watch(jobs, ended, on_poll=view.refresh)
    return [returns[n] for n in names]


def say_ended(name: str, state: RunState | None) -> None:
    """One line as a run's job ends: finished (its last loss, its time) or failed (why)."""
    if state is None:
        return
    if state.stopped:
        loss = f", loss {state.epochs[-1].final_loss:.4f}" if state.epochs else ""
        say(f"cruijff: {name}: trained up to its rung (epoch {state.stopped_at}) in {state.duration_s or 0:.0f} s{loss}")
    elif state.finished:
        loss = f", loss {state.epochs[-1].final_loss:.4f}" if state.epochs else ""
        note = f" ({state.note})" if state.note else ""
        say(f"cruijff: {name}: fine-tuning finished in {state.duration_s or 0:.0f} s{loss}{note}")
    elif state.error:
        say(f"cruijff: {name}: fine-tuning failed: {state.error}")


def eval_per_run(config: DictConfig) -> bool:
    """On SLURM with ``cluster.eval_after=run`` (its default), a grid run's eval job is submitted
    the moment its fine-tuning ends, while the rest of the grid still trains. Locally the jobs
    already hold every GPU, so evals wait for the grid; so do they with the vLLM backend, whose one
    job per base model serves every run's adapters from one server."""
    return (backend(config.cluster).queued and config.cluster.get("eval_after", "grid") == "run"
            and bool(config.eval.enabled) and config.eval.get("backend", "hf") != "vllm"
            and str(config.hydra.sweeper._target_).endswith("GridSweeper"))


class SharedRunner:
    """Hydra's job runner (the sweep's config, the task function, Hydra's state), pickled once per
    submission instead of once per array task; each task loads it and runs its own overrides.

    submitit pickles the callable with every task: 1000 copies of the sweep's config took 9 s.
    """

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def save(cls, runner: Any, singletons: Any, folder: Path) -> "SharedRunner":
        import cloudpickle

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"runner-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.pkl"
        with open(path, "wb") as f:
            cloudpickle.dump((runner, singletons), f)
        return cls(str(path))

    def __call__(self, overrides: list[str], job_num: int) -> Any:
        import cloudpickle

        self.began = time.time()  # the attempt's start, to tell a time limit from a preemption
        with open(self.path, "rb") as f:
            runner, singletons = cloudpickle.load(f)
        return runner(overrides, "hydra.sweep.dir", job_num, f"job_id_for_{job_num}", singletons)

    def checkpoint(self, *args: Any) -> Any:
        """Told it will be stopped (time limit, preemption): requeue with the same arguments; after
        a time limit, with a limit from the run's measured epoch time (:mod:`cruijff.sweep.requeue`)."""
        from .requeue import requeue

        return requeue(self, *args, began=getattr(self, "began", None))


def resource_groups(names: list[str], resources: dict[str, dict]) -> list[tuple[dict, list[int]]]:
    """Runs (by position) that can share one job array: those asking for the same GPUs, CPUs,
    memory and time. Most grids are one group; a grid over models or epochs may be several."""
    groups: dict[tuple, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(tuple(sorted((resources.get(name) or {}).items())), []).append(i)
    return [(dict(key), members) for key, members in groups.items()]


def train_arrays(config: DictConfig, names: list[str], resources: dict[str, dict]) -> list[tuple[Any, list[int]]]:
    """(executor, runs by position) for each job array these runs are submitted as: one per group
    asking for the same resources (:func:`resource_groups`), split where a group exceeds the
    cluster's array size, each with its share of the array throttle. What the launch submits, and
    what the scaffold renders."""
    where = backend(config.cluster)
    limit = where.max_array_size()
    arrays = [(res, members[i:i + limit]) for res, members in resource_groups(names, resources)
              for i in range(0, len(members), limit)]
    folder = job_folder(config)
    return [(where.executor(folder, name=job_name(config.experiment.name, "train"), resources=res,
                            parallel=parallel), members)
            for (res, members), parallel in zip(arrays, where.slots([len(m) for _, m in arrays]))]


def test_submission(config: DictConfig, names: list[str], resources: dict[str, dict]) -> None:
    """Ask the scheduler whether it takes each job array these runs would be submitted as, and
    their eval job (on SLURM ``sbatch --test-only``), before anything is written or submitted: a
    refusal is one line naming the cluster key (:func:`cruijff.cluster.refusal`)."""
    where = backend(config.cluster)
    if not where.queued or not names:
        return
    check_memory_cap(config.cluster, resources)
    limit = where.max_array_size()
    for res, members in resource_groups(names, resources):
        where.preflight(job_name(config.experiment.name, "train"), res, min(len(members), limit))
    if config.eval.enabled:
        where.preflight(job_name(config.experiment.name, "eval"), largest(resources.get(n) or {} for n in names))


def submit_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list, list]:
    """Submit fine-tuning jobs (on SLURM: job arrays) without waiting; record and log their ids."""
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock

    config = launcher.config
    where = backend(config.cluster)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    # the job side is Hydra's own (compose the job's config, run the task function)
    runner = getattr(stock, where.stock_launcher)(**launcher.params)
    runner.setup(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=config)

    names = [run_name(o) for o in job_overrides]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    add_runs(sweep_dir, config, [PlannedRunRecord(n, list(o)) for n, o in zip(names, job_overrides)])
    idx = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
    runner = freeze_jobs(launcher, runner, sweep_dir)  # the jobs import the launch's frozen code
    shared = SharedRunner.save(runner, Singleton.get_state(), job_folder(config).parent)
    resources = with_learned_memory(sweep_dir, names, getattr(launcher, "run_resources", None) or {}, config.cluster)
    launcher.shared_runner, launcher.asked_resources = shared, resources  # what a resubmission reuses
    jobs: list = [None] * len(names)
    for executor, members in train_arrays(config, names, resources):
        array = where.submitted(lambda: executor.map_array(shared, [list(job_overrides[i]) for i in members],
                                                           [idx[i] for i in members]),
                                resources.get(names[members[0]]))
        for i, job in zip(members, array):
            jobs[i] = job
    ids = {n: j.job_id for n, j in zip(names, jobs)}
    record_jobs(sweep_dir, ids)
    arrays = array_ids(j.job_id for j in jobs)
    ActionLog(layout.action_log(sweep_dir))(
        "Submit fine-tune", ", ".join(names),
        f"{where.name} job ids " + ", ".join(ids.values())
        + (f" (array{'s' if len(arrays) > 1 else ''} {', '.join(arrays)})" if where.queued else ""))
    for i in shown_rows(len(names)):  # a big grid: its first and last runs, and how many between
        print(f"cruijff: {names[i]}: submitted as {where.name} job {ids[names[i]]}" if i is not None else
              f"cruijff: … {len(names) - 2 * ENDS} more runs submitted"
              + (f" in array{'s' if len(arrays) > 1 else ''} {', '.join(arrays)}" if where.queued else ""))
    return names, jobs


def more_memory(launcher: Any, job: Any, name: str, overrides: list[str], job_num: int, why: str,
                act: ActionLog) -> Any:
    """Resubmit a run whose job SLURM ended for exceeding its memory, with 1.5 x the memory (at
    most ``cluster.max_mem_gb``); it resumes after its last complete epoch. Recorded in the run's
    ``run.json`` retries, the log, ``sweep.json``'s resources (a later launch asks for as much at
    once) and a console line. Returns the new job, or the one line the run fails with (at the cap)."""
    config = launcher.config
    where = backend(config.cluster)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    planned = (getattr(launcher, "run_resources", None) or {}).get(name) or where.resources(config)
    asked = launcher.asked_resources.get(name) or planned
    before, cap = float(asked["mem_gb"]), memory_cap(config.cluster, float(planned["mem_gb"]))
    after = next_memory(before, cap)
    if after is None:
        return at_memory_cap(job.job_id, before, cap, why)
    res = {**asked, "mem_gb": after}
    try:
        executor = where.executor(job_folder(config), name=job_name(config.experiment.name, "train"), resources=res)
        new = where.submitted(lambda: executor.submit(launcher.shared_runner, list(overrides), job_num), res)
    except CruijffError as e:
        return (f"SLURM job {job.job_id} ran out of its memory ({before:g} GB: {why}); resubmitting it with "
                f"{after:g} GB failed: {e}")
    retry = Retry("host_oom", at=f"job {job.job_id}", before={"mem_gb": before}, after={"mem_gb": after},
                  time=time.time(), error=why)
    record_retry(sweep_dir / name, retry, str(job.job_id))
    record_jobs(sweep_dir, {name: new.job_id})
    plan_resources(sweep_dir, {name: res})
    launcher.asked_resources[name] = res
    act("Retry", f"{name} (job {job.job_id})", f"{retry.describe()}: resubmitted as job {new.job_id} ({why})")
    say(f"cruijff: {name}: job {job.job_id} ran out of memory ({before:g} GB): resubmitted as {where.name} job "
        f"{new.job_id} with {after:g} GB")
    return new


def with_learned_memory(sweep_dir: Path, names: list[str], planned: dict[str, dict],
                        cluster: DictConfig) -> dict[str, dict]:
    """The resources each run's job asks for: its plan's, with the memory an earlier job of the run
    was resubmitted with after running out of it, where that is more, at most ``cluster.max_mem_gb``
    (``sweep.json`` says so too)."""
    out, grown = dict(planned), {}
    present = set(os.listdir(sweep_dir)) if sweep_dir.is_dir() else set()
    for name in (n for n in names if n in present):  # a run dir not there holds no record
        res, mem = planned.get(name) or {}, learned_memory(sweep_dir / name)
        if "mem_gb" not in res or mem is None:
            continue
        cap = memory_cap(cluster, float(res["mem_gb"]))
        held = f", held to cluster.max_mem_gb={cap:g}" if mem > cap else ""
        mem = min(mem, cap)
        if mem > float(res["mem_gb"]):
            out[name] = grown[name] = {**res, "mem_gb": mem}
            ActionLog(layout.action_log(sweep_dir))("Ask more memory", name, f"mem_gb {res['mem_gb']} -> {mem:g}: "
                                                    f"an earlier job of the run ran out of memory{held}")
    if grown:
        plan_resources(sweep_dir, grown)
    return out


def plan_resources(sweep_dir: Path, resources: dict[str, dict]) -> None:
    """Set these runs' resources in ``sweep.json``."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None:
        return
    for run in plan.runs:
        if run.name in resources:
            run.resources = dict(resources[run.name])
    plan.save(sweep_dir)


def check_memory_cap(cluster: DictConfig, resources: dict[str, dict]) -> None:
    """``cluster.max_mem_gb``: null, or a number of GB at least what any run's job asks for."""
    value = cluster.get("max_mem_gb")
    if value is None:
        return
    allowed = "a number of GB > 0 (the most a job may ask for after running out of memory), or null: 4 x cluster.mem_gb"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError("cluster.max_mem_gb", value, allowed)
    asked = max((float(r["mem_gb"]) for r in resources.values() if "mem_gb" in r), default=0.0)
    if value < asked:
        raise ConfigError("cluster.max_mem_gb", value, f"at least the memory a run's job asks for first "
                                                       f"(cluster.mem_gb={asked:g}); {allowed}")
