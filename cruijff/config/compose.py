"""Composition helpers: where the config groups live, the resolvers they use, checks that need no
composed config, and a run dir's saved config."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .. import hardware
from ..errors import ConfigError, CruijffError, did_you_mean
from ..records import layout
from . import auto
from .identity import check_name, run_name
from .model import sweep_batch

_PACKAGED_CONF = Path(__file__).resolve().parent.parent / "conf"  # an installed wheel: cruijff/conf
# the config groups cruijff ships: package data when installed, the checkout's conf/ otherwise
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parents[2] / "conf"


# what `cruijff init` leaves at a project's root, so cruijff finds the project from any dir below it
PROJECT_MARKER = ".cruijff"


def project_root(cwd: Path | None = None) -> Path | None:
    """The dir of the project cruijff runs in, found as git finds its repository: the working dir
    when it has a conf/, else the nearest dir above it whose conf/ holds a config.yaml or that holds
    the marker ``cruijff init`` writes (``.cruijff``). None outside a project, and in cruijff's checkout."""
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        conf = d / "conf"
        if conf.is_dir() and (d == here or (conf / "config.yaml").is_file() or (d / PROJECT_MARKER).is_file()):
            return None if conf.resolve() == CONF_DIR.resolve() else d
    return None


def project_conf(cwd: Path | None = None) -> Path | None:
    """The conf/ of the project cruijff runs in (:func:`project_root`), when there is one: its
    groups' options add to or shadow the packaged ones, and its config.yaml, if any, replaces the
    packaged one (Hydra's search path, hydra_plugins.cruijff_plugins.ProjectSearchPath)."""
    root = project_root(cwd)
    return (root / "conf").resolve() if root is not None else None


def looked_in(group: str) -> str:
    """Where a group's options were looked up, for an error about one that is not there."""
    conf = project_conf()
    if conf is None:
        return f"looked in cruijff's own only: no project conf/ in {Path.cwd()} or above"
    return f"looked in {conf / group} and cruijff's own"


def conf_dirs() -> list[Path]:
    """Where config options are looked up, first match first: the project's conf/, then cruijff's."""
    return [d for d in (project_conf(), CONF_DIR) if d is not None]

# Config groups a user picks from on the command line (`group=option`).
GROUPS = ("model", "dataset", "peft", "optimizer", "training", "eval", "cluster", "early_stop", "experiment")


def job_minutes(epoch_min: float, epochs: int) -> int:
    """A fine-tuning job's time limit from the model's minutes per epoch: 20% slack plus 10 minutes
    for loading the model and writing checkpoints."""
    return int(math.ceil(float(epoch_min) * int(epochs) * 1.2)) + 10


def by_peft(method: str, lora: Any, full: Any) -> Any:
    """A model's resource hint for LoRA, or for full fine-tuning (``peft=none``), which holds
    gradients and optimizer state for every weight."""
    return full if str(method) == "none" else lora


def _run_dir_name(overrides: Any, _root_: Any = None) -> str:
    """A run's dir name (``hydra.run.dir``, ``hydra.sweep.subdir``), once the experiment's name,
    the dir above it, is known to be a name (Hydra makes the dir before any job code runs)."""
    name = OmegaConf.select(_root_, "experiment.name", default=None) if _root_ is not None else None
    if name is not None:
        check_name("experiment.name", name)
    return run_name(list(overrides or []))


