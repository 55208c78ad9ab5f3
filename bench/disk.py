"""Disk of one epoch checkpoint: merged weights (``training.checkpoint=merged``) against the
adapter alone (the default).

    python bench/disk.py

Measured: the tiny model trained for one short epoch each way (``eval=none``), the bytes of its
``epoch_0`` dir. Computed, as the plan computes them (parameter counts from each torchtune builder
on the ``meta`` device, bf16 on GPU): one epoch of every catalogue model, merged (weights + adapter
twice, as torchtune saves it) against the adapter alone. Prints each and the ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}


def epoch_bytes(mode: str, work: Path) -> int:
    subprocess.run([sys.executable, str(ROOT / "launch.py"), f"training.checkpoint={mode}", "training.epochs=1",
                    "training.max_steps_per_epoch=2", "eval=none", f"experiment.name={mode}"],
                   cwd=work, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (run_dir,) = [p.parent for p in (work / "outputs" / mode).glob("*/run.json")]
    return sum(f.stat().st_size for f in (run_dir / "epoch_0").rglob("*") if f.is_file())


def catalogue() -> list[tuple[str, int, int]]:
    from hydra import compose, initialize_config_dir

    from cruijff.config import register_resolvers
    from cruijff.finetune import model_section
    from cruijff.plan.estimate import _params

    register_resolvers()
    rows = []
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        for f in sorted((ROOT / "conf" / "model").glob("*.yaml")):
            cfg = compose(config_name="config", overrides=[f"model={f.stem}", "model.path=/nonexistent"])
            base, lora = _params(json.dumps(model_section(cfg), sort_keys=True))
            rows.append((f.stem, base, lora))
    return rows


def main() -> None:
    from cruijff.plan.estimate import human_bytes

    with tempfile.TemporaryDirectory() as tmp:
        merged, adapter = epoch_bytes("merged", Path(tmp)), epoch_bytes("adapter", Path(tmp))
    print("measured, one epoch dir of the tiny model (fp32 on CPU):")
    print(f"  merged {human_bytes(merged):>10}   adapter {human_bytes(adapter):>10}   ratio {merged / adapter:6.1f}x")
    print("computed, one epoch of each catalogue model in bf16 (default LoRA: rank 16, attention + MLP):")
    for name, base, lora in catalogue():
        m, a = 2 * base + 2 * 2 * lora, 2 * lora
        print(f"  {name:24} merged {human_bytes(m):>10}   adapter {human_bytes(a):>10}   ratio {m / a:6.0f}x")


if __name__ == "__main__":
    main()
