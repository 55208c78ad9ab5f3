"""Sweep report: one table across runs x checkpoints x tasks, and plots.

Reads only files: each run's ``run.json`` and ``logs/loss.jsonl``, and each cell's inspect logs
(through inspect's own log reader) — so it works on any sweep dir, during or after a sweep.

Writes ``summary.csv`` (one row per run x checkpoint x task, base included), ``summary.md`` (the same
pivoted, best run per task, failures) and ``plots/*.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .record import read_json


def _cell_scores(log_dir: Path) -> dict[str, float]:
    """Task -> score of one cell, read from its inspect logs (headers only)."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    scores: dict[str, float] = {}
    if not log_dir.is_dir():
        return scores
    for info in list_eval_logs(str(log_dir), recursive=False):
        log = read_eval_log(info, header_only=True)
        if log.status != "success" or not log.results or not log.results.scores:
            continue
        metrics = log.results.scores[0].metrics
        metric = "accuracy" if "accuracy" in metrics else next(iter(metrics))
        scores[log.eval.task] = metrics[metric].value  # newest log of a task wins (sorted by time)
    return scores


def collect(sweep_dir: Path, plan: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """(scores, losses, failures) of a sweep dir, for the runs of its plan (or every run dir)."""
    names = [r["name"] for r in plan] or sorted(p.parent.name for p in sweep_dir.glob("*/run.json"))
    overrides = {r["name"]: r["overrides"] for r in plan}
    rows, losses, failures = [], [], {}
    base_dirs = sorted(p for p in (sweep_dir / "base").glob("*") if p.is_dir())
    for base in base_dirs:
        for task, value in _cell_scores(base).items():
            rows.append({"run": "base", "model": base.name, "checkpoint": "base", "epoch": -1,
                         "task": task, "score": value})
    for name in names:
        run_dir = sweep_dir / name
        state = read_json(run_dir / "run.json")
        if state.get("status") != "finished":
            failures[name] = state.get("error") or state.get("status") or "did not start"
            continue
        params = dict(o.split("=", 1) for o in overrides.get(name, []) if "=" in o)
        epoch_loss = {e["epoch"]: e for e in state.get("epochs", [])}
        for ckpt in state.get("checkpoints", []):
            epoch = int(ckpt.split("_")[1])
            for task, value in _cell_scores(run_dir / "eval" / ckpt).items():
                rows.append({"run": name, **params, "checkpoint": ckpt, "epoch": epoch, "task": task,
                             "score": value, "mean_loss": epoch_loss.get(epoch, {}).get("mean_loss"),
                             "final_loss": epoch_loss.get(epoch, {}).get("final_loss")})
        loss_file = run_dir / "logs" / "loss.jsonl"
        if loss_file.exists():
            for line in loss_file.read_text().splitlines():
                losses.append({"run": name, **json.loads(line)})
    return pd.DataFrame(rows), pd.DataFrame(losses), failures


def _report_inputs(sweep_dir: Path, plan: list[dict]) -> str:
    """Fingerprint of everything the report reads (run states, cell summaries, the run list)."""
    import hashlib

    paths = [sweep_dir / r["name"] / "run.json" for r in plan]
    paths += sorted(sweep_dir.glob("*/eval/*/results.json")) + sorted(sweep_dir.glob("base/*/results.json"))
    parts = [",".join(r["name"] for r in plan)]
    for p in paths:
        try:
            parts.append(f"{p}:{p.stat().st_mtime_ns}")
        except FileNotFoundError:
            parts.append(f"{p}:-")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def report_is_current(sweep_dir: Path, plan: list[dict]) -> bool:
    key = sweep_dir / ".report-key"
    return (sweep_dir / "summary.md").exists() and key.exists() and key.read_text().strip() == _report_inputs(
        sweep_dir, plan)


def report_sweep(sweep_dir: Path, plan: list[dict] | None = None) -> pd.DataFrame:
    """summary.csv, summary.md and plots/ of a sweep; ``.report-key`` remembers their inputs, so
    a re-run whose runs and evals did not change leaves them alone (``report_is_current``)."""
    if plan is None:
        plan = read_json(sweep_dir / "sweep.json").get("runs", [])
    key = _report_inputs(sweep_dir, plan)
    scores, losses, failures = collect(sweep_dir, plan)
    values: dict[str, set[str]] = {}
    for r in plan:
        for o in r["overrides"]:
            if "=" in o:
                values.setdefault(o.split("=", 1)[0], set()).add(o.split("=", 1)[1])
    axes = [k for k, v in values.items() if len(v) > 1]  # the swept keys, in grid order
    scores.to_csv(sweep_dir / "summary.csv", index=False)
    _write_markdown(sweep_dir, scores, failures, len(plan) or None)
    plots = sweep_dir / "plots"
    plots.mkdir(exist_ok=True)
    if not scores.empty:
        _plot_accuracy(scores, plots)
        _plot_heatmap(scores, axes, plots)
    if not losses.empty:
        _plot_losses(losses, plots)
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


def fmt(v) -> str:
    """A table cell: floats to 3 decimals, missing values as a dash."""
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        out.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_accuracy(scores: pd.DataFrame, plots: Path) -> None:
    fig = accuracy_figure(scores)
    fig.savefig(plots / "accuracy_vs_epoch.png", dpi=110)
    _plt().close(fig)


def accuracy_figure(scores: pd.DataFrame):
    """Score vs epoch per run, one panel per task, each base model's control as a flat line."""
    plt = _plt()
    tasks = sorted(scores["task"].unique())
    fig, axs = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axs[0], tasks):
        df = scores[scores["task"] == task]
        for run, g in df[df["run"] != "base"].groupby("run"):
            g = g.sort_values("epoch")
            ax.plot(g["epoch"], g["score"], marker="o", label=run)
        bases = df[df["run"] == "base"]
        styles = ["--", ":", "-.", (0, (5, 1))]
        for i, (model, g) in enumerate(bases.groupby("model")):  # one line per base model (and layout)
            label = "base model" if bases["model"].nunique() == 1 else f"base: {model}"
            ax.axhline(g["score"].iloc[0], color="gray", linestyle=styles[i % len(styles)], label=label)
        ax.set_xticks(sorted(int(e) for e in df["epoch"].unique() if e >= 0))
        ax.set_title(task)
        ax.set_xlabel("epoch")
        ax.set_ylabel("score")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _plot_losses(losses: pd.DataFrame, plots: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, g in losses.groupby("run"):
        ax.plot(g["step"], g["loss"].rolling(10, min_periods=1).mean(), label=run)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (10-step mean)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=110)
    plt.close(fig)


def _plot_heatmap(scores: pd.DataFrame, axes: list[str], plots: Path) -> None:
    """Last-epoch score over the two swept axes (first task), when exactly two keys were swept."""
    if len(axes) != 2 or not set(axes) <= set(scores.columns):
        return
    plt = _plt()
    task = sorted(scores["task"].unique())[0]
    df = scores[(scores["run"] != "base") & (scores["task"] == task)]
    df = df.sort_values("epoch").groupby("run").tail(1).copy()
    for axis in axes:  # numbers in numeric order (1e-05 < 0.0001), not string order
        numeric = pd.to_numeric(df[axis], errors="coerce")
        if numeric.notna().all():
            df[axis] = numeric
    grid = df.pivot_table(index=axes[0], columns=axes[1], values="score")
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), [f"{c:g}" if isinstance(c, float) else str(c) for c in grid.columns])
    ax.set_yticks(range(len(grid.index)), [f"{i:g}" if isinstance(i, float) else str(i) for i in grid.index])
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.values[i, j]
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_title(f"{task}, last epoch")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(plots / "heatmap.png", dpi=110)
    plt.close(fig)
