"""``python -m cruijff compare <sweep dir> A B``: two checkpoints on the same samples, per task —
each one's score with its 95% interval, the paired difference B - A with its bootstrap interval,
and for 0/1 scores McNemar's exact p-value.

A checkpoint is ``RUN/epoch_N``, ``RUN`` (its last evaluated epoch), ``base`` (the sweep's base
control) or ``base/<model>`` where the sweep has several."""

from __future__ import annotations

from pathlib import Path

from ..errors import CruijffError, did_you_mean
from ..records import CellResults, layout
from .format import p_value
from .samples import SampleScores
from .stats import compare, mean_interval, paired


def cell_of(sweep_dir: Path, spec: str) -> Path:
    """The eval cell a checkpoint spec names (see the module's docstring)."""
    head, _, tail = spec.partition("/")
    if head == "base":
        bases = layout.base_dirs(sweep_dir)
        names = [b.name for b in bases]
        if tail:
            if tail not in names:
                raise CruijffError(f"{spec}: no such base control{did_you_mean(tail, names)}; the sweep has: "
                                   f"{', '.join(names) or 'none'}")
            return sweep_dir / "base" / tail
        if len(bases) != 1:
            raise CruijffError(f"{spec}: the sweep has {len(bases)} base controls; name one: "
                               + ", ".join(f"base/{n}" for n in names))
        return bases[0]
    run_dir = sweep_dir / head
    runs = layout.run_dirs(sweep_dir)
    if head not in runs:
        raise CruijffError(f"{spec}: no such run in {sweep_dir}{did_you_mean(head, runs)}")
    evaluated = sorted((p for p in (run_dir / "eval").glob("epoch_*") if layout.epoch_of(p.name) is not None),
                       key=lambda p: layout.epoch_of(p.name))
    if not tail:
        if not evaluated:
            raise CruijffError(f"{spec}: no evaluated checkpoint")
        return evaluated[-1]
    if layout.epoch_of(tail) is None or not layout.eval_dir(run_dir, tail).is_dir():
        raise CruijffError(f"{spec}: not an evaluated checkpoint of {head}; it has: "
                           + (", ".join(p.name for p in evaluated) or "none"))
    return layout.eval_dir(run_dir, tail)


def compare_cells(sweep_dir: Path, a: str, b: str) -> list[dict]:
    """One row per task both checkpoints were evaluated on."""
    cells = {}
    for spec in (a, b):
        cell = CellResults.of(cell_of(sweep_dir, spec))
        if cell is None:
            raise CruijffError(f"{spec}: not evaluated yet (no results.json)")
        cells[spec] = cell
    samples = SampleScores(sweep_dir)
    rows = []
    for task in sorted(set(cells[a].scores()) & set(cells[b].scores())):
        x, y = paired(samples.get(cells[a].tasks[task].log), samples.get(cells[b].tasks[task].log))
        c = compare(x, y)
        rows.append({"task": task, "n": c.n, "a": mean_interval(x), "b": mean_interval(y), "diff": c.diff,
                     "p": c.p_value, "a_only": c.a_only, "b_only": c.b_only})
    samples.save()
    if not rows:
        raise CruijffError(f"{a} and {b} share no evaluated task")
    return rows


def print_comparison(sweep_dir: Path, a: str, b: str) -> None:
    from rich.table import Table

    from ..ui import console

    table = Table(title=f"{b} vs {a} (paired, same samples)")
    for c in ("task", "samples", a, b, f"{b} - {a}", "McNemar p", "right only in A / B"):
        table.add_column(c, justify="left" if c == "task" else "right")
    for r in compare_cells(sweep_dir, a, b):
        p = p_value(r["p"])
        only = "—" if r["a_only"] is None else f"{r['a_only']} / {r['b_only']}"
        diff = r["diff"]
        table.add_row(r["task"], str(r["n"]), r["a"].text(), r["b"].text(),
                      f"{diff.value:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]", p, only)
    console().print(table)
