"""inspect-ai backend (``hf``): evaluate checkpoints on every configured task, each model loaded once.

A *cell* is one checkpoint (the base model or an ``epoch_N`` dir) evaluated on all tasks. Its
inspect logs (``.eval``) and a ``results.json`` summary go to one log dir.

An :class:`Evaluator` lives for an eval job. It loads a base model once and evaluates every adapter
checkpoint of it by applying the adapter to the weights in memory (:mod:`.adapter`), then restoring
them; the base control uses the same load. A checkpoint of full weights (``training.checkpoint=merged``,
``peft=none``) is loaded by itself. Each log's metadata names its checkpoint (run, checkpoint, path), and
its model's name does too (``hf/<base dir>:<epoch dir>`` for an adapter).

Merged checkpoints hold ``adapter_*`` files beside the weights. When ``peft`` is importable,
transformers would apply that adapter on top of the merged weights (double LoRA), so such weights
are loaded from a link-only view of the dir without the adapter files; inspect still records the real
checkpoint path as the model name.

The seam for a second backend (inspect's ``vllm`` provider, which serves many adapters from one
server) is this module's :class:`Evaluator`: ``evaluate(model_dir, adapter, ...)`` per cell.
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
from .adapter import AdapterSwap, read_adapter


# ----------------------------------------------------------------------------------------------
# built-in tasks


def exact_match_task(data_file: str, input_key: str = "input", output_key: str = "output",
                     split: str = "test", ignore_case: bool = False, name: str = "exact_match"):
    """The dataset's ``split`` as prompts; the answer must equal the reference exactly. A chat
    record is asked its turns before the last, whose content is the reference."""
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import match
    from inspect_ai.solver import generate

    rows = json.loads(Path(data_file).read_text())[split]
    samples = [
        Sample(input=chat_messages(r["messages"][:-1]), target=r["messages"][-1]["content"], id=i + 1)
        if input_key not in r else Sample(input=r[input_key], target=r[output_key], id=i + 1)
        for i, r in enumerate(rows)
    ]
    return Task(
        dataset=MemoryDataset(samples, name=f"{Path(data_file).stem}:{split}"),
        solver=generate(),
        scorer=match(location="exact", ignore_case=ignore_case),
        name=name,
    )


def chat_messages(messages: list[dict]) -> list:
    """A record's messages as inspect's chat messages."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser

    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    return [kinds[m["role"]](content=m["content"]) for m in messages]


def build_task(spec: TaskSpec, data_file: Path, input_key: str, output_key: str):
    """The inspect task of ``spec``, named by its label where the config gives one: a task evaluated
    on two splits (``{name: ..., label: capitalize_val, args: {split: validation}}`` beside the test
    one) shows in ``inspect view`` under each label, not twice under the function's name."""
    if spec.name == "exact_match":
        args = {"name": spec.label, **spec.args}
        return exact_match_task(str(data_file), input_key, output_key, **args)
    task = task_function(spec)(**spec.args)
    if spec.given_label and task.name != spec.label:  # else the name the task gives itself
        from inspect_ai import task_with

        task = task_with(task, name=spec.label)
    return task


def task_function(spec: TaskSpec):
    """The task function ``path/file.py@name`` names; its file is imported once per process (and
    again after an import that failed)."""
    path, fn = spec.name.rsplit("@", 1)
    try:  # a file changed since it was imported is imported again
        st = os.stat(path)
        stamp: tuple = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (os.path.abspath(path),)
    mod_name = f"cruijff_user_tasks_{abs(hash(stamp))}"
    module = sys.modules.get(mod_name)
    if module is None:
        s = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[mod_name] = module
        try:
            s.loader.exec_module(module)
        except BaseException:
            del sys.modules[mod_name]  # not a half-imported module for the next one who asks
            raise
    return getattr(module, fn)


def samples_key(task: Any, limit: int | None) -> str:
    """sha256 of the (id, input, target) of the samples inspect will score of a task (the first
    ``limit``): two cells are paired sample by sample only when these are the same."""
    import hashlib

    digest = hashlib.sha256()
    rows = []
    for i, sample in enumerate(task.dataset):
        if limit is not None and i >= limit:
            break
        text = sample.input if isinstance(sample.input, str) else [
            m.model_dump(exclude={"id", "source", "metadata"}) for m in sample.input]
        rows.append(json.dumps([str(sample.id if sample.id is not None else i + 1), text, sample.target],
                               default=str, sort_keys=True))
    for row in sorted(rows):
        digest.update(row.encode() + b"\n")
    return digest.hexdigest()[:32]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_files(model_dir: Path, adapters: bool = False) -> list[list]:
    """[file, bytes] of the weights a load of ``model_dir`` reads (``adapters``: its adapter's files
    instead of the model's), for a cell's record of what it read."""
    return [[str(f), f.stat().st_size] for f in sorted(Path(model_dir).iterdir())
            if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES) and f.name.startswith("adapter_") == adapters]


def _weights_view(model_dir: Path) -> Path | None:
    """A temporary dir of links to ``model_dir`` without ``adapter_*`` files, if any are there."""
    if not any(model_dir.glob("adapter_*")):
        return None
    view = Path(tempfile.mkdtemp(prefix="cruijff-weights-"))
    for f in model_dir.iterdir():
        if not f.name.startswith("adapter_"):
            (view / f.name).symlink_to(f.resolve())
    return view


