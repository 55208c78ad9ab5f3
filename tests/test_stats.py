"""A sweep report's statistics, on logs written with inspect's own log API with known per-sample
scores: each interval and p-value must equal scipy's on the same arrays."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cruijff.records import CellResults, PlannedRunRecord, RunState, RunStatus, SweepPlan, TaskResult


def write_log(path, scores, task="exact_match", total=None):
    """An inspect log of ``task`` whose sample i (id i + 1) scored ``scores[i]`` (0/1 as C/I), in
    passages of 5 samples (metadata ``passage``), of a dataset of ``total`` samples (default: all)."""
    from inspect_ai.log import (EvalConfig, EvalDataset, EvalLog, EvalMetric, EvalResults, EvalSample, EvalScore,
                                EvalSpec, write_eval_log)
    from inspect_ai.scorer import Score

    binary = set(scores) <= {0, 1}
    ids = list(range(1, len(scores) + 1))
    samples = [EvalSample(id=i, epoch=1, input="q", target="t", metadata={"passage": f"p{(i - 1) // 5}"},
                          scores={"match": Score(value=("C" if s else "I") if binary else float(s))})
               for i, s in zip(ids, scores)]
    mean = float(np.mean(scores))
    log = EvalLog(eval=EvalSpec(created="2026-12-01T00:00:00+00:00", task=task, model="hf/m", config=EvalConfig(),
                                dataset=EvalDataset(name="d", samples=total or len(ids), sample_ids=ids)),
                  status="success", samples=samples,
                  results=EvalResults(total_samples=len(ids), completed_samples=len(ids), scores=[
                      EvalScore(name="match", scorer="match", metrics={"accuracy": EvalMetric(name="accuracy", value=mean)})]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_eval_log(log, str(path))
    return str(path)


def write_cell(cell_dir, tasks: dict[str, list[float]], base_cell="tiny_llama", total=None):
    results = {label: TaskResult("success", write_log(cell_dir / f"{label}.eval", s, label, total), label, "accuracy",
                                 float(np.mean(s)), len(s)) for label, s in tasks.items()}
    CellResults(model="m", tasks=results, metadata={"base_cell": base_cell}).save(cell_dir)


def make_sweep(tmp_path, runs: dict[str, dict[int, dict[str, list[float]]]], base: dict[str, list[float]],
               eval_tasks=None, overrides=None, total=None):
    sweep_dir = tmp_path / "sweep"
    write_cell(sweep_dir / "base" / "tiny_llama", base, total=total)
    for name, epochs in runs.items():
        for epoch, tasks in epochs.items():
            write_cell(sweep_dir / name / "eval" / f"epoch_{epoch}", tasks, total=total)
        RunState(RunStatus.FINISHED, name=name, checkpoints=[f"epoch_{e}" for e in epochs]).save(sweep_dir / name)
    SweepPlan("sweep", runs=[PlannedRunRecord(n, (overrides or {}).get(n, [f"x={n}"])) for n in runs],
              eval={"tasks": eval_tasks or [{"name": "exact_match"}]}).save(sweep_dir)
    return sweep_dir


rng = np.random.default_rng(7)
BASE = (rng.random(60) < 0.3).astype(int).tolist()
A0 = (rng.random(60) < 0.5).astype(int).tolist()
A1 = (rng.random(60) < 0.8).astype(int).tolist()


def _tango_bound_z(b_only, a_only, n, delta):
    """Tango's score statistic at ``delta``, its restricted MLE found numerically from the
    multinomial likelihood (scipy's optimizer), not from the closed form the report uses."""
    from scipy import optimize

    rest = n - b_only - a_only

    def nll(q):  # q = P(a right only); P(b right only) = q + delta
        p_b, p_a = q + delta, q
        return -(b_only * np.log(max(p_b, 1e-300)) + a_only * np.log(max(p_a, 1e-300))
                 + rest * np.log(max(1 - p_b - p_a, 1e-300)))

    lo, hi = max(0.0, -delta), (1 - delta) / 2
    q = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}).x
    return (b_only - a_only - n * delta) / np.sqrt(n * (2 * q + delta * (1 - delta)))


