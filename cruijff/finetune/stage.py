"""The fine-tuning stage over one run dir: resume or start, run the recipe, record what happened.

Writes ``finetune.yaml``, ``manifest.json``, ``run.json`` (running, then finished or failed) and
``logs/loss.jsonl`` (one line per step, so a killed job keeps its losses). An ordinary failure is
recorded, never raised: the sweep goes on and its report names it.

Out of GPU memory (in the recipe's setup or a step; on several GPUs, a rank that died of it), the
run is retried in the same job, up to ``training.oom_retries`` times: from its last complete epoch,
with the micro-batch (torchtune's ``batch_size``) halved and ``gradient_accumulation_steps``
doubled, so the effective batch, the learning-rate schedule and the data order stay the same (and
so does the config hash: only ``finetune.yaml`` differs). Each retry is a ``cuda_oom`` entry of
``run.json``'s ``retries``; a later attempt of the run starts from the smallest micro-batch needed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .. import ui
from ..cluster import backend, time_limit_message
from ..config import early_stop, effective_batch, input_identity, peft_method, processes, run_changes
from ..records import (ActionLog, Retry, RunStanding, RunState, RunStatus, complete_epochs, epoch_summary,
                       finish_manifest, layout, liveness, mark_stopped, other_config, read_jsonl, record_finished, run_standing,
                       slurm_job_id, write_jsonl, write_manifest)
from ..records import halving
from ..records.manifest import update_manifest
from . import distributed, recipe
from .render import RESUME_ADAPTER, recipe_name, render, smaller_batch_note, write_config


def finetune_run(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, chash: str,
                 act: ActionLog) -> bool:
    """Fine-tune the run in ``run_dir`` unless it finished earlier (every epoch's checkpoint is
    complete: :func:`cruijff.records.run_standing`); True when it is finished. Out of GPU memory,
    it is retried from its last complete epoch with half the micro-batch (:func:`retry_smaller`)."""
    epochs = int(cfg.training.epochs)
    limit = rung_limit(cfg, run_dir, epochs)
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
    if limit is not None and previous is not None and complete_epochs(run_dir) >= limit:
        stopped_earlier(run_dir, previous, limit, act)
        return True

    nproc = processes(cfg)
    method = peft_method(cfg)
    batch = MicroBatch.start(cfg, previous)
    resume, conf = _configure(cfg, run_dir, model_dir, data_file, previous, batch, limit)
    write_manifest(run_dir, seed=int(cfg.seed), config_hash=chash,
                   extra={"model_dir": str(model_dir), "data_file": str(data_file),
                          "inputs": input_identity(cfg, model_dir, data_file), **batch.fields(),
                          "retries": [asdict(r) for r in previous.retries] if previous else []})
    state = RunState(
        name=run_dir.name, status=RunStatus.RUNNING, config_hash=chash,
        attempts=(previous.attempts if previous else 0) + 1, started=time.time(),
        host=socket.gethostname(), pid=os.getpid(), pid_start=liveness.start_time(os.getpid()), job_id=slurm_job_id(),
        device=conf["device"], dtype=conf["dtype"], nproc=nproc, effective_batch=effective_batch(cfg),
        resumed_from=resume, retries=list(previous.retries) if previous else [],
    )
    state.save(run_dir)
    act("Fine-tune", f"{run_dir.name}: {recipe_name(nproc, method)}"
        + (f" on {nproc} processes" if nproc > 1 else "")
        + f", {epochs} epochs" + (f" (up to epoch {limit} now: its rung)" if limit is not None else "")
        + f", device {conf['device']}, attempt {state.attempts}"
        + (f", micro-batch {batch.size} x gradient accumulation {batch.accumulation}" if batch.smaller else ""))
    if batch.smaller:
        ui.say(f"cruijff: {run_dir.name}: training with micro-batch {batch.size} x gradient accumulation "
               f"{batch.accumulation}: an earlier attempt ran out of GPU memory with more")
    t0 = time.time()
    tried, left = tried_before(state) + [batch.size], int(cfg.training.get("oom_retries", 2))
    while True:
        rows = _keep_losses(run_dir, resume, state, act)
        status, error, rows, oom = _train(cfg, run_dir, conf, rows, nproc, method, epochs, resume)
        if oom is None:
            break
        if complete_epochs(run_dir) >= (limit or epochs):  # it struck after the last save: nothing is lost
            status, error = RunStatus.FINISHED, None
            state.note = f"out of GPU memory at {oom[0]}, after every epoch was saved"
            act("Out of GPU memory after the last save", run_dir.name, oom[1])
            break
        smaller = batch.halved()
        if smaller is None or left == 0:
            status, error = RunStatus.FAILED, out_of_memory(cfg, oom[0], batch, tried, smaller)
            layout.error_file(run_dir).parent.mkdir(exist_ok=True)
            layout.error_file(run_dir).write_text(oom[2])
            break
        retry_smaller(run_dir, state, oom, batch, smaller, act)
        batch, left = smaller, left - 1
        tried.append(batch.size)
        free_gpu_memory()
        resume, conf = _configure(cfg, run_dir, model_dir, data_file, state, batch, limit)
        state.resumed_from = resume
        state.save(run_dir)
    if status is RunStatus.FINISHED and any(r["loss"] != r["loss"] for r in rows):  # NaN
        status, error = RunStatus.FAILED, "loss became NaN"
    if status is RunStatus.FINISHED:  # an earlier attempt's traceback is not this run's
        layout.error_file(run_dir).unlink(missing_ok=True)
        if limit is not None and complete_epochs(run_dir) < epochs:  # at its rung: the sweep decides
            status, state.stopped_at = RunStatus.STOPPED, complete_epochs(run_dir)
            state.note = f"trained up to its rung, epoch {state.stopped_at}: the sweep decides whether it goes on"
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
    return status in (RunStatus.FINISHED, RunStatus.STOPPED)


def rung_limit(cfg: DictConfig, run_dir: Path, epochs: int) -> int | None:
    """In a successive-halving sweep (``early_stop=halving``), the epochs the run may train now: its
    next rung, as the sweep's ``halving.json`` says (None: all of them)."""
    if early_stop.method(cfg) != "halving":
        return None
    limit = halving.budget(run_dir)
    return limit if limit is not None and limit < epochs else None


