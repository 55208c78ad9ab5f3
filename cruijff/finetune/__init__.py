"""torchtune backend: render a torchtune-native ``finetune.yaml`` and run the stock recipe.

The recipe is torchtune's own (no forked copy), loaded from the installed ``recipes/`` folder:
``lora_finetune_single_device`` for a run on one device, run in this process so the launcher adds no
second Python start-up; ``lora_finetune_distributed`` for a run on several GPUs, started through
torchrun with one process per GPU (``distributed.py``). The header of ``finetune.yaml`` shows the
``tune run`` command that runs the very same thing.

One fix is applied at run time: on CPU, torchtune 0.6.1 merges the LoRA delta *in place* into the
live base weights at each epoch save (``.cpu()`` returns the same tensor there), so ``epoch_1``
would hold base + Δ0 + Δ1. We clone the weights to be merged first; on GPU nothing changes.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any, Callable

import yaml
from omegaconf import DictConfig, OmegaConf

from ..config import resolve_device, resolve_dtype

RECIPE = "lora_finetune_single_device"
DISTRIBUTED = "lora_finetune_distributed"

HEADER = """\
# torchtune config rendered by cruijff for run {name!r}.
#
# Reproduce this run with torchtune alone:
#   {command}
#
# Override any key on the command line, e.g. to write elsewhere:
#   {command} output_dir=/tmp/rerun
"""


def processes(cfg: DictConfig) -> int:
    """Training processes of one run: ``training.nproc``, or with ``auto`` the GPUs one run gets
    (``cluster.gpus_per_node`` on SLURM, whatever machine the plan is made on, so a login node renders
    what the GPU node runs; locally the model's ``resources.gpus`` hint, at most this machine's GPUs),
    or 1 with ``training.device=cpu``. More than one runs torchtune's distributed LoRA recipe (FSDP)."""
    n = cfg.training.get("nproc", "auto")
    if n != "auto":
        return int(n)
    if cfg.training.device == "cpu":
        return 1
    if cfg.cluster.executor == "slurm":
        return max(1, int(cfg.cluster.get("gpus_per_node") or 1))
    # this machine runs the job: no more processes than it has GPUs (one on a CPU-only machine)
    from ..sweep import gpu_count

    return max(1, min(int(cfg.model.get("resources", {}).get("gpus", 1)), gpu_count()))


def recipe_name(nproc: int) -> str:
    return DISTRIBUTED if nproc > 1 else RECIPE


def tune_command(nproc: int, config: Path | str) -> str:
    """The stock torchtune command that runs ``config`` like cruijff does."""
    if nproc > 1:
        return f"tune run --nproc_per_node {nproc} {DISTRIBUTED} --config {config}"
    return f"tune run {RECIPE} --config {config}"

SECTIONS = [
    ("output_dir", None),
    ("model", "# Model Arguments"),
    ("tokenizer", "# Tokenizer"),
    ("checkpointer", "# Checkpointer"),
    ("resume_from_checkpoint", None),
    ("save_adapter_weights_only", None),
    ("dataset", "# Dataset and Sampler"),
    ("seed", None),
    ("shuffle", None),
    ("batch_size", None),
    ("optimizer", "# Optimizer and Scheduler"),
    ("lr_scheduler", None),
    ("loss", None),
    ("epochs", "# Training"),
    ("max_steps_per_epoch", None),
    ("gradient_accumulation_steps", None),
    ("clip_grad_norm", None),
    ("compile", None),
    ("metric_logger", "# Logging"),
    ("log_every_n_steps", None),
    ("log_peak_memory_stats", None),
    ("device", "# Environment"),
    ("dtype", None),
    ("enable_activation_checkpointing", "# Activations Memory"),
    ("enable_activation_offloading", None),
    ("profiler", "# Profiler (disabled)"),
]


TOKENIZER_FILES = ("path", "merges_file", "special_tokens_path")


def lora_on_output(cfg: DictConfig) -> bool:
    """``peft.apply_lora_to_output``; ``auto`` is true unless the model ties its output layer to
    the input embeddings (Llama 3.2 1B/3B, Qwen2.5 3B), where torchtune has no output layer to adapt."""
    value = cfg.peft.get("apply_lora_to_output", "auto")
    if value == "auto":
        return not cfg.model.get("tied_embeddings", False)
    return bool(value)


def model_files(model: DictConfig) -> list[str]:
    """The files a model config names in its directory: checkpoint shards and tokenizer files."""
    tok = model.tokenizer
    return list(model.checkpoint_files) + [str(tok[k]) for k in TOKENIZER_FILES if tok.get(k)]


LOGGERS = {
    "disk": "torchtune.training.metric_logging.DiskLogger",
    "wandb": "torchtune.training.metric_logging.WandBLogger",
    "mlflow": "torchtune.training.metric_logging.MLFlowLogger",
}


