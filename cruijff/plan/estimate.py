"""What a planned run will cost, before anything runs: steps, tokens, hours, GPU-hours, disk.

Throughput comes from a table (below, with its source) scaled by the model's parameter count, or,
when the sweep dir holds finished runs of the same model on the same number of processes, from
their measured time per training sample. Parameter counts come from the model's own torchtune
builder on the ``meta`` device (shapes only, no memory), so LoRA rank and target modules count.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..assets import cache_root
from ..config import checkpoint_mode, data_keys, device_guess, processes, resolve_paths, selected_epochs, task_specs
from ..errors import CruijffError
from ..finetune import model_section, parameter_counts
from ..records import RunState, layout

# LoRA fine-tuning throughput measured by torchtune (README, "Memory and training speed": batch 2,
# packed to 2048 tokens, torch.compile on, over one epoch): (parameters, GPUs, tokens/s, hardware).
THROUGHPUT = [
    (8.03e9, 1, 4699.0, "1x A6000"),   # Llama 3.1 8B LoRA
    (70.6e9, 8, 3497.0, "8x A100"),    # Llama 3.1 70B LoRA
]
SOURCE = ("torchtune README 'Memory and training speed' (Llama 3.1 LoRA: 8B 4699 tok/s on 1x A6000, "
          "70B 3497 tok/s on 8x A100), scaled by parameter count and GPU count")
CHARS_PER_TOKEN = 4.0  # BPE tokenizers on English text; a model config may set model.chars_per_token


@dataclass
class Estimate:
    samples: int            # training examples per epoch (after max_steps_per_epoch)
    steps: int              # optimizer steps per epoch
    tokens: int             # tokens trained, all epochs
    gpus: int
    hours: float | None     # wall-clock hours of the fine-tuning job (None: no basis, e.g. CPU before any run)
    basis: str              # "table", "measured" or "none"
    disk_merged: int        # bytes of all epoch checkpoints with merged weights (training.checkpoint=merged)
    disk_adapter: int       # bytes of all epoch checkpoints as adapters alone (training.checkpoint=adapter)
    cells: int              # eval cells of this run (epochs x tasks)
    checkpoint: str = "adapter"  # what each epoch saves: adapter | merged | full (peft=none)
    gpu_mem: int = 0        # bytes of GPU memory per run before activations: weights, gradients, AdamW state
    limit: str = ""         # its SLURM time limit and where it comes from (plan.timing.apply_measured)

    @property
    def disk(self) -> int:
        """Bytes of the run's checkpoints as this config saves them."""
        return self.disk_adapter if self.checkpoint == "adapter" else self.disk_merged

    @property
    def gpu_hours(self) -> float | None:
        return None if self.hours is None else self.hours * self.gpus


@lru_cache(maxsize=64)
def _params(model_json: str) -> tuple[int, int]:
    """(base, LoRA) parameter counts of a rendered torchtune model section, built on ``meta``;
    kept in the cache dir, so later plans of the same models need not import torchtune."""
    import hashlib

    store = cache_root() / "param-counts" / (hashlib.sha256(model_json.encode()).hexdigest()[:24] + ".json")
    try:
        return tuple(json.loads(store.read_text()))  # type: ignore[return-value]
    except (OSError, ValueError):
        pass
    counts = parameter_counts(json.loads(model_json))
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(store)
    except OSError:
        pass
    return counts


def _dataset(path: str, input_key: str, output_key: str) -> tuple[int, int]:
    """(examples, characters) of a dataset file's train split (read again once the file changes)."""
    st = Path(path).stat()
    return _dataset_counts(path, st.st_mtime_ns, st.st_size, input_key, output_key)


@lru_cache(maxsize=64)
def _dataset_counts(path: str, mtime_ns: int, size: int, input_key: str, output_key: str) -> tuple[int, int]:
    data = json.loads(Path(path).read_text())
    rows = data.get("train", [])
    return len(rows), sum(sum(len(str(m.get("content", ""))) for m in r["messages"]) if "messages" in r
                          else len(str(r.get(input_key, ""))) + len(str(r.get(output_key, ""))) for r in rows)


