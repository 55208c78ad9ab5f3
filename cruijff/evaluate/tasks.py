"""Eval tasks loaded before anything runs: each task's file imported, its arguments checked against
its function, the function called and its dataset found to hold samples; for the built-in
``exact_match``, its arguments checked and the split it reads found in the data, with samples
(without importing inspect: a launch evaluating only built-in tasks starts as fast as before). A
task that cannot be loaded is one ConfigError naming the task and what is wrong, before a run
trains or a job is submitted.

Each distinct task (its name, file, arguments, and for a built-in task the data it reads) is loaded
once per process: a grid of any size over the same tasks loads them once.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Iterator

from ..config import TaskSpec, data_keys, eval_config, file_sha256, resolve_paths, validate
from ..errors import ConfigError, did_you_mean, first_line
from ..records import snapshot
from .backend import build_task, exact_match_task, task_function

_loaded: set[tuple] = set()
# exact_match's arguments a task entry may set (the data file, its keys and the name come from the config)
EXACT_MATCH_ARGS = tuple(p for p in inspect.signature(exact_match_task).parameters
                         if p not in ("data_file", "input_key", "output_key", "name"))


def check_tasks_load(specs: list[TaskSpec], data_file: Path, input_key: str, output_key: str) -> None:
    """Load every task as an eval would (no model needed); raise ConfigError for the first that
    does not load, naming it by its place in ``eval.tasks``."""
    for i, spec in enumerate(specs):
        key = _identity(spec, data_file, input_key, output_key)
        if key in _loaded:
            continue
        _check(spec, f"eval.tasks[{i}]", Path(data_file), input_key, output_key)
        _loaded.add(key)


def check_run_tasks(run_dir: Path, eval_cfg: Any = None) -> None:
    """The tasks an eval of a run dir would run (its saved config, with the eval section
    ``eval_cfg`` when given) all load."""
    cfg = eval_config(run_dir, eval_cfg)
    specs = validate(cfg)
    check_tasks_load(specs, resolve_paths(cfg, build=False)[1], *data_keys(cfg))


def _identity(spec: TaskSpec, data_file: Path, input_key: str, output_key: str) -> tuple:
    args = json.dumps(spec.args, sort_keys=True, default=str)
    if "@" not in spec.name:
        return spec.name, args, file_sha256(Path(data_file)), input_key, output_key
    path = Path(spec.name.rsplit("@", 1)[0])
    try:
        st = path.stat()
        stamp: tuple = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = (str(path),)
    return spec.name, args, stamp


def _check(spec: TaskSpec, key: str, data_file: Path, input_key: str, output_key: str) -> None:
    if "@" not in spec.given_name:  # the built-in task, checked against its data without building it
        _check_args(exact_match_task, spec, key, spec.given_name)
        _check_split(spec, key, data_file, input_key, output_key)
        return
    path, name = spec.given_name.rsplit("@", 1)
    try:
        with importable_beside(spec):
            fn = task_function(spec)
    except (Exception, SystemExit) as e:
        raise ConfigError(f"{key}.name", spec.given_name, f"importing {path} failed: {_error(e)}") from None
    _check_args(fn, spec, key, f"{name} in {path}")
    call = f"{name}({_call_args(spec.args)}) in {path}"
    try:
        task = build_task(spec, data_file, input_key, output_key)
    except (Exception, SystemExit) as e:
        raise ConfigError(f"{key}.name", spec.given_name, f"{call} failed: {_error(e)}") from None
    from inspect_ai import Task

    if not isinstance(task, Task):
        raise ConfigError(f"{key}.name", spec.given_name,
                          f"{call} returned {type(task).__name__}, not an inspect Task")
    try:
        samples = len(task.dataset)
    except TypeError:  # a dataset of unknown length: its first sample will do
        samples = next(iter(task.dataset), None) is not None
    if not samples:
        raise ConfigError(f"{key}.name", spec.given_name, f"{call}: its dataset has no samples")


@contextlib.contextmanager
def importable_beside(spec: TaskSpec) -> Iterator[None]:
    """While a task file is imported, the modules beside it and the project's own can be imported
    by it: the working dir's, or in a sweep's launch and jobs, the frozen copy's."""
    dirs = [str(Path(spec.name.rsplit("@", 1)[0]).absolute().parent), str(snapshot.code_root())]
    added = list(dict.fromkeys(dirs))  # first, even when already further down
    sys.path[:0] = added
    try:
        yield
    finally:
        for d in added:
            if d in sys.path:
                sys.path.remove(d)


def _check_args(fn: Any, spec: TaskSpec, key: str, what: str) -> None:
    """The task entry's ``args`` against the function's parameters: an unknown one, or a required
    one missing, is named with those it takes."""
    if spec.given_name == "exact_match":
        takes = list(EXACT_MATCH_ARGS)
        params = {}
    else:
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return  # not introspectable: calling it will tell
        params = sig.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            takes = None  # **kwargs: any argument
        else:
            takes = [n for n, p in params.items()
                     if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if takes is not None:
        for arg, value in spec.args.items():
            if arg not in takes:
                listed = ", ".join(takes) if takes else "no arguments"
                raise ConfigError(f"{key}.args.{arg}", value, f"{what} has no argument {arg!r}"
                                  f"{did_you_mean(arg, takes, quote=True)}; it takes: {listed}")
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec.args
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    if missing:
        raise ConfigError(f"{key}.args", dict(spec.args), f"{what} needs a value for {', '.join(map(repr, missing))} "
                                                          f"(args: {{{missing[0]}: ...}})")


def _check_split(spec: TaskSpec, key: str, data_file: Path, input_key: str, output_key: str) -> None:
    """The built-in task reads one split of the dataset file: it must be there, with samples."""
    split = spec.args.get("split", "test")
    try:
        data = json.loads(data_file.read_text())
    except (OSError, ValueError):
        return  # the dataset's own check names the file
    splits = [k for k, v in data.items() if isinstance(v, list)] if isinstance(data, dict) else []
    if split not in splits:
        raise ConfigError(f"{key}.args.split", split, f"{data_file.name} has no split {split!r}"
                                                      f"{did_you_mean(split, splits, quote=True)}; it has: "
                                                      f"{', '.join(splits) or 'none'}")
    rows = data[split]
    if not rows:
        raise ConfigError(f"{key}.args.split", split, f"the {split!r} split of {data_file.name} has no samples")
    if all(isinstance(r, dict) and "messages" in r for r in rows):
        return  # chats, checked as the dataset was converted
    for k in (input_key, output_key):
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict) or not isinstance(r.get(k), str)), None)
        if bad is not None:
            raise ConfigError(f"{key}.args.split", split, f"{split}[{bad}] of {data_file.name} has no string {k!r}")
        empty = next((i for i, r in enumerate(rows) if not r[k].strip()), None)
        if empty is not None:
            raise ConfigError(f"{key}.args.split", split, f"{split}[{empty}] of {data_file.name} has an empty {k!r}")


def _call_args(args: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _error(e: BaseException) -> str:
    """An error as the last line of its traceback reads: its type and (the first line of) its message."""
    text = first_line(e)
    return text if text == type(e).__name__ else f"{type(e).__name__}: {text}"
