"""Running torchtune's stock recipes on a rendered ``finetune.yaml``.

The recipe is torchtune's own (no forked copy), loaded from the installed ``recipes/`` folder:
``lora_finetune_single_device`` (``full_finetune_single_device`` with ``peft=none``) for a run on
one device, run in this process so the launcher adds no second Python start-up; the ``_distributed``
ones for a run on several GPUs, started through torchrun with one process per GPU
(``distributed.py``).

An adapter-only run (``save_adapter_weights_only``) keeps in each epoch dir what PEFT and vLLM load
(``adapter_model.safetensors``, a complete ``adapter_config.json``) and the tokenizer files; the
torchtune-format copy of the adapter that a resume needs is moved to ``recipe_state/`` (and dropped
after the last epoch), so no epoch holds the adapter twice.

One fix is applied at run time: on CPU, torchtune 0.6.1 merges the LoRA delta *in place* into the
live base weights at each epoch save (``.cpu()`` returns the same tensor there), so ``epoch_1``
would hold base + Δ0 + Δ1. We clone the weights to be merged first; on GPU nothing changes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from ..records import layout, write_json
from .render import RECIPE, RESUME_ADAPTER, recipe_class, recipe_name


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


def tidy_adapter_epoch(output_dir: Path, epoch: int, last: bool, base_dir: str, dropout: float) -> None:
    """After torchtune saved ``epoch_<epoch>`` adapter-only: its torchtune-format adapter becomes the
    resume point (or goes, after the last epoch), and its ``adapter_config.json`` names what PEFT and
    vLLM need to load it on the base (``base_model_name_or_path``, ``task_type``)."""
    epoch_dir = output_dir / f"epoch_{epoch}"
    pt = epoch_dir / "adapter_model.pt"
    if last:  # nothing resumes after the last epoch
        for stale in (pt, output_dir / RESUME_ADAPTER):
            stale.unlink(missing_ok=True)
    elif pt.exists():
        target = output_dir / RESUME_ADAPTER
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(pt, target)
    config = epoch_dir / layout.ADAPTER_CONFIG
    if config.exists():
        peft = json.loads(config.read_text())
        peft.update(base_model_name_or_path=base_dir, task_type="CAUSAL_LM", peft_type="LORA",
                    lora_dropout=dropout, bias="none", fan_in_fan_out=False, inference_mode=True)
        write_json(config, peft)


def watch_saves(recipe, cfg) -> None:
    """Tidy each adapter-only epoch as soon as the recipe has saved it (on the process that writes)."""
    if not cfg.get("save_adapter_weights_only", False):
        return
    save = recipe.save_checkpoint
    output_dir = Path(cfg.output_dir)

    def saved(epoch: int, *args, **kwargs):
        save(epoch, *args, **kwargs)
        if getattr(recipe, "_is_rank_zero", True):
            tidy_adapter_epoch(output_dir, epoch, epoch + 1 >= recipe.total_epochs,
                               str(cfg.checkpointer.checkpoint_dir), float(cfg.model.get("lora_dropout", 0.0)))

    recipe.save_checkpoint = saved


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


def run(finetune_yaml: Path, on_step: Callable[[dict], None] | None = None, method: str = "lora",
        on_start: Callable[[int, int, int], None] | None = None) -> None:
    """Run the stock single-device recipe (LoRA, or full with ``method="none"``) on
    ``finetune.yaml`` in this process; each logged step goes to ``on_step``, and ``on_start`` is
    told (epochs, steps per epoch, epochs already run) when training begins."""
    from torchtune import config as tt_config

    cfg = OmegaConf.load(finetune_yaml)
    module = _load_recipe_module(recipe_name(1, method))
    tt_config.log_config(recipe_name=recipe_name(1, method), cfg=cfg)
    recipe = getattr(module, recipe_class(1, method))(cfg=cfg)
    if recipe._device.type == "cpu" and hasattr(module, "get_merged_lora_ckpt"):
        module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
    watch_saves(recipe, cfg)
    recipe.setup(cfg=cfg)
    tap = _LossTap(recipe._metric_logger, recipe, on_step)
    recipe._metric_logger = tap
    if on_start:
        on_start(int(recipe.total_epochs), int(recipe._steps_per_epoch), int(recipe.epochs_run))
    try:
        recipe.train()
    finally:
        recipe.cleanup()