def stopped_earlier(run_dir: Path, state: RunState, limit: int, act: ActionLog) -> None:
    """A run that already trained the epochs it may train now: recorded stopped at its rung."""
    mark_stopped(run_dir, state)
    kept = state.stopped_at
    act("Skip fine-tune", f"{run_dir.name}: {kept} epochs trained, its rung is {limit}")
    ui.say(f"cruijff: {run_dir.name}: trained {kept} epochs earlier, up to its rung; skipped")


@dataclass(frozen=True)
class MicroBatch:
    """What one forward pass takes (torchtune's ``batch_size``) and how many make an optimizer step
    (``gradient_accumulation_steps``); ``smaller``: less than the run's config says."""

    size: int
    accumulation: int
    smaller: bool = False

    @classmethod
    def start(cls, cfg: DictConfig, previous: RunState | None) -> "MicroBatch":
        """The config's, or the smallest an earlier attempt of the run needed (``run.json``'s
        ``cuda_oom`` retries) where the effective batch is the same."""
        size, accumulation = int(cfg.training.batch_size), int(cfg.training.gradient_accumulation_steps)
        needed = [r.after for r in (previous.retries if previous else []) if r.kind == "cuda_oom"
                  and int(r.after.get("batch_size", size)) * int(r.after.get("gradient_accumulation_steps", 0))
                  == size * accumulation]
        if not needed:
            return cls(size, accumulation)
        least = min(needed, key=lambda a: int(a["batch_size"]))
        if int(least["batch_size"]) >= size:
            return cls(size, accumulation)
        return cls(int(least["batch_size"]), int(least["gradient_accumulation_steps"]), True)

    def halved(self) -> "MicroBatch | None":
        """Half the micro-batch (the largest divisor of it up to half: 6 -> 3 -> 1) and the
        accumulation that keeps the effective batch; None for a micro-batch of 1."""
        size = next((d for d in range(self.size // 2, 0, -1) if self.size % d == 0), None)
        return None if size is None else MicroBatch(size, self.accumulation * (self.size // size), True)

    def fields(self) -> dict[str, int]:
        return {"batch_size": self.size, "gradient_accumulation_steps": self.accumulation}


def _configure(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path, record: RunState | None,
               batch: MicroBatch, limit: int | None = None) -> tuple[str | None, dict]:
    """The checkpoint the run resumes after (if any) and its torchtune config with ``batch``,
    written to ``finetune.yaml``; ``limit``: the epochs it may train now (a rung of a halving sweep)."""
    nproc, method = processes(cfg), peft_method(cfg)
    resume = resume_point(record, run_dir, int(cfg.training.epochs), method)
    conf = render(cfg, run_dir, model_dir, data_file)
    conf["batch_size"], conf["gradient_accumulation_steps"] = batch.size, batch.accumulation
    if batch.smaller:  # its epochs end where the config's do (recipe.epochs_as_configured)
        conf[recipe.CONFIG_MICRO_BATCH] = {"batch_size": int(cfg.training.batch_size),
                                           "gradient_accumulation_steps": int(cfg.training.gradient_accumulation_steps)}
    if resume:  # torchtune's own resume: the epoch's weights or adapter + optimizer, data and epoch state
        conf["resume_from_checkpoint"] = True
        if method == "none":  # full fine-tuning reads the epoch's own weights (relative to output_dir)
            conf["checkpointer"]["checkpoint_files"] = [f"{resume}/{shard.name}" for shard in _shards(run_dir / resume)]
        else:  # the adapter: an adapter-only run keeps it in recipe_state/ (relative to output_dir)
            conf["checkpointer"]["adapter_checkpoint"] = str(resume_adapter(run_dir, resume).relative_to(run_dir))
    if limit is not None:  # the schedule stays the full run's; training stops after this epoch's save
        conf[recipe.STOP_AFTER_EPOCHS] = limit
    note = smaller_batch_note((int(cfg.training.batch_size), int(cfg.training.gradient_accumulation_steps)),
                              (batch.size, batch.accumulation))
    write_config(conf, layout.finetune_config(run_dir), run_dir.name, nproc, cfg.get("base_recipe"), method, note)
    return resume, conf


def _keep_losses(run_dir: Path, resume: str | None, state: RunState, act: ActionLog) -> list[dict]:
    """Before training: epoch dirs after ``resume`` go (torchtune also resumes from the highest
    ``epoch_*`` dir), and so do their losses; the losses of the epochs kept are returned."""
    kept = int(layout.epoch_of(resume)) + 1 if resume else 0
    for stale in layout.epoch_dirs(run_dir):  # epochs trained again, and incomplete ones (a save cut short)
        if layout.epoch_of(stale.name) >= kept:
            shutil.rmtree(stale)
    if not resume:
        return []
    act("Resume", f"{run_dir.name}: from {resume} (epochs 0..{kept - 1} kept), attempt {state.attempts}")
    ui.say(f"cruijff: {run_dir.name}: resuming after {resume}")
    return [r for r in read_jsonl(layout.loss_file(run_dir)) if r["epoch"] < kept]


def _train(cfg: DictConfig, run_dir: Path, conf: dict, rows: list[dict], nproc: int, method: str, epochs: int,
           resume: str | None) -> tuple[RunStatus, str | None, list[dict], tuple[str, str, str] | None]:
    """Run the recipe on ``finetune.yaml`` after ``rows`` (the losses kept): (status, error, every
    loss row, and where and why the GPU ran out of memory, with the traceback, if it did)."""
    loss_file = layout.loss_file(run_dir)
    kept = int(layout.epoch_of(resume)) + 1 if resume else 0
    view = ui.TrainingView(run_dir.name)
    oom = None
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
    except recipe.OutOfGPUMemory as e:  # the caller retries it with a smaller micro-batch, or fails
        status, error, oom = RunStatus.FAILED, f"OutOfGPUMemory: {e}", (e.at, e.detail, traceback.format_exc())
    except Exception as e:  # an ordinary failure is recorded, not raised
        status = RunStatus.FAILED
        error = str(e) if isinstance(e, recipe.TrainingDiverged) else f"{type(e).__name__}: {e}"
        error = time_limit_message(e, cfg.cluster) or error
        layout.error_file(run_dir).parent.mkdir(exist_ok=True)
        layout.error_file(run_dir).write_text(traceback.format_exc())
    if nproc > 1:
        rows = read_jsonl(loss_file)
    write_jsonl(rows, loss_file)
    return status, error, rows, oom


def retry_smaller(run_dir: Path, state: RunState, oom: tuple[str, str, str], batch: MicroBatch,
                  smaller: MicroBatch, act: ActionLog) -> None:
    """Record a retry after the GPU ran out of memory at ``oom[0]``: in ``run.json``'s retries (saved
    at once), the manifest, the orchestration log and on the console."""
    at, detail = oom[0], oom[1]
    retry = Retry(kind="cuda_oom", at=at, before=batch.fields(), after=smaller.fields(), time=time.time(),
                  error=detail)
    change = (f"micro-batch {batch.size} -> {smaller.size}, "
              f"gradient accumulation {batch.accumulation} -> {smaller.accumulation}")
    act("Retry", f"{run_dir.name}: out of GPU memory at {at}; {change}")  # first: a kill after it retries again
    state.retries.append(retry)
    state.save(run_dir)
    update_manifest(run_dir, **smaller.fields(), retries=[asdict(r) for r in state.retries])
    ui.say(f"cruijff: {run_dir.name}: out of GPU memory at {at}; retrying with {change} (same effective batch)")


def tried_before(state: RunState) -> list[int]:
    """The micro-batches earlier attempts of the run ran out of GPU memory with, largest first."""
    sizes = {int(r.before["batch_size"]) for r in state.retries if r.kind == "cuda_oom" and "batch_size" in r.before}
    return sorted(sizes, reverse=True)


def free_gpu_memory() -> None:
    """What the failed attempt held goes: its objects (gc) and compiled graphs, then the CUDA cache,
    where CUDA is there."""
    import gc

    import torch

    torch.compiler.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def out_of_memory(cfg: DictConfig, at: str, batch: MicroBatch, tried: list[int], smaller: MicroBatch | None) -> str:
    """The one line of a run that ran out of GPU memory with no retry left."""
    retries = int(cfg.training.get("oom_retries", 2))
    more = [f"training.oom_retries={retries + 1} (micro-batch {smaller.size} next)"] if smaller else []
    return (f"out of GPU memory at {at} with micro-batch {batch.size} "
            f"(tried {', '.join(map(str, sorted(set(tried), reverse=True)))}; "
            f"training.oom_retries={retries}): {memory_hint(cfg, more)}")


def memory_hint(cfg: DictConfig, first: list[str] | None = None) -> str:
    """What may make the run fit in GPU memory, from its model config: activation checkpointing
    where it is off, more GPUs than the model's ``resources.gpus`` hint and the processes it trained
    on, GPUs with more memory, shorter sequences, LoRA instead of full fine-tuning (after ``first``)."""
    nproc = processes(cfg)
    try:
        hinted = int(OmegaConf.select(cfg, "model.resources.gpus", default=1) or 1)
    except Exception:  # a hint that cannot be resolved here
        hinted = 1
    gpus = max(hinted, nproc) * 2
    ways = list(first or [])
    if not cfg.training.get("enable_activation_checkpointing"):
        ways.append("training.enable_activation_checkpointing=true")
    if peft_method(cfg) == "none":
        ways.append("LoRA (peft=lora) instead of full fine-tuning")
    ways.append(f"more GPUs (training.nproc={gpus}"
                + (f", cluster.gpus_per_node={gpus})" if backend(cfg.cluster).queued else ")"))
    ways.append("GPUs with more memory")
    ways.append(f"shorter sequences (model.tokenizer.max_seq_len, {cfg.model.tokenizer.max_seq_len} now)")
    name = cfg.model.get("name") or "the model"
    return (f"{name} is sized for {hinted} GPU{'s' if hinted != 1 else ''} (model.resources.gpus) and trained on "
            f"{nproc}; try {', '.join(ways[:-1])} or {ways[-1]}")


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
