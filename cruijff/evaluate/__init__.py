"""The eval stage, behind one seam: inspect-ai's ``hf/`` provider.

``backend`` evaluates one model dir on every task with one model load and writes the cell's
``results.json``; ``cells`` says which checkpoints a run has to evaluate and when a cell is
complete; ``stage`` is the stage over one run dir.
"""

from .backend import build_task, evaluate_cell, exact_match_task
from .cells import Cell, cell_complete, cell_done, cells
from .stage import evaluate_run, evaluate_run_dir

__all__ = ["build_task", "evaluate_cell", "exact_match_task", "Cell", "cell_complete", "cell_done", "cells",
           "evaluate_run", "evaluate_run_dir"]
