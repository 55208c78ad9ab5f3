"""Phi-3's and Phi-4's turns for torchtune as the model's own chat template lays them out and its
Hugging Face tokenizer (tokenizer.json) tokenizes them: what an eval prompts a Phi model with (the
model dir's own template, ``model.chat_template: null``) is then what it was fine-tuned on.

torchtune 0.6.1's Phi tokenizers lay turns out otherwise.
``phi3_mini_tokenizer``: it starts with ``<s>`` (Phi-3's tokenizer adds no BOS), puts "▁" "\\n" after
each role token and ``<|end|>`` (Phi-3's added tokens strip the whitespace after them), encodes each
message without SentencePiece's leading "▁" (Phi-3's tokenizer.json puts one before the text between
two added tokens), and encodes an added token's text inside a message (``<|end|>``) as text.
``phi4_tokenizer``: an answer never ends with ``<|im_end|>`` (its ``__call__`` tokenizes without
``add_eos``), so the model never learns to stop and every turn after a first answer is shifted; it
cuts the spaces at a message's end; it encodes ``<|im_end|>`` inside a message as text; and it splits
text with GPT-2's pattern, not the cl100k pattern of Phi-4's tokenizer.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import regex
from torchtune.data import Message, truncate
from torchtune.models.phi3._tokenizer import PHI3_SPECIAL_TOKENS, Phi3MiniTokenizer
from torchtune.models.phi4._tokenizer import CL100K_PATTERN, Phi4Tokenizer


class Phi3ChatTokenizer(Phi3MiniTokenizer):
    """torchtune's Phi-3 tokenizer (``tokenizer.model``), laying out each message as
    ``<|role|>\\n{content}<|end|>\\n`` tokenized as ``tokenizer.json`` does: its added tokens found in
    the text, the whitespace after one that strips it (``rstrip``) dropped, the text between them
    encoded by SentencePiece with its leading "▁"."""

    def __init__(self, path: str, special_tokens_path: str | None = None, max_seq_len: int | None = None,
                 prompt_template=None):
        # the added tokens and how each strips whitespace: tokenizer.json, beside tokenizer.model (without
        # one, Phi-3-mini's: <unk> <s> </s>, then torchtune's PHI3_SPECIAL_TOKENS, all but <|endoftext|> rstrip)
        tokenizer_json = Path(special_tokens_path) if special_tokens_path else Path(path).with_name("tokenizer.json")
        if tokenizer_json.exists():
            added = json.loads(tokenizer_json.read_text())["added_tokens"]
        else:
            added = [{"content": t, "id": i, "rstrip": t not in ("<unk>", "<s>", "<|endoftext|>")}
                     for t, i in {"<unk>": 0, "<s>": 1, "</s>": 2, **PHI3_SPECIAL_TOKENS}.items()]
        super().__init__(path, special_tokens={t["content"]: t["id"] for t in added},
                         max_seq_len=max_seq_len, prompt_template=prompt_template)
        self.strips = {t["content"]: (bool(t.get("lstrip")), bool(t.get("rstrip"))) for t in added}
        self.split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.strips, key=len, reverse=True)) + ")")

    def encode_text(self, text: str) -> list[int]:
        """``text`` as Phi-3's ``tokenizer.json`` tokenizes it (no BOS)."""
        parts = self.split.split(text)
        for i in range(1, len(parts), 2):
            lstrip, rstrip = self.strips[parts[i]]
            if lstrip:
                parts[i - 1] = parts[i - 1].rstrip()
            if rstrip:
                parts[i + 1] = parts[i + 1].lstrip()
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.special_tokens[part])
            elif part:
                ids += self._spm_model.encode(part, add_bos=False, add_eos=False)
        return ids

    def tokenize_messages(self, messages: list[Message], *, add_eos: bool = False,
                          ignore_system_prompt: bool = False) -> tuple[list[int], list[bool]]:
        templated = self.prompt_template(messages) if self.prompt_template is not None else messages
        tokens: list[int] = []
        mask: list[bool] = []
        for message in templated:
            if ignore_system_prompt and message.role == "system":
                continue
            if message.role not in ("system", "user", "assistant"):
                raise ValueError(f"Unknown role '{message.role}' for message: '{message.content}'")
            text = "".join(item["content"] for item in message.content if item["type"] == "text")
            ids = self.encode_text(f"<|{message.role}|>\n{text}<|end|>\n")
            tokens += ids
            mask += [message.masked] * len(ids)
            if self.max_seq_len and len(tokens) >= self.max_seq_len:
                break
        if add_eos:
            tokens.append(self.eos_id)
            mask.append(mask[-1] if mask else True)
        if self.max_seq_len and len(tokens) >= self.max_seq_len:
            tokens = truncate(tokens, self.max_seq_len, self.eos_id if add_eos else None)
            mask = truncate(mask, self.max_seq_len, True if add_eos else None)
        return tokens, mask