def test_intervals_and_paired_tests_equal_the_references(tmp_path):
    from cruijff.report import report_sweep

    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": A0}, 1: {"exact_match": A1}}},
                           {"exact_match": BASE})
    report_sweep(sweep_dir)
    df = pd.read_csv(sweep_dir / "summary.csv").set_index("checkpoint")
    for ckpt, scores in (("base", BASE), ("epoch_0", A0), ("epoch_1", A1)):
        ci = stats.binomtest(sum(scores), len(scores)).proportion_ci(method="wilson")
        assert df.loc[ckpt, "ci_low"] == pytest.approx(ci.low) and df.loc[ckpt, "ci_high"] == pytest.approx(ci.high)
        assert df.loc[ckpt, "n"] == 60
    ps = []
    for ckpt, scores in (("epoch_0", A0), ("epoch_1", A1)):
        x, y = np.array(BASE), np.array(scores)
        b, c = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        # McNemar's mid-p: the exact test on the discordant pairs less the observed split's probability
        p = stats.binomtest(c, b + c, 0.5).pvalue - stats.binom.pmf(min(b, c), b + c, 0.5)
        assert df.loc[ckpt, "p"] == pytest.approx(p) and df.loc[ckpt, "test"] == "McNemar mid-p"
        assert df.loc[ckpt, "gain"] == pytest.approx(y.mean() - x.mean())
        # Tango's interval: its bounds are where the score statistic is -1.96 and +1.96
        low, high = df.loc[ckpt, "gain_low"], df.loc[ckpt, "gain_high"]
        assert _tango_bound_z(c, b, 60, low) == pytest.approx(stats.norm.ppf(0.975), abs=1e-4)
        assert _tango_bound_z(c, b, 60, high) == pytest.approx(-stats.norm.ppf(0.975), abs=1e-4)
        ps.append(p)
    # the pick (epoch_1, on test: no validation task) is declared; epoch_0 is exploratory, alone in its family
    assert df.loc["epoch_1", "role"] == "declared" and df.loc["epoch_0", "role"] == "exploratory"
    assert df.loc["epoch_1", "p_holm"] == pytest.approx(ps[1]) and df.loc["epoch_0", "p_holm"] == pytest.approx(ps[0])
    md = (sweep_dir / "summary.md").read_text()
    assert md.startswith("# sweep\n\n## Findings\n\n- **exact_match**: `a` at epoch_1, selected on the test scores "
                         "themselves (no validation task: the pick is optimistic)")
    selected = ps[1]  # epoch_1's, in a sentence: "p = 0.012", or "p < 0.001" below that
    assert f"McNemar mid-p: {'p < 0.001' if selected < 0.001 else f'p = {selected:.3f}'}" in md
    assert "discordant odds ratio" in md  # a significant gain comes with its effect size


def test_scores_that_are_not_0_or_1_get_a_t_interval_and_a_paired_t_test(tmp_path):
    from cruijff.report import report_sweep

    partial = [0.25, 0.5, 0.75, 1.0, 0.0, 0.5] * 5
    base = [0.5, 0.25, 0.5] * 10
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": partial}}}, {"exact_match": base})
    report_sweep(sweep_dir)
    df = pd.read_csv(sweep_dir / "summary.csv").set_index("checkpoint")
    low, high = stats.t.interval(0.95, 29, loc=np.mean(partial), scale=stats.sem(partial))
    assert df.loc["epoch_0", "ci_low"] == pytest.approx(low) and df.loc["epoch_0", "ci_high"] == pytest.approx(high)
    ref = stats.ttest_rel(partial, base)
    assert df.loc["epoch_0", "p"] == pytest.approx(ref.pvalue) and df.loc["epoch_0", "test"] == "paired t"
    ci = ref.confidence_interval()
    assert df.loc["epoch_0", "gain_low"] == pytest.approx(ci.low) and df.loc["epoch_0", "gain_high"] == pytest.approx(ci.high)


