"""``model=auto model.path=DIR``: the model section of a local Hugging Face model directory, read from
its ``config.json``, as a catalogue file (``conf/model/*.yaml``) would give it.

The architecture (``architectures`` / ``model_type``) picks the torchtune family; the sizes
(``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``,
``intermediate_size``, ``vocab_size``, ``max_position_embeddings``, ``rms_norm_eps``, the RoPE base and
scaling, ``tie_word_embeddings``, ``head_dim``, Gemma 2's soft-capping and sliding window) become the
``args`` of the family's generic torchtune *component* builder (``lora_llama3_2``, ``lora_qwen2``, ...),
with the checkpointer's ``model_type``, the tokenizer builder and its files, the chat template the
evals lay prompts out with, the checkpoint files (``model.safetensors``, or the shards of its
index), and resource hints scaled from the parameter count, computed from the same sizes.

``conf/model/auto.yaml`` reads each field through the ``cruijff_auto`` resolver, so the rest of
cruijff (validation, planning, the config hash, rendering, evaluation) sees a model section like any
other. An architecture torchtune cannot fine-tune is refused with one line naming it.
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from ..errors import ConfigError
from . import chat

TORCHTUNE = "0.6.1"  # the version pinned in pyproject.toml: its builders are the ones named here
SUPPORTED = "Llama 2, Llama 3/3.1/3.2/3.3, Qwen2/2.5, Mistral, Gemma, Gemma 2, Phi-3/4"
# Hugging Face architecture (``architectures[0]``) and ``model_type`` -> family
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
}
MODEL_TYPES = {family: family for family in ARCHITECTURES.values()}

# Resource hints by parameter count, as the catalogue gives them for its models: (at most this
# many parameters, LoRA (GPUs, host memory GB, minutes per epoch), full fine-tuning (the same),
# torchtune's training settings (batch size, activation checkpointing)).
TIERS = [
    (0.1e9, (1, 4, 1), (1, 4, 1), (8, False)),          # toy models (the embedded tiny Llama)
    (2e9, (1, 32, 20), (1, 48, 30), (4, False)),        # Llama-3.2-1B
    (4e9, (1, 48, 40), (1, 64, 60), (4, True)),         # Llama-3.2-3B, Qwen2.5-3B
    (10e9, (1, 64, 60), (2, 128, 60), (2, True)),       # Llama-3.1-8B, Qwen2.5-7B, Mistral-7B
    (20e9, (1, 96, 90), (4, 256, 120), (2, True)),      # Phi-3-medium, Phi-4, Qwen2.5-14B
    (40e9, (2, 256, 120), (8, 512, 240), (2, True)),    # Gemma-2-27B, Qwen2.5-32B
    (100e9, (8, 512, 120), (8, 1024, 240), (2, True)),  # Llama-3.3-70B, Qwen2.5-72B
    (math.inf, (8, 1024, 480), (8, 2048, 480), (1, True)),
]
MAX_SEQ_LEN = 2048  # training sequences are truncated to this (the catalogue's), or the model's own limit


class AutoModelError(ConfigError, InterpolationResolutionError):
    """A model dir ``model=auto`` cannot describe: one line, like any ConfigError. Raised while
    OmegaConf resolves an interpolation, it is passed on as it is (not wrapped), so the launcher
    prints its own line."""

    _initialized = True  # OmegaConf re-raises an initialized error of its own kind unchanged

    def __init__(self, key: str, value: Any, allowed: str):
        ConfigError.__init__(self, key, value, allowed)
        self.args = (f"{key}=???: {allowed}" if value == "???" else f"{key}={value!r}: {allowed}",)
        self.key, self.value, self.allowed = key, value, allowed  # OmegaConf's __init__ resets them


def describe(model_dir: Path | str, shown: str | None = None) -> dict[str, Any]:
    """The model section of ``model_dir`` (a catalogue file's fields), from its ``config.json``.
    ``shown``: the path as the user gave it, for errors. Cached by the file's path and mtime."""
    shown = str(model_dir) if shown is None else shown
    path = Path(model_dir).expanduser().resolve()
    if not path.is_dir():
        raise AutoModelError("model.path", shown, "must be an existing local model directory")
    config = path / "config.json"
    try:
        st, dir_st = config.stat(), path.stat()
    except OSError:
        raise AutoModelError("model.path", shown, "has no config.json: model=auto reads the model's "
                                                  "architecture from it") from None
    return copy.deepcopy(_describe(str(path), shown, st.st_mtime_ns, st.st_size, dir_st.st_mtime_ns))


@lru_cache(maxsize=32)
def _describe(path: str, shown: str, mtime_ns: int, size: int, dir_mtime_ns: int) -> dict[str, Any]:
    model_dir = Path(path)
    try:
        hf = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AutoModelError("model.path", shown, f"its config.json is not readable JSON ({e})") from None
    if not isinstance(hf, dict):
        raise AutoModelError("model.path", shown, "its config.json is not a JSON object")
    return _Reader(hf, model_dir, shown).section()


def resolve(key: str, _root_: Any = None, _parent_: Any = None) -> Any:
    """The ``cruijff_auto`` resolver: the field ``key`` (dotted: ``tokenizer.component``) of the
    model dir at ``model.path`` (a dict or list comes back as a config node)."""
    model = _root_.model
    if key.startswith("resources.") and (OmegaConf.is_missing(model, "path") or model.path is None):
        # a sweep over model.path: Hydra's sweeper reads the GPUs a job needs (its batch of local jobs)
        # from the config without the swept values; each grid point has its own path and hints
        return dict(zip(("gpus", "mem_gb", "epoch_min"), TIERS[0][1]))[key.rsplit(".", 1)[1]]
    if OmegaConf.is_missing(model, "path"):
        raise AutoModelError("model.path", "???", "a value is required: model=auto reads the model's "
                                                  "config.json from its local directory")
    if model.path is None:
        raise AutoModelError("model.path", None, "model=auto needs model.path=<local model directory>")
    value: Any = describe(str(model.path))
    for part in key.split("."):
        value = value[part]
    if isinstance(value, (dict, list)):
        return OmegaConf.create(value, parent=_parent_)
    return value


def parameter_count(family: str, args: dict[str, Any]) -> int:
    """Parameters of the model a family's builder makes with ``args`` (without LoRA): embeddings,
    attention (Qwen2's q/k/v with biases), the gated MLP, the RMS norms (Gemma 2's four per layer), the
    output layer unless tied to the embeddings."""
    dim, heads, kv = args["embed_dim"], args["num_heads"], args["num_kv_heads"]
    head_dim = args.get("head_dim") or dim // heads
    vocab, inter, layers = args["vocab_size"], args["intermediate_dim"], args["num_layers"]
    attn = dim * heads * head_dim + 2 * dim * kv * head_dim + heads * head_dim * dim
    if family == "qwen2":
        attn += heads * head_dim + 2 * kv * head_dim
    norms = (4 if family == "gemma2" else 2) * dim
    layer = attn + 3 * dim * inter + norms
    tied = family in ("gemma", "gemma2") or bool(args.get("tie_word_embeddings"))
    return vocab * dim * (1 if tied else 2) + layers * layer + dim


def model_name(model_dir: Path) -> str:
    """The model's name from its dir: the dir's own name, or for a Hugging Face cache snapshot
    (``models--org--Name/snapshots/<commit>``) the repository's; letters, digits and ``. _ + -``."""
    name = model_dir.name
    if model_dir.parent.name == "snapshots" and model_dir.parent.parent.name.startswith("models--"):
        name = model_dir.parent.parent.name.split("--")[-1]
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "-", name).lstrip("-.")[:100]
    return name or "auto"


