"""``detach=true`` (SLURM): submit the grid's arrays and one eval+report job that depends on them,
then return; the finish job evaluates and reports on the cluster once the arrays ended."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..cluster import array_ids, backend, job_folder, job_name, largest
from ..records import ActionLog, SweepPlan, layout
from .finish import finish
from .launcher import submit_jobs
from .snapshot import frozen


def detach(sweeper: Any, config: DictConfig, sweep_dir: Path, todo: list[list[str]], act: ActionLog,
           earlier: Sequence[str] = ()) -> None:
    """Submit the grid's arrays and an eval+report job that depends on them, and on ``earlier``
    jobs still at work on this sweep (a second detach while the first runs); wait for neither."""
    jobs = submit_jobs(sweeper.launcher, todo, 0)[1] if todo else []
    ids = array_ids([j.job_id for j in jobs] + list(earlier))
    plan = SweepPlan.of(sweep_dir)
    assert plan is not None  # the grid sweeper wrote it
    resources = largest(r.resources for r in plan.runs)
    where = backend(config.cluster)
    executor = where.executor(job_folder(config), name=job_name(config.experiment.name, "eval"),
                              dependency=f"afterany:{':'.join(ids)}" if ids else None, resources=resources)
    finish = where.submitted(lambda: executor.submit(frozen(finish_detached, sweep_dir), sweep_dir,
                                               OmegaConf.to_container(config.eval, resolve=True)),
                       resources)
    plan.detached = {"arrays": ids, "finish_job": finish.job_id, "submitted": time.time()}
    plan.save(sweep_dir)
    act("Detach", f"fine-tune arrays {', '.join(ids) or '(none: all finished)'}; eval+report job "
        f"{finish.job_id}" + (f" after them (afterany:{':'.join(ids)})" if ids else ""),
        "the launcher returns; the jobs go on without it")
    print(f"cruijff: detached: fine-tuning array{'s' if len(ids) > 1 else ''} {', '.join(ids) or '-'}, "
          f"eval+report job {finish.job_id} after {'them' if len(ids) > 1 else 'it'}")
    print(f"cruijff: follow with: python -m cruijff status {sweep_dir}")


def finish_detached(sweep_dir: Path, eval_cfg: dict) -> None:
    """The eval+report job of a detached sweep (runs on the cluster once the arrays ended): the
    log, ``status`` and the report say what failed."""
    act = ActionLog(layout.action_log(sweep_dir))
    summary, _ = finish(sweep_dir, eval_cfg, True, act, time.time(), done="Sweep done (detached)")
    print(f"cruijff: {summary}")
