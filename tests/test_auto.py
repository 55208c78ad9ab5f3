"""``model=auto model.path=DIR``: the model section read from DIR/config.json.

For each supported family a tiny config.json of its architecture (the key names Hugging Face writes)
with stand-in tokenizer and weight files: the composed section names the family's torchtune builders,
checkpointer model_type, tokenizer and files, chat template; the rendered builder, made on the
``meta`` device, has the parameter count computed from the sizes. The published configs of
Llama-3.2-1B-Instruct and Qwen2.5-7B-Instruct give those models' exact sizes, and the catalogue's
own resource hints. An architecture torchtune cannot fine-tune is refused in one line. The embedded
tiny Llama, described from its dir, trains and evaluates as ``model=tiny_llama`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from torchtune import config as tt_config

from conftest import CHATS, compose_config, launch
from cruijff import config, finetune
from cruijff.config import ConfigError, auto, validate

BASE = {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-05, "hidden_act": "silu",
        "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0", "use_cache": True}
LLAMA = {**BASE, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
         "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1}
LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
GEMMA = {**BASE, "num_key_value_heads": 1, "head_dim": 32, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
         "tie_word_embeddings": True, "vocab_size": 384}
SPM = ["tokenizer.model"]
QWEN = ["vocab.json", "merges.txt"]

# family -> (config.json, tokenizer files, builder, model_type, tokenizer builder, chat template, special args)
FAMILIES = {
    "llama2": ({**LLAMA, "vocab_size": 320, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False},
               SPM, "llama2.lora_llama2", "LLAMA2", "llama2.llama2_tokenizer", "llama2_inst", {}),
    "codellama": ({**LLAMA, "vocab_size": 320, "rope_theta": 1000000.0, "tie_word_embeddings": False},
                  SPM, "llama3.lora_llama3", "LLAMA2", "llama2.llama2_tokenizer", "llama2_inst",
                  {"rope_base": 1000000}),
    "llama3": ({**LLAMA, "vocab_size": 128256, "rope_theta": 500000.0, "tie_word_embeddings": False},
               ["original/tokenizer.model"], "llama3.lora_llama3", "LLAMA3", "llama3.llama3_tokenizer", "llama3",
               {"rope_base": 500000}),
    "llama3_1": ({**LLAMA, "vocab_size": 128256, "rope_theta": 500000.0, "rope_scaling": LLAMA31_ROPE,
                  "tie_word_embeddings": False},
                 ["original/tokenizer.model"], "llama3_1.lora_llama3_1", "LLAMA3", "llama3.llama3_tokenizer", "llama3",
                 {"rope_base": 500000, "scale_factor": 8}),
    # transformers 5 writes the RoPE settings as rope_parameters
    "llama3_1_tf5": ({**LLAMA, "vocab_size": 128256, "tie_word_embeddings": False,
                      "rope_parameters": {**LLAMA31_ROPE, "rope_theta": 500000.0}, "transformers_version": "5.0.0"},
                     ["original/tokenizer.model"], "llama3_1.lora_llama3_1", "LLAMA3", "llama3.llama3_tokenizer",
                     "llama3", {"rope_base": 500000, "scale_factor": 8}),
    "llama3_2": ({**LLAMA, "vocab_size": 128256, "rope_theta": 500000.0,
                  "rope_scaling": {**LLAMA31_ROPE, "factor": 32.0}, "tie_word_embeddings": True},
                 ["original/tokenizer.model"], "llama3_2.lora_llama3_2", "LLAMA3_2", "llama3.llama3_tokenizer",
                 "llama3", {"rope_base": 500000, "scale_factor": 32, "tie_word_embeddings": True}),
    "qwen2_5": ({**BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 448,
                 "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False,
                 "sliding_window": 32768, "max_window_layers": 2},
                QWEN, "qwen2.lora_qwen2", "QWEN2", "qwen2_5.qwen2_5_tokenizer", "chatml",
                {"rope_base": 1000000, "tie_word_embeddings": True}),
    "mistral": ({**BASE, "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 384,
                 "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False},
                SPM, "mistral.lora_mistral", "MISTRAL", "mistral.mistral_tokenizer", "mistral_inst",
                {"rope_base": 1000000}),
    "gemma": ({**GEMMA, "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_act": "gelu"},
              SPM, "gemma.lora_gemma", "GEMMA", "gemma.gemma_tokenizer", "gemma", {"head_dim": 32, "rope_base": 10000}),
    "gemma2": ({**GEMMA, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
                "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": 50.0,
                "final_logit_softcapping": 30.0, "sliding_window": 128, "query_pre_attn_scalar": 32},
               SPM, "gemma2.lora_gemma2", "GEMMA2", "gemma.gemma_tokenizer", "gemma",
               {"head_dim": 32, "rope_base": 10000, "hidden_capping_value": 50.0, "final_capping_value": 30.0,
                "sliding_window_size": 128, "query_pre_attn_scalar": 32}),
    "phi3": ({**BASE, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 512,
              "num_key_value_heads": 4, "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
              "original_max_position_embeddings": 512},
             SPM, "phi3.lora_phi3", "PHI3_MINI", "cruijff.finetune.phi_tokenizers.phi3_chat_tokenizer", None, {"rope_base": 10000}),
    "phi4": ({**BASE, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 100352,
              "rope_theta": 250000.0, "rope_scaling": None, "tie_word_embeddings": False},
             ["vocab.json", "merges.txt"], "phi3.lora_phi3", "PHI4", "cruijff.finetune.phi_tokenizers.phi4_chat_tokenizer", None, {"rope_base": 250000}),
}
# torchtune's Gemma LoRA builders take no apply_lora_to_output (the output layer is the embeddings),
# which cruijff's render passes to every LoRA builder
NO_OUTPUT_LORA_ARG = ("gemma", "gemma2")


def model_dir(root: Path, hf: dict, tokenizer_files=(), shards: int = 1, extra: dict | None = None) -> Path:
    """A model dir of ``hf`` (config.json) with empty stand-ins of its weights and tokenizer files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(hf, indent=2))
    if shards == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
        weight_map = {f"model.layers.{i}.weight": names[i % shards] for i in range(2 * shards)}
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in [*names, *tokenizer_files]:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    for name, content in (extra or {}).items():
        (root / name).write_text(content)
    return root


