"""Eval cells: which checkpoints of a run are evaluated, their identity (:mod:`.identity`), where
each cell's logs go, and whether a cell counts (``records.cell_standing``: its results have the key
expected now and every task scored)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from ..config import TaskSpec, data_keys, selected_epochs
from ..config.chat import base_cell_dir
from ..errors import CruijffError
from ..records import CellStanding, EvalPlan, ExpectedCell, cell_standing, layout
from .identity import cell_key, checkpoint_identity, settings_identity, task_identity


@dataclass(frozen=True)
class Cell:
    """One checkpoint to evaluate on every task: ``base`` or ``epoch_N``, with its key."""

    label: str
    model_dir: Path   # the weights loaded: the base model's dir, or a checkpoint of full weights
    log_dir: Path     # its inspect logs and results.json
    adapter: Path | None = None  # an adapter checkpoint, applied to the base model's weights
    key: str = ""
    parts: dict = field(default_factory=dict, compare=False)
    base: "Cell | None" = field(default=None, compare=False)  # a run's checkpoint: its base control

    @property
    def checkpoint(self) -> Path:
        """The checkpoint this cell evaluates."""
        return self.adapter or self.model_dir

    @property
    def is_base(self) -> bool:
        return self.label == "base"

    def standing(self) -> CellStanding:
        return cell_standing(self.log_dir, self.key)


def cells(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, specs: list[TaskSpec],
          memo: dict | None = None) -> list[Cell]:
    """Every checkpoint of a run to evaluate under this config, with its key: the base control
    first (when asked for), then the complete epochs asked for. ``memo``: tasks already built in
    this look at the sweep (:func:`.identity.task_identity`)."""
    settings = settings_identity(cfg)
    tasks = [task_identity(s, data_file, *data_keys(cfg), memo) for s in specs]
    key, parts = cell_key(checkpoint_identity(model_dir, None, False), tasks, settings)
    base = Cell("base", model_dir, base_cell_dir(cfg, run_dir.parent, key), key=key, parts=parts)
    out = [base] if cfg.eval.base_model else []
    link = base if cfg.eval.base_model else None  # the control a run's cells are compared with, if any
    wanted = selected_epochs(cfg.eval.epochs, None)  # None: every complete epoch
    for ckpt in layout.checkpoints(run_dir):
        if wanted is not None and layout.epoch_of(ckpt.name) not in wanted:
            continue
        adapter = layout.checkpoint_kind(ckpt) == "adapter"
        ident = checkpoint_identity(model_dir, ckpt, adapter)
        if ident is None:  # not complete
            continue
        key, parts = cell_key(ident, tasks, settings)
        log_dir = layout.eval_dir(run_dir, ckpt.name)
        out.append(Cell(ckpt.name, model_dir, log_dir, ckpt, key, parts, link) if adapter
                   else Cell(ckpt.name, ckpt, log_dir, None, key, parts, link))
    return out


def plan_cells(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, specs: list[TaskSpec],
               memo: dict | None = None) -> list[Cell]:
    """:func:`cells`, recorded as what the run's cells must be now (``eval/cells.json``), so that
    ``status`` and the reports count only cells of these keys; the record is rewritten only when
    it changes."""
    out = cells(cfg, run_dir, model_dir, data_file, specs, memo)
    sweep_dir = run_dir.parent
    plan = EvalPlan({c.label: ExpectedCell(layout.relative(c.log_dir, sweep_dir), c.key) for c in out})
    try:
        old = EvalPlan.of(run_dir)
    except CruijffError:  # an unreadable record is written anew
        old = None
    if old is None or old.to_dict() != plan.to_dict():
        plan.save(run_dir)
    return out
