"""``python -m cruijff status <sweep dir>``: what ran, what is running, what failed — from files only.

Safe to run while a sweep runs: it reads the state files (``cruijff.sweep.table``) and asks who
holds the sweep lock without taking it.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CruijffError
from .records import (CellStanding, RunState, RunStatus, cell_standing, expected_cells, lock_holder, sweep_runs)
from .sweep import ended_in_queue, status_table
from .ui import console


def show(sweep_dir: Path) -> int:
    """Print the sweep's table; 1 where a run or an eval cell failed (a script can tell), else 0."""
    holder = lock_holder(sweep_dir)
    console().print(status_table(sweep_dir, f"launch running ({holder})" if holder else "no launch running",
                                 scheduler=True))
    for line in retried(sweep_dir):
        console().print(line, markup=False, highlight=False, soft_wrap=True)
    return 1 if failed(sweep_dir) else 0


def retried(sweep_dir: Path) -> list[str]:
    """Below the table, each retry with other resources of each run, in one line
    (``<run>: retried cuda_oom at epoch 1 step 3: batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2``)."""
    out = []
    for r in sweep_runs(sweep_dir):
        try:
            state = RunState.of(sweep_dir / r.name)
        except CruijffError:  # the table names it
            continue
        out += [f"{r.name}: retried {retry.describe()}" for retry in (state.retries if state else [])]
    return out


def failed(sweep_dir: Path) -> bool:
    """Whether a run of the sweep is recorded failed (or its record cannot be read) or its SLURM
    job ended while it trained, or one of the eval cells its runs expect now failed."""
    states = {}
    for r in sweep_runs(sweep_dir):
        run_dir = sweep_dir / r.name
        try:
            state = states[r.name] = RunState.of(run_dir)
        except CruijffError:
            return True
        if state is not None and state.status is RunStatus.FAILED:
            return True
        if any(cell_standing(d, key) is CellStanding.FAILED for d, key in expected_cells(run_dir).values()):
            return True
    return any(not complete for complete, _, _ in ended_in_queue(sweep_dir, states).values())
