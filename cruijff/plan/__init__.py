"""The plan stage: every grid point's run dir, config, hash and state, and what it will cost,
before anything runs (``dry_run=true``, ``python -m cruijff plan``)."""

from .estimate import Estimate, estimate, measured
from .planner import ACTIVE, FINISHED, NEW, OVERWRITE, REDO, PlannedRun, PlanState, Planner, plan_state
from .table import print_plan

__all__ = ["Estimate", "estimate", "measured", "ACTIVE", "FINISHED", "NEW", "OVERWRITE", "REDO", "PlannedRun",
           "PlanState", "Planner", "plan_state", "print_plan"]
