"""Evaluating one run, 2 epochs x 3 tasks: ours vs one `inspect eval` process per (task, epoch).

    python bench/eval.py [--batch-size 32]

Fine-tunes the tiny model for 2 epochs (not timed), saving merged weights per epoch
(``training.checkpoint=merged``) so that ``inspect eval --model hf/<epoch dir>`` can load them, then
times
- ours: `python -m cruijff eval`-style evaluation of both epochs (each checkpoint loaded once for
  all 3 tasks, one process), and
- the anchor, measured in the same run: `inspect eval bench/tasks.py@<task> --model hf/<epoch dir>`
  once per cell, 6 processes, as users script it today.
Both sides use the same generation settings (greedy, max 16 tokens, --batch-size prompts per
batch, which is inspect's max_connections for the hf provider). Goal: ours >= 3x faster.
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
TASKS = ["capitalize", "capitalize_nocase", "capitalize_validation"]


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    import argparse

    from cruijff import assets

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=32)
    bs = parser.parse_args().batch_size
    data = assets.capitalization_file()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run([sys.executable, str(ROOT / "launch.py"), "eval=none", "training.checkpoint=merged",
             "experiment.name=bench"], work)
        (run_dir,) = [p.parent for p in (work / "outputs" / "bench").glob("*/run.json")]
        tasks = ", ".join(f"{{name: '{ROOT}/bench/tasks.py@{t}', args: {{data_file: '{data}'}}}}" for t in TASKS)
        code = ("import sys; from pathlib import Path; from omegaconf import OmegaConf; "
                "from cruijff.evaluate import evaluate_run_dir as evaluate_saved; "
                f"ev = OmegaConf.create(\"{{enabled: true, tasks: [{tasks}], epochs: all, base_model: false, "
                f"max_tokens: 16, batch_size: {bs}, limit: null}}\"); "
                f"evaluate_saved(Path('{run_dir}'), ev)")
        ours = run([sys.executable, "-c", code], work)
        anchor = 0.0
        for epoch in ("epoch_0", "epoch_1"):
            for t in TASKS:
                anchor += run(["inspect", "eval", f"{ROOT}/bench/tasks.py@{t}", "--model", f"hf/{run_dir / epoch}",
                               "-T", f"data_file={data}", "-M", "device=cpu", "-M", "do_sample=false",
                               "--max-tokens", "16", "--max-connections", str(bs),
                               "--log-dir", str(work / "anchor-logs"), "--display", "none"], work)
    print(f"batch size {bs}")
    print(f"eval 2 epochs x 3 tasks, ours (one process, one load per checkpoint): {ours:6.1f} s")
    print(f"anchor: one `inspect eval` process per (task, epoch), 6 processes:   {anchor:6.1f} s")
    print(f"ratio anchor / ours: {anchor / ours:.1f}x faster   (goal >= 3x)")


if __name__ == "__main__":
    main()
