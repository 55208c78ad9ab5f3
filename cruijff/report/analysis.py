"""What a sweep's scores say, with their uncertainty.

- Per cell: n (of N where ``eval.limit`` took a part), its clusters, a 95% interval.
- Per fine-tuned checkpoint: its paired gain over the base control of its model, with an
  interval and the test that agrees with it (:mod:`.stats`).
- Configs: runs that differ only in ``seed`` are one config, its seeds replicates.
- Findings: per test task, one declared comparison — the config and checkpoint picked on the
  task's validation counterpart (by the mean over seeds) against the base — Holm-adjusted across
  tasks; with a minimum detectable gain where it is not significant and an effect size where it
  is. Every other checkpoint's comparison is exploratory, Holm-adjusted within its task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import run_name, task_specs
from ..records import SweepPlan
from .samples import LogSamples, SampleScores
from .stats import (ALPHA, Comparison, Interval, cluster_labels, compare, holm, minimum_detectable, paired,
                    sample_order, score_interval, seed_interval, two_level_bootstrap)

if TYPE_CHECKING:
    import pandas as pd

SEED_KEY = re.compile(r"^\+*seed=")


@dataclass
class Scored:
    """The report's scores table (one row per run x checkpoint x task, base controls as run
    ``base``) with each row's statistics, and what they were computed from."""

    df: "pd.DataFrame"
    samples: list[LogSamples]               # per row: its log's samples
    clusters: dict[str, str]                 # task label -> the metadata field its samples cluster by
    comparisons: list[Comparison | None] = field(default_factory=list)  # per row: its gain over its base
    unpaired: list[str] = field(default_factory=list)
    without: dict[str, str] = field(default_factory=dict)  # cell and task -> why it has no statistics
    no_cluster: list[str] = field(default_factory=list)  # tasks whose cluster field no sample has

    def base_row(self, i: int) -> int | None:
        r = self.df.iloc[i]
        hits = self.df.index[(self.df["run"] == "base") & (self.df["base"] == r["base"]) & (self.df["task"] == r["task"])]
        return int(self.df.index.get_loc(hits[0])) if len(hits) else None

    def cluster_ids(self, i: int) -> dict | None:
        return self.samples[i].clusters(self.clusters.get(self.df.iloc[i]["task"]))


def with_statistics(scores: "pd.DataFrame", samples: SampleScores, clusters: dict[str, str] | None = None) -> Scored:
    """Each row's n, N, clusters and interval, and for a run's checkpoint its paired gain over the
    base control of its model (interval, p-value and the test's name)."""
    clusters = clusters or {}
    if scores.empty:
        return Scored(scores, [], clusters)
    df = scores.reset_index(drop=True).copy()
    per_row = [samples.get(log) for log in df["log"]]
    out = Scored(df, per_row, clusters)
    cols: dict[str, list] = {k: [] for k in ("n", "of", "clusters", "ci_low", "ci_high", "gain", "gain_low",
                                              "gain_high", "p", "test")}
    base_rows = {(r.base, r.task): i for i, r in enumerate(df.itertuples()) if r.run == "base"}
    keys = df["samples_key"] if "samples_key" in df else [None] * len(df)
    missing_field = set()
    for i, r in enumerate(df.itertuples()):
        x = per_row[i].scores
        why = _no_statistics(r.score, per_row[i])
        if why:
            out.without[f"{r.run}/{r.checkpoint} on {r.task}"] = why
            per_row[i], x = LogSamples(), {}
        elif per_row[i].unscored:
            out.without[f"{r.run}/{r.checkpoint} on {r.task}"] = (
                f"{per_row[i].unscored} answer{'s' if per_row[i].unscored > 1 else ''} without a score (none, or "
                "NaN) left out of its n, interval and tests")
        groups = out.cluster_ids(i)
        if clusters.get(r.task) and x and groups is None:
            missing_field.add(r.task)
        ids = sample_order(x)
        g = cluster_labels(groups, ids)
        ci = score_interval([x[k] for k in ids], g) if x else None
        cols["n"].append(len(x) if x else None)
        cols["of"].append(per_row[i].total)
        cols["clusters"].append(len(set(g)) if g is not None else None)
        cols["ci_low"].append(ci.low if ci else None)
        cols["ci_high"].append(ci.high if ci else None)
        b = base_rows.get((r.base, r.task))
        if r.run != "base" and b is not None and not same_samples(keys[b], keys[i]):
            out.unpaired.append(f"{r.run}/{r.checkpoint} and base/{r.base} on {r.task}")
            b = None
        c = None
        if r.run != "base" and b is not None and x and per_row[b].scores:
            c = compare(*paired(per_row[b].scores, x, groups))
        out.comparisons.append(c)
        cols["gain"].append(c.diff.value if c else None)
        cols["gain_low"].append(c.diff.low if c else None)
        cols["gain_high"].append(c.diff.high if c else None)
        cols["p"].append(c.p_value if c else None)
        cols["test"].append(c.test if c else None)
    for k, v in cols.items():
        df[k] = v
    df["role"] = [None if r == "base" else "exploratory" for r in df["run"]]
    df["p_holm"] = None
    out.no_cluster = sorted(missing_field)
    return out


