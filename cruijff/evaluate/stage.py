"""The eval stage over one run dir: every checkpoint not evaluated yet (and the base control) on
all tasks, with one load of the base model for the base control and every adapter checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .. import ui
from ..config import TaskSpec, eval_config, prepare_job, resolve_paths, validate
from ..config.chat import base_cell_dir, eval_template
from ..hardware import resolve_device
from ..records import ActionLog, RunState, layout
from .backend import Evaluator
from .cells import cell_done, cells


def evaluate_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path,
                 specs: list[TaskSpec], act: ActionLog, base: bool = True,
                 evaluator: Evaluator | None = None) -> None:
    """Evaluate the run's cells that are not complete; ``base``: its base control too.
    ``evaluator``: the job's (its loaded model serves this run too), else one for this run."""
    todo_left = []
    for cell in cells(cfg, run_dir, model_dir):
        if cell.is_base and not base:
            continue
        if cell_done(cfg, cell.log_dir, specs):
            act("Skip eval", f"{run_dir.name}/{cell.label}: complete")
        else:
            todo_left.append(cell)
    if not todo_left:
        return
    own = evaluator is None
    evaluator = evaluator or Evaluator()
    device = resolve_device(cfg.training.device)
    state = RunState.of(run_dir)
    try:
        for i, cell in enumerate(todo_left, 1):
            t0, loads = time.time(), evaluator.loads
            run = None if cell.is_base else run_dir.name
            doing = (f"{run_dir.name}: evaluating {cell.label} ({i}/{len(todo_left)}) "
                     f"on {', '.join(s.label for s in specs)}")
            # inspect's and transformers' own output goes to the run's eval.log
            with ui.library_output(layout.eval_log(run_dir), bool(cfg.get("verbose", False))), ui.status(doing):
                results = evaluator.evaluate(
                    cell.model_dir, specs, cell.log_dir, adapter=cell.adapter,
                    device=device, gpus=int(cfg.model.resources.gpus),
                    max_tokens=int(cfg.eval.max_tokens), batch_size=int(cfg.eval.batch_size),
                    data_file=data_file, input_key=cfg.dataset.input_key, output_key=cfg.dataset.output_key,
                    limit=cfg.eval.limit, chat_template=eval_template(cfg),
                    tags=[cfg.experiment.name, run or "base", cell.label],
                    metadata={"experiment": cfg.experiment.name, "run": run, "checkpoint": cell.label,
                              "path": str(cell.checkpoint), "adapter": cell.adapter is not None,
                              "config_hash": state.config_hash if state else None,
                              "base_cell": base_cell_dir(cfg, run_dir.parent).name},
                )
            summary = ", ".join(f"{k}={v.value if v.value is not None else v.status}"
                                for k, v in results.tasks.items())
            scores = ", ".join(f"{k} {v.value:.3f}" if v.value is not None else f"{k} {v.status}"
                               for k, v in results.tasks.items())
            ui.say(f"cruijff: {run_dir.name}: {cell.label}: {scores} ({time.time() - t0:.1f} s)")
            how = ("model loaded" if evaluator.loads > loads else "model held") + (
                ", adapter applied in memory" if cell.adapter is not None else "")
            act("Evaluate", f"{run_dir.name}/{cell.label}: {len(specs)} tasks, {how}",
                f"{summary} in {time.time() - t0:.1f} s")
    finally:
        if own:
            evaluator.close()


def evaluate_run_dir(run_dir: Path, eval_cfg: Any = None, base: bool = True, slot: int | None = None,
                     evaluator: Evaluator | None = None) -> None:
    """Evaluate an existing run dir with its saved config (and ``eval_cfg``, the current launch's
    eval section, when given); complete cells are skipped. ``slot``: this job's place among the
    local jobs running at once (it picks the job's GPUs). ``evaluator``: the job's, to keep its
    loaded model for the next run; None: one for this run, closed after it. What an eval job runs."""
    cfg = eval_config(run_dir, eval_cfg)
    prepare_job(cfg, slot)
    specs = validate(cfg)
    model_dir, data_file = resolve_paths(cfg)
    evaluate_run(cfg, run_dir, model_dir, data_file, specs, ActionLog(layout.action_log(run_dir.parent)), base=base,
                 evaluator=evaluator)
