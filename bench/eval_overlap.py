"""When do a sweep's evals start on SLURM: as each run finishes, or after the whole grid?

    scripts/slurm-cluster start && eval "$(scripts/slurm-cluster env)"
    python bench/eval_overlap.py [--runs 4] [--parallel 1]

The same grid of tiny-model runs (1 epoch, 40 eval samples) goes through the real controller twice,
with the array throttled to `--parallel` tasks at once (a grid larger than the share a group may
use at once, the usual case on a shared cluster):
- `cluster.eval_after=run` (the default): a run's eval job is submitted the moment its task ends,
  and runs while later tasks train;
- `cluster.eval_after=grid` (the anchor, measured in the same run): evals are submitted after the
  last task ends.
Printed: the command's wall time for each, and the anchor / ours ratio.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}


def sweep(work: Path, mode: str, runs: int, parallel: int) -> float:
    lrs = ",".join(f"{1 + i}e-3" for i in range(runs))
    cmd = [sys.executable, str(ROOT / "launch.py"), "-m", f"experiment.name=overlap-{mode}", "cluster=slurm",
           "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=1",
           f"cluster.max_parallel={parallel}", f"cluster.eval_after={mode}", "training.epochs=1",
           "eval.limit=40", f"optimizer.lr={lrs}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"eval_after={mode} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-c", "from cruijff import assets; assets.tiny_model_dir()"],
                       check=True, env=ENV)  # warm the asset cache outside the timings
        anchor = sweep(work, "grid", args.runs, args.parallel)
        ours = sweep(work, "run", args.runs, args.parallel)
    print(f"{args.runs} runs, {args.parallel} array task(s) at once, 1 epoch, 40 eval samples per task")
    print(f"evals after the grid (eval_after=grid, anchor): {anchor:6.1f} s")
    print(f"evals as runs finish (eval_after=run, ours):    {ours:6.1f} s")
    print(f"ratio anchor / ours: {anchor / ours:.2f}x")


if __name__ == "__main__":
    main()
