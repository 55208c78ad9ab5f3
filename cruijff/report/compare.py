"""``python -m cruijff compare <sweep dir> A B``: two checkpoints on the same samples, per task —
each one's score with its 95% interval, the paired difference B - A with its interval and the
paired test that agrees with it (McNemar's mid-p for 0/1 scores, a paired t-test otherwise;
cluster-aware where the task names a cluster field).

A checkpoint is ``RUN/epoch_N``, ``RUN`` (its last evaluated epoch), ``base`` (the sweep's base
control) or ``base/<model>`` where the sweep has several."""

from __future__ import annotations

from pathlib import Path

from ..errors import CruijffError, did_you_mean
from ..records import CellResults, current_cell, expected_cells, layout, log_path
from .analysis import same_samples, sweep_task_specs
from .format import p_value
from .samples import SampleScores
from .stats import compare, score_interval, paired


def _bases(sweep_dir: Path) -> dict[str, Path]:
    """The base controls the sweep's runs are compared with now, by dir name."""
    out = {}
    for run in layout.run_dirs(sweep_dir):
        base = expected_cells(sweep_dir / run).get("base")
        if base is not None and current_cell(*base) is not None:
            out[base[0].name] = base[0]
    return out


def cell_of(sweep_dir: Path, spec: str) -> tuple[Path, CellResults]:
    """The eval cell a checkpoint spec names (see the module's docstring), as it counts now."""
    head, _, tail = spec.partition("/")
    if head == "base":
        bases = _bases(sweep_dir)
        names = sorted(bases)
        if tail:
            if tail not in bases:
                raise CruijffError(f"{spec}: no such base control{did_you_mean(tail, names)}; the sweep has: "
                                   f"{', '.join(names) or 'none'}")
            path = bases[tail]
        elif len(bases) != 1:
            raise CruijffError(f"{spec}: the sweep has {len(bases)} base controls; name one: "
                               + ", ".join(f"base/{n}" for n in names))
        else:
            path = next(iter(bases.values()))
        return path, CellResults.of(path)
    run_dir = sweep_dir / head
    runs = layout.run_dirs(sweep_dir)
    if head not in runs:
        raise CruijffError(f"{spec}: no such run in {sweep_dir}{did_you_mean(head, runs)}")
    expected = expected_cells(run_dir)
    evaluated = sorted((label for label, (d, key) in expected.items()
                        if layout.epoch_of(label) is not None and current_cell(d, key) is not None),
                       key=layout.epoch_of)
    if not tail:
        if not evaluated:
            raise CruijffError(f"{spec}: no evaluated checkpoint")
        tail = evaluated[-1]
    if tail not in evaluated:
        raise CruijffError(f"{spec}: not an evaluated checkpoint of {head}; it has: "
                           + (", ".join(evaluated) or "none"))
    log_dir, key = expected[tail]
    return log_dir, current_cell(log_dir, key)


def compare_cells(sweep_dir: Path, a: str, b: str) -> list[dict]:
    """One row per task both checkpoints were evaluated on; refused where they scored other samples."""
    cells = {spec: cell_of(sweep_dir, spec) for spec in (a, b) if spec != "base"}
    for spec, other in ((a, b), (b, a)):  # plain "base" beside a run's checkpoint: the control that run has
        if spec == "base":
            own = cells.get(other, (None, None))[1]
            if own is not None and own.base_cell and (sweep_dir / own.base_cell).is_dir():
                cells[spec] = (sweep_dir / own.base_cell, CellResults.of(sweep_dir / own.base_cell))
            else:
                cells[spec] = cell_of(sweep_dir, spec)
    samples = SampleScores(sweep_dir)
    clusters = {s.label: s.cluster for s in sweep_task_specs(sweep_dir) if s.cluster}
    rows = []
    (dir_a, cell_a), (dir_b, cell_b) = cells[a], cells[b]
    for task in sorted(set(cell_a.scores()) & set(cell_b.scores())):
        ta, tb = cell_a.tasks[task], cell_b.tasks[task]
        if not same_samples(ta.samples_key, tb.samples_key):
            raise CruijffError(f"{a} ({layout.relative(dir_a, sweep_dir)}) and {b} ({layout.relative(dir_b, sweep_dir)}) "
                               f"scored other samples on {task} (ids or inputs differ): they cannot be paired")
        sa, sb = samples.get(log_path(dir_a, ta.log)), samples.get(log_path(dir_b, tb.log))
        groups = sb.clusters(clusters.get(task)) or sa.clusters(clusters.get(task))
        x, y, g = paired(sa.scores, sb.scores, groups)
        c = compare(x, y, g)
        rows.append({"task": task, "n": c.n, "a": score_interval(x, g), "b": score_interval(y, g), "diff": c.diff,
                     "p": c.p_value, "test": c.test, "a_only": c.a_only, "b_only": c.b_only, "clusters": c.clusters})
    samples.save()
    if not rows:
        raise CruijffError(f"{a} and {b} share no evaluated task")
    return rows


def print_comparison(sweep_dir: Path, a: str, b: str) -> None:
    from rich.table import Table

    from ..ui import console

    table = Table(title=f"{b} vs {a} (paired, same samples)")
    for c in ("task", "samples", a, b, f"{b} - {a}", "p (test)", "right only in A / B"):
        table.add_column(c, justify="left" if c == "task" else "right")
    for r in compare_cells(sweep_dir, a, b):
        p = p_value(r["p"])
        only = "—" if r["a_only"] is None else f"{r['a_only']} / {r['b_only']}"
        diff = r["diff"]
        n = str(r["n"]) + (f" ({r['clusters']} clusters)" if r["clusters"] else "")
        table.add_row(r["task"], n, r["a"].text(), r["b"].text(), diff.text(sign=True), f"{p} ({r['test']})", only)
    console().print(table)
