"""Local jobs a killed launcher left behind: submitit's local jobs outlive their launcher, and go
on fine-tuning. A re-run finds them by their run's record (:mod:`cruijff.records.liveness`): a
job still at work is waited for, never started a second time; a run whose record says running
while its process is gone is recorded as dead, and redone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..plan import ACTIVE, FINISHED, PlannedRun
from ..records import ActionLog, liveness, record_finished
from ..ui import say
from .deaths import record_death
from .table import SweepView

POLL_S = 1.0


def wait_for_orphans(sweep_dir: Path, runs: list[PlannedRun], act: ActionLog) -> list[PlannedRun]:
    """Wait until every run that a job of an earlier launch still fine-tunes on this machine
    (planned ACTIVE, its process alive) has ended; returns those runs (to be planned again)."""
    orphans = [r for r in runs if r.state == ACTIVE and liveness.at_work(r.previous)]
    for r in orphans:
        assert r.previous is not None
        say(f"cruijff: {r.name}: still fine-tuned by {liveness.worker(r.previous)}, a job of an earlier launch; "
            "waiting for it to end")
        act("Wait for job", r.name, f"{liveness.worker(r.previous)}, left running by an earlier launch")
    if orphans:
        with SweepView(sweep_dir) as view:
            while any(liveness.at_work(r.previous) for r in orphans):
                view.refresh()
                time.sleep(POLL_S)
    return orphans


def record_dead(sweep_dir: Path, runs: list[PlannedRun], act: ActionLog) -> None:
    """Each run whose record says running on this machine, by a process that has ended: recorded
    as failed, with why, when this launch trains it again; brought up to date when every epoch
    of it was complete before its process ended (it is finished)."""
    for r in runs:
        if not liveness.gone(r.previous):
            continue
        assert r.previous is not None
        reason = liveness.death(r.previous)
        if r.state == FINISHED:
            record_finished(sweep_dir / r.name, r.previous)
            act("Job died", r.name, f"{reason}, after its last epoch was complete: recorded as finished")
            continue
        record_death(sweep_dir / r.name, reason)
        act("Job died", r.name, reason)
        print(f"cruijff: {r.name}: {reason}; trained again", file=sys.stderr)
