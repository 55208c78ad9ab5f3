"""The model catalogue, checked without weights (none can be downloaded here).

For each real model: its torchtune LoRA builder, with the configured LoRA settings, is built on the
``meta`` device (shapes, no memory) and its base parameter count matches the published size, as
does its full-weight builder; eval prompts are laid out as torchtune laid out the training data; the
rendered ``finetune.yaml`` passes torchtune's own ``tune validate``; a model dir lacking a file the
config names is refused with one line.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from omegaconf import OmegaConf
from torchtune import config as tt_config

from conftest import compose_config, fake_model_dir, launch
from cruijff import config, finetune
from cruijff.config import ConfigError, validate

# name -> (published parameter count, GPUs a run needs, recipe)
CATALOGUE = {
    "llama3_2_1b_instruct": (1.24e9, 1),   # Llama-3.2-1B-Instruct model card
    "llama3_2_3b_instruct": (3.21e9, 1),   # Llama-3.2-3B-Instruct
    "llama3_1_8b_instruct": (8.03e9, 1),   # Llama-3.1-8B-Instruct
    "llama3_1_8b": (8.03e9, 1),            # Llama-3.1-8B (the base model)
    "llama3_1_70b_instruct": (70.6e9, 8),  # Llama-3.1-70B-Instruct
    "llama3_3_70b_instruct": (70.6e9, 8),  # Llama-3.3-70B-Instruct
    "qwen2_5_3b_instruct": (3.09e9, 1),    # Qwen2.5-3B-Instruct
    "qwen2_5_7b_instruct": (7.62e9, 1),    # Qwen2.5-7B-Instruct
    "qwen2_5_14b_instruct": (14.8e9, 1),   # Qwen2.5-14B-Instruct
    "qwen2_5_32b_instruct": (32.8e9, 2),   # Qwen2.5-32B-Instruct
    "qwen2_5_72b_instruct": (72.7e9, 8),   # Qwen2.5-72B-Instruct
    "mistral_7b_instruct": (7.25e9, 1),    # Mistral-7B-Instruct-v0.3
    "gemma2_2b_instruct": (2.61e9, 1),     # Gemma-2-2B-it
    "gemma2_9b_instruct": (9.24e9, 1),     # Gemma-2-9B-it
    "phi4": (14.7e9, 1),                   # Phi-4
}


@pytest.mark.parametrize("name", CATALOGUE)
def test_builder_on_meta_device_has_the_published_size(name, tmp_path):
    published, _ = CATALOGUE[name]
    cfg = compose_config(f"model={name}", f"model.path={tmp_path}", "peft.lora_rank=16")
    conf = finetune.render(cfg, tmp_path / "run", tmp_path, tmp_path / "data.json")
    with torch.device("meta"):
        model = tt_config.instantiate(OmegaConf.create(conf["model"]))
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert abs(base - published) / published < 0.03, f"{name}: {base / 1e9:.2f}B vs {published / 1e9:.2f}B"
    assert 0 < lora < 0.02 * base  # the adapters are there, and small
    assert conf["model"]["lora_rank"] == 16
    # the full-weight builder makes the same model without adapters
    with torch.device("meta"):
        full = tt_config.instantiate(OmegaConf.create({"_component_": cfg.model.full_component, **cfg.model.args}))
    assert sum(p.numel() for p in full.parameters()) == base


@pytest.mark.parametrize("name", CATALOGUE)
def test_rendered_config_passes_tune_validate(name, tmp_path):
    _, gpus = CATALOGUE[name]
    model_dir = tmp_path / "model"
    cfg = compose_config(f"model={name}", f"model.path={model_dir}")
    fake_model_dir(model_dir, cfg)
    validate(cfg)  # every file the config names is there
    conf = finetune.render(cfg, tmp_path / "run", model_dir, tmp_path / "data.json")
    path = tmp_path / "finetune.yaml"
    finetune.write_config(conf, path, "r", config.processes(compose_config(f"model={name}", "cluster=slurm")))
    tt_config.validate(OmegaConf.load(path))  # what `tune validate` runs: every component's kwargs
    recipe = f"--nproc_per_node {gpus} lora_finetune_distributed" if gpus > 1 else "lora_finetune_single_device"
    assert f"tune run {recipe} --config" in path.read_text()
    for key in config.TOKENIZER_FILES:
        if cfg.model.tokenizer.get(key):
            assert conf["tokenizer"][key] == str(model_dir / cfg.model.tokenizer[key])


def test_training_defaults_follow_the_models_memory_hint_unless_set(tmp_path):
    """torchtune's own configs train the 70B with batch 2 and activation checkpointing; a plain
    batch of 8 without it would not fit. The tiny model has no hint and keeps the group's defaults."""
    big = compose_config("model=llama3_3_70b_instruct", f"model.path={tmp_path}")
    assert (big.training.batch_size, big.training.enable_activation_checkpointing) == (2, True)
    conf = finetune.render(big, tmp_path / "run", tmp_path, tmp_path / "data.json")
    assert (conf["batch_size"], conf["enable_activation_checkpointing"]) == (2, True)
    mine = compose_config("model=llama3_3_70b_instruct", f"model.path={tmp_path}", "training.batch_size=1")
    assert mine.training.batch_size == 1
    tiny = compose_config()
    assert (tiny.training.batch_size, tiny.training.enable_activation_checkpointing) == (8, False)


