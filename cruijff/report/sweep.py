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
import re
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from ..config import changes_finetune
from ..records import (HalvingRecord, PlannedRunRecord, RunState, current_cell, expected_cells, layout, log_path,
                       read_jsonl, sweep_runs, unscored)
from .format import markdown_table, p_clause, p_value
from .analysis import (SEED_KEY, Finding, Scored, findings, over_seeds, seed_groups, selected_checkpoints,
                       sweep_task_specs, validation_of, with_statistics)
from .stats import ALPHA, cluster_labels, sample_order
from .plots import plot_accuracy, plot_confusion, plot_heatmap, plot_losses
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
        if state is None or not (state.finished or state.stopped):  # stopped at a rung: its cells count
            failures[r.name] = (state.error or state.status.value) if state else "did not start"
            continue
        params = _hyperparameters(r.overrides)
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
                model = model or _model_of_base(base_name)
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


def _hyperparameters(overrides: list[str]) -> dict[str, str]:
    """A run's overrides that change what it fine-tunes (key -> value as written): the summary's
    hyperparameter columns. How and where it was launched and evaluated (``eval.*``, ``hydra.*``,
    ``cluster``, ``detach``, ``experiment.name``, ...) is left out, by the rule run names follow."""
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if changes_finetune(o))


def _model_of(run_dir: Path) -> str | None:
    """The model a run fine-tuned: ``model.name`` of its saved (resolved) config, read as plain
    YAML — a text that looks like an interpolation elsewhere in it is not resolved, and a
    config that OmegaConf would refuse still gives its model."""
    import yaml

    try:
        data = yaml.safe_load(layout.saved_config(run_dir).read_text())
        name = data["model"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return str(name) if name else None


def _model_of_base(dir_name: str) -> str:
    """The model a base control evaluates, from its dir's name (``<model>[+<template>]-<key>``)."""
    name = re.sub(r"-[0-9a-f]{10}$", "", dir_name)
    return name.split("+", 1)[0]


def _report_inputs(sweep_dir: Path, plan: list[PlannedRunRecord]) -> str:
    """Fingerprint of everything the report reads (run states, cell summaries, the run list)."""
    paths = ([layout.run_file(sweep_dir / r.name) for r in plan] + [layout.eval_plan_file(sweep_dir / r.name) for r in plan]
             + layout.cell_files(sweep_dir) + [layout.halving_file(sweep_dir)])
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
    specs = sweep_task_specs(sweep_dir)
    samples = SampleScores(sweep_dir)
    scored = with_statistics(scores, samples, {s.label: s.cluster for s in specs if s.cluster})
    samples.save()
    scores = scored.df
    values: dict[str, set[str]] = {}
    for r in plan:
        for k, v in _hyperparameters(r.overrides).items():
            values.setdefault(k, set()).add(v)
    axes = [k for k, v in values.items() if len(v) > 1 and not SEED_KEY.match(k + "=")]  # the swept keys
    groups = seed_groups(plan)
    seeds = {r.name: o.split("=", 1)[1] for r in plan for o in r.overrides if SEED_KEY.match(o)}
    by_seed = over_seeds(scores, groups, seeds) if not scores.empty else None
    validation = validation_of(specs)
    chosen = findings(scored, validation, groups, skip={s.label for s in specs if s.args.get("split") == "validation"})
    scores.drop(columns=["log", "samples_key", "setting"], errors="ignore").to_csv(layout.summary(sweep_dir, "csv"), index=False)
    if by_seed is not None and not by_seed.empty:
        by_seed.to_csv(layout.summary(sweep_dir, "seeds.csv"), index=False)
    if chosen:
        _findings_table(chosen).to_csv(layout.summary(sweep_dir, "findings.csv"), index=False)
    finished = [r.name for r in plan if r.name not in failures]
    notes = {"resumed": _resumed(sweep_dir, [r.name for r in plan]), "retried": _retried(sweep_dir, [r.name for r in plan]),
             "unscored": unscored(sweep_dir, finished), "halving": _halving(sweep_dir, plan),
             "mixed": _mixed(scores), "no_cluster": [(t, scored.clusters[t]) for t in scored.no_cluster]}
    plots = layout.plots_dir(sweep_dir)
    plots.mkdir(exist_ok=True)
    notes["details"] = [_details(scored, f, plots) for f in chosen]
    _write_markdown(sweep_dir, scored, failures, len(plan) or None, by_seed, chosen, notes)
    if not scores.empty:
        plot_accuracy(scores, plots, groups)
        heat_task = sorted(set(scores["task"]) - set(validation.values()) or set(scores["task"]))[0]
        plot_heatmap(scores, axes, plots, task=heat_task,
                     selected=selected_checkpoints(scores, validation, heat_task) if validation.get(heat_task) else None)
    if not losses.empty:
        plot_losses(losses, plots)
    layout.report_key(sweep_dir).write_text(key + "\n")
    return scores


def _write_markdown(sweep_dir: Path, scored: Scored, failures: dict[str, str], planned,
                    by_seed: "pd.DataFrame | None", chosen: list[Finding], notes: dict | None = None) -> None:
    """``notes``: ``resumed`` runs, ``retried`` runs (with other resources), ``unscored`` eval cells
    (where -> why), ``mixed`` settings per task, ``no_cluster`` tasks whose cluster field no sample has."""
    notes = notes or {}
    scores = scored.df
    resumed, unscored_cells, mixed = notes.get("resumed"), notes.get("unscored"), notes.get("mixed")
    lines = [f"# {sweep_dir.name}", ""]
    runs = sorted(set(scores["run"]) - {"base"}) if not scores.empty else []
    total = planned or len(runs) + len(failures)
    halving = notes.get("halving") or {}
    if chosen:
        lines += ["## Findings", ""] + [f"- {finding(f)}" for f in chosen] + [""]
        if halving:
            lines += [f"Early stopping was used ({halving['how']}): the losing runs stopped at a rung, with fewer "
                      "checkpoints; each pick is made among every evaluated checkpoint.", ""]
    stopped = len(halving.get("stopped", []))
    lines.append(f"{total - len(failures) - stopped}/{total} runs finished" +
                 (f", {stopped} stopped early" if stopped else "") +
                 (f", {len(failures)} failed" if failures else "") +
                 (f"; {len(unscored_cells)} eval cell{'s' if len(unscored_cells) > 1 else ''} without a score"
                  if unscored_cells else "") + ".")
    lines.append("")
    if mixed:
        lines += ["**Not comparable across runs:** " + " ".join(mixed) + ". Evaluate them again under one eval "
                  "section: `python -m cruijff eval <sweep dir>`.", ""]
    for task, key in notes.get("no_cluster") or []:
        lines += [f"**{task}** names the cluster field `{key}`, which none of its samples' metadata has: its samples "
                  "are taken as independent.", ""]
    if halving:
        lines += ["## Early stopping", "", f"{halving['how'][0].upper()}{halving['how'][1:]}: at each rung only the "
                  "best runs by the validation score went on; the rest stopped there (their checkpoints are evaluated "
                  "like any other).", ""] + [f"- {r}" for r in halving["rungs"]] + ["", halving["epochs"], ""]
    if resumed:
        lines += ["Resumed after an interruption, from their last complete epoch: " + ", ".join(resumed) + ".", ""]
    if notes.get("retried"):
        lines += ["Retried with other resources (cuda_oom: out of GPU memory, retried from the last complete epoch "
                  "with a smaller micro-batch, the same effective batch):", ""] + [f"- {r}" for r in notes["retried"]] + [""]
    if not scores.empty:
        shown = scores.assign(score=[_ci(r) for r in scores.itertuples()],
                              gain=[_gain(r) for r in scores.itertuples()])
        table = shown.pivot_table(index=["run", "checkpoint"], columns="task", values="score", sort=False,
                                  aggfunc="first")
        lines += ["## Scores (run x checkpoint x task), 95% CI", "", markdown_table(table.reset_index()), "",
                  _sizes(scores), ""]
        gains = shown[shown["run"] != "base"][["task", "run", "checkpoint", "gain", "test", "p", "p_holm", "role"]]
        gains = gains.assign(p=[p_value(v) for v in gains["p"]], p_holm=[p_value(v) for v in gains["p_holm"]])
        if not gains.empty and (gains["gain"] != "—").any():
            lines += ["## Paired gain over the base model (same samples)", "",
                      "Gain: mean score difference (fine-tuned - base) with its 95% CI; test: the paired test "
                      "(README, Statistics). p (Holm): a declared comparison (a Finding) is "
                      "adjusted across the tasks' declared comparisons; every other checkpoint is exploratory, "
                      "adjusted over the other checkpoints of its task.", "",
                      markdown_table(gains.rename(columns={"p_holm": "p (Holm)"})), ""]
    if by_seed is not None and not by_seed.empty:
        seeds = by_seed.assign(mean=[f"{r.mean:.3f} [{r.t_low:.3f}, {r.t_high:.3f}]" if r.t_high > r.t_low
                                     else f"{r.mean:.3f}" for r in by_seed.itertuples()])
        lines += ["## Over seeds (mean, 95% t-interval)", "",
                  "The t-interval holds the seeds' spread only: they answered the same test samples. A Finding's "
                  "interval holds the samples' spread too.", "",
                  markdown_table(seeds[["group", "epoch", "task", "seeds", "mean", "per_seed"]]), ""]
    if chosen:
        lines += ["## Selected checkpoint per task", "",
                  markdown_table(_picks_table(chosen)), ""]
    for detail in notes.get("details") or []:
        lines += detail
    if scored.without:
        lines += ["## Scores without statistics, or with answers left out", ""] + [f"- {k}: {why}" for k, why in scored.without.items()] + [""]
    if scored.unpaired:
        lines += ["## Not paired", "", "These cells scored other samples (ids or inputs) than their base control, "
                  "so no gain over it is given:", ""] + [f"- {u}" for u in scored.unpaired] + [""]
    if failures:
        lines += ["## Failed runs", ""] + [f"- `{n}`: {why}" for n, why in failures.items()] + [""]
    if unscored_cells:
        lines += ["## Eval cells without a score", ""] + [f"- `{n}`: {why}" for n, why in unscored_cells.items()] + [""]
    lines += ["Plots: `plots/accuracy_vs_epoch.png`, `plots/loss.png`, `plots/heatmap.png` (each run at its "
              "selected checkpoint, where the task has a validation counterpart).", ""]
    layout.summary(sweep_dir).write_text("\n".join(lines))


def _details(scored: Scored, f: Finding, plots: Path) -> list[str]:
    """What a reader needs to judge a declared comparison: the exact prompt of one sample, a few
    answers the fine-tuned checkpoint got right and the base did not (and ones both got wrong), and
    for a classification task per-class precision, recall and F1 with a confusion matrix."""
    from .classes import class_report, is_classification, markdown
    from .examples import example_outputs, markdown_examples, prompt_of

    if not f.rows:
        return []
    i = f.rows[0]
    log = scored.df.at[i, "log"]
    mine = scored.samples[i]
    lines = [f"## {f.task}: `{f.runs[0]}` at {f.checkpoint}", ""]
    prompt = prompt_of(log) if log else None
    if prompt:
        lines += ["One sample's messages, as inspect sent them to the model (its chat template lays them out):", "",
                  "```", prompt.strip(), "```", ""]
    b = scored.base_row(i)
    if b is not None and f.gain is not None:
        base = scored.samples[b]
        common = sample_order(set(base.scores) & set(mine.scores))
        right_only = [k for k in common if mine.scores[k] == 1 and base.scores[k] == 0]
        wrong_both = [k for k in common if mine.scores[k] < 1 and base.scores[k] < 1]
        rows = example_outputs(scored.df.at[b, "log"], log, right_only, wrong_both)
        if rows:
            lines += ["Example answers (base, then fine-tuned):", "", markdown_examples(rows), ""]
    ids = sample_order(mine.targets)
    targets = [mine.targets[k] for k in ids]
    if is_classification(targets):
        groups = scored.cluster_ids(i)
        report = class_report(targets, [mine.answers.get(k) for k in ids],
                              cluster_labels(groups, ids))
        name = f"confusion_{_file_safe(f.task)}.png"
        plot_confusion(report, f.task, plots / name)
        lines += ["Per class (selected checkpoint):", "", markdown(report), "", f"Confusion matrix: `plots/{name}`.", ""]
    return lines


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _sizes(scores: "pd.DataFrame") -> str:
    """One line: each task's samples per cell (of its dataset's size where eval.limit took a part,
    in how many clusters where its samples have them)."""
    parts = []
    for task, g in scores.groupby("task", sort=True):
        row = g.iloc[0]
        parts.append(f"{task} {_n_text(row.n, row.of, row.clusters)}")
    return "Samples per cell: " + "; ".join(parts) + "."


def _n_text(n, of, clusters, key: str | None = None) -> str:
    if n is None or n != n:
        return "? samples"
    text = f"{int(n)}" + (f" of {int(of)}" if of is not None and of == of and int(of) > int(n) else "") + " samples"
    if clusters is not None and clusters == clusters:
        text += f" in {int(clusters)} cluster{'s' if int(clusters) != 1 else ''}" + (f" ({key})" if key else "")
    return text


def _halving(sweep_dir: Path, plan: list[PlannedRunRecord]) -> dict:
    """A halving sweep's decisions for the report: how (metric, eta), a line per rung, the runs
    stopped, and the epochs trained of the full grid's; empty for a sweep without early stopping."""
    record = HalvingRecord.of(sweep_dir)
    if record is None or not record.rungs:
        return {}
    names = [r.name for r in plan]
    states = {n: RunState.of(sweep_dir / n) for n in names}
    stopped = [n for n, st in states.items() if st is not None and st.stopped]
    kept = [len(layout.checkpoints(sweep_dir / n)) for n in names]
    if not stopped and any(k > record.budgets.get(n, record.epochs) for n, k in zip(names, kept)):
        return {}  # a later launch without early stopping trained its runs on
    total = sum(kept)
    full = record.epochs * len(names)
    trained = dict(zip(names, kept))
    rungs = []
    for r in record.rungs:
        there = [n for n in r.stopped if trained.get(n, 0) <= r.epochs]  # an earlier launch may have trained one on
        on = [n for n in r.stopped if n not in there]
        rungs.append(r.line(record.metric) + (f"; stopped: {', '.join(f'`{n}`' for n in there)}" if there else "")
                     + (f"; trained on by an earlier launch: {', '.join(f'`{n}`' for n in on)}" if on else ""))
    return {"how": f"successive halving on {record.metric}, eta {record.eta}", "rungs": rungs, "stopped": stopped,
            "epochs": f"Epochs trained: {total} of the full grid's {full} ({total / full:.0%})." if full else ""}


def _resumed(sweep_dir: Path, names: list[str]) -> list[str]:
    """``run`` after epoch_N (attempt K), for each run whose last attempt resumed an earlier one."""
    out = []
    record = HalvingRecord.of(sweep_dir)
    for name in names:
        state = RunState.of(sweep_dir / name)
        if record is not None and state is not None and state.resumed_from and any(
                name in r.went_on + r.stopped and r.epochs == (layout.epoch_of(state.resumed_from) or 0) + 1
                for r in record.rungs):
            continue  # trained on after a rung of early stopping: not an interruption
        if state is not None and state.resumed_from:
            out.append(f"`{name}` after {state.resumed_from} (attempt {state.attempts})")
    return out


def _retried(sweep_dir: Path, names: list[str]) -> list[str]:
    """``run``: each of its retries with other resources (``cuda_oom at epoch 1 step 3: batch_size
    4 -> 2, ...``), of every kind, for each run that was retried."""
    out = []
    for name in names:
        state = RunState.of(sweep_dir / name)
        if state is not None and state.retries:
            out.append(f"`{name}`: " + "; ".join(r.describe() for r in state.retries))
    return out


def _ci(r) -> str:
    if r.ci_low is None or r.ci_low != r.ci_low:
        return f"{r.score:.3f}"
    return f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def _gain(r) -> str:
    if r.gain is None or r.gain != r.gain:
        return "—"
    if r.gain_low is None or r.gain_low != r.gain_low:
        return f"{r.gain:+.3f}"
    return f"{r.gain:+.3f} [{r.gain_low:+.3f}, {r.gain_high:+.3f}]"


def finding(f: Finding) -> str:
    """Sentences of results: the declared comparison of a test task — the picked config and
    checkpoint, its score with CI on how many samples, its paired gain over the base with the test
    and its adjustment, and the effect size, or what the comparison could have detected."""
    tie = (f"; tied with {f.tied} other{'s' if f.tied > 1 else ''}, the earliest epoch, then the first by name, taken"
           if f.tied else "")
    how = (f"selected on {f.by} (validation{tie})" if f.on_validation else
           f"selected on the test scores themselves (no validation task: the pick is optimistic{tie})")
    if not f.rows:
        return (f"**{f.task}**: `{f.config}` at {f.checkpoint} was {how}, but it has no score on {f.task}: no "
                "declared comparison for this task.")
    seeds = (f" ({len(f.runs)} of {f.seeds_planned} seeds, mean)" if len(f.runs) < f.seeds_planned else
             f" ({len(f.runs)} seeds, mean)" if len(f.runs) > 1 else "")
    method = [f.score_method] if f.score_method else []
    if f.seeds is not None and f.seeds.high > f.seeds.low:
        method.append(f"seeds' t-interval {f.seeds.text()}")
    text = (f"**{f.task}**: `{f.config}`{seeds} at {f.checkpoint}, {how}, scores {f.score.text()}"
            + (" (" + "; ".join(method) + ")" if method else "")
            + f" on {_n_text(f.n, f.of, f.clusters, f.cluster_key)}")
    if f.why:
        return text.replace(" on ? samples", "") + f"; no interval or test: {f.why}."
    if f.gain is None:
        return text + "; no gain over the base model (no base control on the same samples)."
    c = f.comparison
    both = "the same samples" if c is None or c.n == f.n else f"the {c.n} samples both answered"
    text += f"; {f.gain.text(sign=True)} over the base model on {both}"
    said = ["per seed: " + ", ".join(f"{g:+.3f}" for g in f.per_seed_gain)] if f.per_seed_gain else []
    if f.p is None or f.p != f.p:
        reason = ("one cluster cannot show how scores spread" if f.comparison is not None and f.comparison.clusters == 1
                  else "every sample's difference is the same")
        return text + (f" ({said[0]})" if said else "") + f"; no test ({reason})."
    said.append(f"{f.test}: {p_clause(f.p)}" + (f", Holm over {f.family} tasks {p_clause(f.p_holm)}" if f.family > 1 else ""))
    text += " (" + "; ".join(said) + ")"
    if f.significant:
        if c is not None and c.odds_ratio is not None and c.odds_ratio.value == c.odds_ratio.value:
            text += (f"; {c.b_only} samples right only after fine-tuning, {c.a_only} only before: discordant "
                     f"odds ratio {_ratio(c.odds_ratio)}")
        return text + "."
    level = f"α = {ALPHA / f.family:.3g}"
    over = f"{ALPHA:g} over {f.family} declared comparisons; " if f.family > 1 else ""
    if c is None:
        return text + "; not significant."
    if c.sd == 0:
        return text + "; not significant, and no sample scored differently: nothing to size what a test could detect by."
    if f.mde is None:
        return text + f"; not significant, with too few samples ({c.n}) to size what a test could detect."
    samples = f"with {c.n} samples" + (f" ({c.n_eff:.0f} effective)" if c.clusters else "")
    how_sized = ("McNemar's mid-p, its exact power" if c.test == "McNemar mid-p" and not f.per_seed_gain
                 else "a paired t-test's power")
    if f.mde == float("inf") or (c.unit and f.mde >= 1.0):  # more than a score in [0, 1] can gain
        return text + (f"; not significant: {samples}, no gain within the score's range would be detected with 80% "
                       f"power at {level} ({over}{how_sized}).")
    return text + (f"; not significant: {samples} and this spread of differences, a gain of {f.mde:.3f} would have "
                   f"been detected with 80% power at {level} ({over}{how_sized}).")


def _ratio(iv) -> str:
    def one(v: float) -> str:
        return "∞" if v == float("inf") else f"{v:.2f}"

    return f"{one(iv.value)} [{one(iv.low)}, {one(iv.high)}]"


def _findings_table(chosen: list[Finding]):
    """summary_findings.csv: one row per declared comparison, with what its Finding says."""
    import pandas as pd

    def num(v):
        return None if v is None or v != v else v

    return pd.DataFrame([{
        "task": f.task, "config": f.config, "runs": " ".join(f.runs), "seeds": len(f.runs), "checkpoint": f.checkpoint,
        "picked_on": f.by, "on_validation": f.on_validation, "tied": f.tied, "score": num(f.score.value),
        "ci_low": num(f.score.low), "ci_high": num(f.score.high), "n": f.n, "of": f.of, "clusters": f.clusters,
        "n_paired": f.comparison.n if f.comparison else None,
        "gain": num(f.gain.value) if f.gain else None, "gain_low": num(f.gain.low) if f.gain else None,
        "gain_high": num(f.gain.high) if f.gain else None, "test": f.test, "p": num(f.p), "p_holm": num(f.p_holm),
        "family": f.family, "significant": f.significant, "mde": num(f.mde)} for f in chosen])


def _picks_table(chosen: list[Finding]):
    import pandas as pd

    return pd.DataFrame([{"task": f.task, "config": f.config, "seeds": len(f.runs), "checkpoint": f.checkpoint,
                          "picked on": f.by + ("" if f.on_validation else " (test: no validation task)"),
                          "score (95% CI)": f.score.text(),
                          "gain over base": f.gain.text(sign=True) if f.gain else "—",
                          "p": p_value(f.p), "p (Holm, across tasks)": p_value(f.p_holm)}
                         for f in chosen])
