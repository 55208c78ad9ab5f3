"""Sweep report: one table across runs x checkpoints x tasks, and plots.

Reads only files: each run's ``run.json`` and ``logs/loss.jsonl``, and each cell's scores where the
cell counts (:func:`cruijff.records.current_cell`) — so it works on any sweep dir, during or after a
sweep, and shows what ``status``, the run table and an optimizing sweeper see.

Writes ``summary.csv`` (one row per run x checkpoint x task, base included), ``summary.md`` (the same
pivoted, best run per task, failures) and ``plots/*.png``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from ..config import load_run, task_specs
from ..errors import CruijffError
from ..records import (PlannedRunRecord, RunState, SweepPlan, current_cell, expected_cells, layout, log_path,
                       read_jsonl, sweep_runs, unscored)
from .format import markdown_table, p_clause, p_value
from .analysis import SEED_KEY, Pick, over_seeds, picks, seed_groups, validation_of, with_statistics
from .plots import plot_accuracy, plot_heatmap, plot_losses
from .samples import SampleScores


def collect(sweep_dir: Path, plan: list[PlannedRunRecord]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(scores, losses, failures) of a sweep dir, for the runs of its plan (none: every run dir).

    Only cells that count are read: a run's cells of the keys it expects now (its
    ``eval/cells.json``), and the base controls those cells name with the key they were compared
    against — a stale cell, or a control no run is compared with now, is never mixed in."""
    import pandas as pd

    plan = plan or [PlannedRunRecord(name, []) for name in layout.run_dirs(sweep_dir)]
    rows, losses, failures = [], [], {}
    bases: dict[Path, str | None] = {}
    for r in plan:
        run_dir = sweep_dir / r.name
        state = RunState.of(run_dir)
        if state is None or not state.finished:
            failures[r.name] = (state.error or state.status.value) if state else "did not start"
            continue
        params = dict(o.split("=", 1) for o in r.overrides if "=" in o)
        epoch_loss = {e.epoch: e for e in state.epochs}
        expected = expected_cells(run_dir)
        if "base" in expected:
            bases.setdefault(*expected["base"])
        model = _model_of(run_dir)
        for ckpt in state.checkpoints:
            log_dir, key = expected.get(ckpt, (None, None))
            cell = current_cell(log_dir, key) if log_dir is not None else None
            if cell is None:
                continue
            base_name = None
            base_dir = _base_of(cell, sweep_dir)
            if base_dir is not None:
                base_name = base_dir.name
                bases.setdefault(base_dir, cell.base_key)
            epoch = layout.epoch_of(ckpt)
            loss = epoch_loss.get(epoch)
            for task, value in cell.scores().items():
                rows.append({"run": r.name, **params, "model": model, "base": base_name,
                             "checkpoint": ckpt, "epoch": epoch, "task": task, "score": value,
                             "mean_loss": loss.mean_loss if loss else None,
                             "final_loss": loss.final_loss if loss else None,
                             "log": log_path(log_dir, cell.tasks[task].log),
                             "samples_key": cell.tasks[task].samples_key, "setting": _setting(cell, task)})
        losses += [{"run": r.name, **row} for row in read_jsonl(layout.loss_file(run_dir))]
    base_rows = []
    for base_dir, key in sorted(bases.items()):
        cell = current_cell(base_dir, key)
        for task, value in (cell.scores() if cell else {}).items():
            base_rows.append({"run": "base", "model": base_dir.name.rsplit("-", 1)[0], "base": base_dir.name,
                              "checkpoint": "base", "epoch": -1, "task": task, "score": value,
                              "log": log_path(base_dir, cell.tasks[task].log),
                              "samples_key": cell.tasks[task].samples_key})
    return pd.DataFrame(base_rows + rows), pd.DataFrame(losses), failures