def build_on_meta(section: dict) -> tuple[int, int]:
    """(base, LoRA) parameters of a rendered ``model:`` section, built on the meta device."""
    with torch.device("meta"):
        model = tt_config.instantiate(OmegaConf.create(section))
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return base, sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_is_described_from_its_config_json(family, tmp_path):
    hf, tok_files, builder, model_type, tokenizer, template, special = FAMILIES[family]
    shards = 2 if family == "llama3_1" else 1
    path = model_dir(tmp_path / f"My-{family}-model", hf, tok_files, shards)
    cfg = compose_config("model=auto", f"model.path={path}")
    m = cfg.model
    # torchtune saves no Phi adapter: Phi's LoRA runs save merged weights, as the catalogue's phi4 does
    assert cfg.training.checkpoint == ("merged" if family.startswith("phi") else "adapter")
    assert m.name == f"My-{family}-model"
    assert m.component == f"torchtune.models.{builder}"
    assert m.full_component == f"torchtune.models.{builder.replace('lora_', '')}"
    assert m.model_type == model_type
    assert m.tokenizer.component == (tokenizer if tokenizer.startswith("cruijff.") else f"torchtune.models.{tokenizer}")
    assert m.chat_template == template
    assert validate(cfg)  # every file it names is in the dir; the chat template is one cruijff takes
    named = config.model_files(m)
    assert set(named) - set(tok_files) == ({"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
                                           if shards == 2 else {"model.safetensors"})
    assert set(named) - set(m.checkpoint_files) == set(tok_files)
    args = OmegaConf.to_container(m.args)
    sizes = {"vocab_size": hf["vocab_size"], "num_layers": 2, "num_heads": 4, "num_kv_heads": hf["num_key_value_heads"],
             "embed_dim": 64, "intermediate_dim": 172, "max_seq_len": 512, "norm_eps": hf["rms_norm_eps"]}
    assert args == {**sizes, **special}
    assert m.tied_embeddings is (family in ("llama3_2", "qwen2_5", "gemma", "gemma2"))
    assert m.tokenizer.max_seq_len == 512  # the model's limit, under 2048

    expected = auto.parameter_count(auto.describe(path)["family"], args)
    assert auto.describe(path)["parameters"] == expected
    conf = finetune.render(cfg, tmp_path / "run", path, tmp_path / "data.json")
    section = dict(conf["model"])
    if family in NO_OUTPUT_LORA_ARG:  # see test_gemma_lora_builders_take_the_rendered_section
        assert section.pop("apply_lora_to_output", False) is False
    base, lora = build_on_meta(section)
    assert base == expected, f"{family}: {base} on meta, {expected} from the sizes"
    assert 0 < lora < base
    full = compose_config("model=auto", f"model.path={path}", "peft=none")
    assert build_on_meta(finetune.render(full, tmp_path / "run", path, tmp_path / "data.json")["model"])[0] == expected
    assert conf["checkpointer"]["model_type"] == model_type
    assert conf["checkpointer"]["checkpoint_files"] == list(m.checkpoint_files)


def test_gemma_lora_builders_take_the_rendered_section(tmp_path):
    """torchtune's lora_gemma / lora_gemma2 have no apply_lora_to_output: render must leave it out."""
    hf, tok_files = FAMILIES["gemma2"][:2]
    path = model_dir(tmp_path / "gemma2", hf, tok_files)
    conf = finetune.render(compose_config("model=auto", f"model.path={path}"), tmp_path / "run", path, tmp_path / "d")
    assert "apply_lora_to_output" not in conf["model"]
    build_on_meta(conf["model"])


def test_phi_saves_merged_checkpoints_and_an_adapter_checkpoint_is_refused_in_one_line(tmp_path):
    """As the catalogue's phi4: its training hint makes training.checkpoint merged; adapter, set, is refused."""
    hf, tok_files = FAMILIES["phi3"][:2]
    path = model_dir(tmp_path / "phi3", hf, tok_files)
    cfg = compose_config("model=auto", f"model.path={path}")
    assert cfg.training.checkpoint == "merged" and validate(cfg)
    catalogue = compose_config("model=phi4", f"model.path={path}")
    assert cfg.training.checkpoint == catalogue.training.checkpoint
    with pytest.raises(ConfigError, match="torchtune 0.6.1 saves no PEFT adapter for PHI3_MINI models; use "
                                          "training.checkpoint=merged"):
        validate(compose_config("model=auto", f"model.path={path}", "training.checkpoint=adapter"))
    llama = model_dir(tmp_path / "llama", *FAMILIES["llama2"][:2])
    assert compose_config("model=auto", f"model.path={llama}").training.checkpoint == "adapter"
    assert compose_config("model=auto", f"model.path={llama}", "training.checkpoint=merged").training.checkpoint == \
        "merged"


def test_phi4_tokenizer_files_are_rendered(tmp_path):
    """torchtune's phi4_tokenizer takes vocab_path and merges_path, not path and merges_file."""
    hf, tok_files = FAMILIES["phi4"][:2]
    path = model_dir(tmp_path / "phi4", hf, tok_files)
    cfg = compose_config("model=auto", f"model.path={path}")
    assert (cfg.model.tokenizer.vocab_path, cfg.model.tokenizer.merges_path) == ("vocab.json", "merges.txt")
    conf = finetune.render(cfg, tmp_path / "run", path, tmp_path / "data.json")
    assert conf["tokenizer"]["vocab_path"] == str(path / "vocab.json")


def test_qwen2_tokenizer_when_the_dirs_tokenizer_has_no_qwen2_5_tokens(tmp_path):
    hf, tok_files = FAMILIES["qwen2_5"][:2]
    added = {"151643": {"content": "<|endoftext|>"}, "151644": {"content": "<|im_start|>"},
             "151645": {"content": "<|im_end|>"}}
    qwen2 = model_dir(tmp_path / "Qwen2-0.5B", hf, tok_files,
                      extra={"tokenizer_config.json": json.dumps({"added_tokens_decoder": added})})
    assert compose_config("model=auto", f"model.path={qwen2}").model.tokenizer.component == \
        "torchtune.models.qwen2.qwen2_tokenizer"
    added["151659"] = {"content": "<|fim_prefix|>"}
    qwen2_5 = model_dir(tmp_path / "Qwen2.5-0.5B", hf, tok_files,
                        extra={"tokenizer_config.json": json.dumps({"added_tokens_decoder": added})})
    assert compose_config("model=auto", f"model.path={qwen2_5}").model.tokenizer.component == \
        "torchtune.models.qwen2_5.qwen2_5_tokenizer"


# The published config.json files (Hugging Face, meta-llama/Llama-3.2-1B-Instruct and
# Qwen/Qwen2.5-7B-Instruct), as they are.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.45.0.dev0",
    "use_cache": True, "vocab_size": 128256,
}
QWEN_2_5_7B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02, "intermediate_size": 18944,
    "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2", "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 152064,
}
PUBLISHED = {  # name -> (config.json, shards, tokenizer files, parameters, the catalogue's model)
    "Llama-3.2-1B-Instruct": (LLAMA_3_2_1B, 1, ["original/tokenizer.model"], 1_235_814_400, "llama3_2_1b_instruct"),
    "Qwen2.5-7B-Instruct": (QWEN_2_5_7B, 4, QWEN, 7_615_616_512, "qwen2_5_7b_instruct"),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_give_the_published_sizes_and_the_catalogues_hints(name, tmp_path):
    hf, shards, tok_files, params, catalogued = PUBLISHED[name]
    path = model_dir(tmp_path / name, hf, tok_files, shards)
    cfg = compose_config("model=auto", f"model.path={path}")
    assert auto.describe(path)["parameters"] == params
    conf = finetune.render(cfg, tmp_path / "run", path, tmp_path / "data.json")
    assert build_on_meta(conf["model"])[0] == params
    # the same model, weight by weight, as the catalogue's builder makes it
    cat = compose_config(f"model={catalogued}", f"model.path={path}")
    ours = finetune.render(cat, tmp_path / "run", path, tmp_path / "data.json")
    with torch.device("meta"):
        shapes = [{n: tuple(p.shape) for n, p in tt_config.instantiate(OmegaConf.create(s)).state_dict().items()}
                  for s in (conf["model"], ours["model"])]
    assert shapes[0] == shapes[1]
    for key in ("model_type", "tied_embeddings", "chat_template", "checkpoint_files"):
        assert cfg.model[key] == cat.model.get(key, False), key
    assert OmegaConf.to_container(cfg.model.resources, resolve=True) == \
        OmegaConf.to_container(cat.model.resources, resolve=True)
    assert (cfg.training.batch_size, cfg.training.enable_activation_checkpointing) == \
        (cat.training.batch_size, cat.training.enable_activation_checkpointing)
    for key in ("component", "path", "merges_file", "prompt_template"):
        assert cfg.model.tokenizer.get(key) == cat.model.tokenizer.get(key), key
    full = compose_config("model=auto", f"model.path={path}", "peft=none", "cluster=slurm")
    cat_full = compose_config(f"model={catalogued}", f"model.path={path}", "peft=none", "cluster=slurm")
    for key in ("gpus_per_node", "mem_gb", "timeout_min"):
        assert full.cluster[key] == cat_full.cluster[key], key


# Published sizes (config.json key names), against torchtune's own builder of the model.
OTHERS = {
    "Llama-3.1-8B-Instruct": ({**LLAMA, "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
                               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                               "max_position_embeddings": 131072, "rope_theta": 500000.0, "rope_scaling": LLAMA31_ROPE,
                               "tie_word_embeddings": False}, "llama3_1.llama3_1_8b"),
    "gemma-2-2b-it": ({**GEMMA, "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "vocab_size": 256000,
                       "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                       "num_key_value_heads": 4, "head_dim": 256, "max_position_embeddings": 8192,
                       "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "sliding_window": 4096,
                       "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh"}, "gemma2.gemma2_2b"),
    "Phi-3-mini-4k-instruct": ({**BASE, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064,
                                "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
                                "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                                "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False},
                               "phi3.phi3_mini"),
}


@pytest.mark.parametrize("name", OTHERS)
def test_published_configs_make_torchtunes_own_models(name, tmp_path):
    import importlib

    hf, builder = OTHERS[name]
    path = model_dir(tmp_path / name, hf)
    described = auto.describe(path)
    module, fn = f"torchtune.models.{builder}".rsplit(".", 1)
    with torch.device("meta"):
        ours = tt_config.instantiate(OmegaConf.create({"_component_": described["full_component"], **described["args"]}))
        theirs = getattr(importlib.import_module(module), fn)()
    shapes = [{n: tuple(p.shape) for n, p in m.state_dict().items()} for m in (ours, theirs)]
    assert shapes[0] == shapes[1]
    assert described["parameters"] == sum(p.numel() for p in theirs.parameters())


def test_a_dry_run_plans_an_auto_model_with_its_estimates(tmp_path):
    hf, shards, tok_files = PUBLISHED["Llama-3.2-1B-Instruct"][:3]
    path = model_dir(tmp_path / "Llama-3.2-1B-Instruct", hf, tok_files, shards)
    proc = launch("model=auto", f"model.path={path}", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "path-Llama-3.2-1B-Instruct" in proc.stdout and "new" in proc.stdout
    # a sweep's plan has the estimates (here the demo grid, on a GPU)
    proc = launch("-m", "model=auto", f"model.path={path}", "dry_run=true", "training.device=cuda", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for line in ("GPU memory:", "disk:", "time:", "GPU-hours"):
        assert line in proc.stdout, proc.stdout
    gb = float(proc.stdout.split("GPU memory: ")[1].split(" GB")[0])
    assert 2.4 < gb < 2.6  # 1.24B bf16 weights, and the adapters' gradients and AdamW state
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("arch,model_type", [("Qwen3ForCausalLM", "qwen3"), ("Gemma3ForCausalLM", "gemma3")])
def test_an_architecture_torchtune_cannot_train_is_refused_in_one_line(arch, model_type, tmp_path):
    path = model_dir(tmp_path / "new-model", {**BASE, "architectures": [arch], "model_type": model_type,
                                              "vocab_size": 151936, "head_dim": 128}, SPM)
    proc = launch("model=auto", f"model.path={path}", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"cruijff: error: model.path='{path}': its config.json is a {arch} model, which torchtune 0.6.1 cannot "
        f"fine-tune; supported: {auto.SUPPORTED}"]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("change,reason", [
    ({"rope_scaling": {"type": "longrope", "long_factor": [1.0], "short_factor": [1.0]}}, "with rope_scaling longrope"),
    ({"partial_rotary_factor": 0.75}, "with partial_rotary_factor 0.75"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}},
     "with partial_rotary_factor 0.75"),  # as transformers 5 writes it
])
def test_a_feature_torchtune_lacks_is_refused_in_one_line(change, reason, tmp_path):
    path = model_dir(tmp_path / "phi", {**FAMILIES["phi3"][0], **change}, SPM)
    with pytest.raises(ConfigError) as e:
        auto.describe(path)
    assert str(e.value) == (f"model.path='{path}': its config.json is a Phi3ForCausalLM model {reason}, which "
                            f"torchtune 0.6.1 cannot fine-tune; supported: {auto.SUPPORTED}")


HAS = "its config.json has "
HEADS = ("num_attention_heads must be a multiple of num_key_value_heads (each key/value head serves a group "
         "of query heads)")


@pytest.mark.parametrize("change,reason", [
    ({"hidden_size": "big"}, HAS + "hidden_size='big'; it must be a positive integer"),
    ({"num_attention_heads": 0}, HAS + "num_attention_heads=0; it must be a positive integer"),
    ({"num_hidden_layers": 2.5}, HAS + "num_hidden_layers=2.5; it must be a positive integer"),
    ({"vocab_size": 0}, HAS + "vocab_size=0; it must be a positive integer"),
    ({"vocab_size": -320}, HAS + "vocab_size=-320; it must be a positive integer"),
    ({"intermediate_size": True}, HAS + "intermediate_size=True; it must be a positive integer"),
    ({"rms_norm_eps": "1e-5"}, HAS + "rms_norm_eps='1e-5'; it must be a positive number"),
    ({"rope_theta": -1}, HAS + "rope_theta=-1; it must be a positive number"),
    ({"rope_scaling": "linear"},
     HAS + """rope_scaling='linear'; it must be a JSON object (like {"rope_type": "llama3", "factor": 8.0}) or null"""),
    ({"rope_scaling": {**LLAMA31_ROPE, "factor": "8"}}, HAS + "rope_scaling.factor='8'; it must be a positive number"),
    ({"tie_word_embeddings": "false"}, HAS + "tie_word_embeddings='false'; it must be true or false"),
    ({"architectures": "LlamaForCausalLM"},
     HAS + """architectures='LlamaForCausalLM'; it must be a list of architecture names, like ["LlamaForCausalLM"]"""),
    ({"model_type": 7, "architectures": None}, HAS + 'model_type=7; it must be a name, like "llama"'),
    ({"num_key_value_heads": 3}, HAS + f"num_key_value_heads=3 and num_attention_heads=4; {HEADS}"),
    ({"hidden_size": 66}, HAS + "hidden_size=66 and num_attention_heads=4 (and no head_dim); hidden_size must be a "
                                "multiple of num_attention_heads"),
])
def test_a_config_json_field_of_the_wrong_kind_is_refused_naming_it(change, reason, tmp_path):
    """What would only fail in training (or in reading the section: a Python error under another
    key) is refused as the model is described, in one line naming config.json's field."""
    path = model_dir(tmp_path / "m", {**FAMILIES["llama2"][0], **change}, SPM)
    with pytest.raises(ConfigError) as e:
        auto.describe(path)
    assert str(e.value) == f"model.path='{path}': {reason}"


def test_a_bad_config_json_field_is_one_line_under_model_path(tmp_path):
    """Not training.batch_size's interpolation error (the first key to read the section): one line, exit 2."""
    path = model_dir(tmp_path / "m", {**FAMILIES["qwen2_5"][0], "hidden_size": "big"}, QWEN)
    proc = launch("model=auto", f"model.path={path}", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"cruijff: error: model.path='{path}': its config.json has hidden_size='big'; "
                                        f"it must be a positive integer"]
    assert not (tmp_path / "outputs").exists()
    gemma = model_dir(tmp_path / "g", {**FAMILIES["gemma"][0], "num_key_value_heads": 3}, SPM)
    with pytest.raises(ConfigError, match=f"num_key_value_heads=3 and num_attention_heads=4; {re.escape(HEADS)}$"):
        compose_config("model=auto", f"model.path={gemma}").model.component


def safetensors_file(path: Path, tensors: dict[str, list[int]]) -> None:
    """A safetensors file's header for tensors of these shapes (bf16), and no data: the header alone is read."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob)


def test_embeddings_of_another_shape_than_config_json_says_are_refused(tmp_path):
    """The embeddings' shape, from the safetensors header of the file that holds them (the index's
    shard), is vocab_size x hidden_size: else refused, naming both."""
    hf, tok_files = FAMILIES["llama2"][:2]
    path = model_dir(tmp_path / "single", hf, tok_files)
    safetensors_file(path / "model.safetensors", {"model.embed_tokens.weight": [320, 64], "lm_head.weight": [320, 64]})
    assert auto.describe(path)["checkpoint_files"] == ["model.safetensors"]
    safetensors_file(path / "model.safetensors", {"model.embed_tokens.weight": [32000, 64]})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # the dir's change, as a new file moved in makes
    with pytest.raises(ConfigError) as e:
        auto.describe(path)
    assert str(e.value) == (f"model.path='{path}': its model.safetensors holds model.embed_tokens.weight of shape "
                            f"32000 x 64, but its config.json has vocab_size x hidden_size 320 x 64")
    sharded = model_dir(tmp_path / "sharded", hf, tok_files, shards=2)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors",
                                            "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    safetensors_file(sharded / "model-00002-of-00002.safetensors", {"model.embed_tokens.weight": [320, 32]})
    with pytest.raises(ConfigError, match=r"its model-00002-of-00002.safetensors holds model.embed_tokens.weight of "
                                          r"shape 320 x 32, but its config.json has vocab_size x hidden_size 320 x 64$"):
        compose_config("model=auto", f"model.path={sharded}").model.checkpoint_files


def test_shards_without_a_readable_index_are_refused_naming_the_index(tmp_path):
    hf, tok_files = FAMILIES["llama3_1"][:2]
    path = model_dir(tmp_path / "llama", hf, tok_files, shards=3)
    (path / "model.safetensors.index.json").unlink()
    with pytest.raises(ConfigError) as e:
        compose_config("model=auto", f"model.path={path}").model.checkpoint_files
    assert str(e.value) == (f"model.path='{path}': has 3 weight shards (model-00001-of-00003.safetensors … "
                            f"model-00003-of-00003.safetensors) and no model.safetensors.index.json, which names the "
                            f"shard of each weight")
    for garbled, why in (('{"weight_map": ', "not JSON: Expecting value: line 1 column 16 (char 15)"),
                         ('{"metadata": {}}', "no weight_map of tensor name -> shard file"),
                         ('{"weight_map": ["model-00001-of-00003.safetensors"]}',
                          "no weight_map of tensor name -> shard file")):
        (path / "model.safetensors.index.json").write_text(garbled)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        with pytest.raises(ConfigError) as e:
            auto.describe(path)
        assert str(e.value) == (f"model.path='{path}': has 3 weight shards (model-00001-of-00003.safetensors … "
                                f"model-00003-of-00003.safetensors) but its model.safetensors.index.json, which names "
                                f"the shard of each weight, is not readable ({why})")
    for shard in path.glob("model-*.safetensors"):
        shard.unlink()
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    with pytest.raises(ConfigError, match=r"^model.path='.*': its model.safetensors.index.json, which names the shard "
                                          r"of each weight, is not readable \(no weight_map"):
        auto.describe(path)


def test_a_dir_without_config_json_or_lacking_a_shard_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="has no config.json"):
        compose_config("model=auto", f"model.path={tmp_path}").model.component
    hf, tok_files = FAMILIES["llama3_1"][:2]
    path = model_dir(tmp_path / "llama", hf, tok_files, shards=2)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"lacks model-00002-of-00002.safetensors, named by model llama$"):
        validate(compose_config("model=auto", f"model.path={path}"))
    proc = launch("model=auto", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "cruijff: error: model.path=???: a value is required: model=auto reads the model's config.json from its "
        "local directory"]


def test_the_description_is_read_again_when_config_json_changes(tmp_path):
    hf, tok_files = FAMILIES["llama2"][:2]
    path = model_dir(tmp_path / "m", hf, tok_files)
    first = auto.describe(path)
    assert auto.describe(path) == first
    first["args"]["num_layers"] = 99  # a copy: the cached description is not changed through it
    assert auto.describe(path)["args"]["num_layers"] == 2
    (path / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 3}))
    os.utime(path / "config.json", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert auto.describe(path)["args"]["num_layers"] == 3


def test_an_auto_models_args_set_key_by_key_are_refused_in_one_line(tmp_path, tiny_model_dir):
    """Set on the command line or by an experiment, model.args would replace every size read from
    config.json (Hydra merges a dict over the computed one): refused, naming the key, nothing written."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "wide.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: auto\nexperiment:\n  name: wide\n"
        "model:\n  args:\n    norm_eps: 1.0e-6\n")
    why = ("model=auto reads the architecture (model.args) from the model dir's config.json; change it there, "
           "or save the run's model section (outputs/…/.hydra/config.yaml) as conf/model/<name>.yaml and set it there")
    for args, shown in ((["model=auto", "model.args.norm_eps=1e-6"], "model.args.norm_eps='1e-6'"),
                        (["model=auto", "+model.args.bogus=1"], "model.args.bogus='1'"),
                        (["experiment=wide"], "model.args={'norm_eps': 1e-06}")):
        proc = launch(*args, f"model.path={tiny_model_dir}", "dry_run=true", cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert proc.stderr.splitlines() == [f"cruijff: error: {shown}: {why}"], proc.stderr
        assert not (tmp_path / "outputs").exists()


def test_two_auto_models_in_one_sweep_have_distinct_names(tmp_path):
    hf, tok_files = FAMILIES["llama2"][:2]
    names = {compose_config("model=auto", f"model.path={model_dir(tmp_path / d, hf, tok_files)}").model.name
             for d in ("Llama-2-7b-hf", "Llama-2-7b-chat-hf")}
    assert names == {"Llama-2-7b-hf", "Llama-2-7b-chat-hf"}
    snapshot = model_dir(tmp_path / "models--meta-llama--Llama-2-7b-hf" / "snapshots" / "01c7f73d", hf, tok_files)
    assert compose_config("model=auto", f"model.path={snapshot}").model.name == "Llama-2-7b-hf"
    odd = model_dir(tmp_path / "my model (v2)", hf, tok_files)
    config.check_name("model.name", compose_config("model=auto", f"model.path='{odd}'").model.name)


# ----------------------------------------------------------------------------------------------
# train/eval prompt parity of the families' own templates (as tests/test_catalogue.py checks the
# catalogue's): torchtune's tokenizer, built from the rendered finetune.yaml, tokenizes a record; the
# chat template, rendered as inspect's hf provider renders it, after the BOS torchtune starts with,
# must be exactly the text training put before the answer. Llama 2's stand-in is the embedded tiny
# model's SentencePiece model (a leading space before each piece, as Llama 2's); Gemma's, one trained
# here as Gemma's is made: no leading space, its turn markers as pieces of their own.

RECORDS = [*CHATS, [{"role": "user", "content": "  Spaces around: x \n"}, {"role": "assistant", "content": "X"}]]


def gemma_like_spm(dest: Path) -> None:
    import io
    import random
    import string

    import sentencepiece as spm

    rng = random.Random(0)
    chars = string.ascii_letters + string.digits + string.punctuation
    lines = ["".join(rng.choice(chars + "   ") for _ in range(40)) for _ in range(500)] + [chars]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="char", vocab_size=400, hard_vocab_limit=False,
        byte_fallback=True, character_coverage=1.0, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=["<start_of_turn>", "<end_of_turn>"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False, num_threads=1,
        minloglevel=2)
    dest.write_bytes(model.getvalue())


def _as_text(tok, ids: list[int]) -> str:
    spm = tok._spm_model.spm_model
    pieces = [spm.id_to_piece(i) for i in ids]
    pieces = [chr(int(p[3:5], 16)) if p.startswith("<0x") else p for p in pieces]  # byte fallback
    # the space a leading-space SentencePiece model puts before a text's first piece after BOS is
    # the one the model's own tokenizer adds again to the prompt's text
    return "".join(pieces).replace("\u2581", " ").replace("<s> ", "<s>")


@pytest.mark.parametrize("family", ["llama2", "gemma2"])
def test_eval_prompts_are_laid_out_as_training_saw_them(family, tmp_path, tiny_model_dir):
    import shutil

    from torchtune.data import Message
    from transformers import AutoTokenizer

    from cruijff.config import chat

    hf, tok_files = FAMILIES[family][:2]
    path = model_dir(tmp_path / family, hf, tok_files)
    if family == "llama2":
        shutil.copy(tiny_model_dir / "tokenizer.model", path / "tokenizer.model")
    else:
        gemma_like_spm(path / "tokenizer.model")
    cfg = compose_config("model=auto", f"model.path={path}")
    conf = finetune.render(cfg, tmp_path / "run", path, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    renderer = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # any tokenizer renders a template
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        trained = _as_text(tok, tokens)
        prompt = _as_text(tok, [tok.bos_id]) + renderer.apply_chat_template(
            record[:-1], chat_template=template, tokenize=False, add_generation_prompt=True)
        assert trained.startswith(prompt), f"{family}:\n trained {trained!r}\n prompt  {prompt!r}"
        rest = trained[len(prompt):]
        assert rest.lstrip(" ").startswith(record[-1]["content"].strip()), f"{family}: after the prompt {rest!r}"
        first_answer_token = next(i for i, m in enumerate(mask) if not m)
        assert len(_as_text(tok, tokens[:first_answer_token])) <= len(prompt)  # no trained token in the prompt
        # the whole record, answer and all, is laid out as training saw it
        assert renderer.apply_chat_template(record, chat_template=template, tokenize=False) == \
            trained[len(_as_text(tok, [tok.bos_id])):]


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_models_dir_trains_and_evaluates_as_tiny_llama(tmp_path, tiny_model_dir):
    """The embedded tiny Llama (a Llama 2 architecture), described from its dir: the same torchtune
    model and checkpointer as model=tiny_llama's catalogue file; a smoke run trains and evaluates."""
    hf = json.loads((tiny_model_dir / "config.json").read_text())
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["vocab_size"] < 32000
    launch("model=auto", f"model.path={tiny_model_dir}", "training=smoke", cwd=tmp_path, check=True)
    [run_dir] = (tmp_path / "outputs" / "demo").glob("model-auto_path-*_training-smoke")
    rendered = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    tiny = finetune.render(compose_config("training=smoke"), run_dir, tiny_model_dir, tmp_path / "data.json")
    assert rendered["model"] == tiny["model"]
    assert rendered["checkpointer"] == tiny["checkpointer"]
    assert rendered["tokenizer"]["path"] == tiny["tokenizer"]["path"]
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.model.name == tiny_model_dir.name and saved.model.component == "torchtune.models.llama2.lora_llama2"
    results = json.loads((run_dir / "eval" / "epoch_0" / "results.json").read_text())
    assert results  # the fine-tuned checkpoint was evaluated


def test_a_copy_of_a_model_dir_under_another_name_is_the_same_run(tmp_path, tiny_model_dir):
    """A run's identity is the model's content: model=auto's name (the dir's) is not in the hash;
    a name set by hand is, and other content is another run."""
    import shutil

    from cruijff.config import config_hash

    copy = tmp_path / "my-derivative"
    shutil.copytree(tiny_model_dir, copy)

    def chash(*overrides):
        cfg = compose_config("model=auto", *overrides)
        return config_hash(cfg, Path(cfg.model.path), config.resolve_paths(cfg, build=False)[1])

    same = chash(f"model.path={tiny_model_dir}")
    assert chash(f"model.path={copy}") == same
    assert chash(f"model.path={copy}", "model.name=mine") != same
    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-3
    (copy / "config.json").write_text(json.dumps(cfg))
    assert chash(f"model.path={copy}") != same
