"""End to end on the tiny model: real torchtune, real inspect-ai, the launcher as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from pathlib import Path

import pytest
import yaml

from conftest import launch

pytestmark = pytest.mark.slow


def test_run_dir_holds_everything_needed_to_reproduce(demo):
    _, run_dir, _ = demo
    for rel in [".hydra/config.yaml", ".hydra/overrides.yaml", "finetune.yaml", "manifest.json",
                "run.json", "logs/launch.log", "logs/loss.jsonl", "results.csv", "results.md",
                "epoch_0/adapter_model.safetensors", "epoch_1/adapter_config.json", "epoch_1/tokenizer.model",
                "eval/epoch_0/results.json", "eval/epoch_1/results.json"]:
        assert (run_dir / rel).exists(), rel
    # a checkpoint is an adapter: no copy of the model's weights, no second copy of the adapter
    for epoch in ("epoch_0", "epoch_1"):
        assert sorted(p.name for p in (run_dir / epoch).glob("*.safetensors")) == ["adapter_model.safetensors"]
        assert not (run_dir / epoch / "adapter_model.pt").exists()
    peft = json.loads((run_dir / "epoch_1" / "adapter_config.json").read_text())
    assert peft["task_type"] == "CAUSAL_LM" and peft["r"] == 16 and "q_proj" in peft["target_modules"]
    assert (Path(peft["base_model_name_or_path"]) / "config.json").exists()
    assert list((run_dir / "eval" / "epoch_1").glob("*.eval")), "inspect log missing"
    [base] = (run_dir.parent / "base").glob("tiny_llama-*")  # the control, named for its model and keyed
    assert (base / "results.json").exists()
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["error"] is None
    assert state["checkpoints"] == ["epoch_0", "epoch_1"]
    assert state["version"] == 1
    # the processes it trained on and the examples per optimizer step: batch x accumulation x processes
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert state["nproc"] == 1
    assert state["effective_batch"] == cfg["training"]["batch_size"] * cfg["training"]["gradient_accumulation_steps"]
    log = (run_dir.parent / "run-experiment.log").read_text()
    assert re.search(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ACTION: Fine-tune", log, re.M)


def test_manifest_records_git_seed_versions_command(demo):
    work, run_dir, _ = demo
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["git"]["dirty"] is True and len(m["git"]["commit"]) == 40 and m["git"]["branch"] == "main"
    assert "edited" in (run_dir / m["git"]["diff_file"]).read_text()
    assert m["seed"] == 42
    for pkg in ("python", "torch", "torchtune", "inspect_ai", "transformers", "hydra-core"):
        assert m["versions"][pkg], pkg
    assert m["command"].startswith("python launch.py")
    assert m["host"] and m["start"] and m["end"]


def test_loss_falls_and_last_epoch_beats_base_on_held_out_test(demo):
    _, run_dir, proc = demo
    epochs = json.loads((run_dir / "run.json").read_text())["epochs"]
    assert epochs[-1]["mean_loss"] < 0.5 * epochs[0]["mean_loss"]
    [base_dir] = (run_dir.parent / "base").glob("tiny_llama-*")
    base = json.loads((base_dir / "results.json").read_text())
    last = json.loads((run_dir / "eval" / "epoch_1" / "results.json").read_text())
    b, e = base["tasks"]["exact_match"]["value"], last["tasks"]["exact_match"]["value"]
    assert base["tasks"]["exact_match"]["samples"] == 100
    assert e >= b + 0.3, (b, e)
    # the printed table has a row per checkpoint
    for label in ("base", "epoch_0", "epoch_1"):
        assert label in proc.stdout


def test_inspect_reads_our_logs(demo):
    from inspect_ai.log import list_eval_logs, read_eval_log

    _, run_dir, _ = demo
    logs = list_eval_logs(str(run_dir / "eval"))
    assert len(logs) == 2
    header = read_eval_log(logs[0], header_only=True)
    assert header.status == "success" and header.eval.metadata["run"] == "default"


def test_tune_run_on_rendered_config_reproduces_first_step_loss(demo, tmp_path):
    """`tune run lora_finetune_single_device --config finetune.yaml` is the same run."""
    _, run_dir, _ = demo
    out = tmp_path / "rerun"
    subprocess.run(
        ["tune", "run", "lora_finetune_single_device", "--config", str(run_dir / "finetune.yaml"),
         f"output_dir={out}", "max_steps_per_epoch=2", "epochs=1"],
        check=True, capture_output=True, text=True, timeout=300,
    )
    logged = next((out / "logs").glob("log_*.txt")).read_text()
    first = float(re.search(r"Step 1 \| loss:([0-9.]+)", logged).group(1))
    ours = json.loads((run_dir / "logs" / "loss.jsonl").read_text().splitlines()[0])
    assert ours["step"] == 1
    assert first == pytest.approx(ours["loss"], rel=1e-4)


def test_rerun_of_finished_run_skips_finetune_and_eval(demo):
    work, run_dir, _ = demo
    before = (run_dir / "epoch_1" / "adapter_model.safetensors").stat().st_mtime
    proc = launch(cwd=work, check=True)
    assert "skipped" in proc.stdout
    assert (run_dir / "epoch_1" / "adapter_model.safetensors").stat().st_mtime == before
    assert "ACTION: Skip eval" in (run_dir.parent / "run-experiment.log").read_text()


def test_changed_config_in_same_dir_is_refused(demo):
    work, run_dir, _ = demo
    # same run name ("default") but another seed through the experiment's own config is refused
    proc = launch("seed=7", "hydra.run.dir=outputs/demo/default", cwd=work)
    assert proc.returncode == 2
    assert "overwrite=true" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"


def test_eval_stage_runs_alone_on_an_existing_run_dir(demo):
    """`python -m cruijff eval <run dir>` redoes only the missing cell."""
    import shutil

    work, run_dir, _ = demo
    shutil.rmtree(run_dir / "eval" / "epoch_0")
    proc = subprocess.run([sys.executable, "-m", "cruijff", "eval", str(run_dir)], cwd=work,
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "INSPECT_DISPLAY": "none"})
    assert proc.returncode == 0, proc.stderr
    assert "default: epoch_0: exact_match" in proc.stdout and "epoch_1:" not in proc.stdout
    res = json.loads((run_dir / "eval" / "epoch_0" / "results.json").read_text())
    assert res["tasks"]["exact_match"]["status"] == "success"


@pytest.mark.slow
def test_diverging_run_stops_at_the_first_nan_loss(tmp_path, tiny_model_dir):
    proc = launch("optimizer.lr=1e6", "training.epochs=1", "eval=none", "experiment.name=nan", cwd=tmp_path)
    assert proc.returncode == 1
    state = json.loads((tmp_path / "outputs" / "nan" / "lr1e6_epochs1" / "run.json").read_text())
    assert state["status"] == "failed"
    assert state["error"].startswith("loss became nan at epoch 0 step ")
    assert int(state["error"].split(" step ")[1].split()[0]) < 20  # stopped, not trained to the end
    assert state["checkpoints"] == []


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def test_a_launch_with_a_task_that_does_not_load_leaves_a_finished_run_untouched(demo, tmp_path):
    """The finished demo run, launched again with an eval task that fails at import: refused with one
    line before anything is written (its saved config once took the bad eval section, then the
    eval failed with a traceback). ``python -m cruijff eval`` on it refuses the same way."""
    import os
    import shutil

    work, run_dir, _ = demo
    shutil.copytree(work / "outputs", tmp_path / "outputs", symlinks=True)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "broken.py").write_text("import nope_not_a_module\n\n\ndef t():\n    pass\n")
    before = _snapshot(tmp_path / "outputs")
    proc = launch("eval.tasks=[{name: tasks/broken.py@t}]", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        "cruijff: error: eval.tasks[0].name='tasks/broken.py@t': importing tasks/broken.py failed: "
        "ModuleNotFoundError: No module named 'nope_not_a_module'"]
    assert _snapshot(tmp_path / "outputs") == before  # .hydra/config.yaml, run.json, logs: all as they were

    copy = tmp_path / "outputs" / "demo" / "default"
    saved = copy / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(saved.read_text())
    cfg["eval"]["tasks"] = [{"name": str(tmp_path / "tasks" / "broken.py") + "@t", "args": {}}]
    saved.write_text(yaml.safe_dump(cfg))  # another task: every cell is to do again
    before = _snapshot(tmp_path / "outputs")
    for target in (copy, copy.parent):  # the run dir, and the sweep dir holding it
        proc = subprocess.run([sys.executable, "-m", "cruijff", "eval", str(target)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env={**os.environ, "INSPECT_DISPLAY": "none"})
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.splitlines() == [
            f"cruijff: error: eval.tasks[0].name='{tmp_path}/tasks/broken.py@t': importing {tmp_path}/tasks/broken.py "
            "failed: ModuleNotFoundError: No module named 'nope_not_a_module'"]
        assert _snapshot(tmp_path / "outputs") == before
