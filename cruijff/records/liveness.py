"""Whether the process a ``run.json`` names is still at work on the run: one writer per run dir.

A run's record says who fine-tunes it (``host``, ``pid``, and ``pid_start``, the process's start
time); a launch that finds it ``running`` asks here before it starts a trainer of its own. On this
machine the answer is certain: the process is there, started at that time (a later process that
got the same pid is not taken for it), or it is not. On another machine nobody here can tell (a
SLURM job's standing comes from the queue instead).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .log import stamp
from .state import RunState, RunStatus

_PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot: field 22 of ``/proc/<pid>/stat``);
    None when there is no such process, it has ended (a zombie), or there is no ``/proc``."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(host: str | None, pid: int | None, start: int | None) -> bool | None:
    """Whether process ``pid`` of ``host``, started at ``start`` (:func:`start_time`), still runs:
    True or False on this machine, None on another one (or with no pid recorded). A record without
    a start time (written by an older cruijff) is judged by its pid alone."""
    if not host or pid is None or host != socket.gethostname():
        return None
    if not _PROC.is_dir():  # not Linux: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def at_work(state: RunState | None) -> bool:
    """Whether the run's record says it is fine-tuning and the process it names (not this one)
    still runs on this machine: a job an earlier launch left behind, or another launch's."""
    return (state is not None and state.status is RunStatus.RUNNING and state.pid != os.getpid()
            and alive(state.host, state.pid, state.pid_start) is True)


def gone(state: RunState | None) -> bool:
    """Whether the run's record says it is fine-tuning, on this machine, by a process that has
    ended: a dead run, to be recorded as failed and redone. A SLURM job's record is left to the
    queue (a requeued job's process is gone while its job still stands)."""
    return (state is not None and state.status is RunStatus.RUNNING and state.job_id is None
            and alive(state.host, state.pid, state.pid_start) is False)


def worker(state: RunState) -> str:
    """The process a run's record names, for a message: ``job process 12 on node1 (since 10:02:03)``."""
    since = f" (since {stamp(state.started)})" if state.started else ""
    return f"job process {state.pid or '?'} on {state.host or '?'}{since}"


def death(state: RunState) -> str:
    """What a dead run's record says once it is found (see :func:`gone`)."""
    return (f"{worker(state)} died while fine-tuning (killed, or its machine restarted); "
            "it raised no error")
