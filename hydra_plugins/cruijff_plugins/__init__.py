"""Hydra plugins of cruijff (Hydra only loads plugins from the ``hydra_plugins`` package).

Kept thin so Hydra's plugin discovery stays fast; the logic is in :mod:`cruijff.sweep`.
"""

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher


class ProjectSearchPath(SearchPathPlugin):
    """The project's own ``conf/`` (``cruijff.config.project_root``) first: its options add to or shadow cruijff's."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from cruijff.config import project_conf

        conf = project_conf()
        if conf is not None:
            search_path.prepend(provider="cruijff-project", path=f"file://{conf}")


class GridSweeper(BasicSweeper):
    """Hydra's grid, planned without composing each job; finished runs are not submitted."""

    def __init__(self, max_batch_size=None, params=None, **unknown):
        if unknown:
            from cruijff.errors import CruijffError

            key = sorted(unknown)[0]
            raise CruijffError(f"hydra.sweeper.{key}: not a key of the grid sweeper (max_batch_size, "
                               "params); an Optuna experiment needs hydra/sweeper=optuna on the command line")
        super().__init__(max_batch_size=max_batch_size, params=params)

    def sweep(self, arguments):
        from cruijff.sweep import run_grid

        return run_grid(self, arguments)


class CruijffLauncher(BaseSubmititLauncher):
    """submitit, local or SLURM (from the `cluster` config); a job that dies is recorded, not raised."""

    _EXECUTOR = "local"  # the executor actually used comes from cluster.executor

    def launch(self, job_overrides, initial_job_idx):
        from cruijff.sweep import submit

        return submit(self, job_overrides, initial_job_idx)
