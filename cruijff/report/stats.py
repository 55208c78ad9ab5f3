"""Statistics of eval scores: a cell's score with its interval, the paired gain of one checkpoint
over another on the same samples with a test that agrees with its interval, the gain a null
result could have detected, and means over seeds.

What a well-kept library has comes from it — Wilson's interval, McNemar's exact test, Holm's
adjustment and power from statsmodels, t and binomial distributions and root finding from scipy,
cluster-robust variances from statsmodels' OLS. The methods:

- one cell, 0/1 scores: Wilson's score interval (Wilson 1927); with clusters, on the effective
  sample size n / deff, deff the cluster-robust over the binomial variance (Kish's design effect),
  at the level whose normal quantile is t's with G - 1 degrees of freedom (few clusters: wider);
- one cell, other scores (partial credit, the mean over inspect epochs): a t-interval, cluster-
  robust (CR1, G - 1 degrees of freedom) with clusters; clipped to the score's range [0, 1];
- paired gain, 0/1 scores: Tango's score interval for the difference of paired proportions
  (Tango 1998), which never collapses to a point where the data allow a width (0/20 -> 20/20:
  [0.68, 1]), and McNemar's mid-p test (Fagerland, Lydersen & Laake 2013); with clusters both come
  from the same score statistic divided by the design effect (Obuchowski 1998; Durkalski et al.
  2003), so the test rejects exactly when the interval excludes 0;
- paired gain, other scores: the paired t-interval and t-test (cluster-robust with clusters);
- effect size of a 0/1 gain: the discordant-pairs odds ratio with its transformed Wilson interval
  (Fagerland, Lydersen & Laake 2014);
- minimum detectable gain: the gain a two-sided test at the family's level finds with 80% power:
  for 0/1 scores on independent samples the exact power of McNemar's mid-p test at the observed
  discordance; otherwise a paired t-test's for the effective n and the spread of the per-sample
  differences (statsmodels' ``TTestPower``);
- seeds: the mean over seeds with a t-interval; with >= 3 seeds also a two-level bootstrap that
  resamples seeds and, within them, samples (or clusters) (Davison & Hinkley 1997, ch. 3.8).

A score array holds one value per sample, in sample-id order; two arrays are paired by sample id
(:func:`paired`), and a cluster array beside them names each sample's cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
BOOTSTRAP_RESAMPLES = 2000
SEED = 0  # bootstrap intervals are reproducible: the same scores give the same interval


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    method: str  # wilson | t | tango | bootstrap | single | none

    def text(self, digits: int = 3, sign: bool = False) -> str:
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        if self.low != self.low:
            return f.format(self.value)
        return f"{f.format(self.value)} [{f.format(self.low)}, {f.format(self.high)}]"


@dataclass(frozen=True)
class Comparison:
    """``b`` against ``a`` on the same samples: the mean difference (b - a) with its interval and
    the test that agrees with it; for 0/1 scores the discordant counts and their odds ratio."""

    n: int
    diff: Interval
    p_value: float | None
    test: str                       # McNemar mid-p | clustered McNemar | paired t | cluster-robust t
    a_only: int | None = None       # samples right only for a (0/1 scores)
    b_only: int | None = None
    p_exact: float | None = None    # McNemar's exact (conditional) p, beside the mid-p
    odds_ratio: Interval | None = None  # b_only / a_only, for 0/1 scores
    clusters: int | None = None     # distinct clusters, where the samples have them
    n_eff: float = 0.0              # the samples' worth of independent evidence (n / design effect)
    sd: float = 0.0                 # root mean square of the per-sample differences (for power)
    unit: bool = True               # both score arrays within [0, 1]


def is_binary(x: np.ndarray) -> bool:
    return bool(np.isin(x, (0.0, 1.0)).all())


def _in_unit(x: np.ndarray) -> bool:
    return bool(((x >= 0) & (x <= 1)).all())


def _robust(x: np.ndarray, clusters: np.ndarray | None):
    """statsmodels' fit of the mean of ``x``: cluster-robust (CR1, t with G - 1 df) with clusters,
    the ordinary one-sample t otherwise."""
    import statsmodels.api as sm

    model = sm.OLS(x, np.ones(len(x)))
    if clusters is None:
        return model.fit()
    return model.fit(cov_type="cluster", cov_kwds={"groups": _codes(clusters)}, use_t=True)


def _codes(clusters: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(clusters, dtype=str), return_inverse=True)[1]


def _n_clusters(clusters: np.ndarray | None) -> int | None:
    return None if clusters is None else len(np.unique(np.asarray(clusters, dtype=str)))


def design_effect(x: np.ndarray, clusters: np.ndarray | None) -> float:
    """Kish's design effect of the mean of ``x``: its cluster-robust variance over the variance it
    would have on independent samples; at least 1. Where the samples show no variation there is
    nothing to estimate it from: the largest it can be (sum of squared cluster sizes / n, which is
    n / G for clusters of one size) is taken."""
    n, g = len(x), _n_clusters(clusters)
    if clusters is None or g is None or g >= n:
        return 1.0
    sizes = np.unique(_codes(clusters), return_counts=True)[1].astype(float)
    worst = float((sizes ** 2).sum() / n)
    iid = float(np.mean((x - x.mean()) ** 2)) / n
    if iid == 0 or g < 2:
        return worst
    robust = float(_robust(x, clusters).bse[0]) ** 2
    return max(robust / iid, 1.0)


def score_interval(scores: Sequence[float], clusters: Sequence[Any] | None = None) -> Interval:
    """A cell's score with its 95% interval (see the module's docstring for the methods)."""
    x = np.asarray(scores, dtype=float)
    g = None if clusters is None else np.asarray(clusters)
    if len(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "none")
    mean = float(x.mean())
    n_clusters = _n_clusters(g)
    if g is not None and n_clusters is not None and n_clusters < 2:
        return Interval(mean, float("nan"), float("nan"), "none")  # one cluster: nothing to tell its spread by
    if is_binary(x):
        from scipy import stats
        from statsmodels.stats.proportion import proportion_confint

        n_eff = len(x) / design_effect(x, g)
        # with clusters, the level whose normal quantile is t's with G - 1 df (few clusters: wider)
        alpha = ALPHA if g is None else float(2 * stats.norm.sf(stats.t.ppf(1 - ALPHA / 2, n_clusters - 1)))
        low, high = proportion_confint(mean * n_eff, n_eff, alpha=alpha, method="wilson")
        # statsmodels' bounds at 0/n and n/n land a rounding error inside the point: they hold it
        return Interval(mean, float(min(low, mean)), float(max(high, mean)), "wilson")
    if len(x) < 2 or float(np.ptp(x)) == 0:  # no spread to estimate from: the point, no interval
        return Interval(mean, float("nan"), float("nan"), "none")
    low, high = _robust(x, g).conf_int(ALPHA)[0]
    if _in_unit(x):
        low, high = max(0.0, low), min(1.0, high)
    return Interval(mean, float(min(low, mean)), float(max(high, mean)), "t")


def _tango_z(b_only: float, a_only: float, n: float, delta: float) -> float:
    """Tango's score statistic for H0: p(b right only) - p(a right only) = delta, from the counts
    of the two discordant cells (the restricted maximum-likelihood estimate of the a-only cell
    solves 2n p^2 + w p - a_only delta (1 - delta) = 0)."""
    w = -b_only - a_only + (2 * n - b_only + a_only) * delta
    p = (math.sqrt(max(w * w + 8 * n * a_only * delta * (1 - delta), 0.0)) - w) / (4 * n)
    var = n * (2 * p + delta * (1 - delta))
    num = b_only - a_only - n * delta
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_interval(b_only: float, a_only: float, n: float, deff: float = 1.0, crit: float | None = None) -> tuple[float, float]:
    """The 95% score interval of the paired difference (b - a): every delta whose score statistic
    (divided by sqrt(deff) for clustered samples) stays within ``crit`` (normal quantile)."""
    from scipy import optimize, stats

    crit = stats.norm.ppf(1 - ALPHA / 2) if crit is None else crit
    est = (b_only - a_only) / n
    scale = math.sqrt(deff)

    def f(d: float) -> float:
        return abs(_tango_z(b_only, a_only, n, d)) / scale - crit

    eps = 1e-12
    low = -1.0 if f(-1 + eps) <= 0 else optimize.brentq(f, -1 + eps, min(est, 1 - eps), xtol=1e-12)
    high = 1.0 if f(1 - eps) <= 0 else optimize.brentq(f, max(est, -1 + eps), 1 - eps, xtol=1e-12)
    return float(min(low, est)), float(max(high, est))


def mcnemar_p(a_only: int, b_only: int) -> tuple[float, float]:
    """McNemar's exact p (statsmodels) and its mid-p (the exact p less the probability of the
    observed split, Fagerland et al. 2013): the mid-p's false-positive rate stays near the
    nominal level where the exact test's falls far below it (few discordant pairs)."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    m = a_only + b_only
    if m == 0:
        return 1.0, 1.0
    exact = float(mcnemar([[0, a_only], [b_only, 0]], exact=True).pvalue)
    k = min(a_only, b_only)
    mid = 2 * float(stats.binom.cdf(k, m, 0.5)) - float(stats.binom.pmf(k, m, 0.5))
    return exact, float(min(max(mid, 0.0), 1.0))


