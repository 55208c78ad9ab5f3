"""A Mistral end to end: the tiny Mistral built locally (cruijff.assets.families.mistral), with the
tokenizer files of Mistral v0.2's own format (a SentencePiece BPE ``tokenizer.model`` and the legacy
``tokenizer.json``), described by ``model=auto``: training and evaluation see the same token ids,
and a LoRA run's adapter, applied in memory, answers as its merged export does."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
from conftest import CHATS, compose_config
from cruijff import finetune

# torchtune's MistralChatTemplate has no system role (see test_a_system_prompt_is_refused_by_both):
# the chats without one, the two-turn chat without its system prompt, and odd whitespace (spaces
# before and after, a newline, the markup as text, bytes the vocabulary lacks, an answer with spaces)
RECORDS = [
    *[c for c in CHATS if c[0]["role"] != "system"],
    [m for m in CHATS[2] if m["role"] != "system"],
    [{"role": "user", "content": "  héllo [INST] wörld \n"}, {"role": "assistant", "content": " Héllo "}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
     {"role": "user", "content": " x  "}, {"role": "assistant", "content": "\ny"}],
]
# texts both tokenizers encode: the corpus the pieces were learned from and odd whitespace
ODD_TEXTS = ["", " ", "  ", " x", "x  ", "\n\n a\tb 123 €", "▁x", "  héllo [INST] wörld \n", "Capitalize: PARIS"]


@pytest.fixture(scope="session")
def mistral_dir() -> Path:
    from cruijff.assets.families import mistral

    return mistral.tiny_mistral_dir()


def test_the_tiny_mistral_is_a_mistral_dir_in_its_own_formats(mistral_dir, tmp_path):
    from safetensors.torch import load_file
    from sentencepiece import sentencepiece_model_pb2
    from torchtune.models.mistral import mistral_tokenizer
    from transformers import AutoTokenizer

    from cruijff.assets.families import mistral
    from cruijff.config import auto, chat

    hf = json.loads((mistral_dir / "config.json").read_text())
    assert hf["architectures"] == ["MistralForCausalLM"] and hf["tie_word_embeddings"] is False
    assert hf["sliding_window"] is None
    assert hf["num_attention_heads"] == 4 * hf["num_key_value_heads"]  # GQA, as Mistral-7B's 32 / 8
    assert (hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"]) == 1e6
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((mistral_dir / "tokenizer.model").read_bytes())
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    assert spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE and spec.byte_fallback
    assert norm.add_dummy_prefix and not norm.remove_extra_whitespaces
    assert [p.piece for p in proto.pieces[:4]] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert proto.pieces[258].piece == "<0xFF>" and (spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (0, 1, 2, -1)
    assert hf["vocab_size"] == len(proto.pieces)
    tok_config = json.loads((mistral_dir / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "LlamaTokenizer" and tok_config["legacy"] is True
    assert tok_config["add_bos_token"] is True and tok_config["add_eos_token"] is False
    assert json.loads((mistral_dir / "special_tokens_map.json").read_text())["eos_token"]["content"] == "</s>"
    generation = json.loads((mistral_dir / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)

    weights = load_file(mistral_dir / "model.safetensors")
    assert "lm_head.weight" in weights and not any(k.endswith(".bias") for k in weights)
    section = auto.describe(mistral_dir)
    assert section["version"] == "Mistral" and section["tied_embeddings"] is False
    assert section["component"] == "torchtune.models.mistral.lora_mistral" and section["model_type"] == "MISTRAL"
    assert section["args"]["rope_base"] == 1e6 and section["args"]["num_kv_heads"] == hf["num_key_value_heads"]
    assert section["parameters"] == sum(w.numel() for w in weights.values())

    # torchtune's tokenizer and transformers' (from tokenizer.json, and converted from tokenizer.model
    # alone where a dir has no tokenizer.json) give the same ids, BOS first
    tt = mistral_tokenizer(str(mistral_dir / "tokenizer.model"))
    assert (tt.bos_id, tt.eos_id, tt.vocab_size) == (1, 2, hf["vocab_size"])
    only_model = tmp_path / "only_model"
    only_model.mkdir()
    for name in ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(mistral_dir / name, only_model / name)
    texts = mistral._texts() + ODD_TEXTS
    for path in (mistral_dir, only_model):
        tok = AutoTokenizer.from_pretrained(str(path))
        assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
        assert [tok(t)["input_ids"] for t in texts] == [tt.encode(t, add_eos=False) for t in texts], path
        assert tok.chat_template == mistral.CHAT_TEMPLATE == chat.resolve("mistral_inst")


def test_a_second_build_is_the_same_model(mistral_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import mistral

    start = time.monotonic()
    mistral._build_tiny_mistral(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (mistral_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(mistral_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _tokenizers(mistral_dir: Path, tmp_path: Path):
    """torchtune's tokenizer as training renders it from model=auto, inspect's hf provider with
    cruijff's template, and the template."""
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune import config as tt_config

    from cruijff.config import chat

    cfg = compose_config("model=auto", f"model.path={mistral_dir}")
    assert cfg.model.tokenizer.component == "torchtune.models.mistral.mistral_tokenizer"
    assert cfg.model.chat_template == "mistral_inst"
    conf = finetune.render(cfg, tmp_path / "run", mistral_dir, tmp_path / "data.json")
    assert conf["tokenizer"]["prompt_template"] == "torchtune.models.mistral.MistralChatTemplate"
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    api = HuggingFaceAPI(str(mistral_dir), device="cpu", do_sample=False, chat_template=template)
    return tok, api, template