def _table_tokens_per_s(params: int, gpus: int) -> float:
    ref_params, ref_gpus, tps, _ = THROUGHPUT[0] if gpus <= 1 else THROUGHPUT[1]
    return tps * (ref_params / max(params, 1)) * (max(gpus, 1) / ref_gpus)


def measured(sweep_dir: Path) -> dict[tuple, float]:
    """Seconds per training sample of finished runs in a sweep dir, by (model, processes, device)."""
    out: dict[tuple, list[float]] = {}
    for name in layout.run_dirs(sweep_dir):
        run_dir = sweep_dir / name
        try:
            state = RunState.of(run_dir)
        except CruijffError:
            continue  # an unreadable record measures nothing; planning names it elsewhere
        saved = layout.saved_config(run_dir)
        if state is None or not state.finished or not state.duration_s or not saved.exists():
            continue
        if state.resumed_from:
            continue  # its duration covers only the epochs after the resume
        try:
            cfg = OmegaConf.load(saved)
            if OmegaConf.select(cfg, "training.max_steps_per_epoch"):
                continue  # a few steps (a smoke test): loading and saving would dominate the rate
            n, _ = _dataset_of(cfg)
            nproc = processes(cfg)
            samples = _samples_per_epoch(cfg, n, _per_step(cfg, nproc)) * int(cfg.training.epochs)
            key = (str(cfg.model.name), nproc, str(state.device or ""))
        except Exception:  # a run saved by an older layout: no measurement from it
            continue
        if samples:
            out.setdefault(key, []).append(float(state.duration_s) / samples)
    return {k: sum(v) / len(v) for k, v in out.items()}


def _dataset_of(cfg: DictConfig, data_file: Path | None = None) -> tuple[int, int]:
    if data_file is None:
        _, data_file = resolve_paths(cfg, build=False)
    if not Path(data_file).exists():
        return 0, 0
    return _dataset(str(data_file), *data_keys(cfg))


def _per_step(cfg: DictConfig, nproc: int) -> int:
    """Examples per optimizer step: batch x gradient accumulation x processes."""
    return int(cfg.training.batch_size) * int(cfg.training.gradient_accumulation_steps) * nproc


def _samples_per_epoch(cfg: DictConfig, n: int, per_step: int) -> int:
    """Examples trained per epoch: torchtune drops the last, incomplete batch (drop_last); a train
    split smaller than one step is refused before anything runs (``config.check_steps``)."""
    steps = n // per_step
    if cfg.training.max_steps_per_epoch:
        steps = min(steps, int(cfg.training.max_steps_per_epoch))
    return min(n, steps * per_step)