def discordant_odds_ratio(a_only: int, b_only: int, deff: float = 1.0) -> Interval:
    """b_only / a_only with the transformed Wilson interval: Wilson's interval of the share of
    b_only among the discordant pairs (on the effective count m / deff with clusters), mapped
    through p / (1 - p)."""
    from statsmodels.stats.proportion import proportion_confint

    m = a_only + b_only
    if m == 0:
        return Interval(float("nan"), float("nan"), float("nan"), "none")
    low, high = proportion_confint(b_only / deff, m / deff, alpha=ALPHA, method="wilson")

    def odds(p: float) -> float:
        return math.inf if p >= 1 - 1e-9 else p / (1 - p)  # Wilson's upper bound at m/m is 1 up to rounding

    return Interval(odds(b_only / m), odds(float(low)), odds(float(high)), "wilson")


def compare(a: Sequence[float], b: Sequence[float], clusters: Sequence[Any] | None = None) -> Comparison:
    """``b`` minus ``a``, sample by sample (the arrays are paired, ``clusters`` beside them)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"paired scores need the same samples ({len(x)} != {len(y)})")
    g = None if clusters is None else np.asarray(clusters)
    n, d = len(x), y - x
    n_clusters = _n_clusters(g)
    if n == 0:
        return Comparison(0, Interval(float("nan"), float("nan"), float("nan"), "none"), None, "none")
    sd = float(np.sqrt(np.mean(d ** 2)))
    if n_clusters is not None and n_clusters < 2:  # one cluster: no interval, no test
        return Comparison(n, Interval(float(d.mean()), float("nan"), float("nan"), "none"), None, "none",
                          clusters=n_clusters, n_eff=1.0, sd=sd)
    if is_binary(x) and is_binary(y):
        from scipy import stats

        a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        deff = design_effect(d, g)
        if g is not None:  # two clusters or more (one returned above)
            # the score statistic on the effective sample (a chi-square test on 1 df, as
            # Durkalski's): the test rejects exactly where the interval leaves out 0
            low, high = tango_interval(b_only, a_only, n, deff)
            z = _tango_z(b_only, a_only, n, 0.0) / math.sqrt(deff)
            p = float(2 * stats.norm.sf(abs(z))) if a_only + b_only else 1.0
            test, exact = "clustered McNemar", None
        else:
            low, high = tango_interval(b_only, a_only, n)
            exact, p = mcnemar_p(a_only, b_only)
            test = "McNemar mid-p"
        diff = Interval(float(d.mean()), low, high, "tango")
        return Comparison(n, diff, p, test, a_only, b_only, exact, discordant_odds_ratio(a_only, b_only, deff),
                          n_clusters, n / deff, sd, True)
    deff = design_effect(d, g)
    if n < 2 or (n_clusters is not None and n_clusters < 2) or float(np.ptp(d)) == 0:
        # no spread to estimate from: the point, and no test
        v = float(d.mean())
        return Comparison(n, Interval(v, float("nan"), float("nan"), "none"), None, "none",
                          clusters=n_clusters, n_eff=n / deff, sd=sd, unit=_in_unit(x) and _in_unit(y))
    fit = _robust(d, g)
    low, high = fit.conf_int(ALPHA)[0]
    if _in_unit(x) and _in_unit(y):
        low, high = max(-1.0, low), min(1.0, high)
    return Comparison(n, Interval(float(d.mean()), float(low), float(high), "t"), float(fit.pvalues[0]),
                      "paired t" if g is None else "cluster-robust t", clusters=n_clusters, n_eff=n / deff, sd=sd,
                      unit=_in_unit(x) and _in_unit(y))


def minimum_detectable(c: Comparison, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest gain the comparison's test, at level ``alpha``, finds with ``power``.

    0/1 scores on independent samples: the power of McNemar's mid-p test itself, summed exactly over
    the discordant counts, where what fine-tuning loses stays at half the observed discordance and
    the gain comes on top (:func:`mcnemar_power`). Otherwise: a two-sided paired t-test's, for the effective n and
    the spread of the per-sample differences (statsmodels' TTestPower). None where no sample
    differed (no spread to size it by) or fewer than 2 samples' worth of evidence."""
    from statsmodels.stats.power import TTestPower

    if c.sd == 0 or c.n_eff < 2:
        return None
    if c.test == "McNemar mid-p" and c.a_only is not None:
        return _mcnemar_mde(c.n, (c.a_only + c.b_only) / c.n, alpha, power)
    effect = TTestPower().solve_power(effect_size=None, nobs=c.n_eff, alpha=alpha, power=power,
                                      alternative="two-sided")
    return float(effect) * c.sd


