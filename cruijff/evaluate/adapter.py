"""A LoRA adapter in PEFT's format, applied to a loaded Hugging Face model's weights in memory.

An eval job loads its base model once; for each adapter checkpoint it adds the adapter's update to
the targeted weights, ``W + (lora_alpha / r) * B @ A`` (what torchtune's merge and PEFT's
``merge_and_unload`` compute), evaluates, and puts the base weights back exactly as they were (the
weights it touched are kept untouched for the job, in CPU memory), so the next checkpoint and the
base control see the base bit for bit. No PEFT needed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CruijffError
from ..records import layout

PREFIX = "base_model.model."  # PEFT's prefix of the adapted model's module names


@dataclass
class Adapter:
    path: Path
    scale: float                      # lora_alpha / r (or / sqrt(r) with rsLoRA)
    pairs: dict[str, tuple[Any, Any]]  # weight name in the base ("model.layers.0.self_attn.q_proj.weight") -> (A, B)
    base: str | None                  # base_model_name_or_path

    def delta(self, name: str, dtype: Any = None):
        """The update of one weight, computed in fp32 and returned in ``dtype``."""
        a, b = self.pairs[name]
        d = (self.scale * b.float()) @ a.float()  # torchtune's order: (alpha / r) * B @ A
        return d if dtype is None else d.to(dtype)


def read_adapter(ckpt: Path) -> Adapter:
    """The adapter of an epoch dir (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    from safetensors.torch import load_file

    try:
        config = json.loads((ckpt / layout.ADAPTER_CONFIG).read_text())
        weights = load_file(str(ckpt / layout.ADAPTER_WEIGHTS))
    except (OSError, ValueError) as e:
        raise CruijffError(f"{ckpt}: not a readable LoRA adapter ({type(e).__name__}: {e})") from None
    if any("lora_magnitude_vector" in k for k in weights):
        raise CruijffError(f"{ckpt}: a DoRA adapter; only plain LoRA is applied in memory")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix(PREFIX)
        pairs[module + ".weight"] = (a, weights[key.replace(".lora_A.", ".lora_B.")])
    return Adapter(ckpt, scale, pairs, config.get("base_model_name_or_path"))


class AdapterSwap:
    """Applies one adapter at a time to a loaded model and restores its base weights exactly.

    Where the model is on the CPU, a targeted weight's own tensor is kept as it was loaded and the
    adapted weight is written into a second tensor put in its place, so restoring is a swap back,
    not a copy. On a GPU the base weights are copied to CPU memory once and copied back, so the GPU
    holds one copy.
    """

    def __init__(self, model: Any):
        self.model = model
        self.params = dict(model.named_parameters())
        self.saved: dict[str, Any] = {}   # base weights touched so far, never written to
        self.adapted: dict[str, Any] = {}  # on CPU: the tensor each adapted weight is written into
        self.current: Path | None = None

    def apply(self, adapter: Adapter) -> None:
        import torch

        missing = [n for n in adapter.pairs if n not in self.params]
        if missing:
            self.restore()
            raise CruijffError(f"{adapter.path}: the adapter targets {missing[0]}, which the base model "
                               f"has not (an adapter of another model?)")
        with torch.no_grad():
            if self.current is not None:  # what the last adapter touched and this one does not
                for name in self.saved.keys() - adapter.pairs.keys():
                    self._put_back(name)
            for name in adapter.pairs:
                p = self.params[name]
                if name not in self.saved:  # never touched: the base weight is in place
                    self.saved[name] = p.detach() if p.device.type == "cpu" else p.detach().to("cpu", copy=True)
                base = self.saved[name]
                d = adapter.delta(name, p.dtype).to(p.device)
                if base.device == p.device:
                    out = self.adapted.setdefault(name, torch.empty_like(base))
                    torch.add(base, d, out=out)
                    p.data = out
                else:
                    p.copy_(base)
                    p.add_(d)
        self.current = adapter.path

    def restore(self) -> None:
        """The base weights again, bit for bit."""
        import torch

        if self.current is None:
            return
        with torch.no_grad():
            for name in self.saved:
                self._put_back(name)
        self.current = None

    def _put_back(self, name: str) -> None:
        p, base = self.params[name], self.saved[name]
        if base.device == p.device:
            p.data = base
        else:
            p.copy_(base)
