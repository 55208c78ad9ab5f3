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


def _keys(fields: Any) -> tuple[str, str]:
    return str(fields.get("input") or "input"), str(fields.get("output") or "output")


def data_keys(cfg: Any) -> tuple[str, str]:
    """The input and output fields of the dataset's instruct records."""
    return _keys(cfg.dataset.get("fields") or {})


def _chats(shape: Any, system: Any, system_prompt: Any) -> bool:
    """Whether records are read as chats: a chat dataset, or instruct records with a system prompt
    (laid out as system, user, assistant turns)."""
    return str(shape or "instruct") == "chat" or system is not None or system_prompt is not None


def is_chat(cfg: Any) -> bool:
    """Whether the records the stages read are chats (``messages``)."""
    ds = cfg.dataset
    return _chats(ds.get("shape"), (ds.get("fields") or {}).get("system"), ds.get("system_prompt"))


def one_list(name: str) -> ConfigError:
    """The refusal of a file that holds one list of records and names no way to split it."""
    return ConfigError("dataset.split", None, f"{name} holds one list of records: name its splits with "
                       "dataset.split=[0.8,0.1,0.1] (fractions, shuffled with dataset.split_seed), "
                       "dataset.split_column=<column>, or dataset.validation/dataset.test files")


def _path(value: Any) -> Path:
    return Path(os.path.expanduser(str(value))).resolve()


def _numbers(split: Any) -> list[float]:
    try:
        return [float(x) for x in split]
    except (TypeError, ValueError):
        raise ConfigError("dataset.split", split, "three fractions (train, validation, test) that sum to 1, "
                          "like [0.8, 0.1, 0.1]") from None


def _options(ds: dict) -> dict:
    """What shapes the conversion, from the dataset section (a plain dict); paths made absolute."""
    fields = ds.get("fields") or {}
    split = ds.get("split")
    return {
        "format": str(ds.get("format") or "auto"), "shape": str(ds.get("shape") or "instruct"),
        "input": _keys(fields)[0], "output": _keys(fields)[1],
        "system": None if fields.get("system") is None else str(fields.get("system")),
        "messages": str(fields.get("messages") or "messages"),
        "system_prompt": None if ds.get("system_prompt") is None else str(ds.get("system_prompt")),
        "validation": None if ds.get("validation") is None else str(_path(ds["validation"])),
        "test": None if ds.get("test") is None else str(_path(ds["test"])),
        "split": None if split is None else _numbers(split),
        "split_column": None if ds.get("split_column") is None else str(ds["split_column"]),
        "split_seed": int(ds.get("split_seed") or 0),
    }


def as_is(path: Path, options: dict) -> bool:
    """Whether the file is read as it is: a JSON file of splits with instruct records, nothing to convert."""
    return (_format(path, options["format"]) == "json" and not path.is_dir()
            and not _chats(options["shape"], options["system"], options["system_prompt"])
            and not any(options[k] for k in ("validation", "test", "split", "split_column")))


_READ: dict[tuple[str, str], tuple[Path, dict]] = {}


def dataset_file(cfg: Any) -> Path:
    """The JSON file of splits the stages read for ``cfg.dataset`` (``path`` set): the file itself
    when it is one already, else its conversion (built on first use, then found by its key)."""
    from omegaconf import OmegaConf

    ds = OmegaConf.to_container(cfg.dataset, resolve=True) if OmegaConf.is_config(cfg.dataset) else dict(cfg.dataset)
    memo = (json.dumps(ds, sort_keys=True, default=str), os.getcwd())  # a grid's runs share one dataset section
    if memo not in _READ:
        options = _options(ds)
        if options["input"] == options["output"]:
            raise ConfigError("dataset.fields.output", options["output"], "is the input's field too; name the answer's")
        if options["system"] and options["system_prompt"]:
            raise ConfigError("dataset.system_prompt", options["system_prompt"],
                              f"and dataset.fields.system={options['system']} both give the system prompt: choose one")
        _READ[memo] = (_path(ds["path"]), options)
    path, options = _READ[memo]
    if as_is(path, options):
        return path
    if not path.exists():
        raise ConfigError("dataset.path", str(ds["path"]), "no such file or directory")
    for split in ("validation", "test"):
        if options[split] and not Path(options[split]).is_file():
            raise ConfigError(f"dataset.{split}", ds[split], "no such file")
    sources = {"path": _content(str(path)), **{k: _content(options[k]) for k in ("validation", "test") if options[k]}}
    key = hashlib.sha256(json.dumps({"version": VERSION, "sources": sources,  # each source in its role
                                     "options": {k: v for k, v in options.items()
                                                 if k not in ("validation", "test")}},
                                    sort_keys=True).encode()).hexdigest()[:24]
    out = assets.cache_root() / "datasets" / f"{key}.json"
    if not out.exists():
        data = convert(path, options)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}")
            tmp.write_text(json.dumps(data, ensure_ascii=False, sort_keys=True))
            tmp.replace(out)
        except OSError as e:
            raise ConfigError("dataset.path", str(ds["path"]), f"cannot keep its conversion in {out.parent} "
                              f"({e.strerror}); set CRUIJFF_CACHE to a writable dir") from None
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
    splits = _split(path, read(path, options["format"]), options)
    chat = _chats(options["shape"], options["system"], options["system_prompt"])
    out = {name: [(_chat if chat else _instruct)(where, r, options) for where, r in rows]
           for name, rows in splits.items()}
    for name in ("train", "test"):
        if not out.get(name):
            raise ConfigError("dataset.path", str(path), f"gives no {name} records as split ({_how(options)}); "
                              "every run needs train records, and its evals test ones")
    return out


