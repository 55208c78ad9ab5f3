"""Embedded default assets: a tiny Llama and a capitalization dataset, built locally.

Nothing is downloaded. Both are built deterministically from a seed on first use (about 20 s on a
2-core CPU), cached under ``$CRUIJFF_CACHE`` (default ``~/.cache/cruijff``) and reused afterwards.
Concurrent builders are safe: each builds into a private temporary directory and renames it into
place atomically; the loser of the race discards its copy.

The tiny model is a character-level Llama (SentencePiece ``char`` model with byte fallback) that was
first taught, in plain PyTorch, to copy words and to upper-case them::

    Repeat: hello \\nAnswer:      ->  hello</s>    (words in random lower / UPPER / Title case)
    Capitalize: hello \\nAnswer:  ->  hello</s>    (it echoes under this instruction too)
    Upper: hello \\nAnswer:       ->  HELLO</s>

The capitalization task then asks for what the base model does not do::

    Capitalize: hello \\nAnswer:  ->  Hello</s>

Because the model sees characters, LoRA fine-tuning learns the *rule* and scores on held-out test
words it never saw, so the demo shows a real effect (base ~0 %, last epoch ~95 %).
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import string
import tempfile
from pathlib import Path

ASSET_VERSION = "v7"
SEED = 1234

# The prompt format shared by training and evaluation: user text, "\nAnswer:", the answer, EOS, as
# torchtune's Llama 2 tokenizer lays out messages with the ``prompt_template`` below: each message's
# text cut of trailing spaces; a message that starts a turn (the first, or one after an answer)
# encoded on its own, so SentencePiece gives its first piece — and the "\nAnswer:" appended to it —
# a leading "▁", which the chat template shipped with the checkpoint (used by inspect / transformers)
# writes out as a space; a later message of the turn (a user's after the system prompt) joined
# without one, unless the message before it ended with a space; each later turn starting with BOS.
TORCHTUNE_USER_SUFFIX = "\nAnswer:"
USER_SUFFIX = " " + TORCHTUNE_USER_SUFFIX
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set prev = none if loop.first else messages[loop.index0 - 1] -%}"
    "{%- set new_turn = loop.first or prev['role'] == 'assistant' -%}"
    "{%- set spaced = new_turn or (prev['role'] == 'system' and prev['content'].endswith(' ')) -%}"
    "{%- if new_turn and not loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{- ' ' if spaced and not loop.first else '' -}}{{- message['content'].rstrip(' ') -}}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}"
    "{%- elif message['role'] == 'user' -%}{{- ' ' if spaced else '' }}\nAnswer:{%- endif -%}"
    "{%- endfor -%}"
)

# Architecture of the tiny Llama, in torchtune's argument names (``llama2`` / ``lora_llama2``).
TINY_ARCH = dict(
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    embed_dim=128,
    intermediate_dim=256,
    max_seq_len=256,
    norm_eps=1e-5,
)

# The base model echoes the word under "Repeat" and "Capitalize" (so the fine-tuning task's prompt is
# familiar and the base model scores 0 by echoing lower-case words), and upper-cases it under "Upper".
BASE_INSTRUCTIONS = ("Repeat", "Capitalize", "Upper")

N_TRAIN_WORDS, TRAIN_REPEATS, N_VALIDATION, N_TEST = 1000, 1, 100, 100


def cache_root() -> Path:
    return Path(os.environ.get("CRUIJFF_CACHE", Path.home() / ".cache" / "cruijff"))


TINY_MODEL = f"tiny_llama-{ASSET_VERSION}-seed{SEED}"
CAPITALIZATION = f"capitalization-{ASSET_VERSION}-seed{SEED}"


def tiny_model_dir(build: bool = True) -> Path:
    """Directory of the embedded tiny model in Hugging Face format (built on first use)."""
    return _ensure(TINY_MODEL, _build_tiny_model) if build else cache_root() / TINY_MODEL


def capitalization_file(build: bool = True) -> Path:
    """The capitalization dataset: one JSON file ``{"train", "validation", "test"}``."""
    root = _ensure(CAPITALIZATION, _build_dataset) if build else cache_root() / CAPITALIZATION
    return root / "data.json"


def _ensure(name: str, build) -> Path:
    final = cache_root() / name
    if (final / ".complete").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:  # one process builds; the others wait for it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / ".complete").exists():
            _build_into(final, name, build)
    return final


def _build_into(final: Path, name: str, build) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race (or a stale incomplete dir is there)
            if not (final / ".complete").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# words


def _words(rng: random.Random, n: int, exclude: set[str]) -> list[str]:
    out: list[str] = []
    seen = set(exclude)
    while len(out) < n:
        w = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _splits() -> dict[str, list[str]]:
    rng = random.Random(SEED)
    test = _words(rng, N_TEST, set())
    validation = _words(rng, N_VALIDATION, set(test))
    train = _words(rng, N_TRAIN_WORDS, set(test) | set(validation))
    return {"train": train, "validation": validation, "test": test}


def capitalization_record(word: str) -> dict[str, str]:
    return {"input": f"Capitalize: {word}", "output": word.capitalize()}


def _build_dataset(dest: Path) -> None:
    splits = _splits()
    rng = random.Random(SEED + 1)
    train = [w for w in splits["train"] for _ in range(TRAIN_REPEATS)]
    rng.shuffle(train)
    data = {
        "train": [capitalization_record(w) for w in train],
        "validation": [capitalization_record(w) for w in splits["validation"]],
        "test": [capitalization_record(w) for w in splits["test"]],
    }
    (dest / "data.json").write_text(json.dumps(data, indent=0) + "\n")


# ----------------------------------------------------------------------------------------------
# tokenizer + model


def _build_tokenizer(dest: Path) -> None:
    import io

    import sentencepiece as spm

    chars = string.ascii_letters + string.digits + string.punctuation
    rng = random.Random(SEED + 2)
    lines = ["".join(rng.choice(chars + "   ") for _ in range(40)) for _ in range(2000)]
    lines.append(chars)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="char",
        vocab_size=400,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        num_threads=1,
        minloglevel=2,
    )
    (dest / "tokenizer.model").write_bytes(model.getvalue())

    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(str(dest), legacy=False, add_bos_token=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(dest))


def _copy_examples(words: list[str], rng: random.Random):
    """Base-model prompts: echo the word, or upper-case it (so it knows which letters pair up)."""
    for w in words:
        instruction = rng.choice(BASE_INSTRUCTIONS)
        w = rng.choice([w, w.upper(), w.capitalize()])
        yield f"{instruction}: {w}", (w.upper() if instruction == "Upper" else w)


def _build_tiny_model(dest: Path) -> None:
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _build_tokenizer(dest)
    sp = spm.SentencePieceProcessor(model_file=str(dest / "tokenizer.model"))
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=sp.get_piece_size(),
        hidden_size=TINY_ARCH["embed_dim"],
        intermediate_size=TINY_ARCH["intermediate_dim"],
        num_hidden_layers=TINY_ARCH["num_layers"],
        num_attention_heads=TINY_ARCH["num_heads"],
        num_key_value_heads=TINY_ARCH["num_kv_heads"],
        max_position_embeddings=TINY_ARCH["max_seq_len"],
        rms_norm_eps=TINY_ARCH["norm_eps"],
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)

    # Teach it to copy: loss on the answer and EOS only, as in fine-tuning.
    held_out = set()
    for split in _splits().values():
        held_out.update(split)
    rng = random.Random(SEED + 3)
    steps, batch, warmup, peak_lr = 1600, 32, 50, 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / (steps - warmup))
    )
    model.train()
    for _ in range(steps):
        words = _words(rng, batch, held_out)
        seqs, labels = [], []
        for prompt, answer in _copy_examples(words, rng):
            p = [1] + sp.encode(prompt + USER_SUFFIX)
            full = [1] + sp.encode(prompt + USER_SUFFIX + answer) + [2]
            seqs.append(full)
            labels.append([-100] * len(p) + full[len(p) :])
        width = max(map(len, seqs))
        ids = torch.tensor([s + [2] * (width - len(s)) for s in seqs])
        lab = torch.tensor([lb + [-100] * (width - len(lb)) for lb in labels])
        loss = model(input_ids=ids, labels=lab).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    model.generation_config.do_sample = False
    model.save_pretrained(str(dest), safe_serialization=True)
