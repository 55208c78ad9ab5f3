"""Llama 3.2 end to end: the tiny Llama 3.2 built locally (cruijff.assets.families.llama3), with Meta's
tiktoken file for torchtune and the ``tokenizer.json`` of Hugging Face's checkpoints for transformers,
described by ``model=auto``: training and evaluation see the same token ids, torchtune's model (its
q/k rows permuted on conversion, Llama 3.1's RoPE scaling) computes what transformers' does, and a
LoRA run's adapter, applied in memory, answers as its merged export does."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
from conftest import CHATS, compose_config
from cruijff import finetune

# CHATS and one record of odd whitespace: torchtune and the template strip each message
RECORDS = [*CHATS, [{"role": "system", "content": " Be brief.\n"},
                    {"role": "user", "content": "  héllo \t wörld \n\n"},
                    {"role": "assistant", "content": " Héllo, 1234!\n"}]]
# the ids torchtune's Llama 3 tokenizer and Llama 3.2's tokenizer.json give the same names
NAMED = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
         "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
TEXTS = ["Capitalize: paris", "And: rome 12345 don't\n\n  x", "Ünïcödé 日本語 😀 tabs\t\tend  \n"]


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    from cruijff.assets.families import llama3

    return llama3.tiny_llama3_2_dir()


def test_the_tiny_llama3_2_is_a_llama3_2_dir_in_its_own_formats(llama_dir):
    import torch
    from safetensors.torch import load_file
    from tiktoken.load import load_tiktoken_bpe
    from torchtune.models.llama3 import llama3_tokenizer
    from torchtune.models.llama3._tokenizer import LLAMA3_SPECIAL_TOKENS
    from transformers import AutoTokenizer

    from cruijff.assets.families import llama3
    from cruijff.config import auto, chat

    hf = json.loads((llama_dir / "config.json").read_text())
    assert hf["architectures"] == ["LlamaForCausalLM"] and hf["tie_word_embeddings"] is True
    assert hf["vocab_size"] == 128256 and hf["rope_theta"] == 500000.0
    assert hf["rope_scaling"] == {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    generation = json.loads((llama_dir / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 128000 and generation["eos_token_id"] == [128001, 128008, 128009]

    # Meta's tiktoken file: "base64(token) rank" a line, ranks 0-127999, the specials after them
    lines = (llama_dir / "original" / "tokenizer.model").read_text().splitlines()
    assert [int(line.split(" ")[1]) for line in lines] == list(range(128000))
    ranks = load_tiktoken_bpe(str(llama_dir / "original" / "tokenizer.model"))
    assert len(ranks) == 128000 and all(ranks[base64.b64decode(line.split(" ")[0])] == int(line.split(" ")[1])
                                        for line in lines[:1000])
    assert all(ranks[bytes([b])] < 256 for b in range(256))

    tt = llama3_tokenizer(str(llama_dir / "original" / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(llama_dir))
    assert len(tok) == 128256 and tok.bos_token_id == 128000 and tok.eos_token == "<|eot_id|>"
    specials = llama3.special_tokens()
    assert sorted(specials.values()) == list(range(128000, 128256))
    assert {t: tok.convert_tokens_to_ids(t) for t in specials} == specials
    assert {t: specials[t] for t in NAMED} == {t: LLAMA3_SPECIAL_TOKENS[t] for t in NAMED}
    assert tt.bos_id == 128000 and tt.eos_id == 128001 and tt.eot_id == 128009 and tt.pad_id == 128004
    for text in TEXTS:  # Hugging Face's tokenizer adds <|begin_of_text|> as Llama 3's post-processor does
        assert tok(text)["input_ids"] == tt.encode(text, add_bos=True, add_eos=False), text
        assert tok.decode(tt.encode(text, add_bos=False, add_eos=False)) == tt.decode(tt.encode(text)), text
    assert tok.chat_template == llama3.CHAT_TEMPLATE == chat.resolve("llama3")

    weights = load_file(llama_dir / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.layers.0.self_attn.q_proj.bias" not in weights
    emb = weights["model.embed_tokens.weight"]
    assert emb.shape == (128256, 16)
    assert not emb[127999].any() and not emb[128255].any()  # a filler, a reserved special token: zero rows
    assert emb[128009].any() and emb[ranks[b"P"]].any()
    section = auto.describe(llama_dir)
    assert section["version"] == "Llama 3.2" and section["tied_embeddings"] is True
    assert section["model_type"] == "LLAMA3_2" and section["component"] == "torchtune.models.llama3_2.lora_llama3_2"
    assert section["args"]["scale_factor"] == 32 and section["args"]["rope_base"] == 500000
    assert section["tokenizer"]["component"] == "torchtune.models.llama3.llama3_tokenizer"
    assert section["tokenizer"]["path"] == "original/tokenizer.model" and section["chat_template"] == "llama3"
    assert section["parameters"] == sum(w.numel() for w in weights.values())
    assert torch.count_nonzero(emb.abs().sum(1)) < 1000  # bytes, merges and the named specials


def test_a_second_build_is_the_same_model(llama_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import llama3

    start = time.monotonic()
    llama3._build_tiny_llama3_2(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("original/tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (llama_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(llama_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _parity(llama_dir: Path, tmp_path: Path):
    """torchtune's tokenizer as rendered from model=auto, and inspect's hf provider with the template."""
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune import config as tt_config

    from cruijff.config import chat

    cfg = compose_config("model=auto", f"model.path={llama_dir}")
    assert cfg.model.tokenizer.component == "torchtune.models.llama3.llama3_tokenizer"
    conf = finetune.render(cfg, tmp_path / "run", llama_dir, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    return tok, HuggingFaceAPI(str(llama_dir), device="cpu", do_sample=False, chat_template=template), template


def _assert_same_ids(tok, api, template, record) -> None:
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
    from torchtune.data import Message

    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
    tokens, mask = tok.tokenize_messages(messages)
    chat_text = api.hf_chat([kinds[m["role"]](content=m["content"]) for m in record[:-1]], [])
    # inspect tokenizes the prompt with the tokenizer's special tokens: <|begin_of_text|>, once
    prompt = api.tokenizer(chat_text)["input_ids"]
    assert prompt.count(tok.bos_id) == 1 and prompt[0] == tok.bos_id, record
    # the prompt (ending "<|start_header_id|>assistant<|end_header_id|>\n\n", which torchtune leaves
    # unmasked as the answer's header), then the stripped answer, <|eot_id|>, and torchtune's
    # <|end_of_text|>, masked as BOS is
    answer = tok.encode(record[-1]["content"].strip(), add_bos=False, add_eos=False)
    assert tokens == prompt + answer + [tok.eot_id, tok.eos_id], record
    assert not any(mask[len(prompt):-1]) and mask[0] and mask[-1], record
    full = api.tokenizer.apply_chat_template(record, chat_template=template, tokenize=False)
    assert api.tokenizer(full)["input_ids"] + [tok.eos_id] == tokens, record


def test_training_and_evaluation_see_the_same_token_ids(llama_dir, tmp_path):
    """torchtune's Llama 3 tokenizer, rendered from model=auto, tokenizes each record as inspect's hf
    provider prompts the model with cruijff's Llama 3 template: the prompt is every token before the
    answer's, and the whole record is the template's text tokenized, then <|end_of_text|>."""
    tok, api, template = _parity(llama_dir, tmp_path)
    for record in RECORDS:
        _assert_same_ids(tok, api, template, record)


@pytest.mark.xfail(strict=True, reason="torchtune's Llama 3 tokenizer encodes a special token's text in a "
                                       "message as text (tiktoken, allowed_special=()); transformers' "
                                       "tokenizer, as inspect calls it, as the special token")
def test_a_special_tokens_text_in_a_message_is_the_same_ids(llama_dir, tmp_path):
    tok, api, template = _parity(llama_dir, tmp_path)
    _assert_same_ids(tok, api, template, [{"role": "user", "content": "Capitalize: <|eot_id|> paris"},
                                          {"role": "assistant", "content": "Paris"}])


def test_torchtunes_llama3_2_computes_what_transformers_does(llama_dir):
    """The weights converted as torchtune's LLAMA3_2 checkpointer converts them (q/k rows permuted),
    in the model the auto section builds (Llama 3.1's RoPE scaling, factor 32), give transformers'
    logits; RoPE without the scaling does not."""
    import torch
    from safetensors.torch import load_file
    from torchtune.models import convert_weights
    from torchtune.models.llama3_2 import llama3_2
    from transformers import AutoModelForCausalLM

    from cruijff.config import auto

    section = auto.describe(llama_dir)
    args = dict(section["args"])
    assert section["full_component"] == "torchtune.models.llama3_2.llama3_2"
    state = convert_weights.hf_to_tune(load_file(llama_dir / "model.safetensors"), num_heads=args["num_heads"],
                                       num_kv_heads=args["num_kv_heads"], dim=args["embed_dim"])
    ids = torch.tensor([[128000, 128006, 882, 128007] + list(range(256, 556))])
    hf = AutoModelForCausalLM.from_pretrained(str(llama_dir)).eval()
    with torch.no_grad():
        expected = hf(ids).logits
        logits = {}
        for scale in (args["scale_factor"], 1):
            model = llama3_2(**{**args, "scale_factor": scale}).eval()
            model.load_state_dict(state, strict=True)
            logits[scale] = model(ids)
    torch.testing.assert_close(logits[32], expected, rtol=0, atol=1e-6)
    assert (logits[1] - expected).abs().max() > 1e-5


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_llama3_2_trains_evaluates_and_its_adapter_is_torchtunes_merge(llama_dir, tmp_path):
    from cruijff.config import chat

    run_dir = family_checks.trained_run(llama_dir, tmp_path, "llama3")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2"
    assert conf["checkpointer"]["model_type"] == "LLAMA3_2"
    assert conf["tokenizer"]["path"].endswith("original/tokenizer.model")
    ckpt = family_checks.last_epoch(run_dir)
    family_checks.assert_merged_is_base_plus_adapter(llama_dir, ckpt)
    family_checks.assert_adapter_answers_as_merged(llama_dir, ckpt, tmp_path, chat.resolve("llama3"))
