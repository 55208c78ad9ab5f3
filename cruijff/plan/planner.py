"""The sweep plan: every grid point's run dir, config, config hash and state, before anything runs.

A job's config is what Hydra would compose for it. Composing through Hydra costs ~0.1 s per job,
so plain value overrides (``peft.lora_rank=8``) are applied to the sweep's own composed config
instead; anything else (a config group, ``+key``, ``~key``) goes through Hydra's loader. Both give
the same config (a test checks).

Planning raises :class:`~cruijff.config.CruijffError` for the first bad grid point, so a sweep with
one bad value submits nothing.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..cluster import job_resources
from ..config import (GROUPS, SCHEMA, SMOKE_KEYS, check_name, chosen_smoke, config_hash, data_keys, leaf_keys, override_identity,
                      parse_override, resolve_paths, run_changes, run_name, unknown_key, validate)
from ..errors import ConfigError, CruijffError, omegaconf_message
from ..evaluate import check_tasks_load
from ..records import PlannedRunRecord, RunStanding, RunState, liveness, other_config, run_standing
from .estimate import estimate as cost
from .estimate import measured
from .timing import apply_measured, sweep_timings

# keys an interpolation reads: ${a.b}, and resolver arguments such as ${oc.select:a.b,null}
_REF = re.compile(r"(?:\$\{|[:,]\s*)([A-Za-z_]\w*(?:\.\w+)*)(?=\s*[},])")


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value

class PlanState(str, enum.Enum):
    """What a launch will do with a planned run."""

    NEW = "new"              # no record yet
    FINISHED = "finished"    # fine-tuned earlier, checkpoints intact: not submitted
    REDO = "redo"            # failed, stopped or incomplete before: submitted again (resuming where it can)
    OVERWRITE = "overwrite"  # a run of another config is there and overwrite=true
    ACTIVE = "active"        # an earlier launch's job still works on it: not submitted twice

    def __str__(self) -> str:
        return self.value


NEW, FINISHED, REDO, OVERWRITE, ACTIVE = (PlanState.NEW, PlanState.FINISHED, PlanState.REDO, PlanState.OVERWRITE,
                                          PlanState.ACTIVE)


@dataclass
class PlannedRun:
    name: str
    overrides: list[str]
    config_hash: str
    state: PlanState
    previous: RunState | None = None  # run.json as found
    estimate: Any = None  # cruijff.plan.estimate.Estimate, when asked for (dry run, scaffold)
    resources: dict = field(default_factory=dict)  # its SLURM job's GPUs, CPUs, memory, time limit
    model: str = ""  # the base model's name (one base control per model)

    def record(self) -> PlannedRunRecord:
        return PlannedRunRecord(self.name, list(self.overrides), self.config_hash, self.state.value,
                                dict(self.resources))


class Planner:
    """Plans jobs of one sweep; ``compose`` is Hydra's slow path for overrides it cannot apply."""

    def __init__(self, master: DictConfig, sweep_dir: Path,
                 compose: Callable[[list[str]], DictConfig] | None = None):
        self.sweep_dir = sweep_dir
        self.compose = compose
        self._base = {k: v for k, v in OmegaConf.to_container(master, resolve=False).items() if k != "hydra"}
        if chosen_smoke(OmegaConf.select(master, "hydra.runtime.choices", default=None)):
            self._base["training"]["smoke"] = True  # the preset named on the command line (see apply_smoke)
        # command-line overrides every job shares are already part of the sweep's config
        self._applied = {override_identity(o) for o in map(parse_override, OmegaConf.select(master, "hydra.overrides.task",
                                                                            default=None) or [])
                         if not o.is_sweep_override()}
        self._keys: list[str] | None = None
        self._shared: DictConfig | None = None
        # after the first grid point, a plain-value one is checked only where it differs: the keys
        # it sets, and the keys whose value is an interpolation of a section it sets
        self._checked = False
        self._derived = {k for k in SCHEMA if _is_interpolation(_raw(self._base, k))}
        self._derived_from = self._sources(self._derived)
        self._changed: set[str] | None = None  # keys the job at hand sets (None: composed by Hydra)
        self._base_resources: dict | None = None

    # -- configs --------------------------------------------------------------------------------

    def job_config(self, overrides: Sequence[str]) -> DictConfig:
        """The job's config, as a new object (see :meth:`_with_job` for the fast in-place form)."""
        with self._with_job(overrides) as cfg:
            return copy.deepcopy(cfg)

    @contextlib.contextmanager
    def _with_job(self, overrides: Sequence[str]) -> Iterator[DictConfig]:
        """The job's config; plain value overrides are applied to one shared config and undone after.

        Building a config object per job would cost ~4 ms each (4 s for a 1000-run grid).
        """
        parsed = [o for o in map(parse_override, overrides) if override_identity(o) not in self._applied]
        self._changed = None
        if any(self._needs_hydra(o) for o in parsed):
            if self.compose is None:
                raise CruijffError(f"cannot plan {' '.join(overrides)} without Hydra's config loader")
            yield self.compose(list(overrides))
            return
        if self._shared is None:
            self._shared = OmegaConf.create(self._base)
        cfg, undo = self._shared, []
        try:
            for o in parsed:
                if o.is_hydra_override():
                    continue
                key = o.key_or_group
                old = _raw(self._base, key)  # the shared config equals the base between jobs
                if old is _MISSING:
                    raise self._unknown_key(key, o.input_line)
                undo.append((key, old))
                OmegaConf.update(cfg, key, o.value(), merge=False)
            self._changed = {key for key, _ in undo}
            yield cfg
        finally:
            if OmegaConf.select(cfg, "training.smoke", default=False) is True:  # validate() set its limits
                undo += [(key, _raw(self._base, key)) for key in SMOKE_KEYS if _raw(self._base, key) is not _MISSING]
            for key, old in reversed(undo):
                OmegaConf.update(cfg, key, old, merge=False)

    @staticmethod
    def _needs_hydra(o) -> bool:
        key = o.key_or_group
        return (o.is_add() or o.is_delete() or o.is_force_add() or o.package is not None
                or key in GROUPS or "/" in key)

    def _unknown_key(self, key: str, line: str) -> ConfigError:
        if self._keys is None:
            self._keys = sorted(leaf_keys(self._base))
        return unknown_key(key, line.split("=", 1)[-1], self._keys)

    # -- plan -----------------------------------------------------------------------------------

    def plan(self, jobs: Iterable[Sequence[str]], overwrite: bool | None = None, estimate: bool = False,
             each: Callable[[PlannedRun, DictConfig], None] | None = None) -> list[PlannedRun]:
        """Plan every job; with ``estimate``, each run not finished gets its cost; ``each(run, cfg)``
        is called with every run's config (the scaffold renders its files there)."""
        rates = None
        if estimate:
            rates = measured(self.sweep_dir) if self.sweep_dir.exists() else {}
        timings = {}  # the sweep's finished runs, measured: time limits (SLURM) and hours
        if self.sweep_dir.exists() and (estimate or _raw(self._base, "cluster.executor") == "slurm"):
            timings = sweep_timings(self.sweep_dir)

        runs: list[PlannedRun] = []
        seen: dict[str, list[str]] = {}
        for overrides in jobs:
            overrides = list(overrides)
            name = run_name(overrides)
            if name in seen:
                raise ConfigError("hydra.sweeper.params", " ".join(overrides),
                                  f"gives the same run dir {name!r} as {' '.join(seen[name])}; "
                                  "make the swept values distinct")
            seen[name] = overrides
            try:
                check_name("run name", name)
                with self._with_job(overrides) as cfg:
                    changed = self._changed
                    specs = validate(cfg, None if changed is None or not self._checked else self._to_check(changed))
                    self._checked = self._checked or changed is not None
                    paths = resolve_paths(cfg, build=False)
                    if cfg.eval.enabled and specs:  # each distinct task is loaded once, not per grid point
                        check_tasks_load(specs, paths[1], *data_keys(cfg))
                    chash = config_hash(cfg, *paths)
                    epochs = int(cfg.training.epochs)
                    force = bool(cfg.overwrite) if overwrite is None else overwrite
                    run = self._state(name, overrides, chash, epochs, force,
                                      lambda d, c=cfg, p=paths: run_changes(d, c, *p))
                    run.resources = self._resources(cfg, changed)
                    run.model = str(cfg.model.name)
                    if estimate and run.state != FINISHED:
                        run.estimate = cost(cfg, paths[1], rates)
                    if run.state != FINISHED and ((timings and run.resources) or run.estimate is not None):
                        apply_measured(run, cfg, paths, timings)
                    if each is not None:
                        each(run, cfg)
            except CruijffError as e:
                raise CruijffError(f"run {name}: {e}") from None
            except OmegaConfBaseException as e:  # e.g. a mandatory value left at ???
                raise CruijffError(f"run {name}: {omegaconf_message(e)}") from None
            runs.append(run)
        return runs

    def _sources(self, keys: Iterable[str]) -> set[str]:
        """Top-level sections the values of ``keys`` read, through every interpolation on the way
        ("*": a relative one, which may read anything)."""
        seen: set[str] = set()
        todo = list(keys)
        while todo:
            key = todo.pop()
            if key in seen:
                continue
            seen.add(key)
            value = _raw(self._base, key)
            if not _is_interpolation(value):
                continue
            if "${." in value:
                return {"*"}
            todo += _REF.findall(value)
        return {k.split(".")[0] for k in seen}

    def _to_check(self, changed: set[str]) -> set[str]:
        """The SCHEMA keys a grid point may have changed: those it sets (or sets a section of), and
        every interpolated one when it sets a section they read."""
        keys = {k for k in SCHEMA for c in changed if k == c or k.startswith(c + ".") or c.startswith(k + ".")}
        if self._follows(changed):
            keys |= self._derived
        return keys

    def _follows(self, changed: set[str]) -> bool:
        return "*" in self._derived_from or any(c.split(".")[0] in self._derived_from for c in changed)

    def _resources(self, cfg: DictConfig, changed: set[str] | None) -> dict:
        """The run's SLURM resources; those of the sweep's config unless the run sets a cluster key
        or a key the interpolated ones read (the model, the epochs, ...)."""
        if changed is not None and not self._follows(changed) and not any(c.split(".")[0] == "cluster" for c in changed):
            if self._base_resources is None:
                self._base_resources = job_resources(cfg)
            return self._base_resources
        return job_resources(cfg)

    def _state(self, name: str, overrides: list[str], chash: str, epochs: int, overwrite: bool,
               changes: Callable[[Path], str | None] | None = None) -> PlannedRun:
        run_dir = self.sweep_dir / name
        state = RunState.of(run_dir)
        busy = _at_work(run_dir, state, overrides, chash, overwrite)
        if busy is not None:
            return busy
        standing, state = run_standing(run_dir, chash, epochs, state)
        planned = plan_state(standing, overwrite, run_dir, state, chash, changes)
        return PlannedRun(name, overrides, chash, planned, state)


