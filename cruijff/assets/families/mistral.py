"""Tiny random-init models of other families, with tokenizer files in the family's own format, built
locally (nothing is downloaded), seeded, and cached under :func:`cache_root` like the tiny Llama.

``tiny_mistral_dir()``: a Mistral model dir (``MistralForCausalLM``, untied embeddings, grouped-query
attention with 4 query heads a key/value head as Mistral-7B's 32/8, RoPE base 1e6 and no sliding
window as Mistral-7B-Instruct-v0.2) as a Hugging Face checkpoint of Mistral v0.2 is laid out:
``config.json``, ``generation_config.json``, ``model.safetensors``, the SentencePiece BPE model
torchtune's ``mistral_tokenizer`` reads (``tokenizer.model``: byte fallback, ``<unk>`` 0, ``<s>`` 1,
``</s>`` 2, the 256 byte pieces 3-258, then the pieces learned from the capitalization data and the
``[INST]`` markup; the "dummy prefix" space before a text's first word, whitespace kept as it is,
digits split), and the ``tokenizer.json`` / ``tokenizer_config.json`` / ``special_tokens_map.json``
that transformers' ``AutoTokenizer`` loads with the same ids, in Mistral v0.2's legacy layout: each
text between special tokens gets the dummy prefix (so ``<s>[INST]`` is ``<s>``, ``▁[INST]``, as
torchtune's tokenizer, which encodes each piece of a message on its own, gives it), BOS added.

The vocabulary is the SentencePiece model's own (Mistral's 32000 here a few hundred): no unused ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from .bpe import corpus
from .sentencepiece import train

FAMILIES_VERSION = "v1"
TINY_MISTRAL = f"tiny_mistral-{FAMILIES_VERSION}-seed{SEED}"

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
VOCAB_SIZE = 512  # asked of SentencePiece; it stops earlier when the corpus has no more merges

TINY_MISTRAL_ARCH = dict(hidden_size=16, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=1, max_position_embeddings=512)


def tiny_mistral_dir(build: bool = True) -> Path:
    """Directory of the tiny Mistral model in Hugging Face format (built on first use)."""
    return _ensure(TINY_MISTRAL, _build_tiny_mistral) if build else cache_root() / TINY_MISTRAL


# torchtune's MistralChatTemplate as cruijff.config.chat's "mistral_inst" lays turns out (the first
# BOS left to the tokenizer; Mistral's own template writes it, which inspect's hf provider, whose
# tokenizer adds one, would double); assets sit below config, so the text is here too, and a test
# checks the two are the same
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- ('' if loop.first else '<s>') + '[INST] ' + m['content'].rstrip(' ') + '  [/INST]' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'].rstrip(' ') + '</s>' -}}"
    "{%- else -%}{{- raise_exception('torchtune MistralChatTemplate has no ' + m['role'] + ' role') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _texts() -> list[str]:
    """The capitalization data and the instruction markup (Mistral's pieces include ``[``, ``INST``)."""
    return corpus() + ["[INST] Capitalize: [/INST]", "[INST]", "[/INST]"] * 50


def _merges(proto) -> list[tuple[str, str]]:
    """BPE merges for the ``tokenizers`` library: each normal piece from any two normal pieces, the
    piece of the higher score first, as transformers' converter ranks SentencePiece's pieces."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(proto.pieces) if p.type == 1}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, normal[left][1], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def _build_mistral_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns the vocabulary size."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    model = train(model_type="bpe", vocab_size=VOCAB_SIZE, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                  add_dummy_prefix=True, texts=_texts())
    (dest / "tokenizer.model").write_bytes(model)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model)
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    assert [vocab[UNK], vocab[BOS], vocab[EOS], vocab["<0x00>"]] == [UNK_ID, BOS_ID, EOS_ID, 3]

    # Mistral v0.2's tokenizer.json: the dummy prefix and the spaces as "▁" by the normalizer, which
    # sees each text between special tokens on its own (legacy), no pre-tokenizer; BOS added
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(proto), unk_token=UNK, fuse_unk=True,
                               byte_fallback=True, dropout=None))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
                                                       special_tokens=[(BOS, BOS_ID)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in (UNK, BOS, EOS)])
    (dest / "tokenizer.json").write_text(tok.to_str(pretty=True))

    token = dict(lstrip=False, normalized=False, rstrip=False, single_word=False)
    config = {
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(i): {"content": t, **token, "special": True}
                                 for t, i in ((UNK, UNK_ID), (BOS, BOS_ID), (EOS, EOS_ID))},
        "additional_special_tokens": [],
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": None,
        "clean_up_tokenization_spaces": False, "legacy": True,
        "model_max_length": TINY_MISTRAL_ARCH["max_position_embeddings"],
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    special = {"bos_token": {"content": BOS, **token}, "eos_token": {"content": EOS, **token},
               "unk_token": {"content": UNK, **token}}
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    return len(vocab)


def _build_tiny_mistral(dest: Path) -> None:
    import torch
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    vocab_size = _build_mistral_tokenizer(dest)
    config = MistralConfig(
        vocab_size=vocab_size, **TINY_MISTRAL_ARCH, rms_norm_eps=1e-5, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False, hidden_act="silu",
        bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    config.architectures = ["MistralForCausalLM"]
    torch.manual_seed(SEED)
    model = MistralForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, do_sample=False)
    model.save_pretrained(str(dest), safe_serialization=True)
