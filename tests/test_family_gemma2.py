"""Gemma 2 end to end: the tiny Gemma 2 built locally (cruijff.assets.families), with Gemma's
SentencePiece tokenizer files, described by ``model=auto``: training and evaluation see the same
token ids, and a LoRA run's adapter, applied in memory, answers as its merged export does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import family_checks
from conftest import CHATS, compose_config
from cruijff import finetune

RECORDS = [*CHATS, [{"role": "user", "content": "  héllo <end_of_turn> wörld \n"}, {"role": "assistant", "content": "Héllo"}]]


@pytest.fixture(scope="session")
def gemma_dir() -> Path:
    from cruijff.assets.families import gemma2

    return gemma2.tiny_gemma2_dir()


def test_the_tiny_gemma2_is_a_gemma2_dir_in_its_own_formats(gemma_dir):
    import sentencepiece as spm
    from safetensors.torch import load_file
    from sentencepiece import sentencepiece_model_pb2
    from torchtune.models.gemma import gemma_tokenizer
    from transformers import AutoTokenizer

    from cruijff.assets.families import gemma2
    from cruijff.assets.families.bpe import corpus
    from cruijff.config import auto, chat

    hf = json.loads((gemma_dir / "config.json").read_text())
    assert hf["architectures"] == ["Gemma2ForCausalLM"] and hf["tie_word_embeddings"] is True
    assert hf["head_dim"] * hf["num_attention_heads"] != hf["hidden_size"]  # as Gemma 2's: its own head_dim
    assert (hf["attn_logit_softcapping"], hf["final_logit_softcapping"]) == (50.0, 30.0)
    assert hf["hidden_activation"] == "gelu_pytorch_tanh" and hf["query_pre_attn_scalar"] == hf["head_dim"]
    assert hf["layer_types"] == ["sliding_attention", "full_attention"] and hf["sliding_window"] > 0
    gen = json.loads((gemma_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [1, 107] and gen["bos_token_id"] == 2 and gen["pad_token_id"] == 0

    # Gemma's SentencePiece model: BPE, no dummy prefix, byte fallback, its pieces at their ids
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((gemma_dir / "tokenizer.model").read_bytes())
    assert proto.trainer_spec.model_type == sentencepiece_model_pb2.TrainerSpec.BPE
    assert proto.normalizer_spec.add_dummy_prefix is False and proto.trainer_spec.byte_fallback is True
    pieces = [p.piece for p in proto.pieces]
    assert pieces[:4] == ["<pad>", "<eos>", "<bos>", "<unk>"] and pieces[4:108] == gemma2.GEMMA_PIECES
    assert pieces[106:108] == ["<start_of_turn>", "<end_of_turn>"] and pieces[108] == "<0x00>"
    user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    assert all(p.type == user_defined for p in proto.pieces[4:108])
    assert hf["vocab_size"] == len(pieces) == 512

    weights = load_file(gemma_dir / "model.safetensors")
    assert "lm_head.weight" not in weights and "model.layers.0.pre_feedforward_layernorm.weight" in weights
    assert not weights["model.embed_tokens.weight"][4:106].any()  # the unused ids
    section = auto.describe(gemma_dir)
    assert section["version"] == "Gemma 2" and section["tied_embeddings"] is True
    assert section["model_type"] == "GEMMA2" and section["component"] == "torchtune.models.gemma2.lora_gemma2"
    assert section["parameters"] == sum(w.numel() for w in weights.values()) == 16016
    assert section["args"] | {"head_dim": 16, "hidden_capping_value": 50.0, "final_capping_value": 30.0,
                              "sliding_window_size": 8, "query_pre_attn_scalar": 16} == section["args"]

    # torchtune's Gemma tokenizer and transformers' read the same ids
    tt = gemma_tokenizer(str(gemma_dir / "tokenizer.model"))
    assert (tt.pad_id, tt.eos_id, tt.bos_id) == (0, 1, 2)
    tok = AutoTokenizer.from_pretrained(str(gemma_dir))
    assert type(tok).__name__ == "GemmaTokenizer" and len(tok) == 512
    assert tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]) == \
        [0, 1, 2, 3, 106, 107]
    sp = spm.SentencePieceProcessor(model_file=str(gemma_dir / "tokenizer.model"))
    texts = corpus()[:500] + ["<start_of_turn>user\nCapitalize: paris<end_of_turn>\n<start_of_turn>model\n",
                              "  héllo <end_of_turn> wörld \n", "Be brief.\n\n日本\t2024 <unused3>x"]
    for text in texts:
        assert tok(text)["input_ids"] == [2] + sp.encode(text) == [2] + tt.encode(text, add_bos=False, add_eos=False), text
    assert tok.chat_template == gemma2.CHAT_TEMPLATE == chat.resolve("gemma")


def test_a_second_build_is_the_same_model(gemma_dir, tmp_path):
    from safetensors.torch import load_file

    from cruijff.assets.families import gemma2

    start = time.monotonic()
    gemma2._build_tiny_gemma2(tmp_path)
    assert time.monotonic() - start < 60
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        assert (tmp_path / name).read_bytes() == (gemma_dir / name).read_bytes(), name
    a, b = load_file(tmp_path / "model.safetensors"), load_file(gemma_dir / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_training_and_evaluation_see_the_same_token_ids(gemma_dir, tmp_path):
    """torchtune's Gemma tokenizer with cruijff's Gemma prompt template, rendered from model=auto,
    tokenizes each record as inspect's hf provider prompts the model with cruijff's "gemma"
    template: the prompt (BOS and all, as inspect tokenizes it) is every token before the answer's,
    and the whole record (answer, <end_of_turn>, EOS) is the template's text tokenized."""
    from inspect_ai.model import ChatMessageAssistant, ChatMessageSystem, ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from torchtune import config as tt_config
    from torchtune.data import Message

    from cruijff.config import chat

    cfg = compose_config("model=auto", f"model.path={gemma_dir}")
    assert cfg.model.tokenizer.component == "torchtune.models.gemma.gemma_tokenizer"
    conf = finetune.render(cfg, tmp_path / "run", gemma_dir, tmp_path / "data.json")
    tok = tt_config.instantiate(OmegaConf.create(conf["tokenizer"]))
    template = chat.resolve(cfg.model.chat_template)
    api = HuggingFaceAPI(str(gemma_dir), device="cpu", do_sample=False, chat_template=template)
    kinds = {"system": ChatMessageSystem, "user": ChatMessageUser, "assistant": ChatMessageAssistant}
    end = tok.encode("<end_of_turn>\n", add_bos=False, add_eos=False)
    assert end == [107, tok.encode("\n", add_bos=False, add_eos=False)[0]]
    for record in RECORDS:
        messages = [Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in record]
        tokens, mask = tok.tokenize_messages(messages)
        chat_text = api.hf_chat([kinds[m["role"]](content=m["content"]) for m in record[:-1]], [])
        prompt = api.tokenizer(chat_text)["input_ids"]  # inspect's call: the tokenizer adds <bos>
        assert prompt[0] == tok.bos_id and prompt.count(tok.bos_id) == 1 + sum(m["role"] == "assistant" for m in record[:-1])
        # the prompt, then the answer's tokens, <end_of_turn>\n and <eos>, which training learns
        answer = tok.encode(record[-1]["content"], add_bos=False, add_eos=False)
        assert tokens == prompt + answer + end + [tok.eos_id], record
        assert not any(mask[len(prompt):]) and mask[0], record
        full = api.tokenizer.apply_chat_template(record, chat_template=template, tokenize=False)
        assert api.tokenizer(full)["input_ids"] == tokens, record