def _num(value: Any) -> int | float:
    f = float(value)
    return int(f) if f.is_integer() else f


class _Reader:
    """One config.json, read into a model section."""

    def __init__(self, hf: dict[str, Any], model_dir: Path, shown: str):
        self.hf, self.dir, self.shown = hf, model_dir, shown
        self.arch, self.weight_map = "unknown", {}
        archs = hf.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            self.bad("architectures", archs, 'a list of architecture names, like ["LlamaForCausalLM"]')
        model_type = hf.get("model_type")
        if model_type is not None and not isinstance(model_type, str):
            self.bad("model_type", model_type, 'a name, like "llama"')
        self.arch = archs[0] if archs else model_type or "unknown"
        self.family = ARCHITECTURES.get(self.arch) if archs else MODEL_TYPES.get(str(model_type))
        if self.family is None:
            self.refuse("")

    # -- errors

    def refuse(self, detail: str) -> None:
        raise AutoModelError("model.path", self.shown, f"its config.json is a {self.arch} model{detail}, which "
                                                       f"torchtune {TORCHTUNE} cannot fine-tune; supported: {SUPPORTED}")

    def need(self, key: str) -> Any:
        value = self.hf.get(key)
        if value is None:
            raise AutoModelError("model.path", self.shown, f"its config.json ({self.arch}) lacks {key}")
        return value

    def bad(self, key: str, value: Any, allowed: str) -> None:
        """A config.json field of the wrong kind or value: named, with what it must be."""
        raise AutoModelError("model.path", self.shown, f"its config.json has {key}={value!r}; it must be {allowed}")

    def integer(self, key: str, required: bool = True, value: Any = None) -> int | None:
        """``key`` of config.json (or ``value``, a field inside one: ``rope_scaling.factor``): a
        positive integer (``64.0`` too); None where it is absent and not ``required``."""
        value = self.hf.get(key) if value is None and "." not in key else value
        if value is None:
            return self.need(key) if required else None  # need: refused, naming the field it lacks
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() or value <= 0:
            self.bad(key, value, "a positive integer")
        return int(value)

    def number(self, key: str, value: Any = None, default: float | None = None) -> float | None:
        """``key`` of config.json (or ``value``): a positive finite number, else ``default`` where absent."""
        value = self.hf.get(key) if value is None and "." not in key else value
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            self.bad(key, value, "a positive number")
        return float(value)

    def mapping(self, key: str, value: Any) -> dict[str, Any] | None:
        """``rope_scaling`` / ``rope_parameters``: a JSON object, or null."""
        if value is not None and not isinstance(value, dict):
            self.bad(key, value, "a JSON object (like {\"rope_type\": \"llama3\", \"factor\": 8.0}) or null")
        return value

    # -- sizes

    def rope(self) -> tuple[float, dict[str, Any] | None]:
        """The RoPE base and scaling: ``rope_theta`` / ``rope_scaling`` (transformers 4), or
        ``rope_parameters`` (transformers 5)."""
        params = self.mapping("rope_parameters", self.hf.get("rope_parameters")) or {}
        theta = self.number("rope_theta")
        if theta is None:
            theta = self.number("rope_parameters.rope_theta", params.get("rope_theta"), 10000.0)
        scaling = self.mapping("rope_scaling", self.hf.get("rope_scaling"))
        if scaling is None and (params.get("rope_type") or params.get("type") or "default") != "default":
            scaling = params
        if scaling and (scaling.get("rope_type") or scaling.get("type") or "default") == "default":
            scaling = None
        return theta, scaling

    def sizes(self) -> dict[str, Any]:
        """The builder's sizes; what would only fail in training (a count that is not a positive
        integer, heads that do not divide) is refused here, naming the field."""
        dim, heads = self.integer("hidden_size"), self.integer("num_attention_heads")
        kv = self.integer("num_key_value_heads", required=False) or heads
        if heads % kv:
            raise AutoModelError("model.path", self.shown, f"its config.json has num_key_value_heads={kv} and "
                                 f"num_attention_heads={heads}; num_attention_heads must be a multiple of "
                                 f"num_key_value_heads (each key/value head serves a group of query heads)")
        head_dim = self.integer("head_dim", required=False)
        if head_dim is None and dim % heads:
            raise AutoModelError("model.path", self.shown, f"its config.json has hidden_size={dim} and "
                                 f"num_attention_heads={heads} (and no head_dim); hidden_size must be a multiple "
                                 f"of num_attention_heads")
        gemma = self.family.startswith("gemma")
        args = {
            "vocab_size": self.integer("vocab_size"),
            "num_layers": self.integer("num_hidden_layers"),
            "num_heads": heads,
            "num_kv_heads": kv,
            "embed_dim": dim,
            "intermediate_dim": self.integer("intermediate_size"),
            "max_seq_len": self.integer("max_position_embeddings"),
            "norm_eps": self.number("rms_norm_eps", default=1e-6 if gemma else 1e-5),
        }
        if not gemma and head_dim and (dim % heads or head_dim != dim // heads):
            self.refuse(f" with head_dim {head_dim}, not hidden_size / num_attention_heads, "
                        f"which its torchtune builder assumes")
        act_key = "hidden_act" if self.hf.get("hidden_act") is not None else "hidden_activation"
        act = self.hf.get(act_key)
        if act is not None and not isinstance(act, str):
            self.bad(act_key, act, 'an activation\'s name, like "silu"')
        if not self.family.startswith("gemma") and act not in (None, "silu"):
            self.refuse(f" with hidden_act {act}")
        for bias in ("attention_bias", "mlp_bias"):
            if self.family != "qwen2" and self.hf.get(bias):
                self.refuse(f" with {bias}")
        return args

    # -- the families

    def section(self) -> dict[str, Any]:
        args = self.sizes()
        theta, scaling = self.rope()
        tied = self.hf.get("tie_word_embeddings")
        if tied is None:
            tied = self.family in ("gemma", "gemma2")
        elif not isinstance(tied, bool):
            self.bad("tie_word_embeddings", tied, "true or false")
        out = getattr(self, self.family)(args, theta, scaling, tied)
        family = out["family"]
        params = parameter_count(family, out["args"])
        files = self.checkpoint_files()
        self.check_embeddings(args, files)
        tokenizer = {"component": None, "path": None, "merges_file": None, "vocab_path": None, "merges_path": None,
                     "max_seq_len": min(MAX_SEQ_LEN, args["max_seq_len"]), "prompt_template": None,
                     **out.pop("tokenizer")}
        lora, full, (batch, checkpointing) = next((t[1], t[2], t[3]) for t in TIERS if params <= t[0])
        if params > 2e9 and args["vocab_size"] >= 150000:  # Qwen's 152k-token logits: torchtune's configs train 2
            batch = min(batch, 2)
        return {
            "name": model_name(self.dir),
            "architecture": self.arch,
            "parameters": params,
            **out,
            "tied_embeddings": tied or family in ("gemma", "gemma2"),
            "tokenizer": tokenizer,
            "checkpoint_files": files,
            "chars_per_token": 1.0 if args["vocab_size"] < 1000 else None,  # a character-level vocabulary
            # LoRA checkpoints: torchtune 0.6.1 saves no PEFT adapter for Phi (merged, as the catalogue's
            # phi4 says); any other family, the training group's own default (adapter), spelt out: auto.yaml
            # has the key for every dir, and oc.select would take a null for the value
            "training": {"batch_size": batch, "enable_activation_checkpointing": checkpointing,
                         "checkpoint": "merged" if family == "phi3" else "adapter"},
            "resources": {name: dict(zip(("gpus", "mem_gb", "epoch_min"), hint)) for name, hint in
                          (("lora", lora), ("full", full))},
        }

    def llama(self, args: dict, theta: float, scaling: dict | None, tied: bool) -> dict:
        llama3_vocab = args["vocab_size"] >= 128000  # Llama 3's tiktoken vocabulary (128256 tokens)
        if scaling is not None:
            kind = scaling.get("rope_type") or scaling.get("type")
            if kind != "llama3":
                self.refuse(f" with rope_scaling {kind}")
            for key, default in (("low_freq_factor", 1), ("high_freq_factor", 4), ("original_max_position_embeddings", 8192)):
                if self.number(f"rope_scaling.{key}", scaling.get(key), default) != default:
                    self.refuse(f" with rope_scaling {key} {scaling[key]} (torchtune's Llama 3.1 RoPE has {default})")
        factor = _num(self.number("rope_scaling.factor", scaling.get("factor"), 8)) if scaling else 1
        rope = {"rope_base": _num(theta)}
        if tied:  # Llama 3.2 1B/3B: the output layer is the embeddings; its RoPE is 3.1's (factor 1: plain RoPE)
            out = self.builders("llama3_2", "LLAMA3_2", {**args, **rope, "scale_factor": factor,
                                                         "tie_word_embeddings": True})
            version = "Llama 3.2"
        elif scaling is not None:  # Llama 3.1 / 3.3
            out = self.builders("llama3_1", "LLAMA3", {**args, **rope, "scale_factor": factor})
            version = "Llama 3.1"
        elif llama3_vocab:
            out = self.builders("llama3", "LLAMA3", {**args, **rope})
            version = "Llama 3"
        elif theta == 10000.0:  # torchtune's Llama 2 LoRA builder has no rope_base: its default
            out = self.builders("llama2", "LLAMA2", args)
            version = "Llama 2"
        else:  # the same layers, with the model's RoPE base (Code Llama's 1e6)
            out = self.builders("llama3", "LLAMA2", {**args, **rope}, module="llama3")
            version = "Llama 2"
        if llama3_vocab:
            tokenizer_file = "original/tokenizer.model"
            if not (self.dir / tokenizer_file).exists() and (self.dir / "tokenizer.model").exists():
                tokenizer_file = "tokenizer.model"
            out["tokenizer"] = {"component": "torchtune.models.llama3.llama3_tokenizer", "path": tokenizer_file}
            out["chat_template"] = "llama3"
        else:
            out["tokenizer"] = {"component": "torchtune.models.llama2.llama2_tokenizer", "path": "tokenizer.model",
                                "prompt_template": "torchtune.models.llama2.Llama2ChatTemplate"}
            out["chat_template"] = "llama2_inst"
        out["family"], out["version"] = "llama", version
        return out

    def mistral(self, args: dict, theta: float, scaling: dict | None, tied: bool) -> dict:
        if scaling is not None:
            self.refuse(f" with rope_scaling {scaling.get('rope_type') or scaling.get('type')}")
        if tied:
            self.refuse(" with tie_word_embeddings")
        out = self.builders("mistral", "MISTRAL", {**args, "rope_base": _num(theta)})
        out["tokenizer"] = {"component": "torchtune.models.mistral.mistral_tokenizer", "path": "tokenizer.model",
                            "prompt_template": "torchtune.models.mistral.MistralChatTemplate"}
        out.update(chat_template="mistral_inst", family="mistral", version="Mistral")
        return out

    def qwen2(self, args: dict, theta: float, scaling: dict | None, tied: bool) -> dict:
        if scaling is not None:
            self.refuse(f" with rope_scaling {scaling.get('rope_type') or scaling.get('type')}")
        if self.hf.get("use_sliding_window"):
            self.refuse(" with use_sliding_window")
        out = self.builders("qwen2", "QWEN2", {**args, "rope_base": _num(theta), "tie_word_embeddings": tied})
        qwen2_5 = self.qwen2_5_tokenizer()
        out["tokenizer"] = {"component": f"torchtune.models.{'qwen2_5.qwen2_5' if qwen2_5 else 'qwen2.qwen2'}_tokenizer",
                            "path": "vocab.json", "merges_file": "merges.txt"}
        out.update(chat_template="chatml", family="qwen2", version="Qwen2.5" if qwen2_5 else "Qwen2")
        return out

    def gemma(self, args: dict, theta: float, scaling: dict | None, tied: bool, family: str = "gemma") -> dict:
        if scaling is not None:
            self.refuse(f" with rope_scaling {scaling.get('rope_type') or scaling.get('type')}")
        head_dim = self.integer("head_dim", required=False) or args["embed_dim"] // args["num_heads"]
        gemma_args = {**args, "head_dim": head_dim, "rope_base": _num(theta)}
        if family == "gemma2":
            for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"):
                self.number(key)  # a positive number, or null
            gemma_args.update(
                hidden_capping_value=self.hf.get("attn_logit_softcapping", 50.0),
                final_capping_value=self.hf.get("final_logit_softcapping", 30.0),
                sliding_window_size=self.integer("sliding_window", required=False) or 4096,
                query_pre_attn_scalar=self.hf.get("query_pre_attn_scalar"),
            )
        out = self.builders(family, family.upper(), gemma_args)
        out["tokenizer"] = {"component": "torchtune.models.gemma.gemma_tokenizer", "path": "tokenizer.model",
                            "prompt_template": copy.deepcopy(chat.GEMMA_PROMPT)}
        out.update(chat_template="gemma", family=family, version="Gemma 2" if family == "gemma2" else "Gemma")
        return out

    def gemma2(self, args: dict, theta: float, scaling: dict | None, tied: bool) -> dict:
        return self.gemma(args, theta, scaling, tied, family="gemma2")

    def phi3(self, args: dict, theta: float, scaling: dict | None, tied: bool) -> dict:
        if scaling is not None:  # Phi-3-*-128k, Phi-3.5, Phi-4-mini: LongRoPE
            self.refuse(f" with rope_scaling {scaling.get('rope_type') or scaling.get('type')}")
        key = "partial_rotary_factor"
        partial = self.number(key) or self.number(f"rope_parameters.{key}", (self.hf.get("rope_parameters") or {}).get(key))
        if (partial or 1.0) != 1.0:  # Phi-4-mini: RoPE on part of each head
            self.refuse(f" with partial_rotary_factor {partial}")
        if tied:
            self.refuse(" with tie_word_embeddings")
        phi4 = args["vocab_size"] >= 100000  # Phi-4's tiktoken-like BPE (100352 tokens); Phi-3's is SentencePiece
        out = self.builders("phi3", "PHI4" if phi4 else "PHI3_MINI", {**args, "rope_base": _num(theta)})
        # cruijff's Phi tokenizers (torchtune's, laying out the turns as the model's own template and
        # tokenizer.json do: torchtune 0.6.1's lay them out otherwise), so the evals prompt with the dir's template
        if phi4:  # torchtune's phi4_tokenizer names its files vocab_path and merges_path
            out["tokenizer"] = {"component": "cruijff.finetune.phi_tokenizers.phi4_chat_tokenizer",
                                "vocab_path": "vocab.json", "merges_path": "merges.txt"}
        else:  # Phi-3: tokenizer.model, and tokenizer.json beside it (its added tokens)
            out["tokenizer"] = {"component": "cruijff.finetune.phi_tokenizers.phi3_chat_tokenizer",
                                "path": "tokenizer.model"}
        out.update(chat_template=None, family="phi3", version="Phi-4" if phi4 else "Phi-3")
        return out

    # -- files

    @staticmethod
    def builders(name: str, model_type: str, args: dict, module: str | None = None) -> dict:
        module = module or name
        return {"model_type": model_type, "component": f"torchtune.models.{module}.lora_{name}",
                "full_component": f"torchtune.models.{module}.{name}", "args": args}

    def qwen2_5_tokenizer(self) -> bool:
        """Qwen2.5's tokenizer (its special tokens: tool calls, fill-in-the-middle) unless the
        model dir's tokenizer files show Qwen2's."""
        for name in ("tokenizer_config.json", "tokenizer.json"):
            try:
                text = (self.dir / name).read_text()
            except (OSError, UnicodeDecodeError):
                continue
            if "<|im_start|>" in text:
                return "<|fim_prefix|>" in text or "<tool_call>" in text
        return True

    def checkpoint_files(self) -> list[str]:
        """The weight files: the shards a ``*.index.json`` names, else the single file. Shards
        (``model-00001-of-00004.safetensors``) without a readable index are refused, naming the index."""
        for index, single, shard in (("model.safetensors.index.json", "model.safetensors", "safetensors"),
                                     ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin")):
            try:
                weight_map, why = _weight_map((self.dir / index).read_text())
            except FileNotFoundError:
                weight_map, why = None, None
            except (OSError, UnicodeDecodeError) as e:
                weight_map, why = None, f"{type(e).__name__}: {e}"
            if weight_map:
                self.weight_map = weight_map
                return sorted(set(weight_map.values()))
            if (self.dir / single).exists():
                return [single]
            shards = sorted(p.name for p in self.dir.glob(f"*-of-*.{shard}") if re.search(r"-\d+-of-\d+\.", p.name))
            what = shards and f"{len(shards)} weight shards ({shards[0]}{' … ' + shards[-1] if len(shards) > 1 else ''})"
            if why is not None:
                raise AutoModelError("model.path", self.shown, f"{f'has {what} but ' if shards else ''}its {index}, "
                                     f"which names the shard of each weight, is not readable ({why})")
            if shards:
                raise AutoModelError("model.path", self.shown, f"has {what} and no {index}, which names the shard "
                                     f"of each weight")
        return ["model.safetensors"]  # none there: validation names the file the dir lacks

    def check_embeddings(self, args: dict[str, Any], files: list[str]) -> None:
        """The embeddings' shape in the weights (the safetensors header of the file that holds them,
        not the weights) is vocab_size x hidden_size, as the builder makes them; unread where the
        header is not there to read."""
        name = "model.embed_tokens.weight"
        file = self.weight_map.get(name) or (files[0] if len(files) == 1 else None)
        header = _safetensors_header(self.dir / file) if file and file.endswith(".safetensors") else None
        entry = (header or {}).get(name)
        shape = entry.get("shape") if isinstance(entry, dict) else None
        want = [args["vocab_size"], args["embed_dim"]]
        if isinstance(shape, list) and shape != want:
            raise AutoModelError("model.path", self.shown, f"its {file} holds {name} of shape "
                                 f"{' x '.join(map(str, shape))}, but its config.json has vocab_size x hidden_size "
                                 f"{want[0]} x {want[1]}")


def _weight_map(text: str) -> tuple[dict[str, str] | None, str | None]:
    """The weight_map of a weight index's text (tensor name -> shard file), or None and why not."""
    try:
        index = json.loads(text)
    except ValueError as e:
        return None, f"not JSON: {e}"
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not weight_map or not isinstance(weight_map, dict) or not all(
            isinstance(f, str) and f for f in weight_map.values()):
        return None, "no weight_map of tensor name -> shard file"
    return weight_map, None


def _safetensors_header(path: Path) -> dict[str, Any] | None:
    """The JSON header of a safetensors file (8 bytes of its length, little-endian, then the
    header), without its tensors; None where there is none to read."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100 << 20:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None
