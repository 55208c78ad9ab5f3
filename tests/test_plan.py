"""The sweep plan: each grid point's config as Hydra composes it, checked before anything runs."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, launch
from cruijff.config import CruijffError, config_hash, register_resolvers
from cruijff.launch import resolve_paths
from cruijff.plan import FINISHED, NEW, Planner

register_resolvers()


@pytest.fixture()
def hydra_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield lambda overrides: compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


def _hash(cfg):
    return config_hash(cfg, *resolve_paths(cfg, build=False))


@pytest.mark.parametrize("job", [
    ["peft.lora_rank=16", "optimizer.lr=0.003"],
    ["training.epochs=3", "peft.lora_dropout=0.1", "seed=7"],
    ["dataset.input_key=question", "training.batch_size=4"],
])
def test_planned_config_equals_the_config_hydra_composes(hydra_compose, tmp_path, job):
    master = hydra_compose([])
    planner = Planner(master, tmp_path, compose=lambda ov: pytest.fail("fast path expected"))
    assert _hash(planner.job_config(job)) == _hash(hydra_compose(job))


def test_group_overrides_go_through_hydra(hydra_compose, tmp_path):
    composed = []
    planner = Planner(hydra_compose([]), tmp_path,
                      compose=lambda ov: composed.append(ov) or hydra_compose(ov))
    cfg = planner.job_config(["eval=none", "peft.lora_rank=4"])
    assert composed == [["eval=none", "peft.lora_rank=4"]]
    assert cfg.eval.enabled is False and cfg.peft.lora_rank == 4


def test_sweep_over_a_missing_key_names_it_with_a_hint(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    with pytest.raises(CruijffError, match=r"peft\.lora_rnk='8': no such key.*did you mean peft\.lora_rank"):
        planner.plan([["peft.lora_rnk=8"]])


def test_bad_value_at_one_grid_point_names_the_run(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    with pytest.raises(CruijffError, match=r"run lr-1e-3: optimizer\.lr=-0\.001: must be a number > 0"):
        planner.plan([["optimizer.lr=0.001"], ["optimizer.lr=-0.001"]])


def test_two_grid_points_in_one_run_dir_are_refused(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    with pytest.raises(CruijffError, match="same run dir 'lr1e-3'"):
        planner.plan([["optimizer.lr=1e-3"], ["optimizer.lr=0.001"]])


def test_state_comes_from_run_json_and_checkpoints(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    [run] = planner.plan([["training.epochs=1"]])
    assert run.state == NEW
    run_dir = tmp_path / run.name
    (run_dir / "epoch_0").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config_hash": run.config_hash}))
    assert planner.plan([["training.epochs=1"]])[0].state != FINISHED  # no weights on disk: redo
    for f in ("adapter_model.safetensors", "model-00001-of-00001.safetensors"):
        (run_dir / "epoch_0" / f).write_bytes(b"x")
    assert planner.plan([["training.epochs=1"]])[0].state == FINISHED
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config_hash": "0" * 16}))
    with pytest.raises(CruijffError, match="overwrite=False: .* different config"):
        planner.plan([["training.epochs=1"]])
    assert planner.plan([["training.epochs=1"]], overwrite=True)[0].state == "overwrite"


def test_dry_run_lists_the_grid_and_writes_nothing(tmp_path):
    proc = launch("-m", "dry_run=true", "peft.lora_rank=4,8,16", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("rank4_lr1e-5", "rank8_lr1e-4", "rank16_lr1e-3"):  # x the demo's 3 learning rates
        assert name in proc.stdout
    assert "9 runs" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_bad_grid_point_submits_nothing_and_writes_nothing(tmp_path):
    proc = launch("-m", "optimizer.lr=1e-3,-1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cruijff: error: run rank2_lr-1: optimizer.lr=-1: must be a number > 0"]
    assert not (tmp_path / "outputs").exists()


def test_optuna_keys_without_the_optuna_sweeper_get_one_line(tmp_path):
    proc = launch("-m", "experiment=lr_search", cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "hydra/sweeper=optuna" in proc.stderr


def test_planning_leaves_interpolations_of_the_sweep_config_intact(hydra_compose, tmp_path):
    master = hydra_compose(["+peft.tag=r${peft.lora_rank}"])
    planner = Planner(master, tmp_path)
    assert planner.job_config(["peft.lora_rank=4"]).peft.tag == "r4"
    assert planner.job_config(["peft.tag=fixed"]).peft.tag == "fixed"
    assert planner.job_config(["peft.lora_rank=16"]).peft.tag == "r16"  # not "fixed", not "r4"


def test_shared_command_line_overrides_are_not_composed_again(hydra_compose, tmp_path):
    shared = ["eval=none", "+peft.tag=x"]  # a group and an addition: each would need Hydra's loader
    master = hydra_compose(shared)
    planner = Planner(master, tmp_path, compose=lambda ov: pytest.fail("fast path expected"))
    cfg = planner.job_config([*shared, "peft.lora_rank=4"])
    assert _hash(cfg) == _hash(hydra_compose([*shared, "peft.lora_rank=4"]))


def test_a_mandatory_value_left_open_in_a_sweep_is_one_line(tmp_path):
    proc = launch("-m", "dataset=json", "optimizer.lr=1e-3,1e-4", cwd=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("cruijff: error: run ") and "dataset.path" in line
    assert not (tmp_path / "outputs").exists()
