"""The grid sweeper (``hydra/sweeper=grid``): Hydra's grid expansion, then the plan of every run,
refused whole at the first bad grid point, then only what is not done goes to the launcher —
or, with ``dry_run``/``scaffold``/``detach``, what it would cost, what it would run, or submitted
without waiting."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..cluster import active_slurm_jobs, array_ids, backend
from ..config import check_name
from ..errors import ConfigError, CruijffError, first_line
from ..plan import ACTIVE, FINISHED, OVERWRITE, PlannedRun, Planner, print_plan
from ..records import ActionLog, SweepPlan, acquire_lock, layout, record_finished
from .deaths import may_be_at_work
from .detach import detach
from .halving import Waves
from .halving import settings as halving_settings
from .launcher import say_ended, test_submission
from .orphans import record_dead, wait_for_orphans
from .plan_file import write_plan
from .scaffold import scaffold_text, write_scaffold
from .snapshot import freeze


def run_grid(sweeper: Any, arguments: list[str]) -> list:
    """``GridSweeper.sweep``: Hydra's grid expansion, our plan, then batches to the launcher.
    A user error raises CruijffError before anything is written or submitted."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    config = sweeper.config
    loader = sweeper.hydra_context.config_loader
    t0 = time.time()
    try:
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(
            sweeper._parse_config() + list(arguments))
    except Exception as e:  # Hydra's override grammar errors
        raise CruijffError(first_line(e)) from None
    jobs = BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]
    sweep_dir = Path(config.hydra.sweep.dir)
    check_name("experiment.name", config.experiment.name)
    inside = layout.enclosing_run(sweep_dir, itself=True)
    if inside is not None:  # before the lock: nothing is written there
        raise ConfigError("hydra.sweep.dir", str(sweep_dir), f"is {'' if inside == sweep_dir.absolute() else 'inside '}"
                          f"the run dir {inside} (it holds run.json or .hydra/); choose a dir outside any run")
    dry = bool(config.get("dry_run", False))
    full = bool(config.get("full_table", False))  # the plan table lists every run, however many
    if sweep_dir.exists() and not dry:
        acquire_lock(sweep_dir)

    def compose(overrides: list[str]) -> DictConfig:
        try:
            return loader.load_sweep_config(config, overrides)
        except Exception as e:
            raise CruijffError(" ".join(overrides) + ": " + first_line(e)) from None

    scaffold = bool(config.get("scaffold", False))
    rendered: dict[str, tuple[str, str]] = {}  # run -> (finetune.yaml, its tune run command)

    def render_run(run: PlannedRun, cfg: DictConfig) -> None:
        if run.state != FINISHED:
            rendered[run.name] = scaffold_text(cfg, sweep_dir / run.name)

    planner = Planner(config, sweep_dir, compose)
    runs = planner.plan(jobs, estimate=dry or scaffold, each=render_run if scaffold else None)
    halving = halving_settings(config, planner.job_config, runs)
    previous = SweepPlan.of(sweep_dir)
    if backend(config.cluster).queued and previous is not None:
        _skip_runs_at_work(runs, previous.jobs)
    if config.get("detach", False) and not backend(config.cluster).queued:
        raise CruijffError("detach=True: detached sweeps need a scheduler that outlives this process; use cluster=slurm")
    todo = [r for r in runs if r.state not in (FINISHED, ACTIVE)]
    base_cells = (len(config.eval.tasks) * len({r.model for r in runs})
                  if config.eval.enabled and config.eval.base_model else 0)
    if dry:
        print_plan(runs, f"{config.experiment.name}: {len(runs)} runs, {len(todo)} to run "
                         f"(dry run: nothing written, nothing submitted)", base_cells, full)
        print(f"cruijff: planned {len(runs)} runs in {time.time() - t0:.2f} s")
        if halving is not None:
            print(f"cruijff: early stopping: {halving.describe()}; the plan's hours are for every epoch of every run")
        test_submission(config, [r.name for r in todo], {r.name: r.resources for r in todo})
        return []
    test_submission(config, [r.name for r in todo], {r.name: r.resources for r in todo})
    acquire_lock(sweep_dir)
    write_plan(sweep_dir, config, [r.record() for r in runs])
    act = ActionLog(layout.action_log(sweep_dir))
    if scaffold:
        written = write_scaffold(config, sweep_dir, todo, rendered)
        print_plan(runs, f"{config.experiment.name}: {len(runs)} runs, {len(todo)} to run "
                         f"(scaffold: rendered, nothing submitted)", base_cells, full)
        act("Scaffold", f"{len(todo)} runs to run of {len(runs)}", f"rendered {len(written)} files; nothing submitted")
        for path in written:
            print(f"cruijff: wrote {path}")
        print("cruijff: read them, then run the same command without scaffold=true")
        return []
    if not backend(config.cluster).queued:  # a job an earlier launch left running: waited for, never run twice
        t_wait = time.time()
        waited = wait_for_orphans(sweep_dir, runs, act)
        t0 += time.time() - t_wait  # the plan's time below is not the wait's
        if waited:
            again = {r.name: r for r in planner.plan([r.overrides for r in waited])}
            runs = [again.get(r.name, r) for r in runs]
            for name in again:
                say_ended(name, again[name].previous)
            write_plan(sweep_dir, config, [r.record() for r in runs])
        record_dead(sweep_dir, runs, act)
        todo = [r for r in runs if r.state not in (FINISHED, ACTIVE)]
    for r in runs:  # every epoch complete, the job killed before its run.json said so: it catches up
        if r.state == FINISHED:
            record_finished(sweep_dir / r.name)
    sweeper.launcher.run_resources = {r.name: r.resources for r in todo}
    sweeper.launcher.code_snapshot = freeze(config, sweep_dir)  # what every job of this launch imports
    act("Plan sweep", f"{len(runs)} runs: " + ", ".join(f"{r.name} ({r.state})" for r in runs),
        f"{len(todo)} to run, {len(runs) - len(todo)} finished earlier (skipped), "
        f"planned in {time.time() - t0:.2f} s")
    if config.get("detach", False):
        jobs_of = previous.jobs if previous else {}
        earlier = array_ids(jobs_of[r.name] for r in runs if r.state == ACTIVE and r.name in jobs_of)
        finish = (previous.detached or {}).get("finish_job") if previous else None
        if earlier and finish:  # the earlier eval+report job too: two must not evaluate the same cells
            earlier += sorted(active_slurm_jobs([str(finish)]))
        detach(sweeper, config, sweep_dir, [r.overrides for r in todo], act, earlier)
        return []
    if not todo:
        active = [r.name for r in runs if r.state == ACTIVE]
        print(f"cruijff: all {len(runs)} runs finished earlier; nothing to submit" if not active else
              f"cruijff: nothing to submit; {len(active)} runs still run in earlier jobs: {', '.join(active)}")
        return []
    if halving is not None:  # waves: each run up to a rung, then only the best go on
        sweeper.launcher.run_resources = {r.name: r.resources for r in runs}  # any of them may train on
        waves = Waves(config, sweep_dir, halving, runs, lambda batch: sweeper.launcher.launch(batch, initial_job_idx=0))
        waves.wait_for([r.name for r in runs if r.state == ACTIVE], previous.jobs if previous else {})
        return waves.run()
    size = int(sweeper.max_batch_size or len(todo))
    returns, idx = [], 0
    for i in range(0, len(todo), size):
        batch = [r.overrides for r in todo[i:i + size]]
        returns.append(sweeper.launcher.launch(batch, initial_job_idx=idx))
        idx += len(batch)
    return returns


def _skip_runs_at_work(runs: list[PlannedRun], jobs: dict[str, str]) -> None:
    """Runs whose latest SLURM job is still pending or running are not submitted again (a
    detached or orphaned launch's job works on them); ``overwrite=true`` on one is refused."""
    maybe = [r for r in runs if r.state != FINISHED and r.name in jobs and may_be_at_work(r.previous, jobs[r.name])]
    alive = active_slurm_jobs([jobs[r.name] for r in maybe])
    for r in maybe:
        if jobs[r.name] not in alive:
            continue
        if r.state == OVERWRITE:
            raise CruijffError(f"{r.name}: overwrite=true, but its SLURM job {jobs[r.name]} is still pending or "
                               f"running; scancel {jobs[r.name]} first, or wait for it")
        r.state = ACTIVE
