"""Sweep report: one table across runs x checkpoints x tasks, and plots.

Reads only files: each run's ``run.json`` and ``logs/loss.jsonl``, and each cell's scores through
the one score reader (:func:`cruijff.records.cell_scores`) — so it works on any sweep dir, during or
after a sweep, and shows what ``status``, the run table and an optimizing sweeper see.

Writes ``summary.csv`` (one row per run x checkpoint x task, base included), ``summary.md`` (the same
pivoted, best run per task, failures) and ``plots/*.png``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from ..records import PlannedRunRecord, RunState, cell_scores, layout, read_jsonl, sweep_runs
from .format import markdown_table
from .plots import plot_accuracy, plot_heatmap, plot_losses


def collect(sweep_dir: Path, plan: list[PlannedRunRecord]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(scores, losses, failures) of a sweep dir, for the runs of its plan (none: every run dir)."""
    import pandas as pd

    plan = plan or [PlannedRunRecord(name, []) for name in layout.run_dirs(sweep_dir)]
    rows, losses, failures = [], [], {}
    for base in layout.base_dirs(sweep_dir):
        for task, value in cell_scores(base).items():
            rows.append({"run": "base", "model": base.name, "checkpoint": "base", "epoch": -1,
                         "task": task, "score": value})
    for r in plan:
        run_dir = sweep_dir / r.name
        state = RunState.of(run_dir)
        if state is None or not state.finished:
            failures[r.name] = (state.error or state.status.value) if state else "did not start"
            continue
        params = dict(o.split("=", 1) for o in r.overrides if "=" in o)
        epoch_loss = {e.epoch: e for e in state.epochs}
        for ckpt in state.checkpoints:
            epoch = layout.epoch_of(ckpt)
            loss = epoch_loss.get(epoch)
            for task, value in cell_scores(layout.eval_dir(run_dir, ckpt)).items():
                rows.append({"run": r.name, **params, "checkpoint": ckpt, "epoch": epoch, "task": task,
                             "score": value, "mean_loss": loss.mean_loss if loss else None,
                             "final_loss": loss.final_loss if loss else None})
        losses += [{"run": r.name, **row} for row in read_jsonl(layout.loss_file(run_dir))]
    return pd.DataFrame(rows), pd.DataFrame(losses), failures


def _report_inputs(sweep_dir: Path, plan: list[PlannedRunRecord]) -> str:
    """Fingerprint of everything the report reads (run states, cell summaries, the run list)."""
    paths = [layout.run_file(sweep_dir / r.name) for r in plan] + layout.cell_files(sweep_dir)
    parts = [",".join(r.name for r in plan)]
    for p in paths:
        try:
            parts.append(f"{p}:{p.stat().st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def report_is_current(sweep_dir: Path, plan: list[PlannedRunRecord]) -> bool:
    key = sweep_dir / ".report-key"
    return (sweep_dir / "summary.md").exists() and key.exists() and key.read_text().strip() == _report_inputs(
        sweep_dir, plan)


def report_sweep(sweep_dir: Path, plan: list[PlannedRunRecord] | None = None) -> pd.DataFrame:
    """summary.csv, summary.md and plots/ of a sweep; ``.report-key`` remembers their inputs, so
    a re-run whose runs and evals did not change leaves them alone (``report_is_current``)."""
    if plan is None:
        plan = sweep_runs(sweep_dir)
    key = _report_inputs(sweep_dir, plan)
    scores, losses, failures = collect(sweep_dir, plan)
    values: dict[str, set[str]] = {}
    for r in plan:
        for o in r.overrides:
            if "=" in o:
                values.setdefault(o.split("=", 1)[0], set()).add(o.split("=", 1)[1])
    axes = [k for k, v in values.items() if len(v) > 1]  # the swept keys, in grid order
    scores.to_csv(sweep_dir / "summary.csv", index=False)
    _write_markdown(sweep_dir, scores, failures, len(plan) or None)
    plots = sweep_dir / "plots"
    plots.mkdir(exist_ok=True)
    if not scores.empty:
        plot_accuracy(scores, plots)
        plot_heatmap(scores, axes, plots)
    if not losses.empty:
        plot_losses(losses, plots)
    (sweep_dir / ".report-key").write_text(key + "\n")
    return scores


def _write_markdown(sweep_dir: Path, scores: pd.DataFrame, failures: dict[str, str], planned) -> None:
    lines = [f"# {sweep_dir.name}", ""]
    runs = sorted(set(scores["run"]) - {"base"}) if not scores.empty else []
    total = planned or len(runs) + len(failures)
    lines.append(f"{total - len(failures)}/{total} runs finished" +
                 (f", {len(failures)} failed" if failures else "") + ".")
    lines.append("")
    if not scores.empty:
        table = scores.pivot_table(index=["run", "checkpoint"], columns="task", values="score", sort=False)
        lines += ["## Scores (run x checkpoint x task)", "", markdown_table(table.reset_index()), ""]
        last = scores[scores["run"] != "base"].sort_values("epoch").groupby(["run", "task"]).tail(1)
        if not last.empty:
            lines += ["## Best run per task (last epoch)", ""]
            best = last.loc[last.groupby("task")["score"].idxmax(), ["task", "run", "checkpoint", "score"]]
            lines += [markdown_table(best), ""]
    if failures:
        lines += ["## Failed runs", ""] + [f"- `{n}`: {why}" for n, why in failures.items()] + [""]
    lines += ["Plots: `plots/accuracy_vs_epoch.png`, `plots/loss.png`, `plots/heatmap.png`.", ""]
    (sweep_dir / "summary.md").write_text("\n".join(lines))
