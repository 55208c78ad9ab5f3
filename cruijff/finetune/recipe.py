"""Running torchtune's stock recipes on a rendered ``finetune.yaml``.

The recipe is torchtune's own (no forked copy), loaded from the installed ``recipes/`` folder:
``lora_finetune_single_device`` (``full_finetune_single_device`` with ``peft=none``) for a run on
one device, run in this process so the launcher adds no second Python start-up; the ``_distributed``
ones for a run on several GPUs, started through torchrun with one process per GPU
(``distributed.py``).

An adapter-only run (``save_adapter_weights_only``) keeps in each epoch dir what PEFT and vLLM load
(``adapter_model.safetensors``, a complete ``adapter_config.json``) and the tokenizer files; the
torchtune-format copy of the adapter that a resume needs is moved to ``recipe_state/`` once the
epoch is complete (and dropped after the last epoch), so no epoch holds the adapter twice.

Each epoch dir is marked complete (``epoch_N/.complete``, see :mod:`cruijff.records.layout`) as
the last write of its save, after torchtune's files and cruijff's tidying, by the process that
writes it (rank 0 of a distributed run).

Two fixes are applied at run time. On CPU, torchtune 0.6.1 merges the LoRA delta *in place* into
the live base weights at each epoch save (``.cpu()`` returns the same tensor there), so ``epoch_1``
would hold base + Δ0 + Δ1: we clone the weights to be merged first; on GPU nothing changes. And
a resumed run continues the uninterrupted run's step count and learning-rate schedule
(:func:`continue_schedule`): torchtune 0.6.1's single-device LoRA recipe restores its step count
only when ``max_steps_per_epoch`` cuts epochs short, so otherwise it counted steps from 1 again
and warmed the learning rate up again.

An out-of-memory error of the GPU (``torch.OutOfMemoryError``) is raised as
:class:`OutOfGPUMemory`, saying where it struck: ``setup``, or ``epoch E step S`` (``S`` counted as
in ``logs/loss.jsonl``); the fine-tuning stage then retries the run with a smaller micro-batch.

Test-only hooks, set in the environment of the process that fine-tunes (unset, they do nothing):

- ``CRUIJFF_TEST_CRASH=<moment>:<epoch>``: SIGKILL at a point of an epoch's save (:func:`_crash_for_test`).
- ``CRUIJFF_TEST_STEP_DELAY_S=<seconds>``: each logged step takes that much longer (:func:`_delay_for_test`).
- ``CRUIJFF_TEST_OOM=<where>:<micro-batch>``: raise a real ``torch.OutOfMemoryError`` where a GPU
  would run out of memory, while the run's micro-batch (torchtune's ``batch_size``) is at least
  that size: ``setup`` (once the model is built) or ``<epoch>:<step>`` (that step's forward pass).
  ``0:3:2`` makes micro-batches of 2 and more fail at epoch 0 step 3, and 1 pass (:func:`_oom_for_test`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Callable

from omegaconf import OmegaConf

from ..records import layout, write_json
from .render import RECIPE, RESUME_ADAPTER, recipe_class, recipe_name


def recipe_path(name: str = RECIPE) -> Path:
    spec = importlib.util.find_spec("torchtune")
    assert spec and spec.origin
    path = Path(spec.origin).parent.parent / "recipes" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"torchtune recipe {name} not found at {path}")
    return path


def _load_recipe_module(name: str = RECIPE):
    spec = importlib.util.spec_from_file_location(f"cruijff_torchtune_{name}", recipe_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clone_before_merge(merge: Callable) -> Callable:
    """Wrap ``get_merged_lora_ckpt`` so it never writes into the live model's weights."""

    def merged(state_dict: dict, rank: int, alpha: float):
        for key in [k for k in state_dict if k.endswith(".lora_a.weight")]:
            base = key[: -len(".lora_a.weight")] + ".weight"
            if base in state_dict:
                state_dict[base] = state_dict[base].clone()
        return merge(state_dict, rank=rank, alpha=alpha)

    return merged


