"""Seeded simulations of the report's statistics on the data our users have: n = 100 samples with
few discordant pairs, samples clustered by passage, inspect epochs repeated per sample. Each 95%
interval must cover the true value 95% of the time (within 0.03) and the paired test must reject a
true null at most 6% of the time. Each scenario draws 1000 datasets (seconds, not minutes)."""

from __future__ import annotations

import numpy as np

from cruijff.report.stats import compare, score_interval

N, REPS = 100, 1000


def covers(iv, truth) -> bool:
    return iv.low <= truth <= iv.high


def discordant(rng, p_base_only, p_ft_only, p_both=0.65):
    """Paired 0/1 scores of a base and a fine-tuned checkpoint: cells of the paired table drawn
    with these probabilities (few discordant pairs: a fine-tuned model mostly answers as its base)."""
    cells = rng.choice(4, size=N, p=[p_both, p_base_only, p_ft_only, 1 - p_both - p_base_only - p_ft_only])
    base = np.isin(cells, (0, 1)).astype(float)
    ft = np.isin(cells, (0, 2)).astype(float)
    return base, ft


def clustered(rng, shift, n_clusters=20, size=5, rho=0.3, tau=1.5):
    """Paired 0/1 scores on samples in clusters of 5 (questions on one passage): the passage sets
    the questions' difficulty (within-cluster correlation of a model's scores about 0.23) and how
    much fine-tuning helps on it (spread ``tau`` around ``shift``), so the samples where the two
    disagree come in clusters too."""
    passage = np.repeat(rng.normal(0, np.sqrt(rho / (1 - rho)) * 1.8, n_clusters), size)
    effect = np.repeat(rng.normal(0, tau, n_clusters), size)
    item = passage + rng.normal(0, 1, n_clusters * size)
    base = (item + rng.logistic(0, 0.5, len(item)) > 0).astype(float)
    ft = (item + shift + effect + rng.logistic(0, 0.5, len(item)) > 0).astype(float)
    return base, ft, np.repeat(np.arange(n_clusters), size)


def repeated(rng, shift, epochs=4):
    """Per-sample means of 4 sampled answers (inspect epochs) of a base and a fine-tuned checkpoint."""
    p = rng.beta(2, 2, N)
    q = np.clip(p + shift + rng.normal(0, 0.1, N), 0, 1)
    return rng.binomial(epochs, p) / epochs, rng.binomial(epochs, q) / epochs, p, q


def test_wilson_covers_a_cells_accuracy():
    rng = np.random.default_rng(1)
    hits = [covers(score_interval(rng.random(N) < 0.7), 0.7) for _ in range(REPS)]
    assert abs(np.mean(hits) - 0.95) <= 0.03, np.mean(hits)


def test_the_paired_interval_covers_the_gain_with_few_discordant_pairs():
    rng = np.random.default_rng(2)
    hits, agree = [], []
    for _ in range(REPS):
        base, ft = discordant(rng, 0.02, 0.05)
        c = compare(base, ft)
        hits.append(covers(c.diff, 0.03))
        agree.append((c.p_value < 0.05) == (not covers(c.diff, 0.0)))
    assert abs(np.mean(hits) - 0.95) <= 0.03, np.mean(hits)
    assert np.mean(agree) >= 0.97, np.mean(agree)  # the test and the interval tell the same story


def test_the_paired_test_keeps_its_level_with_few_discordant_pairs():
    rng = np.random.default_rng(3)
    p = [compare(*discordant(rng, 0.035, 0.035)).p_value for _ in range(REPS)]
    assert np.mean(np.array(p) < 0.05) <= 0.06, np.mean(np.array(p) < 0.05)


def _truth_clustered(shift):
    rng = np.random.default_rng(99)
    base, ft, _ = clustered(rng, shift, n_clusters=200_000)
    return base.mean(), ft.mean() - base.mean()


def test_clustered_intervals_cover_and_the_clustered_test_keeps_its_level():
    acc, gain = _truth_clustered(0.5)
    rng = np.random.default_rng(4)
    cell, paired_hits, naive = [], [], []
    for _ in range(REPS):
        base, ft, g = clustered(rng, 0.5)
        cell.append(covers(score_interval(base, g), acc))
        naive.append(covers(score_interval(base), acc))
        paired_hits.append(covers(compare(base, ft, g).diff, gain))
    assert abs(np.mean(cell) - 0.95) <= 0.03, np.mean(cell)
    assert abs(np.mean(paired_hits) - 0.95) <= 0.03, np.mean(paired_hits)
    assert np.mean(naive) < 0.90  # the clusters matter: Wilson on the samples as if independent under-covers
    rng = np.random.default_rng(5)
    p, p_naive = [], []
    for _ in range(REPS):
        base, ft, g = clustered(rng, 0.0)
        p.append(compare(base, ft, g).p_value)
        p_naive.append(compare(base, ft).p_value)
    assert np.mean(np.array(p) < 0.05) <= 0.06, np.mean(np.array(p) < 0.05)
    assert np.mean(np.array(p_naive) < 0.05) > 0.10  # McNemar on clustered samples: too many false positives


def test_repeated_epochs_intervals_cover_and_the_test_keeps_its_level():
    rng = np.random.default_rng(6)
    cell, gains = [], []
    for _ in range(REPS):
        base, ft, p, q = repeated(rng, 0.05)
        cell.append(covers(score_interval(base), 0.5))
        gains.append(compare(base, ft).diff)
    assert abs(np.mean(cell) - 0.95) <= 0.03, np.mean(cell)
    # the true gain: the mean shift of the per-sample probabilities (clipped at 0 and 1)
    rng_t = np.random.default_rng(98)
    p = rng_t.beta(2, 2, 1_000_000)
    truth = float(np.mean(np.clip(p + 0.05 + rng_t.normal(0, 0.1, len(p)), 0, 1) - p))
    cover = np.mean([covers(d, truth) for d in gains])
    assert abs(cover - 0.95) <= 0.03, cover
    rng = np.random.default_rng(7)
    p_null = np.array([compare(*repeated(rng, 0.0)[:2]).p_value for _ in range(REPS)])
    # shift 0 with clipping is not quite a null (clipping at 0 and 1 cancels on a symmetric beta)
    assert np.mean(p_null < 0.05) <= 0.06, np.mean(p_null < 0.05)
