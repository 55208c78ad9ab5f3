"""The tiny Phi-3 (Phi-3-mini-4k-instruct's layout), random-init, built locally (nothing is
downloaded), seeded, and cached under :func:`cache_root` like the tiny Llama.

``tiny_phi3_dir()``: a Phi-3 model dir as the Hugging Face checkpoint of Phi-3-mini-4k-instruct is
laid out: ``config.json`` in the hub's form (``Phi3ForCausalLM``, ``rope_theta`` 10000 with
``rope_scaling`` null, ``sliding_window`` 2047, untied embeddings, no head_dim / partial RoPE),
``model.safetensors`` with Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` weights,
``generation_config.json`` (eos ``<|endoftext|>``, ``<|assistant|>``, ``<|end|>``), and Phi-3's
tokenizer: a SentencePiece ``tokenizer.model`` as Llama 2's (BPE with byte fallback and the dummy
prefix; ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte pieces, then pieces learned from the
capitalization data, padded with unused pieces to 32000 as Phi-3's), which torchtune's
``phi3_mini_tokenizer`` reads, and ``tokenizer.json`` / ``tokenizer_config.json``, which transformers'
``AutoTokenizer`` reads (``LlamaTokenizer``, ``legacy`` false, ``add_bos_token`` false; the BPE of the
pieces with Llama 2's normalizer, "▁" before each text between added tokens, and a post-processor that
adds no BOS, which transformers 5 reads as the file has it), with Phi-3's added tokens
at their fixed ids and flags (``<|endoftext|>`` 32000, ``<|assistant|>`` 32001, ``<|placeholder1-4|>``
32002-32005, ``<|system|>`` 32006, ``<|end|>`` 32007, ``<|placeholder5-6|>`` 32008-32009, ``<|user|>``
32010; every one but ``<|endoftext|>`` strips the whitespace after it) and the model's own chat template
(``<|user|>\\n...<|end|>\\n``, no BOS), the one cruijff evaluates Phi-3 with.

The vocabulary is Phi-3's 32064 (the SentencePiece pieces, the added tokens, unused ids up to the
padded size), so the embeddings are most of the parameters. The embedding and output rows of the
unused ids are zero, so greedy decoding picks real tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from . import sentencepiece

FAMILIES_VERSION = "v1"
TINY_PHI3 = f"tiny_phi3-{FAMILIES_VERSION}-seed{SEED}"

# torchtune's PHI3_SPECIAL_TOKENS (torchtune/models/phi3/_tokenizer.py), Phi-3's added tokens
PHI3_SPECIAL = {
    "<|endoftext|>": 32000, "<|assistant|>": 32001, "<|placeholder1|>": 32002, "<|placeholder2|>": 32003,
    "<|placeholder3|>": 32004, "<|placeholder4|>": 32005, "<|system|>": 32006, "<|end|>": 32007,
    "<|placeholder5|>": 32008, "<|placeholder6|>": 32009, "<|user|>": 32010,
}
SPM_SIZE = 32000   # Phi-3's tokenizer.model (Llama 2's pieces)
VOCAB_SIZE = 32064  # Phi-3's config.json: the embeddings are padded past the added tokens
LEARNED = 512       # pieces the tiny tokenizer.model learns: specials, bytes, characters, merges

TINY_PHI3_ARCH = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=4096)

# Phi-3-mini-4k-instruct's chat template (its tokenizer_config.json): no BOS, each turn's text between
# its role token + "\n" and "<|end|>\n"; the role tokens and <|end|> strip the whitespace after them
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def tiny_phi3_dir(build: bool = True) -> Path:
    """Directory of the tiny Phi-3 model in Hugging Face format (built on first use)."""
    return _ensure(TINY_PHI3, _build_tiny_phi3) if build else cache_root() / TINY_PHI3


def _padded_spm(model: bytes, size: int) -> tuple[bytes, int]:
    """The SentencePiece model with unused pieces (never produced by encoding) up to ``size``
    pieces; returns it and how many pieces it learned."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    learned = len(proto.pieces)
    for i in range(learned, size):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"<unused_{i}>", 0.0, piece.UNUSED
    return proto.SerializeToString(), learned


def _added(content: str, i: int) -> dict:
    # Phi-3's flags: <unk>, <s>, <|endoftext|> as they are; </s> and the chat tokens strip the
    # whitespace on their right; </s> is not special
    rstrip = content not in ("<unk>", "<s>", "<|endoftext|>")
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": rstrip,
            "normalized": False, "special": content != "</s>"}


def _build_phi3_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns how many pieces the SentencePiece model learned."""
    from sentencepiece import SentencePieceProcessor
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers.tokenization_utils_base import generate_merges

    spm, learned = _padded_spm(sentencepiece.train(model_type="bpe", vocab_size=LEARNED), SPM_SIZE)
    (dest / "tokenizer.model").write_bytes(spm)
    processor = SentencePieceProcessor(model_proto=spm)
    pieces = [processor.id_to_piece(i) for i in range(processor.vocab_size())]
    # tokenizer.json as transformers converts a Llama 2 SentencePiece model (legacy): the BPE of the
    # learned pieces (merges by their rank), byte fallback, "▁" for spaces and before the text
    merges = generate_merges({p: i for i, p in enumerate(pieces[:learned])})
    vocab = {p: i for i, p in enumerate(pieces)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    # no BOS added: Phi-3's add_bos_token is false (transformers 5 reads it from this post-processor)
    tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    spec = json.loads(tok.to_str())
    added = [_added(t, i) for i, t in enumerate(pieces[:3])] + [_added(t, i) for t, i in PHI3_SPECIAL.items()]
    spec["added_tokens"] = added
    (dest / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=2))
    config = {
        "add_bos_token": False, "add_eos_token": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip",
                                                                  "single_word", "special")} for a in added},
        "bos_token": "<s>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "legacy": False, "model_max_length": TINY_PHI3_ARCH["max_position_embeddings"],
        "pad_token": "<|endoftext|>", "padding_side": "left", "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>", "use_default_system_prompt": False,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (dest / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
    }, indent=2))
    return learned


def _build_tiny_phi3(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    learned = _build_phi3_tokenizer(dest)
    eos = PHI3_SPECIAL["<|endoftext|>"]
    hub = {  # Phi-3-mini-4k-instruct's config.json, at the tiny sizes
        "architectures": ["Phi3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": eos, "hidden_act": "silu",
        "initializer_range": 0.02, **TINY_PHI3_ARCH, "model_type": "phi3",
        "original_max_position_embeddings": TINY_PHI3_ARCH["max_position_embeddings"], "pad_token_id": eos,
        "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }
    config = Phi3Config(**{k: v for k, v in hub.items() if k not in ("architectures", "model_type")})
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        keep = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
        keep[:learned] = True
        keep[eos:eos + len(PHI3_SPECIAL)] = True
        model.model.embed_tokens.weight[~keep] = 0.0
        model.lm_head.weight[~keep] = 0.0
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=[eos, PHI3_SPECIAL["<|assistant|>"],
                                                                             PHI3_SPECIAL["<|end|>"]],
                                               pad_token_id=eos, do_sample=False)
    model.save_pretrained(str(dest), safe_serialization=True)
    (dest / "config.json").write_text(json.dumps(hub, indent=2) + "\n")