def mcnemar_power(n: int, rate: float, gain: float, alpha: float = ALPHA) -> float:
    """The power of McNemar's two-sided mid-p test at level ``alpha`` on n pairs, when a pair is
    right only for a with probability ``rate`` and right only for b with ``rate + gain`` (what
    fine-tuning loses stays; the gain comes on top). Summed exactly over the two discordant counts."""
    from scipy import stats

    p_a, p_b = rate, rate + gain
    if p_a + p_b > 1 or p_b <= 0:
        return float("nan")

    def span(mean: float, var: float, top: int) -> np.ndarray:
        sd = math.sqrt(max(var, 0.0))
        return np.arange(max(0, int(mean - 9 * sd) - 1), min(top, int(mean + 9 * sd) + 2) + 1)

    total = 0.0
    for a in span(n * p_a, n * p_a * (1 - p_a), n):
        pa = float(stats.binom.pmf(a, n, p_a))
        if pa < 1e-12:
            continue
        q = p_b / (1 - p_a) if p_a < 1 else 0.0
        b = span((n - a) * q, (n - a) * q * (1 - q), n - a)
        m = a + b
        low = np.minimum(a, b)
        mid = np.where(m > 0, 2 * stats.binom.cdf(low, m, 0.5) - stats.binom.pmf(low, m, 0.5), 1.0)
        total += pa * float(stats.binom.pmf(b, n - a, q)[mid < alpha].sum())
    return total


