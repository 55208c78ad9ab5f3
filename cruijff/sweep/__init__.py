"""Sweeps: ``python launch.py -m`` plans a grid, submits what is not done, evaluates, reports.

Three Hydra plugins work together (``hydra_plugins/cruijff_plugins`` holds the thin plugin classes):

- the grid sweeper (:mod:`.grid`) expands the grid exactly as Hydra's basic sweeper does, plans
  every run without composing each job through Hydra (:mod:`cruijff.plan`), refuses a bad grid
  point before submitting anything, takes the sweep lock, writes ``sweep.json`` and submits only
  runs that are not finished; ``scaffold`` (:mod:`.scaffold`) and ``detach`` (:mod:`.detach`) end there;
- the launcher (:mod:`.launcher`) submits a batch through submitit and records a job that died
  without a result in its ``run.json`` instead of raising (:mod:`.deaths`);
- the callback (:mod:`.callback`) evaluates every finished run's checkpoints that are not
  evaluated yet (:mod:`.evals`) and writes the report when something changed.

Any other sweeper (``hydra/sweeper=optuna``) works with the same launcher and callback.
"""

from .callback import SweepCallback, finish_sweep
from .detach import finish_detached
from .evals import eval_todo, evaluate_in_turn
from .finish import finish
from .grid import run_grid
from .launcher import submit
from .settle import settle, summary_line
from .table import SweepView, ended_in_queue, table as status_table

__all__ = ["SweepCallback", "finish_sweep", "finish_detached", "eval_todo", "evaluate_in_turn",
           "finish", "run_grid",
           "submit", "settle", "summary_line", "SweepView", "ended_in_queue", "status_table"]
