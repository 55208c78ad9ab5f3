"""Launcher overhead: `python launch.py eval=none` vs `tune run` on the same rendered config.

    python bench/overhead.py [--repeats 3]

Runs both commands alternately (each fine-tuning the tiny model from scratch, 2 epochs), prints
the median wall times and their ratio (goal <= 1.05), then the demo's end-to-end wall time
(`python launch.py`: fine-tune + evaluate base and both epochs; embedded assets already built).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    launch = [sys.executable, str(ROOT / "launch.py")]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # warm-up: builds the embedded assets if needed, and gives us a rendered finetune.yaml
        timed(launch + ["eval=none", "experiment.name=warmup"], work)
        rendered = work / "outputs" / "warmup" / "default" / "finetune.yaml"
        if not rendered.exists():
            rendered = next((work / "outputs" / "warmup").glob("*/finetune.yaml"))
        ours, tune = [], []
        for i in range(args.repeats):
            ours.append(timed(launch + ["eval=none", f"experiment.name=bench{i}"], work))
            tune.append(timed(["tune", "run", "lora_finetune_single_device", "--config", str(rendered),
                               f"output_dir={work / f'tune{i}'}"], work))
            print(f"  repeat {i + 1}: launch.py {ours[-1]:.2f} s, tune run {tune[-1]:.2f} s", flush=True)
        mo, mt = statistics.median(ours), statistics.median(tune)
        print(f"launch.py eval=none   median {mo:.2f} s  ({args.repeats} runs)")
        print(f"tune run (anchor)     median {mt:.2f} s  ({args.repeats} runs)")
        print(f"ratio launch/tune     {mo / mt:.3f}   (goal <= 1.05)")
        demo = timed(launch + ["experiment.name=demo_e2e"], work)
        print(f"demo end to end       {demo:.2f} s  (python launch.py: fine-tune + eval of base, epoch_0, epoch_1)")


if __name__ == "__main__":
    main()
