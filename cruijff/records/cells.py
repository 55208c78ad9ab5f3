"""An eval cell's state files, typed and versioned: its ``results.json`` (``CellResults``) and a run's
``eval/cells.json`` (``EvalPlan``: the cells its checkpoints must have now, with their keys); and
the one rule for whether a cell counts (:func:`cell_standing`), which every reader goes through."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import layout
from .state import Record, RunState


# ----------------------------------------------------------------------------------------------
# an eval cell's results.json


@dataclass
class TaskResult:
    status: str                     # inspect's log status: success, error, cancelled, started
    log: str | None = None          # the inspect log holding the samples: a file name in the cell's dir
    task: str | None = None         # inspect's task name
    metric: str | None = None       # the metric reported as the score (:func:`headline_metric`)
    value: float | None = None
    samples: int | None = None
    error: str | None = None
    samples_key: str | None = None  # sha256 of the (id, input, target) of every sample scored: two
                                    # cells are paired only when theirs are equal


@dataclass
class CellResults(Record):
    """``results.json`` of an eval cell: one checkpoint evaluated on every task, on one model load.

    ``key`` is the cell's identity: a hash of everything that decides its scores (the checkpoint's
    content, each task's code, arguments and data, the generation and prompt settings; see
    :mod:`cruijff.evaluate.identity`), with what went into it in ``key_parts``. A cell whose key
    differs from the one its run expects now is stale: it is evaluated again, never reported."""

    model: str | None = None             # the checkpoint evaluated (relative to the sweep dir where inside it)
    tasks: dict[str, TaskResult] = field(default_factory=dict)  # by task label
    limit: int | None = None             # eval.limit the cell was evaluated with
    chat_template: str | None = None     # the Jinja that laid out its prompts (None: the model dir's)
    metadata: dict = field(default_factory=dict)
    key: str | None = None               # the cell's identity (None: written before cells had one)
    key_parts: dict = field(default_factory=dict)
    base_cell: str | None = None         # a run's cell: its base control's dir, relative to the sweep dir
    base_key: str | None = None          # ... and that control's key
    # what evaluating it read from disk: "weights" (a model load: [file, bytes] each; empty when the
    # job's loaded model served it), "adapters" (the same), "server" (a vLLM server started for it)
    loaded: dict = field(default_factory=dict)
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "CellResults":
        data["tasks"] = {k: TaskResult(**v) for k, v in (data.get("tasks") or {}).items()}
        return cls(**data)

    @classmethod
    def of(cls, log_dir: Path) -> "CellResults | None":
        return cls.read(layout.cell_file(log_dir))

    def save(self, log_dir: Path) -> None:
        self.write(layout.cell_file(log_dir))

    def scores(self) -> dict[str, float]:
        """Task label -> score, for the tasks that succeeded."""
        return {label: float(t.value) for label, t in self.tasks.items()
                if t.status == "success" and t.value is not None}

    def failures(self) -> dict[str, str]:
        """Task label -> why it has no score (inspect's status and error), for the tasks that failed."""
        return {label: t.error or t.status for label, t in self.tasks.items()
                if t.status != "success" or t.value is None}


def log_path(log_dir: Path, log: str | None) -> Path | None:
    """Where a cell's log is: a name is the cell dir's (so a moved sweep dir finds it); an absolute
    path (cells written before) is taken as it is where it exists, else looked for in the cell dir."""
    if not log:
        return None
    path = Path(log)
    if not path.is_absolute():
        return log_dir / path
    return path if path.exists() else log_dir / path.name


# ----------------------------------------------------------------------------------------------
# a run's eval/cells.json: the cells its checkpoints are expected to have now


@dataclass
class ExpectedCell:
    dir: str                        # the cell's dir, relative to the sweep dir
    key: str                        # the identity its results must have to count


@dataclass
class EvalPlan(Record):
    """``<run>/eval/cells.json``: the cells a run's checkpoints (and its base control) are expected
    to have under the eval settings last asked for, by checkpoint label (``base``, ``epoch_N``).
    Written before they are evaluated; ``status`` and the reports count a cell only when its
    ``results.json`` has the key recorded here (otherwise it is stale)."""

    cells: dict[str, ExpectedCell] = field(default_factory=dict)
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "EvalPlan":
        data["cells"] = {k: ExpectedCell(**v) for k, v in (data.get("cells") or {}).items()}
        return cls(**data)

    @classmethod
    def of(cls, run_dir: Path) -> "EvalPlan | None":
        return cls.read(layout.eval_plan_file(run_dir))

    def save(self, run_dir: Path) -> None:
        self.write(layout.eval_plan_file(run_dir))


class CellStanding(str, enum.Enum):
    """Where an eval cell stands against the key its run expects of it now."""

    COMPLETE = "complete"   # every task scored, under the expected key
    STALE = "stale"         # results of another key (a changed checkpoint, task, data or setting)
    FAILED = "failed"       # under the expected key, but a task has no score (or its log is gone)
    MISSING = "missing"     # not evaluated yet

    def __str__(self) -> str:
        return self.value


def cell_standing(log_dir: Path, key: str | None) -> CellStanding:
    """The one rule for whether a cell counts: its ``results.json`` has the expected ``key`` and
    every task of it scored, with its log on disk. ``key`` None (nothing expected on record: a dir
    made before cells had keys, or read without its run's ``eval/cells.json``): any key counts."""
    return _judge(CellResults.of(log_dir), log_dir, key)


def _judge(cell: CellResults | None, log_dir: Path, key: str | None) -> CellStanding:
    """:func:`cell_standing` of a cell's results as read from ``log_dir``."""
    if cell is None:
        return CellStanding.MISSING
    if key is not None and cell.key != key:
        return CellStanding.STALE
    if not cell.tasks or cell.failures():
        return CellStanding.FAILED
    for t in cell.tasks.values():
        path = log_path(log_dir, t.log)
        if path is None or not path.exists():
            return CellStanding.FAILED
    return CellStanding.COMPLETE


def expected_cells(run_dir: Path) -> dict[str, tuple[Path, str | None]]:
    """A run's cells as last planned (label -> (cell dir, expected key)): its ``eval/cells.json``;
    without one, a cell per checkpoint in ``run.json``, any key counting."""
    plan = EvalPlan.of(run_dir)
    if plan is not None:
        return {label: (run_dir.parent / c.dir, c.key) for label, c in plan.cells.items()}
    state = RunState.of(run_dir)
    return {c: (layout.eval_dir(run_dir, c), None) for c in (state.checkpoints if state else [])}


def unscored(sweep_dir: Path, runs: list[str]) -> dict[str, str]:
    """The cells of these runs (and their base controls, once each) that an eval was planned for
    (``eval/cells.json``) and that have no score for some task under the key expected now:
    ``run/checkpoint`` (or ``base/<dir>``) -> why."""
    out: dict[str, str] = {}
    for name in runs:
        plan = EvalPlan.of(sweep_dir / name)
        for label, expected in (plan.cells if plan else {}).items():
            log_dir = sweep_dir / expected.dir
            where = expected.dir if label == "base" else f"{name}/{label}"
            if where in out:
                continue
            cell = CellResults.of(log_dir)
            standing = _judge(cell, log_dir, expected.key)
            if standing is CellStanding.COMPLETE:
                continue
            out[where] = (("; ".join(f"{k}: {v}" for k, v in cell.failures().items()) or "its log is gone")
                          if cell is not None and standing is CellStanding.FAILED else f"not evaluated ({standing})")
    return out


def current_cell(log_dir: Path, key: str | None) -> "CellResults | None":
    """A cell's results when they count (:func:`cell_standing` complete or failed under its key);
    None when it is stale or missing."""
    cell = CellResults.of(log_dir)
    return cell if _judge(cell, log_dir, key) in (CellStanding.COMPLETE, CellStanding.FAILED) else None


def headline_metric(metrics: dict[str, Any]) -> str:
    """The metric a task's score is: ``accuracy`` when the scorer reports it, else its first one."""
    return "accuracy" if "accuracy" in metrics else next(iter(metrics))

