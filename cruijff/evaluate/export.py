"""``python -m cruijff export <run dir>/epoch_N [--out DIR]``: one adapter checkpoint as merged
Hugging Face weights, to share or to serve without PEFT.

The base model's safetensors shards are read one at a time; each weight an adapter targets becomes
``W + (lora_alpha / r) * B @ A`` (new tensors: the base files are never written), the shards and
their index are written under their own names, and the config, tokenizer and chat template files
come along. The result is written beside the target and renamed into place when complete, so a
failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import CruijffError
from ..records import layout
from .adapter import read_adapter
from .backend import WEIGHT_SUFFIXES



def base_of(ckpt: Path, adapter_base: str | None) -> Path:
    """The base model dir of an adapter checkpoint: its ``adapter_config.json`` names it, else
    the run's manifest."""
    candidates = [adapter_base]
    try:
        candidates.append(json.loads((ckpt.parent / layout.MANIFEST_FILE).read_text()).get("model_dir"))
    except (OSError, ValueError):
        pass
    for c in candidates:
        if c and (Path(c) / "config.json").exists():
            return Path(c)
    raise CruijffError(f"{ckpt}: its base model dir is not found (adapter_config.json names "
                       f"{adapter_base!r}); pass --base DIR")


def export_checkpoint(ckpt: Path, out: Path | None = None, base: Path | None = None) -> Path:
    """Write ``ckpt`` (an adapter checkpoint) merged into its base as a Hugging Face model dir."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    kind = layout.checkpoint_kind(ckpt) if ckpt.is_dir() else None
    if kind is None:
        raise CruijffError(f"{ckpt}: not a checkpoint (an epoch_N dir of a run, holding "
                           f"{layout.ADAPTER_WEIGHTS} and {layout.ADAPTER_CONFIG})")
    if kind != "adapter":
        raise CruijffError(f"{ckpt}: holds full weights already ({kind}); transformers loads it as it is")
    adapter = read_adapter(ckpt)
    base = base or base_of(ckpt, adapter.base)
    out = (out or ckpt.parent / f"{ckpt.name}_merged").resolve()
    if out.exists() and any(out.iterdir()):
        raise CruijffError(f"{out}: exists and is not empty; choose another --out")
    shards = sorted(p for p in base.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not shards:
        raise CruijffError(f"{base}: no safetensors weights to merge into")
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        merged = 0
        for shard in shards:
            tensors = {}
            with safe_open(str(shard), framework="pt") as f:
                metadata = f.metadata() or {"format": "pt"}
                for key in f.keys():
                    w = f.get_tensor(key)
                    if key in adapter.pairs:
                        w = w + adapter.delta(key, w.dtype)
                        merged += 1
                    tensors[key] = w.contiguous()
            save_file(tensors, str(tmp / shard.name), metadata=metadata)
        if merged != len(adapter.pairs):
            raise CruijffError(f"{ckpt}: {len(adapter.pairs) - merged} of the adapter's weights are not in "
                               f"{base} (an adapter of another model?)")
        for src in (base, ckpt):  # the checkpoint's own tokenizer and chat template win
            for f in src.iterdir():
                if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith(("adapter_", ".")):
                    shutil.copy2(f, tmp / f.name)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
