"""The state files, typed and versioned: a run's ``run.json``, a sweep's ``sweep.json``, an eval
cell's ``results.json``. Each has one reader (``read``) and one writer (``write``).

A missing file reads as None (nothing happened yet). A file that cannot be parsed, or that says it
is of a version this cruijff does not know, is an error naming the file. Files written before
versioning (no ``version`` key) are version 1: the layout has not changed since.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import CruijffError
from . import layout
from .io import read_json, write_json

T = TypeVar("T", bound="Record")


class RunStatus(str, enum.Enum):
    """What ``run.json`` says of a run's fine-tuning."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class Record:
    """A JSON state file of a known version (a dataclass)."""

    VERSION: ClassVar[int] = 1

    @classmethod
    def from_dict(cls: type[T], data: Any, source: Path | str = "<memory>") -> T:
        if not isinstance(data, dict):
            raise CruijffError(f"{source}: not a {cls.__name__} record (a JSON object was expected)")
        version = data.get("version", 1)
        if version != cls.VERSION:
            raise CruijffError(f"{source}: version {version!r} of its format is not known to this cruijff "
                               f"(it reads version {cls.VERSION}); upgrade cruijff or re-create the file")
        names = {f.name for f in dataclasses.fields(cls)}  # keys of later minor additions are ignored
        try:
            return cls._build({k: v for k, v in data.items() if k in names})
        except (TypeError, ValueError, KeyError) as e:
            raise CruijffError(f"{source}: not a valid {cls.__name__} record ({e})") from None

    @classmethod
    def _build(cls: type[T], data: dict) -> T:
        return cls(**data)

    @classmethod
    def read(cls: type[T], path: Path) -> T | None:
        data = read_json(path)
        return None if data is None else cls.from_dict(data, path)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())


# ----------------------------------------------------------------------------------------------
# run.json


@dataclass
class EpochLoss:
    epoch: int
    mean_loss: float
    final_loss: float
    steps: int


@dataclass
class RunState(Record):
    """``run.json``: what happened to a run's fine-tuning."""

    status: RunStatus
    name: str = ""                  # the run dir's name
    config_hash: str | None = None
    attempts: int = 0               # fine-tuning attempts (each job that started it, requeues included)
    error: str | None = None        # one line: why it failed
    started: float | None = None    # unix time of the current attempt's start
    ended: float | None = None
    duration_s: float | None = None  # of the last attempt
    host: str | None = None
    pid: int | None = None
    pid_start: int | None = None    # the process's start time (/proc/<pid>/stat field 22): a reused pid is not it
    job_id: str | None = None       # SLURM job that wrote this record (``12_3`` for an array task)
    device: str | None = None
    dtype: str | None = None
    nproc: int | None = None        # training processes (GPUs) of the run
    effective_batch: int | None = None  # examples per optimizer step: batch x accumulation x processes
    resumed_from: str | None = None  # the checkpoint the last attempt resumed after
    checkpoints: list[str] = field(default_factory=list)
    epochs: list[EpochLoss] = field(default_factory=list)
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "RunState":
        data["status"] = RunStatus(data["status"])
        data["epochs"] = [EpochLoss(**e) for e in data.get("epochs") or []]
        return cls(**data)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d

    @property
    def finished(self) -> bool:
        return self.status is RunStatus.FINISHED

    @classmethod
    def of(cls, run_dir: Path) -> "RunState | None":
        state = cls.read(layout.run_file(run_dir))
        if state is not None and not state.name:
            state.name = run_dir.name
        return state

    def save(self, run_dir: Path) -> None:
        self.write(layout.run_file(run_dir))


def mark_failed(run_dir: Path, reason: str, job_id: str | None = None) -> None:
    """Record that a run failed, and why: its ``run.json`` may say running, be missing, or be
    unreadable (the record then starts anew). A finished run's record is left as it is."""
    try:
        state = RunState.of(run_dir)
    except CruijffError:
        state = None
    if state is not None and state.finished:
        return
    state = state or RunState(RunStatus.FAILED, name=run_dir.name)
    state.status, state.error, state.ended = RunStatus.FAILED, reason, time.time()
    if job_id:
        state.job_id = str(job_id)
    state.save(run_dir)


def run_state(run_dir: Path) -> RunState | None:
    """A run dir's ``run.json`` (None: no fine-tuning started there yet)."""
    return RunState.of(run_dir)


# ----------------------------------------------------------------------------------------------
# sweep.json


@dataclass
class PlannedRunRecord:
    name: str
    overrides: list[str]
    config_hash: str | None = None
    state: str | None = None        # the plan's word at the launch that wrote it (new, finished, redo, ...)
    resources: dict = field(default_factory=dict)  # its SLURM job's GPUs, CPUs, memory, time limit


@dataclass
class SweepPlan(Record):
    """``sweep.json``: a sweep's plan — its runs, the eval matrix, the jobs submitted for them."""

    experiment: str
    runs: list[PlannedRunRecord] = field(default_factory=list)
    sweeper: str | None = None
    launcher: str | None = None
    eval: dict = field(default_factory=dict)          # tasks, epochs, base_model of the launch
    eval_matrix: dict = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)  # run -> the latest job submitted for it
    command: dict | None = None                        # argv and cwd of the launch (``cruijff plan``)
    detached: dict | None = None                       # arrays and finish job of a detached launch
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "SweepPlan":
        data["runs"] = [PlannedRunRecord(**r) for r in data.get("runs") or []]
        return cls(**data)

    @classmethod
    def of(cls, sweep_dir: Path) -> "SweepPlan | None":
        return cls.read(layout.sweep_file(sweep_dir))

    def save(self, sweep_dir: Path) -> None:
        self.write(layout.sweep_file(sweep_dir))

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]


def sweep_runs(sweep_dir: Path) -> list[PlannedRunRecord]:
    """The runs of a sweep: its plan's, or (a dir without ``sweep.json``) every run dir found."""
    plan = SweepPlan.of(sweep_dir)
    if plan is not None and plan.runs:
        return plan.runs
    return [PlannedRunRecord(name, []) for name in layout.run_dirs(sweep_dir)]


# ----------------------------------------------------------------------------------------------
# an eval cell's results.json, and the one rule that reads a score from it


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
    cell = CellResults.of(log_dir)
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
            standing = cell_standing(log_dir, expected.key)
            if standing is CellStanding.COMPLETE:
                continue
            cell = CellResults.of(log_dir) if standing is CellStanding.FAILED else None
            out[where] = ("; ".join(f"{k}: {v}" for k, v in cell.failures().items()) or "its log is gone") if cell \
                else f"not evaluated ({standing})"
    return out


def current_cell(log_dir: Path, key: str | None) -> "CellResults | None":
    """A cell's results when they count (:func:`cell_standing` complete or failed under its key);
    None when it is stale or missing."""
    standing = cell_standing(log_dir, key)
    return CellResults.of(log_dir) if standing in (CellStanding.COMPLETE, CellStanding.FAILED) else None


def headline_metric(metrics: dict[str, Any]) -> str:
    """The metric a task's score is: ``accuracy`` when the scorer reports it, else its first one."""
    return "accuracy" if "accuracy" in metrics else next(iter(metrics))


def cell_scores(log_dir: Path) -> dict[str, float]:
    """The scores of one eval cell (task label -> score): what the run table, the sweep report,
    ``status`` and an optimizing sweeper's objective all read."""
    cell = CellResults.of(log_dir)
    return {} if cell is None else cell.scores()
