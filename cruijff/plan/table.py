"""The plan as a table: every run, its state and config hash, and with estimates what it costs.

A plan of more than :data:`SUMMARY_ROWS` runs prints as a summary: its first and last rows, the
runs by state and the totals; ``full_table=true`` lists every run."""

from __future__ import annotations

from typing import Any

from ..ui import console
from .estimate import COLUMNS, as_row, summary
from .planner import ACTIVE, FINISHED, PlannedRun, PlanState

SUMMARY_ROWS = 50  # a plan of more runs is summarised unless asked in full
ENDS = 5           # rows shown at each end of a summary
FULL_KEY = "full_table=true"


def shown_rows(n: int, full: bool = False) -> list[int | None]:
    """Which of ``n`` rows a table shows, in order; None where the rows left out would be."""
    if full or n <= SUMMARY_ROWS:
        return list(range(n))
    return [*range(ENDS), None, *range(n - ENDS, n)]


def by_state(states: list[Any], order: list[str]) -> str:
    """``9990 new, 10 finished``: how many of each state, in ``order`` (others after, by name)."""
    counts: dict[str, int] = {}
    for s in states:
        counts[str(s)] = counts.get(str(s), 0) + 1
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{counts[k]} {k}" for k in keys)


def not_shown(hidden: int) -> str:
    """The line under a summarised table."""
    return f"{hidden} rows not shown; {FULL_KEY} shows all"


def print_plan(runs: list[PlannedRun], title: str, base_cells: int = 0, full: bool = False) -> None:
    """The plan as a table; with estimates, their columns and the totals of what is still to run.
    More than :data:`SUMMARY_ROWS` runs, unless ``full``: the first and last rows and the runs by state."""
    from rich.table import Table

    costs = any(r.estimate is not None for r in runs)
    table = Table(title=title)
    columns = ("#", "run", "state", "overrides", "config hash")
    for c in columns:
        table.add_column(c)
    if costs:
        for c in COLUMNS:
            table.add_column(c, justify="right")
    shown = shown_rows(len(runs), full)
    for i in shown:
        if i is None:
            table.add_row("…", *[""] * (len(columns) - 1 + (len(COLUMNS) if costs else 0)))
            continue
        r = runs[i]
        table.add_row(str(i), r.name, r.state, " ".join(r.overrides), r.config_hash,
                      *(as_row(r.estimate if r.state != ACTIVE else None) if costs else []))
    console().print(table)
    hidden = len(runs) - (len(shown) - (None in shown))
    if hidden:
        console().print(f"  runs by state: {by_state([r.state for r in runs], [s.value for s in PlanState])}",
                        highlight=False)
    if costs:
        for line in summary([r.estimate for r in runs if r.state not in (FINISHED, ACTIVE)], base_cells):
            console().print(f"  {line}", highlight=False)
    if hidden:
        console().print(f"  {not_shown(hidden)}", highlight=False)
