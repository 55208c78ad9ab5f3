"""The orchestration log, ``run-experiment.log``: one entry per action, in the order they happened."""

from __future__ import annotations

import time
from pathlib import Path


def stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class ActionLog:
    """``[YYYY-MM-DD HH:MM:SS] ACTION: …`` then indented ``Details:`` / ``Result:`` lines."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, action: str, details: str | None = None, result: str | None = None) -> None:
        lines = [f"[{stamp()}] ACTION: {action}"]
        if details:
            lines.append(f"  Details: {details}")
        if result:
            lines.append(f"  Result: {result}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write("\n".join(lines) + "\n")
