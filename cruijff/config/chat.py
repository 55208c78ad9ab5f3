"""Chat templates that prompt a model at eval time exactly as torchtune laid out its training data.

A model's own Hugging Face template does not always match what torchtune trains on: Llama 3.1+
templates add a system header with a knowledge cut-off and today's date, Qwen2.5's adds a default
system prompt ("You are Qwen, ...") when a sample has none. torchtune adds neither, so a fine-tuned
checkpoint evaluated with the model's own template would be asked in a format it never saw.

``model.chat_template`` names one of the templates below (the catalogue does), is a Jinja template of
its own, or is null for the template in the model directory; ``eval.chat_template`` (default
``auto``: the model's) chooses another for an eval without fine-tuning again. Like the models' own templates as
inspect uses them, these leave the first BOS to the tokenizer (Llama 3 and Mistral add one, Qwen
none, as torchtune does): written into the text, a SentencePiece tokenizer would drop the space it
puts before the first word.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..records import layout

# Llama 3 header format, as torchtune's Llama3Tokenizer (content stripped, no default system header).
LLAMA3 = (
    "{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# ChatML, as torchtune's Qwen2/Qwen2.5 tokenizers (no BOS, no default system prompt).
CHATML = (
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# torchtune's MistralChatTemplate ("[INST] " + user + " [/INST] "), as text. torchtune names it for
# Mistral v0.1/v0.2; v0.3's tokenizer has [INST] and [/INST] as control tokens, which torchtune's
# SentencePiece encoding does not produce from text, so for v0.3 the ids may differ even where the
# text is the same (not checkable without its tokenizer files). torchtune encodes each piece
# separately, trailing spaces cut, each with SentencePiece's leading space: the text before [/INST]
# has two spaces, and the answer starts with a space that belongs to the assistant's turn (the model
# generates it). Each later user turn starts with its own BOS, as torchtune's.
MISTRAL_INST = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{- ('' if loop.first else '<s>') + '[INST] ' + m['content'].rstrip(' ') + '  [/INST]' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'].rstrip(' ') + '</s>' -}}"
    "{%- else -%}{{- raise_exception('torchtune MistralChatTemplate has no ' + m['role'] + ' role') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# torchtune's Llama2ChatTemplate as its Llama 2 tokenizer lays it out (SentencePiece, each piece of a
# message encoded on its own, cut of trailing spaces, with SentencePiece's leading space), written as
# text the model's own tokenizer gives the same pieces for; the first BOS is left to the tokenizer,
# as in the templates above. The system prompt goes inside every user turn,
# after "[INST]", as torchtune puts it.
LLAMA2_INST = (
    "{%- set ns = namespace(system='', first=true) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}"
    "{%- set ns.system = ' <<SYS>>\\n ' + m['content'].rstrip(' ') + ' \\n<</SYS>>\\n\\n' -%}"
    "{%- elif m['role'] == 'user' -%}"
    "{{- ('' if ns.first else '<s>') + '[INST]' + ns.system + ' ' + m['content'].rstrip(' ') + '  [/INST]' -}}"
    "{%- set ns.first = false -%}"
    "{%- elif m['role'] == 'assistant' -%}{{- ' ' + m['content'].rstrip(' ') + '</s>' -}}"
    "{%- else -%}{{- raise_exception('torchtune Llama2ChatTemplate has no ' + m['role'] + ' role') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Gemma's turns (<start_of_turn>user ... <end_of_turn>, the answer after <start_of_turn>model) as a
# torchtune prompt template (role -> [prepend, append]); Gemma has no system role: a system prompt
# is text before the first turn. GEMMA is the same layout as text (Gemma's SentencePiece model puts
# no space before a piece), the first BOS left to the tokenizer, each later turn starting with one.
GEMMA_PROMPT = {
    "system": ["", "\n\n"],
    "user": ["<start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"],
    "assistant": ["", "<end_of_turn>\n"],
}
GEMMA = (
    "{%- for m in messages -%}"
    "{%- if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' -%}{{- '<bos>' -}}{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{{- '<start_of_turn>user\\n' + m['content'].rstrip(' ') + '<end_of_turn>\\n<start_of_turn>model\\n' -}}"
    "{%- elif m['role'] == 'assistant' -%}{{- m['content'].rstrip(' ') + '<end_of_turn>\\n<eos>' -}}"
    "{%- else -%}{{- m['content'].rstrip(' ') + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

TEMPLATES = {"llama3": LLAMA3, "chatml": CHATML, "mistral_inst": MISTRAL_INST, "llama2_inst": LLAMA2_INST,
             "gemma": GEMMA}


def is_jinja(value: str) -> bool:
    return "{{" in value or "{%" in value


def tag(value: Any) -> str:
    """A short name for a template, for the base control's dir (one control per layout)."""
    value = str(value)
    return value if value in TEMPLATES else "custom-" + hashlib.sha256(value.encode()).hexdigest()[:8]


def resolve(value: Any) -> str | None:
    """The Jinja text of ``model.chat_template`` (None: the model directory's own template)."""
    if value is None:
        return None
    value = str(value)
    return value if is_jinja(value) else TEMPLATES[value]


def template_choice(cfg: Any) -> Any:
    """``eval.chat_template``, or the model's own choice when it is ``auto``."""
    value = cfg.eval.get("chat_template", "auto")
    return cfg.model.get("chat_template") if value == "auto" else value


def eval_template(cfg: Any) -> str | None:
    """The Jinja text that lays out a config's eval prompts; None: the model dir's own template."""
    return resolve(template_choice(cfg))


def base_cell_dir(cfg: Any, sweep_dir: Path, key: str) -> Path:
    """A base model's control cell of a config, by its key: named for the model and prompt layout."""
    choice = template_choice(cfg)
    return layout.base_dir(sweep_dir, str(cfg.model.name), None if choice is None else tag(choice), key)
