"""The tiny Phi-4 (microsoft/phi-4's layout), random-init, built locally (nothing is downloaded),
seeded, and cached under :func:`cache_root` like the tiny Llama.

``tiny_phi4_dir()``: a Phi-4 model dir as the Hugging Face checkpoint of phi-4 is laid out:
``config.json`` in the hub's form (``Phi3ForCausalLM``, grouped-query attention, ``rope_theta`` 250000
with ``rope_scaling`` null, untied embeddings, no partial RoPE), ``model.safetensors`` with the fused
``qkv_proj`` and ``gate_up_proj`` weights, ``generation_config.json``, and Phi-4's tiktoken-like
byte-level BPE: ``vocab.json`` + ``merges.txt`` (GPT-2's byte alphabet, merges learned from the
capitalization data with cl100k's pre-tokenizer pattern), which torchtune's ``phi4_tokenizer`` reads,
and ``tokenizer.json`` / ``tokenizer_config.json`` (``GPT2Tokenizer``, no BOS added), which transformers'
``AutoTokenizer`` reads, with Phi-4's added tokens at their fixed ids (torchtune's
``PHI4_SPECIAL_TOKENS``: ``<|dummy_0|>`` 100256, ``<|endoftext|>`` 100257, the fill-in-the-middle
tokens 100258-100260, ``<|im_start|>`` 100264, ``<|im_end|>`` 100265, ``<|im_sep|>`` 100266,
``<|endofprompt|>`` 100276, dummies up to 100351) and its chat template
(``<|im_start|>user<|im_sep|>...<|im_end|>``, no BOS), the one cruijff evaluates Phi-4 with.

The vocabulary is Phi-4's 100352: ``vocab.json`` holds the 100256 ids below the added tokens (here the
bytes, the merges and unused fillers), so the embeddings are most of the parameters. The embedding
and output rows of the unused ids are zero, so greedy decoding picks real tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from .bpe import byte_level_vocab, corpus, write_vocab_merges

FAMILIES_VERSION = "v1"
TINY_PHI4 = f"tiny_phi4-{FAMILIES_VERSION}-seed{SEED}"

FIRST_SPECIAL_ID = 100256
VOCAB_SIZE = 100352
# torchtune's PHI4_SPECIAL_TOKENS (torchtune/models/phi4/_tokenizer.py): Phi-4's added tokens
PHI4_SPECIAL = {"<|dummy_0|>": 100256, "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
                "<|fim_suffix|>": 100260, "<|dummy_1|>": 100261, "<|dummy_2|>": 100262, "<|dummy_3|>": 100263,
                "<|im_start|>": 100264, "<|im_end|>": 100265, "<|im_sep|>": 100266, "<|endofprompt|>": 100276}
PHI4_SPECIAL.update({f"<|dummy_{i}|>": i + (100263 if i < 13 else 100264) for i in range(4, 88)})
# the pre-tokenizer of Phi-4's tokenizer.json (cl100k's; torchtune's CL100K_PATTERN)
PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
N_MERGES = 300
NUMBERS = ["In 2024, 12345 and 1999.", "IT'S 3 O'CLOCK", "it's 42"]

TINY_PHI4_ARCH = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=16384)

# phi-4's chat template (its tokenizer_config.json): no BOS, no newlines
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>' + "
    "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}"
    "{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)


def tiny_phi4_dir(build: bool = True) -> Path:
    """Directory of the tiny Phi-4 model in Hugging Face format (built on first use)."""
    return _ensure(TINY_PHI4, _build_tiny_phi4) if build else cache_root() / TINY_PHI4


def _build_phi4_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns how many tokens the bytes and merges make."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    # the merges (and, as any real vocabulary has, merges of digits and of an upper-case contraction),
    # then unused tokens no merge makes, up to the added tokens
    vocab, merges, learned = byte_level_vocab(corpus() + NUMBERS * 20, N_MERGES, PRETOKENIZE, FIRST_SPECIAL_ID)
    write_vocab_merges(dest, vocab, merges)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    spec = json.loads(tok.to_str())
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(PHI4_SPECIAL.items(), key=lambda kv: kv[1])]
    spec["added_tokens"] = added
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                  "single_word", "special")} for a in added},
        "bos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "extra_special_tokens": {},
        "model_max_length": TINY_PHI4_ARCH["max_position_embeddings"], "pad_token": "<|dummy_85|>",
        "padding_side": "left", "tokenizer_class": "GPT2Tokenizer", "unk_token": "<|endoftext|>",
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (dest / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|dummy_85|>",
        "unk_token": "<|endoftext|>",
    }, indent=2))
    return learned


def _build_tiny_phi4(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    learned = _build_phi4_tokenizer(dest)
    bos, eos, pad = PHI4_SPECIAL["<|endoftext|>"], PHI4_SPECIAL["<|im_end|>"], PHI4_SPECIAL["<|dummy_85|>"]
    hub = {  # phi-4's config.json, at the tiny sizes
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": bos, "embd_pdrop": 0.0, "eos_token_id": eos, "hidden_act": "silu",
        "initializer_range": 0.02, **TINY_PHI4_ARCH, "model_type": "phi3",
        "original_max_position_embeddings": TINY_PHI4_ARCH["max_position_embeddings"], "pad_token_id": pad,
        "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 250000,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }
    config = Phi3Config(**{k: v for k, v in hub.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        keep = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
        keep[:learned] = True
        keep[[PHI4_SPECIAL[t] for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|im_sep|>")]] = True
        model.model.embed_tokens.weight[~keep] = 0.0
        model.lm_head.weight[~keep] = 0.0
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, bos], pad_token_id=pad,
                                               do_sample=False)
    model.save_pretrained(str(dest), safe_serialization=True)
    (dest / "config.json").write_text(json.dumps(hub, indent=2) + "\n")
