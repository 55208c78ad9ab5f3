"""Planning a 1000-run sweep: `python launch.py -m dry_run=true <10 x 10 x 10 grid>`, with the
cost estimates (steps, tokens, hours, disk) of every run; and a 10,000-run one, the same ranks and
learning rates over 100 seeds with `training=smoke` (its table a summary; with `full_table=true` too).

    python bench/plan.py [--anchor-points 1000] [--runs 1000 10000]

Anchor, measured in the same run: Hydra's own basic sweeper and basic launcher on the 1000-run grid
(`hydra/sweeper=basic hydra/launcher=basic`), which composes every job's config through Hydra and
runs each job (here a dry run that validates and prints). With --anchor-points < 1000 the anchor
runs a slice of the grid; it is scaled per job to 1000 and to 10,000 jobs.
Goals: ours <= 5 s for 1000 runs, <= 20 s for 10,000.
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
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
RANKS = "1,2,3,4,5,6,7,8,9,10"
LRS = "1e-5,2e-5,5e-5,1e-4,2e-4,5e-4,1e-3,2e-3,5e-3,1e-2"
SEEDS = "1,2,3,4,5,6,7,8,9,10"


def timed(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--anchor-points", type=int, default=1000, help="grid points for Hydra's sweeper")
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10000], choices=[1000, 10000])
    args = parser.parse_args()
    grid = [f"peft.lora_rank={RANKS}", f"optimizer.lr={LRS}", f"seed={SEEDS}"]
    big = [*grid[:2], f"seed={','.join(str(s) for s in range(1, 101))}", "training=smoke"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # the first plan of a model computes its parameter counts (importing torchtune) and caches
        # them; a fresh cache dir for the model counts makes that the measured case
        cold_env = {**ENV, "CRUIJFF_CACHE": str(work / "cache")}
        subprocess.run([sys.executable, "-c", "from cruijff import assets; assets.tiny_model_dir(); assets.capitalization_file()"],
                       env=cold_env, check=True, capture_output=True)  # the tiny model itself, not timed
        lines = []
        if 1000 in args.runs:
            first, out = timed(["-m", "dry_run=true", *grid], work, cold_env)
            ours, out = timed(["-m", "dry_run=true", *grid], work, cold_env)
            assert "1000 runs" in out and "GPU-hours" in out, out[-500:]
            lines += [f"plan 1000 runs with estimates, first plan of the model: {first:7.2f} s (parameter counts computed)",
                      f"plan 1000 runs, ours (grid sweeper, dry run):     {ours:7.2f} s   (goal <= 5 s)"]
        if 10000 in args.runs:
            ours_10k, out = timed(["-m", "dry_run=true", *big], work, cold_env)
            assert "10000 runs" in out and "9990 rows not shown" in out, out[-500:]
            full_10k, out = timed(["-m", "dry_run=true", "full_table=true", *big], work, cold_env)
            assert "rank5_lr1e-4_seed50_training-smoke" in out, out[-500:]
            lines += [f"plan 10000 runs, ours (10 x 10 x 100, training=smoke): {ours_10k:7.2f} s   (goal <= 20 s)",
                      f"plan 10000 runs, ours, full_table=true (every row): {full_10k:7.2f} s"]
        assert not (work / "outputs").exists(), "a dry run wrote files"
        n_seeds = max(1, min(10, args.anchor_points // 100))
        anchor_grid = grid[:2] + [f"seed={','.join(SEEDS.split(',')[:n_seeds])}"]
        anchor, _ = timed(["-m", "hydra/sweeper=basic", "hydra/launcher=basic", "dry_run=true",
                           *anchor_grid], work)
        per_job = anchor / (100 * n_seeds)
    for line in lines:
        print(line)
    print(f"anchor: Hydra basic sweeper + launcher, {100 * n_seeds:4d} runs: {anchor:7.2f} s"
          + (f" -> {per_job * 1000:.1f} s per 1000" if n_seeds < 10 else "") + f", {per_job * 10000:.0f} s per 10000")
    if 1000 in args.runs:
        print(f"ratio anchor / ours, 1000 runs: {per_job * 1000 / ours:.1f}x faster")
    if 10000 in args.runs:
        print(f"ratio anchor / ours, 10000 runs: {per_job * 10000 / ours_10k:.1f}x faster")


if __name__ == "__main__":
    main()
