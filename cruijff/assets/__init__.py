"""Embedded default assets: a tiny Llama and a capitalization dataset, built locally from a seed
and cached (see :mod:`.embedded`). Nothing is downloaded."""

from .embedded import (ASSET_VERSION, CHAT_TEMPLATE, TINY_ARCH, cache_root, capitalization_file,
                       capitalization_record, tiny_model_dir)
from .families import tiny_qwen2_5_dir

__all__ = ["ASSET_VERSION", "CHAT_TEMPLATE", "TINY_ARCH", "cache_root", "capitalization_file",
           "capitalization_record", "tiny_model_dir", "tiny_qwen2_5_dir"]
