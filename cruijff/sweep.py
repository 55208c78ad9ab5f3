"""Sweeps: the Hydra callback that plans, locks, evaluates after the grid, and reports.

Hydra gives ``on_multirun_end`` no job results, and skips it when a job raised; so jobs never raise
for an ordinary failure, record their outcome in ``run.json``, and this callback finds everything
from files. It runs in the launching process:

- ``on_multirun_start``: take the sweep lock, write ``sweep.json`` (the plan), log the submission.
- ``on_multirun_end``: evaluate the base model once, then every finished run's checkpoints (jobs
  through submitit, the sweep's executor kind, at most ``cluster.max_parallel`` at once), write the
  report, log the summary, exit non-zero if any run failed.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import run_name
from .record import ActionLog, read_json, write_json

_LOCKS: dict[str, Any] = {}


def local_parallel(value: Any) -> int:
    """Jobs at once on this machine: one per visible GPU, or 1 on a CPU-only machine."""
    if value != "auto":
        return max(1, int(value))
    return max(1, gpu_count())


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
    return len([p for p in Path("/dev").glob("nvidia[0-9]*")])


def grid(config: DictConfig) -> list[list[str]]:
    """The job overrides Hydra's basic sweeper will produce (experiment grid, then command line)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.select(config, "hydra.overrides.task") or [])
    overrides = OverridesParser.create().parse_overrides(arguments)
    return BasicSweeper.split_arguments(overrides, max_batch_size=None)[0]


def acquire_lock(sweep_dir: Path) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    f = open(sweep_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        print(f"cruijff: error: {sweep_dir} is in use by a running launch ({holder}); "
              "wait for it or stop it first", file=sys.stderr)
        sys.exit(2)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}\n")
    f.flush()
    _LOCKS[str(sweep_dir)] = f


def release_lock(sweep_dir: Path) -> None:
    f = _LOCKS.pop(str(sweep_dir), None)
    if f is not None:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class SweepCallback(Callback):
    """Hydra callback for ``python launch.py -m``; see the module docstring."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        acquire_lock(sweep_dir)
        self._t0 = time.time()
        runs = [{"name": run_name(ov), "overrides": ov} for ov in grid(config)]
        evals = OmegaConf.to_container(config.eval, resolve=True)
        write_json(sweep_dir / "sweep.json", {
            "experiment": config.experiment.name,
            "runs": runs,
            "eval": {k: evals[k] for k in ("tasks", "epochs", "base_model")},
        })
        done = sum(read_json(sweep_dir / r["name"] / "run.json").get("status") == "finished" for r in runs)
        ActionLog(sweep_dir / "run-experiment.log")(
            "Sweep start", f"{len(runs)} runs planned ({done} finished earlier, skipped): "
            + ", ".join(r["name"] for r in runs),
            f"launcher {config.hydra.launcher._target_.rsplit('.', 1)[-1]}, "
            f"{local_parallel(config.cluster.max_parallel)} at once",
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        act = ActionLog(sweep_dir / "run-experiment.log")
        try:
            plan = read_json(sweep_dir / "sweep.json").get("runs", [])
            states = {r["name"]: read_json(sweep_dir / r["name"] / "run.json") for r in plan}
            finished = [n for n, s in states.items() if s.get("status") == "finished"]
            failed = {n: (s.get("error") or s.get("status") or "did not start") for n, s in states.items()
                      if s.get("status") != "finished"}
            for n, why in failed.items():
                act("Run failed", n, why)
            if config.eval.enabled and finished:
                self._evaluate(config, sweep_dir, finished, act)
            from .report import report_sweep

            report_sweep(sweep_dir, plan)
            summary = f"{len(finished)}/{len(plan)} runs finished"
            if failed:
                summary += f", {len(failed)} failed: " + "; ".join(f"{n}: {w}" for n, w in failed.items())
            act("Sweep done", f"{time.time() - self._t0:.1f} s", summary)
            print(f"cruijff: {summary}")
            print(f"cruijff: report {sweep_dir / 'summary.md'}")
        finally:
            release_lock(sweep_dir)
        if failed:
            sys.exit(1)

    def _evaluate(self, config: DictConfig, sweep_dir: Path, runs: list[str], act: ActionLog) -> None:
        import submitit

        from .launch import evaluate_saved

        executor = submitit.AutoExecutor(folder=str(sweep_dir / ".submitit" / "eval"), cluster="local")
        executor.update_parameters(timeout_min=int(config.hydra.launcher.timeout_min))
        parallel = local_parallel(config.cluster.max_parallel)
        # the first job also evaluates the shared base-model control; the rest wait for it
        batches = [runs[:1]] + [runs[i:i + parallel] for i in range(1, len(runs), parallel)]
        for batch in batches:
            jobs = [executor.submit(evaluate_saved, sweep_dir / n) for n in batch]
            act("Submit eval", ", ".join(batch), "job ids " + ", ".join(j.job_id for j in jobs))
            for n, job in zip(batch, jobs):
                try:
                    job.result()
                except Exception as e:  # an eval job failing is reported, not fatal to the sweep
                    act("Eval failed", n, str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
