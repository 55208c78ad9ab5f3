"""Records a run leaves behind: the state files, the manifest, the orchestration log, the sweep
lock, and the run-dir layout that places them."""

from . import layout
from .io import read_json, read_jsonl, write_json, write_jsonl
from .lock import SweepBusy
from .lock import acquire as acquire_lock
from .lock import holder as lock_holder
from .lock import release as release_lock
from .log import ActionLog, stamp
from .manifest import ENTRY_ENV, entry, finish_manifest, launcher_argv, slurm_job_id, write_manifest
from .state import (CellResults, EpochLoss, PlannedRunRecord, RunState, RunStatus, SweepPlan, TaskResult,
                    cell_scores, headline_metric, mark_failed, run_state, sweep_runs)

__all__ = [
    "layout", "read_json", "read_jsonl", "write_json", "write_jsonl",
    "SweepBusy", "acquire_lock", "lock_holder", "release_lock",
    "ActionLog", "stamp", "ENTRY_ENV", "entry", "finish_manifest", "launcher_argv", "slurm_job_id", "write_manifest",
    "CellResults", "EpochLoss", "PlannedRunRecord", "RunState", "RunStatus", "SweepPlan", "TaskResult",
    "cell_scores", "headline_metric", "mark_failed", "run_state", "sweep_runs",
]
