"""``early_stop``: whether a sweep stops its losing runs early (``early_stop=halving``: successive
halving on a validation task's score), and its settings as checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from .tasks import TaskSpec

METHODS = ("none", "halving")
EXAMPLE = "{name: exact_match, label: val, args: {split: validation}}"


@dataclass(frozen=True)
class Halving:
    """Successive halving: at each rung (a number of epochs trained) the top ``ceil(n / eta)`` of the
    ``n`` runs that reached it by ``metric`` (a validation task's label) train on."""

    metric: str
    eta: int
    rungs: tuple[int, ...]   # epochs trained when runs are compared, ascending, each below training.epochs
    epochs: int              # training.epochs: where a run that is never stopped ends

    def describe(self) -> str:
        rungs = ", ".join(map(str, self.rungs)) or "none"
        return f"successive halving on {self.metric} (eta {self.eta}; rungs after epochs {rungs} of {self.epochs})"


def method(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "early_stop.method", default="none") or "none")


def halving(cfg: DictConfig, specs: list[TaskSpec]) -> Halving | None:
    """The config's successive halving, checked (one line naming the key otherwise); None without
    early stopping."""
    how = method(cfg)
    if how not in METHODS:
        raise ConfigError("early_stop.method", how, "none (every run trains all its epochs) or halving "
                          "(early_stop=halving: losing runs stop at a rung)")
    if how == "none":
        return None
    if not cfg.eval.enabled:
        raise ConfigError("early_stop", "halving", "ranks runs on a validation task's scores, and eval.enabled=false "
                          "evaluates none; enable the eval, or early_stop=none")
    validation = [s.label for s in specs if str(s.args.get("split", "")) == "validation"]
    metric = cfg.early_stop.get("metric")
    if metric is None:
        if not validation:
            raise ConfigError("early_stop.metric", None, "early_stop=halving ranks runs on a validation task, and "
                              f"eval.tasks has none (a task with args {{split: validation}}); add one, e.g. {EXAMPLE}")
        metric = validation[0]
    elif metric not in validation:
        allowed = ", ".join(validation) if validation else f"none in eval.tasks: add one, e.g. {EXAMPLE}"
        raise ConfigError("early_stop.metric", metric, "must be the label of a validation task (a task of eval.tasks "
                          f"with args {{split: validation}}: ranking on test scores would leak them): {allowed}")
    epochs = int(cfg.training.epochs)
    given = cfg.early_stop.get("rungs")
    if given is None:
        rungs = tuple(range(int(cfg.early_stop.min_epochs), epochs))
    else:
        if not OmegaConf.is_list(given) or not all(isinstance(r, int) and not isinstance(r, bool) for r in given):
            raise ConfigError("early_stop.rungs", OmegaConf.to_container(given) if OmegaConf.is_config(given) else given,
                              f"null (every epoch from early_stop.min_epochs on) or a list of epoch counts "
                              f"below training.epochs={epochs}, e.g. [1, 2]")
        bad = [r for r in given if not 1 <= r < epochs]
        if bad:
            raise ConfigError("early_stop.rungs", list(given), f"each rung is a number of epochs trained, 1 to "
                                                               f"{epochs - 1} (training.epochs={epochs})")
        rungs = tuple(sorted(set(given)))
    return Halving(str(metric), int(cfg.early_stop.eta), rungs, epochs)
