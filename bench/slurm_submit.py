"""Submitting a 1000-run (or 10,000-run) sweep to a real SLURM controller: command to all tasks queued.

    scripts/slurm-cluster start && eval "$(scripts/slurm-cluster env)"
    python bench/slurm_submit.py [--runs 1000|10000]

Ours: `python launch.py -m cluster=slurm detach=true <10 x 10 x 10 grid>` with the jobs held
(`--hold`, so nothing trains), timed until the command returns with every array task queued.
Anchor, measured in the same run: the same grid through Hydra's basic sweeper and the stock
hydra-submitit-launcher (`hydra/launcher=submitit_slurm`, also held), timed until squeue shows every
task (that launcher then blocks on the jobs; the bench stops it). All jobs are cancelled afterwards.
With --runs N over 1000 (10 x 10 x N/100 seeds) the anchor runs the 1000-run grid and is scaled per
job (it composes every job's config: ~25 min for 10,000 here). SLURM counts every queued array task
against MaxJobCount (10000 on the test cluster, with the eval+report job and others' jobs beside
them): the bench says how many runs fit, e.g. --runs 9900. Goal: ours <= 5 s for 1000 runs, <= 20 s
for 10,000.
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
AXES = {"peft.lora_rank": [str(r) for r in range(1, 11)],
        "optimizer.lr": ["1e-5", "2e-5", "5e-5", "1e-4", "2e-4", "5e-4", "1e-3", "2e-3", "5e-3", "1e-2"],
        "seed": [str(s) for s in range(1, 101)]}


def queued(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout
    return len(out.split())


def max_jobs() -> int:
    """The controller's MaxJobCount: array tasks queued count each (``scontrol show config``)."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return next((int(line.split("=")[1]) for line in out.splitlines() if line.startswith("MaxJobCount")), 10**9)


def cancel(name: str) -> None:
    subprocess.run(["scancel", "-n", name], check=False)
    while queued(name):
        time.sleep(0.5)


def arguments(n: int) -> list[str]:
    """The launch's arguments for a grid of ``n`` runs (10, 100, or 10 x 10 x n/100 seeds)."""
    seeds, ranks = (1, 1) if n == 10 else (max(1, n // 100), 10)
    grid = [f"peft.lora_rank={','.join(AXES['peft.lora_rank'][:ranks])}",
            f"optimizer.lr={','.join(AXES['optimizer.lr'])}", f"seed={','.join(AXES['seed'][:seeds])}"]
    return ["-m", "cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=1", *grid]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1000, help="10, 100, or 1000 to 10000 in steps of 100")
    n = parser.parse_args().runs
    if n not in (10, 100) and not (n % 100 == 0 and 1000 <= n <= 10000):
        sys.exit("--runs: 10, 100, or 1000 to 10000 in steps of 100")
    room = max_jobs() - len(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True,
                                           text=True).stdout.split())
    if n + 1 >= room:  # the runs and the eval+report job; slurmctld refuses an array past MaxJobCount
        sys.exit(f"this cluster keeps at most {max_jobs()} jobs (MaxJobCount), {room} of them free: "
                 f"--runs {n} does not fit; try --runs {(room - 2) // 100 * 100}")
    n_anchor = min(n, 1000)
    common, anchor_common = arguments(n), arguments(n_anchor)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        name = "cruijff-train-bench"
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "launch.py"), *common, "experiment.name=bench",
                               "detach=true", "+cluster.sbatch.hold=true"], cwd=work, env=ENV,
                              capture_output=True, text=True)
        ours = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(proc.stderr[-2000:])
        ours_queued = queued(name)
        cancel(name)
        cancel("cruijff-eval-bench")

        anchor_name = "launch"
        t0 = time.perf_counter()
        stock = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), *anchor_common, "experiment.name=anchor",
             "hydra/sweeper=basic", "hydra.sweeper.max_batch_size=null", "hydra/launcher=submitit_slurm",
             "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
             f"hydra.launcher.name={anchor_name}", "+hydra.launcher.additional_parameters={hold: true}"],
            cwd=work, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while queued(anchor_name) < n_anchor:
            if stock.poll() is not None:
                sys.exit(f"anchor exited early: {stock.stderr.read()[-2000:]}")
            time.sleep(0.2)
        anchor = time.perf_counter() - t0
        stock.kill()
        cancel(anchor_name)
    print(f"{n} runs queued on SLURM, ours (grid sweeper, one job array, detach): {ours:6.2f} s "
          f"({ours_queued} tasks queued)   (goal <= {5 if n <= 1000 else 20} s)")
    anchor_n = anchor * n / n_anchor
    print(f"anchor: Hydra basic sweeper + stock submitit_slurm launcher:        {anchor:6.2f} s"
          + (f" for {n_anchor} runs -> {anchor_n:.0f} s per {n}" if n_anchor < n else ""))
    print(f"ratio anchor / ours: {anchor_n / ours:.1f}x faster")


if __name__ == "__main__":
    main()
