"""Where a run stands, decided from disk: the one rule the planner, the fine-tune stage and the
dry run share.

A run is finished when every planned epoch has a complete checkpoint (its completion marker,
:func:`cruijff.records.layout.completion`), whatever ``run.json`` says: a job killed after its last
save but before it recorded "finished" is not trained again; its ``run.json`` is brought up to
date instead (:func:`record_finished`). ``run.json`` decides one thing only: whose config the run
dir holds (its config hash).
"""

from __future__ import annotations

import enum
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import layout
from .io import read_jsonl
from .state import EpochLoss, RunState, RunStatus


class RunStanding(str, enum.Enum):
    """Where a run dir stands for a config that plans ``epochs`` epochs."""

    NEW = "new"                    # no record of a run there
    FINISHED = "finished"          # every planned epoch has a complete checkpoint
    REDO = "redo"                  # started before, not every epoch complete: trained again (resuming where it can)
    OTHER_CONFIG = "other-config"  # the run there is of another config: replaced only with overwrite=true

    def __str__(self) -> str:
        return self.value


def complete_epochs(run_dir: Path) -> int:
    """How many epochs from ``epoch_0`` on, without a gap, have a complete checkpoint."""
    done = {layout.epoch_of(d.name) for d in layout.checkpoints(run_dir)}
    n = 0
    while n in done:
        n += 1
    return n


_UNREAD = object()


def run_standing(run_dir: Path, config_hash: str, epochs: int,
                 state: Any = _UNREAD) -> tuple[RunStanding, RunState | None]:
    """Where the run in ``run_dir`` stands for a config of hash ``config_hash`` planning ``epochs``
    epochs, with its ``run.json`` as found (None: none). ``state``: that record, when the caller
    has just read it."""
    if state is _UNREAD:
        state = RunState.of(run_dir)
    if state is None:
        return RunStanding.NEW, None
    if state.config_hash not in (None, config_hash):
        return RunStanding.OTHER_CONFIG, state
    if complete_epochs(run_dir) >= epochs:
        return RunStanding.FINISHED, state
    return RunStanding.REDO, state


def other_config(run_dir: Path, recorded: str | None, config_hash: str, changed: str | None = None) -> ConfigError:
    """The refusal to replace a run dir that holds a run of another config; ``changed``: what
    differs, in one line (else the two hashes are named)."""
    what = changed or f"hash {recorded} != {config_hash}"
    return ConfigError("overwrite", False,
                       f"{run_dir} holds a run of a different config ({what}); "
                       "pass overwrite=true to replace it, or change experiment.name")


def epoch_summary(rows: list[dict]) -> list[EpochLoss]:
    """Mean and final loss per epoch, from the per-step rows of ``logs/loss.jsonl``."""
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(r["epoch"], []).append(r["loss"])
    return [EpochLoss(epoch=e, mean_loss=sum(v) / len(v), final_loss=v[-1], steps=len(v))
            for e, v in sorted(out.items())]


def mark_stopped(run_dir: Path, state: RunState, note: str | None = None) -> None:
    """Record a run stopped at a rung by early stopping (``early_stop=halving``): status stopped, the
    epochs it trained (its complete checkpoints, from disk) and, when given, why (``note``). A record
    already saying so is left alone."""
    kept, names = complete_epochs(run_dir), [d.name for d in layout.checkpoints(run_dir)]
    note = state.note if note is None else note
    if (state.status, state.stopped_at, state.note, state.error, state.checkpoints) == (
            RunStatus.STOPPED, kept, note, None, names):
        return
    state.status, state.stopped_at, state.note, state.error, state.checkpoints = RunStatus.STOPPED, kept, note, None, names
    state.save(run_dir)


def record_finished(run_dir: Path, state: RunState | None = None) -> RunState | None:
    """Bring the ``run.json`` of a run found finished on disk up to date, if it is not: status
    finished, its checkpoints, the losses per epoch from ``logs/loss.jsonl``, and as its end the
    time its last checkpoint was marked complete. A record already saying so is left alone.
    ``state``: the record as just read (None: read it now)."""
    state = state or RunState.of(run_dir)
    if state is None:
        return None
    ckpts = layout.checkpoints(run_dir)
    names = [d.name for d in ckpts]
    if state.finished and state.checkpoints == names:
        return state
    state.status, state.error, state.checkpoints = RunStatus.FINISHED, None, names
    rows = [r for r in read_jsonl(layout.loss_file(run_dir)) if r.get("epoch", len(ckpts)) < len(ckpts)]
    if rows:
        state.epochs = epoch_summary(rows)
    state.ended = layout.complete_marker(ckpts[-1]).stat().st_mtime if ckpts else time.time()
    state.save(run_dir)
    return state
