"""``python guard.py PARENT_PID COMMAND...``: runs COMMAND (a vLLM server) in a process group of its
own and stops that whole group, whatever way the eval job that started it ends: when the job stops
it (SIGTERM), and when the job dies (kill -9, out of memory), found by the kernel's parent-death
signal and by the guard's parent changing. A server's own shutdown is not relied on: vLLM's API
server and its engine processes are stopped together, SIGKILL after a grace period.

Run as a script by path (no package import: it starts in a fraction of a second)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

GRACE_S = 20.0
POLL_S = 0.5


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    with contextlib.suppress(Exception):  # SIGTERM to this guard when the job's process ends
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    server = subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)

    def stop(*_: object) -> None:
        _signal_group(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        _signal_group(server.pid, signal.SIGKILL)  # the server if still there, and its engine processes
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, stop)
    while True:
        code = server.poll()
        if code is not None:
            _signal_group(server.pid, signal.SIGKILL)  # what it left behind
            return code
        if os.getppid() != parent:  # the job is gone (the death signal may have come before it was set)
            stop()
        time.sleep(POLL_S)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
