"""A run's identity: its directory name (from its overrides) and its config hash (what it computes).

The hash covers what decides what a fine-tuning run computes — model, dataset, LoRA, optimizer,
training, seed, the stock recipe it starts from, the processes it trains on — and the *content*
of its inputs: the dataset file's sha256 and the model dir's identity (its ``config.json``, weight
index, file names and sizes). Paths are not part of it: the same data at another path is the same
run, and other data at the same path is another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .. import assets
from ..errors import ConfigError
from .model import lora_on_output, peft_method, processes, resolve_paths

# Keys that decide what a fine-tuning run computes; they make up its config hash. Eval settings are
# left out on purpose: re-evaluating a finished run with other tasks must not invalidate it.
RUN_KEYS = ("model", "dataset", "peft", "optimizer", "training", "seed")

# Short names for the run directory, so `peft.lora_rank=8 optimizer.lr=3e-3` -> `rank8_lr3e-3`.
ABBREVIATIONS = {
    "lora_rank": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "batch_size": "bs",
    "gradient_accumulation_steps": "ga",
    "weight_decay": "wd",
    "num_warmup_steps": "warmup",
    "max_steps_per_epoch": "steps",
}
# Overrides that do not change what a run computes, so they do not change its directory.
NOT_IN_RUN_NAME = re.compile(r"^(hydra|eval|experiment|overwrite|cluster|dry_run|full_table|detach|scaffold|verbose|early_stop|training\.metric_logger|training\.tracking|training\.oom_retries)([./=]|$)")


def changes_finetune(override: str) -> bool:
    """Whether a ``key=value`` override changes what a run fine-tunes (``optimizer.lr=1e-3``), as
    opposed to how or where it is launched and evaluated (``eval.*``, ``hydra.*``, ``cluster``,
    ``detach``, ``overwrite``, ``experiment.name``, ...): the one rule for run names and for a
    sweep report's hyperparameter columns."""
    ov = str(override).lstrip("+~")
    return "=" in ov and not NOT_IN_RUN_NAME.match(ov)


def run_name(overrides: Iterable[str]) -> str:
    """Directory name of a run, derived from its command-line overrides (never from the clock)."""
    parts = []
    for ov in overrides:
        if not changes_finetune(ov):
            continue
        ov = str(ov).lstrip("+~")
        key, value = ov.split("=", 1)
        leaf = key.split(".")[-1] if "." in key else key
        if key.endswith("path"):
            value = Path(value.strip("'\"")).name
        value = _slug(value)
        sep = "" if value[:1].isdigit() or value[:1] in ".-" else "-"
        parts.append(f"{ABBREVIATIONS.get(leaf, leaf)}{sep}{value}")
    return shorten("_".join(parts) or "default")


# Experiment and run names become directory names, job names and words in generated scripts: letters,
# digits and ``. _ + = -``, not starting with ``-`` or ``.``, at most MAX_NAME characters (a file
# name may have 255 bytes; the rest is left for what cruijff puts beside it).
MAX_NAME = 128
NAME_CHARS = "letters, digits and . _ + = -"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+=][A-Za-z0-9._+=-]*")


def shorten(name: str) -> str:
    """A run name longer than MAX_NAME characters: its first characters, then ``-`` and 8 hex digits of
    the full name's sha256 (the same overrides always give the same name; other ones, another)."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[:MAX_NAME - 9].rstrip("._-+=") + "-" + digest


def check_name(key: str, name: Any) -> None:
    """A name that becomes a directory under ``outputs/`` (and a word in the scripts cruijff writes):
    letters, digits and ``. _ + = -``, not starting with ``-`` or ``.``, at most MAX_NAME characters."""
    text = "" if name is None else str(name)
    if not _SAFE_NAME.fullmatch(text):
        bad = sorted({c for c in text if not re.fullmatch(r"[A-Za-z0-9._+=-]", c)})
        what = (f"holds {', '.join(repr(c) for c in bad)}; " if bad else
                "is empty; " if not text else f"starts with {text[0]!r}; ")
        raise ConfigError(key, name, f"{what}a name is {NAME_CHARS}, not starting with '-' or '.', "
                                     f"at most {MAX_NAME} characters")
    if len(text) > MAX_NAME:
        raise ConfigError(key, f"{text[:20]}...", f"is {len(text)} characters long; a name is at most {MAX_NAME} "
                                                  f"characters ({NAME_CHARS}): set a shorter one")


def _number(value: str) -> str | None:
    """Floats spelled the same whatever the input (`1e-3`, `0.001` -> `1e-3`; `0.5` stays)."""
    try:
        f = float(value)
    except ValueError:
        return None
    if "." not in value and "e" not in value.lower():
        return None  # an integer, or inf/nan: keep as written
    mantissa, exponent = f"{f:e}".split("e")
    sci = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    plain = f"{f:g}"
    return sci if len(sci) < len(plain) else plain


def _slug(value: str) -> str:
    value = value.strip().strip("'\"")
    number = _number(value)
    if number is not None or re.fullmatch(r"-?\d+", value):
        return number or value  # keeps its sign: lr=-1e-3 and lr=1e-3 are different runs
    return re.sub(r"[^A-Za-z0-9.+\-]+", "-", value.replace("/", "-")).strip("-") or "x"


# ----------------------------------------------------------------------------------------------
# the config hash


def _settings(cfg: DictConfig) -> dict:
    """What of a config is in its hash, its inputs' content aside (see the module's docstring)."""
    return _finish(hash_sections(cfg), cfg)


def hash_sections(cfg: DictConfig) -> dict:
    """The sections of a config its hash is made of, resolved, before :func:`_finish` leaves out what
    does not decide the run and adds what is derived."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig)
            else cfg[k] for k in RUN_KEYS if k in cfg}


