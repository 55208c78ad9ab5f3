"""Per-sample scores of an eval cell, read from its inspect log through inspect's own API.

A sweep's report needs every sample's score of every cell (for intervals and paired tests);
reading 600 logs of 1000 samples each is the report's main cost, so what was read is kept in
``<sweep dir>/.sample-scores-v2.pkl`` by log path, size and mtime: a report on unchanged logs reads
no log again.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

CACHE = ".sample-scores-v2.pkl"  # v2: inspect epochs reduced per sample


def read_sample_scores(log: str | Path) -> dict[Any, float]:
    """Sample id -> score (its first scorer's value as a float; the mean over inspect epochs) of one
    inspect log.

    Read from the log's sample summaries (what ``samples_df`` reads for its summary columns): they
    carry every sample's scores without its messages and events — ten times faster than the samples.
    """
    from inspect_ai.log import read_eval_log_sample_summaries
    from inspect_ai.scorer import value_to_float

    to_float = value_to_float()
    per_epoch: dict[Any, list[float]] = {}
    for sample in read_eval_log_sample_summaries(str(log)):
        if not sample.scores:
            continue
        score = next(iter(sample.scores.values()))
        per_epoch.setdefault(sample.id, []).append(to_float(score.value))
    # a task run for several inspect epochs answered each sample that many times: one sample, its
    # scores reduced to their mean (inspect's default reducer), so n counts samples, not answers
    return {key: sum(v) / len(v) for key, v in per_epoch.items()}


class SampleScores:
    """Per-sample scores of a sweep's logs, read once per version of each log (kept by the log's
    path relative to the sweep dir, so a moved sweep dir keeps its cache)."""

    def __init__(self, sweep_dir: Path):
        self.root = sweep_dir.resolve()
        self.path = sweep_dir / CACHE
        try:
            with open(self.path, "rb") as f:
                self.cache: dict[str, tuple[int, int, dict]] = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, ValueError):
            self.cache = {}
        self.read = 0  # logs read by this instance (not from the cache)
        self.used: set[str] = set()

    def get(self, log: str | Path | None) -> dict[Any, float]:
        if log is None or log != log or not str(log):  # None, NaN (a pandas gap) or empty
            return {}
        try:
            st = os.stat(log)
        except OSError:
            return {}
        try:
            name = Path(log).resolve().relative_to(self.root).as_posix()
        except ValueError:
            name = str(log)
        self.used.add(name)
        hit = self.cache.get(name)
        if hit is not None and hit[0] == st.st_size:
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