def test_a_gemma2_adapter_is_saved_with_its_q_and_k_rows_permuted_as_its_weights():
    """torchtune's Gemma 2 conversion permutes q/k rows (its RoPE pairs neighbours, Hugging Face's
    halves), as Llama's does, so the PEFT adapter's permuted q/k lora_B rows are right as torchtune
    writes them: base + adapter in Hugging Face's layout is the merged torchtune weight converted
    (cruijff must not put them back as it does for Qwen2), with Gemma 2's own head_dim."""
    import torch
    from torchtune.models import convert_weights
    from torchtune.models.gemma2._convert_weights import gemma2_tune_to_hf

    heads, kv, dim, head_dim, rank = 2, 1, 16, 16, 4
    torch.manual_seed(0)
    base, lora = {}, {}
    for proj, out in (("q_proj", heads * head_dim), ("k_proj", kv * head_dim), ("v_proj", kv * head_dim)):
        base[f"layers.0.attn.{proj}.weight"] = torch.randn(out, dim)
        lora[f"layers.0.attn.{proj}.lora_a.weight"] = torch.randn(rank, dim)
        lora[f"layers.0.attn.{proj}.lora_b.weight"] = torch.randn(out, rank)
    merged = {k: w + lora[k.replace(".weight", ".lora_b.weight")] @ lora[k.replace(".weight", ".lora_a.weight")]
              for k, w in base.items()}
    kw = dict(num_heads=heads, num_kv_heads=kv, dim=dim, head_dim=head_dim)
    hf_base, hf_merged = gemma2_tune_to_hf(dict(base), **kw), gemma2_tune_to_hf(dict(merged), **kw)
    peft = convert_weights.tune_to_peft_adapter_weights(dict(lora), **kw)
    for key, w in hf_base.items():
        b = peft["base_model.model." + key.replace(".weight", ".lora_B.weight")]
        a = peft["base_model.model." + key.replace(".weight", ".lora_A.weight")]
        torch.testing.assert_close(w + b @ a, hf_merged[key], msg=key)


