"""``halving.json``: a successive-halving sweep's record (``early_stop=halving``), typed and
versioned — what each run may train now, and each rung's scores and decision. One writer (the
sweep's launcher, under the sweep lock); written atomically, so a job on another node reading it
never sees half a file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import layout
from .state import Record


@dataclass
class Rung:
    """One rung's decision: the score of every run that reached it (None: no score), which went on."""

    epochs: int                                  # the epochs trained at this rung
    scores: dict[str, float | None] = field(default_factory=dict)
    went_on: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    cut: float | None = None                     # the lowest score that went on
    time: float | None = None                    # unix time it was decided
    losses: dict[str, float | None] = field(default_factory=dict)  # the epoch's mean train loss: equal scores' order

    def line(self, metric: str) -> str:
        """``after epoch 1: 3 of 9 went on (val >= 0.600)``; where runs tied at the cut, it says so."""
        n = len(self.went_on) + len(self.stopped)
        if self.cut is None:
            return f"after epoch {self.epochs}: none of {n} has a score on {metric}"
        tied = [n for n, v in self.scores.items() if v == self.cut]
        kept = [n for n in tied if n in self.went_on]
        how = f"{metric} >= {self.cut:.3f}" + (
            "" if len(tied) < 2 else f"; {len(tied)} tied at the cut, {len(kept)} went on"
            + (" (lower train loss)" if len(kept) < len(tied) else ""))
        return f"after epoch {self.epochs}: {len(self.went_on)} of {n} went on ({how})"


@dataclass
class HalvingRecord(Record):
    """``<sweep>/halving.json``. ``budgets``: the epochs each run's job may train now (a rung, or
    every epoch); ``rungs``: the decisions so far, by rung."""

    metric: str
    eta: int
    epochs: int
    rung_epochs: list[int] = field(default_factory=list)
    budgets: dict[str, int] = field(default_factory=dict)
    rungs: list[Rung] = field(default_factory=list)
    version: int = 1

    @classmethod
    def _build(cls, data: dict) -> "HalvingRecord":
        data["rungs"] = [Rung(**r) for r in data.get("rungs") or []]
        return cls(**data)

    @classmethod
    def of(cls, sweep_dir: Path) -> "HalvingRecord | None":
        return cls.read(layout.halving_file(sweep_dir))

    def save(self, sweep_dir: Path) -> None:
        self.write(layout.halving_file(sweep_dir))


def budget(run_dir: Path) -> int | None:
    """The epochs the run in ``run_dir`` may train now, by its sweep's halving record (None: no
    limit: no record, or the run is not in it)."""
    record = HalvingRecord.of(run_dir.parent)
    return None if record is None else record.budgets.get(run_dir.name)
