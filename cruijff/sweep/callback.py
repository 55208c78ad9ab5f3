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

from ..cluster import backend
from ..config import early_stop
from ..errors import CruijffError
from ..records import ActionLog, acquire_lock, layout, release_lock
from ..ui import console
from .evals import evaluate_runs
from .finish import finish
from ..plan.table import SUMMARY_ROWS
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
        if early_stop.method(config) == "halving":
            print("cruijff: error: early_stop='halving': stops the losing runs of a grid sweep; an optimizing "
                  "sweeper (hydra/sweeper=optuna) prunes none: early_stop=none", file=sys.stderr)
            sys.exit(2)
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
    """Evaluate what does not count yet (eval jobs), report if anything changed, summarise; returns failures."""
    summary, failed = finish(sweep_dir, config.eval, backend(config.cluster).queued, act, t0,
                             evaluate=lambda todo: evaluate_runs(config, sweep_dir, todo, act))
    console().print(status_table(sweep_dir, "sweep done",  # a big grid: the running and failed runs first
                                 limit=None if config.get("full_table", False) else SUMMARY_ROWS))
    print(f"cruijff: {summary}")
    print(f"cruijff: report {layout.summary(sweep_dir)}")
    return failed
