"""``finetune.yaml``: a run's config in torchtune's own layout, with the ``tune run`` command
that reproduces it in its header."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from ..config import TOKENIZER_FILES, checkpoint_mode, data_keys, is_chat, lora_on_output, peft_method, stock_configs
from ..hardware import resolve_device, resolve_dtype

RECIPE = "lora_finetune_single_device"
DISTRIBUTED = "lora_finetune_distributed"
# torchtune's stock recipe per (peft.method, more than one process): its file and its class
RECIPES = {
    ("lora", False): (RECIPE, "LoRAFinetuneRecipeSingleDevice"),
    ("lora", True): (DISTRIBUTED, "LoRAFinetuneRecipeDistributed"),
    ("none", False): ("full_finetune_single_device", "FullFinetuneRecipeSingleDevice"),
    ("none", True): ("full_finetune_distributed", "FullFinetuneRecipeDistributed"),
}
# where an adapter-only run keeps the adapter torchtune resumes from (its epoch dirs hold PEFT's)
RESUME_ADAPTER = "recipe_state/adapter_model.pt"

HEADER = """\
# torchtune config rendered by cruijff for run {name!r}.
#
# Reproduce this run with torchtune alone:
#   {command}
#
# Override any key on the command line, e.g. to write elsewhere:
#   {command} output_dir=/tmp/rerun
"""


def recipe_name(nproc: int, method: str = "lora") -> str:
    return RECIPES[(method, nproc > 1)][0]


def recipe_class(nproc: int, method: str = "lora") -> str:
    return RECIPES[(method, nproc > 1)][1]


def tune_command(nproc: int, config: Path | str, method: str = "lora") -> str:
    """The stock torchtune command that runs ``config`` like cruijff does, as a shell line (the
    path quoted: a dir may hold spaces or shell characters)."""
    path = shlex.quote(str(config))
    if nproc > 1:
        return f"tune run --nproc_per_node {nproc} {recipe_name(nproc, method)} --config {path}"
    return f"tune run {recipe_name(nproc, method)} --config {path}"

SECTIONS = [
    ("output_dir", None),
    ("model", "# Model Arguments"),
    ("tokenizer", "# Tokenizer"),
    ("checkpointer", "# Checkpointer"),
    ("resume_from_checkpoint", None),
    ("save_adapter_weights_only", None),
    ("optimizer_in_bwd", None),
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
    """The ``model:`` section of ``finetune.yaml``: the builder, its architecture, the LoRA settings
    (with ``peft.method=none`` the model's full-weight builder, no LoRA)."""
    m, peft = cfg.model, cfg.peft
    args = OmegaConf.to_container(m.args, resolve=True) if m.get("args") else {}
    if peft_method(cfg) == "none":
        return {"_component_": m.full_component, **args}
    model = {"_component_": m.component, **args}
    model.update(
        lora_attn_modules=list(peft.lora_attn_modules),
        apply_lora_to_mlp=bool(peft.apply_lora_to_mlp),
        apply_lora_to_output=lora_on_output(cfg),
        lora_rank=int(peft.lora_rank),
        lora_alpha=float(peft.lora_alpha),
        lora_dropout=float(peft.lora_dropout),
    )
    if str(m.component).rsplit(".", 1)[-1].startswith("lora_gemma"):  # Gemma's output layer is its embeddings
        del model["apply_lora_to_output"]
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
        # adapter: torchtune writes the adapter alone per epoch (PEFT's safetensors + config), no weights
        "save_adapter_weights_only": checkpoint_mode(cfg) == "adapter",
        "dataset": dataset_section(cfg, data_file),
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
    if peft_method(cfg) == "none":  # the full recipes: no adapter to save, optimizer stepped as usual
        del conf["save_adapter_weights_only"]
        conf["optimizer_in_bwd"] = False
    if cfg.get("base_recipe"):
        conf = seed_from_stock(str(cfg.base_recipe), conf)
    return conf


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
                 base_recipe: str | None = None, method: str = "lora", note: str | None = None) -> None:
    """Write ``finetune.yaml`` laid out like torchtune's own configs (sections, header; ``note``:
    a line of the header saying why a value differs from the run's config)."""
    path.write_text(config_text(conf, path, run_name, nproc, base_recipe, method, note))


def smaller_batch_note(configured: tuple[int, int], used: tuple[int, int]) -> str | None:
    """The header line of a run that trains with a smaller micro-batch than its config's (after
    running out of GPU memory): None where it trains with its config's."""
    if tuple(configured) == tuple(used):
        return None
    return (f"batch_size {used[0]} x gradient_accumulation_steps {used[1]}: the run's training.batch_size "
            f"{configured[0]} x training.gradient_accumulation_steps {configured[1]} ran out of GPU memory; "
            "the same effective batch")


def config_text(conf: dict[str, Any], path: Path, run_name: str, nproc: int = 1,
                base_recipe: str | None = None, method: str = "lora", note: str | None = None) -> str:
    out = [HEADER.format(name=run_name, command=tune_command(nproc, path, method))]
    if note:
        out.append(f"#\n# {note}\n")
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


def parameter_counts(model: dict[str, Any]) -> tuple[int, int]:
    """(base, LoRA) parameter counts of a rendered ``model:`` section, from its torchtune builder
    on the ``meta`` device (shapes only, no memory)."""
    import logging

    import torch

    logging.disable(logging.WARNING)  # torchao's import-time notices are not for a plan
    try:
        from torchtune import config as tt_config
    finally:
        logging.disable(logging.NOTSET)
    with torch.device("meta"):
        built = tt_config.instantiate(OmegaConf.create(model))
    base = sum(p.numel() for n, p in built.named_parameters() if "lora_" not in n)
    return base, sum(p.numel() for n, p in built.named_parameters() if "lora_" in n)


def dataset_section(cfg: DictConfig, data_file: Path) -> dict:
    """torchtune's dataset builder on the train split of the dataset file: ``instruct_dataset`` for
    input/output records, ``chat_dataset`` for chats (a system prompt makes a record one); the loss
    on the answers (every assistant turn) only, unless ``dataset.train_on_input``."""
    common = {"source": "json", "data_files": str(data_file), "field": "train", "split": "train",
              "train_on_input": bool(cfg.dataset.train_on_input), "packed": False}
    if is_chat(cfg):
        return {"_component_": "torchtune.datasets.chat_dataset", **common,
                "conversation_column": "messages", "conversation_style": "openai"}
    source, target = data_keys(cfg)
    return {"_component_": "torchtune.datasets.instruct_dataset", **common,
            "column_map": {"input": source, "output": target}}
