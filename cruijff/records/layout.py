"""Where everything lives in a sweep dir and a run dir: the one place that spells the layout.

    outputs/<experiment>/            a sweep dir (also the parent of a single run's dir)
      sweep.json  run-experiment.log  .lock  summary.csv  summary.md  plots/  .submitit/
      base/<model>[+<template>]-<key>/  a base model's control cell, one per distinct key
      .code/<hash>/                  the project's code as a launch froze it for its jobs (by content)
      <run>/                         a run dir
        .hydra/config.yaml  finetune.yaml  manifest.json  run.json
        finetune.sbatch              scaffold=true on SLURM: the run by hand (sbatch), torchtune alone
        logs/                        loss.jsonl, launch.log, and torchtune's and inspect's own output
                                     (finetune.log, eval.log)
        epoch_<N>/                   a checkpoint: an adapter (PEFT format), or full weights
        epoch_<N>/.complete          written last, atomically: the checkpoint is complete (kind, id)
        eval/epoch_<N>/              its cell: inspect .eval logs + results.json (its key inside)
        eval/cells.json              the cells its checkpoints are expected to have now, and their keys
        eval/.stale/                 stale cells' files, kept aside when they were evaluated again
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

from ..errors import CruijffError
from .io import read_json, write_json

SWEEP_FILE = "sweep.json"
RUN_FILE = "run.json"
CELL_FILE = "results.json"
MANIFEST_FILE = "manifest.json"
ACTION_LOG = "run-experiment.log"
SAVED_CONFIG = Path(".hydra") / "config.yaml"
SUBMITIT_DIR = ".submitit"
CODE_DIR = ".code"


def sweep_file(sweep_dir: Path) -> Path:
    return sweep_dir / SWEEP_FILE


def halving_file(sweep_dir: Path) -> Path:
    """The successive-halving record of a sweep (``early_stop=halving``): rungs, scores, decisions."""
    return sweep_dir / "halving.json"


def action_log(sweep_dir: Path) -> Path:
    return sweep_dir / ACTION_LOG


def lock_file(sweep_dir: Path) -> Path:
    return sweep_dir / ".lock"


def submitit_folder(sweep_dir: Path) -> Path:
    """submitit's files of every job of a sweep (training, eval, detached finish): ``%j`` is the job id."""
    return sweep_dir / SUBMITIT_DIR / "%j"


def code_snapshot(sweep_dir: Path, digest: str) -> Path:
    """The copy of the project's code a launch froze for its jobs, named by the hash of its content."""
    return sweep_dir / CODE_DIR / digest


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


def launch_log(run_dir: Path) -> Path:
    """The launcher's own log lines of a run (Python logging)."""
    return run_dir / "logs" / "launch.log"


def error_file(run_dir: Path) -> Path:
    """The traceback of a fine-tuning that failed (its one line is in ``run.json``)."""
    return run_dir / "logs" / "error.txt"


def rank_error_file(run_dir: Path, rank: int | str) -> Path:
    """A training process's one-line reason for failing, on several GPUs (``*``: a glob of all of them)."""
    return run_dir / "logs" / f"train-error-{rank}.json"


def finetune_config(run_dir: Path) -> Path:
    """The torchtune-native config a run trains with: ``tune run <recipe> --config finetune.yaml``."""
    return run_dir / "finetune.yaml"


def finetune_sbatch(run_dir: Path) -> Path:
    """The scaffold's standalone SLURM script of a run: ``sbatch finetune.sbatch`` runs ``finetune.yaml``."""
    return run_dir / "finetune.sbatch"


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    """The checkpoint of one epoch: ``epoch_<N>``."""
    return run_dir / f"epoch_{epoch}"


def run_table(run_dir: Path, suffix: str) -> Path:
    """A run's results table: ``results.csv`` or ``results.md``."""
    return run_dir / f"results.{suffix}"


def summary(sweep_dir: Path, suffix: str = "md") -> Path:
    """A sweep's report: ``summary.md``, ``summary.csv``; ``seeds.csv``: ``summary_seeds.csv`` (and so
    ``findings.csv``: ``summary_findings.csv``)."""
    return sweep_dir / (f"summary_{suffix}" if suffix.count(".") else f"summary.{suffix}")


def plots_dir(sweep_dir: Path) -> Path:
    return sweep_dir / "plots"


def report_key(sweep_dir: Path) -> Path:
    """The fingerprint of what the sweep's report was made from (a re-run with the same skips it)."""
    return sweep_dir / ".report-key"


def scripts_dir(sweep_dir: Path) -> Path:
    """What ``scaffold=true`` renders beside the run dirs: ``tune_commands.sh``, the sbatch scripts."""
    return sweep_dir / "scripts"


def cell_file(log_dir: Path) -> Path:
    return log_dir / CELL_FILE


def eval_dir(run_dir: Path, checkpoint: str) -> Path:
    """The eval cell of one of a run's checkpoints (``epoch_N``)."""
    return run_dir / "eval" / checkpoint


def eval_plan_file(run_dir: Path) -> Path:
    """The cells a run's checkpoints are expected to have now, with their keys (``eval/cells.json``)."""
    return run_dir / "eval" / "cells.json"


def base_dir(sweep_dir: Path, model: str, template_tag: str | None, key: str) -> Path:
    """A base model's control cell: one per distinct key (model content, tasks, data, settings),
    named for the model and prompt layout it evaluates."""
    return sweep_dir / "base" / (model + ("" if template_tag is None else "+" + template_tag) + "-" + key[:10])


