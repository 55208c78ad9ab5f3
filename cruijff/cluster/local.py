"""``cluster.executor=local``: submitit's local executor; every job runs on this machine."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from . import _submitit
from .backend import Backend
from .jobs import preset_resources


def killed_by(job: Any) -> str:
    """The signal that killed a local job's process (``SIGKILL``); empty for any other end."""
    rc = _submitit.process_returncode(job)
    if rc is None or rc >= 0:
        return ""
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


class LocalBackend(Backend):
    """Jobs are processes of this machine, started at once; they go on when the launcher is
    killed, and each run's record (its process) says whether it still runs."""

    name = "local"
    on_this_machine = True
    stock_launcher = "LocalLauncher"
    poll_s = 0.5

    def executor(self, folder: Path | str, *, name: str, dependency: str | None = None,
                 resources: dict[str, Any] | None = None, parallel: int | None = None) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
        executor.update_parameters(timeout_min=int(preset_resources(self.cluster, resources)["timeout_min"]),
                                   name=name)
        return executor
