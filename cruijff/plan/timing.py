"""Time limits from measurement: how long a run's epochs took here, and the SLURM time limit the
rest of a run, or another run of the same model, method and data, needs.

An epoch is timed by the completion markers of one attempt (``epoch_N/.complete``, the last write
of each epoch's save, at or after the attempt's ``started`` in ``run.json``): an epoch's time is the
gap between two markers, training and saving included; the attempt's start-up (model load, data)
is its first marker's time after ``started``, less one epoch. Markers out of order, at one time, or
after the run's recorded end (a sweep dir copied without its times) measure nothing: the model's
hint is used instead. A run of another size is scaled by its training examples: seconds per example
= epoch time / examples per epoch (optimizer steps x examples per step), times the run's own
examples per epoch, times its epochs. Finished runs measure runs of the same model, data, method,
processes, device, micro-batch, gradient accumulation, sequence length, activation checkpointing,
compile and dtype.

A limit is ``ceil((SLACK x seconds needed + the signal delay + START_S) / 60)`` minutes, at most the
cluster preset's ``cluster.timeout_min``: the job is told to requeue itself the signal delay before
its limit, and the job's own start (Python, imports, the config) is timed by no record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..cluster import signal_delay
from ..config import device_guess, input_identity, peft_method, processes
from ..errors import CruijffError
from ..records import RunState, layout, read_json, read_jsonl

MARK_SLACK_S = 60  # a completion marker may be this much later than the run's recorded end (clocks)
SLACK = 1.2     # on the measured time, as the model hint's limit has (config.compose.job_minutes)
START_S = 120   # seconds for the job's start before its run is timed


@dataclass(frozen=True)
class Timing:
    """One attempt's measured times."""

    startup_s: float   # from the attempt's start to its first epoch's training
    epoch_s: float     # per epoch, saving included
    epochs: int        # epochs timed


def attempt_timing(run_dir: Path, state: RunState | None, ckpts: list[Path] | None = None) -> Timing | None:
    """The times of the attempt ``state`` records (its ``started``), from its epochs' completion
    markers (``ckpts``: its complete checkpoints, when already listed); None when it completed no epoch."""
    if state is None or not state.started:
        return None
    marks = []
    for ckpt in layout.checkpoints(run_dir) if ckpts is None else ckpts:
        try:
            t = layout.complete_marker(ckpt).stat().st_mtime
        except OSError:
            continue
        if t >= state.started:
            marks.append(t)
    marks.sort()
    if not marks or not plausible(marks, state):
        return None
    if len(marks) == 1:
        return Timing(0.0, marks[0] - state.started, 1)
    epoch_s = (marks[-1] - marks[0]) / (len(marks) - 1)
    return Timing(max(0.0, marks[0] - state.started - epoch_s), epoch_s, len(marks))


def plausible(marks: list[float], state: RunState) -> bool:
    """Whether completion markers' times (sorted, none before the attempt's ``started``) can be an
    attempt's epochs: each after the one before, and none after the attempt's recorded end (an
    attempt still running, or an earlier attempt's end, says nothing). A copied sweep dir (``cp -r``)
    has its markers all at the time of the copy."""
    started = float(state.started or 0)
    if any(b - a <= 0 for a, b in zip(marks, marks[1:])) or marks[0] <= started:
        return False
    return state.ended is None or float(state.ended) < started or marks[-1] <= float(state.ended) + MARK_SLACK_S


def limit_minutes(need_s: float, signal_delay_s: float, cap: int) -> int:
    """The time limit (minutes) of a job that needs ``need_s`` seconds: see the module's docstring."""
    return max(1, min(int(cap), math.ceil((SLACK * need_s + float(signal_delay_s) + START_S) / 60)))


@dataclass
class Measured:
    """Finished runs of one model, method, data, processes and device, measured."""

    runs: int
    s_per_example: float
    startup_s: float

    def need_s(self, examples: int, epochs: int) -> float:
        """Seconds a run of ``epochs`` epochs of ``examples`` examples needs."""
        return self.startup_s + self.s_per_example * examples * epochs

    def describe(self, examples: int) -> str:
        return f"measured: {self.runs} run{'s' if self.runs != 1 else ''}, {self.s_per_example * examples:.0f} s/epoch"


def sweep_timings(sweep_dir: Path) -> dict[tuple, Measured]:
    """The finished runs of a sweep dir, measured, by (model, data, peft method, processes, device,
    then the values of :data:`SPEED_KEYS`); the model and data by their content, as the manifest
    records them."""
    found: dict[tuple, list[tuple[float, float]]] = {}
    for name in layout.run_dirs(sweep_dir):
        run_dir = sweep_dir / name
        try:
            state = RunState.of(run_dir)
            if state is None or not state.finished:
                continue
            ckpts = layout.checkpoints(run_dir)
            timing = attempt_timing(run_dir, state, ckpts)
            key, examples = _finished_key(run_dir, state, ckpts)
        except (CruijffError, OSError, ValueError, TypeError, AttributeError):
            continue  # an unreadable or older record measures nothing
        if timing is not None and key is not None and examples:
            found.setdefault(key, []).append((timing.epoch_s / examples, timing.startup_s))
    return {k: Measured(len(v), sum(s for s, _ in v) / len(v), sum(u for _, u in v) / len(v))
            for k, v in found.items()}


