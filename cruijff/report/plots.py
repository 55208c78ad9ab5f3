"""The sweep's plots: score per epoch (with each base control), the loss curves, a heatmap over
two swept keys. Written as PNG with matplotlib's Agg backend (no display needed)."""

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


def accuracy_figure(scores: pd.DataFrame, groups: dict[str, list[str]] | None = None):
    """Score vs epoch, one panel per task: each run with its 95% interval as error bars, or a
    group of runs that differ only in seed as its mean with the seeds' spread as a band; each base
    model's control as a flat line."""
    plt = _plt()
    tasks = sorted(scores["task"].unique())
    fig, axs = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    grouped = {run: g for g, runs in (groups or {}).items() for run in runs}
    for ax, task in zip(axs[0], tasks):
        df = scores[scores["task"] == task]
        runs = df[df["run"] != "base"]
        for run, g in runs[~runs["run"].isin(grouped)].groupby("run"):
            g = g.sort_values("epoch")
            if "ci_low" in g and g["ci_low"].notna().all():
                err = [(g["score"] - g["ci_low"].astype(float)).clip(lower=0),
                       (g["ci_high"].astype(float) - g["score"]).clip(lower=0)]
                ax.errorbar(g["epoch"], g["score"], yerr=err, marker="o", capsize=3, label=run)
            else:
                ax.plot(g["epoch"], g["score"], marker="o", label=run)
        for group, names in (groups or {}).items():
            g = runs[runs["run"].isin(names)].groupby("epoch")["score"]
            mean, low, high = g.mean(), g.min(), g.max()
            if mean.empty:
                continue
            line, = ax.plot(mean.index, mean.values, marker="o", label=f"{group} (mean of {len(names)} seeds)")
            ax.fill_between(mean.index, low.values, high.values, color=line.get_color(), alpha=0.2)
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
        ax.set_ylabel("score (95% CI; band: spread over seeds)")
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


def plot_heatmap(scores: pd.DataFrame, axes: list[str], plots: Path) -> None:
    """Last-epoch score over the two swept axes (first task), when exactly two keys were swept."""
    if len(axes) != 2 or not set(axes) <= set(scores.columns):
        return
    plt = _plt()
    task = sorted(scores["task"].unique())[0]
    df = scores[(scores["run"] != "base") & (scores["task"] == task)]
    df = df.sort_values("epoch").groupby("run").tail(1).copy()
    import pandas as pd

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
