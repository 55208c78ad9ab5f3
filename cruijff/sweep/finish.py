"""How a sweep ends, the one way for every path that ends one — the launch's callback, a detached
sweep's eval+report job, ``python -m cruijff eval``: settle where each run stands, evaluate every
cell that does not count under its key now, report when any input changed, and say what failed
(a run's fine-tuning or an eval cell) in the log and the summary line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from ..records import ActionLog, RunState, layout, sweep_runs, unscored
from ..report import report_is_current, report_sweep
from .evals import eval_todo, evaluate_in_turn
from .settle import settle, summary_line

Evaluate = Callable[[list[tuple[str, Path | None]]], Any]


def finish(sweep_dir: Path, eval_cfg: DictConfig | dict | None, slurm: bool, act: ActionLog, t0: float,
           evaluate: Evaluate | None = None, done: str = "Sweep done") -> tuple[str, dict[str, str]]:
    """End a sweep; returns (the summary line, what failed: run or cell -> why). ``eval_cfg``: the
    eval section to evaluate with (None: each run's saved one); ``evaluate``: how the cells to do
    are evaluated (eval jobs), else one after another in this process."""
    runs = sweep_runs(sweep_dir)
    finished, active, failed = settle(sweep_dir, slurm, act)
    for n, why in failed.items():
        act("Run failed", n, why)
    enabled = bool((eval_cfg or {}).get("enabled", True))
    evaluated = False
    if enabled and finished:
        todo = eval_todo(sweep_dir, finished, eval_cfg)  # what an earlier eval left undone is tried again
        if todo:
            if evaluate is not None:
                evaluate(todo)
            else:
                evaluate_in_turn(sweep_dir, todo, eval_cfg, act)
            evaluated = True
        else:
            act("Skip eval", f"all cells of {len(finished)} finished runs complete")
    cells_failed = unscored(sweep_dir, finished) if enabled else {}
    for where, why in cells_failed.items():
        act("Eval failed", where, why)
    if evaluated or not report_is_current(sweep_dir, runs):
        report_sweep(sweep_dir, runs)
        act("Report", layout.relative(layout.summary(sweep_dir), sweep_dir))
    else:
        act("Skip report", "summary.md is current (no run or eval changed)")
    stopped = [n for n in finished if (st := RunState.of(sweep_dir / n)) is not None and st.stopped]
    summary = summary_line(len(runs), finished, active, failed, cells_failed, stopped)
    act(done, f"{time.time() - t0:.1f} s", summary)
    return summary, {**failed, **{f"eval {k}": v for k, v in cells_failed.items()}}
