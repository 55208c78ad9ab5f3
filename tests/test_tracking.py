"""training.metric_logger: torchtune's own loggers. wandb runs for real, offline (no internet here)."""

from __future__ import annotations

import json

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT, launch
from cruijff.config import config_hash, register_resolvers


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def test_where_losses_are_sent_is_not_part_of_the_run():
    disk = config_hash(_compose())
    assert config_hash(_compose("training.metric_logger=wandb", "training.tracking.mode=online")) == disk
    assert config_hash(_compose("training.metric_logger=mlflow")) == disk
    assert config_hash(_compose("training.epochs=3")) != disk


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
