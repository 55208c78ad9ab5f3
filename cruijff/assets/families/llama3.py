"""The tiny Llama 3.2: random-init, built locally (nothing is downloaded), seeded, and cached under
:func:`cache_root` like the tiny Llama.

``tiny_llama3_2_dir()``: a Llama 3.2 model dir (``LlamaForCausalLM``, tied embeddings, grouped-query
attention, RoPE base 500000 with Llama 3.1's scaling: ``rope_type`` llama3, factor 32, low / high
frequency factors 1 / 4, original context 8192) as a Hugging Face checkpoint of Llama-3.2-1B-Instruct
is laid out: ``config.json`` (``rope_theta`` and ``rope_scaling``, as transformers 4 wrote it),
``model.safetensors``, ``generation_config.json`` (eos ``<|end_of_text|>``, ``<|eom_id|>``,
``<|eot_id|>``), Meta's tiktoken file ``original/tokenizer.model`` that torchtune's
``llama3_tokenizer`` reads (one ``base64(token) rank`` line per token, ranks 0-127999), and
``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json`` that transformers'
``AutoTokenizer`` (``PreTrainedTokenizerFast``) loads with the same ids, adding ``<|begin_of_text|>``
as Llama 3's template post-processor does.

The ranks below 128000 are the 256 bytes (in GPT-2's byte-to-unicode order, as Llama 3's), merges
learned from the capitalization data with Llama 3's pre-tokenizer pattern, and unused fillers (four
bytes starting with 0xF8, which UTF-8 text never holds, so no text encodes to one); the 256 special
tokens sit at their fixed ids 128000-128255 (``<|begin_of_text|>`` 128000, ``<|end_of_text|>`` 128001,
``<|finetune_right_pad_id|>`` 128004, ``<|start_header_id|>`` 128006, ``<|end_header_id|>`` 128007,
``<|eom_id|>`` 128008, ``<|eot_id|>`` 128009, ``<|python_tag|>`` 128010, the rest reserved), so the
vocabulary is Llama 3's 128256 and the embeddings are most of the parameters. The embedding rows of
the fillers and of the reserved special tokens are zero, so greedy decoding picks real tokens.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from .bpe import bytes_to_unicode, corpus, learn_merges

FAMILIES_VERSION = "v1"
TINY_LLAMA3_2 = f"tiny_llama3_2-{FAMILIES_VERSION}-seed{SEED}"

FIRST_SPECIAL_ID = 128000
N_SPECIAL = 256
VOCAB_SIZE = FIRST_SPECIAL_ID + N_SPECIAL  # 128256, Llama 3's
# the special tokens of Llama 3.1 / 3.2's tokenizer.json by id; every other id from 128000 on is
# <|reserved_special_token_N|>, N counted on from 0 (torchtune names some reserved ones otherwise,
# <|step_id|> 128005, <|video|> 128012, but gives the tokens below the same ids)
NAMED_SPECIAL = {
    "<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004,
    "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
    "<|python_tag|>": 128010,
}
BOS, EOT = "<|begin_of_text|>", "<|eot_id|>"
EOS_IDS = [128001, 128008, 128009]  # Llama-3.2-Instruct's generation stops at these
# Llama 3's pre-tokenizer (tiktoken's cl100k pattern; torchtune's CL100K_PATTERN)
PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
N_MERGES = 300
FILLER_BYTE = 0xF8  # never in UTF-8: no text holds a filler, so neither tiktoken nor BPE makes one

TINY_LLAMA3_2_ARCH = dict(hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=8, max_position_embeddings=131072)
ROPE_SCALING = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}


def tiny_llama3_2_dir(build: bool = True) -> Path:
    """Directory of the tiny Llama 3.2 model in Hugging Face format (built on first use)."""
    return _ensure(TINY_LLAMA3_2, _build_tiny_llama3_2) if build else cache_root() / TINY_LLAMA3_2


# Llama 3's header format, as cruijff.config.chat's "llama3" lays turns out (content stripped, no
# default system header; the BOS is the tokenizer's; assets sit below config, so the text is here
# too, and a test checks the two are the same)
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


def special_tokens() -> dict[str, int]:
    """The 256 special tokens of Llama 3.1 / 3.2's tokenizer.json, by name."""
    named = {i: t for t, i in NAMED_SPECIAL.items()}
    out, reserved = {}, 0
    for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE):
        if i not in named:
            named[i] = f"<|reserved_special_token_{reserved}|>"
            reserved += 1
        out[named[i]] = i
    return out


