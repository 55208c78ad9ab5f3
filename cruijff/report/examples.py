"""What a report reader needs to see what was asked: the prompt a model received, and a few samples
of a comparison (fine-tuned checkpoint against its base) side by side.

Each reads single samples of an inspect log through inspect's own API (``read_eval_log_sample``),
never a whole log.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any, Sequence

WIDTH = 120  # characters of a one-line excerpt
# what reading a sample that is not there, or a log that is not readable, raises
_UNREADABLE = (OSError, ValueError, KeyError, IndexError, RuntimeError, zipfile.BadZipFile)


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:  # text parts as they are; an image, audio... as its kind
        text = getattr(part, "text", None)
        parts.append(text if isinstance(text, str) else f"[{getattr(part, 'type', 'content')}]")
    return "\n".join(parts)


def _render(messages: Sequence[Any]) -> str:
    return "\n".join(f"{m.role}: {_content(m.content)}" for m in messages)


def _first_ids(log: str) -> list[tuple[Any, int]]:
    """(id, epoch) of the log's first sample: from the log's header when it lists its sample ids,
    and the first sample summary otherwise (or when that sample is not in the log)."""
    from inspect_ai.log import read_eval_log, read_eval_log_sample_summaries

    out = []
    try:
        ids = read_eval_log(log, header_only=True).eval.dataset.sample_ids
        if ids:
            out.append((ids[0], 1))
    except _UNREADABLE:
        pass
    try:
        summaries = read_eval_log_sample_summaries(log)
    except _UNREADABLE:
        return out
    if summaries and (summaries[0].id, summaries[0].epoch) not in out:
        out.append((summaries[0].id, summaries[0].epoch))
    return out


def _read(log: str | Path, sample_id: Any, epoch: int = 1, exclude: set[str] | None = None):
    from inspect_ai.log import read_eval_log_sample

    try:
        return read_eval_log_sample(str(log), id=sample_id, epoch=epoch, resolve_attachments=True,
                                    exclude_fields=exclude)
    except _UNREADABLE:
        return None


def prompt_of(log_path: str | Path, sample_id: Any = None) -> str | None:
    """The prompt one sample's model received, as ``role: content`` lines (the log's first sample,
    or ``sample_id``'s first epoch); None when the log or the sample cannot be read.

    The input of the sample's first model call (its ModelEvent), which is what the solver sent,
    system message and template included; without one, the sample's messages less the final
    assistant answer; without those, the sample's input."""
    from inspect_ai.event import ModelEvent

    candidates = [(sample_id, 1)] if sample_id is not None else _first_ids(str(log_path))
    sample = None
    for sid, epoch in candidates:
        sample = _read(log_path, sid, epoch, exclude={"store"})
        if sample is not None:
            break
    if sample is None:
        return None
    for event in sample.events or []:
        if isinstance(event, ModelEvent):
            if event.input:
                return _render(event.input)
            break
    messages = list(sample.messages or [])
    if messages and messages[-1].role == "assistant":
        messages = messages[:-1]
    if messages:
        return _render(messages)
    if isinstance(sample.input, str):
        return sample.input
    return _render(sample.input) if sample.input else None


def one_line(text: Any, width: int = WIDTH) -> str:
    """Text on one line (whitespace runs as one space), cut to ``width`` characters with an ellipsis."""
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= width else text[:width - 1] + "…"


def _input(sample) -> str:
    if isinstance(sample.input, str):
        return sample.input
    users = [m for m in sample.input if m.role == "user"] or list(sample.input)
    return _content(users[-1].content) if users else ""


def _target(sample) -> str:
    t = sample.target
    return t if isinstance(t, str) else " | ".join(str(x) for x in t)


def answer_of(sample) -> str:
    """What the model answered: its first scorer's ``answer`` where the scorer set one, else the
    completion of its output."""
    for score in (sample.scores or {}).values():
        if score.answer is not None:
            return score.answer
        break
    return sample.output.completion if sample.output is not None else ""


RIGHT_AFTER = "right only after fine-tuning"
WRONG_BOTH = "wrong in both"


def example_outputs(log_a: str | Path, log_b: str | Path, ids_right_in_b_only: Sequence[Any],
                    ids_wrong_in_both: Sequence[Any], k: int = 3) -> list[dict]:
    """Up to ``k`` samples the fine-tuned checkpoint (``log_b``) got right and its base (``log_a``)
    got wrong, then up to ``k`` both got wrong, in the order of the ids given; a sample missing
    from either log is passed over. Each: ``case``, ``id``, ``input`` (one line, at most 120
    characters), ``target``, ``base_answer``, ``finetuned_answer``. Reads only those samples."""
    rows: list[dict] = []
    for case, ids in ((RIGHT_AFTER, ids_right_in_b_only), (WRONG_BOTH, ids_wrong_in_both)):
        found = 0
        for sid in ids:
            if found >= k:
                break
            a = _read(log_a, sid, exclude={"events", "store"})
            b = _read(log_b, sid, exclude={"events", "store"}) if a is not None else None
            if b is None:
                continue
            rows.append({"case": case, "id": sid, "input": one_line(_input(b)), "target": _target(b),
                         "base_answer": answer_of(a), "finetuned_answer": answer_of(b)})
            found += 1
    return rows


def _cell(v: Any) -> str:
    return one_line(v).replace("|", "\\|") or "—"


def markdown_examples(rows: Sequence[dict]) -> str:
    """The examples as a markdown table (every cell one line, at most 120 characters); empty
    without rows."""
    if not rows:
        return ""
    out = ["| case | id | input | target | base | fine-tuned |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append("| " + " | ".join(_cell(r[c]) for c in
                                     ("case", "id", "input", "target", "base_answer", "finetuned_answer")) + " |")
    return "\n".join(out)
