"""The package's user-facing errors, and how an error becomes the one line a user reads.

Library code raises; the entry points (``launch.py``, ``python -m cruijff``) print
``cruijff: error: <one line>`` and exit 2. No traceback for a user's mistake.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable


class CruijffError(Exception):
    """A user-facing error: printed as one line, no traceback."""


class ConfigError(CruijffError):
    """A config key holds a value that is not allowed: names the key, the value and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


def did_you_mean(value: Any, options: Iterable[str], quote: bool = False) -> str:
    """`` (did you mean X?)`` with the closest option, or nothing when none is close."""
    hint = difflib.get_close_matches(str(value), sorted(options), n=1)
    if not hint:
        return ""
    return f" (did you mean {hint[0]!r}?)" if quote else f" (did you mean {hint[0]}?)"


def first_line(e: BaseException | str) -> str:
    """The first non-empty line of an error's message (or its type's name)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if lines:
        return lines[0].strip()
    return type(e).__name__ if isinstance(e, BaseException) else ""


def last_line(e: BaseException | str) -> str:
    """The last non-empty line of an error's message (a remote traceback's own error)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    if lines:
        return lines[-1].strip()
    return type(e).__name__ if isinstance(e, BaseException) else ""


def omegaconf_message(e: Exception) -> str:
    """One line for an OmegaConf error: the key, then what is wrong with it."""
    from omegaconf.errors import MissingMandatoryValue

    key = getattr(e, "full_key", None) or "config"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}=???: a value is required"
    return f"{key}: {first_line(e)}"