def test_a_slurm_job_gets_the_models_gpus_and_cpus_for_each(tmp_path):
    big = compose_config("model=llama3_3_70b_instruct", f"model.path={tmp_path}", "cluster=slurm")
    assert (big.cluster.gpus_per_node, big.cluster.cpus_per_task, big.cluster.mem_gb) == (8, 32, 512)
    small = compose_config("model=llama3_2_1b_instruct", f"model.path={tmp_path}", "cluster=slurm")
    assert (small.cluster.gpus_per_node, small.cluster.cpus_per_task) == (1, 4)
    site = compose_config("model=llama3_3_70b_instruct", f"model.path={tmp_path}", "cluster=example_site")
    assert site.cluster.cpus_per_task == 64


@pytest.mark.parametrize("name", ["llama3_2_1b_instruct", "qwen2_5_3b_instruct"])
def test_tied_models_get_no_output_lora(name, tmp_path):
    cfg = compose_config(f"model={name}", f"model.path={tmp_path}")
    assert finetune.render(cfg, tmp_path, tmp_path, tmp_path)["model"]["apply_lora_to_output"] is False
    assert config.lora_on_output(compose_config("model=llama3_1_8b_instruct", f"model.path={tmp_path}")) is True
    with pytest.raises(ConfigError, match=r"peft.apply_lora_to_output=True: model .* ties its output layer"):
        validate(compose_config(f"model={name}", f"model.path={fake_model_dir(tmp_path, cfg)}",
                          "peft.apply_lora_to_output=true"))


