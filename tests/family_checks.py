"""The end-to-end check each family's tiny model passes (tests/test_family_*.py): a smoke run of
``model=auto`` trains a few steps and saves each epoch as torchtune's merged weights and the PEFT
adapter; the adapter, merged by cruijff into the base, equals torchtune's merged weights (a wrong key,
row order or scale in the adapter fails here); applied in memory, it answers sample by sample as
the merged model does, and differently from the base."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from conftest import launch


def trained_run(model_dir: Path, cwd: Path, name: str, *overrides: str) -> Path:
    """The run dir of a smoke run of the model (merged checkpoints, every epoch evaluated)."""
    proc = launch("model=auto", f"model.path={model_dir}", "training=smoke", "training.checkpoint=merged",
                  f"experiment.name={name}", *overrides, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in (cwd / "outputs" / name).glob("*/run.json")]
    return run_dir


def rendered(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "finetune.yaml").read_text())


def last_epoch(run_dir: Path) -> Path:
    epochs = sorted(run_dir.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
    assert epochs, f"{run_dir}: no epoch saved"
    results = json.loads((run_dir / "eval" / epochs[-1].name / "results.json").read_text())
    assert results["tasks"]["exact_match"]["status"] == "success"
    return epochs[-1]


def assert_merged_is_base_plus_adapter(model_dir: Path, ckpt: Path) -> int:
    """torchtune's merged weights of ``ckpt`` are the base's plus the PEFT adapter's update, weight by
    weight; returns how many weights the adapter changes."""
    import torch
    from safetensors.torch import load_file

    from cruijff.evaluate.adapter import read_adapter

    base = {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    merged = {k: v for f in sorted(ckpt.glob("model-*.safetensors")) for k, v in load_file(f).items()}
    adapter = read_adapter(ckpt)
    assert adapter.pairs and set(adapter.pairs) <= set(base), sorted(set(adapter.pairs) - set(base))[:3]
    assert set(base) <= set(merged), sorted(set(base) - set(merged))[:3]
    for key, w in base.items():
        expected = w.float() + adapter.delta(key) if key in adapter.pairs else w.float()
        torch.testing.assert_close(merged[key].float(), expected, rtol=1e-4, atol=1e-5, msg=key)
    changed = [k for k in adapter.pairs if not torch.equal(merged[k], base[k])]
    assert changed, "the adapter changed no weight: a check of nothing"
    return len(changed)


def answers(cell_dir: Path) -> list:
    """(sample id, completion, score) of a cell's one task, from its inspect log."""
    from inspect_ai.log import read_eval_log

    (log,) = cell_dir.glob("*.eval")
    return [(s.id, s.output.completion, s.scores["match"].value) for s in read_eval_log(str(log)).samples]


def assert_adapter_answers_as_merged(model_dir: Path, ckpt: Path, tmp_path: Path, chat_template: str | None) -> None:
    """Evaluated with the adapter applied in memory, the checkpoint answers every sample as its
    merged weights did in the run's own eval, and not all as the run's base control did."""
    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import Evaluator

    run_dir = ckpt.parent
    merged = answers(run_dir / "eval" / ckpt.name)  # the launch evaluated the merged weights
    assert json.loads((run_dir / "eval" / ckpt.name / "results.json").read_text())["metadata"]["adapter"] is False
    (base,) = [d for d in (run_dir.parent / "base").iterdir() if (d / "results.json").exists()]
    evaluator = Evaluator()
    try:
        evaluator.evaluate(model_dir, [TaskSpec("exact_match")], tmp_path / "a", adapter=ckpt,
                           data_file=assets.capitalization_file(), input_key="input", output_key="output",
                           device="cpu", limit=len(merged), display="none", chat_template=chat_template)
    finally:
        evaluator.close()
    assert answers(tmp_path / "a") == merged
    assert merged != answers(base)  # the adapter changed something
