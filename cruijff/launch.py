"""The Hydra job: one fine-tuning run in its own directory, then its evaluation and results table.

``launch.py`` calls :func:`main` with the composed config. Stages, each usable on its own on an
existing run dir (``python -m cruijff eval|report <run dir>``):

1. validate the config (one-line errors, nothing written)
2. fine-tune with torchtune's stock recipe -> ``epoch_N/``, ``run.json``
3. evaluate the base model and each epoch checkpoint with inspect-ai -> ``eval/``
4. results table -> printed, ``results.csv``, ``results.md``
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from . import assets
from .config import CONF_DIR, ConfigError, CruijffError, check_group_overrides, config_hash, resolve_device, validate
from .evaluate import TaskSpec, cell_complete, check_task, evaluate_cell, task_specs
from .record import ActionLog, finish_manifest, read_json, slurm_job_id, write_json, write_manifest

log = logging.getLogger("cruijff")


def precheck(argv: list[str]) -> None:
    """Checks that need no composed config (bad group names), before Hydra prints a wall of text."""
    try:
        check_group_overrides(argv)
    except CruijffError as e:
        print(f"cruijff: error: {e}", file=sys.stderr)
        sys.exit(2)


def run_app(app: Any, argv: list[str]) -> None:
    """Run the Hydra app; a config Hydra cannot compose (an unknown key, a bad value for a typed
    key) ends in one line and exit 2, like every other bad input, instead of Hydra's message."""
    from hydra.errors import HydraException

    precheck(argv)
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's own full report
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; the error is reported here
    try:
        app()
    except (HydraException, OmegaConfBaseException) as e:
        print(f"cruijff: error: {_composition_message(e, argv)}", file=sys.stderr)
        sys.exit(2)


def _composition_message(e: Exception, argv: list[str]) -> str:
    from .config import leaf_keys, unknown_key

    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    key = getattr(cause, "full_key", None)
    if key and "not in struct" in str(cause):
        value = next((a.split("=", 1)[1] for a in argv if "=" in a and a.split("=", 1)[0] == key), "")
        try:
            from hydra import compose, initialize_config_dir

            with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
                known = list(leaf_keys(OmegaConf.to_container(compose(config_name="config"))))
        except Exception:
            known = []
        return str(unknown_key(key, value, known))
    if isinstance(cause, OmegaConfBaseException):
        return _omegaconf_message(cause)
    if type(e).__name__ == "OverrideParseException":
        return (f"cannot parse the overrides ({str(e).strip().splitlines()[0]}); "
                "the grammar: https://hydra.cc/docs/advanced/override_grammar/basic/")
    return str(e).strip().splitlines()[0]


def main(cfg: DictConfig) -> int | float:
    """Run one grid point; in a single run, exit non-zero when it failed.

    In a grid sweep a job only fine-tunes (evaluation waits for the grid, in the sweep callback).
    Under an optimizing sweeper (Optuna) a job also evaluates its own checkpoints and returns the
    objective: the last epoch's score on ``eval.objective`` (NaN when the run failed).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    optimizing = sweep and not str(hc.sweeper._target_).endswith("GridSweeper")
    fresh = not any(run_dir.iterdir()) if run_dir.exists() else True
    if sweep:
        _pin_gpu(cfg, int(hc.job.num))
        _limit_threads(cfg)
    try:
        if cfg.get("scaffold", False):  # the grid sweeper scaffolds before any job; a job never should
            raise ConfigError("scaffold", True, "renders a grid sweep's files: python launch.py -m ... scaffold=true "
                                                "(with the grid sweeper)")
        if cfg.get("dry_run", False):
            code = dry_run(cfg, run_dir, list(hc.overrides.task))
            if fresh:
                _remove_empty(run_dir)
            return code
        mode = "epochs" if optimizing else "none" if sweep else "all"
        code = run(cfg, run_dir, overrides=list(hc.overrides.task), evaluate=mode)
    except (CruijffError, OmegaConfBaseException) as e:
        msg = str(e).splitlines()[0] if isinstance(e, CruijffError) else _omegaconf_message(e)
        print(f"cruijff: error: {msg}", file=sys.stderr)
        if fresh:
            _remove_empty(run_dir)
        code = 2
    except Exception as e:  # never raise into Hydra: the sweep must complete and report
        if not sweep:
            raise
        print(f"cruijff: {run_dir.name}: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    if not sweep and code:
        sys.exit(code)
    if optimizing:
        if code:  # the sweeper records the trial as failed (NaN would crash hydra-optuna-sweeper)
            reason = read_json(run_dir / "run.json").get("error") or f"exit code {code}"
            raise TrialFailed(f"{run_dir.name}: {reason}")
        return objective(cfg, run_dir)
    return code


class TrialFailed(RuntimeError):
    """An Optuna trial whose run failed: Hydra's job runner hands it to the sweeper as a failure."""


