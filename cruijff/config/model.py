"""What a config asks of the machine and the model dir: files, processes, GPUs, local paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .. import assets, hardware
from ..cluster import backend, backends
from ..errors import ConfigError

TOKENIZER_FILES = ("path", "merges_file", "special_tokens_path", "vocab_path", "merges_path")


def model_files(model: DictConfig) -> list[str]:
    """The files a model config names in its directory: checkpoint shards and tokenizer files."""
    tok = model.tokenizer
    return list(model.checkpoint_files) + [str(tok[k]) for k in TOKENIZER_FILES if tok.get(k)]


PEFT_METHODS = ("lora", "none")
CHECKPOINT_MODES = ("adapter", "merged")


def peft_method(cfg: DictConfig) -> str:
    """``peft.method``: ``lora`` (adapters on a frozen base) or ``none`` (full fine-tuning)."""
    return str(cfg.peft.get("method", "lora"))


def checkpoint_mode(cfg: DictConfig) -> str:
    """What each epoch saves: ``adapter`` (the LoRA adapter in PEFT format, no weights), ``merged``
    (full weights with the adapter merged in, and the adapter), or ``full`` (full fine-tuning's
    weights, whatever ``training.checkpoint`` says)."""
    if peft_method(cfg) == "none":
        return "full"
    return str(cfg.training.get("checkpoint", "adapter"))


def lora_on_output(cfg: DictConfig) -> bool:
    """``peft.apply_lora_to_output``; ``auto`` is true unless the model ties its output layer to
    the input embeddings (Llama 3.2 1B/3B, Qwen2.5 3B), where torchtune has no output layer to adapt."""
    value = cfg.peft.get("apply_lora_to_output", "auto")
    if value == "auto":
        return not cfg.model.get("tied_embeddings", False)
    return bool(value)


def processes(cfg: DictConfig) -> int:
    """Training processes of one run: ``training.nproc``, or with ``auto`` the GPUs one run gets
    (``cluster.gpus_per_node`` on SLURM, whatever machine the plan is made on, so a login node renders
    what the GPU node runs; locally the model's ``resources.gpus`` hint, at most this machine's GPUs),
    or 1 with ``training.device=cpu``. More than one runs torchtune's distributed recipe (FSDP)."""
    n = cfg.training.get("nproc", "auto")
    if n != "auto":
        return int(n)
    if cfg.training.device == "cpu":
        return 1
    if not backend(cfg.cluster).on_this_machine:
        return max(1, int(cfg.cluster.get("gpus_per_node") or 1))
    # this machine runs the job: no more processes than it has GPUs (one on a CPU-only machine)
    return max(1, min(int(cfg.model.get("resources", {}).get("gpus", 1)), hardware.gpu_count()))


def effective_batch(cfg: DictConfig) -> int:
    """Examples per optimizer step: batch x gradient accumulation x processes."""
    return int(cfg.training.batch_size) * int(cfg.training.gradient_accumulation_steps) * processes(cfg)


def run_gpus(cfg: DictConfig) -> int:
    """GPUs one local job of this config uses."""
    return hardware.gpus_per_run(cfg.training.get("nproc", "auto"),
                                 OmegaConf.select(cfg, "model.resources.gpus", default=1))


def local_jobs(cfg: DictConfig) -> int:
    """Jobs of this config that run at once on this machine."""
    return hardware.local_parallel(cfg.cluster.max_parallel, run_gpus(cfg))


def prepare_job(cfg: DictConfig, slot: int | None) -> None:
    """A job's share of this machine: its own GPUs (a local job in ``slot`` of a batch on a
    multi-GPU machine) and its CPU threads."""
    local = backend(cfg.cluster).on_this_machine
    if slot is not None and local and cfg.training.device != "cpu":
        hardware.pin_gpus(slot, run_gpus(cfg))
    hardware.limit_threads(local_jobs(cfg) if local else 1)


def device_guess(cfg: DictConfig) -> str:
    """The device a job will train on: a GPU where the cluster gives one, whatever this machine has."""
    if cfg.training.device != "auto":
        return str(cfg.training.device)
    if not backend(cfg.cluster).on_this_machine:
        return "cuda" if int(cfg.cluster.get("gpus_per_node") or 0) > 0 else "cpu"
    return "cuda" if hardware.gpu_count() > 0 else "cpu"  # without starting torch


def resolve_paths(cfg: DictConfig, build: bool = True) -> tuple[Path, Path]:
    """The model dir and dataset file of a config (building the embedded ones on first use; the
    dataset as the stages read it: :func:`cruijff.config.data.dataset_file`)."""
    if cfg.model.path is None:
        if cfg.model.name != "tiny_llama":
            raise ConfigError("model.path", None, f"model {cfg.model.name} needs model.path=<local model directory>")
        model_dir = assets.tiny_model_dir(build)
    else:
        model_dir = Path(cfg.model.path).resolve()
    if cfg.dataset.path is None:
        if cfg.dataset.name != "capitalization":
            raise ConfigError("dataset.path", None, f"dataset {cfg.dataset.name} needs dataset.path=<file or directory>")
        data_file = assets.capitalization_file(build)
    else:
        from .data import dataset_file

        data_file = dataset_file(cfg)
    return model_dir, data_file


def sweep_batch(executor: str, max_parallel: Any, nproc: Any = "auto", gpus: Any = 1) -> int | None:
    """Grid points handed to the launcher at once: local, the jobs that may run together; on
    SLURM, all of them (one array, throttled by the scheduler)."""
    here = getattr(backends().get(str(executor)), "on_this_machine", False)
    return hardware.local_parallel(max_parallel, hardware.gpus_per_run(nproc, gpus)) if here else None