def _finish(sub: dict, cfg: DictConfig) -> dict:
    """``sub`` (:func:`hash_sections` of ``cfg``) as hashed: the keys that do not decide the run left
    out, the processes and the LoRA output flag as the run will have them."""
    if cfg.get("base_recipe"):
        sub["base_recipe"] = cfg.base_recipe
    # where the losses are sent and how the checkpoints are stored do not change what is trained;
    # nor does the smoke flag itself: the limits it set are counted as the values they are; nor the
    # retries out of GPU memory (a retry keeps the effective batch)
    for key in ("metric_logger", "tracking", "checkpoint", "smoke", "oom_retries"):
        sub.get("training", {}).pop(key, None)
    # hints for clusters, plans and evals, not for training (model.training reaches training.*);
    # the paths are replaced by what they hold
    for key in ("resources", "chars_per_token", "full_component", "chat_template", "training", "path"):
        sub.get("model", {}).pop(key, None)
    if "model" in sub and _read_from_dir(cfg.model, "name"):  # model=auto: the dir's name, not its content
        sub["model"].pop("name", None)
    sub.get("dataset", {}).pop("path", None)
    if "training" in sub:  # the processes it trains on (nproc=auto follows the GPUs a run gets)
        sub["training"]["nproc"] = processes(cfg)
    # what the LoRA builder gets: auto is true or false per model
    if "peft" in sub and "model" in sub and peft_method(cfg) == "lora":
        sub["peft"]["apply_lora_to_output"] = lora_on_output(cfg)
    return sub


def _read_from_dir(section: DictConfig, key: str) -> bool:
    """Whether a model section's ``key`` is read from the model dir (``model=auto``'s resolver)."""
    node = section._get_node(key) if key in section else None
    return node is not None and "cruijff_auto:" in str(node._value())


def input_identity(cfg: DictConfig, model_dir: Path, data_file: Path) -> dict[str, str]:
    """The content of a run's inputs as its hash counts it: the model dir's identity, the data file's sha256."""
    return {
        "model": model_identity(model_dir) if cfg.model.get("path") is not None
        else f"embedded:{cfg.model.name}:{assets.ASSET_VERSION}",
        "data": file_sha256(data_file) if cfg.dataset.get("path") is not None
        else f"embedded:{cfg.dataset.name}:{assets.ASSET_VERSION}",
    }


def config_hash(cfg: DictConfig, model_dir: Path | None = None, data_file: Path | None = None) -> str:
    """Hash of everything that decides what a fine-tuning run computes (see the module's docstring)."""
    if model_dir is None or data_file is None:
        model_dir, data_file = resolve_paths(cfg, build=False)
    return settings_hash(hashed_settings(hash_sections(cfg), cfg, model_dir, data_file))


def hashed_settings(sections: dict, cfg: DictConfig, model_dir: Path, data_file: Path) -> dict:
    """Everything a config's hash is made of, from its :func:`hash_sections` (changed in place)."""
    sub = _finish(sections, cfg)
    sub["inputs"] = input_identity(cfg, model_dir, data_file)
    return sub


