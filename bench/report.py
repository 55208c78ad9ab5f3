"""The sweep report with its statistics, against the floor of any per-sample report.

    python bench/report.py [--runs 100] [--epochs 3] [--tasks 2] [--samples 1000]

Writes a synthetic sweep of inspect logs (100 runs x 3 epochs x 2 tasks x 1000 samples of 0/1
scores, plus the base control) — a pool of distinct logs written with inspect's own log API
(``--pool``, 1.5 s each here), each cell a copy of one drawn at random, since writing 602 logs
would take longer than everything measured — then times
- the floor, measured in the same run: reading every log's per-sample scores with inspect's API
  alone (``read_eval_log_sample_summaries``: each sample's scores, without
  its messages — the fastest per-sample read inspect has, and what ``samples_df`` uses), no statistics;
- ours: ``python -m cruijff report`` on the sweep — every interval, paired test and Holm
  adjustment, the tables and plots — from cold (no sample cache), and again on the unchanged logs.
Prints both, the ratio (goal <= 1.5) and how many logs the second report read (goal 0).

``--repeat N`` (default 3) times the floor and the cold report N times each, alternately (the
sample cache removed before each cold report), and compares the fastest of each: on a shared
machine another process's load lands on one measurement or the other, and the minimum is the
time the work itself takes. Every measurement is printed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from cruijff.report.samples import CACHE  # the sample cache's file name, whatever its version  # noqa: E402


def build(sweep_dir: Path, runs: int, epochs: int, tasks: int, samples: int, pool: int) -> list[str]:
    import numpy as np
    from test_stats import write_log  # the tests' writer: inspect's EvalLog + write_eval_log

    from cruijff.records import CellResults, PlannedRunRecord, RunState, RunStatus, SweepPlan, TaskResult

    rng = np.random.default_rng(0)
    labels = [f"task{t}" for t in range(tasks)]
    originals = []  # (path, mean) per distinct log, accuracies spread over 0.3..0.8
    for i in range(pool):
        p = 0.3 + 0.5 * i / max(pool - 1, 1)
        scores = (rng.random(samples) < p).astype(int)
        originals.append((write_log(sweep_dir / ".pool" / f"{i}.eval", scores.tolist(), "task"), float(scores.mean())))
    logs: list[str] = []

    def cell(path: Path, which: int | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        results = {}
        for label in labels:
            source, mean = originals[int(rng.integers(pool)) if which is None else which]
            log = str(path / f"{label}.eval")
            shutil.copyfile(source, log)
            logs.append(log)
            results[label] = TaskResult("success", log, label, "accuracy", mean, samples)
        CellResults(model="m", tasks=results, metadata={"base_cell": "tiny_llama"}).save(path)

    cell(sweep_dir / "base" / "tiny_llama", which=0)
    plan = []
    for r in range(runs):
        name = f"run{r}"
        for e in range(epochs):
            cell(sweep_dir / name / "eval" / f"epoch_{e}")
        RunState(RunStatus.FINISHED, name=name, checkpoints=[f"epoch_{e}" for e in range(epochs)]).save(sweep_dir / name)
        plan.append(PlannedRunRecord(name, [f"optimizer.lr={r}"]))
    SweepPlan("bench", runs=plan, eval={"tasks": [{"name": f"x.py@{label}"} for label in labels]}).save(sweep_dir)
    return logs


FLOOR = """
import sys
from inspect_ai.log import read_eval_log_sample_summaries
n = 0
for log in open(sys.argv[1]).read().split():
    for s in read_eval_log_sample_summaries(log):
        n += len(s.scores or {})
print(n)
"""


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=12, help="distinct logs written (each cell copies one)")
    parser.add_argument("--repeat", type=int, default=3, help="times each of floor and cold report (fastest compared)")
    args = parser.parse_args()
    report = [sys.executable, "-m", "cruijff", "report"]
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "bench"
        t0 = time.perf_counter()
        logs = build(sweep_dir, args.runs, args.epochs, args.tasks, args.samples, args.pool)
        print(f"synthetic sweep: {len(logs)} logs x {args.samples} samples written in {time.perf_counter() - t0:.1f} s")
        listing = Path(tmp) / "logs.txt"
        listing.write_text("\n".join(logs))
        cache = sweep_dir / CACHE
        floors, colds, warms = [], [], []
        for _ in range(max(args.repeat, 1)):
            floor, out = timed([sys.executable, "-c", FLOOR, str(listing)])
            assert int(out) == len(logs) * args.samples, out
            floors.append(floor)
            cache.unlink(missing_ok=True)  # cold: every log read
            cold, _ = timed(report + [str(sweep_dir)])
            colds.append(cold)
        before = cache.stat().st_mtime_ns
        for _ in range(max(args.repeat, 1)):
            warm, _ = timed(report + [str(sweep_dir)])
            warms.append(warm)
        reread = "0 logs read again" if cache.stat().st_mtime_ns == before else "logs were read again"

    def each(ts: list[float]) -> str:
        return f"{min(ts):7.2f} s" + (f"   (each: {', '.join(f'{t:.1f}' for t in ts)})" if len(ts) > 1 else "")

    print(f"floor: per-sample scores through inspect's API alone:  {each(floors)}")
    print(f"ours: report with every interval and paired test:       {each(colds)}")
    print(f"ratio ours / floor: {min(colds) / min(floors):.2f}   (goal <= 1.5)")
    print(f"report on unchanged logs (warm cache):                  {each(warms)}, {reread}   (goal: 0 logs read)")


if __name__ == "__main__":
    main()
