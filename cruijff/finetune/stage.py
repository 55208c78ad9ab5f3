"""The fine-tuning stage over one run dir: resume or start, run the recipe, record what happened.

Writes ``finetune.yaml``, ``manifest.json``, ``run.json`` (running, then finished or failed) and
``logs/loss.jsonl`` (one line per step, so a killed job keeps its losses). An ordinary failure is
recorded, never raised: the sweep goes on and its report names it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from .. import ui
from ..cluster import time_limit_message
from ..config import effective_batch, peft_method, processes
from ..records import (ActionLog, EpochLoss, RunState, RunStatus, finish_manifest, layout, read_jsonl,
                       slurm_job_id, write_jsonl, write_manifest)
from . import distributed, recipe
from .render import RESUME_ADAPTER, recipe_name, render, write_config


def finetune_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, chash: str,
                 act: ActionLog) -> bool:
    """Fine-tune the run in ``run_dir`` unless it finished earlier; True when it is finished."""
    previous = RunState.of(run_dir)
    epochs = int(cfg.training.epochs)
    done = layout.checkpoints(run_dir)
    if previous is not None and previous.finished and len(done) == epochs:
        act("Skip fine-tune", f"{run_dir.name}: finished earlier, {len(done)} checkpoints intact")
        ui.say(f"cruijff: {run_dir.name}: fine-tuning finished earlier; skipped")
        return True

    resume = resume_point(previous, chash, run_dir, done, epochs)
    conf = render(cfg, run_dir, model_dir, data_file)
    if resume:  # torchtune's own resume: base weights + this adapter + optimizer/scheduler/epoch state
        conf["resume_from_checkpoint"] = True
        adapter = resume_adapter(run_dir, resume)
        if adapter is not None:  # an adapter-only run keeps it in recipe_state/ (relative to output_dir)
            conf["checkpointer"]["adapter_checkpoint"] = str(adapter.relative_to(run_dir))
    nproc = processes(cfg)
    method = peft_method(cfg)
    write_config(conf, run_dir / "finetune.yaml", run_dir.name, nproc, cfg.get("base_recipe"), method)
    write_manifest(run_dir, seed=int(cfg.seed), config_hash=chash,
                   extra={"model_dir": str(model_dir), "data_file": str(data_file)})
    state = RunState(
        name=run_dir.name, status=RunStatus.RUNNING, config_hash=chash,
        attempts=(previous.attempts if previous else 0) + 1, started=time.time(),
        host=socket.gethostname(), pid=os.getpid(), job_id=slurm_job_id(),
        device=conf["device"], dtype=conf["dtype"], nproc=nproc, effective_batch=effective_batch(cfg),
        resumed_from=resume,
    )
    state.save(run_dir)
    act("Fine-tune", f"{run_dir.name}: {recipe_name(nproc, method)}"
        + (f" on {nproc} processes" if nproc > 1 else "")
        + f", {epochs} epochs, device {conf['device']}, attempt {state.attempts}")
    t0 = time.time()
    loss_file = layout.loss_file(run_dir)
    rows: list[dict] = []
    if resume:  # keep the losses of the epochs kept
        kept = int(layout.epoch_of(resume)) + 1
        for partial in run_dir.glob("epoch_*"):  # torchtune resumes from the highest epoch_* dir
            epoch = layout.epoch_of(partial.name)
            if epoch is not None and epoch >= kept:
                shutil.rmtree(partial)
        rows = [r for r in read_jsonl(loss_file) if r["epoch"] < kept]
        act("Resume", f"{run_dir.name}: from {resume} (epochs 0..{kept - 1} kept), attempt {state.attempts}")
        ui.say(f"cruijff: {run_dir.name}: resuming after {resume}")
    view = ui.TrainingView(run_dir.name)
    try:
        write_jsonl(rows, loss_file)  # then one line per step, so a killed job keeps its losses
        # torchtune's own output (its config, a bar per epoch, checkpoint lines) and its libraries' warnings
        with ui.library_output(layout.finetune_log(run_dir), bool(cfg.get("verbose", False))), view:
            if nproc > 1:  # the recipe's rank 0 appends them
                view.start(epochs, 0, len(done) if resume else 0, f"{nproc} processes")
                distributed.launch(run_dir / "finetune.yaml", nproc, loss_file, method)
            else:
                with loss_file.open("a") as sink:
                    def on_step(row: dict) -> None:
                        rows.append(row)
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        view.step(row)

                    recipe.run(run_dir / "finetune.yaml", on_step=on_step, method=method,
                               on_start=lambda e, s, r: view.start(e, s, r, conf["device"]))
        status, error = RunStatus.FINISHED, None
    except Exception as e:  # an ordinary failure is recorded, not raised
        status = RunStatus.FAILED
        error = str(e) if isinstance(e, recipe.TrainingDiverged) else f"{type(e).__name__}: {e}"
        error = time_limit_message(e, cfg.cluster) or error
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "logs" / "error.txt").write_text(traceback.format_exc())
    if nproc > 1:
        rows = read_jsonl(loss_file)
    write_jsonl(rows, loss_file)
    if status is RunStatus.FINISHED and any(r["loss"] != r["loss"] for r in rows):  # NaN
        status, error = RunStatus.FAILED, "loss became NaN"
    state.status, state.error = status, error
    state.ended = time.time()
    state.duration_s = round(time.time() - t0, 1)
    state.checkpoints = [d.name for d in layout.checkpoints(run_dir)]
    state.epochs = epoch_summary(rows)
    state.save(run_dir)
    finish_manifest(run_dir)
    act("Fine-tune done", f"{run_dir.name}", f"{status} in {state.duration_s} s" + (f": {error}" if error else ""))
    if error:
        print(f"cruijff: {run_dir.name}: fine-tuning failed: {error}", file=sys.stderr)
    return status is RunStatus.FINISHED


def resume_point(state: RunState | None, chash: str, run_dir: Path, done: list[Path], epochs: int) -> str | None:
    """The epoch checkpoint an unfinished run of the same config can resume after, if any.

    torchtune writes ``recipe_state/recipe_state.pt`` (optimizer, scheduler, epochs run) after
    every epoch but the last, and the adapter in torchtune's format (``adapter_model.pt``: in the
    epoch dir, or ``recipe_state/`` for an adapter-only run); both must match the newest complete
    epoch. A full fine-tuning run starts again (torchtune resumes it only from renamed weights).
    """
    if state is None or not done or len(done) >= epochs or state.config_hash != chash:
        return None
    if state.status not in (RunStatus.RUNNING, RunStatus.FAILED):
        return None
    recipe_state = run_dir / "recipe_state" / "recipe_state.pt"
    if not recipe_state.exists() or resume_adapter(run_dir, done[-1].name) is None:
        return None
    import torch

    try:
        epochs_run = int(torch.load(recipe_state, map_location="cpu", weights_only=False)["epochs_run"])
    except Exception:
        return None
    return done[-1].name if epochs_run == len(done) else None


def resume_adapter(run_dir: Path, checkpoint: str) -> Path | None:
    """The torchtune-format adapter to resume after ``checkpoint``: the epoch dir's own (merged
    runs, or an adapter-only save the job did not live to tidy), else the one in ``recipe_state/``."""
    for path in (run_dir / checkpoint / "adapter_model.pt", run_dir / RESUME_ADAPTER):
        if path.exists():
            return path
    return None


def epoch_summary(rows: list[dict]) -> list[EpochLoss]:
    """Mean and final loss per epoch."""
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(r["epoch"], []).append(r["loss"])
    return [EpochLoss(epoch=e, mean_loss=sum(v) / len(v), final_loss=v[-1], steps=len(v))
            for e, v in sorted(out.items())]