def settings_hash(settings: dict) -> str:
    """The config hash of :func:`hashed_settings`."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _short(value: Any, width: int = 24) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 1] + "…"


def config_changes(old: DictConfig, old_inputs: dict | None, new: DictConfig, model_dir: Path, data_file: Path,
                   shown: int = 3) -> str | None:
    """What makes ``new`` another run than ``old`` (a run dir's saved config, with the content of
    its inputs as recorded then, where it was), in one line: the keys in the hash with old -> new,
    then the data file and the model dir whose content changed; past ``shown`` items, "and N more".
    None where nothing can be told apart (the old config cannot be read this way)."""
    try:
        before, after = _flat(_settings(old)), _flat(_settings(new))
    except Exception:  # a config of an older cruijff: no key-by-key account
        return None
    if _read_from_dir(new.model, "name"):  # a saved config holds it resolved: not a difference
        before.pop("model.name", None)
    items = [f"{k} {_short(before.get(k, '(none)'))} -> {_short(after.get(k, '(none)'))}"
             for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    now = input_identity(new, model_dir, data_file)
    # as the user named them (a converted dataset is read from its cached copy)
    given_data, given_model = new.dataset.get("path"), new.model.get("path")
    for what, key, path in (("data file", "data", given_data or data_file), ("model dir", "model", given_model or model_dir)):
        if old_inputs and old_inputs.get(key) not in (None, now[key]):
            items.append(f"{what} {path}: content changed")
    if not items:
        if old_inputs:
            return None
        items = [f"the content of the data file {data_file} or of the model dir {model_dir}"]
    more = len(items) - shown
    return ", ".join(items[:shown]) + (f" and {more} more" if more > 0 else "")


def run_changes(run_dir: Path, cfg: DictConfig, model_dir: Path, data_file: Path) -> str | None:
    """:func:`config_changes` of the run in ``run_dir`` (its saved config, the inputs its manifest
    recorded) against ``cfg``; None where the run dir has no saved config."""
    from ..records import layout, read_json

    saved = layout.saved_config(run_dir)
    try:
        old = OmegaConf.load(saved)
    except Exception:  # none, or unreadable: the hashes are all there is to say
        return None
    manifest = read_json(run_dir / layout.MANIFEST_FILE) or {}
    inputs = manifest.get("inputs") if isinstance(manifest, dict) else None
    return config_changes(old, inputs, cfg, model_dir, data_file)


def file_sha256(path: Path) -> str:
    """sha256 of a file's content, computed once per (path, size, mtime, ctime, inode) and kept in the cache dir."""
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"
    # the change time too: an edit that keeps the size and sets the old mtime back (touch -r, a restored
    # copy) still moves ctime, which nobody can set
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    key = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}\0{ctime_ns}\0{inode}".encode()).hexdigest()[:32]
    store = assets.cache_root() / "content-hashes" / key
    try:
        return store.read_text().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{key}.{os.getpid()}")
        tmp.write_text(value)
        tmp.replace(store)
    except OSError:
        pass
    return value


def model_identity(model_dir: Path) -> str:
    """A model dir's identity without reading its weights: the content of ``config.json`` and of
    every weight index, and every file's name and size."""
    path = Path(model_dir)
    try:
        st = path.stat()
    except OSError:
        return "missing"
    config = path / "config.json"
    config_mtime = config.stat().st_mtime_ns if config.exists() else 0
    return _model_identity(str(path.resolve()), st.st_mtime_ns, config_mtime)


@lru_cache(maxsize=64)
def _model_identity(path: str, mtime_ns: int, config_mtime_ns: int) -> str:
    root = Path(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)):
        rel = f.relative_to(root).as_posix()
        digest.update(f"{rel}\0{f.stat().st_size}\n".encode())
        if rel == "config.json" or rel.endswith(".index.json"):
            digest.update(f.read_bytes())
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_content_id(model_dir: Path) -> str:
    """A model dir's content identity, for an eval cell: :func:`model_identity` (config, weight
    index, file names and sizes) and, of every weight file, its first and last MiB — two checkpoints
    of one architecture differ there — and the full content of its tokenizer and template files."""
    path = Path(model_dir)
    try:
        path.stat()
    except OSError:
        return "missing"
    stamps = tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file()))
    return _model_content_id(str(path.resolve()), stamps)


@lru_cache(maxsize=64)
def _model_content_id(path: str, stamps: tuple) -> str:
    root = Path(path)
    digest = hashlib.sha256(model_identity(root).encode())
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts)):
        rel = f.relative_to(root).as_posix()
        if f.name.endswith(WEIGHT_SUFFIXES):
            size = f.stat().st_size
            with open(f, "rb") as fh:
                digest.update(f"{rel}\0".encode() + fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    digest.update(fh.read())
        elif f.suffix in (".json", ".jinja", ".model", ".txt", ".tiktoken") and f.stat().st_size < 64 << 20:
            digest.update(f"{rel}\0".encode() + f.read_bytes())
    return digest.hexdigest()
