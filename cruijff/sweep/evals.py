"""Eval jobs of a sweep: one per finished run with incomplete cells (locally, a share of the runs
per job), through submitit; each job loads a base model once for its control and every adapter
checkpoint it evaluates; each base model's control goes with the first run
of that model that needs it. With ``eval.backend=vllm``, one job per base model: its server serves
the base and every adapter of all the sweep's runs of that model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..cluster import backend, job_folder, job_name
from ..config import eval_config, local_jobs, resolve_paths, task_specs
from ..errors import last_line
from ..evaluate import Evaluators, evaluate_run_dir, plan_cells
from ..records import ActionLog, CellStanding, SweepPlan
from .snapshot import frozen
from .table import SweepView


def eval_todo(sweep_dir: Path, runs: list[str], eval_cfg: DictConfig | dict | None) -> list[tuple[str, Path | None]]:
    """(run, the base-model cell its eval job also takes, or None) for every finished run with a
    cell that does not count under its key now; checked in this process, which also records each
    run's expected cells (``eval/cells.json``). Each base control (one per distinct key) goes to
    the first run that needs it; those runs come first."""
    out: dict[str, Path | None] = {}
    bases: set[Path] = set()
    memo: dict = {}  # each distinct task built once for all the runs
    for name in runs:
        cfg = eval_config(sweep_dir / name, eval_cfg)
        specs = task_specs(cfg.eval.tasks)
        model_dir, data_file = resolve_paths(cfg, build=False)
        todo = [c for c in plan_cells(cfg, sweep_dir / name, model_dir, data_file, specs, memo)
                if c.standing() is not CellStanding.COMPLETE]
        base = next((c.log_dir for c in todo if c.is_base and c.log_dir not in bases), None)
        if base is not None:
            bases.add(base)
        if base is not None or any(not c.is_base for c in todo):
            out[name] = base
    return sorted(out.items(), key=lambda item: item[1] is None)


class EvalJobs:
    """Eval jobs through submitit, one per run (all its checkpoints, each loaded once for all tasks).

    A base model's control is shared by the sweep's runs of that model: only the first job that
    asks for it gets it.
    """

    def __init__(self, config: DictConfig, sweep_dir: Path, act: ActionLog):
        self.config = config
        self.folder = job_folder(config)
        self.executors: dict[tuple, Any] = {}
        plan = SweepPlan.of(sweep_dir)
        self.resources = {r.name: r.resources for r in (plan.runs if plan else [])}
        self.where = backend(config.cluster)
        self.eval_cfg = OmegaConf.to_container(config.eval, resolve=True)
        self.sweep_dir, self.act = sweep_dir, act
        self.names: dict[int, str] = {}
        self.bases_taken: set[Path] = set()

    def submit(self, batch: list[tuple[str, Path | None]], per_job: int = 1) -> list:
        """Eval jobs for these runs: ``per_job`` runs in turn in each (one job's start-up and imports
        serve them all), the jobs side by side."""
        batch = [(n, base if base not in self.bases_taken else None) for n, base in batch]
        self.bases_taken.update(base for _, base in batch if base is not None)
        groups = [batch[i:i + per_job] for i in range(0, len(batch), per_job)]
        job = frozen(evaluate_group, self.sweep_dir)  # run from the launch's frozen code
        jobs = [self.where.submitted(lambda: self.executor(group[0][0]).submit(job, self.sweep_dir, group,
                                                                     self.eval_cfg, slot),
                          self.resources.get(group[0][0]))
                for slot, group in enumerate(groups)]
        self.names.update({id(j): ", ".join(n for n, _ in group) for j, group in zip(jobs, groups)})
        self.act("Submit eval", ", ".join(n + (" (+ base)" if base is not None else "") for n, base in batch),
                 f"{self.where.name} job ids " + ", ".join(j.job_id for j in jobs))
        return jobs

    def executor(self, run: str) -> Any:
        """The run's eval job asks for the GPUs, CPUs and memory its fine-tuning had (the
        preset's time limit)."""
        res = {k: v for k, v in self.resources.get(run, {}).items() if k != "timeout_min"}
        key = tuple(sorted(res.items()))
        if key not in self.executors:
            self.executors[key] = self.where.executor(self.folder, name=job_name(self.config.experiment.name, "eval"),
                                                      resources=res)
        return self.executors[key]

    def owns(self, job: Any) -> bool:
        return id(job) in self.names

    def ended(self, job: Any) -> None:
        try:
            job.result()
        except Exception as e:  # an eval job failing is reported, not fatal to the sweep
            why = job_failure(e)
            self.act("Eval failed", self.names[id(job)], why)
            print(f"cruijff: eval job of {self.names[id(job)]} failed: {why}", file=sys.stderr)


