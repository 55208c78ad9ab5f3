"""A run's results table: one row per checkpoint (the base control first), a column per task and
the epoch's train loss. Printed, and written as ``results.csv`` and ``results.md``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..config import TaskSpec
from ..records import RunState, current_cell, expected_cells, layout
from ..ui import console, say
from .format import fmt, markdown_table

if TYPE_CHECKING:
    import pandas as pd


def results_table(cfg: DictConfig, run_dir: Path, specs: list[TaskSpec]) -> "pd.DataFrame":
    """Rows (checkpoint, task scores..., train loss) as a pandas DataFrame."""
    import pandas as pd

    state = RunState.of(run_dir)
    losses = {e.epoch: e for e in state.epochs} if state else {}
    expected = expected_cells(run_dir)  # the cells of the keys expected now: a stale one shows no score
    labels = ["base"] if cfg.eval.base_model and "base" in expected else []
    labels += [c for c in (state.checkpoints if state else []) if c in expected]
    rows = []
    for label in labels:
        cell = current_cell(*expected[label])
        scores = cell.scores() if cell else {}
        row: dict = {"checkpoint": label}
        for s in specs:
            row[s.label] = scores.get(s.label)
        epoch = layout.epoch_of(label)
        row["train_loss"] = losses[epoch].mean_loss if epoch in losses else None
        rows.append(row)
    return pd.DataFrame(rows)


def retry_lines(state: RunState | None) -> list[str]:
    """One line per retry of the run with other resources (``Retried: cuda_oom at epoch 1 step 3:
    batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2``), of every kind."""
    return [f"Retried: {r.describe()}" for r in (state.retries if state else [])]


def report_run(cfg: DictConfig, run_dir: Path, specs: list[TaskSpec]) -> None:
    """Print the run's table and write ``results.csv`` / ``results.md``."""
    from rich.table import Table

    df = results_table(cfg, run_dir, specs)
    state = RunState.of(run_dir)
    if df.empty:
        return
    status = state.status.value if state else "?"
    df.to_csv(layout.run_table(run_dir, "csv"), index=False)
    layout.run_table(run_dir, "md").write_text(
        f"# {cfg.experiment.name} / {run_dir.name}\n\nStatus: {status}"
        + (f" ({state.error})" if state and state.error else "")
        + "".join(f"\n\n{line}" for line in retry_lines(state))
        + "\n\n" + markdown_table(df) + "\n"
    )
    table = Table(title=f"{cfg.experiment.name} / {run_dir.name} — {status}")
    for c in df.columns:
        table.add_column(c, justify="left" if c == "checkpoint" else "right")
    for _, r in df.iterrows():
        table.add_row(*(fmt(v) for v in r.values))
    console().print(table)
    for line in retry_lines(state):
        say(f"cruijff: {run_dir.name}: {line}")
    try:
        shown = run_dir.resolve().relative_to(Path.cwd().resolve())
    except ValueError:  # not under the working dir
        shown = run_dir
    say(f"cruijff: run dir {shown}")
