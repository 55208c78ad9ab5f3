"""``sweep.json``, as a launch writes it: the plan, the eval matrix, the jobs submitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..records import PlannedRunRecord, SweepPlan, launcher_argv


def _target(config: DictConfig, key: str) -> str | None:
    target = OmegaConf.select(config, f"hydra.{key}._target_", default=None)
    return str(target).rsplit(".", 1)[-1] if target else None


def write_plan(sweep_dir: Path, config: DictConfig, runs: list[PlannedRunRecord]) -> SweepPlan:
    """``sweep.json``: the plan (runs, overrides, config hashes, eval matrix); job ids are kept."""
    old = SweepPlan.of(sweep_dir)
    evals = OmegaConf.to_container(config.eval, resolve=True)
    assert isinstance(evals, dict)
    tasks = [t["name"] if isinstance(t, dict) else t for t in evals["tasks"]] if evals["enabled"] else []
    argv = launcher_argv()
    command: dict[str, Any] | None = ({"argv": argv, "cwd": os.getcwd()} if argv is not None
                                      else old.command if old else None)
    plan = SweepPlan(
        experiment=str(config.experiment.name),
        sweeper=_target(config, "sweeper"),
        launcher=_target(config, "launcher"),
        runs=runs,
        eval=evals,  # the launch's whole eval section: ``cruijff eval`` evaluates with it again
        eval_matrix={"checkpoints": (["base"] if evals["base_model"] else []) + [f"{r.name}/epoch_*" for r in runs],
                     "tasks": tasks},
        jobs=dict(old.jobs) if old else {},
        command=command,
        detached=old.detached if old else None,
    )
    plan.save(sweep_dir)
    return plan


def add_runs(sweep_dir: Path, config: DictConfig, runs: list[PlannedRunRecord]) -> None:
    """Add runs a sweeper decided on the fly (Optuna) to ``sweep.json``."""
    plan = SweepPlan.of(sweep_dir)
    known = set(plan.names) if plan else set()
    new = [r for r in runs if r.name not in known]
    if new or plan is None:
        write_plan(sweep_dir, config, (plan.runs if plan else []) + new)


def record_jobs(sweep_dir: Path, jobs: dict[str, str]) -> None:
    """The latest job submitted for each of these runs."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None:
        return
    plan.jobs.update(jobs)
    plan.save(sweep_dir)
