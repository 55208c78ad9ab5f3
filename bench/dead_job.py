"""How soon a dead SLURM job is noticed: `scancel` mid-training to the run recorded as failed.

    scripts/slurm-cluster start && eval "$(scripts/slurm-cluster env)"
    python bench/dead_job.py [--repeat 3]

Ours: `python launch.py -m cluster=slurm <2 runs>`; once both train, one task is cancelled; timed
from `scancel` until its `run.json` says failed with SLURM's reason (the other run goes on).
Anchor, measured in the same run: the same sweep through Hydra's basic sweeper and the stock
hydra-submitit-launcher (`hydra/launcher=submitit_slurm`); timed from `scancel` until that launcher
gives up on the job (it raises and the command exits). Goal: ours within 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}
COMMON = ["-m", "cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=1",
          "training.epochs=50", "eval=none", "peft.lora_rank=8", "optimizer.lr=1e-3,2e-3"]
RUNS = ["rank8_lr1e-3_epochs50", "rank8_lr2e-3_epochs50"]


def _status(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status", "")
    except (OSError, ValueError):
        return ""


def _wait(predicate, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            subprocess.run(["scancel", "-u", str(os.getuid())], check=False)
            sys.exit("timed out waiting")
        time.sleep(0.1)


def _job_id(sweep_dir: Path, name: str, stock: bool) -> str:
    if not stock:
        return json.loads((sweep_dir / "sweep.json").read_text())["jobs"][name]
    # the stock launcher keeps no record of its own: find the task whose run dir is this run
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %j"], capture_output=True, text=True).stdout
    ids = sorted(line.split()[0] for line in out.splitlines())
    return ids[0]


def once(work: Path, stock: bool, i: int) -> float:
    name = f"dead-{'stock' if stock else 'ours'}-{i}"
    extra = ["hydra/sweeper=basic", "hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=0",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"] if stock else []
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *COMMON, f"experiment.name={name}", *extra],
                            cwd=work, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_dir = work / "outputs" / name
    _wait(lambda: all(_status(sweep_dir / r) == "running" for r in RUNS))
    time.sleep(2)
    job = _job_id(sweep_dir, RUNS[0], stock)
    t0 = time.perf_counter()
    subprocess.run(["scancel", job], check=True)
    if stock:
        proc.wait(timeout=900)
    else:
        _wait(lambda: _status(sweep_dir / RUNS[0]) == "failed", timeout=900)
    took = time.perf_counter() - t0
    subprocess.run(["scancel", "-u", str(os.getuid())], check=False)
    proc.wait(timeout=300)
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    n = parser.parse_args().repeat
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = [once(work, False, i) for i in range(n)]
        stock = [once(work, True, i) for i in range(n)]
    print(f"scancel of one of 2 running tasks until it is handled, {n} times each")
    print("ours (run.json failed with the SLURM reason): " + ", ".join(f"{t:.1f}" for t in ours)
          + f" s; median {statistics.median(ours):.1f} s")
    print("stock submitit launcher (gives up, exits):    " + ", ".join(f"{t:.1f}" for t in stock)
          + f" s; median {statistics.median(stock):.1f} s")
    print(f"ratio stock / ours: {statistics.median(stock) / statistics.median(ours):.1f}x")


if __name__ == "__main__":
    main()
