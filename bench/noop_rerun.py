"""Re-running a finished sweep: `python launch.py -m` again on a finished 4-run grid.

    python bench/noop_rerun.py

Builds a finished 4-run sweep of the tiny model (1 epoch each, evaluated), then times the same
command again, and counts the jobs it submitted (submitit job dirs before/after). Anchor, measured
in the same run: the same re-run through Hydra's basic sweeper, which hands every grid point to
the launcher, so every job starts, finds its run finished and skips itself.
Goal: <= 3 s, 0 jobs submitted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}
GRID = ["-m", "experiment.name=bench", "training.epochs=1", "eval.limit=20",
        "peft.lora_rank=8,16", "optimizer.lr=1e-3,3e-3"]


def timed(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def jobs(sweep_dir: Path) -> int:
    return sum(1 for p in (sweep_dir / ".submitit").rglob("*_submitted.pkl"))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sweep_dir = work / "outputs" / "bench"
        first = timed(GRID, work)
        n0 = jobs(sweep_dir)
        ours = timed(GRID, work)
        n1 = jobs(sweep_dir)
        anchor = timed(GRID + ["hydra/sweeper=basic"], work)
        n2 = jobs(sweep_dir)
    print(f"first run of the 4-run sweep (fine-tune + eval):  {first:6.1f} s, {n0} jobs")
    print(f"no-op re-run, ours:                               {ours:6.2f} s, {n1 - n0} jobs submitted"
          "   (goal <= 3 s, 0 jobs)")
    print(f"anchor: every job submitted and skipping itself:  {anchor:6.2f} s, {n2 - n1} jobs submitted")
    print(f"ratio anchor / ours: {anchor / ours:.1f}x faster")


if __name__ == "__main__":
    main()