def register_resolvers() -> None:
    """The ``cruijff_*`` resolvers the config groups use."""
    resolvers = {
        "cruijff_run_name": _run_dir_name,
        "cruijff_parallel": lambda value, nproc="auto", gpus=1: hardware.local_parallel(
            value, hardware.gpus_per_run(nproc, gpus)),
        "cruijff_timeout": job_minutes,
        "cruijff_cpus": lambda per_gpu, gpus: int(per_gpu) * max(1, int(gpus)),
        "cruijff_batch": sweep_batch,
        "cruijff_by_peft": by_peft,
        "cruijff_auto": auto.resolve,  # model=auto: a field of the model dir's description (auto.describe)
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def leaf_keys(d: Any, prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from leaf_keys(v, key + ".")
        else:
            yield key


def check_group_overrides(argv: list[str]) -> None:
    """``group=option`` on the command line names an option that exists (before Hydra composes)."""
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key not in GROUPS:
            continue
        options = sorted({p.stem for d in conf_dirs() for p in (d / key).glob("*.yaml")})
        for v in value.split(","):
            if v not in options:
                raise ConfigError(key, v, f"no such {key}{did_you_mean(v, options, quote=True)}; "
                                          f"choose one of: {', '.join(options)}; {looked_in(key)}")


@lru_cache(maxsize=4096)
def parse_override(override: str):
    """One command-line override as Hydra's grammar reads it (cached: a grid repeats them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0]


def override_identity(o) -> tuple:
    """An override as Hydra means it (``x=true`` and ``x=True`` are the same override)."""
    return (o.type, o.key_or_group, o.package, repr(o.value()))


# The smoke preset (``training=smoke``, or ``training.smoke=true``) has the last word on these keys,
# whatever an experiment or another override set: at most its limits (conf/training/smoke.yaml).
SMOKE_KEYS = ("training.epochs", "training.max_steps_per_epoch", "training.eval_limit", "eval.limit")


@lru_cache(maxsize=1)
def smoke_limits() -> dict[str, int]:
    """A smoke run's limits, as cruijff's smoke preset writes them: ``epochs``,
    ``max_steps_per_epoch``, ``eval_limit``."""
    preset = OmegaConf.load(CONF_DIR / "training" / "smoke.yaml")
    return {key: int(preset[key]) for key in ("epochs", "max_steps_per_epoch", "eval_limit")}


def apply_smoke(cfg: DictConfig) -> None:
    """A composed config with ``training.smoke`` true becomes a smoke run, in place, after everything
    else it was composed from: ``training.epochs`` the preset's; ``training.max_steps_per_epoch``,
    ``training.eval_limit`` and ``eval.limit`` at most the preset's (unset: the preset's). Every
    composed config passes here before it is planned, run or evaluated (``schema.validate``,
    :func:`eval_config`). A value that is no integer is left for the schema check to name."""
    mark_smoke(cfg, OmegaConf.select(cfg, "hydra.runtime.choices", default=None))
    if OmegaConf.select(cfg, "training.smoke", default=False) is not True:
        return
    limits = smoke_limits()
    with read_write(cfg):
        cfg.training.epochs = limits["epochs"]
        cfg.training.max_steps_per_epoch = _at_most(cfg.training.get("max_steps_per_epoch"),
                                                    limits["max_steps_per_epoch"])
        with open_dict(cfg.training):  # as the smoke preset has it, whichever way the run became one
            cfg.training.eval_limit = _at_most(cfg.training.get("eval_limit"), limits["eval_limit"])
        if "eval" in cfg and "limit" in cfg.eval:
            cfg.eval.limit = _at_most(cfg.eval.limit, limits["eval_limit"])


def mark_smoke(cfg: DictConfig, choices: Any) -> None:
    """Mark ``cfg`` a smoke run where Hydra's group choices name a smoke preset: the preset named on
    the command line, which no experiment's ``smoke: false`` undoes."""
    if chosen_smoke(choices):
        with read_write(cfg), open_dict(cfg.training):
            cfg.training.smoke = True


def chosen_smoke(choices: Any) -> bool:
    """Whether Hydra's group choices (``hydra.runtime.choices``) name a training preset that makes a
    smoke run (``smoke: true`` in its file: cruijff's ``smoke``, or a project's own that says so)."""
    name = None if choices is None else choices.get("training")
    return name is not None and _sets_smoke(str(name), tuple(conf_dirs()))


@lru_cache(maxsize=32)
def _sets_smoke(name: str, dirs: tuple[Path, ...]) -> bool:
    for d in dirs:  # the file Hydra chose: the first of the search path
        f = d / "training" / f"{name}.yaml"
        if f.is_file():
            return OmegaConf.load(f).get("smoke") is True
    return False


def _at_most(value: Any, limit: int) -> Any:
    if value is None:
        return limit
    return min(value, limit) if isinstance(value, int) and not isinstance(value, bool) else value


def load_run(run_dir: Path) -> DictConfig:
    """The resolved config a run dir was launched with."""
    saved = layout.saved_config(run_dir)
    if not saved.exists():
        raise CruijffError(f"{run_dir}: not a cruijff run dir (no {layout.SAVED_CONFIG})")
    return OmegaConf.load(saved)


def eval_config(run_dir: Path, eval_cfg: Any = None) -> DictConfig:
    """A run's saved config, with the eval section of the current launch when given.

    Eval settings are not part of a run's config hash: a finished run is evaluated with the tasks
    asked for now, without fine-tuning it again (a smoke run's, on at most its smoke preset's samples).
    """
    cfg = load_run(run_dir)
    if eval_cfg is not None:
        cfg.eval = OmegaConf.create(OmegaConf.to_container(eval_cfg, resolve=True)
                                    if OmegaConf.is_config(eval_cfg) else eval_cfg)
        apply_smoke(cfg)  # a smoke run's eval limit holds whatever the launch's eval section says
    return cfg
