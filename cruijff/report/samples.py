"""Per-sample scores of an eval cell, read from its inspect log through inspect's own API.

A sweep's report needs every sample's score of every cell (for intervals and paired tests);
reading 600 logs of 1000 samples each is the report's main cost, so what was read is kept in
``<sweep dir>/.sample-scores-v4.pkl`` by log path, size and mtime: a report on unchanged logs reads
no log again.
"""

from __future__ import annotations

import gc
import math
import os
import pickle
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

CACHE = ".sample-scores-v4.pkl"  # v3: targets, answers, scalar metadata and the dataset's size


@dataclass
class LogSamples:
    """What a report needs of one inspect log's samples, by sample id: the score (the mean over
    inspect epochs), the target, the first epoch's answer and the scalar metadata (a cluster field);
    and ``total``, the task's dataset size, which ``n`` is "of" where ``eval.limit`` took a part."""

    scores: dict[Any, float] = field(default_factory=dict)
    targets: dict[Any, str] = field(default_factory=dict)
    answers: dict[Any, str | None] = field(default_factory=dict)
    metadata: dict[Any, dict] = field(default_factory=dict)
    total: int | None = None
    unscored: int = 0            # samples without a score one can take a mean of (NaN, or none)
    problem: str | None = None   # why the log's per-sample scores cannot give statistics

    def clusters(self, key: str | None) -> dict[Any, Any] | None:
        """Sample id -> its value of the metadata field ``key`` (samples without one are their own
        cluster); None without a key, or where no sample has the field."""
        if not key:
            return None
        out = {i: m[key] for i, m in self.metadata.items() if key in m}
        return out or None


def _scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200)


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else ", ".join(map(str, v)) if isinstance(v, list) else str(v)


def read_sample_scores(log: str | Path) -> LogSamples:
    """One inspect log's samples (see :class:`LogSamples`); Python's cyclic garbage collector is
    paused while it is read: inspect builds some ten thousand objects per log, none of them in a
    cycle, and the collections they set off cost more than the read itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _read_samples(log)
    finally:
        if enabled:
            gc.enable()


def _read_samples(log: str | Path) -> LogSamples:
    """One inspect log's samples (see :class:`LogSamples`).

    Read from the log's sample summaries (what ``samples_df`` reads for its summary columns): they
    carry every sample's scores, target, answer and metadata without its messages and events — ten
    times faster than the samples.
    """
    from inspect_ai.log import read_eval_log, read_eval_log_sample_summaries
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    per_epoch: dict[Any, list[float]] = {}
    out = LogSamples()
    for sample in read_eval_log_sample_summaries(str(log)):
        if not sample.scores:
            out.unscored += 1
            continue
        score = next(iter(sample.scores.values()))
        if isinstance(score.value, (dict, list)):
            # several values per sample (a dict of metrics): no one score to take intervals of
            return LogSamples(problem=f"its scorer gives several values per sample ({type(score.value).__name__})")
        value = to_float(score.value)
        if not math.isfinite(value):
            out.unscored += 1
            continue
        per_epoch.setdefault(sample.id, []).append(value)
        if sample.id not in out.targets:
            out.targets[sample.id] = _text(sample.target) or ""
            out.answers[sample.id] = _text(score.answer)
            out.metadata[sample.id] = {k: v for k, v in (sample.metadata or {}).items() if _scalar(v)}
    # a task run for several inspect epochs answered each sample that many times: one sample, its
    # scores reduced to their mean (inspect's default reducer), so n counts samples, not answers
    out.scores = {key: sum(v) / len(v) for key, v in per_epoch.items()}
    try:
        out.total = read_eval_log(str(log), header_only=True).eval.dataset.samples
    except Exception:  # a log whose header cannot be read: n without its "of N"
        out.total = None
    return out


class SampleScores:
    """Per-sample scores of a sweep's logs, read once per version of each log (kept by the log's
    path relative to the sweep dir, so a moved sweep dir keeps its cache)."""

    def __init__(self, sweep_dir: Path):
        self.root = sweep_dir.resolve()
        self.path = sweep_dir / CACHE
        try:
            with open(self.path, "rb") as f:
                self.cache: dict[str, tuple[int, int, LogSamples]] = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, ValueError):
            self.cache = {}
        self.read = 0  # logs read by this instance (not from the cache)
        self.used: set[str] = set()

    def get(self, log: str | Path | None) -> LogSamples:
        if log is None or log != log or not str(log):  # None, NaN (a pandas gap) or empty
            return LogSamples()
        try:
            st = os.stat(log)
        except OSError:
            return LogSamples()
        try:
            name = Path(log).resolve().relative_to(self.root).as_posix()
        except ValueError:
            name = str(log)
        self.used.add(name)
        hit = self.cache.get(name)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        scores = read_sample_scores(log)
        self.cache[name] = (st.st_size, st.st_mtime_ns, scores)
        self.read += 1
        return scores

    def save(self) -> None:
        """Keep what was used (logs no longer in the report are dropped)."""
        if not self.read and set(self.cache) == self.used:
            return
        kept = {k: v for k, v in self.cache.items() if k in self.used}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump(kept, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path)
