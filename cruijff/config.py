"""The composed config: validation with one-line errors, run names, config hashes, hardware.

Everything here runs before any job starts and writes nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

# Config groups a user picks from on the command line (`group=option`).
GROUPS = ("model", "dataset", "peft", "optimizer", "training", "eval", "cluster", "experiment")

# Keys that decide what a fine-tuning run computes; they make up its config hash. Eval settings are
# left out on purpose: re-evaluating a finished run with other tasks must not invalidate it.
RUN_KEYS = ("model", "dataset", "peft", "optimizer", "training", "seed")

# Short names for the run directory, so `peft.lora_rank=8 optimizer.lr=3e-3` -> `rank8_lr3e-3`.
ABBREVIATIONS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "weight_decay": "wd",
    "num_warmup_steps": "warmup",
    "max_steps_per_epoch": "steps",
}
# Overrides that do not change what a run computes, so they do not change its directory.
NOT_IN_RUN_NAME = re.compile(r"^(hydra|eval|experiment|overwrite|cluster|dry_run|detach|scaffold|training\.metric_logger|training\.tracking)([./=]|$)")


class CruijffError(Exception):
    """A user-facing error: printed as one line, no traceback."""


class ConfigError(CruijffError):
    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r}: {allowed}")


# ----------------------------------------------------------------------------------------------
# run names


def run_name(overrides: Iterable[str]) -> str:
    """Directory name of a run, derived from its command-line overrides (never from the clock)."""
    parts = []
    for ov in overrides:
        ov = str(ov).lstrip("+~")
        if "=" not in ov or NOT_IN_RUN_NAME.match(ov):
            continue
        key, value = ov.split("=", 1)
        leaf = key.split(".")[-1] if "." in key else key
        if key.endswith("path"):
            value = Path(value.strip("'\"")).name
        value = _slug(value)
        sep = "" if value[:1].isdigit() or value[:1] in ".-" else "-"
        parts.append(f"{ABBREVIATIONS.get(leaf, leaf)}{sep}{value}")
    return "_".join(parts) or "default"


def _number(value: str) -> str | None:
    """Floats spelled the same whatever the input (`1e-3`, `0.001` -> `1e-3`; `0.5` stays)."""
    try:
        f = float(value)
    except ValueError:
        return None
    if "." not in value and "e" not in value.lower():
        return None  # an integer, or inf/nan: keep as written
    mantissa, exponent = f"{f:e}".split("e")
    sci = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    plain = f"{f:g}"
    return sci if len(sci) < len(plain) else plain


def _slug(value: str) -> str:
    value = value.strip().strip("'\"")
    number = _number(value)
    if number is not None or re.fullmatch(r"-?\d+", value):
        return number or value  # keeps its sign: lr=-1e-3 and lr=1e-3 are different runs
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", value.replace("/", "-")).strip("-") or "x"


def job_minutes(epoch_min: float, epochs: int) -> int:
    """A fine-tuning job's time limit from the model's minutes per epoch: 20% slack plus 10 minutes
    for loading the model and writing checkpoints."""
    return int(math.ceil(float(epoch_min) * int(epochs) * 1.2)) + 10


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cruijff_run_name"):
        OmegaConf.register_new_resolver(
            "cruijff_run_name", lambda overrides: run_name(list(overrides or []))
        )
    if not OmegaConf.has_resolver("cruijff_parallel"):
        from .sweep import gpus_per_run, local_parallel

        OmegaConf.register_new_resolver(
            "cruijff_parallel", lambda value, nproc="auto", gpus=1: local_parallel(value, gpus_per_run(nproc, gpus)))
    if not OmegaConf.has_resolver("cruijff_timeout"):
        OmegaConf.register_new_resolver("cruijff_timeout", job_minutes)
    if not OmegaConf.has_resolver("cruijff_cpus"):
        OmegaConf.register_new_resolver("cruijff_cpus", lambda per_gpu, gpus: int(per_gpu) * max(1, int(gpus)))
    if not OmegaConf.has_resolver("cruijff_batch"):
        from .sweep import sweep_batch

        OmegaConf.register_new_resolver("cruijff_batch", sweep_batch)


def config_hash(cfg: DictConfig, *inputs: Path) -> str:
    """Hash of everything that decides what a fine-tuning run computes (and its input paths)."""
    sub = {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
           else cfg[k] for k in RUN_KEYS if k in cfg}
    if cfg.get("base_recipe"):
        sub["base_recipe"] = cfg.base_recipe
    for key in ("metric_logger", "tracking"):  # where the losses are sent does not change the run
        sub.get("training", {}).pop(key, None)
    # hints for clusters, plans and evals, not for training (model.training reaches training.*)
    for key in ("resources", "chars_per_token", "full_component", "chat_template", "training"):
        sub.get("model", {}).pop(key, None)
    if sub.get("training", {}).get("nproc") == "auto":  # follows the GPUs a run gets, like the cluster keys
        sub["training"].pop("nproc")
    if "peft" in sub and "model" in sub:  # what the builder gets: auto is true or false per model
        from .finetune import lora_on_output

        sub["peft"]["apply_lora_to_output"] = lora_on_output(cfg)
    sub["inputs"] = [str(p) for p in inputs]
    blob = json.dumps(sub, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# command-line group names (checked before Hydra composes, so the error is one line)


def did_you_mean(value: Any, options: Iterable[str], quote: bool = False) -> str:
    """`` (did you mean X?)`` with the closest option, or nothing when none is close."""
    hint = difflib.get_close_matches(str(value), sorted(options), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint and quote else f" (did you mean {hint[0]}?)" if hint else ""


def unknown_key(key: str, value: Any, known: Iterable[str]) -> ConfigError:
    """``key=value`` names no key of the composed config: one line, with the nearest key."""
    return ConfigError(key, value, f"no such key in the config{did_you_mean(key, known)}; add a new key with +{key}=…")


def leaf_keys(d: Any, prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from leaf_keys(v, key + ".")
        else:
            yield key


def check_group_overrides(argv: list[str]) -> None:
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for v in value.split(","):
            if v not in options:
                raise ConfigError(key, v, f"no such {key}{did_you_mean(v, options, quote=True)}; "
                                          f"choose one of: {', '.join(options)}")


# ----------------------------------------------------------------------------------------------
# hardware


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():  # rendered ahead of time for a GPU node
            return "bf16"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


# ----------------------------------------------------------------------------------------------
# validation


# Type and range of every plain value a user sets, checked before anything runs. A spec is a kind
# (int, number, bool, str) with an optional bound, and the other values allowed ("|null", "|auto").
# Keys a config does not have (SLURM keys on a local run) are skipped.
_MISSING = object()
SCHEMA = {
    "seed": "int>=0",
    "overwrite": "bool", "dry_run": "bool", "scaffold": "bool", "detach": "bool",
    "peft.lora_rank": "int>=1",
    "peft.lora_alpha": "number>0",
    "peft.apply_lora_to_mlp": "bool",
    "optimizer.lr": "number>0",
    "optimizer.weight_decay": "number>=0",
    "optimizer.num_warmup_steps": "int>=0",
    "training.epochs": "int>=1",
    "training.batch_size": "int>=1",
    "training.gradient_accumulation_steps": "int>=1",
    "training.max_steps_per_epoch": "int>=1|null",
    "training.clip_grad_norm": "number>0|null",
    "training.nproc": "int>=1|auto",
    "training.compile": "bool",
    "training.enable_activation_checkpointing": "bool",
    "training.log_every_n_steps": "int>=1",
    "dataset.input_key": "str", "dataset.output_key": "str",
    "dataset.train_on_input": "bool",
    "eval.enabled": "bool",
    "eval.base_model": "bool",
    "eval.max_tokens": "int>=1",
    "eval.batch_size": "int>=1",
    "eval.limit": "int>=1|null",
    "model.tokenizer.max_seq_len": "int>=1",
    "cluster.max_parallel": "int>=1|auto",
    "cluster.timeout_min": "number>0",
    "cluster.cpus_per_gpu": "int>=1",
    "cluster.cpus_per_task": "int>=1",
    "cluster.gpus_per_node": "int>=0",
    "cluster.mem_gb": "number>0",
    "cluster.max_array_size": "int>=1|auto",
    "cluster.max_requeue": "int>=0",
    "cluster.signal_delay_s": "int>=0",
}
_SPEC = re.compile(r"^(int|number|bool|str)(?:(>=|>)(-?[\d.]+))?((?:\|\w+)*)$")
_KINDS = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string"}


def check_value(key: str, value: Any, spec: str) -> None:
    """Raise ConfigError unless ``value`` fits ``spec`` (see SCHEMA)."""
    kind, op, bound, extra = _SPEC.match(spec).groups()
    others = extra.split("|")[1:]
    if value is None and "null" in others or isinstance(value, str) and value in others:
        return
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    else:
        ok = not isinstance(value, bool) and isinstance(value, int if kind == "int" else (int, float))
        if ok and op:
            ok = value >= float(bound) if op == ">=" else value > float(bound)
    if not ok:
        bound_text = f" {op} {bound}" if op else ""
        allowed = "".join(f" or {o}" for o in others)
        raise ConfigError(key, value, f"must be {_KINDS[kind]}{bound_text}{allowed}")


def validate(cfg: DictConfig, keys: Iterable[str] | None = None) -> None:
    """Check the composed config; raise ConfigError naming the first bad key. ``keys``: check only
    these of the SCHEMA (a grid point whose other values were checked with an earlier one)."""
    for key in SCHEMA if keys is None else [k for k in keys if k in SCHEMA]:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            check_value(key, value, SCHEMA[key])
    dropout = cfg.peft.lora_dropout
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError("peft.lora_dropout", dropout, "must be a number with 0 <= dropout < 1")
    logger = cfg.training.get("metric_logger", "disk")
    if logger not in ("disk", "wandb", "mlflow"):
        raise ConfigError("training.metric_logger", logger, "one of disk, wandb, mlflow")
    if logger != "disk" and importlib.util.find_spec(logger) is None:
        raise ConfigError("training.metric_logger", logger, f"the {logger} package is not installed here: "
                          f"pip install {logger} (or pip install 'cruijff[tracking]')")
    mode = OmegaConf.select(cfg, "training.tracking.mode", default="offline")
    if logger == "wandb" and mode not in ("offline", "online", "disabled"):
        raise ConfigError("training.tracking.mode", mode, "offline, online or disabled")
    if cfg.get("base_recipe"):
        from .finetune import stock_configs

        names = stock_configs()
        if cfg.base_recipe not in names:
            raise ConfigError("base_recipe", cfg.base_recipe,
                              f"not a torchtune config{did_you_mean(cfg.base_recipe, names)}; `tune ls` lists them")
    out = cfg.peft.get("apply_lora_to_output", "auto")
    if out != "auto" and not isinstance(out, bool):
        raise ConfigError("peft.apply_lora_to_output", out, "true, false or auto")
    if out is True and cfg.model.get("tied_embeddings", False):
        raise ConfigError("peft.apply_lora_to_output", out, f"model {cfg.model.name} ties its output layer to the "
                          "input embeddings, so it has none to adapt: false or auto")
    if cfg.training.device not in ("auto", "cpu", "cuda", "mps") and not str(
        cfg.training.device
    ).startswith("cuda:"):
        raise ConfigError("training.device", cfg.training.device, "one of auto, cpu, cuda, cuda:N, mps")
    if cfg.training.dtype not in ("auto", "fp32", "bf16"):
        raise ConfigError("training.dtype", cfg.training.dtype, "one of auto, fp32, bf16")
    if cfg.cluster.get("eval_after", "grid") not in ("run", "grid"):
        raise ConfigError("cluster.eval_after", cfg.cluster.eval_after,
                          "run (a run's evals start when it finishes) or grid (after the whole grid)")
    for key, extra in (("model.chat_template", ()), ("eval.chat_template", ("auto",))):
        template = OmegaConf.select(cfg, key)
        if template is None or template in extra:
            continue
        from .evaluate import chat

        if not isinstance(template, str) or not (chat.is_jinja(template) or template in chat.TEMPLATES):
            names = [*extra, *chat.TEMPLATES]
            raise ConfigError(key, template, f"not a chat template{did_you_mean(template, names)}: one of "
                              f"{', '.join(names)}, a Jinja template, or null for the model dir's own")
    if cfg.model.path is not None:
        path = Path(cfg.model.path)
        if not path.is_dir():
            raise ConfigError("model.path", cfg.model.path, "must be an existing local model directory")
        from .finetune import model_files

        for f in model_files(cfg.model):
            if not (path / f).exists():
                raise ConfigError("model.path", cfg.model.path, f"lacks {f}, named by model {cfg.model.name}")
    if cfg.dataset.path is not None:
        validate_dataset(cfg.dataset.path, cfg.dataset.input_key, cfg.dataset.output_key)
    epochs = cfg.eval.epochs
    if epochs != "all":
        if not OmegaConf.is_list(epochs) or not all(isinstance(e, int) for e in epochs):
            raise ConfigError("eval.epochs", epochs, "'all' or a list of epoch indices like [0, 1]")
        bad = [e for e in epochs if not 0 <= e < cfg.training.epochs]
        if bad:
            raise ConfigError(
                "eval.epochs", list(epochs), f"epochs are 0..{cfg.training.epochs - 1} (training.epochs={cfg.training.epochs})"
            )


def validate_dataset(path: str, input_key: str, output_key: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("dataset.path", path, "must be an existing JSON file")
    st = p.stat()  # every grid point names the same file: it is read once while it stays the same
    _check_dataset(path, st.st_mtime_ns, st.st_size, input_key, output_key)


@lru_cache(maxsize=16)
def _check_dataset(path: str, mtime_ns: int, size: int, input_key: str, output_key: str) -> None:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError("dataset.path", path, f"is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError("dataset.path", path, 'must hold {"train": [...], "validation": [...], "test": [...]}')
    for split in ("train", "test"):
        rows = data.get(split)
        if not isinstance(rows, list) or not rows:
            raise ConfigError("dataset.path", path, f"lacks a non-empty {split!r} split")
        for key in (input_key, output_key):
            if not all(isinstance(r, dict) and isinstance(r.get(key), str) for r in rows):
                raise ConfigError("dataset.path", path, f"every {split!r} record needs a string {key!r}")
