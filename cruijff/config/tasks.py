"""Eval tasks as a config names them: a built-in name or ``path/to/file.py@task``, with arguments."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..records import snapshot

BUILTIN_TASKS = ("exact_match",)


@dataclass
class TaskSpec:
    """One eval task: a built-in name or ``path/to/file.py@task_name`` (``given_name``, as the
    config writes it), its arguments, and the label its scores go under (default: the task's own name)."""

    given_name: str
    args: dict[str, Any] = field(default_factory=dict)
    given_label: str | None = None
    cluster: str | None = None  # a field of the samples' metadata naming the group each belongs to

    @property
    def name(self) -> str:
        """The task as this process loads it: a built-in name, or ``path@task`` where the path is
        the file imported — the copy a sweep's launch froze, in that launch and its jobs
        (:mod:`cruijff.records.snapshot`), else the file the config names."""
        if "@" not in self.given_name:
            return self.given_name
        path, fn = self.given_name.rsplit("@", 1)
        return f"{snapshot.frozen_path(path)}@{fn}"

    @property
    def path(self) -> str | None:
        """The task file the config names (None for a built-in task)."""
        return self.given_name.rsplit("@", 1)[0] if "@" in self.given_name else None

    @property
    def label(self) -> str:
        if self.given_label:
            return self.given_label
        return self.given_name.split("@")[-1] if "@" in self.given_name else self.given_name


def task_specs(tasks_cfg: Any) -> list[TaskSpec]:
    specs = []
    for t in tasks_cfg or []:
        if isinstance(t, str):
            specs.append(TaskSpec(t))
        else:
            label, cluster = t.get("label"), t.get("cluster")
            specs.append(TaskSpec(str(t["name"]), dict(t.get("args") or {}), None if label is None else str(label),
                                  None if cluster is None else str(cluster)))
    return specs


def check_tasks(tasks_cfg: Any) -> list[TaskSpec]:
    """The config's tasks, each found (without running it), their labels distinct; else ConfigError."""
    specs = task_specs(tasks_cfg)
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        check_task(spec, f"eval.tasks[{i}].name")
        cluster = (tasks_cfg[i] or {}).get("cluster") if not isinstance(tasks_cfg[i], str) else None
        if cluster is not None and (not isinstance(cluster, str) or not cluster.strip()):
            raise ConfigError(f"eval.tasks[{i}].cluster", cluster,
                              "the name of a field of the samples' metadata (e.g. passage_id), or leave it out")
        if spec.label in seen:
            raise ConfigError(f"eval.tasks[{i}]", spec.name,
                              f"its scores would go under {spec.label!r}, as eval.tasks[{seen[spec.label]}]'s do; "
                              f"give one a label of its own (label: {spec.label}_2)")
        seen[spec.label] = i
    return specs


def check_task(spec: TaskSpec, key: str) -> None:
    """Raise ConfigError unless the task can be found (without running it)."""
    if "@" not in spec.given_name:
        if spec.given_name not in BUILTIN_TASKS:
            raise ConfigError(
                key, spec.given_name, f"unknown task; built-in: {', '.join(BUILTIN_TASKS)}, or path/file.py@task"
            )
        return
    path, fn = spec.given_name.rsplit("@", 1)
    p = Path(spec.name.rsplit("@", 1)[0])  # the frozen copy, where this process runs from one
    if not p.is_file():
        raise ConfigError(key, spec.given_name, f"task file {path} does not exist")
    st = p.stat()
    if fn not in _functions(str(p), st.st_mtime_ns, st.st_size):
        raise ConfigError(key, spec.given_name, f"{path} defines no task function {fn!r}")


@lru_cache(maxsize=64)
def _functions(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Names of the functions a task file defines (read once while it stays the same)."""
    import re

    return frozenset(re.findall(r"^\s*(?:async\s+)?def\s+(\w+)\s*\(", Path(path).read_text(), re.M))
