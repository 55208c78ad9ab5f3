"""training.metric_logger: torchtune's own loggers. wandb runs for real, offline (no internet here)."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import compose_config, launch
from cruijff.config import config_hash


def test_where_losses_are_sent_is_not_part_of_the_run():
    disk = config_hash(compose_config())
    assert config_hash(compose_config("training.metric_logger=wandb", "training.tracking.mode=online")) == disk
    assert config_hash(compose_config("training.metric_logger=mlflow")) == disk
    assert config_hash(compose_config("training.epochs=3")) != disk


@pytest.mark.slow
def test_wandb_offline_run_logs_through_torchtunes_logger(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    proc = launch("training.metric_logger=wandb", "training.epochs=1", "training.max_steps_per_epoch=6", "eval=none",
                  "experiment.name=tracked", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "outputs" / "tracked" / "epochs1_steps6"
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["epochs"][0]["steps"] == 6  # losses still recorded
    offline = list((run_dir / "logs" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "one offline wandb run, nothing sent"
    history = next(offline[0].glob("run-*.wandb")).read_bytes()
    assert b"global_step" in history and b"loss" in history
    logged = yaml.safe_load((offline[0] / "files" / "torchtune_config.yaml").read_text())
    assert logged["metric_logger"]["mode"] == "offline" and logged["metric_logger"]["project"] == "tracked"
    assert logged["model"]["lora_rank"] == 16


@pytest.mark.slow
def test_mlflow_run_logs_each_step_to_the_sweeps_store(tmp_path):
    from mlflow.tracking import MlflowClient

    proc = launch("training.metric_logger=mlflow", "training.epochs=1", "training.max_steps_per_epoch=4", "eval=none",
                  "experiment.name=tracked", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "tracked"
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert [r.info.run_name for r in runs] == ["epochs1_steps4"]
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    ours = json.loads((sweep_dir / "epochs1_steps4" / "run.json").read_text())
    assert len(history) == 4 and history[-1].value == pytest.approx(ours["epochs"][0]["final_loss"], rel=1e-5)
