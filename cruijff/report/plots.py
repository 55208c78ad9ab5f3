"""The sweep's plots: score per epoch (with each base control), the loss curves, a heatmap over
two swept keys, a classification task's confusion matrix. Written as PNG with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


LEGEND_MAX = 12  # more lines than this and a legend hides the plot: the title says how many instead


def _legend(ax, title: str) -> None:
    n = len(ax.get_legend_handles_labels()[0])
    if n <= LEGEND_MAX:
        ax.set_title(title)
        ax.legend(fontsize=7)
    else:
        ax.set_title(f"{title} ({n} lines; summary.md names them)")


def plot_accuracy(scores: pd.DataFrame, plots: Path, groups: dict[str, list[str]] | None = None) -> None:
    fig = accuracy_figure(scores, groups)
    fig.savefig(plots / "accuracy_vs_epoch.png", dpi=110)
    _plt().close(fig)


MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*"]


def _marker(i: int) -> dict:
    """The i-th line's style: a marker shape of its own, hollow, each marker and line a little
    smaller than the one before, so lines that coincide stay visible (the later ones drawn inside
    the earlier)."""
    return {"marker": MARKERS[i % len(MARKERS)], "markersize": max(3.0, 9.0 - 0.75 * i), "fillstyle": "none",
            "markeredgewidth": 1.5, "linewidth": max(0.8, 2.4 - 0.3 * i)}


def accuracy_figure(scores: pd.DataFrame, groups: dict[str, list[str]] | None = None):
    """Score vs epoch, one panel per task: each run with its 95% interval as error bars, or a
    group of runs that differ only in seed as its mean with the seeds' spread as a band; each base
    model's control as a flat line. Each run or group keeps one marker shape in every panel."""
    plt = _plt()
    tasks = sorted(scores["task"].unique())
    fig, axs = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    grouped = {run: g for g, runs in (groups or {}).items() for run in runs}
    lines = sorted(set(scores["run"]) - {"base"} - set(grouped)) + list(groups or {})
    style = {name: _marker(i) for i, name in enumerate(lines)}
    for ax, task in zip(axs[0], tasks):
        df = scores[scores["task"] == task]
        runs = df[df["run"] != "base"]
        intervals = band = False
        for run, g in runs[~runs["run"].isin(grouped)].groupby("run"):
            g = g.sort_values("epoch")
            if "ci_low" in g and g["ci_low"].notna().all():
                err = [(g["score"] - g["ci_low"].astype(float)).clip(lower=0),
                       (g["ci_high"].astype(float) - g["score"]).clip(lower=0)]
                ax.errorbar(g["epoch"], g["score"], yerr=err, capsize=3, label=run, **style[run])
                intervals = True
            else:
                ax.plot(g["epoch"], g["score"], label=run, **style[run])
        for group, names in (groups or {}).items():
            g = runs[runs["run"].isin(names)].groupby("epoch")["score"]
            mean, low, high = g.mean(), g.min(), g.max()
            if mean.empty:
                continue
            line, = ax.plot(mean.index, mean.values, label=f"{group} (mean of {len(names)} seeds)", **style[group])
            ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2)
            band = True
        bases = df[df["run"] == "base"]
        styles = ["--", ":", "-.", (0, (5, 1))]
        key = "base" if "base" in bases else "model"
        groups_b = bases.groupby(key) if not bases.empty else []  # no control with eval.base_model=false
        by_model = bases.groupby("model")[key].nunique().max() == 1 if not bases.empty else True
        for i, (control, g) in enumerate(groups_b):  # one line per base control (model, layout, data)
            model = g["model"].iloc[0]
            label = ("base model" if bases[key].nunique() == 1 else
                     f"base: {model}" if by_model else f"base: {control}")
            ax.axhline(g["score"].iloc[0], color="gray", linestyle=styles[i % len(styles)], label=label)
        ax.set_xticks(sorted(int(e) for e in df["epoch"].unique() if e >= 0))
        ax.set_xlabel("epoch")
        notes = ["95% CI"] * intervals + ["band: spread over seeds"] * band
        ax.set_ylabel("score" + (f" ({'; '.join(notes)})" if notes else ""))
        ax.set_ylim(-0.05, 1.05)
        _legend(ax, task)
    fig.tight_layout()
    return fig


