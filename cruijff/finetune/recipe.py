"""Running torchtune's stock LoRA recipe on a rendered ``finetune.yaml``.

The recipe is torchtune's own (no forked copy), loaded from the installed ``recipes/`` folder:
``lora_finetune_single_device`` for a run on one device, run in this process so the launcher adds no
second Python start-up; ``lora_finetune_distributed`` for a run on several GPUs, started through
torchrun with one process per GPU (``distributed.py``).

One fix is applied at run time: on CPU, torchtune 0.6.1 merges the LoRA delta *in place* into the
live base weights at each epoch save (``.cpu()`` returns the same tensor there), so ``epoch_1``
would hold base + Δ0 + Δ1. We clone the weights to be merged first; on GPU nothing changes.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from .render import RECIPE


def recipe_path(name: str = RECIPE) -> Path:
    spec = importlib.util.find_spec("torchtune")
    assert spec and spec.origin
    path = Path(spec.origin).parent.parent / "recipes" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"torchtune recipe {name} not found at {path}")
    return path


def _load_recipe_module(name: str = RECIPE):
    spec = importlib.util.spec_from_file_location(f"cruijff_torchtune_{name}", recipe_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clone_before_merge(merge: Callable) -> Callable:
    """Wrap ``get_merged_lora_ckpt`` so it never writes into the live model's weights."""

    def merged(state_dict: dict, rank: int, alpha: float):
        for key in [k for k in state_dict if k.endswith(".lora_a.weight")]:
            base = key[: -len(".lora_a.weight")] + ".weight"
            if base in state_dict:
                state_dict[base] = state_dict[base].clone()
        return merge(state_dict, rank=rank, alpha=alpha)

    return merged


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops at once instead of burning the time limit."""


class _LossTap:
    """Forwards to torchtune's metric logger and keeps (epoch, step, loss, lr) for run.json."""

    def __init__(self, inner, recipe, on_step: Callable[[dict], None] | None):
        self._inner, self._recipe, self._on_step = inner, recipe, on_step
        self.rows: list[dict] = []

    def log_dict(self, payload, step):
        if "loss" in payload:
            row = {
                "epoch": int(self._recipe.epochs_run),
                "step": int(step),
                "loss": float(payload["loss"]),
                "lr": float(payload.get("lr", 0.0)),
            }
            self.rows.append(row)
            if self._on_step:
                self._on_step(row)
            if not math.isfinite(row["loss"]):
                self._inner.log_dict(payload, step)
                raise TrainingDiverged(
                    f"loss became {row['loss']} at epoch {row['epoch']} step {row['step']} "
                    f"(lr {row['lr']:g}); lower optimizer.lr or set training.clip_grad_norm"
                )
        return self._inner.log_dict(payload, step)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def run(finetune_yaml: Path, on_step: Callable[[dict], None] | None = None) -> None:
    """Run the stock single-device LoRA recipe on ``finetune.yaml`` in this process; each logged
    step goes to ``on_step``."""
    from torchtune import config as tt_config

    cfg = OmegaConf.load(finetune_yaml)
    module = _load_recipe_module()
    tt_config.log_config(recipe_name=RECIPE, cfg=cfg)
    recipe = module.LoRAFinetuneRecipeSingleDevice(cfg=cfg)
    if recipe._device.type == "cpu":
        module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
    recipe.setup(cfg=cfg)
    tap = _LossTap(recipe._metric_logger, recipe, on_step)
    recipe._metric_logger = tap
    try:
        recipe.train()
    finally:
        recipe.cleanup()