def test_the_best_checkpoint_is_picked_on_validation_and_reported_on_test(tmp_path):
    """``b`` is best on test, ``a`` on validation: the report picks ``a`` and reports its test score."""
    from cruijff.report import report_sweep

    tasks = [{"name": "exact_match"}, {"name": "exact_match", "label": "exact_match_val", "args": {"split": "validation"}}]
    good, better, poor = [1] * 50 + [0] * 10, [1] * 58 + [0] * 2, [1] * 20 + [0] * 40
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": good, "exact_match_val": better}},
                                      "b": {0: {"exact_match": better, "exact_match_val": poor}}},
                           {"exact_match": BASE, "exact_match_val": BASE}, eval_tasks=tasks)
    report_sweep(sweep_dir)
    md = (sweep_dir / "summary.md").read_text()
    findings = md.split("## Findings")[1].split("##")[0]
    assert "**exact_match**: `a` at epoch_0, selected on exact_match_val (validation), scores 0.833" in findings
    assert "exact_match_val" not in findings.split("selected on exact_match_val")[1]  # one finding per test task
    assert "`b`" not in findings


def test_compare_tests_any_two_checkpoints_on_the_same_samples(tmp_path):
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": A0}, 1: {"exact_match": A1}}}, {"exact_match": BASE})
    proc = subprocess.run([sys.executable, "-m", "cruijff", "compare", str(sweep_dir), "a/epoch_0", "a"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    x, y = np.array(A0), np.array(A1)
    p = stats.binomtest(int(((x == 0) & (y == 1)).sum()), int((x != y).sum()), 0.5).pvalue
    assert f"{y.mean() - x.mean():+.3f}" in proc.stdout and f"{p:.3f}" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "cruijff", "compare", str(sweep_dir), "a/epoch_7", "base"],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == "cruijff: error: a/epoch_7: not an evaluated checkpoint of a; it has: epoch_0, epoch_1"


def test_a_second_report_on_unchanged_logs_reads_no_log(tmp_path, monkeypatch):
    from cruijff.report import report_sweep, samples

    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": A0}}}, {"exact_match": BASE})
    report_sweep(sweep_dir)
    first = (sweep_dir / "summary.csv").read_text()
    monkeypatch.setattr(samples, "read_sample_scores", lambda log: pytest.fail(f"read {log} again"))
    report_sweep(sweep_dir)
    assert (sweep_dir / "summary.csv").read_text() == first


def test_seed_groups_are_replicates():
    from cruijff.report.analysis import seed_groups

    plan = [PlannedRunRecord(f"lr{lr}_seed{s}", [f"optimizer.lr={lr}", f"seed={s}"]) for lr in ("1e-3", "3e-3")
            for s in (1, 2, 3)]
    assert seed_groups(plan) == {"lr1e-3": ["lr1e-3_seed1", "lr1e-3_seed2", "lr1e-3_seed3"],
                                 "lr3e-3": ["lr3e-3_seed1", "lr3e-3_seed2", "lr3e-3_seed3"]}


@pytest.mark.parametrize("x, y", [
    ([], []), ([1], [1]), ([0], [1]), ([1] * 20, [1] * 20), ([0] * 20, [0] * 20),  # n 0, n 1, all right/wrong
    ([0] * 10 + [1] * 10, [0] * 10 + [1] * 10),  # no discordant pairs
    (A0, A1), (BASE, A0)])
def test_wilson_and_mcnemar_equal_statsmodels_on_edge_cases(x, y):
    from statsmodels.stats.contingency_tables import mcnemar
    from statsmodels.stats.proportion import proportion_confint

    from cruijff.report.stats import compare, score_interval

    for s in (x, y):
        ci = score_interval(s)
        if not s:
            assert ci.value != ci.value  # NaN: no samples, no score
            continue
        low, high = proportion_confint(sum(s), len(s), alpha=0.05, method="wilson")
        assert abs(ci.low - low) < 1e-12 and abs(ci.high - high) < 1e-12
        assert ci.low <= ci.value <= ci.high  # the point inside its interval, at 0/n and n/n too
    if x:
        c = compare(x, y)
        b = sum(1 for p, q in zip(x, y) if p == 1 and q == 0)
        d = sum(1 for p, q in zip(x, y) if p == 0 and q == 1)
        both = sum(1 for p, q in zip(x, y) if p == q == 1)
        ref = mcnemar([[both, b], [d, len(x) - both - b - d]], exact=True).pvalue if b + d else 1.0
        mid = min(1, 2 * stats.binom.cdf(min(b, d), b + d, 0.5) - stats.binom.pmf(min(b, d), b + d, 0.5)) if b + d else 1.0
        assert abs(c.p_exact - ref) < 1e-12 and abs(c.p_value - mid) < 1e-12 and (c.a_only, c.b_only) == (b, d)
        assert c.diff.low <= c.diff.value <= c.diff.high and c.diff.high - c.diff.low > 0  # never a point


def test_holm_leaves_missing_p_values_out_of_the_family():
    """A task without a 0/1 test has no p (None, or NaN once pandas holds it): it is not counted
    among the family, and does not push the others to 1."""
    from statsmodels.stats.multitest import multipletests

    from cruijff.report.stats import holm

    out = holm([float("nan"), 0.01, 0.03, None])
    ref = multipletests([0.01, 0.03], method="holm")[1]
    assert out[0] is None and out[3] is None
    assert abs(out[1] - ref[0]) < 1e-15 and abs(out[2] - ref[1]) < 1e-15 and out[1] < 1
    assert holm([]) == [] and holm([None]) == [None]


def test_inspect_epochs_are_one_sample_each(tmp_path):
    """A task run for 4 inspect epochs answered each of its 5 samples 4 times: 5 samples, each
    scored by the mean of its epochs, not 20."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSample, EvalSpec, write_eval_log
    from inspect_ai.scorer import Score

    from cruijff.report.samples import read_sample_scores

    samples = [EvalSample(id=i, epoch=e, input="q", target="t", scores={"match": Score(value="C" if e <= i else "I")})
               for i in range(1, 6) for e in range(1, 5)]
    log = EvalLog(eval=EvalSpec(created="2026-01-01T00:00:00", task="t", dataset=EvalDataset(name="d", samples=5),
                                model="m", config=EvalConfig()), status="success", samples=samples)
    write_eval_log(log, str(tmp_path / "t.eval"))
    scores = read_sample_scores(tmp_path / "t.eval").scores
    assert scores == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 5: 1.0}


def test_a_seed_interval_stays_within_the_scores_range():
    from cruijff.report.stats import seed_interval

    ci = seed_interval([1.0, 0.98, 0.7])  # unclipped: [0.44, 1.35]
    assert 0 <= ci.low and ci.high == 1.0


def _findings(sweep_dir) -> str:
    return (sweep_dir / "summary.md").read_text().split("## Findings")[1].split("\n## ")[0]


def test_a_task_clustered_by_passage_reports_its_clusters_and_a_wider_interval(tmp_path):
    """``cluster: passage`` on a task: its 60 samples are 12 passages of 5; the interval and the
    paired test are computed on what 12 passages can tell, and the Finding says so."""
    from cruijff.report import report_sweep
    from cruijff.report.stats import compare, score_interval

    # fine-tuning helps on whole passages: the discordant samples come 5 at a time
    base = [0] * 60
    ft = [1] * 15 + [0] * 45
    clustered = make_sweep(tmp_path / "c", {"a": {0: {"exact_match": ft}}}, {"exact_match": base},
                           eval_tasks=[{"name": "exact_match", "cluster": "passage"}], total=100)
    report_sweep(clustered)
    plain = make_sweep(tmp_path / "p", {"a": {0: {"exact_match": ft}}}, {"exact_match": base})
    report_sweep(plain)
    c, p = (pd.read_csv(d / "summary.csv").set_index("checkpoint") for d in (clustered, plain))
    assert c.loc["epoch_0", "clusters"] == 12 and pd.isna(p.loc["epoch_0", "clusters"])
    assert c.loc["epoch_0", "ci_high"] - c.loc["epoch_0", "ci_low"] > p.loc["epoch_0", "ci_high"] - p.loc["epoch_0", "ci_low"]
    assert c.loc["epoch_0", "p"] > p.loc["epoch_0", "p"] and c.loc["epoch_0", "test"] == "clustered McNemar"
    g = [f"p{i // 5}" for i in range(60)]
    ref = compare(base, ft, g)
    assert c.loc["epoch_0", "p"] == pytest.approx(ref.p_value)
    assert c.loc["epoch_0", "ci_low"] == pytest.approx(score_interval(ft, g).low)
    finding = _findings(clustered)
    assert "on 60 of 100 samples in 12 clusters (passage)" in finding, finding
    assert "on 60 samples;" in _findings(plain) or "on 60 samples" in _findings(plain)


def _mcnemar_power_by_enumeration(n, rate, gain, alpha=0.05):
    """The mid-p McNemar test's power on n pairs (right only before: ``rate``, only after:
    ``rate + gain``), over every (before-only, after-only) count pair of the trinomial."""
    from scipy.special import gammaln

    p_a, p_b = rate, rate + gain
    total = 0.0
    for a in range(n + 1):
        for b in range(n + 1 - a):
            m = a + b
            if m == 0:
                continue
            k = min(a, b)
            mid = 2 * stats.binom.cdf(k, m, 0.5) - stats.binom.pmf(k, m, 0.5)
            if mid < alpha:
                logp = (gammaln(n + 1) - gammaln(a + 1) - gammaln(b + 1) - gammaln(n - m + 1)
                        + a * np.log(p_a) + b * np.log(p_b) + (n - m) * np.log1p(-p_a - p_b))
                total += np.exp(logp)
    return total


def test_a_gain_that_is_not_significant_says_what_could_have_been_detected(tmp_path):
    """The minimum detectable gain of a 0/1 comparison is the gain at which McNemar's mid-p test
    itself has 80% power (checked here by enumerating every outcome); of other scores, a paired
    t-test's (statsmodels' TTestPower)."""
    import re

    from scipy import optimize
    from statsmodels.stats.power import TTestPower

    from cruijff.report import report_sweep

    base = [1, 0] * 30
    ft = [1, 0] * 27 + [0, 1] * 2 + [1, 1]  # 3 samples right only after, 2 only before
    sweep_dir = make_sweep(tmp_path / "binary", {"a": {0: {"exact_match": ft}}}, {"exact_match": base})
    report_sweep(sweep_dir)
    rate = 5 / 60 / 2
    mde = optimize.brentq(lambda g: _mcnemar_power_by_enumeration(60, rate, g) - 0.8, 0.0, 1 - 2 * rate, xtol=1e-5)
    finding = _findings(sweep_dir)
    said = re.search(r"not significant: with 60 samples and this spread of differences, a gain of (0\.\d{3}) would "
                     r"have been detected with 80% power at α = 0\.05 \(McNemar's mid-p, its exact power\)", finding)
    assert said and float(said.group(1)) == pytest.approx(mde, abs=2e-3), (finding, mde)
    assert "odds ratio" not in finding

    partial = [0.5, 0.25, 0.75, 0.5] * 15
    shifted = [0.5, 0.5, 0.5, 0.5] * 15
    sweep_dir = make_sweep(tmp_path / "partial", {"a": {0: {"exact_match": shifted}}}, {"exact_match": partial})
    report_sweep(sweep_dir)
    d = np.array(shifted) - np.array(partial)
    mde = TTestPower().solve_power(effect_size=None, nobs=60, alpha=0.05, power=0.8) * np.sqrt(np.mean(d ** 2))
    assert (f"a gain of {mde:.3f} would have been detected with 80% power at α = 0.05 (a paired t-test's power)"
            in _findings(sweep_dir))


def test_declared_comparisons_are_adjusted_across_tasks_the_rest_are_exploratory(tmp_path):
    """Two test tasks, each with its validation counterpart, two runs: each task's declared
    comparison is the run picked on validation, its p adjusted across the two tasks; the other
    run's comparison is exploratory, adjusted within its task."""
    from statsmodels.stats.multitest import multipletests

    from cruijff.report import report_sweep

    tasks = [{"name": "exact_match"}, {"name": "exact_match", "label": "val", "args": {"split": "validation"}},
             {"name": "t.py@other"}, {"name": "t.py@other", "label": "other_val", "args": {"split": "validation"}}]
    good, fair, poor = [1] * 40 + [0] * 20, [1] * 30 + [0] * 30, [1] * 20 + [0] * 40
    base = [0] * 10 + [1] * 10 + [0] * 40
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"exact_match": good, "val": good, "other": fair, "other_val": poor}},
                                      "b": {0: {"exact_match": fair, "val": poor, "other": good, "other_val": good}}},
                           {"exact_match": base, "val": base, "other": base, "other_val": base}, eval_tasks=tasks)
    report_sweep(sweep_dir)
    df = pd.read_csv(sweep_dir / "summary.csv")
    declared = df[df["role"] == "declared"].set_index("task")
    assert set(declared.index) == {"exact_match", "other"}
    assert declared.loc["exact_match", "run"] == "a" and declared.loc["other", "run"] == "b"
    ref = multipletests([declared.loc["exact_match", "p"], declared.loc["other", "p"]], method="holm")[1]
    assert declared.loc["exact_match", "p_holm"] == pytest.approx(ref[0])
    assert declared.loc["other", "p_holm"] == pytest.approx(ref[1])
    exploratory = df[(df["role"] == "exploratory") & (df["task"] == "exact_match")]
    assert list(exploratory["run"]) == ["b"] and exploratory["p_holm"].iloc[0] == pytest.approx(exploratory["p"].iloc[0])
    assert "Holm over 2 tasks" in _findings(sweep_dir)