def _at_work(run_dir: Path, state: RunState | None, overrides: list[str], chash: str,
             overwrite: bool) -> PlannedRun | None:
    """A run that a live process on this machine fine-tunes now, by its record ``state`` (a local
    job that an earlier launch left running when it was killed): ACTIVE, never submitted a second
    time. None when no process is at work on it, or when it is another config's run and
    ``overwrite`` is not set (refused as any such run is)."""
    if not liveness.at_work(state):
        return None
    if state.config_hash not in (None, chash):
        if not overwrite:
            return None
        raise CruijffError(f"overwrite=true, but {liveness.worker(state)} still fine-tunes the run there; "
                           "wait for it to end, or stop it first")
    return PlannedRun(run_dir.name, list(overrides), chash, ACTIVE, state)


def plan_state(standing: RunStanding, overwrite: bool, run_dir: Path, state: RunState | None, chash: str,
               changes: Callable[[Path], str | None] | None = None) -> PlanState:
    """What a launch does with a run that stands so on disk (:func:`cruijff.records.run_standing`):
    a run of another config is replaced with ``overwrite=true`` and refused without it, the
    refusal saying what changed (``changes(run_dir)``: :func:`cruijff.config.run_changes`)."""
    if standing is RunStanding.OTHER_CONFIG:
        if not overwrite:
            raise other_config(run_dir, state.config_hash if state else None, chash,
                               changes(run_dir) if changes else None)
        return OVERWRITE
    return {RunStanding.NEW: NEW, RunStanding.FINISHED: FINISHED, RunStanding.REDO: REDO}[standing]


class _Missing:
    pass


_MISSING = _Missing()


def _raw(base: dict, key: str) -> Any:
    """The value at ``key`` as written (an interpolation stays an interpolation), or _MISSING."""
    node: Any = base
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node
