"""Phi-4 end to end: the tiny Phi-4 built locally (cruijff.assets.families.phi4), in microsoft/phi-4's
own formats (Phi3ForCausalLM with grouped-query attention, fused qkv_proj / gate_up_proj weights,
tiktoken-like byte-level BPE as vocab.json + merges.txt, tokenizer.json with Phi-4's added tokens),
described by ``model=auto``.

As Phi-3, Phi-4 is merged-only (torchtune 0.6.1 writes no PEFT adapter for it): the merged checkpoint
is checked to be the base plus torchtune's adapter, to compute what torchtune's trained model
computes, and to be the weights the evals load (tests/test_family_phi3.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
import test_family_phi3 as phi_checks
from conftest import CHATS, compose_config
from cruijff import finetune

RECORDS = [*CHATS, [{"role": "user", "content": "  héllo <|im_end|> wörld \n"}, {"role": "assistant", "content": "Héllo"}]]


@pytest.fixture(scope="session")
def phi4_dir() -> Path:
    from cruijff.assets.families import phi4

    return phi4.tiny_phi4_dir()


def _tokenizers(model_dir: Path):
    from torchtune.models.phi4 import phi4_tokenizer
    from transformers import AutoTokenizer

    tt = phi4_tokenizer(vocab_path=str(model_dir / "vocab.json"), merges_path=str(model_dir / "merges.txt"))
    return tt, AutoTokenizer.from_pretrained(str(model_dir))


def test_the_tiny_phi4_is_a_phi4_dir_in_its_own_formats(phi4_dir):
    from safetensors.torch import load_file
    from torchtune.models.phi4._tokenizer import PHI4_SPECIAL_TOKENS

    from cruijff.assets.families import phi4
    from cruijff.assets.families.bpe import corpus
    from cruijff.config import auto

    hf = json.loads((phi4_dir / "config.json").read_text())
    assert hf["architectures"] == ["Phi3ForCausalLM"] and hf["tie_word_embeddings"] is False
    assert hf["rope_scaling"] is None and hf["num_key_value_heads"] < hf["num_attention_heads"]
    assert hf["vocab_size"] == 100352 == max(PHI4_SPECIAL_TOKENS.values()) + 1
    assert phi4.PHI4_SPECIAL == PHI4_SPECIAL_TOKENS
    vocab = json.loads((phi4_dir / "vocab.json").read_text())
    assert sorted(vocab.values()) == list(range(100256))  # as Phi-4's: the added tokens come after
    assert (phi4_dir / "merges.txt").read_text().startswith("#version: 0.2\n")
    weights = load_file(phi4_dir / "model.safetensors")
    assert "lm_head.weight" in weights
    assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"} <= set(weights)
    section = auto.describe(phi4_dir)
    assert (section["version"], section["model_type"], section["chat_template"]) == ("Phi-4", "PHI4", None)
    assert (section["tokenizer"]["vocab_path"], section["tokenizer"]["merges_path"]) == ("vocab.json", "merges.txt")
    assert section["parameters"] == sum(w.numel() for w in weights.values())

    tt, tok = _tokenizers(phi4_dir)
    assert {t: tok.convert_tokens_to_ids(t) for t in PHI4_SPECIAL_TOKENS} == PHI4_SPECIAL_TOKENS == tt.special_tokens
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (tt.bos_id, tt.eos_id, tt.pad_id)
    assert tt.vocab_size == 100256
    for text in corpus()[:300] + ["  héllo  wörld \n", "a\n\nb", "Paris", "In 2024, 12345"]:
        assert tt.encode(text, add_bos=False, add_eos=False) == tok(text)["input_ids"], text  # no BOS added
    assert tok.chat_template == phi4.CHAT_TEMPLATE


def _rendered_tokenizer(model_dir: Path, tmp_path: Path):
    """The tokenizer a run of ``model=auto`` trains with (its rendered config's)."""
    from torchtune import config as tt_config

    cfg = compose_config("model=auto", f"model.path={model_dir}")
    conf = finetune.render(cfg, tmp_path / "run", model_dir, tmp_path / "data.json")
    return cfg, tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))


def test_training_splits_text_as_phi4s_tokenizer(phi4_dir, tmp_path):
    _, tt = _rendered_tokenizer(phi4_dir, tmp_path)
    _, tok = _tokenizers(phi4_dir)
    for text in ["IT'S 3 O'CLOCK", "it'S"]:
        assert tt.encode(text, add_bos=False, add_eos=False) == tok(text)["input_ids"], text


def test_a_second_build_is_the_same_model(phi4_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import phi4

    start = time.monotonic()
    phi4._build_tiny_phi4(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (phi4_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(phi4_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_training_and_evaluation_see_the_same_token_ids(phi4_dir, tmp_path):
    """torchtune's Phi-4 tokenizer, rendered from model=auto, tokenizes each record as inspect's hf
    provider prompts the model with Phi-4's own template: the prompt is every token before the
    answer's, the answer and its <|im_end|> (where generation stops) are learned, and the whole record
    is the template's text as Phi-4's tokenizer tokenizes it."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune.data import Message

    from cruijff.assets.families.phi4 import PHI4_SPECIAL
    from cruijff.config import chat

    cfg, tok = _rendered_tokenizer(phi4_dir, tmp_path)
    assert chat.resolve(cfg.model.chat_template) is None  # the model dir's own template
    api = HuggingFaceAPI(str(phi4_dir), device="cpu", do_sample=False)
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        chat_text = api.hf_chat([kinds[m["role"]](content=m["content"]) for m in record[:-1]], [])
        prompt = api.tokenizer(chat_text)["input_ids"]  # as inspect tokenizes it
        assert tokens[:len(prompt)] == prompt, record
        assert mask[0] and not any(mask[len(prompt):]), record
        assert tokens[-1] == PHI4_SPECIAL["<|im_end|>"], record  # generation stops there
        full = api.tokenizer.apply_chat_template(record, tokenize=False)
        assert api.tokenizer(full)["input_ids"] == tokens, record


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_phi4_trains_and_its_merged_checkpoint_is_what_is_evaluated(phi4_dir, tmp_path):
    """As the tiny Phi-3's (no PEFT adapter: the merged weights are checked, with grouped-query
    attention's q/k/v rows split and fused back by torchtune's conversion)."""
    run_dir = family_checks.trained_run(phi4_dir, tmp_path, "phi4")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.phi3.lora_phi3"
    assert conf["checkpointer"]["model_type"] == "PHI4"
    phi_checks.assert_merged_checkpoint_is_what_is_evaluated(phi4_dir, run_dir,
                                                             phi_checks.trained_tokens(conf, CHATS[2]))
