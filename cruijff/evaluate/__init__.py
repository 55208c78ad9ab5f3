"""The eval stage, behind one seam: inspect-ai's ``hf/`` provider.

``backend`` evaluates checkpoints on every task, a base model loaded once per eval job for its
control and all its adapter checkpoints (``adapter`` applies them in memory), and writes each
cell's ``results.json``; ``cells`` says which checkpoints a run has to evaluate, each cell keyed by the content of what
decides its scores (``identity``); ``stage`` is the stage over one run dir; ``tasks`` loads every
task once before anything runs.
"""

from .adapter import Adapter, AdapterSwap, read_adapter
from .backend import Evaluator, build_task, evaluate_cell, exact_match_task, samples_key
from .cells import Cell, cells, plan_cells
from .identity import cell_key, checkpoint_identity, settings_identity, task_identity
from .stage import Evaluators, evaluate_run, evaluate_run_dir
from .tasks import check_run_tasks, check_tasks_load

__all__ = ["Adapter", "AdapterSwap", "read_adapter", "Evaluator", "build_task", "evaluate_cell", "exact_match_task",
           "samples_key", "Cell", "cells", "plan_cells", "cell_key", "checkpoint_identity", "settings_identity",
           "task_identity", "Evaluators", "evaluate_run", "evaluate_run_dir", "check_run_tasks", "check_tasks_load"]
