"""The plan as a table: every run, its state and config hash, and with estimates what it costs."""

from __future__ import annotations

from ..ui import console
from .estimate import COLUMNS, as_row, summary
from .planner import ACTIVE, FINISHED, PlannedRun


def print_plan(runs: list[PlannedRun], title: str, base_cells: int = 0) -> None:
    """The plan as a table; with estimates, their columns and the totals of what is still to run."""
    from rich.table import Table

    costs = any(r.estimate is not None for r in runs)
    table = Table(title=title)
    for c in ("#", "run", "state", "overrides", "config hash"):
        table.add_column(c)
    if costs:
        for c in COLUMNS:
            table.add_column(c, justify="right")
    for i, r in enumerate(runs):
        table.add_row(str(i), r.name, r.state, " ".join(r.overrides), r.config_hash,
                      *(as_row(r.estimate if r.state != ACTIVE else None) if costs else []))
    console().print(table)
    if costs:
        for line in summary([r.estimate for r in runs if r.state not in (FINISHED, ACTIVE)], base_cells):
            console().print(f"  {line}", highlight=False)