def estimate(cfg: DictConfig, data_file: Path, rates: dict[tuple, float] | None = None) -> Estimate:

    nproc = processes(cfg)
    device = device_guess(cfg)
    n, chars = _dataset_of(cfg, data_file)
    per_step = _per_step(cfg, nproc)  # read once: the batch size is an interpolation, slow to resolve
    samples = _samples_per_epoch(cfg, n, per_step)
    steps = samples // per_step
    epochs = int(cfg.training.epochs)
    cpt = float(cfg.model.get("chars_per_token") or CHARS_PER_TOKEN)
    tokens = int(chars / cpt * (samples / n) * epochs) if n else 0
    base, lora = _params(json.dumps(model_section(cfg), sort_keys=True))
    gpus = nproc if device.startswith("cuda") else 0
    rate = (rates or {}).get((str(cfg.model.name), nproc, device))
    if rate:
        hours, basis = rate * samples * epochs / 3600, "measured"
    elif gpus and n:
        hours, basis = tokens / _table_tokens_per_s(base, gpus) / 3600, "table"
    else:  # the table is for GPUs; on CPU only measured runs tell (and with no data, nothing does)
        hours, basis = None, "none"
    width = 4 if (cfg.training.dtype == "fp32" or (cfg.training.dtype == "auto" and not device.startswith("cuda"))) else 2
    mode = checkpoint_mode(cfg)
    trained = base if mode == "full" else lora
    # weights, plus gradients and AdamW's two moments of what trains, at the training width
    gpu_mem = base * width + trained * 3 * width
    adapter = lora * width  # adapter_model.safetensors (the torchtune copy a resume needs is kept once)
    if cfg.eval.enabled:
        chosen = len(selected_epochs(cfg.eval.epochs, epochs))
        cells = chosen * len(task_specs(cfg.eval.tasks))
    else:
        cells = 0
    return Estimate(samples=samples, steps=steps, tokens=tokens, gpus=gpus, hours=hours, basis=basis,
                    disk_merged=epochs * (base * width + (0 if mode == "full" else 2 * adapter)),
                    disk_adapter=epochs * adapter, cells=cells, checkpoint=mode, gpu_mem=gpu_mem)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def summary(estimates: list[Estimate | None], base_cells: int) -> list[str]:
    """Totals of the runs still to run, and where the numbers come from."""
    todo = [e for e in estimates if e is not None]
    lines = [
        f"to run: {len(todo)} runs, {sum(e.tokens for e in todo) / 1e6:.2f}M tokens",
        f"time: {_total([e.hours for e in todo])} of jobs, {_total([e.gpu_hours for e in todo], gpu=True)}"
        + (f" ({sum(e.hours is None for e in todo)} runs unknown: no GPU throughput applies to CPU runs "
           "until one finishes here)" if any(e.hours is None for e in todo) else ""),
        disk_line(todo),
        f"GPU memory: {human_bytes(max((e.gpu_mem for e in todo), default=0))} per run before activations "
        "(weights; gradients and AdamW state of what trains)",
        f"eval cells: {sum(e.cells for e in todo) + base_cells} ({base_cells} base)",
    ]
    bases = {e.basis for e in todo}
    if "table" in bases:
        lines.append(f"throughput: {SOURCE}; tokens ~ characters / {CHARS_PER_TOKEN:g} unless model.chars_per_token")
    if "measured" in bases:
        lines.append("throughput (*): measured from this sweep's finished runs (seconds per training sample)")
    lines += [f"time limit: {limit} for {n} run{'s' if n != 1 else ''}" for limit, n in
              sorted(Counter(e.limit for e in todo if e.limit).items())]
    return lines


def disk_line(todo: list[Estimate]) -> str:
    """The checkpoints' disk as they will be saved, and the other mode's for comparison."""
    modes = {e.checkpoint for e in todo}
    total = human_bytes(sum(e.disk for e in todo))
    if modes == {"adapter"}:
        return (f"disk: {total} of checkpoints as saved (adapters alone, training.checkpoint=adapter); "
                f"{human_bytes(sum(e.disk_merged for e in todo))} with training.checkpoint=merged")
    if modes == {"merged"}:
        return (f"disk: {total} of checkpoints as saved (merged weights + adapter per epoch); "
                f"{human_bytes(sum(e.disk_adapter for e in todo))} with training.checkpoint=adapter")
    return f"disk: {total} of checkpoints as saved ({', '.join(sorted(modes))} weights per epoch)"


def duration(hours: float | None) -> str:
    if hours is None:
        return "?"
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    return f"{hours:.1f} h"


def _total(values, gpu: bool = False) -> str:
    known = [v for v in values if v is not None]
    if gpu:
        return f"{sum(known):.2f} GPU-hours"
    return duration(sum(known)) if known else "?"


def as_row(e: Estimate | None) -> list[str]:
    if e is None:
        return ["", "", "", "", "", ""]
    gpu_h = "?" if e.gpu_hours is None else f"{e.gpu_hours:.2f}"
    return [str(e.steps), f"{e.tokens / 1e6:.2f}M", duration(e.hours) + ("*" if e.basis == "measured" else ""),
            gpu_h, human_bytes(e.disk), str(e.cells)]


COLUMNS = ["steps/epoch", "tokens", "hours", "GPU-h", "disk", "eval cells"]

