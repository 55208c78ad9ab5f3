"""A dataset as the config names it, read once and written as the one file both stages read.

``dataset.path`` is a JSON file of splits (``{"train": [...], "validation": [...], "test": [...]}``),
or records in JSON (a list), JSONL, CSV or Parquet, or a ``save_to_disk`` directory of Hugging Face
``datasets``. The splits are the file's own (its keys, a directory's splits), one file per split
(``dataset.validation``, ``dataset.test``), a column naming each record's split
(``dataset.split_column``), or fractions of one list shuffled with ``dataset.split_seed``
(``dataset.split: [0.8, 0.1, 0.1]``). A record is an instruct pair (``dataset.fields.input`` and
``.output`` under any names, with an optional system prompt: ``dataset.fields.system`` per record or
``dataset.system_prompt`` for all) or a chat (``dataset.shape: chat``: ``messages`` of role and
content, several turns; the last assistant turn is the answer an eval asks for).

A JSON file of splits with instruct records is read as it is. Anything else is converted once into
such a file, checked record by record (one line naming the file, the record and the field), kept in
the cache under the content of its sources and the options that shape it: the same inputs give the
same file, byte for byte, so a re-run — on another machine too — trains and evaluates on the same
records, and the run's identity is that file's content. Training reads it through torchtune's
``instruct_dataset`` (or ``chat_dataset``), evaluation through the tasks: one set of records for both.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

from .. import assets
from ..errors import ConfigError

SPLITS = ("train", "validation", "test")
FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}
ROLES = ("system", "user", "assistant")
VERSION = 1  # of the conversion: a change that could change a converted file's records bumps it


def data_keys(cfg: Any) -> tuple[str, str]:
    """The input and output fields of the dataset's instruct records."""
    fields = cfg.dataset.get("fields") or {}
    return str(fields.get("input") or "input"), str(fields.get("output") or "output")


def is_chat(cfg: Any) -> bool:
    """Whether the records the stages read are chats (``messages``): a chat dataset, or instruct
    records with a system prompt (laid out as system, user, assistant turns)."""
    ds = cfg.dataset
    return (str(ds.get("shape") or "instruct") == "chat" or ds.get("system_prompt") is not None
            or (ds.get("fields") or {}).get("system") is not None)


def _options(ds: dict) -> dict:
    """What shapes the conversion, from the dataset section (a plain dict); paths made absolute."""
    fields = ds.get("fields") or {}
    split = ds.get("split")
    return {
        "format": str(ds.get("format") or "auto"), "shape": str(ds.get("shape") or "instruct"),
        "input": str(fields.get("input") or "input"), "output": str(fields.get("output") or "output"),
        "system": None if fields.get("system") is None else str(fields.get("system")),
        "messages": str(fields.get("messages") or "messages"),
        "system_prompt": None if ds.get("system_prompt") is None else str(ds.get("system_prompt")),
        "validation": None if ds.get("validation") is None else str(Path(str(ds["validation"])).resolve()),
        "test": None if ds.get("test") is None else str(Path(str(ds["test"])).resolve()),
        "split": None if split is None else [float(x) for x in split],
        "split_column": None if ds.get("split_column") is None else str(ds["split_column"]),
        "split_seed": int(ds.get("split_seed") or 0),
    }


def as_is(path: Path, options: dict) -> bool:
    """Whether the file is read as it is: a JSON file of splits with instruct records, nothing to convert."""
    return (_format(path, options["format"]) == "json" and not path.is_dir() and options["shape"] == "instruct"
            and options["system"] is None and options["system_prompt"] is None
            and not any(options[k] for k in ("validation", "test", "split", "split_column")))


_READ: dict[tuple[str, str], tuple[Path, dict]] = {}


