"""The sweep callback (``hydra.callbacks.sweep``): the lock for sweepers other than the grid one,
then after the grid: evals of what is not evaluated, the report when anything changed, a summary.
Hydra gives it no job results: it reads files only."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..errors import CruijffError
from ..records import ActionLog, SweepPlan, acquire_lock, layout, release_lock
from ..report import report_is_current, report_sweep
from ..ui import console
from .evals import eval_todo, evaluate_runs
from .settle import settle, summary_line
from .table import table as status_table


class SweepCallback(Callback):
    """Hydra callback of ``python launch.py -m``: lock, then evals + report after the grid.

    Hydra turns a callback's exceptions into warnings: a user error here ends the launch itself
    (one line, exit 2), and a failed run makes it exit 1.
    """

    _active: tuple["SweepCallback", DictConfig] | None = None  # the sweep this process runs

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._t0 = time.time()
        SweepCallback._active = (self, config)
        if config.get("dry_run", False) or _grid_sweeper(config):
            return  # the grid sweeper plans first, then takes the lock itself
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            acquire_lock(sweep_dir)
        except CruijffError as e:
            print(f"cruijff: error: {e}", file=sys.stderr)
            sys.exit(2)
        ActionLog(layout.action_log(sweep_dir))(
            "Sweep start", f"sweeper {config.hydra.sweeper._target_.rsplit('.', 1)[-1]}",
            f"launcher {config.hydra.launcher._target_.rsplit('.', 1)[-1]}")

    @classmethod
    def end_after_sweeper_error(cls) -> None:
        """End the sweep whose sweeper raised after its jobs ran (hydra-optuna-sweeper asks for the
        best trial when every trial failed): evaluate, report and summarise as at any sweep's end."""
        if cls._active is not None:
            callback, config = cls._active
            cls._active = None
            callback.on_multirun_end(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        SweepCallback._active = None
        if config.get("dry_run", False):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if config.get("scaffold", False) or config.get("detach", False) or not layout.sweep_file(sweep_dir).exists():
            release_lock(sweep_dir)  # rendered only, or the jobs go on without this launch
            return
        act = ActionLog(layout.action_log(sweep_dir))
        try:
            failed = finish_sweep(config, sweep_dir, act, self._t0)
        except CruijffError as e:  # e.g. a record that cannot be read: named, one line
            print(f"cruijff: error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            release_lock(sweep_dir)
        if failed:
            sys.exit(1)


def _grid_sweeper(config: DictConfig) -> bool:
    return str(config.hydra.sweeper._target_).endswith("GridSweeper")


def finish_sweep(config: DictConfig, sweep_dir: Path, act: ActionLog, t0: float) -> dict[str, str]:
    """Evaluate what is not evaluated yet, report if anything changed, summarise; returns failures."""
    plan = SweepPlan.of(sweep_dir)
    runs = plan.runs if plan else []
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
    if evaluated or not report_is_current(sweep_dir, runs):
        report_sweep(sweep_dir, runs)
        act("Report", str(sweep_dir / "summary.md"))
    else:
        act("Skip report", "summary.md is current (no run or eval changed)")
    summary = summary_line(len(runs), finished, active, failed)
    act("Sweep done", f"{time.time() - t0:.1f} s", summary)
    console().print(status_table(sweep_dir, "sweep done"))
    print(f"cruijff: {summary}")
    print(f"cruijff: report {sweep_dir / 'summary.md'}")
    return failed
