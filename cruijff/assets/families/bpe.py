"""Byte-level BPE as GPT-2, Qwen2.5, Llama 3 (tiktoken) and Phi-4 tokenize: the byte alphabet and
merges learned from a small corpus, for the tiny models' tokenizer files."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from ..embedded import SEED, _splits


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE's alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def corpus() -> list[str]:
    """Text the merges are learned from: the capitalization prompts and answers, chat markup."""
    words = [w for split in _splits().values() for w in split]
    rng = random.Random(SEED + 10)
    texts = [f"Capitalize: {w}" for w in words] + [w.capitalize() for w in words]
    texts += ["user\n", "assistant\n", "system\n", "Answer in one word.", "Be brief.", "And: rome "] * 50
    rng.shuffle(texts)
    return texts


def learn_merges(texts: list[str], n_merges: int, pretokenize: str) -> list[tuple[str, str]]:
    """Byte-level BPE merges: the most frequent adjacent pair, again and again (ties by the pair)."""
    import regex

    enc = bytes_to_unicode()
    counts = Counter("".join(enc[b] for b in piece.encode("utf-8"))
                     for text in texts for piece in regex.findall(pretokenize, text))
    words = {tuple(w): c for w, c in counts.items()}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        new = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + c
        words = new
    return merges


def byte_level_vocab(texts: list[str], n_merges: int, pretokenize: str,
                     size: int) -> tuple[dict[str, int], list[tuple[str, str]], int]:
    """A GPT-2-style ``vocab.json`` of ``size`` ids: the 256 byte tokens, then the merges learned from
    ``texts``, then unused tokens no merge makes (the ids below a family's fixed special tokens).
    Returns the vocabulary, the merges and how many tokens the bytes and merges make."""
    enc = bytes_to_unicode()
    vocab = {enc[b]: i for i, b in enumerate(sorted(enc, key=lambda b: ord(enc[b])))}
    merges = learn_merges(texts, n_merges, pretokenize)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    learned = len(vocab)
    for i in range(learned, size):
        vocab[f"<|unused_{i}|>"] = i
    return vocab, merges, learned


def write_vocab_merges(dest: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """``vocab.json`` and ``merges.txt`` as Hugging Face's byte-level BPE tokenizers ship them."""
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (dest / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
