"""Tiny random-init models of other families, with tokenizer files in the family's own format, built
locally (nothing is downloaded), seeded, and cached under :func:`cache_root` like the tiny Llama.

``tiny_qwen2_5_dir()``: a Qwen2.5 model dir (``Qwen2ForCausalLM``, tied embeddings, q/k/v biases) as
a Hugging Face checkpoint of Qwen2.5 is laid out: ``config.json``, ``model.safetensors``, the GPT-2
byte-level BPE files torchtune's ``qwen2_5_tokenizer`` reads (``vocab.json`` + ``merges.txt``), and
``tokenizer.json`` / ``tokenizer_config.json`` that transformers' ``AutoTokenizer`` loads with the same
ids: the 256 byte tokens, merges learned from the capitalization data, and Qwen2.5's special tokens
at their fixed ids (``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ...).

The vocabulary is the smallest torchtune's special-token ids allow (151665), so the embeddings are
most of the parameters; as Qwen2.5's, ``vocab.json`` holds the 151643 ids below the special tokens
(here the bytes, the merges and unused fillers). The embedding rows of the unused ids are zero, so
greedy decoding picks real tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from .bpe import byte_level_vocab, corpus, write_vocab_merges

FAMILIES_VERSION = "v1"
TINY_QWEN2_5 = f"tiny_qwen2_5-{FAMILIES_VERSION}-seed{SEED}"

# torchtune's QWEN2_5_SPECIAL_TOKENS (torchtune/models/qwen2_5/_tokenizer.py), the ids of Qwen2.5's
QWEN2_5_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
FIRST_SPECIAL_ID = 151643
# the pre-tokenizer of Qwen2's tokenizer.json (and torchtune's PRETOKENIZE_REGEX)
PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
N_MERGES = 300

TINY_QWEN2_5_ARCH = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=512)


def tiny_qwen2_5_dir(build: bool = True) -> Path:
    """Directory of the tiny Qwen2.5 model in Hugging Face format (built on first use)."""
    return _ensure(TINY_QWEN2_5, _build_tiny_qwen2_5) if build else cache_root() / TINY_QWEN2_5


# ChatML, as cruijff.config.chat's "chatml" lays turns out (no default system prompt; assets sit
# below config, so the text is here too, and a test checks the two are the same)
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _build_qwen2_5_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns how many tokens the bytes and merges make."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    # Qwen2.5's vocab.json holds 151643 tokens, the special tokens' ids come after them (transformers
    # adds the special tokens at the next ids): past the merges, unused tokens no merge makes
    vocab, merges, learned = byte_level_vocab(corpus(), N_MERGES, PRETOKENIZE, FIRST_SPECIAL_ID)
    write_vocab_merges(dest, vocab, merges)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                               continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                               byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    spec = json.loads(tok.to_str())
    specials = {t: FIRST_SPECIAL_ID + i for i, t in enumerate(QWEN2_5_SPECIAL)}
    # Qwen2.5's tokenizer.json: the special tokens at their ids (the BPE vocab's ids below them)
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in specials.items()]
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in specials.items()},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "model_max_length": TINY_QWEN2_5_ARCH["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return learned


def _build_tiny_qwen2_5(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    learned = _build_qwen2_5_tokenizer(dest)
    vocab_size = FIRST_SPECIAL_ID + len(QWEN2_5_SPECIAL)  # 151665: the smallest torchtune's ids allow
    config = Qwen2Config(
        vocab_size=vocab_size, **TINY_QWEN2_5_ARCH, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, sliding_window=None, max_window_layers=2,
        hidden_act="silu", bos_token_id=FIRST_SPECIAL_ID, eos_token_id=FIRST_SPECIAL_ID + 2,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(SEED)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        keep = torch.zeros(vocab_size, dtype=torch.bool)
        keep[:learned] = True
        keep[FIRST_SPECIAL_ID:] = True
        emb[~keep] = 0.0
        for layer in model.model.layers:  # Qwen2's q/k/v biases, not zero as init leaves them
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.02)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=FIRST_SPECIAL_ID,
                                               eos_token_id=[FIRST_SPECIAL_ID + 2, FIRST_SPECIAL_ID],
                                               pad_token_id=FIRST_SPECIAL_ID, do_sample=False)
    model.save_pretrained(str(dest), safe_serialization=True)
