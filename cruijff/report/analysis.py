"""What a sweep's scores say, with their uncertainty: per cell a 95% interval, per checkpoint the
paired gain over its base control (bootstrap interval, McNemar's exact p, Holm-adjusted over the
checkpoints of a task), means over seeds, and the pick of the best checkpoint made on validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import run_name
from .samples import SampleScores
from .stats import compare, holm, mean_interval, paired, seed_interval

if TYPE_CHECKING:
    import pandas as pd

SEED_KEY = re.compile(r"^\+*seed=")


def with_statistics(scores: "pd.DataFrame", samples: SampleScores) -> "pd.DataFrame":
    """The scores table (one row per run x checkpoint x task) with each cell's interval and, for a
    run's checkpoint, its paired gain over the base control of its model."""
    if scores.empty:
        return scores
    df = scores.copy()
    per_sample = [samples.get(log) for log in df["log"]]
    cols: dict[str, list] = {k: [] for k in ("n", "ci_low", "ci_high", "gain", "gain_low", "gain_high", "p")}
    base_rows = {(r.base, r.task): i for i, r in enumerate(df.itertuples()) if r.run == "base"}
    keys = df["samples_key"] if "samples_key" in df else [None] * len(df)
    unpaired = []
    for i, r in enumerate(df.itertuples()):
        x = per_sample[i]
        ci = mean_interval(list(x.values())) if x else None
        cols["n"].append(len(x) if x else None)
        cols["ci_low"].append(ci.low if ci else None)
        cols["ci_high"].append(ci.high if ci else None)
        b = base_rows.get((r.base, r.task))
        if r.run != "base" and b is not None and not same_samples(keys[b], keys[i]):
            unpaired.append(f"{r.run}/{r.checkpoint} and base/{r.base} on {r.task}")
            b = None
        if r.run == "base" or b is None or not x or not per_sample[b]:
            for k in ("gain", "gain_low", "gain_high", "p"):
                cols[k].append(None)
            continue
        a, y = paired(per_sample[b], x)
        c = compare(a, y)
        cols["gain"].append(c.diff.value)
        cols["gain_low"].append(c.diff.low)
        cols["gain_high"].append(c.diff.high)
        cols["p"].append(c.p_value)
    for k, v in cols.items():
        df[k] = v
    df.attrs["unpaired"] = unpaired
    df["p_holm"] = None
    for task, idx in df[df["run"] != "base"].groupby("task").groups.items():
        adjusted = holm([df.at[i, "p"] for i in idx])
        for i, p in zip(idx, adjusted):
            df.at[i, "p_holm"] = p
    return df


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


@dataclass
class Pick:
    task: str
    run: str
    checkpoint: str
    by: str            # the task the pick was made on: its validation counterpart, or itself
    on_validation: bool
    row: Any           # the picked checkpoint's row of the test task


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


def picks(df: "pd.DataFrame", validation: dict[str, str]) -> list[Pick]:
    """Per test task, the best (run, checkpoint): picked on its validation task where there is
    one, else on the test scores themselves (said so beside it)."""
    runs = df[df["run"] != "base"]
    out = []
    for task in sorted(set(runs["task"]) - set(validation.values())):
        by = validation.get(task, task)
        pool = runs[runs["task"] == by]
        if pool.empty:
            continue
        best = pool.sort_values(["score", "epoch"], ascending=[False, True]).iloc[0]
        match = runs[(runs["task"] == task) & (runs["run"] == best["run"]) & (runs["checkpoint"] == best["checkpoint"])]
        if match.empty:
            continue
        out.append(Pick(task, best["run"], best["checkpoint"], by, by != task, match.iloc[0]))
    return out