def objective(cfg: DictConfig, run_dir: Path) -> float:
    """The score an optimizing sweeper maximizes: ``eval.objective`` at the last evaluated epoch."""
    from .evaluate import read_cell

    specs = task_specs(cfg.eval.tasks)
    label = cfg.eval.get("objective") or (specs[0].label if specs else None)
    evaluated = sorted((p for p in (run_dir / "eval").glob("epoch_*")), key=lambda p: int(p.name[6:]))
    if label is None or not evaluated:
        return float("nan")
    value = read_cell(evaluated[-1]).get(label, {}).get("value")
    return float(value) if value is not None else float("nan")


def dry_run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> int:
    """Validate and show what a run would do; write nothing, start nothing."""
    from .plan import PlannedRun, print_plan

    check(cfg)
    chash = config_hash(cfg, *resolve_paths(cfg, build=False))
    state = read_json(run_dir / "run.json").get("status", "new")
    print_plan([PlannedRun(run_dir.name, overrides, chash, state)], f"{cfg.experiment.name}: dry run")
    return 0


def _pin_gpu(cfg: DictConfig, slot: int) -> None:
    """Local sweeps on a multi-GPU machine: each job in a batch uses its own GPUs only."""
    from .sweep import pin_gpus, run_gpus

    if cfg.cluster.executor == "local" and cfg.training.device != "cpu":
        pin_gpus(slot, run_gpus(cfg))