# what of a run's config changes its speed: (section, key) of the saved config
SPEED_KEYS = (("training", "batch_size"), ("training", "gradient_accumulation_steps"), ("tokenizer", "max_seq_len"),
              ("training", "enable_activation_checkpointing"), ("training", "compile"), ("training", "dtype"))


def _finished_key(run_dir: Path, state: RunState, ckpts: list[Path]) -> tuple[tuple | None, int]:
    """A finished run's key (see :func:`sweep_timings`) and its examples per epoch (its last
    epoch's optimizer steps x examples per step). Its method is its checkpoints' kind (``full``:
    ``peft.method=none``); its saved config is searched, not parsed (a YAML parse per run was most
    of the time of a 1000-run sweep's relaunch)."""
    inputs = (read_json(run_dir / layout.MANIFEST_FILE) or {}).get("inputs") or {}
    if not inputs or not ckpts or not state.epochs or not state.effective_batch:
        return None, 0
    method = "none" if (layout.completion(ckpts[-1]) or {}).get("kind") == "full" else "lora"
    sections = saved_sections(layout.saved_config(run_dir).read_text())
    speed = saved_speed(sections)
    if speed is None:
        return None, 0
    every = int(speed_value(sections, "training", "log_every_n_steps") or 1)
    steps = state.epochs[-1].steps if every == 1 else logged_epoch_steps(read_jsonl(layout.loss_file(run_dir)))
    key = (inputs.get("model"), inputs.get("data"), method, int(state.nproc or 1), str(state.device or ""), *speed)
    return key, int(steps or 0) * int(state.effective_batch)


def _section(text: str, name: str) -> str:
    """The lines of a top-level section of a saved config (``training``), or of ``model``'s
    ``tokenizer``, dedented to their keys."""
    if name == "tokenizer":
        model = _section(text, "model")
        m = re.search(r"^tokenizer:[ \t]*\n((?:[ \t].*\n?|\n)*)", model, re.M)
    else:
        m = re.search(rf"^{name}:[ \t]*\n((?:[ \t].*\n?|\n)*)", text, re.M)
    return re.sub(r"^  ", "", m.group(1), flags=re.M) if m else ""


def saved_sections(text: str) -> dict[str, str]:
    """The ``training`` and ``tokenizer`` sections of a saved config's text."""
    return {name: _section(text, name) for name in ("training", "tokenizer")}


def speed_value(sections: dict[str, str], section: str, key: str) -> str | None:
    """A key's value in a saved config's section, as written (None: not there)."""
    m = re.search(rf"^{key}:[ \t]*(\S[^\n]*?)[ \t]*$", sections[section], re.M)
    return m.group(1) if m else None


def _norm(value: Any) -> str:
    """A config value as the key compares it (``False`` and ``false``, ``None`` and ``null`` alike)."""
    text = str(value).strip().strip("'\"").lower()
    return "null" if text == "none" else text


def saved_speed(sections: dict[str, str]) -> tuple[str, ...] | None:
    """The values of :data:`SPEED_KEYS` in a saved config's sections; None where one is missing."""
    values = [speed_value(sections, section, key) for section, key in SPEED_KEYS]
    return None if None in values else tuple(_norm(v) for v in values)


def logged_epoch_steps(rows: list[dict]) -> int:
    """Optimizer steps per epoch of a run logging every n-th step, from ``loss.jsonl``'s rows
    (the run-wide step, and its epoch): the fewest steps per epoch that put each logged step in its
    epoch. Exact where the last epoch's last step is logged; else short by less than n / epochs."""
    return max((math.ceil(int(r["step"]) / (int(r["epoch"]) + 1)) for r in rows if "step" in r and "epoch" in r),
               default=0)


def planned_key(cfg: DictConfig, model_dir: Path, data_file: Path) -> tuple:
    """A planned run's key, to find finished runs like it (:func:`sweep_timings`)."""
    inputs = input_identity(cfg, model_dir, data_file)
    speed = tuple(_norm(OmegaConf.select(cfg, f"{'model.tokenizer' if s == 'tokenizer' else s}.{k}"))
                  for s, k in SPEED_KEYS)
    return (inputs["model"], inputs["data"], peft_method(cfg), processes(cfg), device_guess(cfg), *speed)


def apply_measured(run: Any, cfg: DictConfig, paths: tuple[Path, Path], timings: dict[tuple, Measured]) -> None:
    """A planned run's time limit and hours from the sweep's finished runs like it, where there
    are any: its SLURM time limit (at most ``cluster.timeout_min``) and, with an estimate, its hours
    and the limit's basis, which the plan table shows."""
    limit = (run.resources or {}).get("timeout_min")
    measured = timings.get(planned_key(cfg, *paths)) if timings else None
    if measured is not None:
        from .estimate import _dataset_of, _per_step, _samples_per_epoch

        n, _ = _dataset_of(cfg, paths[1])
        examples = _samples_per_epoch(cfg, n, _per_step(cfg, processes(cfg))) if n else 0
        if examples:
            need = measured.need_s(examples, int(cfg.training.epochs))
            if limit is not None:
                limit = limit_minutes(need, signal_delay(cfg.cluster, int(limit)), int(limit))
                run.resources = {**run.resources, "timeout_min": limit}
            if run.estimate is not None:
                run.estimate.hours, run.estimate.basis = need / 3600, "measured"
                if limit is not None:
                    run.estimate.limit = f"{limit} min ({measured.describe(examples)})"
                return
    if run.estimate is not None and limit is not None:
        run.estimate.limit = f"{limit} min (cluster.timeout_min)"
