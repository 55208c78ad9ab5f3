"""The composed config: schema and validation, run identity, composition helpers, model-file and
task checks, chat templates. Everything here runs before any job starts and writes nothing."""

from ..errors import ConfigError, CruijffError
from . import chat, early_stop
from .compose import (CONF_DIR, GROUPS, SMOKE_KEYS, apply_smoke, check_group_overrides, chosen_smoke, conf_dirs,
                      eval_config, mark_smoke,
                      job_minutes, leaf_keys, load_run, looked_in, override_identity, parse_override, PROJECT_MARKER,
                      project_conf, project_root, register_resolvers, smoke_limits)
from .data import data_keys, is_chat
from .keys import ALIASES, unknown_key
from .identity import (RUN_KEYS, changes_finetune, check_name, config_changes, config_hash, file_sha256,
                       input_identity, model_content_id, model_identity, run_changes, run_name)
from .model import (CHECKPOINT_MODES, PEFT_METHODS, TOKENIZER_FILES, checkpoint_mode, device_guess, effective_batch,
                    local_jobs, lora_on_output, model_files, peft_method, prepare_job, processes, resolve_paths,
                    run_gpus, sweep_batch)
from .schema import SCHEMA, check_value, selected_epochs, stock_configs, validate, validate_dataset
from .tasks import BUILTIN_TASKS, TaskSpec, check_task, check_tasks, task_specs

__all__ = [
    "ConfigError", "CruijffError", "chat", "early_stop",
    "CONF_DIR", "GROUPS", "SMOKE_KEYS", "apply_smoke", "chosen_smoke", "mark_smoke", "check_group_overrides",
    "conf_dirs", "eval_config",
    "job_minutes", "leaf_keys", "load_run", "looked_in", "override_identity", "parse_override", "PROJECT_MARKER", "project_conf", "project_root",
    "register_resolvers", "smoke_limits",
    "ALIASES", "unknown_key", "data_keys", "is_chat",
    "RUN_KEYS", "changes_finetune", "check_name", "config_changes", "config_hash", "file_sha256", "input_identity",
    "model_content_id", "model_identity", "run_changes", "run_name",
    "CHECKPOINT_MODES", "PEFT_METHODS", "TOKENIZER_FILES", "checkpoint_mode", "device_guess", "effective_batch",
    "local_jobs", "lora_on_output", "model_files", "peft_method", "prepare_job", "processes", "resolve_paths", "run_gpus", "sweep_batch",
    "SCHEMA", "check_value", "stock_configs", "validate", "selected_epochs", "validate_dataset",
    "BUILTIN_TASKS", "TaskSpec", "check_task", "check_tasks", "task_specs",
]
