"""An override whose key the config does not have, as one line with what it most likely meant: a
key of that leaf name or a common alias of one (``training.learning_rate`` -> ``optimizer.lr``), a
misspelt config group (``optimiser.lr``, ``experimnt=mystudy``), else the nearest key by spelling."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable

from ..errors import ConfigError
from .compose import GROUPS

# leaf names from other tools (and cruijff's own leaves under the wrong group) -> cruijff's key
ALIASES = {
    "learning_rate": "optimizer.lr", "lr": "optimizer.lr",
    "epochs": "training.epochs", "num_epochs": "training.epochs",
    "batch_size": "training.batch_size",
    "rank": "peft.lora_rank", "lora_rank": "peft.lora_rank", "lora_r": "peft.lora_rank",
    "alpha": "peft.lora_alpha", "lora_alpha": "peft.lora_alpha",
    "dropout": "peft.lora_dropout", "lora_dropout": "peft.lora_dropout",
    "input_key": "dataset.fields.input", "output_key": "dataset.fields.output",
}


def unknown_key(key: str, value: Any, known: Iterable[str]) -> ConfigError:
    """``key=value`` names no key of the composed config (``known``: its leaf keys): one line, with
    the key meant where one is likely. A new key (``+key=…``) is offered only where nothing is close
    and outside cruijff's config groups, whose keys are all there already."""
    known = set(known)
    head = key.split(".")[0]
    group = _misspelt_group(head, known)
    if group and "." not in key:  # experimnt=mystudy
        return ConfigError(key, value, f"no such config group (did you mean {group}={value}?)")
    hint = _meant(key, known, group)
    text = f"no such key in the config (did you mean {hint}?)" if hint else "no such key in the config"
    if hint:
        return ConfigError(key, value, text)
    if head in GROUPS:
        return ConfigError(key, value, f"{text}; --cfg job shows every key")
    return ConfigError(key, value, f"{text}; add a new key with +{key}=…")


# keys under cruijff's groups that take any key a user adds (sbatch flags, a model builder's arguments)
FREE_FORM = ("cluster.sbatch", "model.args")


def unread_addition(key: str, value: Any, known: Callable[[], Iterable[str]]) -> ConfigError | None:
    """A ``+key=value`` that adds a key under one of cruijff's config groups, where nothing would
    read it (every key a stage reads is already there), as one line with the key meant; None for
    a key that may be added (outside the groups, under a free-form key). ``known``: the composed
    config's leaf keys, asked only when needed."""
    head, _, rest = key.partition(".")
    if not rest or head not in GROUPS or head == "experiment" or any(key.startswith(f + ".") for f in FREE_FORM):
        return None
    keys = set(known())
    if key in keys or any(k.startswith(key + ".") for k in keys):  # there already: Hydra says so
        return None
    hint = _meant(key, keys, None)
    return ConfigError(f"+{key}", value, f"{head} has no key {rest}, and a key added there is read by nothing"
                       + (f" (did you mean {hint}?)" if hint else "; --cfg job shows every key")
                       + f"; free-form: {', '.join(f + '.*' for f in FREE_FORM)}")


def _misspelt_group(head: str, known: set[str]) -> str | None:
    if head in GROUPS or any(k == head or k.startswith(head + ".") for k in known):
        return None
    close = difflib.get_close_matches(head, GROUPS, n=1, cutoff=0.75)
    return close[0] if close else None


def _meant(key: str, known: set[str], group: str | None) -> str | None:
    leaf = key.rsplit(".", 1)[-1]
    alias = ALIASES.get(leaf.lower().replace("-", "_"))
    if alias in known:
        return alias
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    if group:  # optimiser.lrr -> the nearest key of optimizer
        key = group + key[len(key.split(".")[0]):]
        if key in known:
            return key
        within = sorted(k for k in known if k.startswith(group + "."))
        close = difflib.get_close_matches(key, within, n=1)
        return close[0] if close else group
    head, _, rest = key.partition(".")
    within = {k.partition(".")[2]: k for k in known if k.startswith(head + ".")}
    if rest and within:  # training.epoch -> training.epochs, by the part after the group alone
        close = difflib.get_close_matches(rest, sorted(within), n=1)
        return within[close[0]] if close else None
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return close[0] if close else None
