"""Statistics of eval scores: intervals per cell, paired comparisons between checkpoints that
answered the same samples, means over seeds. What statsmodels has (Wilson's interval, McNemar's
exact test, Holm's adjustment) comes from statsmodels, the rest from scipy.

A score array holds one value per sample (0/1 for exact match), in sample-id order; two arrays
are paired by sample id (:func:`paired`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
SEED = 0  # bootstrap intervals are reproducible: the same scores give the same interval


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    method: str  # wilson | bootstrap | t | single

    def text(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    """``b`` against ``a`` on the same samples: mean difference (b - a) with its interval, and for
    0/1 scores McNemar's exact p-value on the discordant pairs."""

    n: int
    diff: Interval
    p_value: float | None
    a_only: int | None = None  # samples right only for a (0/1 scores)
    b_only: int | None = None


def is_binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def _bootstrap(data: tuple[np.ndarray, ...], statistic) -> tuple[float, float]:
    from scipy import stats

    if len(data[0]) < 2 or np.ptp(np.concatenate(data)) == 0:  # no spread: the interval is the point
        v = float(statistic(*data))
        return v, v
    res = stats.bootstrap(data, statistic, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                          confidence_level=CONFIDENCE, method="percentile", random_state=np.random.default_rng(SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(scores: Sequence[float]) -> Interval:
    """A cell's score with its 95% interval: Wilson for 0/1 scores, bootstrap otherwise."""
    x = np.asarray(scores, dtype=float)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "none")
    mean = float(x.mean())
    if is_binary(x):
        from statsmodels.stats.proportion import proportion_confint

        low, high = proportion_confint(int(x.sum()), len(x), alpha=1 - CONFIDENCE, method="wilson")
        # statsmodels' bounds at 0/n and n/n land a rounding error inside the point: they hold it
        return Interval(mean, float(min(low, mean)), float(max(high, mean)), "wilson")
    low, high = _bootstrap((x,), lambda s, axis=-1: np.mean(s, axis=axis))
    return Interval(mean, low, high, "bootstrap")


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    """``b`` minus ``a``, sample by sample (the arrays are paired): a paired bootstrap interval
    of the mean difference, and McNemar's exact test where both are 0/1."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired scores need the same samples ({len(x)} != {len(y)})")
    d = y - x
    # The paired bootstrap of mean(y) - mean(x) resamples sample indices; resampling d with the same
    # indices is the same interval (scipy draws the same indices either way) at half the work.
    low, high = _bootstrap((d,), lambda s, axis=-1: np.mean(s, axis=axis))
    diff = Interval(float(d.mean()) if len(d) else float("nan"), low, high, "bootstrap")
    if is_binary(x) and is_binary(y):
        from statsmodels.stats.contingency_tables import mcnemar

        a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        both, neither = int(((x == 1) & (y == 1)).sum()), int(((x == 0) & (y == 0)).sum())
        p = mcnemar([[both, a_only], [b_only, neither]], exact=True).pvalue if a_only + b_only else 1.0
        return Comparison(len(d), diff, float(p), a_only, b_only)
    return Comparison(len(d), diff, None)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (statsmodels' ``multipletests``) of the known p-values of a
    family; a missing one (None, or NaN as pandas writes it: a task without a 0/1 test) is not a
    member of the family and stays None."""
    from statsmodels.stats.multitest import multipletests

    known = [i for i, p in enumerate(p_values) if p is not None and p == p]
    out: list[float | None] = [None] * len(p_values)
    if known:
        adjusted = multipletests([float(p_values[i]) for i in known], method="holm")[1]
        for i, p in zip(known, adjusted):
            out[i] = float(p)
    return out


def seed_interval(values: Sequence[float]) -> Interval:
    """The mean over seeds with a t-interval (n >= 2); one seed is a point."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, mean, mean, "single")
    sem = float(stats.sem(x))
    if sem == 0:
        return Interval(mean, mean, mean, "t")
    low, high = stats.t.interval(CONFIDENCE, len(x) - 1, loc=mean, scale=sem)
    if ((x >= 0) & (x <= 1)).all():  # a score in [0, 1]: so is its interval
        low, high = max(0.0, low), min(1.0, high)
    return Interval(mean, float(low), float(high), "t")


def paired(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """Two cells' per-sample scores (sample id -> score) on the samples both answered, in id order."""
    ids = sorted(set(a) & set(b), key=lambda k: (str(type(k)), k))
    return np.array([a[i] for i in ids], dtype=float), np.array([b[i] for i in ids], dtype=float)
