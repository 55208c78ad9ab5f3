"""The state files, typed and versioned: a run's ``run.json``, a sweep's ``sweep.json`` (an eval
cell's files: :mod:`.cells`). Each has one reader (``read``) and one writer (``write``).

A missing file reads as None (nothing happened yet). A file that cannot be parsed, or that says it
is of a version this cruijff does not know, is an error naming the file. Files written before
versioning (no ``version`` key) are version 1: the layout has not changed since.
"""

from __future__ import annotations

import copy
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
    STOPPED = "stopped"    # early stopping (early_stop=halving) ended it at a rung: not failed

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
class Retry:
    """One retry of a run's fine-tuning with other resources, in ``run.json``'s ``retries``:
    ``kind`` is ``cuda_oom`` (out of GPU memory: the micro-batch halved, gradient accumulation
    doubled, the effective batch kept), ``host_oom`` (SLURM ended the job OUT_OF_MEMORY: resubmitted
    with more memory) or ``time_limit`` (requeued after its time limit with a limit from its measured
    epoch time). ``at`` says where it struck (``epoch 0 step 3``, a job id); ``before``/``after``
    the resources changed (``{"batch_size": 4, "gradient_accumulation_steps": 1}``,
    ``{"mem_gb": 8}``, ``{"timeout_min": 30}``)."""

    kind: str
    at: str = ""
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    time: float | None = None       # unix time it was decided
    error: str | None = None        # the error's one line

    def describe(self) -> str:
        """One line: ``cuda_oom at epoch 0 step 3: batch_size 4 -> 2, gradient_accumulation_steps 1 -> 2``."""
        changed = ", ".join(f"{k} {self.before.get(k)} -> {v}" for k, v in self.after.items())
        return f"{self.kind}" + (f" at {self.at}" if self.at else "") + (f": {changed}" if changed else "")


@dataclass
class RunState(Record):
    """``run.json``: what happened to a run's fine-tuning."""

    status: RunStatus
    name: str = ""                  # the run dir's name
    config_hash: str | None = None
    attempts: int = 0               # fine-tuning attempts (each job that started it, requeues included)
    error: str | None = None        # one line: why it failed
    note: str | None = None         # one line: what else a finished run's record should say (its job's end)
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
    retries: list[Retry] = field(default_factory=list)  # with other resources (out of memory, time limit)
    stopped_at: int | None = None   # stopped: the epochs it trained, the rung it stopped at (early_stop=halving)
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "RunState":
        data["status"] = RunStatus(data["status"])
        data["epochs"] = [EpochLoss(**e) for e in data.get("epochs") or []]
        data["retries"] = [Retry(**r) for r in data.get("retries") or []]
        return cls(**data)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["status"] = self.status.value
        return d

    @property
    def finished(self) -> bool:
        return self.status is RunStatus.FINISHED

    @property
    def stopped(self) -> bool:
        """Stopped at a rung by early stopping: its checkpoints count like a finished run's."""
        return self.status is RunStatus.STOPPED

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
    code_snapshot: str | None = None                   # the launch's frozen code: .code/<hash> in the sweep dir
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

    def to_dict(self) -> dict:
        """As ``dataclasses.asdict``, the runs field by field (asdict copies every value one by one:
        0.25 s a save for 10,000 runs, 0.01 s so)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = ([{"name": r.name, "overrides": list(r.overrides), "config_hash": r.config_hash,
                             "state": r.state, "resources": dict(r.resources)} for r in value]
                           if f.name == "runs" else copy.deepcopy(value))
        return out

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.runs]


def sweep_runs(sweep_dir: Path) -> list[PlannedRunRecord]:
    """The runs of a sweep: its plan's, or (a dir without ``sweep.json``) every run dir found."""
    plan = SweepPlan.of(sweep_dir)
    if plan is not None and plan.runs:
        return plan.runs
    return [PlannedRunRecord(name, []) for name in layout.run_dirs(sweep_dir)]