_KINDS = {"system": "ChatMessageSystem", "user": "ChatMessageUser", "assistant": "ChatMessageAssistant"}


def _chat_messages(record: list[dict]) -> list:
    import inspect_ai.model

    return [getattr(inspect_ai.model, _KINDS[m["role"]])(content=m["content"]) for m in record]


def test_training_and_evaluation_see_the_same_token_ids(mistral_dir, tmp_path):
    """torchtune's Mistral tokenizer, rendered from model=auto, tokenizes each record as inspect's hf
    provider prompts the model with cruijff's mistral_inst template: the prompt (BOS, which the HF
    tokenizer adds, as inspect calls it) is every token before the answer's, and the whole record is
    the template's text tokenized."""
    from torchtune.data import Message

    tok, api, template = _tokenizers(mistral_dir, tmp_path)
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        chat_text = api.hf_chat(_chat_messages(record[:-1]), [])
        assert not chat_text.startswith("<s>")  # the first BOS is the tokenizer's
        prompt = api.tokenizer(chat_text)["input_ids"]  # as inspect's hf provider calls it: BOS added
        assert prompt[0] == tok.bos_id and prompt.count(tok.bos_id) == sum(m["role"] == "user" for m in record)
        # the prompt, then the answer's tokens (with SentencePiece's leading space, which the model
        # generates) and </s>, all of which training learns
        answer = tok.encode(record[-1]["content"].rstrip(" "), add_bos=False, add_eos=False)
        assert tokens == prompt + answer + [tok.eos_id], record
        assert mask[0] and not any(mask[len(prompt):]), record
        if len(record) == 2:  # (torchtune trains on an earlier turn's answer too)
            assert all(mask[: len(prompt)]), record
        full = api.tokenizer.apply_chat_template(record, chat_template=template, tokenize=False)
        assert api.tokenizer(full)["input_ids"] == tokens, record


def test_a_system_prompt_is_refused_by_both(mistral_dir, tmp_path):
    """torchtune's MistralChatTemplate has no system role; the eval template refuses one too, rather
    than prompting in a layout training never saw."""
    from torchtune.data import Message

    tok, api, _ = _tokenizers(mistral_dir, tmp_path)
    record = CHATS[1]
    with pytest.raises(ValueError, match="System prompts are not supported"):
        tok.tokenize_messages([Message(role=m["role"], content=m["content"]) for m in record])
    with pytest.raises(Exception, match="no system role"):
        api.hf_chat(_chat_messages(record[:-1]), [])


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_mistral_trains_evaluates_and_its_adapter_is_torchtunes_merge(mistral_dir, tmp_path):
    """Mistral's q/k are permuted on conversion, as Llama's: the adapter is saved as torchtune
    permutes it, and applied to the base it gives torchtune's merged weights."""
    from cruijff.config import chat

    run_dir = family_checks.trained_run(mistral_dir, tmp_path, "mistral")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.mistral.lora_mistral"
    assert conf["checkpointer"]["model_type"] == "MISTRAL"
    ckpt = family_checks.last_epoch(run_dir)
    family_checks.assert_merged_is_base_plus_adapter(mistral_dir, ckpt)
    family_checks.assert_adapter_answers_as_merged(mistral_dir, ckpt, tmp_path, chat.resolve("mistral_inst"))


def test_a_system_prompt_for_mistral_is_refused_before_anything_runs(mistral_dir, tmp_path):
    """torchtune would fail on it once training starts (on SLURM, after the queue): refused in one line."""
    from conftest import launch

    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"a{i}", "split": split}) + "\n"
                            for i, split in enumerate(["train"] * 8 + ["validation", "test"])))
    proc = launch("model=auto", f"model.path={mistral_dir}", "dataset=file", f"dataset.path={data}",
                  "dataset.system_prompt=Be brief.", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["cruijff: error: dataset.system_prompt='Be brief.': torchtune's "
                                        "MistralChatTemplate has no system role: leave it out, or put it in the "
                                        "user's text"]
    assert not (tmp_path / "outputs").exists()


def test_chats_with_system_turns_for_mistral_are_refused_before_anything_runs(mistral_dir, tmp_path):
    from conftest import launch

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}], "split": s}) + "\n"
                            for i, s in enumerate(["train"] * 8 + ["validation", "test"])))
    proc = launch("model=auto", f"model.path={mistral_dir}", "dataset=chat", f"dataset.path={data}",
                  "dataset.split_column=split", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"cruijff: error: dataset.path='{data}': its chats have system turns") and \
        "MistralChatTemplate" in line, line
    assert not (tmp_path / "outputs").exists()