def _how(options: dict) -> str:
    if options["split"]:
        return f"dataset.split={options['split']}"
    if options["split_column"]:
        return f"dataset.split_column={options['split_column']}"
    if options["validation"] or options["test"]:
        return "dataset.validation/dataset.test"
    return "its own splits"


Rows = list  # of (where a record is, for messages: "items.jsonl line 20"; the record)


def read(path: Path, fmt: str = "auto") -> dict[str, Rows] | Rows:
    """The records of a file, each with where it is (a list), or its splits (a JSON object of
    lists, a saved DatasetDict). Text is UTF-8, a byte-order mark allowed."""
    kind = _format(path, fmt)
    name = path.name
    try:
        if kind == "saved":
            return _read_saved(path)
        if kind == "json":
            try:
                data = json.loads(path.read_text(encoding="utf-8-sig"))
            except ValueError as e:
                raise ConfigError("dataset.path", str(path), f"is not valid JSON ({e})") from None
            if isinstance(data, list):
                return [(f"{name} record {i}", r) for i, r in enumerate(data)]
            if not isinstance(data, dict):
                raise ConfigError("dataset.path", str(path), "must hold a list of records or an object of splits")
            for k, rows in data.items():
                if not isinstance(rows, list):
                    raise ConfigError("dataset.path", str(path), f"split {k!r} is not a list of records")
            return {k: [(f"{name} {k} record {i}", r) for i, r in enumerate(rows)] for k, rows in data.items()}
        if kind == "jsonl":
            rows = []
            with open(path, encoding="utf-8-sig") as f:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append((f"{name} line {n}", json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise ConfigError("dataset.path", str(path),
                                          f"line {n} is not JSON: {e.msg} at column {e.colno}") from None
            return rows
        if kind in ("csv", "tsv"):
            rows = []
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f, delimiter="\t" if kind == "tsv" else ",")
                for r in reader:
                    if None in r:
                        raise ConfigError("dataset.path", str(path), f"line {reader.line_num} has more fields than "
                                          f"its header ({', '.join(reader.fieldnames or [])})")
                    rows.append((f"{name} line {reader.line_num}", r))
            return rows
        if kind == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:
                raise ConfigError("dataset.path", str(path), f"not a Parquet file ({e})") from None
            return [(f"{name} row {i}", r) for i, r in enumerate(table.to_pylist())]
    except UnicodeDecodeError as e:
        raise ConfigError("dataset.path", str(path), f"is not UTF-8 text ({e.reason} at byte {e.start}); "
                          "save it as UTF-8") from None
    raise ConfigError("dataset.format", fmt if fmt != "auto" else path.suffix or "(no extension)",
                      "one of json, jsonl, csv, tsv, parquet, or a save_to_disk directory "
                      "(auto: by the file's extension)")


def _read_saved(path: Path) -> dict[str, Rows] | Rows:
    """A ``save_to_disk`` directory's records; a class label as its name, as the dataset shows it."""
    try:
        from datasets import ClassLabel, Dataset, load_from_disk

        loaded = load_from_disk(str(path))
    except Exception as e:  # not a save_to_disk dir
        raise ConfigError("dataset.path", str(path), f"not a dataset saved with save_to_disk ({e})") from None

    def rows(part: Any, label: str) -> Rows:
        names = {k: f for k, f in part.features.items() if isinstance(f, ClassLabel)}
        out = []
        for i, r in enumerate(part.to_list()):
            for k, f in names.items():
                if isinstance(r.get(k), int) and r[k] >= 0:
                    r[k] = f.int2str(r[k])
            out.append((f"{path.name} {label}record {i}", r))
        return out

    if isinstance(loaded, Dataset):
        return rows(loaded, "")
    return {k: rows(part, f"{k} ") for k, part in loaded.items()}


def _split(path: Path, found: dict | Rows, options: dict) -> dict[str, Rows]:
    """split name -> its records: the source's own splits, or one list split one (and only one) way."""
    named = [k for k in ("validation", "test") if options[k]]
    ways = [(key, value) for key, value in (("dataset.split", options["split"]),
                                            ("dataset.split_column", options["split_column"]),
                                            (f"dataset.{named[0]}" if named else "", named and options[named[0]]))
            if value]
    if len(ways) > 1:
        raise ConfigError(ways[1][0], ways[1][1], f"and {ways[0][0]} both split {path.name}: choose one way")
    if isinstance(found, dict):
        if ways:
            raise ConfigError(ways[0][0], ways[0][1], f"{path.name} has splits of its own ({', '.join(found)}); "
                              "name no others")
        unknown = [k for k in found if k not in SPLITS]
        if unknown:
            raise ConfigError("dataset.path", str(path), f"has a split {unknown[0]!r}; splits are train, validation, test")
        return dict(found)
    rows = list(found)
    if named:
        out = {"train": rows}
        for k in named:
            other = read(Path(options[k]), options["format"])
            if isinstance(other, dict):
                raise ConfigError(f"dataset.{k}", options[k], "must hold records (a list), not splits")
            out[k] = other
        return out
    if options["split_column"]:
        col = options["split_column"]
        out = {}
        for where, r in rows:
            value = r.get(col) if isinstance(r, dict) else None
            if value not in SPLITS:
                raise ConfigError("dataset.split_column", col, f"{where} has {col}={value!r}; "
                                  f"each record's {col} must be one of {', '.join(SPLITS)}")
            out.setdefault(value, []).append((where, r))
        return out
    if options["split"]:
        return _fractions(rows, options["split"], options["split_seed"], path.name)
    raise one_list(path.name)


def _fractions(rows: Rows, fractions: list[float], seed: int, name: str) -> dict[str, Rows]:
    """The records shuffled with ``seed`` and cut by fractions (train, validation, test): validation
    and test get their share rounded half up, train the rest; a split asked for gets at least one
    record or the cut is refused."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError("dataset.split", fractions, "three fractions (train, validation, test) that sum to 1, "
                          "like [0.8, 0.1, 0.1]")
    n = len(rows)
    n_val, n_test = (int(f * n + 0.5) for f in fractions[1:])
    sizes = {"train": n - n_val - n_test, "validation": n_val, "test": n_test}
    empty = [k for k, f in zip(SPLITS, fractions) if f > 0 and sizes[k] <= 0]
    if empty:
        raise ConfigError("dataset.split", fractions, f"{name} has {n} records: too few for a {empty[0]} split")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cuts = {"train": order[:sizes["train"]], "validation": order[sizes["train"]:sizes["train"] + n_val],
            "test": order[sizes["train"] + n_val:]}
    return {k: [rows[i] for i in sorted(idx)] for k, idx in cuts.items() if idx}


def _text(where: str, r: Any, field: str, key: str) -> str:
    """A record's text in ``field`` (``key``: the config key naming the field), else one line. A
    whole number is its digits; any other value that is not text is refused, not guessed at."""
    if not isinstance(r, dict):
        raise ConfigError("dataset.path", where, "is not an object of fields")
    value = r.get(field)
    if value is None:
        have = ", ".join(str(k) for k in list(r)[:8])
        raise ConfigError(key, field, f"{where} has no {field!r}" + (f" (it has: {have})" if have else ""))
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(key, field, f"{where} has {field}={value!r}, not text (write it as text in the file)"[:300])
    if not value.strip():
        raise ConfigError(key, field, f"{where} has an empty {field!r}")
    return value


def _instruct(where: str, r: Any, options: dict) -> dict:
    return {options["input"]: _text(where, r, options["input"], "dataset.fields.input"),
            options["output"]: _text(where, r, options["output"], "dataset.fields.output")}


def _chat(where: str, r: Any, options: dict) -> dict:
    """A record as ``{"messages": [...]}``: a chat as it is (checked: a system turn first if any,
    then user and assistant turns in turn, ending with the answer), or an instruct pair as system
    (if any), user, assistant turns. ``dataset.system_prompt`` goes before a chat that has none."""
    if options["shape"] != "chat":
        system = (_text(where, r, options["system"], "dataset.fields.system") if options["system"]
                  else options["system_prompt"])
        turns = [{"role": "user", "content": _text(where, r, options["input"], "dataset.fields.input")},
                 {"role": "assistant", "content": _text(where, r, options["output"], "dataset.fields.output")}]
        return {"messages": ([{"role": "system", "content": system}] if system else []) + turns}
    field = options["messages"]
    messages = r.get(field) if isinstance(r, dict) else None
    key = "dataset.fields.messages"
    if not isinstance(messages, list) or not messages:
        raise ConfigError(key, field, f"{where} has no list of messages {field!r}")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ConfigError(key, field, f"{where} message {j} needs a role ({', '.join(ROLES)}) and a text content")
        out.append({"role": m["role"], "content": m["content"]})
    if options["system_prompt"] and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": options["system_prompt"]})
    turns = out[1:] if out[0]["role"] == "system" else out
    for j, m in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ConfigError(key, field, f"{where} message {j + len(out) - len(turns)} is a {m['role']} turn where a "
                              f"{expected} turn comes (a system turn first if any, then user and assistant in turn)")
    if not turns or turns[-1]["role"] != "assistant":
        raise ConfigError(key, field, f"{where} must end with an assistant turn (the answer) after a user turn")
    if not turns[-1]["content"].strip():
        raise ConfigError(key, field, f"{where} has an empty last assistant turn")
    return {"messages": out}
