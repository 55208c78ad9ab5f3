"""An eval cell's identity: the content of everything that decides its scores, never a name or a path.

A cell's key hashes
- the checkpoint: the base model dir's content (:func:`cruijff.config.model_content_id`); for an
  adapter, that and the adapter's content hash; for full weights, the id written with the
  checkpoint's completion marker (a retrained epoch is a new checkpoint);
- each task: a built-in one by its name, version, arguments and the content of the data it reads;
  one of a file by the file's content and that of the local modules it imports
  (:func:`cruijff.records.snapshot.module_hashes`), the function, its arguments and the content of the samples
  it builds (ids, inputs, targets: whatever data file it reads); and the label its scores go under;
- the generation and prompt settings: ``max_tokens``, greedy decoding, the template text, ``limit``,
  the backend.

Two cells with the same key would score the same samples the same way, so a cell is reused only
under its key, and a base control is shared by exactly the runs whose control has the same key.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..config import TaskSpec, file_sha256, model_content_id
from ..config.chat import eval_template
from ..records import layout, snapshot

KEY_VERSION = 1
# built-in tasks: bump a version when the task's code changes what it scores
BUILTIN_VERSIONS = {"exact_match": 1}


def task_identity(spec: TaskSpec, data_file: Path, input_key: str, output_key: str,
                  memo: dict | None = None) -> dict[str, Any]:
    """What decides a task's scores, apart from the model: its code, arguments and data. ``memo``:
    the samples of tasks already built in this look at a sweep (each distinct task is built once)."""
    base = {"label": spec.label, "args": _plain(spec.args)}
    if "@" not in spec.name:
        return {**base, "task": spec.name, "version": BUILTIN_VERSIONS.get(spec.name, 0),
                "data": file_sha256(data_file), "fields": [input_key, output_key]}
    path, fn = spec.name.rsplit("@", 1)
    file = file_sha256(Path(path))
    modules = snapshot.module_hashes(path, snapshot.code_root())
    memo = {} if memo is None else memo
    key = (spec.name, json.dumps(base["args"], sort_keys=True, default=str), file, json.dumps(modules))
    if key not in memo:
        memo[key] = task_samples(spec)
    return {**base, "file": file, "function": fn, "samples": memo[key], **({"modules": modules} if modules else {})}


def task_samples(spec: TaskSpec) -> str:
    """The content of the samples a task of a file scores (their ids, inputs and targets), read by
    building the task: what it reads — a data file of its own, a dataset on disk — is part of its
    cells' keys, wherever it reads it from."""
    from .backend import build_task, samples_key

    return samples_key(build_task(spec, Path("."), "input", "output"), None)


def settings_identity(cfg: Any) -> dict[str, Any]:
    """The generation and prompt settings of a config's eval."""
    template = eval_template(cfg)
    return {
        "max_tokens": int(cfg.eval.max_tokens),
        "limit": cfg.eval.limit,
        "do_sample": False,  # greedy decoding, always
        "template": None if template is None else hashlib.sha256(template.encode()).hexdigest(),
        "backend": str(cfg.eval.get("backend", "hf")),
    }


def checkpoint_identity(model_dir: Path, checkpoint: Path | None, adapter: bool) -> dict[str, Any] | None:
    """The weights a cell evaluates: the base model's content, with an adapter's, or full weights by
    their checkpoint id. None when the checkpoint is not complete (it has no id yet)."""
    if checkpoint is None:
        return {"base": model_content_id(model_dir)}
    ckpt_id = layout.checkpoint_id(checkpoint)
    if ckpt_id is None:
        return None
    if adapter:
        return {"base": model_content_id(model_dir), "adapter": ckpt_id}
    return {"weights": ckpt_id}


def cell_key(checkpoint: dict[str, Any], tasks: list[dict[str, Any]], settings: dict[str, Any]) -> tuple[str, dict]:
    """(key, parts): the hash of a cell's identity, and the identity itself (kept in its results.json)."""
    parts = {"version": KEY_VERSION, "checkpoint": checkpoint, "tasks": tasks, "settings": settings}
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32], parts


def changed(old: dict, new: dict) -> list[str]:
    """What differs between two cells' identities, as ``checkpoint.adapter``-style names, for a line
    that says why a cell is evaluated again."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{k}.{sub}" for sub in changed(a, b)]
        else:
            out.append(k)
    return out


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain JSON values."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:
        pass
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
