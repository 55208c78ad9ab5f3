"""Terminal output shared by the commands."""

from __future__ import annotations

import sys


def console():
    """A rich console; full-width tables when the output goes to a file or a pipe (logs, CI)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)