def sweep_task_specs(sweep_dir) -> list:
    """The eval tasks of a sweep's plan (none for a dir without one)."""
    plan = SweepPlan.of(sweep_dir)
    return task_specs((plan.eval if plan else {}).get("tasks"))


def _no_statistics(score: Any, samples: LogSamples) -> str | None:
    """Why a cell's per-sample scores cannot carry its score's interval and tests, if they cannot:
    its scorer gives several values per sample, or its score is not their mean (another metric
    or epoch reducer) — an interval of the mean would not hold the score it is printed beside."""
    if samples.problem:
        return samples.problem
    x = samples.scores
    if not x or score is None or score != score:
        return None
    mean = sum(x.values()) / len(x)
    if abs(float(score) - mean) > 1e-6:
        return (f"its score {float(score):.3f} is not the mean of its samples' scores ({mean:.3f}): its metric or "
                "epoch reducer is another")
    return None


def same_samples(a: Any, b: Any) -> bool:
    """Whether two cells scored the same samples (ids and inputs), as their tasks' samples keys say;
    cells that recorded none (written before) are taken at their ids."""
    if a is None or b is None or a != a or b != b:  # None or NaN
        return True
    return a == b


def seed_groups(plan) -> dict[str, list[str]]:
    """Runs that differ only in ``seed``: a group's name is its run name without the seed."""
    groups: dict[str, list[str]] = {}
    for r in plan:
        rest = [o for o in r.overrides if not SEED_KEY.match(o)]
        if len(rest) == len(r.overrides):
            continue  # no seed override: a group of itself
        groups.setdefault(run_name(rest), []).append(r.name)
    return {g: names for g, names in groups.items() if len(names) >= 2}


def over_seeds(df: "pd.DataFrame", groups: dict[str, list[str]], seeds: dict[str, Any]) -> "pd.DataFrame":
    """Per seed group, epoch and task: the mean over seeds with its t-interval, and each seed's value."""
    import pandas as pd

    rows = []
    for group, names in groups.items():
        sub = df[df["run"].isin(names)]
        for (epoch, task), g in sub.groupby(["epoch", "task"]):
            ci = seed_interval(g["score"].tolist())
            each = ", ".join(f"{seeds.get(n, n)}: {v:.3f}" for n, v in zip(g["run"], g["score"]))
            rows.append({"group": group, "epoch": epoch, "task": task, "seeds": len(g), "mean": ci.value,
                         "t_low": ci.low, "t_high": ci.high, "per_seed": each})
    return pd.DataFrame(rows)


def validation_of(specs) -> dict[str, str]:
    """Test task label -> the label of its validation counterpart: the same task with the same
    arguments but ``split: validation``."""
    out = {}
    for t in specs:
        if t.args.get("split", "test") != "test":
            continue
        for v in specs:
            if v.name == t.name and v.args.get("split") == "validation" and \
                    {k: x for k, x in v.args.items() if k != "split"} == {k: x for k, x in t.args.items() if k != "split"}:
                out[t.label] = v.label
    return out


