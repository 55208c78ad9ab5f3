"""One rank of a distributed run, started by torchrun (``python -m cruijff.finetune.rank``; see
:mod:`.distributed`). Nothing imports this module: torchrun runs it as ``__main__``."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from ..records import layout
from .recipe import (MemoryWatch, ReachedRung, _clone_before_merge, _load_recipe_module, _LossTap,
                     continue_schedule, epochs_as_configured, fix_gemma2, watch_saves)
from .render import recipe_class, recipe_name


def main(argv: list[str]) -> None:
    """One rank of a distributed run (started by torchrun)."""
    from omegaconf import OmegaConf
    from torch.distributed import init_process_group
    from torchtune import config as tt_config


    config, loss_file = Path(argv[0]), Path(argv[1])
    method = argv[2] if len(argv) > 2 else "lora"
    cfg = OmegaConf.load(config)
    rank = int(os.environ.get("RANK", "0"))
    module = _load_recipe_module(recipe_name(2, method))
    on_gpu = str(cfg.device).startswith("cuda")
    if method != "none":  # full_finetune_distributed starts its own process group (for its device)
        init_process_group("cuda:nccl,cpu:gloo" if on_gpu else "gloo")
    if not on_gpu:
        # the same in-place merge fix as on one device; and the recipe's unconditional memory
        # report after loading the model, which raises on CPU, is skipped (this process only)
        if hasattr(module, "get_merged_lora_ckpt"):
            module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
        module.training.get_memory_stats = lambda device: {}
        module.training.log_memory_stats = lambda stats, *a, **k: None
        module.training.cleanup_before_training = gc.collect  # it also resets CUDA memory counters
    try:
        tt_config.log_config(recipe_name=recipe_class(2, method), cfg=cfg)
        recipe = getattr(module, recipe_class(2, method))(cfg=cfg)
        watch_saves(recipe, cfg)
        fix_gemma2(recipe, cfg)
        epochs_as_configured(recipe, cfg)
        memory = MemoryWatch(recipe, cfg)  # out of GPU memory: raised with where it struck
        with memory.reported():
            recipe.setup(cfg=cfg)
        continue_schedule(recipe, cfg)
        if recipe._is_rank_zero:
            loss_file.parent.mkdir(parents=True, exist_ok=True)
            sink = loss_file.open("a")

            def on_step(row: dict) -> None:
                sink.write(json.dumps(row) + "\n")
                sink.flush()

            recipe._metric_logger = _LossTap(recipe._metric_logger, recipe, on_step)
        memory.training()
        try:
            with memory.reported():
                recipe.train()
        except ReachedRung:  # every rank saved the rung's epoch: a clean end
            pass
        recipe.cleanup()
    except BaseException as e:
        layout.rank_error_file(loss_file.parent.parent, rank).write_text(
            json.dumps({"type": type(e).__name__, "message": str(e), "rank": rank}))
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
