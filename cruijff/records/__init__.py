"""Records a run leaves behind: the state files, the manifest, the orchestration log, the sweep
lock, whether a run's recorded process is still at work, and the run-dir layout that places
them."""

from . import layout, liveness
from .io import read_json, read_jsonl, write_json, write_jsonl
from .lock import SweepBusy
from .lock import acquire as acquire_lock
from .lock import holder as lock_holder
from .lock import release as release_lock
from .log import ActionLog, stamp
from .manifest import ENTRY_ENV, entry, finish_manifest, launcher_argv, slurm_job_id, write_manifest
from .standing import (RunStanding, complete_epochs, epoch_summary, mark_stopped, other_config, record_finished,
                       run_standing)
from .cells import (CellResults, CellStanding, EvalPlan, ExpectedCell, TaskResult, cell_standing, current_cell,
                    expected_cells, headline_metric, log_path, unscored)
from .halving import HalvingRecord, Rung
from .state import EpochLoss, PlannedRunRecord, Retry, RunState, RunStatus, SweepPlan, mark_failed, run_state, sweep_runs

__all__ = [
    "layout", "liveness", "read_json", "read_jsonl", "write_json", "write_jsonl",
    "SweepBusy", "acquire_lock", "lock_holder", "release_lock",
    "ActionLog", "stamp", "ENTRY_ENV", "entry", "finish_manifest", "launcher_argv", "slurm_job_id", "write_manifest",
    "CellResults", "CellStanding", "EpochLoss", "EvalPlan", "ExpectedCell", "PlannedRunRecord", "Retry", "RunState",
    "RunStatus", "SweepPlan", "TaskResult", "cell_standing", "current_cell", "expected_cells",
    "RunStanding", "complete_epochs", "epoch_summary", "mark_stopped", "other_config", "record_finished", "run_standing",
    "HalvingRecord", "Rung", "headline_metric", "log_path", "mark_failed", "run_state", "sweep_runs", "unscored",
]