def dataset_file(cfg: Any) -> Path:
    """The JSON file of splits the stages read for ``cfg.dataset`` (``path`` set): the file itself
    when it is one already, else its conversion (built on first use, then found by its key)."""
    from omegaconf import OmegaConf

    ds = OmegaConf.to_container(cfg.dataset, resolve=True) if OmegaConf.is_config(cfg.dataset) else dict(cfg.dataset)
    memo = (json.dumps(ds, sort_keys=True, default=str), os.getcwd())  # a grid's runs share one dataset section
    if memo not in _READ:
        _READ[memo] = (Path(str(ds["path"])).resolve(), _options(ds))
    path, options = _READ[memo]
    if as_is(path, options):
        return path
    if not path.exists():
        raise ConfigError("dataset.path", str(ds["path"]), "no such file or directory")
    for split in ("validation", "test"):
        if options[split] and not Path(options[split]).is_file():
            raise ConfigError(f"dataset.{split}", ds[split], "no such file")
    sources = [str(path)] + [options[s] for s in ("validation", "test") if options[s]]
    key = hashlib.sha256(json.dumps({"version": VERSION, "sources": [_content(s) for s in sources],
                                     "options": {k: v for k, v in options.items()
                                                 if k not in ("validation", "test")}},
                                    sort_keys=True).encode()).hexdigest()[:24]
    out = assets.cache_root() / "datasets" / f"{key}.json"
    if not out.exists():
        data = convert(path, options)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        tmp.write_text(json.dumps(data, ensure_ascii=False, sort_keys=True))
        tmp.replace(out)
    return out


def _content(source: str) -> str:
    """The content of a source file, or of every file of a ``save_to_disk`` directory."""
    from .identity import file_sha256

    p = Path(source)
    if not p.is_dir():
        return file_sha256(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return hashlib.sha256("".join(f"{f.relative_to(p)}\0{file_sha256(f)}\0" for f in files).encode()).hexdigest()


def _format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "saved"
    return FORMATS.get(path.suffix.lower(), "unknown")


def convert(path: Path, options: dict) -> dict[str, list]:
    """The splits of the dataset at ``path`` as ``options`` shape them, every record checked."""
    found = read(path, options["format"])
    splits = _split(path, found, options)
    chat = options["shape"] == "chat" or options["system"] is not None or options["system_prompt"] is not None
    out: dict[str, list] = {}
    for name, (where, rows) in splits.items():
        out[name] = [(_chat(where, i, r, options) if chat else _instruct(where, i, r, options))
                     for i, r in enumerate(rows)]
    if not out.get("train"):
        raise ConfigError("dataset.path", str(path), "has no train records")
    return out


def read(path: Path, fmt: str = "auto") -> dict[str, list] | list:
    """The records of a file (a list), or its splits (a JSON object of lists, a saved DatasetDict)."""
    kind = _format(path, fmt)
    where = str(path)
    if kind == "saved":
        try:
            from datasets import Dataset, load_from_disk

            loaded = load_from_disk(str(path))
        except Exception as e:  # not a save_to_disk dir
            raise ConfigError("dataset.path", where, f"not a dataset saved with save_to_disk ({e})") from None
        if isinstance(loaded, Dataset):
            return loaded.to_list()
        return {name: part.to_list() for name, part in loaded.items()}
    if kind == "json":
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError("dataset.path", where, f"is not valid JSON ({e})") from None
        if not isinstance(data, (dict, list)):
            raise ConfigError("dataset.path", where, "must hold a list of records or an object of splits")
        return data
    if kind == "jsonl":
        rows = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError("dataset.path", where, f"line {n} is not JSON: {e.msg} at column {e.colno}") from None
        return rows
    if kind in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if kind == "tsv" else ","))
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:
            raise ConfigError("dataset.path", where, f"not a Parquet file ({e})") from None
    raise ConfigError("dataset.format", fmt if fmt != "auto" else path.suffix or "(no extension)",
                      "one of json, jsonl, csv, tsv, parquet, or a save_to_disk directory "
                      "(auto: by the file's extension)")


