"""A second family end to end: the tiny Qwen2.5 built locally (cruijff.assets.families), with the
tokenizer files of Qwen2.5's own format, described by ``model=auto``: training and evaluation see the
same token ids, and a LoRA run's adapter, applied in memory, answers as its merged export does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
from conftest import CHATS, compose_config
from cruijff import finetune

RECORDS = [*CHATS, [{"role": "user", "content": "  héllo <|im_end|> wörld \n"}, {"role": "assistant", "content": "Héllo"}]]


@pytest.fixture(scope="session")
def qwen_dir() -> Path:
    from cruijff.assets.families import qwen2_5

    return qwen2_5.tiny_qwen2_5_dir()


def test_the_tiny_qwen2_5_is_a_qwen2_5_dir_in_its_own_formats(qwen_dir):
    from safetensors.torch import load_file
    from torchtune.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS
    from transformers import AutoTokenizer

    from cruijff.assets.families import qwen2_5
    from cruijff.config import auto, chat

    hf = json.loads((qwen_dir / "config.json").read_text())
    assert hf["architectures"] == ["Qwen2ForCausalLM"] and hf["tie_word_embeddings"] is True
    assert hf["vocab_size"] == max(QWEN2_5_SPECIAL_TOKENS.values()) + 1
    vocab = json.loads((qwen_dir / "vocab.json").read_text())
    assert sorted(vocab.values()) == list(range(151643))  # as Qwen2.5's: the specials come after
    assert (qwen_dir / "merges.txt").read_text().startswith("#version: 0.2\n")
    weights = load_file(qwen_dir / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.layers.0.self_attn.q_proj.bias" in weights
    section = auto.describe(qwen_dir)
    assert section["version"] == "Qwen2.5" and section["tied_embeddings"] is True
    assert section["parameters"] == sum(w.numel() for w in weights.values())
    tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    assert {t: tok.convert_tokens_to_ids(t) for t in QWEN2_5_SPECIAL_TOKENS} == QWEN2_5_SPECIAL_TOKENS
    assert tok.chat_template == qwen2_5.CHAT_TEMPLATE == chat.resolve("chatml")


def test_a_second_build_is_the_same_model(qwen_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import qwen2_5

    start = time.monotonic()
    qwen2_5._build_tiny_qwen2_5(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (tmp_path / name).read_bytes() == (qwen_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(qwen_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_training_and_evaluation_see_the_same_token_ids(qwen_dir, tmp_path):
    """torchtune's Qwen2.5 tokenizer, rendered from model=auto, tokenizes each record as inspect's hf
    provider prompts the model with cruijff's ChatML template: the prompt is every token before the
    answer's, and the whole record (answer, <|im_end|>) is the template's text tokenized."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune import config as tt_config
    from torchtune.data import Message

    from cruijff.config import chat

    cfg = compose_config("model=auto", f"model.path={qwen_dir}")
    assert cfg.model.tokenizer.component == "torchtune.models.qwen2_5.qwen2_5_tokenizer"
    conf = finetune.render(cfg, tmp_path / "run", qwen_dir, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    api = HuggingFaceAPI(str(qwen_dir), device="cpu", do_sample=False, chat_template=template)
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        chat_text = api.hf_chat([kinds[m["role"]](content=m["content"]) for m in record[:-1]], [])
        prompt = api.tokenizer(chat_text, add_special_tokens=False)["input_ids"]
        # the prompt, then the answer's tokens and <|im_end|>, which training learns (torchtune also
        # leaves the last turn's "<|im_start|>assistant\n" unmasked: it is the prompt's end here)
        answer = tok.encode(record[-1]["content"], add_bos=False, add_eos=False)
        assert tokens == prompt + answer + [tok.eos_id], record
        assert not any(mask[len(prompt):-1]) and mask[0], record
        # torchtune 0.6.1's Qwen2.5 tokenizer masks the closing <|im_end|> (its truncate() sets the
        # last mask to True): training does not learn to stop there
        assert mask[-1] is True
        full = api.tokenizer.apply_chat_template(record, chat_template=template, tokenize=False)
        # torchtune ends the answer with <|im_end|> (its eos), without the template's last "\n"
        assert api.tokenizer(full, add_special_tokens=False)["input_ids"][:-1] == tokens, record


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_qwen2_5_trains_evaluates_and_its_adapter_is_torchtunes_merge(qwen_dir, tmp_path):
    from cruijff.config import chat

    run_dir = family_checks.trained_run(qwen_dir, tmp_path, "qwen")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.qwen2.lora_qwen2"
    assert conf["checkpointer"]["model_type"] == "QWEN2"
    ckpt = family_checks.last_epoch(run_dir)
    family_checks.assert_merged_is_base_plus_adapter(qwen_dir, ckpt)
    family_checks.assert_adapter_answers_as_merged(qwen_dir, ckpt, tmp_path, chat.resolve("chatml"))


def test_a_qwen2_adapter_is_saved_with_its_q_and_k_rows_as_trained(qwen_dir, tmp_path):
    """torchtune 0.6.1 permutes the q/k lora_B rows of every PEFT adapter as Llama's conversion
    permutes q/k; Qwen2's conversion permutes nothing, so cruijff puts the rows back after the save."""
    import torch
    from safetensors.torch import load_file, save_file
    from torchtune.models import convert_weights

    from cruijff.finetune.recipe import unpermute_qwen2_adapter

    hf = json.loads((qwen_dir / "config.json").read_text())
    heads, kv, dim, rank = hf["num_attention_heads"], hf["num_key_value_heads"], hf["hidden_size"], 4
    head_dim = dim // heads
    torch.manual_seed(0)
    tune = {}
    for proj, out in (("q_proj", heads * head_dim), ("k_proj", kv * head_dim), ("v_proj", kv * head_dim)):
        tune[f"layers.0.attn.{proj}.lora_a.weight"] = torch.randn(rank, dim)
        tune[f"layers.0.attn.{proj}.lora_b.weight"] = torch.randn(out, rank)
    peft = convert_weights.tune_to_peft_adapter_weights(dict(tune), num_heads=heads, num_kv_heads=kv, dim=dim)
    key = "base_model.model.model.layers.0.self_attn.{}.lora_B.weight"
    assert not torch.equal(peft[key.format("q_proj")], tune["layers.0.attn.q_proj.lora_b.weight"])  # torchtune's
    epoch = tmp_path / "epoch_0"
    epoch.mkdir()
    save_file(peft, epoch / "adapter_model.safetensors")
    unpermute_qwen2_adapter(epoch, str(qwen_dir))
    fixed = load_file(epoch / "adapter_model.safetensors")
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(fixed[key.format(proj)], tune[f"layers.0.attn.{proj}.lora_b.weight"]), proj
        a = key.format(proj).replace("lora_B", "lora_A")
        assert torch.equal(fixed[a], tune[f"layers.0.attn.{proj}.lora_a.weight"]), proj
