"""The Hydra job: one run through the stages, in its own directory.

``launch.py`` calls :func:`main` with the composed config. Each stage also runs on its own on an
existing run dir (``python -m cruijff eval|report <run dir>``):

1. validate the config (one-line errors, nothing written)
2. fine-tune with torchtune's stock recipe -> ``epoch_N/``, ``run.json``   (:mod:`cruijff.finetune`)
3. evaluate the base model and each epoch checkpoint with inspect-ai -> ``eval/``   (:mod:`cruijff.evaluate`)
4. results table -> printed, ``results.csv``, ``results.md``   (:mod:`cruijff.report`)
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .cluster import backend, time_limit_message
from .config import (TaskSpec, early_stop, check_name, config_hash, data_keys, mark_smoke, prepare_job, resolve_paths, run_changes,
                     validate)
from .errors import ConfigError, CruijffError, first_line, omegaconf_message
from .evaluate import check_tasks_load, evaluate_run
from .finetune import finetune_run
from .plan import ACTIVE, OVERWRITE, PlannedRun, plan_state, print_plan
from .records import (ActionLog, RunState, acquire_lock, current_cell, expected_cells, layout, liveness, mark_failed,
                      run_standing)
from .report import refresh, report_run

log = logging.getLogger("cruijff")


class TrialFailed(RuntimeError):
    """An Optuna trial whose run failed: Hydra's job runner hands it to the sweeper as a failure."""


