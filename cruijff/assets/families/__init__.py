"""Tiny random-init models of the families ``model=auto`` describes, each with tokenizer files in
its family's own format, built locally (nothing is downloaded), seeded, and cached under
:func:`cruijff.assets.cache_root` like the tiny Llama: one module a family.

Each model has the family's real architecture (its ``*ForCausalLM`` class, biases, tied or untied
embeddings, fused projections, soft-capping) at the smallest sizes its tokenizer's fixed
special-token ids allow, so fine-tuning, saving a PEFT adapter, applying it and evaluating run as
they would on the real model.
"""

from .gemma2 import tiny_gemma2_dir
from .llama3 import tiny_llama3_2_dir
from .mistral import tiny_mistral_dir
from .phi3 import tiny_phi3_dir
from .phi4 import tiny_phi4_dir
from .qwen2_5 import tiny_qwen2_5_dir

__all__ = ["tiny_gemma2_dir", "tiny_llama3_2_dir", "tiny_mistral_dir", "tiny_phi3_dir", "tiny_phi4_dir",
           "tiny_qwen2_5_dir"]
