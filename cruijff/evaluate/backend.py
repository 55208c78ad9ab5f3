"""inspect-ai backend: evaluate a model directory on every configured task, loading it once.

A *cell* is one checkpoint (the base model or an ``epoch_N`` dir) evaluated on all tasks. Its
inspect logs (``.eval``) and a ``results.json`` summary go to one log dir.

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
from pathlib import Path
from typing import Any

from ..config import TaskSpec
from ..hardware import eval_device
from ..records import CellResults, TaskResult, headline_metric


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
        args = {"name": spec.label, **spec.args}  # a task given a label of its own is named so in its logs
        return exact_match_task(str(data_file), input_key, output_key, **args)
    path, fn = spec.name.rsplit("@", 1)
    mod_name = f"cruijff_user_tasks_{abs(hash(os.path.abspath(path)))}"
    module = sys.modules.get(mod_name)
    if module is None:
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        s.loader.exec_module(module)
    return getattr(module, fn)(**spec.args)


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
) -> CellResults:
    """Evaluate one model dir on all tasks with one model load; write ``results.json``.

    ``chat_template``: Jinja text that lays out the prompts (None: the model dir's own template)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, ModelInfo, get_model, set_model_info

    log_dir.mkdir(parents=True, exist_ok=True)
    view = _weights_view(model_dir)
    model_args: dict[str, Any] = dict(device=eval_device(device, gpus), do_sample=False)
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
    results: dict[str, TaskResult] = {}
    for spec, log in zip(tasks, logs):
        entry = TaskResult(status=log.status, log=log.location, task=log.eval.task)
        if log.status == "success" and log.results and log.results.scores:
            score = log.results.scores[0]
            entry.metric = headline_metric(score.metrics)
            entry.value = score.metrics[entry.metric].value
            entry.samples = log.results.completed_samples
        elif log.error:
            entry.error = log.error.message
        results[spec.label] = entry
    cell = CellResults(model=str(model_dir), tasks=results, limit=limit, chat_template=chat_template,
                       metadata=metadata or {})
    cell.save(log_dir)
    return cell


def _context_length(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
