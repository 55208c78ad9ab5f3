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

Every dataset is read once — its bytes, hashed as read — checked record by record (one line naming
the file, the record and the field) and kept in the cache as a frozen copy under the content of its
sources and the options that shape it: a JSON file of splits with instruct records byte for byte
(when its fields are text already), anything else converted into such a file. The same inputs give
the same file, byte for byte, so a re-run — on another machine too — trains and evaluates on the
same records, and the run's identity is that file's content; an edit of the user's file while a
launch runs is another dataset, never other records under this one's identity. Training reads the
copy through torchtune's ``instruct_dataset`` (or ``chat_dataset``), evaluation through the tasks:
one set of records for both. Beside it are facts worked out once: test (and validation) records that
are train records too (a warning at launch) and whether records have a system turn
(:func:`has_system_turns`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
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
VERSION = 2  # of the conversion: a change that could change a converted file's records bumps it


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
        numbers = [float(x) for x in split]
    except (TypeError, ValueError):
        numbers = None
    if numbers is None or not all(math.isfinite(x) for x in numbers):
        raise ConfigError("dataset.split", split, "three fractions (train, validation, test) that sum to 1, "
                          "like [0.8, 0.1, 0.1]" + ("" if numbers is None else "; nan and inf are no fractions"))
    return numbers


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
    """Whether the file is already what the stages read: a JSON file of splits with instruct records,
    nothing to convert (it is still checked and copied into the cache, byte for byte when it can be)."""
    return (_format(path, options["format"]) == "json" and not path.is_dir()
            and not _chats(options["shape"], options["system"], options["system_prompt"])
            and not any(options[k] for k in ("validation", "test", "split", "split_column")))


_READ: dict[tuple[str, str], tuple[Path, dict]] = {}
_WARNED: set[str] = set()  # the datasets this process has warned about


def _section(cfg: Any) -> tuple[dict, Path, dict]:
    """The dataset section (a plain dict), its path and the options that shape it, checked once."""
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
    return (ds, *_READ[memo])


def dataset_file(cfg: Any) -> Path:
    """The JSON file of splits the stages read for ``cfg.dataset`` (``path`` set): a frozen copy in
    the cache — of the file itself when it is one already, else of its conversion — built on first
    use from the sources' bytes read once, then found by its key (the sources' content, the options
    that shape it, the conversion's version). Nothing reads the user's files after that: an edit
    made while a launch runs is another dataset, never other records under this one's identity."""
    ds, path, options = _section(cfg)
    if not path.exists():
        raise ConfigError("dataset.path", str(ds["path"]), "no such file or directory")
    for split in ("validation", "test"):
        if options[split] and not Path(options[split]).is_file():
            raise ConfigError(f"dataset.{split}", ds[split], "no such file")
    sources = {"path": path, **{k: Path(options[k]) for k in ("validation", "test") if options[k]}}
    # found by the content hashes kept per file state (cheap); else built from bytes read once
    out = _cached(_key({role: _content(str(p)) for role, p in sources.items()}, options))
    if not out.exists():
        snaps: dict[str, _Snapshot] = {}
        try:
            for role, p in sources.items():
                snaps[role] = _Snapshot.take(p)
            out = _cached(_key({role: s.sha for role, s in snaps.items()}, options))
            if not out.exists():
                data, raw = _build(path, options, snaps)
                _store(out, data, raw, options, str(ds["path"]))
        finally:
            for s in snaps.values():
                s.drop()
    _warn(out, options)
    return out


def _key(sources: dict[str, str], options: dict) -> str:
    """The cache key of a dataset: each source's content in its role, the options that shape it, the version."""
    return hashlib.sha256(json.dumps({"version": VERSION, "sources": sources,
                                      "options": {k: v for k, v in options.items() if k not in ("validation", "test")}},
                                     sort_keys=True).encode()).hexdigest()[:24]


def _cached(key: str) -> Path:
    return assets.cache_root() / "datasets" / f"{key}.json"


def _meta_path(out: Path) -> Path:
    return out.with_name(out.stem + ".meta.json")


def _store(out: Path, data: dict, raw: bytes | None, options: dict, shown: str) -> None:
    """Write the dataset (``raw``: the source's own bytes, else ``data`` as JSON) and what is known
    of it (leakage, system turns) beside it, the dataset last: once it is there, so is the rest."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for target, body in ((_meta_path(out), json.dumps(_facts(data, options), sort_keys=True).encode()),
                             (out, raw if raw is not None else
                              json.dumps(data, ensure_ascii=False, sort_keys=True).encode())):
            tmp = target.with_name(f".{target.name}.{os.getpid()}")
            tmp.write_bytes(body)
            tmp.chmod(0o444)  # frozen: its content is its key's
            tmp.replace(target)
    except OSError as e:
        raise ConfigError("dataset.path", shown, f"cannot keep its copy in {out.parent} "
                          f"({e.strerror}); set CRUIJFF_CACHE to a writable dir") from None


class _Snapshot:
    """A source's bytes, read once: a file's in memory, a ``save_to_disk`` directory's copied into
    the cache (each file read once, hashed and written as read); ``sha`` is of exactly those bytes."""

    def __init__(self, path: Path, sha: str, data: bytes | None = None, copy: Path | None = None):
        self.path, self.sha, self.data, self.copy = path, sha, data, copy

    @classmethod
    def take(cls, path: Path) -> "_Snapshot":
        if not path.is_dir():
            try:
                data = path.read_bytes()
            except OSError as e:
                raise ConfigError("dataset.path", str(path), f"cannot be read ({e.strerror})") from None
            return cls(path, hashlib.sha256(data).hexdigest(), data=data)
        import tempfile

        root = assets.cache_root() / "datasets"
        root.mkdir(parents=True, exist_ok=True)
        copy = Path(tempfile.mkdtemp(prefix=".snapshot-", dir=root))
        parts = []
        try:
            for f in sorted(f for f in path.rglob("*") if f.is_file()):
                data = f.read_bytes()
                rel = f.relative_to(path)
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                (copy / rel).write_bytes(data)
                parts.append(f"{rel}\0{hashlib.sha256(data).hexdigest()}\0")
        except OSError as e:
            import shutil

            shutil.rmtree(copy, ignore_errors=True)
            raise ConfigError("dataset.path", str(path), f"cannot be read ({e.strerror}: {e.filename})") from None
        return cls(path, hashlib.sha256("".join(parts).encode()).hexdigest(), copy=copy)

    def drop(self) -> None:
        if self.copy is not None:
            import shutil

            shutil.rmtree(self.copy, ignore_errors=True)


def _build(path: Path, options: dict, snaps: dict[str, "_Snapshot"]) -> tuple[dict, bytes | None]:
    """The dataset's splits, checked, and the bytes to keep when the source's own are already the
    file the stages read (a UTF-8 JSON file of splits whose fields are all text), else None."""
    main = snaps["path"]
    data = convert(path, options, snaps)
    if not as_is(path, options) or main.data is None or main.data.startswith(b"\xef\xbb\xbf"):
        return data, None
    found = json.loads(main.data.decode("utf-8"))
    fields = (options["input"], options["output"])
    if all(isinstance(r.get(k), str) for rows in found.values() for r in rows for k in fields):
        return data, main.data
    return data, None


def _prompt(record: dict, options: dict) -> str:
    """What a record asks (its input, or a chat's turns before the answer), to find it in another split."""
    if "messages" in record and options["input"] not in record:
        return json.dumps(record["messages"][:-1], sort_keys=True, ensure_ascii=False)
    return str(record.get(options["input"]))


def _facts(data: dict, options: dict) -> dict:
    """What launches are told about a dataset, kept beside it: the validation and test records whose
    prompt is a train record's too, and whether any record has a system turn."""
    train = {_prompt(r, options) for r in data.get("train") or []}
    seen = {k: [sum(_prompt(r, options) in train for r in data.get(k) or []), len(data.get(k) or [])]
            for k in ("test", "validation")}
    system = any(isinstance(r, dict) and isinstance(r.get("messages"), list) and r["messages"]
                 and isinstance(r["messages"][0], dict) and r["messages"][0].get("role") == "system"
                 for rows in data.values() for r in rows)
    return {"in_train": seen, "system_turns": system}


def _facts_of(out: Path, options: dict) -> dict:
    """The facts kept beside a dataset's copy (worked out again where they are not)."""
    meta = _meta_path(out)
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        facts = _facts(json.loads(out.read_text()), options)
        try:
            tmp = meta.with_name(f".{meta.name}.{os.getpid()}")
            tmp.write_text(json.dumps(facts, sort_keys=True))
            tmp.replace(meta)
        except OSError:
            pass
        return facts


def _warn(out: Path, options: dict) -> None:
    """One line on stderr, once per process, where test (or validation) records are train records too."""
    import sys

    if out.stem in _WARNED:
        return
    _WARNED.add(out.stem)
    facts = _facts_of(out, options)
    parts = [f"{n} of {total} {split} records" for split, (n, total) in facts["in_train"].items() if n]
    if parts:
        print(f"cruijff: warning: dataset: {' and '.join(parts)} are also in train (by input); scores on them measure memory, not generalisation", file=sys.stderr)


def has_system_turns(cfg: Any) -> bool:
    """Whether the records the stages read for ``cfg.dataset`` hold a system turn (a chat's own, a
    ``dataset.fields.system`` field's or ``dataset.system_prompt``): known when the dataset is copied
    into the cache and kept beside it, so asking costs a look-up. False for the embedded dataset.
    Raises the dataset's own ConfigError where it cannot be read."""
    if cfg.dataset.get("path") is None:
        return False
    out = dataset_file(cfg)
    return bool(_facts_of(out, _section(cfg)[2])["system_turns"])


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


def convert(path: Path, options: dict, snaps: dict[str, _Snapshot] | None = None) -> dict[str, list]:
    """The splits of the dataset at ``path`` as ``options`` shape them, every record checked; read
    from ``snaps`` (role -> the bytes read once: ``path``, ``validation``, ``test``) where given."""
    snaps = snaps or {}
    splits = _split(path, read(path, options["format"], snaps.get("path")), options, snaps)
    chat = _chats(options["shape"], options["system"], options["system_prompt"])
    plain = as_is(path, options)  # a JSON file of splits: its records are named train[3], its problems by dataset.path
    out = {name: [(_chat if chat else _instruct)(where, r, options, str(path) if plain else None) for where, r in rows]
           for name, rows in splits.items()}
    for name in ("train", "test"):
        if out.get(name):
            continue
        if _how(options) == "its own splits":
            problem = f"its {name!r} split is empty" if name in splits else f"has no {name!r} split"
            raise ConfigError("dataset.path", str(path), f"{problem}; every run needs train records, and its "
                              "evals test ones")
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


class _Missing:
    """A CSV line's field past its last one (the line has fewer fields than its header)."""

    def __repr__(self) -> str:
        return "(missing)"


class _NoLabel:
    """A class label of -1: Hugging Face's "no label" (a split without labels, like GLUE's test split)."""

    def __repr__(self) -> str:
        return "-1"


MISSING, NO_LABEL = _Missing(), _NoLabel()


def read(path: Path, fmt: str = "auto", snap: _Snapshot | None = None) -> dict[str, Rows] | Rows:
    """The records of a file, each with where it is (a list), or its splits (a JSON object of
    lists, a saved DatasetDict), from ``snap`` (its bytes read once) where given. Text is UTF-8, a
    byte-order mark allowed."""
    import io

    kind = _format(path, fmt)
    name = path.name
    if kind == "saved":
        return _read_saved(path, snap.copy if snap is not None and snap.copy is not None else path)
    if kind not in ("json", "jsonl", "csv", "tsv", "parquet"):
        raise ConfigError("dataset.format", fmt if fmt != "auto" else path.suffix or "(no extension)",
                          "one of json, jsonl, csv, tsv, parquet, or a save_to_disk directory "
                          "(auto: by the file's extension)")
    if snap is not None and snap.data is not None:
        data = snap.data
    else:
        try:
            data = path.read_bytes()
        except IsADirectoryError:
            raise ConfigError("dataset.path", str(path), f"is a directory, not a {kind} file") from None
        except OSError as e:
            raise ConfigError("dataset.path", str(path), f"cannot be read ({e.strerror})") from None
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:
            raise ConfigError("dataset.path", str(path), f"not a Parquet file ({e})") from None
        return [(f"{name} row {i}", r) for i, r in enumerate(table.to_pylist())]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        raise ConfigError("dataset.path", str(path), f"is not UTF-8 text ({e.reason} at byte {start}); "
                          "save it as UTF-8") from None
    if kind == "json":
        try:
            found = json.loads(text)
        except ValueError as e:
            raise ConfigError("dataset.path", str(path), f"is not valid JSON ({e})") from None
        if isinstance(found, list):
            return [(f"{name} record {i}", r) for i, r in enumerate(found)]
        if not isinstance(found, dict):
            raise ConfigError("dataset.path", str(path), "must hold a list of records or an object of splits")
        for k, rows in found.items():
            if not isinstance(rows, list):
                raise ConfigError("dataset.path", str(path), f"split {k!r} is not a list of records")
        return {k: [(f"{name} {k}[{i}]", r) for i, r in enumerate(rows)] for k, rows in found.items()}
    if kind == "jsonl":
        rows = []
        for n, line in enumerate(io.StringIO(text, newline=None), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{name} line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError("dataset.path", str(path),
                                  f"line {n} is not JSON: {e.msg} at column {e.colno}") from None
        return rows
    # CSV, TSV: a field of any size; CSV quoted strictly (a stray quote is refused, not read past), TSV
    # not quoted at all (a field's quotes are its text)
    csv.field_size_limit(2**31 - 1)
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {"delimiter": ",", "strict": True}
    rows = []
    reader = csv.DictReader(io.StringIO(text, newline=""), restval=MISSING, **dialect)
    try:
        for r in reader:
            if None in r:
                raise ConfigError("dataset.path", str(path), f"line {reader.line_num} has more fields than "
                                  f"its header ({', '.join(reader.fieldnames or [])})")
            rows.append((f"{name} line {reader.line_num}", r))
    except csv.Error as e:
        raise ConfigError("dataset.path", str(path), f"line {reader.line_num + 1} is not {kind.upper()} "
                          f"({e}: a quote opened and not closed, or text after a closing quote)") from None
    return rows


def _read_saved(path: Path, source: Path) -> dict[str, Rows] | Rows:
    """A ``save_to_disk`` directory's records (read from ``source``, its frozen copy); a class label
    as its name, as the dataset shows it; an empty saved split as no records."""
    try:
        from datasets import ClassLabel, Dataset, load_from_disk

        split_names = None
        def empty(d: Path) -> bool:  # saved with no records: no data file, which load_from_disk cannot read
            return (d / "state.json").is_file() and not json.loads((d / "state.json").read_text()).get("_data_files")

        if (source / "dataset_dict.json").is_file():
            split_names = json.loads((source / "dataset_dict.json").read_text())["splits"]
            loaded: Any = {k: None if empty(source / k) else Dataset.load_from_disk(str(source / k))
                           for k in split_names}
        else:
            loaded = None if empty(source) else load_from_disk(str(source))
    except Exception as e:  # not a save_to_disk dir
        raise ConfigError("dataset.path", str(path), f"not a dataset saved with save_to_disk ({e})") from None

    def rows(part: Any, label: str) -> Rows:
        if part is None:  # saved with no records
            return []
        names = {k: f for k, f in part.features.items() if isinstance(f, ClassLabel)}
        out = []
        for i, r in enumerate(part.to_list()):
            for k, f in names.items():
                if isinstance(r.get(k), int):
                    r[k] = f.int2str(r[k]) if r[k] >= 0 else NO_LABEL
            out.append((f"{path.name} {label}[{i}]" if label else f"{path.name} record {i}", r))
        return out

    if split_names is None and (loaded is None or isinstance(loaded, Dataset)):
        return rows(loaded, "")
    return {k: rows(part, k) for k, part in loaded.items()}


def _split(path: Path, found: dict | Rows, options: dict, snaps: dict[str, _Snapshot]) -> dict[str, Rows]:
    """split name -> its records: the source's own splits, or one list split one (and only one) way."""
    named = [k for k in ("validation", "test") if options[k]]
    ways = [(key, value) for key, value in (("dataset.split", options["split"]),
                                            ("dataset.split_column", options["split_column"]),
                                            (f"dataset.{named[0]}" if named else "", named and options[named[0]]))
            if value]
    if len(ways) > 1:
        raise ConfigError(ways[1][0], ways[1][1], f"and {ways[0][0]} both split {path.name}: choose one way")
    if isinstance(found, dict) and ways and list(found) == ["train"]:
        found = found["train"]  # a saved dataset of one split (load_dataset's usual): split as one list
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
            other = read(Path(options[k]), options["format"], snaps.get(k))
            if isinstance(other, dict):
                raise ConfigError(f"dataset.{k}", options[k], "must hold records (a list), not splits")
            out[k] = other
        return out
    if options["split_column"]:
        col = options["split_column"]
        out = {}
        for where, r in rows:
            if not isinstance(r, dict):
                raise ConfigError("dataset.path", where, "is not an object of fields")
            if col not in r or r[col] is MISSING:
                have = ", ".join(str(k) for k, v in r.items() if v is not MISSING) or "none"
                raise ConfigError("dataset.split_column", col, f"{where} has no column {col!r} (its columns: {have})")
            value = r[col]
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


def _text(where: str, r: Any, field: str, key: str, at: str | None = None) -> str:
    """A record's text in ``field`` (``key``: the config key naming the field), else one line. A
    whole number is its digits; any other value that is not text is refused, not guessed at. ``at``:
    the file a record of a JSON file of splits is in (its problems are then named by dataset.path)."""
    def refuse(problem: str) -> ConfigError:
        if at is not None:
            return ConfigError("dataset.path", at, f"{where.rsplit(' ', 1)[-1]} {problem}"[:300])
        return ConfigError(key, field, f"{where} {problem}"[:300])

    if not isinstance(r, dict):
        raise refuse("is not an object of fields")
    value = r.get(field)
    if field not in r or value is MISSING:
        have = ", ".join(str(k) for k, v in list(r.items())[:8] if v is not MISSING)
        short = " (the line has fewer fields than its header)" if value is MISSING else ""
        raise refuse(f"has no {field!r}{short}" + (f" (it has: {have})" if have and not short else ""))
    if value is None:
        raise refuse(f"has {field}=null, not text")
    if value is NO_LABEL:
        raise refuse(f"has {field}=-1, Hugging Face's \"no label\" (a split saved without its labels): "
                     "leave the split out or give it labels")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise refuse(f"has {field}={value!r}, not text (write it as text in the file)")
    if not value.strip():
        raise refuse(f"has an empty {field!r}")
    return value


def _instruct(where: str, r: Any, options: dict, at: str | None = None) -> dict:
    return {options["input"]: _text(where, r, options["input"], "dataset.fields.input", at),
            options["output"]: _text(where, r, options["output"], "dataset.fields.output", at)}


def _chat(where: str, r: Any, options: dict, at: str | None = None) -> dict:
    """A record as ``{"messages": [...]}``: a chat as it is (checked: a system turn first if any,
    then user and assistant turns in turn, ending with the answer, no turn empty), or an instruct
    pair as system (if any), user, assistant turns. ``dataset.system_prompt`` goes before a chat
    that has none."""
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
    shift = len(messages) - len(out)  # a system prompt put first is no message of the record's
    for j, m in enumerate(out):
        if not m["content"].strip():
            raise ConfigError(key, field, f"{where} message {j + shift} has an empty {m['role']} content"
                              if j + shift >= 0 else f"{where} gets an empty system prompt")
    return {"messages": out}