def tidy_adapter_epoch(output_dir: Path, epoch: int, base_dir: str, dropout: float) -> None:
    """After torchtune saved ``epoch_<epoch>`` adapter-only: its ``adapter_config.json`` names what
    PEFT and vLLM need to load it on the base (``base_model_name_or_path``, ``task_type``)."""
    config = layout.epoch_dir(output_dir, epoch) / layout.ADAPTER_CONFIG
    if config.exists():
        peft = json.loads(config.read_text())
        peft.update(base_model_name_or_path=base_dir, task_type="CAUSAL_LM", peft_type="LORA",
                    lora_dropout=dropout, bias="none", fan_in_fan_out=False, inference_mode=True)
        write_json(config, peft)


def unpermute_qwen2_adapter(epoch_dir: Path, checkpoint_dir: str) -> None:
    """torchtune 0.6.1 writes every PEFT adapter with the q/k ``lora_B`` rows permuted as Llama's
    Hugging Face conversion permutes q/k, but its Qwen2 conversion permutes nothing (Qwen2's RoPE is
    Hugging Face's): for a Qwen2 model the rows are put back, so the adapter applies to the base as
    it was trained (PEFT, vLLM, ``cruijff export``, the evaluator's in-memory swap)."""
    path = epoch_dir / layout.ADAPTER_WEIGHTS
    if not path.exists():
        return
    from safetensors.torch import load_file, save_file

    hf = json.loads((Path(checkpoint_dir) / "config.json").read_text())
    heads, kv = int(hf["num_attention_heads"]), int(hf["num_key_value_heads"])
    head_dim = int(hf.get("head_dim") or int(hf["hidden_size"]) // heads)
    weights = load_file(path)
    for key, value in weights.items():
        n = heads if ".q_proj.lora_B" in key else kv if ".k_proj.lora_B" in key else None
        if n is not None:  # the inverse of view(n, head_dim // 2, 2, r).transpose(1, 2)
            rank = value.shape[-1]
            weights[key] = value.view(n, 2, head_dim // 2, rank).transpose(1, 2).reshape(n * head_dim, rank).contiguous()
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    save_file(weights, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)  # whole or not at all (the epoch is marked complete after this)


def fix_gemma2(recipe, cfg) -> None:
    """Before ``recipe.setup``, for a Gemma 2 run: torchtune 0.6.1's Gemma 2 is not Hugging Face's.
    Its conversion loads ``pre_feedforward_layernorm`` into the norm after the MLP and
    ``post_feedforward_layernorm`` into the one before it (torchtune issue #2850, fixed after 0.6.1):
    the mapping is put right, for loading and saving alike. And it soft-caps the final norm's output
    instead of the logits: once the recipe has built the model, the cap is moved onto the logits."""
    if cfg.checkpointer.get("model_type") != "GEMMA2":
        return
    import torch
    from torchtune.models.gemma2 import _convert_weights
    from torchtune.modules import TiedLinear

    _convert_weights._GEMMA2_FROM_HF.update({
        "model.layers.{}.pre_feedforward_layernorm.weight": "layers.{}.mlp_norm.scale",
        "model.layers.{}.post_feedforward_layernorm.weight": "layers.{}.mlp_scale.scale",
    })

    class SoftCappedOutput(TiedLinear):  # still a TiedLinear, for activation offloading's hooks
        def __call__(self, x):
            return self.capping_value * torch.tanh(super().__call__(x) / self.capping_value)

    setup_model = recipe._setup_model

    def setup_gemma2(*args, **kwargs):
        model = setup_model(*args, **kwargs)
        cap = model.norm.capping_value
        model.norm.logit_capping = torch.nn.Identity()
        model.output.__class__ = SoftCappedOutput
        model.output.capping_value = cap
        return model

    recipe._setup_model = setup_gemma2


def keep_resume_adapter(output_dir: Path, epoch: int, last: bool) -> None:
    """Once ``epoch_<epoch>`` of an adapter-only run is marked complete: its torchtune-format
    adapter (``adapter_model.pt``) becomes the resume point in ``recipe_state/`` (after the last
    epoch it goes). Until then a crash resumes after the epoch before, with that epoch's adapter."""
    pt = layout.epoch_dir(output_dir, epoch) / "adapter_model.pt"
    if last:
        pt.unlink(missing_ok=True)
    elif pt.exists():
        target = output_dir / RESUME_ADAPTER
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(pt, target)


RECIPE_STATE = "recipe_state/recipe_state.pt"  # torchtune's: optimizer, data order, epochs run
PREVIOUS_RECIPE_STATE = "recipe_state/recipe_state.previous.pt"  # the one before the save under way
CRASH_ENV = "CRUIJFF_TEST_CRASH"
STEP_DELAY_ENV = "CRUIJFF_TEST_STEP_DELAY_S"
OOM_ENV = "CRUIJFF_TEST_OOM"


def _delay_for_test() -> None:
    """For tests only: ``CRUIJFF_TEST_STEP_DELAY_S=<seconds>`` makes each logged step take that much
    longer, so a test of a time limit runs as long on any machine. Unset, it does nothing."""
    delay = os.environ.get(STEP_DELAY_ENV)
    if delay:
        time.sleep(float(delay))


def _crash_for_test(moment: str, epoch: int) -> None:
    """For tests only: ``CRUIJFF_TEST_CRASH=<moment>:<epoch>`` SIGKILLs this process at that point
    of epoch ``epoch``'s save, as a node failure or the OOM killer would: ``before-marker`` (the
    files are written, the completion marker is not) or ``after-marker``. Unset, it does nothing."""
    if os.environ.get(CRASH_ENV) == f"{moment}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def _oom_for_test(where: str, batch_size: int) -> None:
    """For tests only (no GPU here): ``CRUIJFF_TEST_OOM=<where>:<micro-batch>`` raises a real
    ``torch.OutOfMemoryError`` at ``where`` (``setup``, or ``<epoch>:<step>``) while the run's
    micro-batch is at least that size. Unset, it does nothing."""
    spec = os.environ.get(OOM_ENV)
    if not spec:
        return
    place, _, smallest = spec.rpartition(":")
    if place == where and batch_size >= int(smallest):
        import torch

        raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({OOM_ENV}={spec}, "
                                     f"micro-batch {batch_size}).")


class OutOfGPUMemory(RuntimeError):
    """The GPU ran out of memory (``torch.OutOfMemoryError``) at ``at``: ``setup`` or ``epoch E
    step S``; ``detail`` is torch's message in one line."""

    def __init__(self, at: str, detail: str):
        super().__init__(f"at {at}: {detail}")
        self.at, self.detail = at, detail

    @classmethod
    def from_message(cls, message: str, fallback: str) -> "OutOfGPUMemory":
        """From a rank's report (``at <where>: <detail>``, or torch's own message, then at ``fallback``)."""
        at, sep, detail = message.partition(": ")
        if sep and at.startswith("at "):
            return cls(at[3:], detail)
        return cls(fallback, one_line(message))


def one_line(message: object, limit: int = 160) -> str:
    """torch's out-of-memory message, shortened to its first line and two sentences ("CUDA out of
    memory. Tried to allocate 2.00 GiB.")."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "out of memory"
    text = ". ".join(first.split(". ")[:2])
    text = text if text.endswith(".") else text + "."
    return text if len(text) <= limit else text[:limit - 1] + "…"


CONFIG_MICRO_BATCH = "config_micro_batch"  # finetune.yaml's record of the run's own batch, when it trains with less


def epochs_as_configured(recipe, cfg) -> None:
    """Before ``recipe.setup``, for a run retried with a smaller micro-batch than its config's
    (``config_micro_batch`` in ``finetune.yaml``: out of GPU memory): each epoch ends where the
    config's would. torchtune drops an epoch's last partial micro-batch, so a smaller one would
    train examples the config's never does, and carry their gradient into the next epoch's first
    step: the epoch is cut at the config's optimizer steps (``max_steps_per_epoch``), which train
    exactly the config's examples, in the same order."""
    configured = cfg.get(CONFIG_MICRO_BATCH)
    if not configured:
        return
    size, accumulation = int(configured["batch_size"]), int(configured["gradient_accumulation_steps"])
    setup_data = recipe._setup_data

    def setup_data_as_configured(*args, **kwargs):
        loader = setup_data(*args, **kwargs)
        steps = len(loader.sampler) // size // accumulation  # the config's: its loader drops a partial batch too
        if recipe.max_steps_per_epoch is None or steps < recipe.max_steps_per_epoch:
            recipe.max_steps_per_epoch = steps
        return loader

    recipe._setup_data = setup_data_as_configured


class MemoryWatch:
    """Where a recipe is, for an out-of-memory error's record: ``setup`` until its first forward
    pass, then the step each forward pass belongs to. The test hook ``CRUIJFF_TEST_OOM`` fires
    there: once the model is built, or in a step's forward pass."""

    def __init__(self, recipe, cfg):
        self.recipe, self.batch_size, self.at = recipe, int(cfg.batch_size), "setup"
        setup_model = recipe._setup_model

        def setup_model_watched(*args, **kwargs):
            model = setup_model(*args, **kwargs)
            _oom_for_test("setup", self.batch_size)
            return model

        recipe._setup_model = setup_model_watched

    def training(self) -> None:
        """After ``recipe.setup``: each forward pass of the model marks the step it is part of."""
        self.recipe._model.register_forward_pre_hook(self._forward)

    def _forward(self, module, args) -> None:
        epoch, step = int(self.recipe.epochs_run), int(self.recipe.global_step) + 1
        self.at = f"epoch {epoch} step {step}"
        _oom_for_test(f"{epoch}:{step}", self.batch_size)

    @contextlib.contextmanager
    def reported(self):
        """Raise a ``torch.OutOfMemoryError`` inside as :class:`OutOfGPUMemory` with where it struck."""
        import torch

        try:
            yield
        except torch.OutOfMemoryError as e:
            raise OutOfGPUMemory(self.at, one_line(e)) from e


def watch_saves(recipe, cfg) -> None:
    """After the recipe saves an epoch, on the process that writes it: tidy an adapter-only epoch,
    then mark the epoch dir complete (its last write). Before it saves, torchtune's recipe state
    of the epoch before is set aside, so a save cut short still resumes after that epoch.

    The LoRA recipes and the single-device full one save through ``recipe.save_checkpoint(epoch)``;
    ``full_finetune_distributed`` through its checkpoint client, after counting the epoch run."""
    output_dir = Path(cfg.output_dir)
    adapter_only = bool(cfg.get("save_adapter_weights_only", False))

    def before_save() -> None:
        if getattr(recipe, "_is_rank_zero", True) and (output_dir / RECIPE_STATE).exists():
            os.replace(output_dir / RECIPE_STATE, output_dir / PREVIOUS_RECIPE_STATE)

    def after_save(epoch: int) -> None:
        if not getattr(recipe, "_is_rank_zero", True):
            return
        if cfg.checkpointer.get("model_type") == "QWEN2":
            unpermute_qwen2_adapter(layout.epoch_dir(output_dir, epoch), str(cfg.checkpointer.checkpoint_dir))
        if adapter_only:
            tidy_adapter_epoch(output_dir, epoch, str(cfg.checkpointer.checkpoint_dir),
                               float(cfg.model.get("lora_dropout", 0.0)))
        _crash_for_test("before-marker", epoch)
        layout.mark_complete(layout.epoch_dir(output_dir, epoch), epoch)
        last = epoch + 1 >= recipe.total_epochs
        if adapter_only:
            keep_resume_adapter(output_dir, epoch, last)
        if last:  # nothing resumes after the last epoch: torchtune's state for it goes (kept until now)
            for name in (RESUME_ADAPTER, RECIPE_STATE, PREVIOUS_RECIPE_STATE):
                (output_dir / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the dir, when nothing else is in it
                (output_dir / RECIPE_STATE).parent.rmdir()
        _crash_for_test("after-marker", epoch)

    def saved_all(epoch: int) -> None:
        after_save(epoch)
        stop_at_rung(recipe, cfg, epoch)

    client = getattr(recipe, "_checkpoint_client", None)
    if client is not None:
        client_save = client.save_checkpoint

        def client_saved(*args, **kwargs):
            before_save()
            client_save(*args, **kwargs)
            saved_all(int(recipe.epochs_run) - 1)

        client.save_checkpoint = client_saved
    else:
        save = recipe.save_checkpoint

        def saved(epoch: int, *args, **kwargs):
            before_save()
            save(epoch, *args, **kwargs)
            saved_all(epoch)

        recipe.save_checkpoint = saved


STOP_AFTER_EPOCHS = "stop_after_epochs"  # finetune.yaml: the epochs a run of a halving sweep may train now


class ReachedRung(Exception):
    """A run of a successive-halving sweep trained the epochs it may train now (``stop_after_epochs``
    in ``finetune.yaml``) and saved the last of them, with torchtune's recipe state to resume from."""

    def __init__(self, epochs: int):
        super().__init__(f"trained {epochs} epochs, its rung")
        self.epochs = epochs


def stop_at_rung(recipe, cfg, epoch: int) -> None:
    """After epoch ``epoch``'s save (complete on disk) on every process: training stops there when
    the run may train no further now. The learning-rate schedule stays the full run's: a run that
    goes on resumes after this epoch as if it had never stopped. On several processes they all
    wait for rank 0's completion marker first."""
    stop = cfg.get(STOP_AFTER_EPOCHS)
    if stop is None or epoch + 1 < int(stop) or epoch + 1 >= int(recipe.total_epochs):
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    raise ReachedRung(epoch + 1)


def continue_schedule(recipe, cfg) -> None:
    """After ``recipe.setup``: a resumed run goes on at the uninterrupted run's step count and
    learning rate.

    torchtune restores the epochs run, the optimizer and the data order, but its single-device
    LoRA recipe (0.6.1) sets ``global_step = epochs_run * steps_per_epoch`` only when
    ``max_steps_per_epoch`` cuts epochs short, and builds the scheduler at ``global_step - 1``.
    The scheduler's own state is not saved: it is rebuilt here at the right step, through the
    recipe's own ``_setup_lr_scheduler``, as the other recipes do in their ``setup``."""
    expected = int(recipe.epochs_run) * int(recipe._steps_per_epoch)
    if not cfg.get("resume_from_checkpoint", False) or recipe.global_step == expected:
        return
    recipe.global_step = expected
    if getattr(recipe, "_lr_scheduler", None) is not None:
        recipe._lr_scheduler = recipe._setup_lr_scheduler(
            cfg_lr_scheduler=cfg.get("lr_scheduler", None),
            num_training_steps=int(recipe.total_epochs) * int(recipe._steps_per_epoch),
            last_epoch=expected - 1,
        )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops at once instead of burning the time limit."""


class _LossTap:
    """Forwards to torchtune's metric logger and keeps (epoch, step, loss, lr) for run.json."""

    def __init__(self, inner, recipe, on_step: Callable[[dict], None] | None):
        self._inner, self._recipe, self._on_step = inner, recipe, on_step
        self.rows: list[dict] = []

    def log_dict(self, payload, step):
        _delay_for_test()
        if "loss" in payload:
            row = {
                "epoch": int(self._recipe.epochs_run),
                "step": int(step),
                "loss": float(payload["loss"]),
                "lr": float(payload.get("lr", 0.0)),
            }
            self.rows.append(row)
            if self._on_step:
                self._on_step(row)
            if not math.isfinite(row["loss"]):
                self._inner.log_dict(payload, step)
                raise TrainingDiverged(
                    f"loss became {row['loss']} at epoch {row['epoch']} step {row['step']} "
                    f"(lr {row['lr']:g}); lower optimizer.lr or set training.clip_grad_norm"
                )
        return self._inner.log_dict(payload, step)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def run(finetune_yaml: Path, on_step: Callable[[dict], None] | None = None, method: str = "lora",
        on_start: Callable[[int, int, int], None] | None = None) -> None:
    """Run the stock single-device recipe (LoRA, or full with ``method="none"``) on
    ``finetune.yaml`` in this process; each logged step goes to ``on_step``, and ``on_start`` is
    told (epochs, steps per epoch, epochs already run) when training begins. The GPU running out
    of memory raises :class:`OutOfGPUMemory`."""
    from torchtune import config as tt_config

    cfg = OmegaConf.load(finetune_yaml)
    module = _load_recipe_module(recipe_name(1, method))
    tt_config.log_config(recipe_name=recipe_name(1, method), cfg=cfg)
    recipe = getattr(module, recipe_class(1, method))(cfg=cfg)
    if recipe._device.type == "cpu" and hasattr(module, "get_merged_lora_ckpt"):
        module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
    watch_saves(recipe, cfg)
    fix_gemma2(recipe, cfg)
    epochs_as_configured(recipe, cfg)
    memory = MemoryWatch(recipe, cfg)
    with memory.reported():
        recipe.setup(cfg=cfg)
        continue_schedule(recipe, cfg)
        tap = _LossTap(recipe._metric_logger, recipe, on_step)
        recipe._metric_logger = tap
        if on_start:
            on_start(int(recipe.total_epochs), int(recipe._steps_per_epoch), int(recipe.epochs_run))
        memory.training()
        try:
            recipe.train()
        except ReachedRung:  # saved the epoch it may train up to: a clean end
            pass
        finally:
            recipe.cleanup()