def test_seeds_are_replicates_of_one_config_picked_by_their_mean(tmp_path):
    """Config x with three seeds has the best mean on validation, config y the best single seed:
    the Finding picks x, its score is the mean over its seeds, its gain is per seed, summarised."""
    from cruijff.report import report_sweep

    r = np.random.default_rng(11)
    base = (r.random(60) < 0.3).astype(int).tolist()

    def draw(p):
        return (r.random(60) < p).astype(int).tolist()

    runs, overrides = {}, {}
    for config, vals in (("x", (0.8, 0.8, 0.8)), ("y", (0.95, 0.4, 0.4))):
        for seed, v in zip((1, 2, 3), vals):
            name = f"{config}_seed{seed}"
            runs[name] = {0: {"exact_match": draw(0.7), "val": [1] * int(60 * v) + [0] * (60 - int(60 * v))}}
            overrides[name] = [f"opt={config}", f"seed={seed}"]
    tasks = [{"name": "exact_match"}, {"name": "exact_match", "label": "val", "args": {"split": "validation"}}]
    sweep_dir = make_sweep(tmp_path, runs, {"exact_match": base, "val": base}, eval_tasks=tasks, overrides=overrides)
    report_sweep(sweep_dir)
    df = pd.read_csv(sweep_dir / "summary.csv")
    declared = df[(df["role"] == "declared")]
    assert sorted(declared["run"]) == ["x_seed1", "x_seed2", "x_seed3"]
    finding = _findings(sweep_dir)
    mine = declared[declared["task"] == "exact_match"]
    assert "`opt-x` (3 seeds, mean) at epoch_0" in finding, finding
    assert f"scores {mine['score'].mean():.3f} [" in finding
    assert "(two-level bootstrap over 3 seeds and the samples; seeds' t-interval" in finding
    per_seed = ", ".join(f"{g:+.3f}" for g in mine["gain"])
    assert f"(per seed: {per_seed}; two-level bootstrap over seeds and samples: p < 0.001)" in finding