@dataclass
class Finding:
    """One test task's declared comparison: the picked config at the picked checkpoint against
    the base model, on the test task's samples."""

    task: str
    config: str                   # the run, or the seed group
    runs: list[str]               # its runs: one, or one per seed
    checkpoint: str
    by: str                       # the task the pick was made on: its validation counterpart, or itself
    on_validation: bool
    score: Interval               # the cell's interval, or the mean over seeds with its interval
    score_method: str | None = None           # how a seed group's interval was made (see _finding)
    seeds: Interval | None = None             # a seed group's t-interval over its seeds' scores
    n: int | None = None
    of: int | None = None         # the task's dataset size, where eval.limit took a part
    clusters: int | None = None
    cluster_key: str | None = None
    comparison: Comparison | None = None      # against the base, per sample (seed-averaged for a group)
    gain: Interval | None = None
    per_seed_gain: list[float] = field(default_factory=list)
    p: float | None = None
    test: str | None = None
    p_holm: float | None = None   # adjusted across the tasks' declared comparisons
    family: int = 1               # how many declared comparisons the adjustment is over
    mde: float | None = None      # the gain a test at level ALPHA / family finds with 80% power
    rows: list[int] = field(default_factory=list)   # the picked cells' rows of the test task
    tied: int = 0                 # other (config, checkpoint)s with the same score where it was picked
    seeds_planned: int = 1        # the config's runs in the plan (its seeds)
    why: str | None = None        # why the picked cell has no statistics

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


def configs(df: "pd.DataFrame", groups: dict[str, list[str]]) -> dict[str, str]:
    """Run -> its config: its seed group, or itself."""
    of = {run: g for g, runs in groups.items() for run in runs}
    return {run: of.get(run, run) for run in set(df["run"]) - {"base"}}


def selected_checkpoints(df: "pd.DataFrame", validation: dict[str, str], task: str) -> dict[str, str]:
    """Per run, the checkpoint its validation score picks for ``task`` (the earliest of equals);
    without a validation task, its last checkpoint."""
    by = validation.get(task)
    runs = df[(df["run"] != "base") & (df["task"] == (by or task))]
    out = {}
    for run, g in runs.groupby("run"):
        best = g.sort_values(["score", "epoch"], ascending=[False, True]).iloc[0] if by else \
            g.sort_values("epoch").iloc[-1]
        out[run] = best["checkpoint"]
    return out


def findings(scored: Scored, validation: dict[str, str], groups: dict[str, list[str]],
             skip: set[str] | frozenset = frozenset()) -> list[Finding]:
    """Per test task, the declared comparison (see the module's docstring), Holm-adjusted across
    tasks; the scores table's ``role`` and ``p_holm`` then say which rows are declared and adjust
    every other checkpoint's p within its task (exploratory). ``skip``: tasks that are no test task
    (a validation split without a test counterpart). A config is ranked at a checkpoint only where
    all of its seeds that were evaluated on the validation task reached it."""
    df = scored.df
    if df.empty:
        return []
    config_of = configs(df, groups)
    runs = df[df["run"] != "base"].assign(config=lambda d: d["run"].map(config_of))
    out: list[Finding] = []
    for task in sorted(set(runs["task"]) - set(validation.values()) - set(skip)):
        by = validation.get(task, task)
        pool = runs[runs["task"] == by]
        if pool.empty:
            continue
        seeds = pool.groupby("config")["run"].nunique()
        means = pool.groupby(["config", "checkpoint"]).agg(score=("score", "mean"), epoch=("epoch", "first"),
                                                           runs=("run", "nunique")).reset_index()
        means = means[means["runs"] == means["config"].map(seeds)]  # no mean of fewer seeds beats one of all
        ranked = means.sort_values(["score", "epoch", "config"], ascending=[False, True, True])
        best = ranked.iloc[0]
        picked = runs[(runs["task"] == task) & (runs["config"] == best["config"]) & (runs["checkpoint"] == best["checkpoint"])]
        planned = len(groups.get(best["config"], [best["config"]]))
        if picked.empty:
            f = Finding(task, best["config"], [], best["checkpoint"], by, by != task,
                        Interval(float("nan"), float("nan"), float("nan"), "none"), seeds_planned=planned)
        else:
            f = _finding(scored, task, best["config"], best["checkpoint"], by, by != task, list(picked.index))
            f.seeds_planned = planned
        f.tied = int((ranked["score"] == best["score"]).sum()) - 1
        out.append(f)
    adjusted = holm([f.p for f in out])
    family = sum(1 for f in out if f.p is not None and f.p == f.p)
    declared = set()
    for f, p in zip(out, adjusted):
        f.p_holm, f.family = p, max(family, 1)
        if f.comparison is not None and not f.significant:
            f.mde = minimum_detectable(f.comparison, ALPHA / f.family)
        for i in f.rows:
            declared.add(i)
            df.at[i, "role"] = "declared"
            df.at[i, "p_holm"] = p if len(f.rows) == 1 else None
    for task, idx in df[(df["run"] != "base")].groupby("task").groups.items():
        rest = [i for i in idx if i not in declared]
        for i, p in zip(rest, holm([df.at[i, "p"] for i in rest])):
            df.at[i, "p_holm"] = p
    return out


