"""Successive halving (``early_stop=halving``) against the full grid, in the same run: a 9-run grid
(3 learning rates, 1e-6 too small to learn anything, x 3 LoRA ranks) x 3 epochs on the tiny model,
locally. Prints the epochs trained by each (the GPU-hours proxy; the anchor is the full grid's),
their wall times, and whether the halving sweep's validation pick is the full grid's (the same run
and checkpoint, or a score within the full grid's pick's 95% interval).

    python bench/halving.py [--steps 16] [--limit 100] [--eta 3]

The defaults score every validation and test sample (eval.limit=100) after 16 steps an epoch: at 8
steps an epoch, 1e-2 leads after the first epoch and 3e-3 only later, and halving keeps the
early leader (its pick is another run, 0.94 against the full grid's 0.99 on 100 samples).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = "eval.tasks=[{name: exact_match}, {name: exact_match, label: val, args: {split: validation}}]"


def sweep(cwd: Path, name: str, args: list[str]) -> tuple[Path, float]:
    """Launch one sweep; (its dir, wall seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), "-m", f"experiment.name={name}", *args],
                          cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name}: launch exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return cwd / "outputs" / name, wall


def epochs_trained(sweep_dir: Path) -> int:
    return sum(len(json.loads((d / "run.json").read_text())["checkpoints"])
               for d in sweep_dir.iterdir() if (d / "run.json").exists())


def pick(sweep_dir: Path, task: str = "exact_match") -> dict:
    """The report's pick for ``task`` (summary_findings.csv): config, checkpoint, score and its interval."""
    with open(sweep_dir / "summary_findings.csv") as f:
        return next(r for r in csv.DictReader(f) if r["task"] == task)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16, help="training.max_steps_per_epoch")
    ap.add_argument("--limit", type=int, default=100, help="eval.limit: samples per task")
    ap.add_argument("--eta", type=int, default=3)
    a = ap.parse_args()
    grid = ["optimizer.lr=1e-6,3e-3,1e-2", "peft.lora_rank=4,8,16", "training.epochs=3",
            f"training.max_steps_per_epoch={a.steps}", f"eval.limit={a.limit}", TASKS]
    with tempfile.TemporaryDirectory() as tmp:
        full_dir, full_s = sweep(Path(tmp), "full", grid)
        half_dir, half_s = sweep(Path(tmp), "halving", grid + ["early_stop=halving", f"early_stop.eta={a.eta}"])
        full_n, half_n = epochs_trained(full_dir), epochs_trained(half_dir)
        rungs = json.loads((half_dir / "halving.json").read_text())["rungs"]
        p_full, p_half = pick(full_dir), pick(half_dir)
    print(f"full grid (anchor): 9 runs x 3 epochs: {full_n} epochs trained, {full_s:.0f} s")
    print(f"early_stop=halving (eta {a.eta}): {half_n} epochs trained, {half_s:.0f} s; "
          + "; ".join(f"after epoch {r['epochs']}: {len(r['went_on'])} of {len(r['scores'])} went on" for r in rungs))
    print(f"epochs trained: {full_n / half_n:.2f}x fewer (goal >= 2x); wall time: {full_s / half_s:.2f}x")
    for r in rungs:
        ranked = sorted(r["scores"].items(), key=lambda kv: -(kv[1] if kv[1] is not None else -1))
        print(f"  val after epoch {r['epochs']}: " + ", ".join(f"{n.split('_epochs')[0]} {v:.2f}" for n, v in ranked))

    def said(p: dict) -> str:
        return (f"{p['config']} {p['checkpoint']} {float(p['score']):.3f} [{float(p['ci_low']):.3f}, "
                f"{float(p['ci_high']):.3f}] (picked on {p['picked_on']})")

    same = (p_full["config"], p_full["checkpoint"]) == (p_half["config"], p_half["checkpoint"])
    within = float(p_full["ci_low"]) <= float(p_half["score"]) <= float(p_full["ci_high"])
    print(f"pick on exact_match: full grid {said(p_full)}")
    print(f"pick on exact_match: halving   {said(p_half)}")
    print("pick: " + ("the same run and checkpoint" if same else
                      "another run or checkpoint, " + ("its score within" if within else "its score OUTSIDE")
                      + " the full grid's pick's 95% interval"))


if __name__ == "__main__":
    main()