def test_a_classification_task_gets_per_class_metrics_and_a_confusion_matrix(tmp_path):
    """Targets from a small label set: the report gives the selected checkpoint's per-class
    precision, recall and F1 (scikit-learn's) and draws its confusion matrix."""
    from inspect_ai.log import EvalConfig, EvalDataset, EvalLog, EvalSample, EvalSpec, write_eval_log
    from inspect_ai.scorer import Score
    from sklearn.metrics import f1_score

    from cruijff.report import report_sweep

    labels = ["positive", "negative", "neutral"] * 20
    answers = {"base": ["negative"] * 60, "ft": [t if i % 4 else "positive" for i, t in enumerate(labels)]}
    right = {who: [int(a == t) for a, t in zip(answers[who], labels)] for who in answers}
    sweep_dir = make_sweep(tmp_path, {"a": {0: {"sentiment": right["ft"]}}}, {"sentiment": right["base"]})
    for who, cell in (("base", sweep_dir / "base" / "tiny_llama"), ("ft", sweep_dir / "a" / "eval" / "epoch_0")):
        samples = [EvalSample(id=i + 1, epoch=1, input=f"Review {i}", target=t,
                              scores={"match": Score(value="C" if a == t else "I", answer=a)})
                   for i, (t, a) in enumerate(zip(labels, answers[who]))]
        write_eval_log(EvalLog(eval=EvalSpec(created="2026-12-01T00:00:00+00:00", task="sentiment", model="hf/m",
                                             config=EvalConfig(), dataset=EvalDataset(name="d", samples=60)),
                               status="success", samples=samples), str(cell / "sentiment.eval"))
    report_sweep(sweep_dir)
    md = (sweep_dir / "summary.md").read_text()
    assert "Per class (selected checkpoint):" in md
    macro = f1_score(labels, answers["ft"], average="macro")
    assert f"macro-F1 {macro:.3f} [" in md
    assert (sweep_dir / "plots" / "confusion_sentiment.png").stat().st_size > 5000