def _split(path: Path, found: dict | list, options: dict) -> dict[str, tuple[str, list]]:
    """split name -> (where its records come from, for messages; the records)."""
    name = path.name
    named = [k for k in ("validation", "test") if options[k]]
    if isinstance(found, dict):
        if named or options["split"] or options["split_column"]:
            raise ConfigError("dataset.split", options["split"] or options["split_column"] or named[0],
                              f"{name} has splits of its own ({', '.join(found)}); name no others")
        unknown = [k for k in found if k not in SPLITS]
        if unknown:
            raise ConfigError("dataset.path", str(path), f"has a split {unknown[0]!r}; splits are train, validation, test")
        out = {}
        for k, rows in found.items():
            if not isinstance(rows, list):
                raise ConfigError("dataset.path", str(path), f"split {k!r} is not a list of records")
            out[k] = (f"{name} {k}", rows)
        return out
    rows = list(found)
    if named:
        out = {"train": (name, rows)}
        for k in named:
            other = read(Path(options[k]), options["format"])
            if isinstance(other, dict):
                raise ConfigError(f"dataset.{k}", options[k], "must hold records (a list), not splits")
            out[k] = (Path(options[k]).name, list(other))
        return out
    if options["split_column"]:
        col = options["split_column"]
        out: dict[str, tuple[str, list]] = {}
        for i, r in enumerate(rows):
            value = r.get(col) if isinstance(r, dict) else None
            if value not in SPLITS:
                raise ConfigError("dataset.split_column", col, f"{name} record {i} has {col}={value!r}; "
                                  f"each record's {col} must be one of {', '.join(SPLITS)}")
            out.setdefault(value, (f"{name} ({col}={value})", []))[1].append(r)
        return out
    if options["split"]:
        fractions = options["split"]
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ConfigError("dataset.split", fractions, "three fractions (train, validation, test) that sum to 1")
        order = list(range(len(rows)))
        random.Random(options["split_seed"]).shuffle(order)
        n_train = round(fractions[0] * len(rows))
        n_val = round(fractions[1] * len(rows))
        cuts = {"train": order[:n_train], "validation": order[n_train:n_train + n_val],
                "test": order[n_train + n_val:]}
        return {k: (name, [rows[i] for i in sorted(idx)]) for k, idx in cuts.items() if idx}
    raise ConfigError("dataset.split", None, f"{name} holds one list of records: name its splits with "
                      "dataset.split=[0.8,0.1,0.1] (fractions, shuffled with dataset.split_seed), "
                      "dataset.split_column=<column>, or dataset.validation/dataset.test files")


def _text(where: str, i: int, r: Any, field: str, key: str) -> str:
    """Record ``i``'s text in ``field`` (``key``: the config key naming the field), else one line."""
    if not isinstance(r, dict):
        raise ConfigError("dataset.path", where, f"record {i} is not an object of fields")
    value = r.get(field)
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        have = ", ".join(list(r)[:8])
        raise ConfigError(key, field, f"{where} record {i} has no text {field!r}" + (f" (it has: {have})" if have else ""))
    text = str(value)
    if not text.strip():
        raise ConfigError(key, field, f"{where} record {i} has an empty {field!r}")
    return text


def _instruct(where: str, i: int, r: Any, options: dict) -> dict:
    return {options["input"]: _text(where, i, r, options["input"], "dataset.fields.input"),
            options["output"]: _text(where, i, r, options["output"], "dataset.fields.output")}


def _chat(where: str, i: int, r: Any, options: dict) -> dict:
    """A record as ``{"messages": [...]}``: a chat as it is (checked), or an instruct pair as
    system (if any), user, assistant turns."""
    if options["shape"] != "chat":
        system = (_text(where, i, r, options["system"], "dataset.fields.system") if options["system"]
                  else options["system_prompt"])
        turns = [{"role": "user", "content": _text(where, i, r, options["input"], "dataset.fields.input")},
                 {"role": "assistant", "content": _text(where, i, r, options["output"], "dataset.fields.output")}]
        return {"messages": ([{"role": "system", "content": system}] if system else []) + turns}
    field = options["messages"]
    messages = r.get(field) if isinstance(r, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ConfigError("dataset.fields.messages", field, f"{where} record {i} has no list of messages {field!r}")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError("dataset.fields.messages", field, f"{where} record {i} message {j} needs a role "
                              f"({', '.join(ROLES)}) and a text content")
        out.append({"role": m["role"], "content": m["content"]})
    if options["system_prompt"] and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": options["system_prompt"]})
    if out[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in out):
        raise ConfigError("dataset.fields.messages", field, f"{where} record {i} must end with an assistant "
                          "turn (the answer) after a user turn")
    if not out[-1]["content"].strip():
        raise ConfigError("dataset.fields.messages", field, f"{where} record {i} has an empty last assistant turn")
    return {"messages": out}