def ranks() -> tuple[dict[bytes, int], int]:
    """The tiktoken ranks (token bytes -> id, 128000 of them) and how many the bytes and merges make."""
    enc = bytes_to_unicode()
    dec = {c: b for b, c in enc.items()}
    out = {bytes([b]): i for i, b in enumerate(sorted(enc, key=lambda b: ord(enc[b])))}
    for a, b in learn_merges(corpus(), N_MERGES, PRETOKENIZE):
        out.setdefault(bytes(dec[c] for c in a + b), len(out))
    learned = len(out)
    for i in range(learned, FIRST_SPECIAL_ID):
        out[bytes([FILLER_BYTE]) + i.to_bytes(3, "big")] = i
    return out, learned


def tiktoken_file(bpe_ranks: dict[bytes, int]) -> str:
    """Meta's ``tokenizer.model``: ``base64(token) rank`` a line, by rank (tiktoken's load_tiktoken_bpe)."""
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(bpe_ranks.items(), key=lambda kv: kv[1]))


def hf_vocab_merges(bpe_ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocab and merges of ``tokenizer.json`` from the ranks, as transformers'
    TikTokenConverter makes them: every split of a token into two tokens is a merge, ordered by the
    token's rank, then by the halves' ranks."""
    enc = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab, merges = {}, []
    for token, rank in sorted(bpe_ranks.items(), key=lambda kv: kv[1]):
        vocab[text(token)] = rank
        local = [(token[:i], token[i:]) for i in range(1, len(token))
                 if token[:i] in bpe_ranks and token[i:] in bpe_ranks]
        merges += sorted(local, key=lambda lr: (bpe_ranks[lr[0]], bpe_ranks[lr[1]]))
    return vocab, [(text(a), text(b)) for a, b in merges]


def _build_llama3_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns how many tokens the bytes and merges make."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    bpe_ranks, learned = ranks()
    (dest / "original").mkdir(exist_ok=True)
    (dest / "original" / "tokenizer.model").write_text(tiktoken_file(bpe_ranks))

    vocab, merges = hf_vocab_merges(bpe_ranks)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                               ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    bos_id = NAMED_SPECIAL[BOS]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                      special_tokens=[(BOS, bos_id)]),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    spec = json.loads(tok.to_str())
    specials = special_tokens()
    # Llama 3's tokenizer.json: the special tokens at their ids (the BPE vocab's ranks below them)
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for t, i in specials.items()]
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2))
    config = {
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in specials.items()},
        "bos_token": BOS,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOT,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": TINY_LLAMA3_2_ARCH["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (dest / "special_tokens_map.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOT}, indent=2) + "\n")
    return learned


def hf_config() -> dict:
    """``config.json`` as Llama-3.2-1B-Instruct's (transformers 4's keys), at the tiny sizes."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": NAMED_SPECIAL[BOS],
        "eos_token_id": EOS_IDS,
        "head_dim": TINY_LLAMA3_2_ARCH["head_dim"],
        "hidden_act": "silu",
        "hidden_size": TINY_LLAMA3_2_ARCH["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": TINY_LLAMA3_2_ARCH["intermediate_size"],
        "max_position_embeddings": TINY_LLAMA3_2_ARCH["max_position_embeddings"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": TINY_LLAMA3_2_ARCH["num_attention_heads"],
        "num_hidden_layers": TINY_LLAMA3_2_ARCH["num_hidden_layers"],
        "num_key_value_heads": TINY_LLAMA3_2_ARCH["num_key_value_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": dict(ROPE_SCALING),
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def _build_tiny_llama3_2(dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    learned = _build_llama3_tokenizer(dest)
    hf = hf_config()
    # a copy: transformers 5 moves rope_theta into the rope_scaling it is given
    args = {k: v for k, v in json.loads(json.dumps(hf)).items() if k not in ("architectures", "torch_dtype")}
    config = LlamaConfig(**args)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        keep = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
        keep[:learned] = True
        keep[list(NAMED_SPECIAL.values())] = True
        model.model.embed_tokens.weight[~keep] = 0.0
    model.eval()
    model.save_pretrained(str(dest), safe_serialization=True)
    # the config files as Llama 3.2's hold them (transformers 5 writes rope_parameters instead)
    (dest / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    generation = {"bos_token_id": NAMED_SPECIAL[BOS], "do_sample": False, "eos_token_id": EOS_IDS}
    (dest / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
