"""The eval stage over one run dir: every checkpoint whose cell does not count under its key now
(and the base control), on all tasks, with one load of the base model for the base control and
every adapter checkpoint (``eval.backend``: ``hf`` in the job, or one vLLM server). A stale cell's
files are kept aside in ``.stale/`` before it is redone."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import ui
from ..config import TaskSpec, data_keys, eval_config, prepare_job, resolve_paths, validate
from ..config.chat import eval_template
from ..hardware import resolve_device
from ..records import ActionLog, CellResults, CellStanding, RunState, layout
from .backend import Evaluator
from .cells import Cell, plan_cells
from .identity import changed
from .vllm import VLLMEvaluator


class Evaluators:
    """The models of one eval job, by backend (``eval.backend``): transformers' in the job
    (:class:`Evaluator`), or a vLLM server (:class:`VLLMEvaluator`); each kept for the job's next run."""

    def __init__(self) -> None:
        self._by: dict[str, Evaluator | VLLMEvaluator] = {}

    def get(self, cfg: DictConfig) -> Evaluator | VLLMEvaluator:
        if cfg.eval.get("backend", "hf") != "vllm":
            if "hf" not in self._by:
                self._by["hf"] = Evaluator()
            return self._by["hf"]
        settings = OmegaConf.to_container(cfg.eval, resolve=True)
        key = "vllm:" + json.dumps(settings["vllm"], sort_keys=True, default=str)
        if key not in self._by:
            self._by[key] = VLLMEvaluator.of(settings)
        return self._by[key]

    def close(self) -> None:
        for e in self._by.values():
            e.close()
        self._by.clear()
from .tasks import check_tasks_load


def evaluate_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path,
                 specs: list[TaskSpec], act: ActionLog, base: bool = True,
                 evaluators: Evaluators | None = None) -> dict[str, str]:
    """Evaluate the run's cells that do not count under their key now; ``base``: its base control
    too. ``evaluators``: the job's (its loaded model serves this run too), else ones for this run.
    Returns the cells that have no score for some task (label -> why), after this evaluation."""
    todo_left = []
    for cell in plan_cells(cfg, run_dir, model_dir, data_file, specs):
        if cell.is_base and not base:
            continue
        standing = cell.standing()
        if standing is CellStanding.COMPLETE:
            act("Skip eval", f"{run_dir.name}/{cell.label}: complete (key {cell.key[:10]})")
        else:
            todo_left.append(cell)
    failed: dict[str, str] = {}
    if not todo_left:
        return failed
    own = evaluators is None
    evaluators = evaluators or Evaluators()
    evaluator = evaluators.get(cfg)
    if isinstance(evaluator, VLLMEvaluator):  # its server registers them all when it starts
        evaluator.expect(model_dir, [c.adapter for c in todo_left if c.adapter is not None])
        evaluator.log_file = layout.eval_log(run_dir)
    device = resolve_device(cfg.training.device)
    state = RunState.of(run_dir)
    sweep_dir = run_dir.parent
    try:
        for i, cell in enumerate(todo_left, 1):
            set_aside(cell, run_dir.name, act)
            t0, loads = time.time(), evaluator.loads
            run = None if cell.is_base else run_dir.name
            doing = (f"{run_dir.name}: evaluating {cell.label} ({i}/{len(todo_left)}) "
                     f"on {', '.join(s.label for s in specs)}")
            record = {"model": layout.relative(cell.checkpoint, sweep_dir), "key": cell.key, "key_parts": cell.parts}
            if cell.base is not None:
                record.update(base_cell=layout.relative(cell.base.log_dir, sweep_dir), base_key=cell.base.key)
            # inspect's and transformers' own output goes to the run's eval.log
            with ui.library_output(layout.eval_log(run_dir), bool(cfg.get("verbose", False))), ui.status(doing):
                results = evaluator.evaluate(
                    cell.model_dir, specs, cell.log_dir, adapter=cell.adapter,
                    device=device, gpus=int(cfg.model.resources.gpus),
                    max_tokens=int(cfg.eval.max_tokens), batch_size=int(cfg.eval.batch_size),
                    data_file=data_file, input_key=data_keys(cfg)[0], output_key=data_keys(cfg)[1],
                    limit=cfg.eval.limit, chat_template=eval_template(cfg),
                    tags=[cfg.experiment.name, run or "base", cell.label],
                    metadata={"experiment": cfg.experiment.name, "run": run, "checkpoint": cell.label,
                              "path": record["model"], "adapter": cell.adapter is not None,
                              "config_hash": state.config_hash if state and run else None,
                              "cell_key": cell.key, "base_cell": record.get("base_cell")},
                    record=record,
                )
            summary = ", ".join(f"{k}={v.value if v.value is not None else v.status}"
                                for k, v in results.tasks.items())
            scores = ", ".join(f"{k} {v.value:.3f}" if v.value is not None else f"{k} {v.status}"
                               for k, v in results.tasks.items())
            ui.say(f"cruijff: {run_dir.name}: {cell.label}: {scores} ({time.time() - t0:.1f} s)")
            how = ("model loaded" if evaluator.loads > loads else "model held") + (
                (", adapter on the vLLM server" if isinstance(evaluator, VLLMEvaluator) else
                 ", adapter applied in memory") if cell.adapter is not None else "")
            act("Evaluate", f"{run_dir.name}/{cell.label}: {len(specs)} tasks, {how}, key {cell.key[:10]}",
                f"{summary} in {time.time() - t0:.1f} s")
            if results.failures():
                failed[cell.label] = "; ".join(f"{k}: {why}" for k, why in results.failures().items())
    finally:
        if own:
            evaluators.close()
    return failed


def set_aside(cell: Cell, run: str, act: ActionLog) -> None:
    """Before a cell is evaluated again, keep its earlier files (a stale or failed result) in
    ``.stale/`` beside it: never mixed into the new results, never deleted."""
    if not cell.log_dir.is_dir() or not any(cell.log_dir.iterdir()):
        return
    try:
        old = CellResults.of(cell.log_dir)
    except Exception:
        old = None
    target = layout.stale_dir(cell.log_dir, old.key if old else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(cell.log_dir), str(target))
    if old is not None and old.key != cell.key:
        why = ", ".join(changed(old.key_parts, cell.parts)) if old.key_parts else "made before cells had keys"
        act("Stale eval", f"{run}/{cell.label}: key {(old.key or '-')[:10]} -> {cell.key[:10]} ({why})",
            f"earlier files kept in {target}")
    else:
        act("Eval again", f"{run}/{cell.label}: an earlier try left no score for every task",
            f"its files kept in {target}")


def evaluate_run_dir(run_dir: Path, eval_cfg: Any = None, base: bool = True, slot: int | None = None,
                     evaluators: Evaluators | None = None) -> dict[str, str]:
    """Evaluate an existing run dir with its saved config (and ``eval_cfg``, the current launch's
    eval section, when given); cells that count under their key are skipped. ``slot``: this job's
    place among the local jobs running at once (it picks the job's GPUs). ``evaluators``: the job's,
    to keep its loaded model for the next run; None: ones for this run, closed after it. What an
    eval job runs. Returns the cells left without a score for some task (label -> why)."""
    cfg = eval_config(run_dir, eval_cfg)
    prepare_job(cfg, slot)
    specs = validate(cfg)
    model_dir, data_file = resolve_paths(cfg)
    check_tasks_load(specs, data_file, *data_keys(cfg))  # before a cell is written
    return evaluate_run(cfg, run_dir, model_dir, data_file, specs, ActionLog(layout.action_log(run_dir.parent)),
                        base=base, evaluators=evaluators)