def test_model_dir_lacking_a_named_file_is_refused_before_anything_is_written(tmp_path):
    cfg = compose_config("model=qwen2_5_7b_instruct", f"model.path={tmp_path / 'qwen'}")
    fake_model_dir(tmp_path / "qwen", cfg)
    (tmp_path / "qwen" / "merges.txt").unlink()
    proc = launch("model=qwen2_5_7b_instruct", f"model.path={tmp_path / 'qwen'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("lacks merges.txt, named by model qwen2_5_7b_instruct")
    assert not (tmp_path / "outputs").exists()


def test_base_recipe_seeds_the_config_and_cruijff_keys_override_it(tmp_path, tiny_model_dir):
    cfg = compose_config("base_recipe=llama3_2/1B_lora_single_device", "training=smoke", "optimizer.lr=2e-3")
    conf = finetune.render(cfg, tmp_path / "run", tiny_model_dir, tmp_path / "data.json")
    # what cruijff leaves open comes from the stock config: here the profiler's schedule
    assert conf["profiler"]["enabled"] is False and conf["profiler"]["wait_steps"] == 5
    assert conf["profiler"]["output_dir"] == "${output_dir}/profiling_outputs"
    # every value cruijff sets wins: the model, its files, the data, the hyperparameters, the smoke limits
    assert conf["model"]["_component_"] == "torchtune.models.llama2.lora_llama2"
    assert conf["checkpointer"]["checkpoint_dir"] == str(tiny_model_dir)
    assert conf["dataset"]["_component_"] == "torchtune.datasets.instruct_dataset"
    assert conf["dataset"]["source"] == "json" and conf["dataset"]["field"] == "train"
    assert conf["optimizer"]["lr"] == 2e-3 and conf["epochs"] == 1 and conf["max_steps_per_epoch"] == 5
    assert conf["gradient_accumulation_steps"] == 1  # the stock file says 8
    assert conf["lr_scheduler"]["num_warmup_steps"] == cfg.optimizer.num_warmup_steps  # the stock file says 100
    path = tmp_path / "finetune.yaml"
    finetune.write_config(conf, path, "r", 1, "llama3_2/1B_lora_single_device")
    assert "Seeded from torchtune's llama3_2/1B_lora_single_device" in path.read_text()
    proc = subprocess.run(["tune", "validate", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------
# train/eval prompt parity
#
# The real tokenizer files cannot be had here, so each tokenizer family gets a stand-in of the same
# format: Llama 3's tiktoken file and Qwen's vocab.json/merges.txt with one token per byte (so a
# text is tokenized the same way whatever the merges, and token ids correspond one to one with the
# text), and for Mistral the embedded tiny model's SentencePiece model. torchtune's tokenizer, built
# from the rendered finetune.yaml as training builds it, tokenizes a record; the catalogue's chat
# template, rendered through transformers as inspect's hf provider renders it, after the BOS that
# torchtune starts with (the model's tokenizer adds it to the prompt), must give exactly the text
# training put before the answer.

RECORDS = [
    [{"role": "user", "content": "Capitalize: paris"}, {"role": "assistant", "content": "Paris"}],
    [{"role": "user", "content": "Capitalize: a b  c"}, {"role": "assistant", "content": "A b  c"}],
    [{"role": "user", "content": "  Spaces around: x \n"}, {"role": "assistant", "content": "X"}],
    [{"role": "user", "content": "Trailing space: q "}, {"role": "assistant", "content": "Q"}],
]
WITH_SYSTEM = [{"role": "system", "content": "Answer in one word."},
               {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
TWO_TURNS = [{"role": "user", "content": "Capitalize: paris"}, {"role": "assistant", "content": "Paris"},
             {"role": "user", "content": "And: rome "}, {"role": "assistant", "content": "Rome"}]


def _stand_in_tokenizer_files(model_dir, cfg, tiny_model_dir):
    import base64
    import json
    import shutil

    from torchtune.models.qwen2._tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    for key in config.TOKENIZER_FILES:
        rel = cfg.model.tokenizer.get(key)
        if not rel:
            continue
        dest = model_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("vocab.json"):
            dest.write_text(json.dumps({byte_chars[i]: i for i in range(256)}))
        elif rel.endswith("merges.txt"):
            dest.write_text("#version: 0.2\n")
        elif "llama3" in cfg.model.tokenizer.component:  # tiktoken: base64 token, rank
            dest.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
        elif "gemma" in cfg.model.tokenizer.component:  # Gemma's SentencePiece: no dummy prefix, its turn pieces
            from cruijff.assets.families.gemma2 import tiny_gemma2_dir

            shutil.copy(tiny_gemma2_dir() / "tokenizer.model", dest)
        else:  # SentencePiece
            shutil.copy(tiny_model_dir / "tokenizer.model", dest)


def _as_text(tok, ids: list[int]) -> str:
    spm = getattr(tok, "_spm_model", None)
    if spm is None and hasattr(tok, "tokenizer_model") and hasattr(tok.tokenizer_model, "byte_decoder"):
        # torchtune's GPT-2 BPE (Phi-4) decodes to a list of byte-level tokens: the special tokens by
        # name, the stand-in's one byte per token as its byte
        special = {i: t for t, i in tok.special_tokens.items()}
        bpe = tok.tokenizer_model
        return b"".join(special[i].encode() if i in special else bytes([bpe.byte_decoder[bpe.decoder[i]]])
                        for i in ids).decode()
    if spm is None:
        return tok.decode(ids, skip_special_tokens=False)
    # SentencePiece: pieces as written; the space SentencePiece puts before a text's first piece
    # (after <s>) is the one the model's own tokenizer adds again to the prompt's text
    pieces = [spm.spm_model.id_to_piece(i) for i in ids]
    pieces = [chr(int(p[3:5], 16)) if p.startswith("<0x") else p for p in pieces]  # byte fallback
    return "".join(pieces).replace("\u2581", " ").replace("<s> ", "<s>")


@pytest.mark.parametrize("name", CATALOGUE)
def test_eval_prompts_are_laid_out_as_training_saw_them(name, tmp_path, tiny_model_dir):
    from torchtune.data import Message
    from transformers import AutoTokenizer

    from cruijff.config import chat

    model_dir = tmp_path / "model"
    cfg = compose_config(f"model={name}", f"model.path={model_dir}")
    _stand_in_tokenizer_files(model_dir, cfg, tiny_model_dir)
    conf = finetune.render(cfg, tmp_path / "run", model_dir, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    assert template is not None, f"{name} has no chat template for its eval prompts"
    renderer = AutoTokenizer.from_pretrained(str(tiny_model_dir))  # any tokenizer renders a template
    records = RECORDS + [TWO_TURNS] + ([] if "mistral" in name else [WITH_SYSTEM, WITH_SYSTEM + TWO_TURNS[2:]])
    # (torchtune's Mistral template has no system role)
    for record in records:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        trained = _as_text(tok, tokens)
        prompt = renderer.apply_chat_template(record[:-1], chat_template=template, tokenize=False,
                                              add_generation_prompt=True)
        answer = record[-1]["content"]
        prompt = (_as_text(tok, [tok.bos_id]) if tokens[0] == tok.bos_id else "") + prompt  # Phi-4: none
        # the prompt is all training put before the answer; the rest is the answer and its end
        assert trained.startswith(prompt), f"{name}:\n trained {trained!r}\n prompt  {prompt!r}"
        rest = trained[len(prompt):]
        assert rest.lstrip(" ").startswith(answer), f"{name}: after the prompt {rest!r}"
        first_answer_token = next(i for i, m in enumerate(mask) if not m)
        assert len(_as_text(tok, tokens[:first_answer_token])) <= len(prompt)  # no trained token in the prompt