def test_the_model_torchtune_trains_computes_the_hugging_face_models_logits(gemma_dir, tmp_path):
    """The model torchtune's LoRA recipe fine-tunes, set up as cruijff's run sets it up from the
    rendered config, gives the logits of the Hugging Face model the evals run (LoRA's B is zero
    before training: the base model). torchtune 0.6.1 alone does not: its GEMMA2 conversion swaps
    the norms before and after the MLP (torchtune issue #2850) and it soft-caps the final norm's
    output instead of the logits (cruijff.finetune.recipe.fix_gemma2)."""
    import torch
    from torchtune import config as tt_config
    from torchtune.data import Message
    from transformers import AutoModelForCausalLM

    from cruijff import assets
    from cruijff.finetune import recipe as runner
    from cruijff.finetune.render import recipe_class, recipe_name

    cfg = compose_config("model=auto", f"model.path={gemma_dir}", "training=smoke")
    conf = OmegaConf.create(finetune.render(cfg, tmp_path / "run", gemma_dir, assets.capitalization_file()))
    module = runner._load_recipe_module(recipe_name(1, "lora"))
    recipe = getattr(module, recipe_class(1, "lora"))(cfg=conf)
    runner.watch_saves(recipe, conf)
    runner.fix_gemma2(recipe, conf)
    recipe.setup(cfg=conf)
    tok = tt_config.instantiate(conf.tokenizer)
    ids = torch.tensor([tok.tokenize_messages([Message("user", "Capitalize: paris"), Message("assistant", "Paris")])[0]])
    assert ids.shape[1] > conf.model.sliding_window_size
    hf = AutoModelForCausalLM.from_pretrained(str(gemma_dir), attn_implementation="eager").eval()
    model = recipe._model.eval()
    with torch.no_grad():
        logits = model(ids)  # the recipe's chunks of the output (its chunked loss)
        logits = torch.cat(logits, dim=1) if isinstance(logits, list) else logits
        torch.testing.assert_close(logits, hf(ids).logits, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_the_tiny_gemma2_trains_evaluates_and_its_adapter_is_torchtunes_merge(gemma_dir, tmp_path):
    from cruijff.config import chat

    run_dir = family_checks.trained_run(gemma_dir, tmp_path, "gemma2")
    conf = family_checks.rendered(run_dir)
    assert conf["model"]["_component_"] == "torchtune.models.gemma2.lora_gemma2"
    assert conf["checkpointer"]["model_type"] == "GEMMA2"
    ckpt = family_checks.last_epoch(run_dir)
    family_checks.assert_merged_is_base_plus_adapter(gemma_dir, ckpt)
    family_checks.assert_adapter_answers_as_merged(gemma_dir, ckpt, tmp_path, chat.resolve("gemma"))
