"""inspect-ai backend: evaluate a model directory on every configured task, loading it once.

A *cell* is one checkpoint (the base model or an ``epoch_N`` dir) evaluated on all tasks. Its
inspect logs (``.eval``) and a ``results.json`` summary go to one log dir; a cell whose summary and
logs are complete is skipped on re-run.

Checkpoints written by torchtune hold merged weights *and* ``adapter_*`` files. When ``peft`` is
importable, transformers would apply that adapter on top of the merged weights (double LoRA), so the
weights are loaded from a link-only view of the dir without the adapter files; inspect still records
the real checkpoint path as the model name.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError

BUILTIN_TASKS = ("exact_match",)


@dataclass
class TaskSpec:
    """One eval task: a built-in name or ``path/to/file.py@task_name``, plus its arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name.split("@")[-1] if "@" in self.name else self.name


def task_specs(tasks_cfg) -> list[TaskSpec]:
    specs = []
    for i, t in enumerate(tasks_cfg or []):
        if isinstance(t, str):
            specs.append(TaskSpec(t))
        else:
            specs.append(TaskSpec(str(t["name"]), dict(t.get("args") or {})))
    return specs


def check_task(spec: TaskSpec, key: str) -> None:
    """Raise ConfigError unless the task can be found (without running it)."""
    if "@" not in spec.name:
        if spec.name not in BUILTIN_TASKS:
            raise ConfigError(
                key, spec.name, f"unknown task; built-in: {', '.join(BUILTIN_TASKS)}, or path/file.py@task"
            )
        return
    path, fn = spec.name.rsplit("@", 1)
    if not Path(path).is_file():
        raise ConfigError(key, spec.name, f"task file {path} does not exist")
    if f"def {fn}(" not in Path(path).read_text():
        raise ConfigError(key, spec.name, f"{path} defines no task function {fn!r}")


# ----------------------------------------------------------------------------------------------
# built-in tasks


def exact_match_task(data_file: str, input_key: str = "input", output_key: str = "output",
                     split: str = "test", ignore_case: bool = False, name: str = "exact_match"):
    """The dataset's ``split`` as prompts; the answer must equal the reference exactly."""
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import match
    from inspect_ai.solver import generate

    rows = json.loads(Path(data_file).read_text())[split]
    samples = [
        Sample(input=r[input_key], target=r[output_key], id=i + 1) for i, r in enumerate(rows)
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"{Path(data_file).stem}:{split}"),
        solver=generate(),
        scorer=match(location="exact", ignore_case=ignore_case),
        name=name,
    )


def build_task(spec: TaskSpec, data_file: Path, input_key: str, output_key: str):
    if spec.name == "exact_match":
        return exact_match_task(str(data_file), input_key, output_key, **spec.args)
    path, fn = spec.name.rsplit("@", 1)
    mod_name = f"cruijff_user_tasks_{abs(hash(os.path.abspath(path)))}"
    module = sys.modules.get(mod_name)
    if module is None:
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        s.loader.exec_module(module)
    return getattr(module, fn)(**spec.args)


# ----------------------------------------------------------------------------------------------
# cells


_ANY = object()


def cell_complete(log_dir: Path, tasks: list[TaskSpec], limit: Any = _ANY, chat_template: Any = _ANY) -> bool:
    """True when every task has a successful result and its log file is on disk, over the same
    ``eval.limit`` (a smoke test's 10-sample cell does not stand for a full one) and prompted with
    the same chat template, when these are given."""
    summary = log_dir / "results.json"
    if not summary.exists():
        return False
    try:
        cell = json.loads(summary.read_text())
        results = cell["tasks"]
    except (ValueError, KeyError):
        return False
    if limit is not _ANY and cell.get("limit") != limit:
        return False
    if chat_template is not _ANY and cell.get("chat_template") != chat_template:
        return False
    for t in tasks:
        r = results.get(t.label)
        if not r or r.get("status") != "success" or not Path(r.get("log", "")).exists():
            return False
    return True


def _eval_device(device: str, gpus: int) -> str:
    if device.startswith("cuda") and gpus > 1:
        return "auto"  # shard a large model over this node's GPUs
    if device == "cuda":
        return "cuda:0"
    return device


def _weights_view(model_dir: Path) -> Path | None:
    """A temporary dir of links to ``model_dir`` without ``adapter_*`` files, if any are there."""
    if not any(model_dir.glob("adapter_*")):
        return None
    view = Path(tempfile.mkdtemp(prefix="cruijff-weights-"))
    for f in model_dir.iterdir():
        if not f.name.startswith("adapter_"):
            (view / f.name).symlink_to(f.resolve())
    return view


def evaluate_cell(
    model_dir: Path,
    tasks: list[TaskSpec],
    log_dir: Path,
    *,
    data_file: Path,
    input_key: str,
    output_key: str,
    device: str,
    gpus: int = 1,
    max_tokens: int = 16,
    batch_size: int = 32,
    limit: int | None = None,
    chat_template: str | None = None,
    tags: list[str] | None = None,
    metadata: dict | None = None,
    display: str | None = None,
) -> dict[str, dict]:
    """Evaluate one model dir on all tasks with one model load; write ``results.json``.

    ``chat_template``: Jinja text that lays out the prompts (None: the model dir's own template)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, ModelInfo, get_model, set_model_info

    log_dir.mkdir(parents=True, exist_ok=True)
    view = _weights_view(model_dir)
    model_args: dict[str, Any] = dict(device=_eval_device(device, gpus), do_sample=False)
    if view is not None:
        model_args["model_path"] = str(view)
    if chat_template is not None:
        model_args["chat_template"] = chat_template
    try:
        model = get_model(
            f"hf/{model_dir.resolve()}",
            config=GenerateConfig(max_tokens=max_tokens, max_connections=batch_size),
            memoize=False,
            **model_args,
        )
        # inspect looks up model info by name while it runs; for an unknown "hf/<path>" it would
        # build the provider (and load the weights) a second time. Register the info instead.
        set_model_info(str(model), ModelInfo(organization="local", context_length=_context_length(model_dir)))
        built = [build_task(t, data_file, input_key, output_key) for t in tasks]
        logs = inspect_eval(
            built,
            model=model,
            log_dir=str(log_dir),
            limit=limit,
            # all tasks at once: their samples share the model's generation batches
            max_tasks=len(built),
            tags=tags or [],
            metadata=metadata or {},
            display=display or os.environ.get("INSPECT_DISPLAY") or "plain",
            log_format="eval",
            score_display=False,
        )
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
        gc.collect()
    results: dict[str, dict] = {}
    for spec, log in zip(tasks, logs):
        entry: dict[str, Any] = {"status": log.status, "log": log.location, "task": log.eval.task}
        if log.status == "success" and log.results and log.results.scores:
            score = log.results.scores[0]
            metric = "accuracy" if "accuracy" in score.metrics else next(iter(score.metrics))
            entry.update(metric=metric, value=score.metrics[metric].value,
                         samples=log.results.completed_samples)
        elif log.error:
            entry["error"] = log.error.message
        results[spec.label] = entry
    (log_dir / "results.json").write_text(
        json.dumps({"model": str(model_dir), "tasks": results, "limit": limit, "chat_template": chat_template,
                    "metadata": metadata or {}},
                   indent=2) + "\n"
    )
    return results


def _context_length(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_cell(log_dir: Path) -> dict[str, dict]:
    try:
        return json.loads((log_dir / "results.json").read_text())["tasks"]
    except (OSError, ValueError, KeyError):
        return {}
