"""The report stage: a run's results table, and a sweep's summary (csv, markdown) and plots."""

from .compare import compare_cells, print_comparison
from .format import fmt, markdown_table
from .plots import accuracy_figure
from .run import report_run, results_table
from .sweep import collect, refresh, report_is_current, report_sweep

__all__ = ["compare_cells", "print_comparison", "fmt", "markdown_table", "accuracy_figure", "report_run", "results_table", "collect",
           "refresh", "report_is_current", "report_sweep"]