def phi3_chat_tokenizer(path: str, special_tokens_path: str | None = None, max_seq_len: int | None = None,
                        prompt_template=None) -> Phi3ChatTokenizer:
    """torchtune's builder signature: ``path`` (``tokenizer.model``), ``special_tokens_path``
    (``tokenizer.json``)."""
    return Phi3ChatTokenizer(path, special_tokens_path, max_seq_len=max_seq_len, prompt_template=prompt_template)


class Phi4ChatTokenizer(Phi4Tokenizer):
    """torchtune's Phi-4 tokenizer (``vocab.json`` + ``merges.txt``), laying out each message as
    ``<|im_start|>{role}<|im_sep|>{content}<|im_end|>`` tokenized as ``tokenizer.json`` does: its added
    tokens found in the text, the text between them split by the cl100k pattern, then BPE."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pattern = regex.compile(CL100K_PATTERN)
        specials = sorted(self.special_tokens, key=len, reverse=True)
        self.split = regex.compile("(" + "|".join(regex.escape(t) for t in specials) + ")")

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        model = self.tokenizer_model
        ids = [self.bos_id] if add_bos else []
        for i, part in enumerate(self.split.split(text)):
            if i % 2:
                ids.append(self.special_tokens[part])
                continue
            for piece in self.pattern.findall(part):
                symbols = model.bpe("".join(model.byte_encoder[b] for b in piece.encode("utf-8"))).split(" ")
                ids += [model.encoder[s] for s in symbols]
        return ids + ([self.eos_id] if add_eos else [])

    def tokenize_messages(self, messages: list[Message], *, add_eos: bool = False,
                          ignore_system_prompt: bool = False) -> tuple[list[int], list[bool]]:
        templated = self.prompt_template(messages) if self.prompt_template else messages
        tokens: list[int] = []
        mask: list[bool] = []
        for message in templated:
            if ignore_system_prompt and message.role == "system":
                continue
            text = "".join(item["content"] for item in message.content if item["type"] == "text")
            ids = self.encode(f"<|im_start|>{message.role}<|im_sep|>{text}<|im_end|>", add_bos=False, add_eos=False)
            tokens += ids
            mask += [message.masked] * len(ids)
            if self.max_seq_len and len(tokens) >= self.max_seq_len:
                break
        if self.max_seq_len and len(tokens) >= self.max_seq_len:
            tokens = truncate(tokens, self.max_seq_len, self.eos_id if add_eos else None)
            mask = truncate(mask, self.max_seq_len, True if add_eos else None)
        return tokens, mask


def phi4_chat_tokenizer(vocab_path: str, merges_path: str, special_tokens_path: str | None = None,
                        max_seq_len: int | None = None, prompt_template=None) -> Phi4ChatTokenizer:
    """torchtune's ``phi4_tokenizer`` signature."""
    from torchtune.data._prompt_templates import _get_prompt_template
    from torchtune.modules.transforms.tokenizers import parse_hf_tokenizer_json

    special = parse_hf_tokenizer_json(special_tokens_path) if special_tokens_path else None
    template = _get_prompt_template(prompt_template) if prompt_template is not None else None
    return Phi4ChatTokenizer(merges_path=merges_path, vocab_path=vocab_path, special_tokens=special,
                             max_seq_len=max_seq_len, prompt_template=template)
