"""The eval stage, behind one seam: inspect-ai's ``hf/`` provider.

``backend`` evaluates checkpoints on every task, a base model loaded once per eval job for its
control and all its adapter checkpoints (``adapter`` applies them in memory), and writes each
cell's ``results.json``; ``cells`` says which checkpoints a run has to evaluate and when a cell is
complete; ``stage`` is the stage over one run dir.
"""

from .adapter import Adapter, AdapterSwap, read_adapter
from .backend import Evaluator, build_task, evaluate_cell, exact_match_task
from .cells import Cell, cell_complete, cell_done, cells
from .stage import evaluate_run, evaluate_run_dir

__all__ = ["Adapter", "AdapterSwap", "read_adapter", "Evaluator", "build_task", "evaluate_cell", "exact_match_task",
           "Cell", "cell_complete", "cell_done", "cells", "evaluate_run", "evaluate_run_dir"]
