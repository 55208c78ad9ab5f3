"""Sweeps: ``python launch.py -m`` plans a grid, submits what is not done, evaluates, reports.

Three Hydra plugins work together (``hydra_plugins/cruijff_plugins`` holds the thin plugin classes):

- the grid sweeper (:func:`run_grid`) expands the grid exactly as Hydra's basic sweeper does, plans
  every run without composing each job through Hydra (:mod:`cruijff.plan`), refuses a bad grid
  point before submitting anything, takes the sweep lock, writes ``sweep.json`` and submits only
  runs that are not finished, in batches of ``cluster.max_parallel``;
- the launcher (:func:`submit`) submits a batch through submitit and records a job that died
  without a result in its ``run.json`` instead of raising (which would abort the sweep);
- the callback (:class:`SweepCallback`) evaluates every finished run's checkpoints that are not
  evaluated yet and writes the report when something changed. Jobs never raise for an ordinary
  failure; they record it in ``run.json``, and the callback reads files only.

Any other sweeper (``hydra/sweeper=optuna``) works with the same launcher and callback.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import CruijffError, run_name
from .record import ActionLog, read_json, write_json

_LOCKS: dict[str, Any] = {}


def gpus_per_run(nproc: Any = "auto", hint: Any = 1) -> int:
    """GPUs one local job uses: ``training.nproc``, else the model's ``resources.gpus`` hint."""
    return max(1, int(hint or 1) if nproc in ("auto", None) else int(nproc))


