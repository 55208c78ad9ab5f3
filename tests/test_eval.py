"""Evaluation: prompt parity with training, one model load per checkpoint, user tasks."""

from __future__ import annotations

import json
from pathlib import Path


from conftest import ROOT

TASK_FILE = Path(__file__).parent / "tasks" / "letters.py"


def test_training_and_evaluation_see_the_same_token_ids(tiny_model_dir):
    """torchtune tokenizes a record for training exactly as inspect's hf provider prompts the model."""
    from inspect_ai.model import ChatMessageUser
    from inspect_ai.model._providers.hf import HuggingFaceAPI
    from omegaconf import OmegaConf
    from torchtune import config as tt_config
    from torchtune.data import Message

    from cruijff import assets

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "tiny_llama.yaml")
    tt_tok = tt_config.instantiate(OmegaConf.create({
        "_component_": cfg.tokenizer.component,
        "path": str(tiny_model_dir / cfg.tokenizer.path),
        "max_seq_len": cfg.tokenizer.max_seq_len,
        "prompt_template": OmegaConf.to_container(cfg.tokenizer.prompt_template),
    }))
    api = HuggingFaceAPI(f"{tiny_model_dir}", device="cpu", do_sample=False)
    records = json.loads(assets.capitalization_file().read_text())["test"][:50]
    records.append({"input": "Capitalize: a b  c", "output": "A b  c"})
    for r in records:
        tokens, mask = tt_tok.tokenize_messages(
            [Message(role="user", content=r["input"], masked=True),
             Message(role="assistant", content=r["output"])]
        )
        prompt = [t for t, m in zip(tokens, mask) if m]
        chat = api.hf_chat([ChatMessageUser(content=r["input"])], [])
        assert api.tokenizer(chat)["input_ids"] == prompt, r
        full = api.tokenizer.apply_chat_template(
            [{"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}],
            tokenize=False,
        )
        assert api.tokenizer(full)["input_ids"] == tokens, r


def test_one_model_load_per_checkpoint_for_all_tasks(tmp_path, tiny_model_dir, model_loads):
    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import evaluate_cell
    from cruijff.records import CellStanding, cell_standing, log_path

    loads = model_loads
    specs = [TaskSpec("exact_match", {"split": "validation"}), TaskSpec(f"{TASK_FILE}@first_letter", {"n": 5})]
    results = evaluate_cell(
        tiny_model_dir, specs, tmp_path / "cell", data_file=assets.capitalization_file(),
        input_key="input", output_key="output", device="cpu", limit=10, display="none",
    )
    assert len(loads) == 1, loads
    assert set(results.tasks) == {"exact_match", "first_letter"}
    assert results.tasks["first_letter"].samples == 5 and results.tasks["exact_match"].samples == 10
    assert cell_standing(tmp_path / "cell", None) is CellStanding.COMPLETE
    # a lost log file makes the cell incomplete again
    log_path(tmp_path / "cell", results.tasks["first_letter"].log).unlink()
    assert cell_standing(tmp_path / "cell", None) is CellStanding.FAILED


def test_merged_checkpoint_is_read_without_its_adapter_files(tmp_path):
    from cruijff.evaluate.backend import _weights_view

    ckpt = tmp_path / "epoch_0"
    ckpt.mkdir()
    for name in ["model-00001-of-00001.safetensors", "config.json", "adapter_config.json",
                 "adapter_model.safetensors", "tokenizer.model"]:
        (ckpt / name).write_text("x")
    view = _weights_view(ckpt)
    assert sorted(p.name for p in view.iterdir()) == ["config.json", "model-00001-of-00001.safetensors",
                                                      "tokenizer.model"]
    assert all(p.is_symlink() for p in view.iterdir())
    assert _weights_view(view) is None  # nothing to hide: the dir is used as it is


def test_the_configured_chat_template_lays_out_the_eval_prompts(tmp_path, tiny_model_dir):
    """The chat template given reaches the model through inspect's hf provider: here one that turns
    the dataset's "Capitalize: x" into the "Upper: x" the tiny model also knows, so its answers come
    in capitals. The template is part of the cell's key (tests/test_identity.py)."""
    from inspect_ai.log import read_eval_log

    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import evaluate_cell
    from cruijff.records import log_path

    content = "{{- message['content'].rstrip(' ') -}}"
    assert content in assets.CHAT_TEMPLATE
    upper = assets.CHAT_TEMPLATE.replace(content, content.replace(" -}}", " | replace('Capitalize', 'Upper') -}}"))
    specs = [TaskSpec("exact_match")]
    kw = dict(data_file=assets.capitalization_file(), input_key="input", output_key="output", device="cpu",
              limit=5, display="none")
    default = evaluate_cell(tiny_model_dir, specs, tmp_path / "a", **kw)
    mine = evaluate_cell(tiny_model_dir, specs, tmp_path / "b", chat_template=upper, **kw)

    def answers(result):
        log = log_path(tmp_path / ("b" if result is mine else "a"), result.tasks["exact_match"].log)
        return [s.output.completion.strip() for s in read_eval_log(str(log)).samples]

    assert all(a.isupper() for a in answers(mine)), answers(mine)
    assert not any(a.isupper() for a in answers(default)), answers(default)


def test_a_task_on_two_splits_shows_each_split_under_its_own_label_in_inspect(tmp_path, tiny_model_dir):
    """The validation and test logs of one task are told apart by their task name in `inspect view`:
    each carries the task's label from the config (a file task and the built-in alike)."""
    from inspect_ai.log import read_eval_log

    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import evaluate_cell
    from cruijff.records import log_path

    capitalize = f"{Path(__file__).parent / 'tasks' / 'capitalize.py'}@capitalize"
    specs = [TaskSpec(capitalize, {"n": 3}), TaskSpec(capitalize, {"n": 3, "split": "validation"}, "capitalize_val"),
             TaskSpec("exact_match"), TaskSpec("exact_match", {"split": "validation"}, "exact_match_val")]
    results = evaluate_cell(tiny_model_dir, specs, tmp_path / "cell", data_file=assets.capitalization_file(),
                            input_key="input", output_key="output", device="cpu", limit=3, display="none")
    names = {label: read_eval_log(str(log_path(tmp_path / "cell", r.log)), header_only=True).eval.task
             for label, r in results.tasks.items()}
    assert names == {"capitalize": "capitalize", "capitalize_val": "capitalize_val",
                     "exact_match": "exact_match", "exact_match_val": "exact_match_val"}
    assert {label: r.task for label, r in results.tasks.items()} == names
    assert all(r.status == "success" and r.samples == 3 for r in results.tasks.values())