def stale_dir(log_dir: Path, key: str | None) -> Path:
    """Where a stale cell's files are kept aside when it is evaluated again: ``.stale/`` beside it."""
    root = log_dir.parent / ".stale" / f"{log_dir.name}-{(key or 'nokey')[:10]}"
    path, n = root, 1
    while path.exists():
        n += 1
        path = root.with_name(f"{root.name}.{n}")
    return path


def relative(path: Path, sweep_dir: Path) -> str:
    """``path`` relative to the sweep dir where it is inside it (what state files store), else as it is."""
    try:
        return Path(path).resolve().relative_to(Path(sweep_dir).resolve()).as_posix()
    except ValueError:
        return str(path)


def base_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in (sweep_dir / "base").glob("*") if p.is_dir() and not p.name.startswith("."))


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
    adapter), ``full`` (full fine-tuning's weights); None while its files are not all there.
    torchtune writes the weights, then their index, then the adapter and its config. Whether the
    checkpoint is complete is its marker's to say (:func:`completion`), not these files'."""
    shards = any(ckpt.glob("model-*.safetensors"))
    adapter = (ckpt / ADAPTER_WEIGHTS).exists()
    if shards:
        return "merged" if adapter else "full" if (ckpt / WEIGHTS_INDEX).exists() else None
    return "adapter" if adapter and (ckpt / ADAPTER_CONFIG).exists() else None


COMPLETE = ".complete"


def complete_marker(ckpt: Path) -> Path:
    """The file that says a checkpoint dir is complete: ``epoch_N/.complete``, written atomically
    after everything else in it (torchtune's save, then cruijff's tidying). A dir without it is
    incomplete, whatever files it holds: a save cut short, or one still being written."""
    return ckpt / COMPLETE


def adapter_id(ckpt: Path) -> str:
    """The sha256 of an adapter checkpoint's content: its weights and its (tidied) config."""
    digest = hashlib.sha256()
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        digest.update(name.encode() + b"\0")
        with (ckpt / name).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def mark_complete(ckpt: Path, epoch: int) -> dict:
    """Write ``ckpt``'s completion marker, the last write of a checkpoint:
    ``{"version": 1, "epoch", "kind", "checkpoint_id"}``. An adapter's id is the sha256 of its
    files (:func:`adapter_id`); full weights (merged, or full fine-tuning) get a fresh random id,
    so an epoch trained again is a new checkpoint."""
    kind = checkpoint_kind(ckpt)
    if kind is None:
        raise CruijffError(f"{ckpt}: the checkpoint's files are not all there; it cannot be marked complete")
    marker = {"version": 1, "epoch": int(epoch), "kind": kind,
              "checkpoint_id": adapter_id(ckpt) if kind == "adapter" else uuid.uuid4().hex}
    write_json(complete_marker(ckpt), marker)
    return marker


def completion(ckpt: Path) -> dict | None:
    """A checkpoint's completion marker; None when it has none (incomplete). A marker that cannot
    be read, or of an unknown version, is an error naming it."""
    path = complete_marker(ckpt)
    data = read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("version", 1) != 1 or not isinstance(data.get("checkpoint_id"), str):
        raise CruijffError(f"{path}: not a completion marker this cruijff knows (version 1, with a checkpoint_id)")
    return data


def checkpoint_id(ckpt_dir: Path) -> str | None:
    """The id of a complete checkpoint (what an eval cell of it is keyed on); None while it is
    incomplete."""
    marker = completion(ckpt_dir)
    return None if marker is None else marker["checkpoint_id"]


def epoch_dirs(run_dir: Path) -> list[Path]:
    """Every ``epoch_N`` dir of a run, complete or not, in epoch order."""
    found = [d for d in run_dir.glob("epoch_*") if epoch_of(d.name) is not None and d.is_dir()]
    return sorted(found, key=lambda d: epoch_of(d.name))


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete epoch checkpoints of a run (those with a completion marker), in epoch order."""
    return [d for d in epoch_dirs(run_dir) if checkpoint_id(d) is not None]


def is_sweep_dir(path: Path) -> bool:
    return sweep_file(path).exists() or (not (path / ".hydra").exists() and bool(run_dirs(path)))


def is_run_dir(path: Path) -> bool:
    """A run's own dir: it holds a ``run.json`` or a saved config (``.hydra/config.yaml``)."""
    return run_file(path).exists() or saved_config(path).exists()


def held_run(path: Path) -> Path | None:
    """A run (or a sweep's files) inside ``path``, up to three levels down, if any: ``path`` is then
    an experiment's or a sweep's dir (or above one), never a run's own."""
    path = Path(path)
    if sweep_file(path).exists():
        return sweep_file(path)
    if (path / "base").is_dir():
        return path / "base"
    for pattern in (f"*/{RUN_FILE}", f"*/*/{RUN_FILE}", f"*/*/*/{RUN_FILE}"):
        found = next(path.glob(pattern), None)
        if found is not None:
            return found.parent
    return None


def enclosing_run(path: Path, itself: bool = False) -> Path | None:
    """The run dir ``path`` lies inside (``itself``: or is), if any."""
    path = Path(path).absolute()
    for p in ([path] if itself else []) + list(path.parents):
        if is_run_dir(p):
            return p
    return None