def local_parallel(value: Any, per_run: int = 1) -> int:
    """Jobs at once on this machine: ``auto`` = as many as the visible GPUs hold (``per_run`` GPUs
    each), or 1 on a CPU-only machine."""
    if value != "auto":
        return max(1, int(value))
    return max(1, gpu_count() // max(1, int(per_run)))


def run_gpus(cfg: DictConfig) -> int:
    """GPUs one local job of this config uses."""
    return gpus_per_run(cfg.training.get("nproc", "auto"), OmegaConf.select(cfg, "model.resources.gpus", default=1))


def local_jobs(cfg: DictConfig) -> int:
    return local_parallel(cfg.cluster.max_parallel, run_gpus(cfg))


def sweep_batch(executor: str, max_parallel: Any, nproc: Any = "auto", gpus: Any = 1) -> int | None:
    """Grid points handed to the launcher at once: local, the jobs that may run together; on
    SLURM, all of them (one array, throttled by the scheduler)."""
    return local_parallel(max_parallel, gpus_per_run(nproc, gpus)) if executor == "local" else None


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


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def acquire_lock(sweep_dir: Path) -> None:
    """Hold ``<sweep dir>/.lock`` for this process's lifetime; exit 2 if another launch holds it."""
    if str(sweep_dir) in _LOCKS:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(sweep_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        print(f"cruijff: error: {sweep_dir} is in use by a running launch ({holder}); "
              "wait for it or stop it first", file=sys.stderr)
        sys.exit(2)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _LOCKS[str(sweep_dir)] = f


def release_lock(sweep_dir: Path) -> None:
    f = _LOCKS.pop(str(sweep_dir), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()




def lock_holder(sweep_dir: Path) -> str | None:
    """Who holds the sweep lock (a running launch), or None."""
    path = sweep_dir / ".lock"
    if not path.exists() or str(sweep_dir) in _LOCKS:
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def fail(message: str, code: int = 2) -> None:
    print(f"cruijff: error: {message}", file=sys.stderr)
    sys.exit(code)


# ----------------------------------------------------------------------------------------------
# the grid sweeper (hydra/sweeper=grid): plan everything, submit only what is not done


def run_grid(sweeper: Any, arguments: list[str]) -> list:
    """``GridSweeper.sweep``: Hydra's grid expansion, our plan, then batches to the launcher."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .plan import ACTIVE, FINISHED, OVERWRITE, Planner, print_plan

    config = sweeper.config
    loader = sweeper.hydra_context.config_loader
    t0 = time.time()
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            sweeper._parse_config() + list(arguments))
    except Exception as e:  # Hydra's override grammar errors
        fail(f"{str(e).strip().splitlines()[0]}")
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    sweep_dir = Path(config.hydra.sweep.dir)
    dry = bool(config.get("dry_run", False))
    if sweep_dir.exists() and not dry:
        acquire_lock(sweep_dir)

    def compose(overrides: list[str]) -> DictConfig:
        try:
            return loader.load_sweep_config(config, overrides)
        except Exception as e:
            raise CruijffError(" ".join(overrides) + ": " + str(e).strip().splitlines()[0]) from None

    scaffold = bool(config.get("scaffold", False))
    rendered: dict[str, tuple[str, str]] = {}  # run -> (finetune.yaml, its tune run command)

    def render_run(run: Any, cfg: DictConfig) -> None:
        if run.state != FINISHED:
            rendered[run.name] = scaffold_text(cfg, sweep_dir / run.name)

    try:
        runs = Planner(config, sweep_dir, compose).plan(jobs, estimate=dry or scaffold,
                                                        each=render_run if scaffold else None)
    except CruijffError as e:
        fail(str(e))
    if str(config.cluster.executor) == "slurm":
        from .cluster import active_slurm_jobs

        jobs = read_json(sweep_dir / "sweep.json").get("jobs", {})
        maybe = [r for r in runs if r.state != FINISHED and r.name in jobs
                 and may_be_at_work(r.previous, jobs[r.name])]
        try:
            alive = active_slurm_jobs([jobs[r.name] for r in maybe])
        except CruijffError as e:
            fail(str(e))
        for r in maybe:
            if jobs[r.name] not in alive:
                continue
            if r.state == OVERWRITE:
                fail(f"{r.name}: overwrite=true, but its SLURM job {jobs[r.name]} is still pending or running; "
                     f"scancel {jobs[r.name]} first, or wait for it")
            r.state = ACTIVE  # a detached or orphaned job still works on it: do not submit it twice
    if config.get("detach", False) and str(config.cluster.executor) != "slurm":
        fail("detach=True: detached sweeps need a scheduler that outlives this process; use cluster=slurm")
    todo = [r for r in runs if r.state not in (FINISHED, ACTIVE)]
    base_cells = (len(config.eval.tasks) * len({r.model for r in runs})
                  if config.eval.enabled and config.eval.base_model else 0)
    if dry:
        print_plan(runs, f"{config.experiment.name}: {len(runs)} runs, {len(todo)} to run "
                         f"(dry run: nothing written, nothing submitted)", base_cells)
        print(f"cruijff: planned {len(runs)} runs in {time.time() - t0:.2f} s")
        return []
    if scaffold:
        acquire_lock(sweep_dir)
        write_plan(sweep_dir, config, [r.record() for r in runs])
        written = write_scaffold(config, sweep_dir, [r for r in todo], rendered)
        print_plan(runs, f"{config.experiment.name}: {len(runs)} runs, {len(todo)} to run "
                         f"(scaffold: rendered, nothing submitted)", base_cells)
        ActionLog(sweep_dir / "run-experiment.log")(
            "Scaffold", f"{len(todo)} runs to run of {len(runs)}", f"rendered {len(written)} files; nothing submitted")
        for path in written:
            print(f"cruijff: wrote {path}")
        print("cruijff: read them, then run the same command without scaffold=true")
        return []
    acquire_lock(sweep_dir)
    write_plan(sweep_dir, config, [r.record() for r in runs])
    sweeper.launcher.run_resources = {r.name: r.resources for r in todo}
    act = ActionLog(sweep_dir / "run-experiment.log")
    act("Plan sweep", f"{len(runs)} runs: " + ", ".join(f"{r.name} ({r.state})" for r in runs),
        f"{len(todo)} to run, {len(runs) - len(todo)} finished earlier (skipped), "
        f"planned in {time.time() - t0:.2f} s")
    if config.get("detach", False):
        plan = read_json(sweep_dir / "sweep.json")
        jobs = plan.get("jobs", {})
        from .cluster import active_slurm_jobs, array_ids

        earlier = array_ids(jobs[r.name] for r in runs if r.state == ACTIVE)
        finish = (plan.get("detached") or {}).get("finish_job")
        if earlier and finish:  # the earlier eval+report job too: two must not evaluate the same cells
            try:
                earlier += sorted(active_slurm_jobs([str(finish)]))
            except CruijffError as e:
                fail(str(e))
        detach(sweeper, config, sweep_dir, [r.overrides for r in todo], act, earlier)
        return []
    if not todo:
        active = [r.name for r in runs if r.state == ACTIVE]
        print(f"cruijff: all {len(runs)} runs finished earlier; nothing to submit" if not active else
              f"cruijff: nothing to submit; {len(active)} runs still run in earlier jobs: {', '.join(active)}")
        return []
    size = int(sweeper.max_batch_size or len(todo))
    returns, idx = [], 0
    for i in range(0, len(todo), size):
        batch = [r.overrides for r in todo[i:i + size]]
        returns.append(sweeper.launcher.launch(batch, initial_job_idx=idx))
        idx += len(batch)
    return returns


def scaffold_text(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """The ``finetune.yaml`` a run's job will write, rendered ahead of time for the device it will
    get, and the ``tune run`` command that runs it."""
    from .estimate import device_guess
    from . import finetune
    from .launch import resolve_paths

    path = run_dir.resolve() / "finetune.yaml"
    model_dir, data_file = resolve_paths(cfg, build=False)
    conf = finetune.render(cfg, path.parent, model_dir, data_file, device=device_guess(cfg))
    nproc = finetune.processes(cfg)
    return (finetune.config_text(conf, path, run_dir.name, nproc, cfg.get("base_recipe")),
            finetune.tune_command(nproc, path))


def write_scaffold(config: DictConfig, sweep_dir: Path, todo: list,
                   rendered: dict[str, tuple[str, str]]) -> list[Path]:
    """Every run's ``finetune.yaml`` in its run dir, and in ``scripts/``: the torchtune commands and,
    on SLURM, the job-array script that the launch will submit."""
    written: list[Path] = []
    for run in todo:
        path = sweep_dir / run.name / "finetune.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered[run.name][0])
        written.append(path)
    scripts = sweep_dir / "scripts"
    scripts.mkdir(exist_ok=True)
    lines = ["#!/usr/bin/env bash", "# Each run with torchtune alone (what the jobs run, without cruijff's records).",
             "set -euo pipefail"] + [rendered[run.name][1] for run in todo]
    (scripts / "tune_commands.sh").write_text("\n".join(lines) + "\n")
    written.append(scripts / "tune_commands.sh")
    if str(config.cluster.executor) == "slurm" and todo:
        arrays = train_executors(config, sweep_dir / ".submitit" / "%j", [r.name for r in todo],
                                 {r.name: r.resources for r in todo})
        for old in scripts.glob("train*.sbatch"):  # from an earlier scaffold of this sweep
            old.unlink()
        for k, (auto, members) in enumerate(arrays, 1):
            executor = auto._executor
            executor.parameters["map_count"] = len(members)
            text = executor._make_submission_file_text(executor._submitit_command_str, "scaffold")
            path = scripts / ("train.sbatch" if len(arrays) == 1 else f"train-{k}.sbatch")
            runs = ", ".join(todo[i].name for i in members[:10]) + (f", ... ({len(members) - 10} more)"
                                                                    if len(members) > 10 else "")
            shebang, rest = text.split("\n", 1)  # sbatch wants the interpreter on the first line
            path.write_text(f"{shebang}\n# A job array the launch submits (one task per run to run), as submitit "
                            f"renders it.\n# Runs: {runs}\n{rest}")
            written.append(path)
    return written


def may_be_at_work(state: dict, job_id: str) -> bool:
    """Whether the latest SLURM job submitted for a run may still be at work on it, so that the
    run must not be submitted again: its record is missing or says running, or the record was
    written by an earlier job (a failed run resubmitted and still queued). A failure its own latest
    job wrote is final, even while that job is still winding down in the queue."""
    return state.get("status") in (None, "running") or state.get("job_id") not in (None, str(job_id))


def detach(sweeper: Any, config: DictConfig, sweep_dir: Path, todo: list[list[str]], act: ActionLog,
           earlier: Sequence[str] = ()) -> None:
    """Submit the grid's arrays and an eval+report job that depends on them, and on ``earlier``
    jobs still at work on this sweep (a second detach while the first runs); wait for neither."""
    from .cluster import array_ids, job_name, largest, make_executor

    jobs = submit_jobs(sweeper.launcher, todo, 0)[1] if todo else []
    ids = array_ids([j.job_id for j in jobs] + list(earlier))
    plan = read_json(sweep_dir / "sweep.json")
    executor = make_executor(config.cluster, sweep_dir / ".submitit" / "%j",
                             name=job_name(config.experiment.name, "eval"),
                             dependency=f"afterany:{':'.join(ids)}" if ids else None,
                             resources=largest(r.get("resources", {}) for r in plan.get("runs", [])))
    finish = executor.submit(finish_detached, sweep_dir, OmegaConf.to_container(config.eval, resolve=True))
    plan["detached"] = {"arrays": ids, "finish_job": finish.job_id, "submitted": time.time()}
    write_json(sweep_dir / "sweep.json", plan)
    act("Detach", f"fine-tune arrays {', '.join(ids) or '(none: all finished)'}; eval+report job "
        f"{finish.job_id}" + (f" after them (afterany:{':'.join(ids)})" if ids else ""),
        "the launcher returns; the jobs go on without it")
    print(f"cruijff: detached: fine-tuning array{'s' if len(ids) > 1 else ''} {', '.join(ids) or '-'}, "
          f"eval+report job {finish.job_id} after {'them' if len(ids) > 1 else 'it'}")
    print(f"cruijff: follow with: python -m cruijff status {sweep_dir}")


def evaluate_in_turn(sweep_dir: Path, finished: list[str], eval_cfg: dict | None, act: ActionLog) -> list[str]:
    """Evaluate what these finished runs lack, in this process, one run after another (each base
    model's control with the first run of it); returns the runs whose eval failed. ``eval_cfg``:
    the eval section to use (None: each run's saved one)."""
    from .launch import evaluate_saved

    todo = eval_todo(sweep_dir, finished, None if eval_cfg is None else OmegaConf.create(eval_cfg))
    failed = []
    for i, (name, base) in enumerate(todo, 1):
        print(f"cruijff: evaluating {name} ({i}/{len(todo)})")
        try:
            evaluate_saved(sweep_dir / name, eval_cfg, base is not None)
        except Exception as e:  # one run's eval failing is reported, not fatal to the others
            act("Eval failed", name, f"{type(e).__name__}: {e}")
            print(f"cruijff: {name}: eval failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed.append(name)
    return failed


def finish_detached(sweep_dir: Path, eval_cfg: dict) -> None:
    """The eval+report job of a detached sweep (runs on the cluster once the arrays ended)."""
    from .report import report_sweep

    act = ActionLog(sweep_dir / "run-experiment.log")
    t0 = time.time()
    plan = read_json(sweep_dir / "sweep.json").get("runs", [])
    finished, active, failed = settle(sweep_dir, True, act)
    if eval_cfg.get("enabled", True) and finished:
        evaluate_in_turn(sweep_dir, finished, eval_cfg, act)
    report_sweep(sweep_dir, plan)
    act("Sweep done (detached)", f"eval+report job {time.time() - t0:.1f} s",
        summary_line(len(plan), finished, active, failed))


def write_plan(sweep_dir: Path, config: DictConfig, runs: list[dict]) -> None:
    """``sweep.json``: the plan (runs, overrides, config hashes, eval matrix); job ids are kept."""
    old = read_json(sweep_dir / "sweep.json")
    evals = OmegaConf.to_container(config.eval, resolve=True)
    tasks = [t["name"] if isinstance(t, dict) else t for t in evals["tasks"]] if evals["enabled"] else []
    write_json(sweep_dir / "sweep.json", {
        "experiment": config.experiment.name,
        "sweeper": config.hydra.sweeper._target_.rsplit(".", 1)[-1],
        "launcher": config.hydra.launcher._target_.rsplit(".", 1)[-1],
        "runs": runs,
        "eval": {k: evals[k] for k in ("tasks", "epochs", "base_model")},
        "eval_matrix": {"checkpoints": (["base"] if evals["base_model"] else [])
                        + [f"{r['name']}/epoch_*" for r in runs], "tasks": tasks},
        "jobs": old.get("jobs", {}),
        "command": {"argv": [str(Path(sys.argv[0]).resolve()), *sys.argv[1:]], "cwd": os.getcwd()}
        if Path(sys.argv[0]).name == "launch.py" else old.get("command"),
    })


def add_runs(sweep_dir: Path, config: DictConfig, runs: list[dict]) -> None:
    """Add runs a sweeper decided on the fly (Optuna) to ``sweep.json``."""
    plan = read_json(sweep_dir / "sweep.json")
    known = {r["name"] for r in plan.get("runs", [])}
    new = [r for r in runs if r["name"] not in known]
    if new or not plan:
        write_plan(sweep_dir, config, plan.get("runs", []) + new)


def _record_jobs(sweep_dir: Path, jobs: dict[str, str]) -> None:
    plan = read_json(sweep_dir / "sweep.json")
    plan.setdefault("jobs", {}).update(jobs)
    write_json(sweep_dir / "sweep.json", plan)


# ----------------------------------------------------------------------------------------------
# the launcher (hydra/launcher=local): submitit, with dead jobs recorded instead of raised


def submit(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit one batch through submitit and wait; every job yields a JobReturn, dead ones too.

    Hydra's stock submitit launcher raises when a job dies without a result (killed, cancelled,
    out of memory, over its time limit), which aborts the sweep and skips the post-sweep callback;
    here the death is written to the run's ``run.json`` and the sweep goes on.
    """
    from hydra.core.utils import JobReturn, JobStatus

    from .cluster import watch

    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    names, jobs = submit_jobs(launcher, job_overrides, initial_job_idx)
    act = ActionLog(sweep_dir / "run-experiment.log")
    by_job = {id(j): (n, list(o)) for n, j, o in zip(names, jobs, job_overrides)}
    returns: dict[str, Any] = {}
    evals = EvalJobs(config, sweep_dir, act) if _eval_per_run(config) else None

    def ended(job: Any) -> list | None:
        if evals and evals.owns(job):
            return evals.ended(job)
        name, overrides = by_job[id(job)]
        reason = None
        if job.paths.result_pickle.exists():
            try:
                returns[name] = job.results()[0]
            except Exception as e:
                reason = dead_reason(job, e, read_json(sweep_dir / name / "run.json"))
            else:  # evaluate this run now, while the rest of the grid trains
                if evals and read_json(sweep_dir / name / "run.json").get("status") == "finished":
                    todo = eval_todo(sweep_dir, [name], config.eval)
                    return evals.submit(todo) if todo else None
                return None
        if reason is None:  # ended without a result; asking submitit would wait ~30 s for the file first
            reason = dead_reason(job, None, read_json(sweep_dir / name / "run.json"))
        record_death(sweep_dir / name, reason, job.job_id)
        act("Job died", f"{name} (job {job.job_id})", reason)
        print(f"cruijff: {name}: {reason}", file=sys.stderr)
        returns[name] = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=float("nan"))
        return None

    watch(jobs, ended, str(config.cluster.executor))
    return [returns[n] for n in names]


def _eval_per_run(config: DictConfig) -> bool:
    """On SLURM with ``cluster.eval_after=run`` (its default), a grid run's eval job is submitted
    the moment its fine-tuning ends, while the rest of the grid still trains. Locally the jobs
    already hold every GPU, so evals wait for the grid."""
    return (str(config.cluster.executor) == "slurm" and config.cluster.get("eval_after", "grid") == "run"
            and bool(config.eval.enabled) and _grid_sweeper(config))


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

        with open(self.path, "rb") as f:
            runner, singletons = cloudpickle.load(f)
        return runner(overrides, "hydra.sweep.dir", job_num, f"job_id_for_{job_num}", singletons)

    def checkpoint(self, *args: Any) -> Any:
        """Told it will be stopped (time limit, preemption): requeue with the same arguments."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args)


def resource_groups(names: list[str], resources: dict[str, dict]) -> list[tuple[dict, list[int]]]:
    """Runs (by position) that can share one job array: those asking for the same GPUs, CPUs,
    memory and time. Most grids are one group; a grid over models or epochs may be several."""
    groups: dict[tuple, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(tuple(sorted((resources.get(name) or {}).items())), []).append(i)
    return [(dict(key), members) for key, members in groups.items()]


def train_executors(config: DictConfig, folder: Path | str, names: list[str],
                    resources: dict[str, dict]) -> list[tuple[Any, list[int]]]:
    """(executor, runs by position) per job array of these runs: one per group that asks for the
    same resources (:func:`resource_groups`), each with its share of the array throttle. What the
    launch submits, and what the scaffold renders."""
    from .cluster import job_name, make_executor, share

    cluster = config.cluster
    groups = resource_groups(names, resources)
    slots = (share(int(cluster.max_parallel), [len(m) for _, m in groups]) if str(cluster.executor) == "slurm"
             else [None] * len(groups))
    return [(make_executor(cluster, folder, name=job_name(config.experiment.name, "train"), resources=res,
                           parallel=parallel), members)
            for (res, members), parallel in zip(groups, slots)]


def submit_jobs(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list, list]:
    """Submit fine-tuning jobs (on SLURM: job arrays) without waiting; record and log their ids."""
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock

    from .cluster import array_ids, max_array_size, submit_array

    config = launcher.config
    cluster = config.cluster
    kind = str(cluster.executor)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    # the job side is Hydra's own (compose the job's config, run the task function)
    runner = {"local": stock.LocalLauncher, "slurm": stock.SlurmLauncher}[kind](**launcher.params)
    runner.setup(hydra_context=launcher.hydra_context, task_function=launcher.task_function, config=config)

    names = [run_name(o) for o in job_overrides]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    add_runs(sweep_dir, config, [{"name": n, "overrides": list(o)} for n, o in zip(names, job_overrides)])
    idx = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
    shared = SharedRunner.save(runner, Singleton.get_state(), sweep_dir / ".submitit")
    jobs: list = [None] * len(names)
    limit = max_array_size(cluster)
    for executor, members in train_executors(config, launcher.params["submitit_folder"], names,
                                             getattr(launcher, "run_resources", None) or {}):
        submitted = submit_array(executor, shared, [[list(job_overrides[i]) for i in members],
                                                    [idx[i] for i in members]], limit)
        for i, job in zip(members, submitted):
            jobs[i] = job
    ids = {n: j.job_id for n, j in zip(names, jobs)}
    _record_jobs(sweep_dir, ids)
    arrays = array_ids(j.job_id for j in jobs)
    ActionLog(sweep_dir / "run-experiment.log")(
        "Submit fine-tune", ", ".join(names),
        f"{kind} job ids " + ", ".join(ids.values())
        + (f" (array{'s' if len(arrays) > 1 else ''} {', '.join(arrays)})" if kind == "slurm" else ""))
    for n in names:
        print(f"cruijff: {n}: submitted as {kind} job {ids[n]}")
    return names, jobs


def dead_reason(job: Any, error: Exception | None, state: dict) -> str:
    """Why a job ended without a result, from what is left: its process, its run.json, its log."""
    import signal

    from .cluster import scheduler_state

    sched = scheduler_state(job)
    if sched and not sched.startswith(("COMPLETED", "RUNNING", "PENDING")):
        from .finetune import checkpoints

        run_dir = Path(str(job.paths.folder)).parent.parent / str(state.get("name", ""))
        if state.get("status") == "running" and state.get("name"):
            return f"SLURM job {job.job_id} ended {sched} while fine-tuning (epoch {len(checkpoints(run_dir))})"
        last = _last_error_line(job)  # it never reached fine-tuning: the job's own last word says why
        return f"SLURM job {job.job_id} ended {sched}" + (f": {last}" if last else "")
    rc = getattr(getattr(job, "_process", None), "returncode", None)
    if isinstance(rc, int) and rc < 0:
        try:
            return f"job killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"job killed by signal {-rc}"
    if state.get("status") == "running":  # the job's own record stops mid-training
        return (f"job process {state.get('pid', '?')} on {state.get('host', '?')} died while fine-tuning "
                "(killed by a signal or out of memory); it raised no error")
    fallback = [ln for ln in str(error or "").splitlines() if ln.strip()] or [type(error).__name__ if error else "no output"]
    last = _last_error_line(job) or fallback[-1].strip()[:300]
    return f"job ended without a result ({job.state}): {last}"


def _last_error_line(job: Any) -> str:
    """The last line of a job's stderr that is not a traceback frame or srun's own epilogue."""
    try:
        lines = (job.stderr() or "").splitlines()
    except Exception:
        return ""
    lines = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(" ") and not ln.startswith("srun:")]
    return lines[-1][:300] if lines else ""


def record_death(run_dir: Path, reason: str, job_id: str | None = None) -> None:
    """Mark a run whose job died as failed (its run.json may say "running", or not exist)."""
    state = read_json(run_dir / "run.json")
    if state.get("status") == "finished":
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    state.update(name=run_dir.name, status="failed", error=reason, ended=time.time(),
                 **({"job_id": str(job_id)} if job_id else {}))
    write_json(run_dir / "run.json", state)


# ----------------------------------------------------------------------------------------------
# after the sweep: evaluate, report, summarise


class SweepCallback(Callback):
    """Hydra callback of ``python launch.py -m``: lock, then evals + report after the grid."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._t0 = time.time()
        if config.get("dry_run", False) or _grid_sweeper(config):
            return  # the grid sweeper plans first, then takes the lock itself
        sweep_dir = Path(config.hydra.sweep.dir)
        acquire_lock(sweep_dir)
        ActionLog(sweep_dir / "run-experiment.log")(
            "Sweep start", f"sweeper {config.hydra.sweeper._target_.rsplit('.', 1)[-1]}",
            f"launcher {config.hydra.launcher._target_.rsplit('.', 1)[-1]}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("dry_run", False):
            return
        if config.get("scaffold", False):  # rendered, nothing ran: nothing to evaluate or report
            release_lock(Path(config.hydra.sweep.dir))
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / "sweep.json").exists():
            return
        if config.get("detach", False):
            release_lock(sweep_dir)
            return
        act = ActionLog(sweep_dir / "run-experiment.log")
        try:
            failed = finish_sweep(config, sweep_dir, act, self._t0)
        finally:
            release_lock(sweep_dir)
        if failed:
            sys.exit(1)


def _grid_sweeper(config: DictConfig) -> bool:
    return str(config.hydra.sweeper._target_).endswith("GridSweeper")


def finish_sweep(config: DictConfig, sweep_dir: Path, act: ActionLog, t0: float) -> dict[str, str]:
    """Evaluate what is not evaluated yet, report if anything changed, summarise; returns failures."""
    plan = read_json(sweep_dir / "sweep.json").get("runs", [])
    finished, active, failed = settle(sweep_dir, str(config.cluster.executor) == "slurm", act)
    for n, why in failed.items():
        act("Run failed", n, why)
    evaluated = False
    if config.eval.enabled and finished:
        todo = eval_todo(sweep_dir, finished, config.eval)  # what an eval job left undone is tried again
        if todo:
            evaluate_runs(config, sweep_dir, todo, act)
            evaluated = True
        else:
            act("Skip eval", f"all cells of {len(finished)} finished runs complete")
    from .report import report_is_current, report_sweep

    if evaluated or not report_is_current(sweep_dir, plan):
        report_sweep(sweep_dir, plan)
        act("Report", str(sweep_dir / "summary.md"))
    else:
        act("Skip report", "summary.md is current (no run or eval changed)")
    summary = summary_line(len(plan), finished, active, failed)
    act("Sweep done", f"{time.time() - t0:.1f} s", summary)
    print(f"cruijff: {summary}")
    print(f"cruijff: report {sweep_dir / 'summary.md'}")
    return failed


def settle(sweep_dir: Path, slurm: bool, act: ActionLog) -> tuple[list[str], set[str], dict[str, str]]:
    """Each planned run's standing from its ``run.json`` and, on SLURM, the queue: the finished
    runs, the runs a job is still at work on (an earlier detached or orphaned launch's), and the
    failed runs with their reasons. A run whose record says running but whose job is gone is
    recorded as dead here."""
    sweep = read_json(sweep_dir / "sweep.json")
    jobs = sweep.get("jobs", {})
    states = {r["name"]: read_json(sweep_dir / r["name"] / "run.json") for r in sweep.get("runs", [])}
    active: set[str] = set()
    if slurm:
        from .cluster import active_slurm_jobs

        maybe = [n for n, st in states.items() if n in jobs and may_be_at_work(st, jobs[n])]
        try:
            alive = active_slurm_jobs([jobs[n] for n in maybe])
        except CruijffError as e:  # those runs then count as not finished
            act("squeue failed", str(e))
        else:
            active = {n for n in maybe if jobs[n] in alive}
            for name in maybe:
                if states[name].get("status") == "running" and name not in active:
                    record_death(sweep_dir / name, f"SLURM job {jobs[name]} ended while fine-tuning "
                                 "(cancelled, timed out or killed)", jobs[name])
                    states[name] = read_json(sweep_dir / name / "run.json")
    finished = [n for n, st in states.items() if st.get("status") == "finished"]
    failed = {n: (st.get("error") or st.get("status") or "did not start") for n, st in states.items()
              if st.get("status") != "finished" and n not in active}
    return finished, active, failed


def summary_line(total: int, finished: list[str], active: set[str], failed: dict[str, str]) -> str:
    summary = f"{len(finished)}/{total} runs finished"
    if active:
        summary += f", {len(active)} still running in earlier jobs ({', '.join(sorted(active))})"
    if failed:
        summary += f", {len(failed)} failed: " + "; ".join(f"{n}: {w}" for n, w in failed.items())
    return summary


def eval_todo(sweep_dir: Path, runs: list[str], eval_cfg: DictConfig | None) -> list[tuple[str, Path | None]]:
    """(run, the base-model cell its eval job also takes, or None) for every finished run with an
    incomplete cell; checked in this process. Each base model's control (one per model of the
    grid) goes to the first run of that model that needs it; those runs come first."""
    from .evaluate import task_specs
    from .launch import cell_done, cells, eval_config, resolve_paths

    out: dict[str, Path | None] = {}
    bases: set[Path] = set()
    for name in runs:
        cfg = eval_config(sweep_dir / name, eval_cfg)
        specs = task_specs(cfg.eval.tasks)
        model_dir, _ = resolve_paths(cfg, build=False)
        todo = [c for c in cells(cfg, sweep_dir / name, model_dir) if not cell_done(cfg, c[2], specs)]
        base = next((log_dir for label, _, log_dir in todo if label == "base" and log_dir not in bases), None)
        if base is not None:
            bases.add(base)
        if base is not None or any(label != "base" for label, _, _ in todo):
            out[name] = base
    return sorted(out.items(), key=lambda item: item[1] is None)


class EvalJobs:
    """Eval jobs through submitit, one per run (all its checkpoints, each loaded once for all tasks).

    A base model's control is shared by the sweep's runs of that model: only the first job that
    asks for it gets it.
    """

    def __init__(self, config: DictConfig, sweep_dir: Path, act: ActionLog):
        self.config = config
        self.executors: dict[tuple, Any] = {}
        self.resources = {r["name"]: r.get("resources", {})
                          for r in read_json(sweep_dir / "sweep.json").get("runs", [])}
        self.kind = str(config.cluster.executor)
        self.eval_cfg = OmegaConf.to_container(config.eval, resolve=True)
        self.sweep_dir, self.act = sweep_dir, act
        self.names: dict[int, str] = {}
        self.bases_taken: set[Path] = set()

    def submit(self, batch: list[tuple[str, Path | None]]) -> list:
        from .launch import evaluate_saved

        batch = [(n, base if base not in self.bases_taken else None) for n, base in batch]
        self.bases_taken.update(base for _, base in batch if base is not None)
        jobs = [self.executor(n).submit(evaluate_saved, self.sweep_dir / n, self.eval_cfg, base is not None, slot)
                for slot, (n, base) in enumerate(batch)]
        self.names.update({id(j): n for j, (n, _) in zip(jobs, batch)})
        self.act("Submit eval", ", ".join(n + (" (+ base)" if base is not None else "") for n, base in batch),
                 f"{self.kind} job ids " + ", ".join(j.job_id for j in jobs))
        return jobs

    def executor(self, run: str) -> Any:
        """The run's eval job asks for the GPUs, CPUs and memory its fine-tuning had (the
        preset's time limit)."""
        from .cluster import job_name, make_executor

        res = {k: v for k, v in self.resources.get(run, {}).items() if k != "timeout_min"}
        key = tuple(sorted(res.items()))
        if key not in self.executors:
            self.executors[key] = make_executor(self.config.cluster, self.sweep_dir / ".submitit" / "%j",
                                                name=job_name(self.config.experiment.name, "eval"),
                                                resources=res)
        return self.executors[key]

    def owns(self, job: Any) -> bool:
        return id(job) in self.names

    def ended(self, job: Any) -> None:
        try:
            job.result()
        except Exception as e:  # an eval job failing is reported, not fatal to the sweep
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            self.act("Eval failed", self.names[id(job)], lines[-1] if lines else type(e).__name__)


def evaluate_runs(config: DictConfig, sweep_dir: Path, todo: list[tuple[str, Path | None]],
                  act: ActionLog) -> None:
    """Evaluate these runs and wait. Locally the jobs go in batches of what the machine holds, the
    first with a base control first and alone; on SLURM all at once (the scheduler queues them)."""
    from .cluster import watch

    evals = EvalJobs(config, sweep_dir, act)
    if evals.kind == "local":
        parallel = local_jobs(config)
        first = todo[:1] if todo and todo[0][1] is not None else []
        rest = todo[len(first):]
        batches = ([first] if first else []) + [rest[i:i + parallel] for i in range(0, len(rest), parallel)]
    else:
        batches = [todo]
    for batch in batches:
        watch(evals.submit(batch), evals.ended, evals.kind)