def _limit_threads(cfg: DictConfig) -> None:
    """CPU threads for this job: the CPUs SLURM gave it, or this machine's share among local jobs.

    torch otherwise starts one thread per core of the node in every job, and jobs sharing a node
    slow each other down many times over.
    """
    from .sweep import local_jobs

    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n is None and cfg.cluster.executor == "local":
        parallel = local_jobs(cfg)
        n = str(max(1, (os.cpu_count() or 1) // parallel)) if parallel > 1 else None
    if n:
        os.environ.setdefault("OMP_NUM_THREADS", n)
        import torch

        torch.set_num_threads(int(n))


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None) or "config"
    if isinstance(e, MissingMandatoryValue):
        return f"{key}=???: a value is required"
    return f"{key}: {str(e).splitlines()[0]}"


def _remove_empty(path: Path) -> None:
    """Remove a dir Hydra created for a job that never started, and its empty parents."""
    while path.exists() and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        if path.parent == path or path.parent == Path.cwd():
            break
        path = path.parent


# ----------------------------------------------------------------------------------------------


def resolve_paths(cfg: DictConfig, build: bool = True) -> tuple[Path, Path]:
    """The model dir and dataset file of a config (building the embedded ones on first use)."""
    if cfg.model.path is None:
        if cfg.model.name != "tiny_llama":
            raise ConfigError("model.path", None, f"model {cfg.model.name} needs model.path=<local model directory>")
        model_dir = assets.tiny_model_dir(build)
    else:
        model_dir = Path(cfg.model.path).resolve()
    if cfg.dataset.path is None:
        if cfg.dataset.name != "capitalization":
            raise ConfigError("dataset.path", None, f"dataset {cfg.dataset.name} needs dataset.path=<JSON file>")
        data_file = assets.capitalization_file(build)
    else:
        data_file = Path(cfg.dataset.path).resolve()
    return model_dir, data_file


def check(cfg: DictConfig) -> list[TaskSpec]:
    validate(cfg)
    specs = task_specs(cfg.eval.tasks)
    for i, spec in enumerate(specs):
        check_task(spec, f"eval.tasks[{i}].name")
    return specs


def load_run(run_dir: Path) -> DictConfig:
    """The resolved config a run dir was launched with."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.exists():
        raise CruijffError(f"{run_dir}: not a cruijff run dir (no .hydra/config.yaml)")
    return OmegaConf.load(saved)


def eval_config(run_dir: Path, eval_cfg: Any = None) -> DictConfig:
    """A run's saved config, with the eval section of the current launch when given.

    Eval settings are not part of a run's config hash: a finished run is evaluated with the tasks
    asked for now, without fine-tuning it again.
    """
    cfg = load_run(run_dir)
    if eval_cfg is not None:
        cfg.eval = OmegaConf.create(OmegaConf.to_container(eval_cfg, resolve=True)
                                    if OmegaConf.is_config(eval_cfg) else eval_cfg)
    return cfg


def evaluate_saved(run_dir: Path, eval_cfg: Any = None, base: bool = True, slot: int | None = None) -> None:
    """Evaluate an existing run dir with its saved config (skips complete cells). ``slot``: this
    job's place among the local jobs running at once (it picks the job's GPUs)."""
    cfg = eval_config(run_dir, eval_cfg)
    if slot is not None:
        _pin_gpu(cfg, slot)
    _limit_threads(cfg)
    specs = check(cfg)
    model_dir, data_file = resolve_paths(cfg)
    evaluate_run(cfg, run_dir, model_dir, data_file, specs, ActionLog(run_dir.parent / "run-experiment.log"),
                 base=base)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], evaluate: str = "all") -> int:
    """Fine-tune, then evaluate: "all" (base + epochs, then the table), "epochs" or "none"."""
    specs = check(cfg)
    exp_dir = run_dir.parent
    act = ActionLog(exp_dir / "run-experiment.log")
    state_file = run_dir / "run.json"
    state = read_json(state_file)
    model_dir, data_file = resolve_paths(cfg)
    chash = config_hash(cfg, model_dir, data_file)
    if state.get("config_hash") not in (None, chash):
        if not cfg.overwrite:
            raise ConfigError(
                "overwrite", False,
                f"{run_dir} holds a run of a different config (hash {state.get('config_hash')} != {chash}); "
                "pass overwrite=true to replace it, or change experiment.name",
            )
        act("Overwrite run", f"{run_dir.name}: config hash {state.get('config_hash')} -> {chash}")
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        state = {}

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml", resolve=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides) if overrides else "[]\n"
    )
    _log_to_file(run_dir / "logs" / "launch.log")

    ok = finetune_run(cfg, run_dir, model_dir, data_file, chash, act)
    if evaluate == "none":
        return 0 if ok else 1
    if ok and cfg.eval.enabled:
        evaluate_run(cfg, run_dir, model_dir, data_file, specs, act, base=evaluate == "all")
    if evaluate == "all":
        report_run(cfg, run_dir, specs)
    return 0 if ok else 1


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)


def finetune_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, chash: str,
                 act: ActionLog) -> bool:
    from . import finetune

    state_file = run_dir / "run.json"
    state = read_json(state_file)
    epochs = int(cfg.training.epochs)
    done = finetune.checkpoints(run_dir)
    if state.get("status") == "finished" and len(done) == epochs:
        act("Skip fine-tune", f"{run_dir.name}: finished earlier, {len(done)} checkpoints intact")
        print(f"cruijff: {run_dir.name}: fine-tuning finished earlier; skipped")
        return True

    resume = _resume_point(state, chash, run_dir, done, epochs)
    conf = finetune.render(cfg, run_dir, model_dir, data_file)
    if resume:  # torchtune's own resume: base weights + this adapter + optimizer/scheduler/epoch state
        conf["resume_from_checkpoint"] = True
    nproc = finetune.processes(cfg)
    finetune.write_config(conf, run_dir / "finetune.yaml", run_dir.name, nproc, cfg.get("base_recipe"))
    write_manifest(run_dir, seed=int(cfg.seed), config_hash=chash,
                   extra={"model_dir": str(model_dir), "data_file": str(data_file)})
    attempts = int(state.get("attempts", 0)) + 1
    state = {
        "name": run_dir.name,
        "status": "running",
        "config_hash": chash,
        "attempts": attempts,
        "error": None,
        "started": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "job_id": slurm_job_id(),
        "device": conf["device"],
        "dtype": conf["dtype"],
        "resumed_from": resume,
    }
    write_json(state_file, state)
    act("Fine-tune", f"{run_dir.name}: {finetune.recipe_name(nproc)}"
        + (f" on {nproc} processes" if nproc > 1 else "")
        + f", {epochs} epochs, device {conf['device']}, attempt {attempts}")
    t0 = time.time()
    rows: list[dict] = []
    if resume:  # keep the losses of the epochs kept
        kept = int(resume[6:]) + 1
        for partial in run_dir.glob("epoch_*"):  # torchtune resumes from the highest epoch_* dir
            if partial.name[6:].isdigit() and int(partial.name[6:]) >= kept:
                shutil.rmtree(partial)
        rows = [r for r in finetune.read_losses(run_dir / "logs" / "loss.jsonl") if r["epoch"] < kept]
        act("Resume", f"{run_dir.name}: from {resume} (epochs 0..{kept - 1} kept), attempt {attempts}")
        print(f"cruijff: {run_dir.name}: resuming after {resume}")
    loss_file = run_dir / "logs" / "loss.jsonl"
    try:
        finetune.write_losses(rows, loss_file)  # then one line per step, so a killed job keeps its losses
        with loss_file.open("a") as sink:
            def on_step(row: dict) -> None:
                rows.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()

            finetune.run(run_dir / "finetune.yaml", on_step=on_step, nproc=nproc, loss_file=loss_file)
        status, error = "finished", None
        if rows and any(r["loss"] != r["loss"] for r in rows):  # NaN
            status, error = "failed", "loss became NaN"
    except Exception as e:  # an ordinary failure is recorded, not raised
        status, error = "failed", str(e) if isinstance(e, finetune.TrainingDiverged) else f"{type(e).__name__}: {e}"
        if type(e).__name__ == "UncompletedJobError" and "timed-out" in str(e):  # submitit, at the time limit
            error = (f"stopped at its time limit (cluster.timeout_min={cfg.cluster.get('timeout_min')}) with no "
                     f"requeue left (cluster.max_requeue={cfg.cluster.get('max_requeue')}); a re-run resumes "
                     "after its last complete epoch")
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "logs" / "error.txt").write_text(traceback.format_exc())
    if nproc > 1:  # the recipe's rank 0 appended them
        rows = finetune.read_losses(loss_file)
    finetune.write_losses(rows, loss_file)
    state.update(
        status=status,
        error=error,
        ended=time.time(),
        duration_s=round(time.time() - t0, 1),
        checkpoints=[d.name for d in finetune.checkpoints(run_dir)],
        epochs=finetune.epoch_summary(rows),
    )
    write_json(state_file, state)
    finish_manifest(run_dir)
    act("Fine-tune done", f"{run_dir.name}", f"{status} in {state['duration_s']} s" + (f": {error}" if error else ""))
    if error:
        print(f"cruijff: {run_dir.name}: fine-tuning failed: {error}", file=sys.stderr)
    return status == "finished"


def _resume_point(state: dict, chash: str, run_dir: Path, done: list[Path], epochs: int) -> str | None:
    """The epoch checkpoint an unfinished run of the same config can resume after, if any.

    torchtune writes ``recipe_state/recipe_state.pt`` (optimizer, scheduler, epochs run) after
    every epoch but the last, and ``adapter_model.pt`` in each epoch dir; both must match the newest
    complete epoch.
    """
    if not done or len(done) >= epochs or state.get("config_hash") != chash:
        return None
    if state.get("status") not in ("running", "failed"):
        return None
    recipe_state = run_dir / "recipe_state" / "recipe_state.pt"
    if not recipe_state.exists() or not (done[-1] / "adapter_model.pt").exists():
        return None
    import torch

    try:
        epochs_run = int(torch.load(recipe_state, map_location="cpu", weights_only=False)["epochs_run"])
    except Exception:
        return None
    return done[-1].name if epochs_run == len(done) else None


def cells(cfg: DictConfig, run_dir: Path, model_dir: Path) -> list[tuple[str, Path, Path]]:
    """(label, model dir, log dir) of every checkpoint to evaluate: base first, then epochs."""
    from . import finetune

    out = []
    if cfg.eval.base_model:
        out.append(("base", model_dir, base_dir(cfg, run_dir.parent)))
    wanted = None if cfg.eval.epochs == "all" else set(cfg.eval.epochs)
    for ckpt in finetune.checkpoints(run_dir):
        epoch = int(ckpt.name[6:])
        if wanted is None or epoch in wanted:
            out.append((ckpt.name, ckpt, run_dir / "eval" / ckpt.name))
    return out


def template_choice(cfg: DictConfig) -> Any:
    """``eval.chat_template``, or the model's own choice when it is ``auto``."""
    value = cfg.eval.get("chat_template", "auto")
    return cfg.model.get("chat_template") if value == "auto" else value


