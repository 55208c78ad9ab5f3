"""Config composition, run names, and one-line errors for bad input (nothing written)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, launch
from cruijff.config import config_hash, register_resolvers, run_name, validate


@pytest.fixture(scope="module")
def cfg():
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config")


def test_default_config_is_tiny_lora_demo(cfg):
    assert cfg.model.name == "tiny_llama" and cfg.dataset.name == "capitalization"
    assert cfg.peft.lora_rank == 16 and cfg.training.device == "auto"
    validate(cfg)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ([], "default"),
        (["peft.lora_rank=8", "optimizer.lr=3e-3"], "rank8_lr3e-3"),
        (["model=tiny_llama", "training.epochs=3"], "model-tiny-llama_epochs3"),
        (["eval=none", "overwrite=true", "hydra.verbose=true"], "default"),
        (["dataset.path=/data/my set.json"], "path-my-set.json"),
    ],
)
def test_run_name_comes_from_overrides(overrides, expected):
    assert run_name(overrides) == expected


def test_config_hash_ignores_eval_but_not_training(cfg):
    other = cfg.copy()
    other.eval.max_tokens = 99
    assert config_hash(other) == config_hash(cfg)
    other.optimizer.lr = 1.0
    assert config_hash(other) != config_hash(cfg)


@pytest.mark.parametrize(
    "args, key",
    [
        (["model=llama9000"], "model="),
        (["dataset=capitalisation"], "dataset="),
        (["peft.lora_rank=0"], "peft.lora_rank"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["training.epochs=0"], "training.epochs"),
        (["peft.lora_dropout=1.5"], "peft.lora_dropout"),
        (["model.path=/nonexistent/model"], "model.path"),
        (["dataset.path=/nonexistent.json"], "dataset.path"),
        (["eval.tasks=[{name: nope}]"], "eval.tasks[0].name"),
        (["eval.epochs=[5]"], "eval.epochs"),
        (["dataset=json"], "dataset.path"),
        (["training.batch_size=two"], "training.batch_size"),
        (["training.dtype=fp8"], "training.dtype"),
        (["peft.lora_rnk=8"], "peft.lora_rnk='8': no such key in the config (did you mean peft.lora_rank?)"),
        (["-m", "optimizer.lrr=1e-4,1e-3"], "optimizer.lrr='0.0001': no such key in the config (did you mean optimizer.lr?)"),
        (["peft.lora_alpha=0"], "peft.lora_alpha=0: must be a number > 0"),
        (["training.batch_size=0"], "training.batch_size=0: must be an integer >= 1"),
        (["peft.lora_dropout=-0.1"], "peft.lora_dropout=-0.1: must be a number with 0 <= dropout < 1"),
        (["peft.lora_rank=abc"], "peft.lora_rank='abc': must be an integer >= 1"),
        (["training.nproc=0"], "training.nproc=0: must be an integer >= 1"),
        (["training.device=tpu"], "training.device='tpu': one of auto, cpu, cuda, cuda:N, mps"),
        (["peft.apply_lora_to_output=maybe"], "peft.apply_lora_to_output='maybe': true, false or auto"),
        (["cluster=slurm", "cluster.eval_after=later"], "cluster.eval_after='later': run"),
        (["model=llama3_2_1b_instruct"], "model.path=???: a value is required"),
        (["eval.tasks=[{name: tasks/missing.py@t}]"], "task file tasks/missing.py does not exist"),
        (["-m", "optimizer.lr=1e-4,-1"], "run rank2_lr-1: optimizer.lr=-1: must be a number > 0"),
        (["training=nope"], "training='nope': no such training; choose one of: default, smoke"),
        (["peft.lora_rank=[1"], "cannot parse the overrides"),
        (["scaffold=true"], "scaffold=True: renders a grid sweep's files: python launch.py -m ... scaffold=true"),
        (["base_recipe=llama3_2/1B_lora_singel_device"], "not a torchtune config (did you mean llama3_2/1B_lora_single_device?)"),
        (["eval.max_tokens=abc"], "eval.max_tokens='abc': must be an integer >= 1"),
        (["training.compile=3"], "training.compile=3: must be true or false"),
        (["training.max_steps_per_epoch=-3"], "training.max_steps_per_epoch=-3: must be an integer >= 1 or null"),
        (["optimizer.weight_decay=-0.1"], "optimizer.weight_decay=-0.1: must be a number >= 0"),
        (["seed=abc"], "seed='abc': must be an integer >= 0"),
        (["cluster=slurm", "cluster.max_parallel=0"], "cluster.max_parallel=0: must be an integer >= 1 or auto"),
        # a value that follows a swept key is checked at every grid point, not only the first
        (["-m", "cluster=slurm", "model.resources.epoch_min=1,-5"], "cluster.timeout_min=-2: must be a number > 0"),
        (["model.chat_template=lama3"], "model.chat_template='lama3': not a chat template (did you mean llama3?)"),
        (["eval.chat_template=chatm"], "eval.chat_template='chatm': not a chat template (did you mean chatml?): one of auto,"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, key):
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cruijff: error: ") and key in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json {", "not valid JSON"),
        ('{"train": [{"input": "a", "output": "b"}]}', "'test'"),
        ('{"train": [{"question": "a", "output": "b"}], "test": [{"input": "a", "output": "b"}]}', "'input'"),
    ],
)
def test_bad_dataset_file_is_named(tmp_path, content, problem):
    data = tmp_path / "data.json"
    data.write_text(content)
    proc = launch("dataset=json", f"dataset.path={data}", cwd=tmp_path)
    assert proc.returncode == 2 and problem in proc.stderr and "dataset.path" in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_did_you_mean_for_group_names(tmp_path):
    proc = launch("dataset=capitalisation", cwd=tmp_path)
    assert "did you mean 'capitalization'" in proc.stderr
