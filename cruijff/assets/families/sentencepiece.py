"""SentencePiece models as Llama 2, Mistral, Gemma and Phi-3 tokenize, trained on a small corpus for
the tiny models' ``tokenizer.model``."""

from __future__ import annotations

import io

from .bpe import corpus


def train(model_type: str = "bpe", vocab_size: int = 400, user_defined_symbols: list[str] = (),
          add_dummy_prefix: bool = True, pad_id: int = -1, unk_id: int = 0, bos_id: int = 1, eos_id: int = 2,
          pieces: dict[str, str] | None = None, texts: list[str] | None = None) -> bytes:
    """A serialized SentencePiece model (``tokenizer.model``'s bytes), with byte fallback, trained
    on ``texts`` (default: the corpus the byte-level BPEs learn from), deterministic.
    ``pieces``: the names of the special pieces (``bos_piece``, ``eos_piece``, ``unk_piece``, ``pad_piece``)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts if texts is not None else corpus()), model_writer=model,
        model_type=model_type, vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True,
        character_coverage=1.0, pad_id=pad_id, unk_id=unk_id, bos_id=bos_id, eos_id=eos_id,
        user_defined_symbols=list(user_defined_symbols), normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, split_digits=True,
        num_threads=1, minloglevel=2, **(pieces or {}))
    return model.getvalue()