class Evaluator:
    """The models of one eval job: a model dir is loaded once, and an adapter checkpoint of it is
    applied in memory. ``loads``: the model loads so far."""

    def __init__(self) -> None:
        self._model: Any = None
        self._key: tuple | None = None
        self._swap: AdapterSwap | None = None
        self.loads = 0
        self._loaded: list[list] = []  # the weight files of the last load, until a cell records them

    def model(self, model_dir: Path, chat_template: str | None, device: str, gpus: int = 1,
              max_tokens: int = 16, batch_size: int = 32):
        """inspect's model for ``model_dir`` (loaded unless it is the one held), with its base weights."""
        key = (str(model_dir.resolve()), chat_template, device, gpus, max_tokens, batch_size)
        if key == self._key:
            if self._swap is not None:
                self._swap.restore()
            return self._model
        self.close()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from inspect_ai.model import GenerateConfig, ModelInfo, get_model, set_model_info

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
        finally:
            if view is not None:
                shutil.rmtree(view, ignore_errors=True)
        # inspect looks up model info by name while it runs; for an unknown "hf/<path>" it would
        # build the provider (and load the weights) a second time. Register the info instead.
        set_model_info(str(model), ModelInfo(organization="local", context_length=_context_length(model_dir)))
        self._model, self._key, self._swap = model, key, None
        self.loads += 1
        self._loaded = weight_files(model_dir)
        return model

    def evaluate(
        self,
        model_dir: Path,
        tasks: list[TaskSpec],
        log_dir: Path,
        *,
        adapter: Path | None = None,
        device: str,
        gpus: int = 1,
        max_tokens: int = 16,
        batch_size: int = 32,
        data_file: Path,
        input_key: str,
        output_key: str,
        limit: int | None = None,
        chat_template: str | None = None,
        tags: list[str] | None = None,
        metadata: dict | None = None,
        display: str | None = None,
        record: dict | None = None,
    ) -> CellResults:
        """Evaluate ``model_dir`` (with ``adapter``, an adapter checkpoint of it, applied) on all
        tasks; write ``results.json`` (with ``record``'s fields: the cell's key, its base control).
        ``chat_template``: Jinja text that lays out the prompts (None: the model dir's own template)."""
        log_dir.mkdir(parents=True, exist_ok=True)
        model = self.model(model_dir, chat_template, device, gpus, max_tokens, batch_size)
        if adapter is not None:
            if self._swap is None:
                self._swap = AdapterSwap(model.api.model)
            self._swap.apply(read_adapter(adapter))
        self._name_checkpoint(model, model_dir, adapter)
        loaded = {"weights": self._loaded, "adapters": weight_files(adapter, adapters=True) if adapter else [],
                  "server": False}
        self._loaded = []
        try:
            return score_cell(model, tasks, log_dir, cell_model=str(adapter or model_dir), data_file=data_file,
                              input_key=input_key, output_key=output_key, limit=limit, chat_template=chat_template,
                              tags=tags, metadata=metadata, display=display, record={**(record or {}), "loaded": loaded})
        finally:
            if self._swap is not None:
                self._swap.restore()

    def _name_checkpoint(self, model: Any, model_dir: Path, adapter: Path | None) -> None:
        """The model's name in the cell's logs names its checkpoint: ``hf/<base dir>:<epoch dir>``
        for an adapter (as inspect's vllm provider names one), ``hf/<dir>`` for the weights loaded."""
        from inspect_ai.model import ModelInfo, set_model_info

        base = str(model_dir.resolve())
        model.api.model_name = f"{base}:{adapter.resolve()}" if adapter is not None else base
        # registered, or inspect would look the name up by building its provider (another load)
        set_model_info(str(model), ModelInfo(organization="local", context_length=_context_length(model_dir)))

    def close(self) -> None:
        """Let the held model go (its memory with it)."""
        if self._model is not None:
            try:
                self._model.api.close()
            except Exception:
                pass
        self._model = self._key = self._swap = None
        gc.collect()


def score_cell(model: Any, tasks: list[TaskSpec], log_dir: Path, *, cell_model: str, data_file: Path,
               input_key: str, output_key: str, limit: int | None, chat_template: str | None,
               tags: list[str] | None, metadata: dict | None, display: str | None, record: dict | None) -> CellResults:
    """Run inspect's eval of every task on ``model`` (an inspect Model, any provider) into
    ``log_dir``, and write the cell's ``results.json`` (with ``record``'s fields)."""
    from inspect_ai import eval as inspect_eval

    built = [build_task(t, data_file, input_key, output_key) for t in tasks]
    keys = [samples_key(task, limit) for task in built]
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
    results: dict[str, TaskResult] = {}
    for spec, log, key in zip(tasks, logs, keys):
        # the log by its name in the cell's dir: a moved sweep dir still finds it
        name = Path(log.location).name if log.location else None
        entry = TaskResult(status=log.status, log=name, task=log.eval.task, samples_key=key)
        if log.status == "success" and log.results and log.results.scores:
            score = log.results.scores[0]
            entry.metric = headline_metric(score.metrics)
            entry.value = score.metrics[entry.metric].value
            entry.samples = log.results.completed_samples
        elif log.error:
            entry.error = log.error.message
        results[spec.label] = entry
    cell = CellResults(model=cell_model, tasks=results, limit=limit, chat_template=chat_template,
                       metadata=metadata or {})
    for k, v in (record or {}).items():
        setattr(cell, k, v)
    cell.save(log_dir)
    return cell


def evaluate_cell(model_dir: Path, tasks: list[TaskSpec], log_dir: Path, **kwargs: Any) -> CellResults:
    """One cell with a model loaded for it alone (see :meth:`Evaluator.evaluate`)."""
    evaluator = Evaluator()
    try:
        return evaluator.evaluate(model_dir, tasks, log_dir, **kwargs)
    finally:
        evaluator.close()


def _context_length(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
