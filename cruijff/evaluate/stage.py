"""The eval stage over one run dir: every checkpoint not evaluated yet (and the base control),
each loaded once for all tasks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import TaskSpec, eval_config, prepare_job, resolve_paths, validate
from ..config.chat import base_cell_dir, eval_template
from ..hardware import resolve_device
from ..records import ActionLog, RunState, layout
from .backend import evaluate_cell
from .cells import cell_done, cells


def evaluate_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path,
                 specs: list[TaskSpec], act: ActionLog, base: bool = True) -> None:
    """Evaluate the run's cells that are not complete; ``base``: its base control too."""
    device = resolve_device(cfg.training.device)
    todo = [c for c in cells(cfg, run_dir, model_dir) if base or not c.is_base]
    state = RunState.of(run_dir)
    for i, cell in enumerate(todo, 1):
        if cell_done(cfg, cell.log_dir, specs):
            act("Skip eval", f"{run_dir.name}/{cell.label}: complete")
            continue
        print(f"cruijff: evaluating {cell.label} ({i}/{len(todo)}) on {', '.join(s.label for s in specs)}")
        t0 = time.time()
        run = None if cell.is_base else run_dir.name
        results = evaluate_cell(
            cell.model_dir, specs, cell.log_dir,
            data_file=data_file, input_key=cfg.dataset.input_key, output_key=cfg.dataset.output_key,
            device=device, gpus=int(cfg.model.resources.gpus),
            max_tokens=int(cfg.eval.max_tokens), batch_size=int(cfg.eval.batch_size),
            limit=cfg.eval.limit, chat_template=eval_template(cfg),
            tags=[cfg.experiment.name, run or "base", cell.label],
            metadata={"experiment": cfg.experiment.name, "run": run, "checkpoint": cell.label,
                      "config_hash": state.config_hash if state else None,
                      "base_cell": base_cell_dir(cfg, run_dir.parent).name},
        )
        summary = ", ".join(f"{k}={v.value if v.value is not None else v.status}" for k, v in results.tasks.items())
        act("Evaluate", f"{run_dir.name}/{cell.label}: {len(specs)} tasks, one model load",
            f"{summary} in {time.time() - t0:.1f} s")


def evaluate_run_dir(run_dir: Path, eval_cfg: Any = None, base: bool = True, slot: int | None = None) -> None:
    """Evaluate an existing run dir with its saved config (and ``eval_cfg``, the current launch's
    eval section, when given); complete cells are skipped. ``slot``: this job's place among the
    local jobs running at once (it picks the job's GPUs). What an eval job runs."""
    cfg = eval_config(run_dir, eval_cfg)
    prepare_job(cfg, slot)
    specs = validate(cfg)
    model_dir, data_file = resolve_paths(cfg)
    evaluate_run(cfg, run_dir, model_dir, data_file, specs, ActionLog(layout.action_log(run_dir.parent)), base=base)