def test_identical_seeds_do_not_make_a_zero_width_interval(tmp_path):
    """Two seeds that answer alike: the seeds' t-interval is a point, but the samples still bound
    the score; the Finding gives that interval."""
    from cruijff.report import report_sweep
    from cruijff.report.stats import score_interval

    same = [1] * 18 + [0] * 2
    runs = {f"s{k}": {0: {"exact_match": same}} for k in (1, 2)}
    sweep_dir = make_sweep(tmp_path, runs, {"exact_match": [0] * 20},
                           overrides={f"s{k}": ["x=1", f"seed={k}"] for k in (1, 2)})
    report_sweep(sweep_dir)
    ci = score_interval(same)
    finding = _findings(sweep_dir)
    assert f"scores {ci.text()} (over samples of the mean of 2 seeds, given these seeds) on 20 samples" in finding, finding


def test_what_cannot_carry_statistics_gets_none_and_says_why(tmp_path):
    """A score that is not the mean of its samples' scores (another metric or epoch reducer) gets
    no interval beside it; one cluster gets no test; a pick without a test cell keeps its Finding."""
    import json

    from cruijff.report import report_sweep

    sweep_dir = make_sweep(tmp_path / "metric", {"a": {0: {"exact_match": A1}}}, {"exact_match": BASE})
    results = sweep_dir / "a" / "eval" / "epoch_0" / "results.json"
    cell = json.loads(results.read_text())
    cell["tasks"]["exact_match"]["value"] = 0.95  # as a max reducer over epochs, or an F1 metric, would give
    results.write_text(json.dumps(cell))
    report_sweep(sweep_dir)
    row = pd.read_csv(sweep_dir / "summary.csv").set_index("checkpoint").loc["epoch_0"]
    assert pd.isna(row["ci_low"]) and pd.isna(row["p"])
    assert "scores 0.950; no interval or test: its score 0.950 is not the mean of its samples' scores" in _findings(sweep_dir)

    one = make_sweep(tmp_path / "one", {"a": {0: {"exact_match": [1] * 5}}}, {"exact_match": [0] * 5},
                     eval_tasks=[{"name": "exact_match", "cluster": "passage"}])
    report_sweep(one)
    assert "in 1 cluster (passage); +1.000 over the base model on the same samples; no test (one cluster" in _findings(one)

    tasks = [{"name": "exact_match"}, {"name": "exact_match", "label": "val", "args": {"split": "validation"}},
             {"name": "t.py@only_val", "args": {"split": "validation"}}]
    gone = make_sweep(tmp_path / "gone", {"a": {0: {"val": A1, "exact_match": A0, "only_val": A0}},
                                          "b": {0: {"val": A0, "exact_match": A1}}},
                      {"exact_match": BASE, "val": BASE, "only_val": BASE}, eval_tasks=tasks)
    (gone / "a" / "eval" / "epoch_0" / "exact_match.eval").unlink()
    cell = json.loads((gone / "a" / "eval" / "epoch_0" / "results.json").read_text())
    del cell["tasks"]["exact_match"]
    (gone / "a" / "eval" / "epoch_0" / "results.json").write_text(json.dumps(cell))
    report_sweep(gone)
    finding = _findings(gone)
    assert "`a` at epoch_0 was selected on val (validation), but it has no score on exact_match" in finding
    assert "only_val" not in finding  # a validation split without a test task is no finding