def main(cfg: DictConfig) -> int | float:
    """Run one grid point, or a single run; returns its exit code (0 done, 1 failed, 2 refused),
    which the entry point makes the process's for a single run.

    In a grid sweep a job only fine-tunes (evaluation waits for the grid, in the sweep callback).
    Under an optimizing sweeper (Optuna) a job also evaluates its own checkpoints and returns the
    objective: the last epoch's score on ``eval.objective`` (NaN when the run failed).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    mark_smoke(cfg, hc.runtime.choices)  # the job's config has no hydra node for apply_smoke to read
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    optimizing = sweep and not str(hc.sweeper._target_).endswith("GridSweeper")
    fresh = not any(run_dir.iterdir()) if run_dir.exists() else True
    if sweep:
        prepare_job(cfg, int(hc.job.num))
    try:
        if cfg.get("scaffold", False):  # the grid sweeper scaffolds before any job; a job never should
            raise ConfigError("scaffold", True, "renders a grid sweep's files: python launch.py -m ... scaffold=true "
                                                "(with the grid sweeper)")
        if not sweep and early_stop.method(cfg) == "halving":
            raise ConfigError("early_stop", "halving", "stops the losing runs of a grid sweep: python launch.py -m "
                              "with values to sweep; a single run trains all its epochs (early_stop=none)")
        if cfg.get("dry_run", False):
            code = dry_run(cfg, run_dir, list(hc.overrides.task))
            if fresh:
                _remove_empty(run_dir)
            return code
        mode = "epochs" if optimizing else "none" if sweep else "all"
        code = run(cfg, run_dir, overrides=list(hc.overrides.task), evaluate=mode, claim=not sweep)
    except (CruijffError, OmegaConfBaseException) as e:
        msg = first_line(e) if isinstance(e, CruijffError) else omegaconf_message(e)
        print(f"cruijff: error: {msg}", file=sys.stderr)
        if sweep and not cfg.get("dry_run", False) and not cfg.get("scaffold", False):
            record_refusal(run_dir, msg, e)  # the sweep's summary and log say why this run never trained
        elif fresh:
            _remove_empty(run_dir)
        code = 2
    except Exception as e:  # never raise into Hydra: the sweep must complete and report
        if not sweep:
            raise
        msg = time_limit_message(e, cfg.cluster) or f"{type(e).__name__}: {e}"
        print(f"cruijff: {run_dir.name}: {msg}", file=sys.stderr)
        mark_failed(run_dir, msg)  # stopped outside a stage (the time limit may strike anywhere): say so
        code = 1
    if optimizing:
        if code:  # the sweeper records the trial as failed (NaN would crash hydra-optuna-sweeper)
            state = RunState.of(run_dir)
            reason = (state.error if state else None) or f"exit code {code}"
            raise TrialFailed(f"{run_dir.name}: {reason}")
        return objective(cfg, run_dir)
    return code


def record_refusal(run_dir: Path, message: str, error: Exception) -> None:
    """A sweep job that stopped on a user error before training: its ``run.json`` says failed
    with the reason, and the orchestration log says so. A record of another config's run (the
    refusal to overwrite it) or a finished one is left as it is."""
    ActionLog(layout.action_log(run_dir.parent))("Run refused", run_dir.name, message)
    if not (isinstance(error, ConfigError) and error.key == "overwrite"):
        mark_failed(run_dir, message)


def objective(cfg: DictConfig, run_dir: Path) -> float:
    """The score an optimizing sweeper maximizes: ``eval.objective`` at the last evaluated epoch
    (of the cells that count under the keys expected now)."""
    specs = validate(cfg)
    label = cfg.eval.get("objective") or (specs[0].label if specs else None)
    state = RunState.of(run_dir)
    expected = expected_cells(run_dir)
    evaluated = [c for c in (state.checkpoints if state else []) if c in expected]
    if label is None or not evaluated:
        return float("nan")
    cell = current_cell(*expected[evaluated[-1]])
    value = cell.scores().get(label) if cell else None
    return float(value) if value is not None else float("nan")


def dry_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> int:
    """Validate and show what a run would do; write nothing, start nothing."""
    specs = validate(cfg)
    check_name("run name", run_dir.name)
    preflight(cfg, run_dir, specs, evaluates=True)
    paths = resolve_paths(cfg, build=False)
    chash = config_hash(cfg, *paths)
    standing, state = run_standing(run_dir, chash, int(cfg.training.epochs))
    planned = ACTIVE if liveness.at_work(state) else plan_state(standing, bool(cfg.overwrite), run_dir, state, chash,
                                                                lambda d: run_changes(d, cfg, *paths))
    print_plan([PlannedRun(run_dir.name, overrides, chash, planned, state)], f"{cfg.experiment.name}: dry run")
    return 0


def _remove_empty(path: Path) -> None:
    """Remove a dir Hydra created for a job that never started, and its empty parents."""
    while path.exists() and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path.parent == path or path.parent == Path.cwd():
            break
        path = path.parent


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], evaluate: str = "all", claim: bool = False) -> int:
    """Fine-tune, then evaluate: "all" (base + epochs, then the table), "epochs" or "none".
    ``claim``: a single run, which makes itself the one writer of its run dir first (:func:`claim_run`;
    a sweep's job runs under its launcher's claim)."""
    specs = validate(cfg)
    check_name("run name", run_dir.name)
    preflight(cfg, run_dir, specs, evaluates=evaluate != "none")
    act = ActionLog(layout.action_log(run_dir.parent))
    model_dir, data_file = resolve_paths(cfg)
    chash = config_hash(cfg, model_dir, data_file)
    if claim:
        if not backend(cfg.cluster).on_this_machine:
            print(f"cruijff: cluster={cfg.cluster.get('name', cfg.cluster.executor)} submits a sweep's jobs (-m); "
                  "this single run trains here, in this process", file=sys.stderr)
        claim_run(run_dir, act)
    standing, state = run_standing(run_dir, chash, int(cfg.training.epochs))
    if plan_state(standing, bool(cfg.overwrite), run_dir, state, chash,
                  lambda d: run_changes(d, cfg, model_dir, data_file)) == OVERWRITE:
        act("Overwrite run", f"{run_dir.name}: config hash {state.config_hash} -> {chash}")
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()

    run_dir.mkdir(parents=True, exist_ok=True)
    saved = layout.saved_config(run_dir)
    saved.parent.mkdir(parents=True, exist_ok=True)  # a refused launch may have just removed an empty run dir
    OmegaConf.save(cfg, saved, resolve=True)
    layout.saved_overrides(run_dir).write_text("".join(f"- {o}\n" for o in overrides) if overrides else "[]\n")
    _log_to_file(layout.launch_log(run_dir))

    ok = finetune_run(cfg, run_dir, model_dir, data_file, chash, act)
    if evaluate == "none":
        return 0 if ok else 1
    unscored: dict[str, str] = {}
    if ok and cfg.eval.enabled:
        unscored = evaluate_run(cfg, run_dir, model_dir, data_file, specs, act, base=evaluate == "all")
    if evaluate == "all":
        report_run(cfg, run_dir, specs)
        if refresh(run_dir.parent):  # the experiment's summary, where it has one, says what its cells say now
            act("Report", layout.relative(layout.summary(run_dir.parent), run_dir.parent), "refreshed by a single run")
    for label, why in unscored.items():  # an eval cell without a score fails the run's command
        act("Eval failed", f"{run_dir.name}/{label}", why)
        print(f"cruijff: {run_dir.name}: {label}: eval failed: {why}", file=sys.stderr)
    return 0 if ok and not unscored else 1


def claim_run(run_dir: Path, act: ActionLog) -> None:
    """Make this single run the one writer of its run dir, before it writes anything, or refuse
    (CruijffError): it takes the experiment dir's lock, which a sweep's launcher, another single
    run of the experiment or ``cruijff eval`` may hold, and it refuses a run that a job of an
    earlier launch still fine-tunes (its launcher was killed; the job goes on). A run whose
    recorded process has died is recorded so, and redone here."""
    acquire_lock(run_dir.parent)
    state = RunState.of(run_dir)
    if liveness.at_work(state):
        raise CruijffError(f"{layout.relative(run_dir, Path.cwd())} is being fine-tuned by {liveness.worker(state)}, "
                           "a job of an earlier launch; wait for it to end, or stop it first")
    if liveness.gone(state):
        mark_failed(run_dir, liveness.death(state))
        act("Run died", run_dir.name, liveness.death(state))


def preflight(cfg: DictConfig, run_dir: Path, specs: list[TaskSpec], evaluates: bool) -> None:
    """What a run checks beyond its config before it writes anything: its dir is not inside
    another run's, and (when it evaluates) every eval task loads."""
    inside = layout.enclosing_run(run_dir)
    if inside is not None:
        raise ConfigError("hydra.run.dir", str(run_dir), f"is inside the run dir {inside} (it holds run.json or "
                                                         ".hydra/); choose a dir outside any run")
    here, where = Path.cwd().resolve(), run_dir.resolve()
    if where == here or where in here.parents:
        raise ConfigError("hydra.run.dir", str(run_dir), "is the working dir or a dir above it; a run's dir is one "
                                                         "of its own, e.g. outputs/<experiment>/<run>")
    held = layout.held_run(run_dir)
    if held is not None:
        raise ConfigError("hydra.run.dir", str(run_dir), f"holds other runs ({held}): an experiment's or a sweep's "
                                                         "dir, not a run's; choose a dir of its own for the run")
    if evaluates and cfg.eval.enabled and specs:
        check_tasks_load(specs, resolve_paths(cfg, build=False)[1], *data_keys(cfg))


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