def plot_losses(losses: pd.DataFrame, plots: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for run, g in losses.groupby("run"):
        ax.plot(g["step"], g["loss"].rolling(10, min_periods=1).mean(), label=run)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (10-step mean)")
    ax.set_yscale("log")
    _legend(ax, "train loss")
    fig.tight_layout()
    fig.savefig(plots / "loss.png", dpi=110)
    plt.close(fig)


def heatmap_grid(scores: pd.DataFrame, axes: list[str], selected: dict[str, str] | None = None,
                 task: str | None = None) -> tuple[str, pd.DataFrame] | None:
    """(task, grid) of the heatmap: each run's score on ``task`` (the first task by name) over the
    two swept ``axes`` (rows: the first, columns: the second; runs that share a cell averaged),
    at its last epoch, or with ``selected`` (run -> checkpoint label) at the checkpoint selected
    for it (runs without one are left out). None unless exactly two keys were swept."""
    if len(axes) != 2 or not set(axes) <= set(scores.columns):
        return None
    import pandas as pd

    task = task if task is not None else sorted(scores["task"].unique())[0]
    df = scores[(scores["run"] != "base") & (scores["task"] == task)]
    if selected is None:
        df = df.sort_values("epoch").groupby("run").tail(1).copy()
    else:
        df = df[[selected.get(run) == ckpt for run, ckpt in zip(df["run"], df["checkpoint"])]].copy()
    if df.empty:
        return None
    for axis in axes:  # numbers in numeric order (1e-05 < 0.0001), not string order
        numeric = pd.to_numeric(df[axis], errors="coerce")
        if numeric.notna().all():
            df[axis] = numeric
    return task, df.pivot_table(index=axes[0], columns=axes[1], values="score")


def _tick(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def plot_heatmap(scores: pd.DataFrame, axes: list[str], plots: Path, selected: dict[str, str] | None = None,
                 task: str | None = None) -> pd.DataFrame | None:
    """``heatmap.png``: the score over the two swept axes (see ``heatmap_grid``), when exactly two
    keys were swept; returns the grid it shows."""
    made = heatmap_grid(scores, axes, selected, task)
    if made is None:
        return None
    task, grid = made
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(grid.values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(grid.columns)), [_tick(c) for c in grid.columns])
    ax.set_yticks(range(len(grid.index)), [_tick(i) for i in grid.index])
    ax.set_xlabel(axes[1])
    ax.set_ylabel(axes[0])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid.values[i, j]
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black")
    ax.set_title(f"{task}, {'last epoch' if selected is None else 'selected checkpoint'}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(plots / "heatmap.png", dpi=110)
    plt.close(fig)
    return grid


def plot_confusion(report, task: str, path: Path) -> None:
    """A classification task's confusion matrix (``classes.ClassReport``) as a PNG at ``path``:
    rows the target label, columns the answer (answers outside the label set as ``(other)``), each
    cell's count written in it and colored by its share of the row's samples."""
    import numpy as np

    plt = _plt()
    cm = report.confusion
    counts = cm.values
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = 0.5 * max(len(cm.columns), 4)
    fig, ax = plt.subplots(figsize=(size + 3.5, size + 1.5))
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(cm.columns)), [str(c) for c in cm.columns], rotation=45, ha="right")
    ax.set_yticks(range(len(cm.index)), [str(i) for i in cm.index])
    ax.set_xlabel("answer")
    ax.set_ylabel("target")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_title(f"{task}: confusion matrix (selected checkpoint)", fontsize=10)
    fig.colorbar(im, ax=ax, label="share of the target's samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
