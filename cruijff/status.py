"""``python -m cruijff status <sweep dir>``: what ran, what is running, what failed — from files only.

Safe to run while a sweep runs: it reads the state files (``cruijff.sweep.table``) and asks who
holds the sweep lock without taking it.
"""

from __future__ import annotations

from pathlib import Path

from .records import lock_holder
from .sweep import status_table
from .ui import console


def show(sweep_dir: Path) -> None:
    holder = lock_holder(sweep_dir)
    console().print(status_table(sweep_dir, f"launch running ({holder})" if holder else "no launch running"))
