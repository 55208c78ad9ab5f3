"""A tiny random-init Gemma 2, built locally (nothing is downloaded), seeded, and cached under
:func:`cache_root` like the tiny Llama.

``tiny_gemma2_dir()``: a Gemma 2 model dir (``Gemma2ForCausalLM``: embeddings tied to the output
layer and scaled by sqrt(hidden_size), four RMS norms per layer, ``head_dim`` apart from
hidden_size / heads, attention logits soft-capped at 50 and final logits at 30, a sliding window
on every other layer, ``query_pre_attn_scalar``, GELU-tanh MLP) as a Hugging Face checkpoint of
Gemma 2 is laid out: ``config.json``, ``model.safetensors``, ``generation_config.json`` and Gemma's
tokenizer files: ``tokenizer.model``, the SentencePiece BPE model torchtune's ``gemma_tokenizer``
reads (no dummy prefix, byte fallback, digits split), and ``tokenizer.json`` /
``tokenizer_config.json`` that transformers' ``AutoTokenizer`` loads with the same ids.

Its special pieces are at Gemma's ids: ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, then
``<mask>`` 4, ``<2mass>`` 5, ``[@BOS@]`` 6, ``<unused0>`` .. ``<unused98>`` 7-105 and
``<start_of_turn>`` 106, ``<end_of_turn>`` 107, user-defined pieces (SentencePiece and the
``tokenizer.json`` both cut them out of text whole); then the 256 byte pieces ``<0x00>`` ..
``<0xFF>`` (108-363) and the pieces learned from the capitalization data: 512 tokens (Gemma's has
256000). The embedding rows of the unused ids (4-105) are zero, so greedy decoding picks real
tokens. The RMS norms' weights are random (Gemma's initialise them to zero: every norm would be
the same, and a norm loaded into the wrong place would go unnoticed).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..embedded import SEED, _ensure, cache_root
from .bpe import corpus
from .sentencepiece import train

FAMILIES_VERSION = "v1"
TINY_GEMMA2 = f"tiny_gemma2-{FAMILIES_VERSION}-seed{SEED}"

PAD, EOS, BOS, UNK = 0, 1, 2, 3
# Gemma's user-defined pieces after the four control ones, at their ids 4-107
GEMMA_PIECES = ["<mask>", "<2mass>", "[@BOS@]", *(f"<unused{i}>" for i in range(99)),
                "<start_of_turn>", "<end_of_turn>"]
START_OF_TURN, END_OF_TURN = 106, 107
UNUSED = range(4, START_OF_TURN)  # <mask> .. <unused98>: no text makes them
VOCAB_SIZE = 512

TINY_GEMMA2_ARCH = dict(hidden_size=16, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, max_position_embeddings=512)
# Gemma 2's own values (2B and 9B: query_pre_attn_scalar is head_dim); the window is cut to the
# tiny model's size, so that it cuts the prompts' attention as Gemma 2's does long texts
GEMMA2_CAPS = dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
                   query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh")


def tiny_gemma2_dir(build: bool = True) -> Path:
    """Directory of the tiny Gemma 2 model in Hugging Face format (built on first use)."""
    return _ensure(TINY_GEMMA2, _build_tiny_gemma2) if build else cache_root() / TINY_GEMMA2


# Gemma's turns as cruijff.config.chat's "gemma" lays them out, torchtune's layout (assets sit below
# config, so the text is here too, and a test checks the two are the same). Gemma's own template
# refuses a system turn, trims each message at both ends, writes the first BOS itself and ends an
# answer at <end_of_turn>\n, where torchtune's layout adds <eos> and starts the next turn with <bos>.
CHAT_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' -%}{{- '<bos>' -}}{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- '<start_of_turn>user\\n' + m['content'].rstrip(' ') + '<end_of_turn>\\n<start_of_turn>model\\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'].rstrip(' ') + '<end_of_turn>\\n<eos>' -}}"
    "{%- else -%}{{- m['content'].rstrip(' ') + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def _merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
    """The BPE merges a SentencePiece BPE model applies, as Hugging Face's conversion lists them:
    for each piece, in the model's order (its score), every split into two pieces of the vocabulary."""
    merges = []
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if len(piece) < 2:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))
                  if piece[:k] in vocab and piece[k:] in vocab]
        merges += sorted(splits, key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
    return merges


def _build_gemma_tokenizer(dest: Path) -> int:
    """Writes the tokenizer files; returns the vocabulary's size."""
    import sentencepiece as spm
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    model = train("bpe", vocab_size=VOCAB_SIZE, user_defined_symbols=GEMMA_PIECES, add_dummy_prefix=False,
                  pad_id=PAD, eos_id=EOS, bos_id=BOS, unk_id=UNK, texts=corpus() + ["model\n"] * 50,
                  pieces=dict(pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>"))
    (dest / "tokenizer.model").write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    size = sp.get_piece_size()
    assert [sp.id_to_piece(i) for i in (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)] == \
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]

    # Gemma's tokenizer.json: SentencePiece's BPE as a BPE of the same pieces and merges, spaces as
    # "▁", no pre-tokenizer, bytes for the rest; the pieces up to <end_of_turn> are added tokens
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    pieces = [p for p, i in vocab.items() if i <= END_OF_TURN]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=_merges(vocab), dropout=None, unk_token="<unk>",
                               fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    special = {p: i <= UNK or i in (4, START_OF_TURN, END_OF_TURN) for p, i in vocab.items() if i <= END_OF_TURN}
    tok.add_tokens([AddedToken(p, special=special[p], normalized=False) for p in pieces])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", BOS)])
    (dest / "tokenizer.json").write_text(tok.to_str())
    config = {
        "tokenizer_class": "GemmaTokenizer",
        "add_bos_token": True, "add_eos_token": False,
        "added_tokens_decoder": {str(vocab[p]): {"content": p, "lstrip": False, "normalized": False, "rstrip": False,
                                                 "single_word": False, "special": special[p]} for p in pieces},
        "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "sp_model_kwargs": {}, "use_default_system_prompt": False, "padding_side": "left",
        "model_max_length": TINY_GEMMA2_ARCH["max_position_embeddings"],
        "chat_template": CHAT_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return size


def _build_tiny_gemma2(dest: Path) -> None:
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig

    vocab_size = _build_gemma_tokenizer(dest)
    config = Gemma2Config(
        vocab_size=vocab_size, **TINY_GEMMA2_ARCH, **GEMMA2_CAPS, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
        attention_bias=False, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
    )
    config.architectures = ["Gemma2ForCausalLM"]
    torch.manual_seed(SEED)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[list(UNUSED)] = 0.0
        for name, w in model.named_parameters():
            if name.endswith("norm.weight"):  # x * (1 + w): each norm its own scale
                w.normal_(0.0, 0.5)
    model.eval()
    # Gemma 2 instruct's: a turn ends at <end_of_turn> as at <eos>
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=[EOS, END_OF_TURN], pad_token_id=PAD,
                                               do_sample=False)
    model.save_pretrained(str(dest), safe_serialization=True)
