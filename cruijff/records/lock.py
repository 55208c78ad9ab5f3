"""The sweep lock: one launch at a time per sweep dir (``outputs/<experiment>``): a sweep's
launcher, a single run of the experiment, or ``python -m cruijff eval``; anyone may ask who holds it.

The lock is an open-file-description lock (``F_OFD_SETLK``) on ``<sweep dir>/.lock``, held for the
launching process's lifetime and released by the kernel when it ends, however it ends. Asking
who holds it (``python -m cruijff status``) uses ``F_OFD_GETLK``, which takes no lock: a status
call can never make a launch fail. The holder writes who it is into the file (pid, host, start
time, command), for the one line that refuses the next launch and for ``status``.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import socket
import struct
import sys
from pathlib import Path
from typing import IO

from ..errors import CruijffError
from . import layout
from .log import stamp
from .manifest import entry, launcher_argv

_HELD: dict[str, IO] = {}
_FLOCK = "hhqqi4x"  # struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (+ padding)


class SweepBusy(CruijffError):
    """Another launch holds the sweep dir."""


def _flock(kind: int) -> bytes:
    return struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)


def acquire(sweep_dir: Path) -> None:
    """Hold the sweep dir's lock until this process ends; SweepBusy if another launch holds it."""
    if str(sweep_dir) in _HELD:
        return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(layout.lock_file(sweep_dir), "a+")
    try:
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise SweepBusy(f"{layout.relative(sweep_dir, Path.cwd())} is in use by a running launch ({holder}); "
                        "wait for it or stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(_holder_line() + "\n")
    f.flush()
    _HELD[str(sweep_dir)] = f


def _holder_line() -> str:
    """``pid 12 on node1 since 2026-12-03 10:02:03: python launch.py -m peft.lora_rank=4,8``."""
    argv = launcher_argv()
    command = (" ".join([entry(), *map(shlex.quote, sys.argv[1:])]) if argv is not None
               else shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]))
    if len(command) > 200:
        command = command[:197] + "..."
    return f"pid {os.getpid()} on {socket.gethostname()} since {stamp()}: {command}"


def release(sweep_dir: Path) -> None:
    f = _HELD.pop(str(sweep_dir), None)
    if f is not None:
        fcntl.fcntl(f, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK))
        f.close()


def holder(sweep_dir: Path) -> str | None:
    """Who holds the sweep lock (a running launch), or None; takes no lock itself."""
    path = layout.lock_file(sweep_dir)
    if str(sweep_dir) in _HELD or not path.exists():
        return None
    with open(path) as f:
        kind = struct.unpack(_FLOCK, fcntl.fcntl(f, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK)))[0]
        if kind == fcntl.F_UNLCK:
            return None
        return f.read().strip() or "another process"