def eval_template(cfg: DictConfig) -> str | None:
    """The Jinja text that lays out eval prompts; None: the model dir's own template."""
    from .evaluate import chat

    return chat.resolve(template_choice(cfg))


def base_dir(cfg: DictConfig, exp_dir: Path) -> Path:
    """The base model's control cell: one per model and prompt layout in a sweep."""
    from .evaluate import chat

    choice = template_choice(cfg)
    return exp_dir / "base" / (str(cfg.model.name) + ("" if choice is None else "+" + chat.tag(choice)))


def cell_done(cfg: DictConfig, log_dir: Path, specs: list[TaskSpec]) -> bool:
    """The cell has every task's result, over this config's sample limit and prompt layout."""
    return cell_complete(log_dir, specs, cfg.eval.limit, eval_template(cfg))


def evaluate_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path,
                 specs: list[TaskSpec], act: ActionLog, base: bool = True) -> None:
    device = resolve_device(cfg.training.device)
    todo = [c for c in cells(cfg, run_dir, model_dir) if base or c[0] != "base"]
    for i, (label, ckpt, log_dir) in enumerate(todo, 1):
        if cell_done(cfg, log_dir, specs):
            act("Skip eval", f"{run_dir.name}/{label}: complete")
            continue
        print(f"cruijff: evaluating {label} ({i}/{len(todo)}) on {', '.join(s.label for s in specs)}")
        t0 = time.time()
        results = evaluate_cell(
            ckpt, specs, log_dir,
            data_file=data_file, input_key=cfg.dataset.input_key, output_key=cfg.dataset.output_key,
            device=device, gpus=int(cfg.model.resources.gpus),
            max_tokens=int(cfg.eval.max_tokens), batch_size=int(cfg.eval.batch_size),
            limit=cfg.eval.limit, chat_template=eval_template(cfg),
            tags=[cfg.experiment.name, run_dir.name if label != "base" else "base", label],
            metadata={"experiment": cfg.experiment.name, "run": run_dir.name if label != "base" else None,
                      "checkpoint": label, "config_hash": read_json(run_dir / "run.json").get("config_hash")},
        )
        summary = ", ".join(f"{k}={v.get('value', v['status'])}" for k, v in results.items())
        act("Evaluate", f"{run_dir.name}/{label}: {len(specs)} tasks, one model load",
            f"{summary} in {time.time() - t0:.1f} s")