def _setting(cell, task: str) -> str | None:
    """What a task was scored under in a cell — its code, arguments and data, and the generation
    and prompt settings (from the cell's key) — as a short fingerprint: runs compared in one
    column must share it."""
    parts = cell.key_parts or {}
    entry = next((t for t in parts.get("tasks", []) if t.get("label") == task), None)
    if entry is None:
        return None
    blob = json.dumps([entry, parts.get("settings")], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _mixed(scores: "pd.DataFrame") -> list[str]:
    """Tasks whose runs were scored under different task code, data or settings (a run evaluated
    on its own with other eval settings): their scores are not comparable, and the summary says so."""
    if scores.empty or "setting" not in scores:
        return []
    out = []
    runs = scores[(scores["run"] != "base") & scores["setting"].notna()]
    for task, g in runs.groupby("task"):
        if g["setting"].nunique() > 1:
            groups = ["; ".join(sorted(set(sub["run"]))) for _, sub in g.groupby("setting")]
            out.append(f"**{task}** was scored under {len(groups)} different settings (task code, data or eval "
                       f"settings): " + " | ".join(groups))
    return out


def refresh(sweep_dir: Path) -> bool:
    """Write the sweep's report again where there is one and an input changed since (a run of the
    experiment evaluated on its own): a summary never shows what its cells no longer say."""
    if not layout.summary(sweep_dir).exists():
        return False
    runs = sweep_runs(sweep_dir)
    if report_is_current(sweep_dir, runs):
        return False
    report_sweep(sweep_dir, runs)
    return True


def _base_of(cell, sweep_dir: Path) -> Path | None:
    """The base control a run's cell was compared with: the one it names; a cell written before
    cells named theirs: the one its metadata names, or the sweep's only one."""
    if cell.base_cell:
        return sweep_dir / cell.base_cell
    if cell.key is None:
        legacy = cell.metadata.get("base_cell")
        if legacy:
            return sweep_dir / "base" / legacy
        bases = layout.base_dirs(sweep_dir)
        if len(bases) == 1:
            return bases[0]
    return None


def _model_of(run_dir: Path) -> str | None:
    try:
        return str(load_run(run_dir).model.name)
    except CruijffError:
        return None


def _report_inputs(sweep_dir: Path, plan: list[PlannedRunRecord]) -> str:
    """Fingerprint of everything the report reads (run states, cell summaries, the run list)."""
    paths = ([layout.run_file(sweep_dir / r.name) for r in plan] + [layout.eval_plan_file(sweep_dir / r.name) for r in plan]
             + layout.cell_files(sweep_dir))
    parts = [",".join(r.name for r in plan)]
    for p in paths:
        try:
            parts.append(f"{layout.relative(p, sweep_dir)}:{p.stat().st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def report_is_current(sweep_dir: Path, plan: list[PlannedRunRecord]) -> bool:
    key = layout.report_key(sweep_dir)
    return layout.summary(sweep_dir).exists() and key.exists() and key.read_text().strip() == _report_inputs(
        sweep_dir, plan)


def report_sweep(sweep_dir: Path, plan: list[PlannedRunRecord] | None = None) -> pd.DataFrame:
    """summary.csv, summary.md and plots/ of a sweep; ``.report-key`` remembers their inputs, so
    a re-run whose runs and evals did not change leaves them alone (``report_is_current``)."""
    if plan is None:
        plan = sweep_runs(sweep_dir)
    key = _report_inputs(sweep_dir, plan)
    scores, losses, failures = collect(sweep_dir, plan)
    samples = SampleScores(sweep_dir)
    scores = with_statistics(scores, samples)
    samples.save()
    values: dict[str, set[str]] = {}
    for r in plan:
        for o in r.overrides:
            if "=" in o:
                values.setdefault(o.split("=", 1)[0], set()).add(o.split("=", 1)[1])
    axes = [k for k, v in values.items() if len(v) > 1 and not SEED_KEY.match(k + "=")]  # the swept keys
    groups = seed_groups(plan)
    seeds = {r.name: o.split("=", 1)[1] for r in plan for o in r.overrides if SEED_KEY.match(o)}
    by_seed = over_seeds(scores, groups, seeds) if not scores.empty else None
    chosen = picks(scores, validation_of(_specs(sweep_dir))) if not scores.empty else []
    scores.drop(columns=["log", "samples_key", "setting"], errors="ignore").to_csv(layout.summary(sweep_dir, "csv"), index=False)
    if by_seed is not None and not by_seed.empty:
        by_seed.to_csv(layout.summary(sweep_dir, "seeds.csv"), index=False)
    finished = [r.name for r in plan if r.name not in failures]
    notes = {"resumed": _resumed(sweep_dir, [r.name for r in plan]), "unscored": unscored(sweep_dir, finished),
             "mixed": _mixed(scores)}
    _write_markdown(sweep_dir, scores, failures, len(plan) or None, by_seed, chosen, notes)
    plots = layout.plots_dir(sweep_dir)
    plots.mkdir(exist_ok=True)
    if not scores.empty:
        plot_accuracy(scores, plots, groups)
        plot_heatmap(scores, axes, plots)
    if not losses.empty:
        plot_losses(losses, plots)
    layout.report_key(sweep_dir).write_text(key + "\n")
    return scores


def _specs(sweep_dir: Path) -> list:
    plan = SweepPlan.of(sweep_dir)
    return task_specs((plan.eval if plan else {}).get("tasks"))


def _write_markdown(sweep_dir: Path, scores: pd.DataFrame, failures: dict[str, str], planned,
                    by_seed: "pd.DataFrame | None", chosen: list[Pick], notes: dict | None = None) -> None:
    """``notes``: ``resumed`` runs, ``unscored`` eval cells (where -> why), ``mixed`` settings per task."""
    notes = notes or {}
    resumed, unscored_cells, mixed = notes.get("resumed"), notes.get("unscored"), notes.get("mixed")
    lines = [f"# {sweep_dir.name}", ""]
    runs = sorted(set(scores["run"]) - {"base"}) if not scores.empty else []
    total = planned or len(runs) + len(failures)
    if chosen:
        lines += ["## Findings", ""] + [f"- {finding(p)}" for p in chosen] + [""]
    lines.append(f"{total - len(failures)}/{total} runs finished" +
                 (f", {len(failures)} failed" if failures else "") +
                 (f"; {len(unscored_cells)} eval cell{'s' if len(unscored_cells) > 1 else ''} without a score"
                  if unscored_cells else "") + ".")
    lines.append("")
    if mixed:
        lines += ["**Not comparable across runs:** " + " ".join(mixed) + ". Evaluate them again under one eval "
                  "section: `python -m cruijff eval <sweep dir>`.", ""]
    if resumed:
        lines += ["Resumed after an interruption, from their last complete epoch: " + ", ".join(resumed) + ".", ""]
    if not scores.empty:
        shown = scores.assign(score=[_ci(r) for r in scores.itertuples()],
                              gain=[_gain(r) for r in scores.itertuples()])
        table = shown.pivot_table(index=["run", "checkpoint"], columns="task", values="score", sort=False,
                                  aggfunc="first")
        lines += ["## Scores (run x checkpoint x task), 95% CI", "", markdown_table(table.reset_index()), ""]
        gains = shown[shown["run"] != "base"][["task", "run", "checkpoint", "gain", "p", "p_holm"]]
        gains = gains.assign(p=[p_value(v) for v in gains["p"]], p_holm=[p_value(v) for v in gains["p_holm"]])
        if not gains.empty and (gains["gain"] != "—").any():
            lines += ["## Paired gain over the base model (same samples)", "",
                      "Gain: mean score difference with a paired bootstrap 95% CI; p: McNemar's exact test on "
                      "the samples only one of the two got right; p (Holm): adjusted over the task's checkpoints.",
                      "", markdown_table(gains.rename(columns={"p_holm": "p (Holm)"})), ""]
    if by_seed is not None and not by_seed.empty:
        seeds = by_seed.assign(mean=[f"{r.mean:.3f} [{r.t_low:.3f}, {r.t_high:.3f}]" for r in by_seed.itertuples()])
        lines += ["## Over seeds (mean, 95% t-interval)", "",
                  markdown_table(seeds[["group", "epoch", "task", "seeds", "mean", "per_seed"]]), ""]
    if chosen:
        lines += ["## Selected checkpoint per task", "",
                  markdown_table(_picks_table(chosen)), ""]
    unpaired = scores.attrs.get("unpaired") if not scores.empty else None
    if unpaired:
        lines += ["## Not paired", "", "These cells scored other samples (ids or inputs) than their base control, "
                  "so no gain over it is given:", ""] + [f"- {u}" for u in unpaired] + [""]
    if failures:
        lines += ["## Failed runs", ""] + [f"- `{n}`: {why}" for n, why in failures.items()] + [""]
    if unscored_cells:
        lines += ["## Eval cells without a score", ""] + [f"- `{n}`: {why}" for n, why in unscored_cells.items()] + [""]
    lines += ["Plots: `plots/accuracy_vs_epoch.png`, `plots/loss.png`, `plots/heatmap.png`.", ""]
    layout.summary(sweep_dir).write_text("\n".join(lines))


def _resumed(sweep_dir: Path, names: list[str]) -> list[str]:
    """``run`` after epoch_N (attempt K), for each run whose last attempt resumed an earlier one."""
    out = []
    for name in names:
        state = RunState.of(sweep_dir / name)
        if state is not None and state.resumed_from:
            out.append(f"`{name}` after {state.resumed_from} (attempt {state.attempts})")
    return out


def _ci(r) -> str:
    if r.ci_low is None or r.ci_low != r.ci_low:
        return f"{r.score:.3f}"
    return f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def _gain(r) -> str:
    if r.gain is None or r.gain != r.gain:
        return "—"
    return f"{r.gain:+.3f} [{r.gain_low:+.3f}, {r.gain_high:+.3f}]"


def finding(p: Pick) -> str:
    """One sentence of results: the selected checkpoint, its score with CI, its paired gain."""
    r = p.row
    how = (f"selected on {p.by} (validation)" if p.on_validation else
           "selected on the test scores themselves (no validation task: the pick is optimistic)")
    text = f"**{p.task}**: `{p.run}` at {p.checkpoint}, {how}, scores {_ci(r)} on {int(r.n) if r.n == r.n and r.n else '?'} samples"
    if r.gain is not None and r.gain == r.gain:
        text += (f"; {_gain(r)} over the base model on the same samples (McNemar {p_clause(r.p)}"
                 + (f", Holm-adjusted {p_clause(r.p_holm)}" if r.p_holm is not None else "") + ")")
    return text + "."


def _picks_table(chosen: list[Pick]):
    import pandas as pd

    return pd.DataFrame([{"task": p.task, "run": p.run, "checkpoint": p.checkpoint,
                          "picked on": p.by + ("" if p.on_validation else " (test: no validation task)"),
                          "score (95% CI)": _ci(p.row), "gain over base": _gain(p.row), "p": p_value(p.row.p)}
                         for p in chosen])