def _mcnemar_mde(n: int, discordance: float, alpha: float, power: float) -> float | None:
    from scipy import optimize

    rate = discordance / 2  # under no gain, each way half the discordant pairs
    top = 1 - 2 * rate
    if top <= 0 or mcnemar_power(n, rate, top, alpha) < power:
        return float("inf")  # no gain within the score's range would be found
    return float(optimize.brentq(lambda g: mcnemar_power(n, rate, g, alpha) - power, 0.0, top, xtol=1e-4))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (statsmodels' ``multipletests``) of the known p-values of a
    family; a missing one (None, or NaN as pandas writes it: a task without a test) is not a
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
    """The mean over seeds with a t-interval (n >= 2), within [0, 1] for scores there; one seed is
    a point."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, float("nan"), float("nan"), "single")
    sem = float(stats.sem(x))
    if sem == 0:
        return Interval(mean, mean, mean, "t")
    low, high = stats.t.interval(CONFIDENCE, len(x) - 1, loc=mean, scale=sem)
    if _in_unit(x):
        low, high = max(0.0, low), min(1.0, high)
    return Interval(mean, float(low), float(high), "t")


def two_level_bootstrap(per_seed: np.ndarray, base: np.ndarray | None = None,
                        clusters: Sequence[Any] | None = None) -> tuple[Interval, float | None]:
    """Percentile interval of the mean over seeds of a per-sample score (``per_seed``: seeds x
    samples, paired by sample), or of its gain over ``base`` (the same samples): each resample
    draws seeds, then samples (whole clusters where given), with replacement — so the interval
    holds both the seed-to-seed and the sample-to-sample variation. With it the bootstrap's
    two-sided p-value of "no gain" (twice the smaller share of resamples on either side of 0),
    which rejects at 0.05 exactly where the interval leaves 0 out."""
    y = np.asarray(per_seed, dtype=float)
    s, n = y.shape
    d = y - np.asarray(base, dtype=float)[None, :] if base is not None else y
    value = float(d.mean())
    if s < 2 or n < 1:
        return Interval(value, float("nan"), float("nan"), "none"), None
    rng = np.random.default_rng(SEED)
    if clusters is None:
        units = [np.array([i]) for i in range(n)]
    else:
        codes = _codes(np.asarray(clusters))
        units = [np.flatnonzero(codes == k) for k in range(codes.max() + 1)]
    # per seed and unit: the sum of the unit's differences and its size
    sums = np.stack([d[:, u].sum(axis=1) for u in units], axis=1)     # seeds x units
    sizes = np.array([len(u) for u in units], dtype=float)
    seeds = rng.integers(0, s, size=(BOOTSTRAP_RESAMPLES, s))
    picks = rng.integers(0, len(units), size=(BOOTSTRAP_RESAMPLES, len(units)))
    stats_ = np.empty(BOOTSTRAP_RESAMPLES)
    for i in range(BOOTSTRAP_RESAMPLES):
        chosen = sums[seeds[i]][:, picks[i]]                        # seeds x units
        stats_[i] = chosen.sum(axis=1).mean() / sizes[picks[i]].sum()
    low, high = np.quantile(stats_, [ALPHA / 2, 1 - ALPHA / 2])
    p = min(1.0, 2 * min(float(np.mean(stats_ <= 0)), float(np.mean(stats_ >= 0)))) if base is not None else None
    return Interval(value, float(min(low, value)), float(max(high, value)), "bootstrap"), p


def sample_order(ids) -> list:
    """Sample ids in one order every array of a comparison shares (ints and strings may mix)."""
    return sorted(ids, key=lambda k: (str(type(k)), k))


def cluster_labels(clusters: dict | None, ids: list) -> list[str] | None:
    """Each sample's cluster (``clusters``: sample id -> cluster), in the order of ``ids``; a sample
    without one is a cluster of its own."""
    return None if clusters is None else [str(clusters.get(i, f"\0{i}")) for i in ids]


def paired(a: dict, b: dict, clusters: dict | None = None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Two cells' per-sample scores (sample id -> score) on the samples both answered, in id order,
    with each sample's cluster where ``clusters`` (sample id -> cluster) gives them."""
    ids = sample_order(set(a) & set(b))
    return (np.array([a[i] for i in ids], dtype=float), np.array([b[i] for i in ids], dtype=float),
            cluster_labels(clusters, ids))
