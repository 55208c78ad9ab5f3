"""JSON files written atomically (a reader never sees half a file), read strictly or tolerantly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import CruijffError


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: to a temporary file beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``; None when there is no such file; a file that cannot be read or parsed
    is an error naming it (never taken for an empty one)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CruijffError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise CruijffError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, one per line; a line cut short (a killed job) is skipped."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    """Write JSON lines atomically (a kill mid-write leaves the file as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)
