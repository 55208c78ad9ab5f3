"""Successive halving by waves (``early_stop=halving``): a grid sweep that stops its losing runs early.

Every run trains up to the first rung (``early_stop.min_epochs`` epochs, or the first of
``early_stop.rungs``) and stops there, its epoch saved with torchtune's recipe state; its checkpoint
is evaluated (the epoch's cell: every eval task, so it counts later as any cell does); then only the
top ``ceil(n / eta)`` of the ``n`` runs by the validation metric go on to the next rung — one wave
of jobs (on SLURM: one array per resource group) — resuming from their epoch with the learning-rate
schedule of the full run. The last rung's winners train every epoch.

Waves, not asynchronous promotion (ASHA): no job waits on another, a decision sees every run that
reached its rung (on a small grid ASHA promotes whichever runs arrive first), and a re-run of the
same sweep decides the same from the same scores. The decisions are recorded in ``halving.json``
(:class:`cruijff.records.HalvingRecord`), the orchestration log, and each stopped run's
``run.json`` (state ``stopped``, its rung); a re-run recomputes them from the cells that count, so a
stale score is never the reason a run stopped.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from ..config import early_stop, task_specs
from ..config.early_stop import Halving
from ..errors import ConfigError, CruijffError
from ..cluster import active_slurm_jobs
from ..plan import PlannedRun
from ..records import (ActionLog, HalvingRecord, RunState, Rung, complete_epochs, current_cell, epoch_summary,
                       expected_cells, layout, mark_stopped, read_jsonl)
from ..ui import say
from .evals import eval_todo, evaluate_runs


def settings(config: DictConfig, job_config: Callable[[list[str]], DictConfig],
             runs: list[PlannedRun]) -> Halving | None:
    """The sweep's successive halving, checked before anything is written (None: early_stop=none).
    Its runs must train the same epochs: they are compared at the same rungs."""
    if early_stop.method(config) != "halving" or not runs:
        return None
    if config.get("detach", False):
        raise ConfigError("detach", True, "early_stop=halving decides between waves of jobs in the launch itself; "
                                          "use detach=false (a re-run of the launch goes on where it stopped)")
    epochs = {int(job_config(r.overrides).training.epochs) for r in runs}
    if len(epochs) > 1:
        raise ConfigError("early_stop", "halving", f"compares runs at the same epochs, and the grid's runs train "
                          f"{', '.join(map(str, sorted(epochs)))} (training.epochs): sweep one value of it")
    first = job_config(runs[0].overrides)
    return early_stop.halving(first, task_specs(first.eval.tasks))


def decide(scores: dict[str, float | None], eta: int,
           losses: dict[str, float | None] | None = None) -> tuple[list[str], list[str], float | None]:
    """(went on, stopped, the cut): the top ``ceil(n / eta)`` of the ``n`` runs with a score go on.
    Equal scores at the cut are told apart by the rung epoch's mean training loss (``losses``: the
    lower goes on; the training data, never the test set); runs equal in both all go on (which to
    drop would be a coin toss). A run without a score (None, or NaN: a metric of nothing) stops."""
    losses = losses or {}

    def loss(name: str) -> float:
        value = losses.get(name)
        return value if _scored(value) else math.inf

    ranked = sorted((n for n, v in scores.items() if _scored(v)), key=lambda n: (-scores[n], loss(n), n))
    if not ranked:
        return [], sorted(scores), None
    last = ranked[math.ceil(len(ranked) / eta) - 1]
    cut = (-scores[last], loss(last))
    went_on = [n for n in ranked if (-scores[n], loss(n)) <= cut]
    return went_on, sorted(n for n in scores if n not in went_on), scores[last]


def _scored(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def score_at(sweep_dir: Path, run: str, epochs: int, metric: str) -> float | None:
    """A run's score on ``metric`` at the checkpoint of its ``epochs``-th epoch, from its cell if it
    counts under the key expected now (None: no such score, or NaN)."""
    where = expected_cells(sweep_dir / run).get(f"epoch_{epochs - 1}")
    cell = current_cell(*where) if where else None
    value = cell.scores().get(metric) if cell else None
    return value if _scored(value) else None


class Waves:
    """The waves of one launch of a halving sweep: which runs train to which rung, the evals at a
    rung, the decisions; ``launch(overrides)`` submits runs and waits for them."""

    def __init__(self, config: DictConfig, sweep_dir: Path, halving: Halving, runs: list[PlannedRun],
                 launch: Callable[[list[list[str]]], Any]):
        self.config, self.sweep_dir, self.h, self.launch = config, sweep_dir, halving, launch
        self.runs = {r.name: r for r in runs}
        self.act = ActionLog(layout.action_log(sweep_dir))
        old = HalvingRecord.of(sweep_dir)
        self.record = HalvingRecord(halving.metric, halving.eta, halving.epochs, list(halving.rungs),
                                    dict(old.budgets) if old else {})

    def wait_for(self, active: list[str], jobs: dict[str, str]) -> None:
        """Runs an earlier launch's SLURM jobs still train: every rung decides on all the runs that
        reach it, so the waves wait for those jobs to end first."""
        if not active:
            return
        ids = [jobs[n] for n in active if n in jobs]
        self.act("Wait", f"{len(active)} runs still trained by jobs of an earlier launch", ", ".join(ids))
        say(f"cruijff: early stopping: waiting for {len(active)} run{'s' if len(active) > 1 else ''} still trained "
            f"by jobs of an earlier launch ({', '.join(ids)}): every rung decides on all the runs")
        while active_slurm_jobs(ids):
            time.sleep(10)

    def run(self) -> list:
        """Every wave, then the winners' last one; returns the launcher's results."""
        h, returns = self.h, []
        alive = list(self.runs)
        self.act("Early stopping", h.describe(), f"{len(alive)} runs")
        say(f"cruijff: early stopping: {h.describe()}"
            + ("" if h.rungs else f"; no rung below training.epochs={h.epochs}: every run trains all its epochs"))
        for rung in h.rungs:
            returns += self.wave(alive, rung)
            alive = self.rung(alive, rung)
            if not alive:
                break
        returns += self.wave(alive, h.epochs)
        return returns

    def wave(self, names: list[str], epochs: int) -> list:
        """Train these runs up to ``epochs`` (those that have not yet); waits for their jobs."""
        need = [n for n in names if complete_epochs(self.sweep_dir / n) < epochs]
        for n in names:  # a run of an earlier launch may have trained further: it keeps what it has
            self.record.budgets[n] = max(epochs, complete_epochs(self.sweep_dir / n))
        self.record.save(self.sweep_dir)  # before any job reads it
        if not need:
            return []
        upto = "every epoch" if epochs >= self.h.epochs else f"epoch {epochs}"
        self.act("Wave", f"{len(need)} runs train up to {upto}", ", ".join(need))
        say(f"cruijff: early stopping: {len(need)} run{'s train' if len(need) > 1 else ' trains'} up to {upto}")
        return [self.launch([list(self.runs[n].overrides) for n in need])]

    def rung(self, names: list[str], epochs: int) -> list[str]:
        """Evaluate the runs at this rung, decide, record; returns the runs that go on."""
        reached = [n for n in names if _reached(self.sweep_dir / n, epochs)]
        failed = sorted(set(names) - set(reached))
        if failed:
            self.act("Rung", f"after epoch {epochs}: {len(failed)} runs did not reach it (failed before its save)",
                     ", ".join(failed))
        todo = eval_todo(self.sweep_dir, reached, self.config.eval)
        if todo:
            evaluate_runs(self.config, self.sweep_dir, todo, self.act)
        scores = {n: score_at(self.sweep_dir, n, epochs, self.h.metric) for n in reached}
        if reached and all(v is None for v in scores.values()):
            raise CruijffError(f"early stopping: no run has a score on {self.h.metric} after epoch {epochs} (its eval "
                               f"failed: see the log, {layout.action_log(self.sweep_dir)}); fix it and launch again: "
                               f"the runs go on from their epoch")
        losses = {n: epoch_loss(self.sweep_dir / n, epochs - 1) for n in reached}
        went_on, stopped, cut = decide(scores, self.h.eta, losses)
        decision = Rung(epochs, scores, went_on, stopped, cut, time.time(), losses)
        self.record.rungs = [r for r in self.record.rungs if r.epochs != epochs] + [decision]
        self.record.rungs.sort(key=lambda r: r.epochs)
        for n in stopped:
            self.record.budgets[n] = max(epochs, complete_epochs(self.sweep_dir / n))
        self.record.save(self.sweep_dir)
        for n in stopped:
            stay_stopped(self.sweep_dir / n, stop_note(n, decision, self.h))
        line = decision.line(self.h.metric)
        self.act("Rung", line, "stopped: " + (", ".join(stopped) or "none") + "; went on: " + ", ".join(went_on))
        say(f"cruijff: early stopping: {line}" + (f"; stopped {', '.join(stopped)}" if stopped else ""))
        return went_on


def epoch_loss(run_dir: Path, epoch: int) -> float | None:
    """The mean training loss of a run's epoch, from its ``logs/loss.jsonl`` (None: not there)."""
    summary = {e.epoch: e for e in epoch_summary(read_jsonl(layout.loss_file(run_dir)))}
    return summary[epoch].mean_loss if epoch in summary else None


def _reached(run_dir: Path, epochs: int) -> bool:
    """Whether a run has a complete checkpoint of its ``epochs``-th epoch (whatever happened to it
    after: a run that went on and then failed is compared there, and trains on if it wins)."""
    try:
        state = RunState.of(run_dir)
    except CruijffError:
        return False
    return state is not None and complete_epochs(run_dir) >= epochs


def stop_note(name: str, rung: Rung, h: Halving) -> str:
    """Why a run stopped, in one line for its ``run.json`` and the status table."""
    score = rung.scores.get(name)
    n = len(rung.went_on) + len(rung.stopped)
    how = (f"{h.metric} {score:.3f} < {rung.cut:.3f}, {len(rung.went_on)} of {n} went on"
           if score is not None and rung.cut is not None else f"no score on {h.metric}")
    return f"halving: stopped at epoch {rung.epochs}/{h.epochs}: {how}"


def stay_stopped(run_dir: Path, note: str) -> None:
    """A run that stays at its rung: ``run.json`` says stopped, with the epochs it trained and why.
    A run that trained every epoch (in an earlier launch) stays finished."""
    state = RunState.of(run_dir)
    if state is not None and not state.finished:
        mark_stopped(run_dir, state, note)