def job_failure(e: BaseException) -> str:
    """Why an eval job failed, in its own words: submitit's error holds the job's traceback, whose
    last line is often the path of its log; the line :func:`evaluate_group` raised says what failed."""
    lines = [ln.strip() for ln in str(e).splitlines()]
    ours = [ln.split("RuntimeError: ", 1)[1] for ln in lines if "RuntimeError: eval failed:" in ln]
    return ours[-1] if ours else last_line(e)


def evaluate_runs(config: DictConfig, sweep_dir: Path, todo: list[tuple[str, Path | None]],
                  act: ActionLog) -> None:
    """Evaluate these runs and wait. Locally as many jobs as the machine holds at once, each
    evaluating its share of the runs in turn (the runs with a base control first); on SLURM one
    job per run, all at once (the scheduler queues them). With the vLLM backend, one job per base
    model (one server for all its runs' adapters)."""
    evals = EvalJobs(config, sweep_dir, act)
    if config.eval.get("backend", "hf") == "vllm":
        jobs = [job for group in by_base_model(sweep_dir, todo, config.eval).values()
                for job in evals.submit(group, per_job=len(group))]
    else:
        per_job = -(-len(todo) // local_jobs(config)) if evals.where.on_this_machine else 1
        jobs = evals.submit(todo, per_job=max(1, per_job))
    with SweepView(sweep_dir) as view:
        evals.where.watch(jobs, evals.ended, on_poll=view.refresh)


def by_base_model(sweep_dir: Path, todo: list[tuple[str, Path | None]],
                  eval_cfg: DictConfig | dict | None) -> dict[str, list[tuple[str, Path | None]]]:
    """The runs to evaluate, grouped by the base model they fine-tuned (its resolved dir), in order."""
    groups: dict[str, list[tuple[str, Path | None]]] = {}
    for name, base in todo:
        model_dir, _ = resolve_paths(eval_config(sweep_dir / name, eval_cfg), build=False)
        groups.setdefault(str(Path(model_dir).resolve()), []).append((name, base))
    return groups


def evaluate_group(sweep_dir: Path, group: list[tuple[str, Path | None]], eval_cfg: Any, slot: int | None) -> None:
    """An eval job of several runs, one after another (each with its base control where it has
    one), on one load of each base model; a run whose eval fails does not stop the others, and the
    job then fails naming them."""
    failed = []
    evaluators = Evaluators()
    try:
        expect_adapters(sweep_dir, group, eval_cfg, evaluators)
        for name, base in group:
            try:
                evaluate_run_dir(sweep_dir / name, eval_cfg, base is not None, slot, evaluators)
            except Exception as e:
                failed.append(f"{name}: {type(e).__name__}: {last_line(e)}")
    finally:
        evaluators.close()
    if failed:
        raise RuntimeError("eval failed: " + "; ".join(failed))


def evaluate_in_turn(sweep_dir: Path, todo: list[tuple[str, Path | None]], eval_cfg: DictConfig | dict | None,
                     act: ActionLog) -> list[str]:
    """Evaluate these runs (:func:`eval_todo`) in this process, one after another (each base
    control with the first run that needs it); returns the runs whose eval raised. ``eval_cfg``:
    the eval section to use (None: each run's saved one)."""
    failed = []
    evaluators = Evaluators()  # one load of each base model for all of them
    expect_adapters(sweep_dir, todo, eval_cfg, evaluators)
    try:
        for i, (name, base) in enumerate(todo, 1):
            print(f"cruijff: evaluating {name} ({i}/{len(todo)})")
            try:
                evaluate_run_dir(sweep_dir / name, eval_cfg, base is not None, evaluators=evaluators)
            except Exception as e:  # one run's eval failing is reported, not fatal to the others
                act("Eval failed", name, f"{type(e).__name__}: {e}")
                print(f"cruijff: {name}: eval failed: {type(e).__name__}: {e}", file=sys.stderr)
                failed.append(name)
    finally:
        evaluators.close()
    return failed


def expect_adapters(sweep_dir: Path, group: list[tuple[str, Path | None]], eval_cfg: Any,
                    evaluators: Evaluators) -> None:
    """Tell a vLLM evaluator every adapter the job's runs will evaluate, before its server starts:
    it registers them all (with the largest rank among them) rather than one run's at a time."""
    for name, _ in group:
        try:
            cfg = eval_config(sweep_dir / name, eval_cfg)
            evaluator = evaluators.get(cfg)
            if not hasattr(evaluator, "expect"):
                continue
            model_dir, data_file = resolve_paths(cfg, build=False)
            cells = plan_cells(cfg, sweep_dir / name, model_dir, data_file, task_specs(cfg.eval.tasks))
        except Exception:  # the run's own evaluation says what is wrong with it
            continue
        evaluator.expect(model_dir, [c.adapter for c in cells
                                     if c.adapter is not None and c.standing() is not CellStanding.COMPLETE])
