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
from ..config import effective_batch, input_identity, peft_method, processes, run_changes
from ..records import (ActionLog, RunStanding, RunState, RunStatus, complete_epochs, epoch_summary, finish_manifest,
                       layout, liveness, other_config, read_jsonl, record_finished, run_standing, slurm_job_id,
                       write_jsonl, write_manifest)
from . import distributed, recipe
from .render import RESUME_ADAPTER, recipe_name, render, write_config


def finetune_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, chash: str,
                 act: ActionLog) -> bool:
    """Fine-tune the run in ``run_dir`` unless it finished earlier (every epoch's checkpoint is
    complete: :func:`cruijff.records.run_standing`); True when it is finished."""
    epochs = int(cfg.training.epochs)
    standing, previous = run_standing(run_dir, chash, epochs)
    if standing is RunStanding.OTHER_CONFIG:  # the job replaces it (overwrite=true) or refuses before this
        raise other_config(run_dir, previous.config_hash if previous else None, chash,
                           run_changes(run_dir, cfg, model_dir, data_file))
    if standing is RunStanding.FINISHED:
        recorded = previous.finished
        record_finished(run_dir, previous)
        act("Skip fine-tune", f"{run_dir.name}: finished earlier, {epochs} checkpoints complete"
            + ("" if recorded else "; run.json brought up to date (the job ended before it said so)"))
        ui.say(f"cruijff: {run_dir.name}: fine-tuning finished earlier; skipped")
        return True

    nproc = processes(cfg)
    method = peft_method(cfg)
    resume = resume_point(previous, run_dir, epochs, method)
    conf = render(cfg, run_dir, model_dir, data_file)
    if resume:  # torchtune's own resume: the epoch's weights or adapter + optimizer, data and epoch state
        conf["resume_from_checkpoint"] = True
        if method == "none":  # full fine-tuning reads the epoch's own weights (relative to output_dir)
            conf["checkpointer"]["checkpoint_files"] = [f"{resume}/{shard.name}" for shard in _shards(run_dir / resume)]
        else:  # the adapter: an adapter-only run keeps it in recipe_state/ (relative to output_dir)
            conf["checkpointer"]["adapter_checkpoint"] = str(resume_adapter(run_dir, resume).relative_to(run_dir))
    write_config(conf, layout.finetune_config(run_dir), run_dir.name, nproc, cfg.get("base_recipe"), method)
    write_manifest(run_dir, seed=int(cfg.seed), config_hash=chash,
                   extra={"model_dir": str(model_dir), "data_file": str(data_file),
                          "inputs": input_identity(cfg, model_dir, data_file)})
    state = RunState(
        name=run_dir.name, status=RunStatus.RUNNING, config_hash=chash,
        attempts=(previous.attempts if previous else 0) + 1, started=time.time(),
        host=socket.gethostname(), pid=os.getpid(), pid_start=liveness.start_time(os.getpid()), job_id=slurm_job_id(),
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
    kept = int(layout.epoch_of(resume)) + 1 if resume else 0
    for stale in layout.epoch_dirs(run_dir):  # epochs trained again, and incomplete ones (a save cut short);
        if layout.epoch_of(stale.name) >= kept:  # torchtune also resumes from the highest epoch_* dir
            shutil.rmtree(stale)
    if resume:  # keep the losses of the epochs kept
        rows = [r for r in read_jsonl(loss_file) if r["epoch"] < kept]
        act("Resume", f"{run_dir.name}: from {resume} (epochs 0..{kept - 1} kept), attempt {state.attempts}")
        ui.say(f"cruijff: {run_dir.name}: resuming after {resume}")
    view = ui.TrainingView(run_dir.name)
    try:
        write_jsonl(rows, loss_file)  # then one line per step, so a killed job keeps its losses
        # torchtune's own output (its config, a bar per epoch, checkpoint lines) and its libraries' warnings
        with ui.library_output(layout.finetune_log(run_dir), bool(cfg.get("verbose", False))), view:
            if nproc > 1:  # the recipe's rank 0 appends them
                view.start(epochs, 0, kept, f"{nproc} processes")
                distributed.launch(layout.finetune_config(run_dir), nproc, loss_file, method)
            else:
                with loss_file.open("a") as sink:
                    def on_step(row: dict) -> None:
                        rows.append(row)
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                        view.step(row)

                    recipe.run(layout.finetune_config(run_dir), on_step=on_step, method=method,
                               on_start=lambda e, s, r: view.start(e, s, r, conf["device"]))
        status, error = RunStatus.FINISHED, None
    except Exception as e:  # an ordinary failure is recorded, not raised
        status = RunStatus.FAILED
        error = str(e) if isinstance(e, recipe.TrainingDiverged) else f"{type(e).__name__}: {e}"
        error = time_limit_message(e, cfg.cluster) or error
        layout.error_file(run_dir).parent.mkdir(exist_ok=True)
        layout.error_file(run_dir).write_text(traceback.format_exc())
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


def resume_point(state: RunState | None, run_dir: Path, epochs: int, method: str = "lora") -> str | None:
    """The epoch checkpoint an unfinished run (of the same config: :func:`run_standing`) can
    resume after, if any: the newest complete one of an unbroken line from ``epoch_0``.

    torchtune writes ``recipe_state/recipe_state.pt`` (optimizer, data order, epochs run) at every
    epoch's save but the last, and its own copy of what the next epoch starts from: the adapter
    (``adapter_model.pt``: in the epoch dir, or ``recipe_state/`` for an adapter-only run), or for
    full fine-tuning the epoch's weights themselves. The recipe state must be that epoch's: the
    newest one, or the one set aside while a later epoch's save was under way (it then becomes
    the newest again).
    """
    kept = complete_epochs(run_dir)
    if state is None or kept == 0 or kept >= epochs:
        return None
    checkpoint = f"epoch_{kept - 1}"
    if method == "none" and not _shards(run_dir / checkpoint):
        return None
    if method != "none" and resume_adapter(run_dir, checkpoint) is None:
        return None
    import torch

    for path in (run_dir / recipe.RECIPE_STATE, run_dir / recipe.PREVIOUS_RECIPE_STATE):
        try:
            epochs_run = int(torch.load(path, map_location="cpu", weights_only=False)["epochs_run"])
        except Exception:  # none there, or cut short
            continue
        if epochs_run == kept:
            if path.name != Path(recipe.RECIPE_STATE).name:  # where torchtune reads it
                os.replace(path, run_dir / recipe.RECIPE_STATE)
            return checkpoint
    return None


def _shards(ckpt: Path) -> list[Path]:
    """The weight files of a full-weight checkpoint (full fine-tuning's), in order."""
    return sorted(ckpt.glob("model-*.safetensors"))


def resume_adapter(run_dir: Path, checkpoint: str) -> Path | None:
    """The torchtune-format adapter to resume after ``checkpoint``: the epoch dir's own (merged
    runs, or an adapter-only save the job did not live to tidy), else the one in ``recipe_state/``."""
    for path in (run_dir / checkpoint / "adapter_model.pt", run_dir / RESUME_ADAPTER):
        if path.exists():
            return path
    return None
