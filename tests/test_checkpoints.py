"""Checkpoints: adapter-only by default, merged or full on request; an adapter applied to the base
in memory answers as its merged checkpoint does; export writes merged Hugging Face weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory):
    """A 2-epoch run that saves merged weights (and its adapter) per epoch; no eval."""
    work = tmp_path_factory.mktemp("merged")
    proc = launch("training.checkpoint=merged", "training.max_steps_per_epoch=30", "eval=none",
                  "experiment.name=merged", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (work / "outputs" / "merged").glob("*/run.json")]
    return run_dir


def test_each_merged_epoch_is_base_plus_its_own_adapter(merged_run, tiny_model_dir):
    """torchtune 0.6.1 on CPU merged LoRA into the live weights; cruijff's fix keeps epochs apart."""
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    cfg = yaml.safe_load((merged_run / "finetune.yaml").read_text())
    assert cfg["save_adapter_weights_only"] is False
    scale = cfg["model"]["lora_alpha"] / cfg["model"]["lora_rank"]
    checked = 0
    for epoch in (0, 1):
        d = merged_run / f"epoch_{epoch}"
        merged = load_file(d / "model-00001-of-00001.safetensors")
        adapter = load_file(d / "adapter_model.safetensors")
        for key, a in adapter.items():
            if ".lora_A." not in key:
                continue
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            w = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            assert (merged[w] - (base[w] + scale * (b @ a))).abs().max() < 1e-5, (epoch, w)
            checked += 1
    assert checked >= 2 * 14


def _answers(cell, log_dir):
    from inspect_ai.log import read_eval_log

    from cruijff.records import log_path

    log = read_eval_log(str(log_path(log_dir, cell.tasks["exact_match"].log)))
    return [(s.id, s.output.completion, s.scores["match"].value) for s in log.samples]


def test_adapter_applied_in_memory_answers_as_its_merged_checkpoint(merged_run, tiny_model_dir, tmp_path, model_loads):
    """One load of the base serves the base control and both epochs' adapters (the base weights are
    put back bit for bit between them: the next test), and each epoch's
    completions and scores equal, sample by sample, those of its merged weights loaded alone."""
    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import Evaluator, evaluate_cell

    loads = model_loads
    specs = [TaskSpec("exact_match")]
    kw = dict(data_file=assets.capitalization_file(), input_key="input", output_key="output", device="cpu",
              limit=20, display="none")
    evaluator = Evaluator()
    base = evaluator.evaluate(tiny_model_dir, specs, tmp_path / "base", **kw)
    swapped = {e: evaluator.evaluate(tiny_model_dir, specs, tmp_path / f"a{e}", adapter=merged_run / f"epoch_{e}", **kw)
               for e in (0, 1)}
    evaluator.close()
    assert len(loads) == 1 and evaluator.loads == 1, loads
    for e in (0, 1):
        merged = evaluate_cell(merged_run / f"epoch_{e}", specs, tmp_path / f"m{e}", **kw)
        assert _answers(swapped[e], tmp_path / f"a{e}") == _answers(merged, tmp_path / f"m{e}"), e
        assert swapped[e].tasks["exact_match"].value == merged.tasks["exact_match"].value
        assert swapped[e].model == str(merged_run / f"epoch_{e}")  # the cell names its checkpoint
    assert swapped[1].tasks["exact_match"].value > base.tasks["exact_match"].value


def test_base_weights_are_bit_identical_after_an_adapter(merged_run, tiny_model_dir):
    import torch
    import transformers

    from cruijff.evaluate import AdapterSwap, read_adapter

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swap = AdapterSwap(model)
    adapter = read_adapter(merged_run / "epoch_1")
    swap.apply(adapter)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(changed) == sorted(adapter.pairs)
    second = read_adapter(merged_run / "epoch_0")
    swap.apply(second)  # the next adapter goes onto the base, not onto epoch_1
    weights = model.state_dict()
    assert all(torch.equal(weights[n], before[n] + second.delta(n, before[n].dtype)) for n in second.pairs)
    swap.restore()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_export_writes_merged_weights_transformers_loads(demo, tmp_path):
    """An adapter checkpoint of the demo, exported, is its merged model: transformers loads it and
    its weights are the base's plus the adapter's update."""
    import torch
    import transformers
    from safetensors.torch import load_file

    _, run_dir, _ = demo
    ckpt = run_dir / "epoch_1"
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "cruijff", "export", str(ckpt), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peft = json.loads((ckpt / "adapter_config.json").read_text())
    base = load_file(f"{peft['base_model_name_or_path']}/model.safetensors")
    adapter = load_file(ckpt / "adapter_model.safetensors")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    transformers.AutoTokenizer.from_pretrained(str(out))
    weights = model.state_dict()
    scale = peft["lora_alpha"] / peft["r"]
    for key, a in adapter.items():
        if ".lora_A." in key:
            w = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            assert torch.allclose(weights[w], base[w] + scale * (b @ a), atol=1e-6), w
    assert torch.equal(weights["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    # not a checkpoint, or a place already taken: one line, exit 2, nothing written
    for args in ([str(run_dir)], [str(ckpt), "--out", str(out)]):
        bad = subprocess.run([sys.executable, "-m", "cruijff", "export", *args], capture_output=True, text=True)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_full_finetuning_trains_and_evaluates(tmp_path):
    proc = launch("peft=none", "optimizer.lr=1e-4", "training.epochs=1", "training.max_steps_per_epoch=10",
                  "eval.limit=10", "experiment.name=full", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs" / "full").glob("*/run.json")]
    text = (run_dir / "finetune.yaml").read_text()
    assert "tune run full_finetune_single_device" in text and "lora_rank" not in text
    names = sorted(p.name for p in (run_dir / "epoch_0").iterdir())
    assert "model-00001-of-00001.safetensors" in names and not any(n.startswith("adapter_") for n in names)
    cell = json.loads((run_dir / "eval" / "epoch_0" / "results.json").read_text())
    assert cell["tasks"]["exact_match"]["status"] == "success" and cell["tasks"]["exact_match"]["samples"] == 10
    assert "full_finetune_single_device" in (run_dir.parent / "run-experiment.log").read_text()
