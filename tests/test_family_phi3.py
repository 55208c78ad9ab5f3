"""Phi-3 end to end: the tiny Phi-3 built locally (cruijff.assets.families.phi3), in Phi-3-mini-4k-
instruct's own formats (fused qkv_proj / gate_up_proj weights, a Llama 2 SentencePiece
tokenizer.model, tokenizer.json with Phi-3's added tokens), described by ``model=auto``.

Phi is merged-only: torchtune 0.6.1 writes no PEFT adapter for it (its adapter's q/k/v and w1/w3
modules have no place on Hugging Face's fused modules by name), so what a Phi user relies on is the
merged checkpoint, and that is what is checked: it is the base plus torchtune's adapter, it computes
what torchtune's trained model computes, and it is the weights the evals load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
from conftest import CHATS, compose_config
from cruijff import finetune

RECORDS = [*CHATS, [{"role": "user", "content": "  héllo <|end|> wörld \n"}, {"role": "assistant", "content": "Héllo"}]]


@pytest.fixture(scope="session")
def phi3_dir() -> Path:
    from cruijff.assets.families import phi3

    return phi3.tiny_phi3_dir()


def test_the_tiny_phi3_is_a_phi3_dir_in_its_own_formats(phi3_dir):
    import sentencepiece
    from safetensors.torch import load_file
    from torchtune.models.phi3 import phi3_mini_tokenizer
    from torchtune.models.phi3._tokenizer import PHI3_SPECIAL_TOKENS
    from transformers import AutoTokenizer

    from cruijff.assets.families import phi3
    from cruijff.assets.families.bpe import corpus
    from cruijff.config import auto

    hf = json.loads((phi3_dir / "config.json").read_text())
    assert hf["architectures"] == ["Phi3ForCausalLM"] and hf["tie_word_embeddings"] is False
    assert hf["rope_scaling"] is None and hf.get("partial_rotary_factor", 1.0) == 1.0
    assert hf["vocab_size"] == 32064 > max(PHI3_SPECIAL_TOKENS.values())
    weights = load_file(phi3_dir / "model.safetensors")
    assert "lm_head.weight" in weights
    assert {"model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight"} <= set(weights)
    assert not any(k.endswith(("q_proj.weight", "k_proj.weight", "gate_proj.weight", "up_proj.weight"))
                   and "qkv" not in k and "gate_up" not in k for k in weights)
    section = auto.describe(phi3_dir)
    assert (section["version"], section["model_type"], section["chat_template"]) == ("Phi-3", "PHI3_MINI", None)
    assert section["tokenizer"]["path"] == "tokenizer.model"
    assert section["parameters"] == sum(w.numel() for w in weights.values())

    spm = sentencepiece.SentencePieceProcessor(model_file=str(phi3_dir / "tokenizer.model"))
    assert [spm.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert spm.vocab_size() == 32000 and spm.encode("\n", out_type=str) == ["▁", "<0x0A>"]
    tt = phi3_mini_tokenizer(str(phi3_dir / "tokenizer.model"))
    tok = AutoTokenizer.from_pretrained(str(phi3_dir))
    assert {t: tok.convert_tokens_to_ids(t) for t in PHI3_SPECIAL_TOKENS} == PHI3_SPECIAL_TOKENS == tt.special_tokens
    assert (tok.bos_token_id, tok.eos_token_id, tt.bos_id, tt.eos_id) == (1, 32000, 1, 32000)
    for text in corpus()[:300] + ["  héllo  wörld \n", "a\n\nb", "Paris"]:
        assert tt.encode(text, add_bos=False, add_eos=False) == tok(text, add_special_tokens=False)["input_ids"], text
    assert tok("Paris")["input_ids"][0] != 1  # Phi-3's tokenizer adds no BOS
    assert tok.chat_template == phi3.CHAT_TEMPLATE


def test_torchtunes_phi3_conversion_splits_and_fuses_the_tiny_phi3_back(phi3_dir):
    """torchtune reads the fused q/k/v and gate/up weights as its separate ones and writes them back
    fused as they were."""
    from safetensors.torch import load_file
    from torchtune.models.phi3._convert_weights import phi3_hf_to_tune, phi3_tune_to_hf

    weights = load_file(phi3_dir / "model.safetensors")
    tune = phi3_hf_to_tune(weights, num_heads=None, num_kv_heads=None, dim=None)  # no GQA: as the checkpointer
    assert tune["layers.0.attn.k_proj.weight"].shape == (16, 16) and tune["layers.0.mlp.w3.weight"].shape == (48, 16)
    back = phi3_tune_to_hf(tune)
    assert back.keys() == weights.keys() and all((back[k] == weights[k]).all() for k in weights)


def test_a_second_build_is_the_same_model(phi3_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import phi3

    start = time.monotonic()
    phi3._build_tiny_phi3(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (phi3_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(phi3_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_training_and_evaluation_see_the_same_token_ids(phi3_dir, tmp_path):
    """torchtune's Phi-3 tokenizer, rendered from model=auto, tokenizes each record as inspect's hf
    provider prompts the model with Phi-3's own template: the prompt is every token before the
    answer's, the answer (up to <|end|>, where generation stops) is learned, and the whole record is
    the template's text as Phi-3's tokenizer tokenizes it."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune import config as tt_config
    from torchtune.data import Message

    from cruijff.assets.families.phi3 import PHI3_SPECIAL
    from cruijff.config import chat

    cfg = compose_config("model=auto", f"model.path={phi3_dir}")
    conf = finetune.render(cfg, tmp_path / "run", phi3_dir, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    assert template is None  # the model dir's own template
    api = HuggingFaceAPI(str(phi3_dir), device="cpu", do_sample=False)
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        chat_text = api.hf_chat([kinds[m["role"]](content=m["content"]) for m in record[:-1]], [])
        prompt = api.tokenizer(chat_text)["input_ids"]  # as inspect tokenizes it
        assert tokens[:len(prompt)] == prompt, record
        assert mask[0] and not any(mask[len(prompt):]), record
        assert tokens[-1] == PHI3_SPECIAL["<|end|>"], record  # generation stops there
        full = api.tokenizer.apply_chat_template(record, tokenize=False)
        # the template ends the conversation with <|endoftext|>, which torchtune adds no more than Phi-3 needs
        assert api.tokenizer(full)["input_ids"] == tokens + [PHI3_SPECIAL["<|endoftext|>"]], record


# ----------------------------------------------------------------------------------------------
# end to end


def _torchtune_adapter_deltas(ckpt: Path, conf: dict, hf_config: dict) -> dict:
    """torchtune's adapter of ``ckpt`` (its own format: ``adapter_model.pt``) as the update of each
    Hugging Face weight: q/k/v rows of the fused qkv_proj, gate/up rows of gate_up_proj."""
    import torch

    adapter = torch.load(ckpt / "adapter_model.pt", map_location="cpu", weights_only=True)
    scale = conf["model"]["lora_alpha"] / conf["model"]["lora_rank"]

    def delta(module: str):
        a, b = adapter.get(f"{module}.lora_a.weight"), adapter.get(f"{module}.lora_b.weight")
        return None if a is None else scale * b.float() @ a.float()

    out = {}
    dim, heads, kv = hf_config["hidden_size"], hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
    for i in range(hf_config["num_hidden_layers"]):
        hf, tt = f"model.layers.{i}", f"layers.{i}"
        sizes = {"q_proj": dim, "k_proj": dim * kv // heads, "v_proj": dim * kv // heads}
        parts = [delta(f"{tt}.attn.{p}") for p in sizes]
        if any(p is not None for p in parts):
            out[f"{hf}.self_attn.qkv_proj.weight"] = torch.cat(
                [p if p is not None else torch.zeros(n, dim) for p, n in zip(parts, sizes.values())])
        inter = hf_config["intermediate_size"]
        w1, w3 = delta(f"{tt}.mlp.w1"), delta(f"{tt}.mlp.w3")
        if w1 is not None or w3 is not None:
            out[f"{hf}.mlp.gate_up_proj.weight"] = torch.cat(
                [w if w is not None else torch.zeros(inter, dim) for w in (w1, w3)])
        for name, module in ((f"{hf}.self_attn.o_proj.weight", f"{tt}.attn.output_proj"),
                             (f"{hf}.mlp.down_proj.weight", f"{tt}.mlp.w2")):
            if (d := delta(module)) is not None:
                out[name] = d
    if (d := delta("output")) is not None:
        out["lm_head.weight"] = d
    return out


def trained_tokens(conf: dict, record: list[dict]) -> list[int]:
    """A record's tokens as the run's tokenizer (its rendered config's) tokenized it for training."""
    from torchtune import config as tt_config
    from torchtune.data import Message

    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    return tok.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in record])[0]


