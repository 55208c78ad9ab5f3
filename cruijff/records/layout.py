"""Where everything lives in a sweep dir and a run dir: the one place that spells the layout.

    outputs/<experiment>/            a sweep dir (also the parent of a single run's dir)
      sweep.json  run-experiment.log  .lock  summary.csv  summary.md  plots/  .submitit/
      base/<model>[+<template>]/     the base model's control cell
      <run>/                         a run dir
        .hydra/config.yaml  finetune.yaml  manifest.json  run.json
        logs/                        loss.jsonl, launch.log, and torchtune's and inspect's own output
                                     (finetune.log, eval.log)
        epoch_<N>/                   a checkpoint: an adapter (PEFT format), or full weights
        eval/epoch_<N>/              its cell: inspect .eval logs + results.json
"""

from __future__ import annotations

from pathlib import Path

SWEEP_FILE = "sweep.json"
RUN_FILE = "run.json"
CELL_FILE = "results.json"
MANIFEST_FILE = "manifest.json"
ACTION_LOG = "run-experiment.log"
SAVED_CONFIG = Path(".hydra") / "config.yaml"
SUBMITIT_DIR = ".submitit"


def sweep_file(sweep_dir: Path) -> Path:
    return sweep_dir / SWEEP_FILE


def action_log(sweep_dir: Path) -> Path:
    return sweep_dir / ACTION_LOG


def lock_file(sweep_dir: Path) -> Path:
    return sweep_dir / ".lock"


def submitit_folder(sweep_dir: Path) -> Path:
    """submitit's files of every job of a sweep (training, eval, detached finish): ``%j`` is the job id."""
    return sweep_dir / SUBMITIT_DIR / "%j"


def run_file(run_dir: Path) -> Path:
    return run_dir / RUN_FILE


def saved_config(run_dir: Path) -> Path:
    return run_dir / SAVED_CONFIG


def saved_overrides(run_dir: Path) -> Path:
    """The run's own command-line overrides (a YAML list), beside its saved config."""
    return run_dir / SAVED_CONFIG.parent / "overrides.yaml"


def loss_file(run_dir: Path) -> Path:
    return run_dir / "logs" / "loss.jsonl"


def finetune_log(run_dir: Path) -> Path:
    """torchtune's own output while the run fine-tunes (its config, progress bars, warnings)."""
    return run_dir / "logs" / "finetune.log"


def eval_log(run_dir: Path) -> Path:
    """inspect's and transformers' own output while the run's cells are evaluated."""
    return run_dir / "logs" / "eval.log"


def cell_file(log_dir: Path) -> Path:
    return log_dir / CELL_FILE


def eval_dir(run_dir: Path, checkpoint: str) -> Path:
    """The eval cell of one of a run's checkpoints (``epoch_N``)."""
    return run_dir / "eval" / checkpoint


def base_dir(sweep_dir: Path, model: str, template_tag: str | None) -> Path:
    """The base model's control cell: one per model and prompt layout in a sweep."""
    return sweep_dir / "base" / (model + ("" if template_tag is None else "+" + template_tag))


def base_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in (sweep_dir / "base").glob("*") if p.is_dir())


def run_dirs(sweep_dir: Path) -> list[str]:
    """Names of the run dirs holding a ``run.json``, sorted."""
    return sorted(p.parent.name for p in sweep_dir.glob(f"*/{RUN_FILE}"))


def cell_files(sweep_dir: Path) -> list[Path]:
    """Every cell summary of a sweep: the runs' and the base controls'."""
    return sorted(sweep_dir.glob(f"*/eval/*/{CELL_FILE}")) + sorted(sweep_dir.glob(f"base/*/{CELL_FILE}"))


def epoch_of(checkpoint: str) -> int | None:
    """``epoch_3`` -> 3; anything else -> None."""
    head, _, n = checkpoint.partition("_")
    return int(n) if head == "epoch" and n.isdigit() else None


ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
WEIGHTS_INDEX = "model.safetensors.index.json"


def checkpoint_kind(ckpt: Path) -> str | None:
    """What an epoch dir holds, once its files are all written: ``adapter`` (a LoRA adapter alone,
    applied to the base to use it), ``merged`` (full weights with the adapter merged in, and the
    adapter), ``full`` (full fine-tuning's weights); None while it is incomplete. torchtune writes
    the weights, then their index, then the adapter and its config."""
    shards = any(ckpt.glob("model-*.safetensors"))
    adapter = (ckpt / ADAPTER_WEIGHTS).exists()
    if shards:
        return "merged" if adapter else "full" if (ckpt / WEIGHTS_INDEX).exists() else None
    return "adapter" if adapter and (ckpt / ADAPTER_CONFIG).exists() else None


def checkpoints(run_dir: Path) -> list[Path]:
    """Finished epoch checkpoints of a run, in epoch order (a dir counts once its files are there)."""
    found = [d for d in run_dir.glob("epoch_*") if epoch_of(d.name) is not None and checkpoint_kind(d)]
    return sorted(found, key=lambda d: epoch_of(d.name))


def is_sweep_dir(path: Path) -> bool:
    return sweep_file(path).exists() or (not (path / ".hydra").exists() and bool(run_dirs(path)))