def _finding(scored: Scored, task: str, config: str, checkpoint: str, by: str, on_validation: bool,
             rows: list[int]) -> Finding:
    df = scored.df
    first = df.loc[rows[0]]
    f = Finding(task, config, [df.at[i, "run"] for i in rows], checkpoint, by, on_validation,
                score=Interval(float(first["score"]), float(first["ci_low"] if first["ci_low"] is not None else "nan"),
                               float(first["ci_high"] if first["ci_high"] is not None else "nan"), "cell"),
                n=_int(first["n"]), of=_int(first["of"]), clusters=_int(first["clusters"]),
                cluster_key=scored.clusters.get(task) if first["clusters"] is not None and first["clusters"] == first["clusters"] else None,
                rows=rows)
    f.why = scored.without.get(f"{first['run']}/{checkpoint} on {task}") if first["n"] is None or \
        first["n"] != first["n"] else None
    if len(rows) == 1:  # the row's own comparison with its base
        f.comparison = scored.comparisons[rows[0]]
        if f.comparison is not None:
            f.gain, f.p, f.test = f.comparison.diff, f.comparison.p_value, f.comparison.test
        return f
    base = scored.base_row(rows[0])
    base_scores = scored.samples[base].scores if base is not None and first["gain"] is not None \
        and first["gain"] == first["gain"] else None
    groups = scored.cluster_ids(rows[0])
    # a config of several seeds: its score is their mean, with an interval that holds the seeds'
    # spread and the samples' (a two-level bootstrap from 3 seeds; with 2, or where the bootstrap
    # has no spread to resample, the interval over samples of the seed-averaged scores); its gain
    # over the base, each seed's gain (on the samples every seed and the base answered) summarised
    f.seeds = seed_interval([float(df.at[i, "score"]) for i in rows])
    f.score = f.seeds
    per_seed = [scored.samples[i].scores for i in rows]
    common = set.intersection(*(set(s) for s in per_seed))
    if base_scores:
        common &= set(base_scores)
    ids = sample_order(common)
    if not ids:
        return f
    matrix = np.array([[s[k] for k in ids] for s in per_seed], dtype=float)
    g = cluster_labels(groups, ids)
    f.score = score_interval(matrix.mean(axis=0), g)
    f.score_method = f"over samples of the mean of {len(rows)} seeds, given these seeds"
    if len(rows) >= 3:
        boot, _ = two_level_bootstrap(matrix, None, g)
        if boot.high > boot.low:
            f.score, f.score_method = boot, f"two-level bootstrap over {len(rows)} seeds and the samples"
    if not base_scores:
        return f
    base_arr = np.array([base_scores[k] for k in ids], dtype=float)
    f.per_seed_gain = [float(v) for v in (matrix - base_arr).mean(axis=1)]
    f.comparison = compare(base_arr, matrix.mean(axis=0), g)
    f.gain, f.p, f.test = (f.comparison.diff, f.comparison.p_value,
                           f.comparison.test + " on the mean over seeds, given these seeds")
    if len(rows) >= 3:
        boot, p = two_level_bootstrap(matrix, base_arr, g)
        if boot.high > boot.low:
            f.gain, f.p, f.test = boot, p, "two-level bootstrap over seeds and samples"
    return f


def _int(v) -> int | None:
    return None if v is None or v != v else int(v)