def assert_merged_checkpoint_is_what_is_evaluated(model_dir: Path, run_dir: Path, tokens: list[int]) -> None:
    """A Phi run's last epoch: no PEFT adapter (torchtune's own format only, for modules the Hugging
    Face model has not); the merged weights are the base plus torchtune's adapter, weight by weight;
    on ``tokens`` they compute what torchtune's trained LoRA model computes; the evals loaded them, with
    the model's own template, and they answer otherwise than the base."""
    import torch
    from safetensors.torch import load_file
    from torchtune import config as tt_config
    from torchtune.models.phi3._convert_weights import phi3_hf_to_tune
    from transformers import Phi3ForCausalLM

    from cruijff.errors import CruijffError
    from cruijff.evaluate.adapter import read_adapter
    from cruijff.records import CellResults, layout

    conf = family_checks.rendered(run_dir)
    ckpt = family_checks.last_epoch(run_dir)
    assert not (ckpt / layout.ADAPTER_WEIGHTS).exists() and not (ckpt / layout.ADAPTER_CONFIG).exists()
    with pytest.raises(CruijffError):
        read_adapter(ckpt)
    hf_model = Phi3ForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    names = {n.rsplit(".", 1)[-1] for n, _ in hf_model.named_modules()}
    assert {"qkv_proj", "gate_up_proj"} <= names and not names & {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}

    # the merged weights are the base plus torchtune's adapter
    hf_config = json.loads((model_dir / "config.json").read_text())
    base = load_file(model_dir / "model.safetensors")
    merged = {k: v for f in sorted(ckpt.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    assert merged.keys() == base.keys()
    deltas = _torchtune_adapter_deltas(ckpt, conf, hf_config)
    assert {k.rsplit(".", 2)[-2] for k in deltas} == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}
    for key, w in base.items():
        expected = w.float() + deltas[key] if key in deltas else w.float()
        torch.testing.assert_close(merged[key].float(), expected, rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.equal(merged[k], base[k]) for k in deltas), "the adapter changed no weight"

    # ... which compute what torchtune's trained model (the base and its LoRA adapter) computes
    tune_model = tt_config.instantiate(OmegaConf.create(conf["model"]))
    heads, kv, dim = hf_config["num_attention_heads"], hf_config["num_key_value_heads"], hf_config["hidden_size"]
    gqa = (heads, kv, dim) if kv != heads else (None, None, None)  # as torchtune's checkpointer converts
    adapter = torch.load(ckpt / "adapter_model.pt", map_location="cpu", weights_only=True)
    tune_model.load_state_dict({**phi3_hf_to_tune(base, *gqa), **adapter}, strict=True)
    tune_model.eval()
    with torch.no_grad():
        ids = torch.tensor([tokens])
        torch.testing.assert_close(hf_model(ids).logits, tune_model(ids), rtol=1e-4, atol=1e-4)

    # the evals loaded the merged weights, with the model's own template, and they answer otherwise than the base
    cell = CellResults.of(run_dir / "eval" / ckpt.name)
    assert cell.metadata["adapter"] is False and cell.chat_template is None
    assert (run_dir.parent / cell.model).resolve() == ckpt.resolve()
    assert family_checks.answers(run_dir / "eval" / ckpt.name) != \
        family_checks.answers(run_dir.parent / cell.metadata["base_cell"])


@pytest.mark.slow
def test_the_tiny_phi3_trains_and_its_merged_checkpoint_is_what_is_evaluated(phi3_dir, tmp_path):
    """The adapter-in-memory check does not apply to Phi: torchtune writes its adapter in its own
    format only (adapter_model.pt: q_proj/k_proj/v_proj, w1/w3 modules that Hugging Face's Phi-3 fuses
    into qkv_proj and gate_up_proj, so no PEFT adapter names a module there). Instead: the merged
    weights are the base plus torchtune's adapter, weight by weight; they compute what torchtune's
    trained LoRA model computes; the evals load them (not the base with an adapter), and they answer
    otherwise than the base."""
    run_dir = family_checks.trained_run(phi3_dir, tmp_path, "phi3")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.phi3.lora_phi3"
    assert conf["checkpointer"]["model_type"] == "PHI3_MINI"
    assert_merged_checkpoint_is_what_is_evaluated(phi3_dir, run_dir, trained_tokens(conf, CHATS[2]))