def metric_logger(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """torchtune's logger for ``training.metric_logger``; the recipe logs to it on rank 0."""
    kind = str(cfg.training.get("metric_logger", "disk"))
    tracking = cfg.training.get("tracking") or {}
    project = str(tracking.get("project") or cfg.experiment.name)
    if kind == "wandb":  # offline by default: compute nodes often have no internet
        return {"_component_": LOGGERS[kind], "project": project, "group": str(cfg.experiment.name),
                "name": run_dir.name, "log_dir": "${output_dir}/logs", "mode": str(tracking.get("mode") or "offline")}
    if kind == "mlflow":
        uri = tracking.get("uri") or f"sqlite:///{run_dir.parent / 'mlflow.db'}"  # mlflow 3 retired file stores
        return {"_component_": LOGGERS[kind], "experiment_name": project, "tracking_uri": str(uri),
                "run_name": run_dir.name}
    return {"_component_": LOGGERS["disk"], "log_dir": "${output_dir}/logs"}


def model_section(cfg: DictConfig) -> dict[str, Any]:
    """The ``model:`` section of ``finetune.yaml``: the builder, its architecture, the LoRA settings."""
    m, peft = cfg.model, cfg.peft
    model = {"_component_": m.component, **(OmegaConf.to_container(m.args, resolve=True) if m.get("args") else {})}
    model.update(
        lora_attn_modules=list(peft.lora_attn_modules),
        apply_lora_to_mlp=bool(peft.apply_lora_to_mlp),
        apply_lora_to_output=lora_on_output(cfg),
        lora_rank=int(peft.lora_rank),
        lora_alpha=float(peft.lora_alpha),
        lora_dropout=float(peft.lora_dropout),
    )
    return model


def render(cfg: DictConfig, run_dir: Path, model_dir: Path, data_file: Path,
           device: str | None = None) -> dict[str, Any]:
    """The torchtune config of one run, as a plain dict in torchtune's own layout (``device``: the
    one the job will have, when rendered elsewhere ahead of time)."""
    m, opt, tr = cfg.model, cfg.optimizer, cfg.training
    device = device or resolve_device(tr.device)
    dtype = resolve_dtype(tr.dtype, device)
    model = model_section(cfg)
    tokenizer = {"_component_": m.tokenizer.component}
    for key in TOKENIZER_FILES:  # files of the model dir (Qwen: vocab.json + merges.txt)
        if m.tokenizer.get(key):
            tokenizer[key] = str(model_dir / m.tokenizer[key])
    tokenizer["max_seq_len"] = m.tokenizer.max_seq_len
    template = m.tokenizer.get("prompt_template")
    if template is not None:  # a role -> [prepend, append] table, or a torchtune template's path
        tokenizer["prompt_template"] = (OmegaConf.to_container(template, resolve=True)
                                        if isinstance(template, DictConfig) else str(template))
    conf = {
        "output_dir": str(run_dir),
        "model": model,
        "tokenizer": tokenizer,
        "checkpointer": {
            "_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(model_dir),
            "checkpoint_files": list(m.checkpoint_files),
            "recipe_checkpoint": None,
            "output_dir": "${output_dir}",
            "model_type": m.model_type,
        },
        "resume_from_checkpoint": False,
        "save_adapter_weights_only": False,
        "dataset": {
            "_component_": "torchtune.datasets.instruct_dataset",
            "source": "json",
            "data_files": str(data_file),
            "field": "train",
            "split": "train",
            "column_map": {"input": cfg.dataset.input_key, "output": cfg.dataset.output_key},
            "train_on_input": bool(cfg.dataset.train_on_input),
            "packed": False,
        },
        "seed": int(cfg.seed),
        "shuffle": True,
        "batch_size": int(tr.batch_size),
        "optimizer": {
            "_component_": "torch.optim.AdamW",
            "fused": device.startswith("cuda"),
            "weight_decay": float(opt.weight_decay),
            "lr": float(opt.lr),
        },
        "lr_scheduler": {
            "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": int(opt.num_warmup_steps),
        },
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "epochs": int(tr.epochs),
        "max_steps_per_epoch": tr.max_steps_per_epoch,
        "gradient_accumulation_steps": int(tr.gradient_accumulation_steps),
        "clip_grad_norm": tr.clip_grad_norm,
        "compile": bool(tr.compile),
        "metric_logger": metric_logger(cfg, run_dir),
        "log_every_n_steps": int(tr.log_every_n_steps),
        "log_peak_memory_stats": device.startswith("cuda"),
        "device": device,
        "dtype": dtype,
        "enable_activation_checkpointing": bool(tr.enable_activation_checkpointing),
        "enable_activation_offloading": False,
        "profiler": {"_component_": "torchtune.training.setup_torch_profiler", "enabled": False},
    }
    if cfg.get("base_recipe"):
        conf = seed_from_stock(str(cfg.base_recipe), conf)
    return conf


def stock_configs() -> dict[str, Path]:
    """torchtune's shipped configs (``tune ls``): name -> file (found without importing torchtune)."""
    root = recipe_path().parent / "configs"
    return {str(f.relative_to(root).with_suffix("")): f for f in sorted(root.rglob("*.yaml"))}


def seed_from_stock(name: str, conf: dict[str, Any]) -> dict[str, Any]:
    """Start from torchtune's config ``name``: every value cruijff renders (not null) wins; a
    section of the same component is merged key by key (the stock profiler's schedule stays); keys
    and nulls cruijff leaves open keep the stock config's values."""
    stock = yaml.safe_load(stock_configs()[name].read_text()) or {}
    return _merge(stock, conf)


def _merge(base: Any, ours: Any) -> Any:
    if isinstance(base, dict) and isinstance(ours, dict) and base.get("_component_") in (None, ours.get("_component_")):
        out = dict(base)
        for key, value in ours.items():
            out[key] = _merge(base.get(key), value) if value is not None else base.get(key)
        return out
    return ours if ours is not None else base


def write_config(conf: dict[str, Any], path: Path, run_name: str, nproc: int = 1,
                 base_recipe: str | None = None) -> None:
    """Write ``finetune.yaml`` laid out like torchtune's own configs (sections, header)."""
    path.write_text(config_text(conf, path, run_name, nproc, base_recipe))


def config_text(conf: dict[str, Any], path: Path, run_name: str, nproc: int = 1,
                base_recipe: str | None = None) -> str:
    out = [HEADER.format(name=run_name, command=tune_command(nproc, path))]
    if base_recipe:
        out.append(f"#\n# Seeded from torchtune's {base_recipe}: cruijff's values override it; what cruijff\n"
                   "# leaves open (null, or keys it does not set) is the stock config's.\n")
    known = [k for k, _ in SECTIONS]
    extra = [k for k in conf if k not in known]
    for key, section in SECTIONS + [(k, "# From the base recipe" if i == 0 else None) for i, k in enumerate(extra)]:
        if key not in conf:
            continue
        if section:
            out.append(f"\n{section}\n")
        out.append(yaml.safe_dump({key: conf[key]}, sort_keys=False, default_flow_style=False, width=100))
    return "".join(out)


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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: training stops at once instead of burning the time limit."""


class _LossTap:
    """Forwards to torchtune's metric logger and keeps (epoch, step, loss, lr) for run.json."""

    def __init__(self, inner, recipe, on_step: Callable[[dict], None] | None):
        self._inner, self._recipe, self._on_step = inner, recipe, on_step
        self.rows: list[dict] = []

    def log_dict(self, payload, step):
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


def run(finetune_yaml: Path, on_step: Callable[[dict], None] | None = None, nproc: int = 1,
        loss_file: Path | None = None) -> None:
    """Run the stock LoRA recipe on ``finetune.yaml``: in this process on one device, or through
    torchrun with ``nproc`` processes. Each logged step goes to ``on_step`` (one device) or is
    appended to ``loss_file`` by rank 0 (several processes)."""
    if nproc > 1:
        from .distributed import launch

        return launch(finetune_yaml, nproc, loss_file)
    from torchtune import config as tt_config

    cfg = OmegaConf.load(finetune_yaml)
    module = _load_recipe_module()
    tt_config.log_config(recipe_name=RECIPE, cfg=cfg)
    recipe = module.LoRAFinetuneRecipeSingleDevice(cfg=cfg)
    if recipe._device.type == "cpu":
        module.get_merged_lora_ckpt = _clone_before_merge(module.get_merged_lora_ckpt)
    recipe.setup(cfg=cfg)
    tap = _LossTap(recipe._metric_logger, recipe, on_step)
    recipe._metric_logger = tap
    try:
        recipe.train()
    finally:
        recipe.cleanup()


def checkpoints(run_dir: Path) -> list[Path]:
    """Finished epoch checkpoints of a run, in epoch order (a dir counts once its weights are there)."""
    found = []
    for d in run_dir.glob("epoch_*"):
        if d.name[6:].isdigit() and (d / "adapter_model.safetensors").exists() and any(
            d.glob("model-*.safetensors")
        ):
            found.append(d)
    return sorted(found, key=lambda d: int(d.name[6:]))


def read_losses(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short when the job was killed
            continue
    return rows


def epoch_summary(rows: list[dict]) -> list[dict]:
    """Mean and final loss per epoch."""
    out: dict[int, list[float]] = {}
    for r in rows:
        out.setdefault(r["epoch"], []).append(r["loss"])
    return [
        {"epoch": e, "mean_loss": sum(v) / len(v), "final_loss": v[-1], "steps": len(v)}
        for e, v in sorted(out.items())
    ]


def write_losses(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