def results_table(cfg: DictConfig, run_dir: Path, specs: list[TaskSpec]):
    """Rows (checkpoint, task scores..., train loss) as a pandas DataFrame."""
    import pandas as pd

    from .evaluate import read_cell

    state = read_json(run_dir / "run.json")
    losses = {e["epoch"]: e for e in state.get("epochs", [])}
    rows = []
    base_cell = base_dir(cfg, run_dir.parent)
    labels = [("base", base_cell)] if cfg.eval.base_model else []
    labels += [(c, run_dir / "eval" / c) for c in state.get("checkpoints", [])]
    for label, log_dir in labels:
        res = read_cell(log_dir)
        row = {"checkpoint": label}
        for s in specs:
            row[s.label] = res.get(s.label, {}).get("value")
        epoch = int(label[6:]) if label.startswith("epoch_") else None
        row["train_loss"] = losses[epoch]["mean_loss"] if epoch in losses else None
        rows.append(row)
    return pd.DataFrame(rows)


def report_run(cfg: DictConfig, run_dir: Path, specs: list[TaskSpec]) -> None:
    from .ui import console
    from rich.table import Table

    from .report import fmt, markdown_table

    df = results_table(cfg, run_dir, specs)
    state = read_json(run_dir / "run.json")
    if df.empty:
        return
    df.to_csv(run_dir / "results.csv", index=False)
    (run_dir / "results.md").write_text(
        f"# {cfg.experiment.name} / {run_dir.name}\n\nStatus: {state.get('status')}"
        + (f" ({state.get('error')})" if state.get("error") else "")
        + "\n\n" + markdown_table(df) + "\n"
    )
    table = Table(title=f"{cfg.experiment.name} / {run_dir.name} — {state.get('status', '?')}")
    for c in df.columns:
        table.add_column(c, justify="left" if c == "checkpoint" else "right")
    for _, r in df.iterrows():
        table.add_row(*(fmt(v) for v in r.values))
    console().print(table)
    print(f"cruijff: run dir {run_dir}")

