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
import dataclasses
import enum
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..cluster import job_resources
from ..config import (GROUPS, RUN_KEYS, SCHEMA, SMOKE_KEYS, apply_smoke, check_name, check_value, chosen_smoke, data_keys,
                      leaf_keys, override_identity, parse_override, resolve_paths, run_changes, run_name, unknown_key,
                      validate)
from ..config.identity import hash_sections, hashed_settings, settings_hash
from ..errors import ConfigError, CruijffError, omegaconf_message
from ..evaluate import check_tasks_load
from ..records import PlannedRunRecord, RunStanding, RunState, liveness, other_config, run_standing
from .estimate import estimate as cost
from .estimate import measured
from .reads import Watch, value_node
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
        task = OmegaConf.select(master, "hydra.overrides.task", default=None)  # as written: ${...} unresolved
        self._applied = {override_identity(o) for o in map(parse_override, OmegaConf.to_container(task) if task else [])
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
        self._classes: dict[tuple, Planner] = {}  # grid points choosing other config groups, by their choice
        # outcomes by (values other than plain, plain keys), then by the plain keys read, then their values
        self._memo: dict[tuple, dict[tuple[str, ...], dict[tuple, _Outcome]]] = {}
        self._values_checked: set[tuple[str, str]] = set()

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
        parsed = self._to_apply(overrides)
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

    def _to_apply(self, overrides: Sequence[str]) -> list:
        """A job's overrides but those of the config it starts from that need Hydra's loader (a plain
        value is set again: every grid point then sets the same keys)."""
        return [o for o in map(parse_override, overrides)
                if not (self._needs_hydra(o) and override_identity(o) in self._applied)]

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
        is called with every run's config (the scaffold renders its files there).

        A grid point is planned once for the grid points whose config differs from it only in plain
        values no step of the plan read (:mod:`cruijff.plan.reads`); their config hashes are made
        from its hashed settings with their own values in place."""
        ask = _Ask(overwrite, estimate, each)
        if estimate:
            ask.rates = measured(self.sweep_dir) if self.sweep_dir.exists() else {}
        # the sweep's finished runs, measured: time limits (SLURM) and hours
        if self.sweep_dir.exists() and (estimate or _raw(self._base, "cluster.executor") == "slurm"):
            ask.timings = sweep_timings(self.sweep_dir)
        ask.present = set(os.listdir(self.sweep_dir)) if self.sweep_dir.is_dir() else set()
        for planner in (self, *self._classes.values()):
            planner._memo = {}

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
                runs.append(self._plan_job(name, overrides, ask))
            except CruijffError as e:
                raise CruijffError(f"run {name}: {e}") from None
            except OmegaConfBaseException as e:  # e.g. a mandatory value left at ???
                raise CruijffError(f"run {name}: {omegaconf_message(e)}") from None
        return runs

    def _plan_job(self, name: str, overrides: list[str], ask: "_Ask") -> PlannedRun:
        """One grid point: its outcome (planned now, or shared with an earlier grid point), then
        where its run dir stands."""
        parsed = self._to_apply(overrides)
        if any(self._needs_hydra(o) for o in parsed):
            return self._class_of(overrides, parsed)._plan_job(name, overrides, ask)
        values = {o.key_or_group: o.value() for o in parsed if not o.is_hydra_override()}
        plain = {k: v for k, v in values.items() if _plain(k, v)}
        for key, value in plain.items():  # the schema's check of a value, once per distinct value
            if key in SCHEMA and (key, repr(value)) not in self._values_checked:
                check_value(key, value, SCHEMA[key])
                self._values_checked.add((key, repr(value)))
        group = (tuple((k, repr(v)) for k, v in values.items() if k not in plain), tuple(sorted(plain)))
        outcome = None if ask.each is not None else self._recall(group, plain)
        if outcome is None:
            return self._evaluate(name, overrides, values, plain, group, ask)
        return self._run(name, overrides, outcome, outcome.digest(plain), ask)

    def _class_of(self, overrides: list[str], parsed: list) -> "Planner":
        """The planner of the grid points that choose these config groups (and ``+key``, ``~key``):
        the first one's config composed by Hydra, the others' plain values set on it."""
        key = (tuple(override_identity(o) for o in parsed if self._needs_hydra(o)),
               tuple(sorted(o.key_or_group for o in parsed if not self._needs_hydra(o))))
        planner = self._classes.get(key)
        if planner is None:
            if self.compose is None:
                raise CruijffError(f"cannot plan {' '.join(overrides)} without Hydra's config loader")
            planner = self._classes[key] = Planner(self.compose(list(overrides)), self.sweep_dir)
            planner._applied |= {override_identity(o) for o in parsed}  # whatever Hydra recorded of them
        return planner

    def _recall(self, group: tuple, plain: dict[str, Any]) -> "_Outcome | None":
        """The outcome of an earlier grid point of ``group`` with the same values of what it read."""
        for read, outcomes in self._memo.get(group, {}).items():
            found = outcomes.get(tuple(repr(plain[k]) for k in read))
            if found is not None:
                return found
        return None

    def _evaluate(self, name: str, overrides: list[str], values: dict[str, Any], plain: dict[str, Any],
                  group: tuple, ask: "_Ask") -> PlannedRun:
        """Plan a grid point on its config, watching which of its plain values the plan reads."""
        with self._with_job(overrides) as cfg:
            changed = set(values)
            keys = list(SCHEMA) if not self._checked else [k for k in SCHEMA if k in self._to_check(changed)]
            nodes = {k: n for k in plain if (n := value_node(cfg, k)) is not None}
            watch = Watch(nodes)
            with watch:
                specs = validate(cfg, [k for k in keys if k not in plain])
                self._checked = True
                paths = resolve_paths(cfg, build=False)
                if cfg.eval.enabled and specs:  # each distinct task is loaded once, not per grid point
                    check_tasks_load(specs, paths[1], *data_keys(cfg))
            # every value of the hashed sections is read here, unwatched: a plain value stands in them
            # as itself, unless an interpolation there reads it (resolved again below, watched)
            sections = hash_sections(cfg)
            raw = OmegaConf.to_container(cfg, resolve=False)
            with watch:
                settings = hashed_settings(sections, cfg, paths[0], paths[1])
                outcome = _Outcome(paths, int(cfg.training.epochs),
                                   bool(cfg.overwrite) if ask.overwrite is None else ask.overwrite,
                                   self._resources(cfg, changed), str(cfg.model.name), settings)
                outcome.costs(cfg, ask)
                for path in _interpolations({k: v for k, v in raw.items() if k in RUN_KEYS}):
                    _resolve(cfg, path)
            read = tuple(sorted(set(plain) - set(nodes) | watch.read))
            outcome.place(k for k in plain if k not in read)
            self._memo.setdefault(group, {}).setdefault(read, {})[tuple(repr(plain[k]) for k in read)] = outcome
            run = self._run(name, overrides, outcome, outcome.digest(plain), ask, cfg)
            if ask.each is not None:
                ask.each(run, cfg)
            return run

    def _run(self, name: str, overrides: list[str], outcome: "_Outcome", chash: str, ask: "_Ask",
             cfg: DictConfig | None = None) -> PlannedRun:
        """The planned run: where its run dir stands for this config hash (a dir not there is new),
        its resources and, when not finished, its cost."""
        if name not in ask.present:
            run = PlannedRun(name, overrides, chash, NEW, None)
        else:
            def changes(run_dir: Path) -> str | None:
                job = cfg if cfg is not None else self._job_config_checked(overrides)
                return run_changes(run_dir, job, *outcome.paths)

            run = self._state(name, overrides, chash, outcome.epochs, outcome.force, changes)
        run.model = outcome.model
        if run.state == FINISHED:
            run.resources = outcome.resources
            return run
        run.resources, run.estimate = outcome.todo()
        return run

    def _job_config_checked(self, overrides: list[str]) -> DictConfig:
        """A grid point's config as its plan saw it (a smoke run's limits applied)."""
        cfg = self.job_config(overrides)
        apply_smoke(cfg)
        return cfg

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


@dataclass
class _Ask:
    """What a plan is asked for, and what it found in the sweep dir before it began."""

    overwrite: bool | None
    estimate: bool
    each: Callable[[PlannedRun, DictConfig], None] | None
    rates: dict | None = None  # measured seconds per sample (estimate.measured)
    timings: dict = field(default_factory=dict)  # measured epoch times (timing.sweep_timings)
    present: set[str] = field(default_factory=set)  # the names in the sweep dir


@dataclass
class _Outcome:
    """What a grid point's config gives, whatever its run dir holds: shared by the grid points that
    differ from it only in plain values the plan did not read."""

    paths: tuple[Path, Path]
    epochs: int
    force: bool
    resources: dict
    model: str
    settings: dict  # hashed settings (config.identity.hashed_settings)
    todo_resources: dict = field(default_factory=dict)  # a run still to run: its time limit may be measured
    estimate: Any = None
    error: Exception | None = None  # raised by the costs, for a run that needs them
    places: list[tuple[dict, str, str]] = field(default_factory=list)

    def costs(self, cfg: DictConfig, ask: _Ask) -> None:
        """What a run still to run costs (and its measured time limit); an error kept for such a run."""
        try:
            run = PlannedRun("", [], "", NEW, resources=self.resources,
                             estimate=cost(cfg, self.paths[1], ask.rates) if ask.estimate else None)
            if (ask.timings and run.resources) or run.estimate is not None:
                apply_measured(run, cfg, self.paths, ask.timings)
            self.todo_resources, self.estimate = run.resources, run.estimate
        except Exception as e:  # noqa: BLE001 - raised where a run needs them, as planning each would
            self.error = e

    def todo(self) -> tuple[dict, Any]:
        """Resources and cost of a run still to run (a cost of its own, which may be changed)."""
        if self.error is not None:
            raise self.error
        return self.todo_resources, dataclasses.replace(self.estimate) if self.estimate is not None else None

    def place(self, keys: Iterable[str]) -> None:
        """Where each of these plain values stands in the hashed settings (one left out of them: nowhere)."""
        for key in keys:
            *parents, leaf = key.split(".")
            node: Any = self.settings if (parents or [leaf])[0] in RUN_KEYS else None
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                self.places.append((node, leaf, key))

    def digest(self, plain: dict[str, Any]) -> str:
        """The config hash of a grid point with these plain values."""
        for node, leaf, key in self.places:
            node[leaf] = plain[key]
        return settings_hash(self.settings)


# keys a smoke run sets (config.compose.apply_smoke): never planned as plain values
_SMOKE_WRITES = frozenset((*SMOKE_KEYS, "training.smoke"))


def _plain(key: str, value: Any) -> bool:
    """A value set as it is, on a key no smoke run sets: a number, a bool, null, a string without an
    interpolation."""
    if key in _SMOKE_WRITES:
        return False
    if isinstance(value, str):
        return "${" not in value
    return value is None or isinstance(value, (bool, int, float))


def _interpolations(raw: Any, path: tuple = ()) -> Iterator[tuple]:
    """Paths of the interpolations in a config as written (dicts and lists)."""
    if isinstance(raw, dict):
        for k, v in raw.items():
            yield from _interpolations(v, (*path, k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            yield from _interpolations(v, (*path, i))
    elif _is_interpolation(raw):
        yield path


def _resolve(cfg: DictConfig, path: tuple) -> None:
    """Resolve the interpolation at ``path``, and every one in what it gives."""
    node: Any = cfg
    for part in path:
        node = node[part]
    if OmegaConf.is_config(node):
        OmegaConf.to_container(node, resolve=True)


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