def test_a_seed_that_did_not_reach_a_checkpoint_cannot_win_the_pick_alone(tmp_path):
    """Config x's epoch_1 was reached by one of its three seeds, with a lucky validation score: the
    pick ranks only checkpoints all of a config's seeds reached."""
    from cruijff.report import report_sweep

    good, lucky, fair = [1] * 45 + [0] * 15, [1] * 60, [1] * 40 + [0] * 20
    runs = {f"x_seed{k}": {0: {"exact_match": fair, "val": good}} for k in (1, 2, 3)}
    runs["x_seed1"][1] = {"exact_match": fair, "val": lucky}
    overrides = {f"x_seed{k}": ["opt=x", f"seed={k}"] for k in (1, 2, 3)}
    sweep_dir = make_sweep(tmp_path, runs, {"exact_match": BASE, "val": BASE},
                           eval_tasks=[{"name": "exact_match"},
                                       {"name": "exact_match", "label": "val", "args": {"split": "validation"}}],
                           overrides=overrides)
    report_sweep(sweep_dir)
    assert "`opt-x` (3 seeds, mean) at epoch_0, selected on val" in _findings(sweep_dir)


def test_unequal_clusters_are_not_capped_at_n_over_g():
    """One passage of 50 samples and ten of one: the design effect is what the cluster-robust
    variance says (statsmodels), not capped at n / G."""
    import statsmodels.api as sm

    from cruijff.report.stats import design_effect

    g = np.array([0] * 50 + list(range(1, 11)))
    x = np.array([1.0] * 50 + [0.0] * 8 + [1.0] * 2)  # the big passage all right, most single ones wrong
    fit = sm.OLS(x, np.ones(len(x))).fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
    ratio = fit.bse[0] ** 2 / (np.mean((x - x.mean()) ** 2) / len(x))
    assert ratio > len(x) / 11  # above the equal-size cap
    assert design_effect(x, g) == pytest.approx(ratio)
