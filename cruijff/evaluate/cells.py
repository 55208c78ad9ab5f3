"""Eval cells: which checkpoints of a run are evaluated, where each cell's logs go, and when a
cell is complete (so a re-run skips it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import TaskSpec
from ..config.chat import base_cell_dir, eval_template
from ..records import CellResults, layout


@dataclass(frozen=True)
class Cell:
    """One checkpoint to evaluate on every task: ``base`` or ``epoch_N``."""

    label: str
    model_dir: Path   # the weights loaded: the base model's dir, or a checkpoint of full weights
    log_dir: Path     # its inspect logs and results.json
    adapter: Path | None = None  # an adapter checkpoint, applied to the base model's weights

    @property
    def checkpoint(self) -> Path:
        """The checkpoint this cell evaluates."""
        return self.adapter or self.model_dir

    @property
    def is_base(self) -> bool:
        return self.label == "base"


def cells(cfg: DictConfig, run_dir: Path, model_dir: Path) -> list[Cell]:
    """Every checkpoint of a run to evaluate: the base control first (when asked for), then the epochs."""
    out = []
    if cfg.eval.base_model:
        out.append(Cell("base", model_dir, base_cell_dir(cfg, run_dir.parent)))
    wanted = None if cfg.eval.epochs == "all" else set(cfg.eval.epochs)
    for ckpt in layout.checkpoints(run_dir):
        if wanted is None or layout.epoch_of(ckpt.name) in wanted:
            if layout.checkpoint_kind(ckpt) == "adapter":
                out.append(Cell(ckpt.name, model_dir, layout.eval_dir(run_dir, ckpt.name), adapter=ckpt))
            else:
                out.append(Cell(ckpt.name, ckpt, layout.eval_dir(run_dir, ckpt.name)))
    return out


_ANY: Any = object()


def cell_complete(log_dir: Path, tasks: list[TaskSpec], limit: Any = _ANY, chat_template: Any = _ANY) -> bool:
    """True when every task has a successful result and its log file is on disk, over the same
    ``eval.limit`` (a smoke test's 10-sample cell does not stand for a full one) and prompted with
    the same chat template, when these are given."""
    cell = CellResults.of(log_dir)
    if cell is None:
        return False
    if limit is not _ANY and cell.limit != limit:
        return False
    if chat_template is not _ANY and cell.chat_template != chat_template:
        return False
    for t in tasks:
        r = cell.tasks.get(t.label)
        if r is None or r.status != "success" or not r.log or not Path(r.log).exists():
            return False
    return True


def cell_done(cfg: DictConfig, log_dir: Path, specs: list[TaskSpec]) -> bool:
    """The cell has every task's result, over this config's sample limit and prompt layout."""
    return cell_complete(log_dir, specs, cfg.eval.limit, eval_template(cfg))
