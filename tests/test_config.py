"""Config composition, run names, and one-line errors for bad input (nothing written)."""

from __future__ import annotations

import re

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
        (["-m", "cluster=slurm", "+cluster.sbatch.array=0-3"], "cluster.sbatch.array='0-3': cruijff sets it"),
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
        # a sweep checks its eval tasks before it plans a run or submits a job
        (["-m", "eval.tasks=[{name: nope}]", "dry_run=true"], "eval.tasks[0].name='nope': unknown task"),
        (["-m", "eval.tasks=[{name: nope}]"], "eval.tasks[0].name='nope': unknown task"),
        # an unsigned 32-bit seed, as torchtune's set_seed takes
        (["seed=99999999999999999999999"], "seed=99999999999999999999999: must be an integer >= 0 and <= 4294967295"),
        (["-m", "seed=1,4294967296"], "run rank2_lr1e-5_seed4294967296: seed=4294967296: must be an integer >= 0 and <= 4294967295"),
        # nothing to evaluate is not an eval
        (["eval.tasks=[]"], "eval.tasks=[]: no task to evaluate the checkpoints on: name one, or fine-tune only with eval=none"),
        # a train split smaller than one optimizer step would train nothing (the embedded data: 1000 examples)
        (["training.batch_size=500", "training.gradient_accumulation_steps=3"],
         "training.batch_size=500: one optimizer step takes 1500 examples (training.batch_size 500 x "
         "training.gradient_accumulation_steps 3 x 1 process), but the train split of data.json has 1000: no step "
         "would be trained; lower the batch or add examples"),
        (["-m", "training.batch_size=8,2000"], "one optimizer step takes 2000 examples"),
        # the built-in task's split and arguments, against the data, before anything runs
        (["eval.tasks=[{name: exact_match, args: {split: validaton}}]"],
         "eval.tasks[0].args.split='validaton': data.json has no split 'validaton' (did you mean 'validation'?); "
         "it has: train, validation, test"),
        (["-m", "eval.tasks=[{name: exact_match, args: {splt: test}}]"],
         "eval.tasks[0].args.splt='test': exact_match has no argument 'splt' (did you mean 'split'?); "
         "it takes: split, ignore_case"),
        # two tasks whose scores would land in one column
        (["eval.tasks=[{name: exact_match}, {name: exact_match, args: {split: validation}}]"],
         "eval.tasks[1]='exact_match': its scores would go under 'exact_match', as eval.tasks[0]'s do; give one a label"),
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
        # a record with nothing to learn from or to score: the split and the index named
        ('{"train": [{"input": "a", "output": "b"}, {"input": "c", "output": ""}], "test": [{"input": "a", "output": "b"}]}',
         "train[1] has an empty 'output'"),
        ('{"train": [{"input": "a", "output": "b"}], "validation": [{"input": " ", "output": "b"}], '
         '"test": [{"input": "a", "output": "b"}]}', "validation[0] has an empty 'input'"),
    ],
)
def test_bad_dataset_file_is_named(tmp_path, content, problem):
    data = tmp_path / "data.json"
    data.write_text(content)
    proc = launch("dataset=json", f"dataset.path={data}", cwd=tmp_path)
    assert proc.returncode == 2 and problem in proc.stderr and "dataset.path" in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, message", [
    (["experiment=lr_search", "optimizer.lr=1e-4,1e-3"],
     "optimizer.lr=1e-4,1e-3 is a list of values: add -m to sweep them (python launch.py -m experiment=lr_search "
     "optimizer.lr=1e-4,1e-3), or optimizer.lr=[1e-4,1e-3] for one value that is a list"),
    (["optimizer.lr=range(1,3)"], "optimizer.lr=range(1,3) is a sweep: add -m to run it "
                                  "(python launch.py -m 'optimizer.lr=range(1,3)')"),
])
def test_a_sweep_without_m_says_to_add_m(tmp_path, args, message):
    _refused_in_one_line(tmp_path, args, message)

@pytest.mark.parametrize("args, message", [
    # a key of another tool's name, or under the wrong group: the key cruijff has
    (["training.learning_rate=1e-3"], "training.learning_rate='1e-3': no such key in the config (did you mean optimizer.lr?)"),
    (["peft.epochs=3"], "peft.epochs='3': no such key in the config (did you mean training.epochs?)"),
    (["-m", "training.rank=4,8"], "run rank2_lr1e-5_rank4: training.rank='4': no such key in the config "
                                  "(did you mean peft.lora_rank?)"),
    (["lr=1e-3"], "lr='1e-3': no such key in the config (did you mean optimizer.lr?)"),
    # a misspelt config group
    (["experimnt=lr_search"], "experimnt='lr_search': no such config group (did you mean experiment=lr_search?)"),
    (["trainng=smoke"], "trainng='smoke': no such config group (did you mean training=smoke?)"),
    (["optimiser.lr=1e-3"], "optimiser.lr='1e-3': no such key in the config (did you mean optimizer.lr?)"),
    # within a group, by the part after the group's name; never a new key there
    (["training.epoch=3"], "training.epoch='3': no such key in the config (did you mean training.epochs?)"),
    (["training.zzzqq=1"], "training.zzzqq='1': no such key in the config; --cfg job shows every key"),
    (["foo=1"], "foo='1': no such key in the config; add a new key with +foo=…"),
    # a key added under a group where nothing reads it (a planned run named for it, training nothing new)
    (["-m", "+training.learning_rate=1e-3,1e-4"], "+training.learning_rate='1e-3,1e-4': training has no key "
     "learning_rate, and a key added there is read by nothing (did you mean optimizer.lr?); "
     "free-form: cluster.sbatch.*, model.args.*"),
    (["++training.foo=1"], "+training.foo='1': training has no key foo, and a key added there is read by nothing; "
                           "--cfg job shows every key; free-form: cluster.sbatch.*, model.args.*"),
])
def test_an_unknown_key_names_the_key_meant(tmp_path, args, message):
    _refused_in_one_line(tmp_path, args, message)


def _refused_in_one_line(tmp_path, args, message):
    """``launch.py ARGS`` exits 2 with exactly this one line, and writes no outputs/."""
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [f"cruijff: error: {message}"], proc.stderr
    assert not (tmp_path / "outputs").exists()

def _project(root):
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "mine.yaml").write_text("# @package _global_\nexperiment:\n  name: mine\n")
    (root / "analysis" / "notes").mkdir(parents=True)
    return root / "analysis" / "notes"


def test_a_project_is_found_from_a_dir_below_it(tmp_path):
    """As git finds its repository: the nearest dir above with cruijff init's marker (or conf/config.yaml)."""
    below = _project(tmp_path)
    (tmp_path / ".cruijff").write_text("")
    proc = launch("experiment=mine", "--cfg", "job", cwd=below)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"cruijff: project {tmp_path.resolve()} (its conf/, its relative paths, its outputs/)"
    assert "  name: mine" in proc.stdout
    proc = launch("experiment=mystudy", cwd=below)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "cruijff: error: experiment='mystudy': no such experiment; choose one of: demo, lr_search, mine; "
        f"looked in {tmp_path.resolve() / 'conf' / 'experiment'} and cruijff's own"], proc.stderr
    assert not list(tmp_path.rglob("outputs"))


def test_a_missing_option_outside_a_project_says_no_project_conf_was_found(tmp_path):
    below = _project(tmp_path)  # no marker: a conf/ above is a project's only with one (or a config.yaml)
    proc = launch("experiment=mine", cwd=below)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "cruijff: error: experiment='mine': no such experiment; choose one of: demo, lr_search; "
        f"looked in cruijff's own only: no project conf/ in {below.resolve()} or above"], proc.stderr


def test_cruijff_init_marks_the_project_root(tmp_path):
    from cruijff.config import project_root
    from cruijff.project import init_project

    init_project(tmp_path / "study")
    assert project_root(tmp_path / "study" / "tasks") == (tmp_path / "study").resolve()
    (tmp_path / "other" / "conf").mkdir(parents=True)
    (tmp_path / "other" / "conf" / "config.yaml").write_text("")
    (tmp_path / "other" / "sub").mkdir()
    assert project_root(tmp_path / "other" / "sub") == (tmp_path / "other").resolve()
    assert project_root(ROOT / "tests") is None  # cruijff's own checkout is not a project

# A project's experiment that trains longer than a smoke run and evaluates more samples per task;
# it comes after `_self_` in config.yaml's defaults, so its values win over the group presets.
LONG = ("# @package _global_\nexperiment:\n  name: long\ntraining:\n  smoke: false\n  epochs: 2\n  max_steps_per_epoch: 8\n"
        "eval:\n  limit: 50\nhydra:\n  sweeper:\n    params:\n      peft.lora_rank: 2,8\n")


def _long_project(root):
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "long.yaml").write_text(LONG)
    return root / "conf"


def _limits(cfg):
    """(epochs, steps per epoch, eval samples per task) of a run of this config."""
    return cfg.training.epochs, cfg.training.max_steps_per_epoch, cfg.eval.limit


def _composer(conf, *shared):
    """Hydra's composition of cruijff's config with the project's conf/ on the search path."""
    def composed(*overrides):
        return compose(config_name="config", overrides=[f"hydra.searchpath=[file://{conf}]", *shared, *overrides],
                       return_hydra_config=True)
    return composed


@pytest.mark.parametrize("smoke", ["training=smoke", "training.smoke=true"])
def test_the_smoke_preset_holds_over_the_experiments_epochs_steps_and_eval_limit(tmp_path, capsys, smoke):
    """The experiment sets 2 epochs of 8 steps and 50 eval samples; with the smoke preset named on the
    command line the single run and every grid point (planned fast or composed by Hydra) train 1 epoch
    of 5 steps and evaluate 10 samples, and a grid point is the same run as the single run alike."""
    from cruijff.job import dry_run
    from cruijff.plan import Planner

    conf = _long_project(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        composed = _composer(conf, "experiment=long", smoke)
        single = composed("peft.lora_rank=8")
        assert single.training.epochs == 2  # as composed: the experiment's value
        dry_run(single, tmp_path / "outputs" / "long" / "rank8", ["peft.lora_rank=8"])
        assert _limits(single) == (1, 5, 10)
        assert "rank8" in capsys.readouterr().out

        seen = {}
        planner = Planner(composed(), tmp_path / "outputs" / "long", compose=lambda ov: composed(*ov))
        runs = planner.plan([["peft.lora_rank=2"], ["peft.lora_rank=8"], ["peft=lora", "peft.lora_rank=4"]],
                            each=lambda run, cfg: seen.__setitem__(run.name, _limits(cfg)))
    assert seen == {"rank2": (1, 5, 10), "rank8": (1, 5, 10), "peft-lora_rank4": (1, 5, 10)}
    assert runs[1].config_hash == config_hash(single)


def test_a_grid_over_training_smoke_plans_each_point_with_its_own_limits(tmp_path):
    """training.smoke=false gives the experiment's values back; one grid point's smoke limits do not
    stay on the next (the planner applies plain values to one shared config)."""
    from cruijff.plan import Planner

    conf = _long_project(tmp_path)
    seen = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        planner = Planner(_composer(conf, "experiment=long")(), tmp_path / "outputs" / "long",
                          compose=lambda ov: pytest.fail("fast path expected"))
        planner.plan([[f"training.smoke={smoke}", f"seed={seed}"] for seed in (1, 2) for smoke in ("true", "false")],
                     each=lambda run, cfg: seen.__setitem__(run.name, _limits(cfg)))
    assert seen == {"smoke-true_seed1": (1, 5, 10), "smoke-false_seed1": (2, 8, 50),
                    "smoke-true_seed2": (1, 5, 10), "smoke-false_seed2": (2, 8, 50)}


def test_a_smoke_run_is_evaluated_on_at_most_the_smoke_samples_whatever_the_launch_asks(tmp_path):
    """``cruijff eval`` and a sweep's eval jobs use the launch's eval section with the run's saved config."""
    from omegaconf import OmegaConf

    from cruijff.config import eval_config

    conf = _long_project(tmp_path)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = _composer(conf, "experiment=long", "training=smoke")()
    validate(cfg)
    run_dir = tmp_path / "outputs" / "long" / "training-smoke"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), run_dir / ".hydra" / "config.yaml",
                   resolve=True)  # as a run saves it
    for asked, limit in ((50, 10), (None, 10), (3, 3)):
        evals = {**OmegaConf.to_container(cfg.eval, resolve=True), "limit": asked}
        assert eval_config(run_dir, evals).eval.limit == limit


def test_a_smoke_sweep_of_an_experiment_evaluates_one_epoch_per_run(tmp_path):
    _long_project(tmp_path)
    proc = launch("-m", "experiment=long", "training=smoke", "dry_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "eval cells: 3 (1 base)" in proc.stdout  # 2 runs x 1 epoch x 1 task, and the base control
    assert not (tmp_path / "outputs").exists()


def test_did_you_mean_for_group_names(tmp_path):
    proc = launch("dataset=capitalisation", cwd=tmp_path)
    assert "did you mean 'capitalization'" in proc.stderr


NAME_RULE = "a name is letters, digits and . _ + = -, not starting with '-' or '.', at most 128 characters"


@pytest.mark.parametrize("args, problem", [
    (["experiment.name=../escape"], "experiment.name='../escape': holds '/'"),
    (["-m", "experiment.name=../escape"], "experiment.name='../escape': holds '/'"),
    (["experiment.name=a/b"], "experiment.name='a/b': holds '/'"),
    (["experiment.name=-rf"], "experiment.name='-rf': starts with '-'"),
    (["experiment.name=.."], "experiment.name='..': starts with '.'"),
    # names reach generated shell scripts and #SBATCH headers: no spaces, shell characters or newlines
    (["experiment.name='my study'"], "experiment.name='my study': holds ' '"),
    (["-m", "experiment.name='x$(touch pwned)'", "scaffold=true"], "experiment.name='x$(touch pwned)': holds ' ', '$', '(', ')'"),
    (["experiment.name='x;touch pwned'"], "experiment.name='x;touch pwned': holds ' ', ';'"),
    (["experiment.name='a\nb'"], "experiment.name='a\\nb': holds '\\n'"),
    (["hydra.run.dir='outputs/my run'"], "run name='my run': holds ' '"),
])
def test_a_name_outside_the_safe_set_is_refused_and_nothing_is_written(tmp_path, args, problem):
    work = tmp_path / "work"
    work.mkdir()
    proc = launch(*args, cwd=work)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"cruijff: error: {problem}; {NAME_RULE}"], proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["work"]  # not beside outputs/, not anywhere


@pytest.mark.parametrize("args", [["experiment.name=" + "a" * 300], ["-m", "experiment.name=" + "a" * 300],
                                  ["experiment=long"]])
def test_a_name_too_long_for_a_directory_is_one_line(tmp_path, args):
    """300 characters: beyond the filesystem's 255 bytes, also when an experiment's own config sets it."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "long.yaml").write_text(f"# @package _global_\nexperiment:\n  name: {'a' * 300}\n")
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        "cruijff: error: experiment.name='aaaaaaaaaaaaaaaaaaaa...': is 300 characters long; a name is at most 128 "
        "characters (letters, digits and . _ + = -): set a shorter one"], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"]


def test_a_long_run_name_is_cut_with_a_hash_of_the_whole():
    from cruijff.config import check_name

    many = [f"+k{i}=value_{i}_" + "x" * 20 for i in range(8)]
    name = run_name(many)
    assert len(name) == 128 and name == run_name(many)  # the same overrides, the same dir
    assert name.startswith("k0-value-0-") and re.fullmatch(r".*-[0-9a-f]{8}", name)
    assert run_name(many[:-1] + [many[-1] + "y"]) != name  # differing past the cut: another dir
    check_name("run name", name)
    assert run_name(["peft.lora_rank=8"]) == "rank8"  # short names are as they were


def test_a_task_label_names_a_second_task_of_the_same_kind_apart(cfg):
    from omegaconf import OmegaConf

    from cruijff.config import validate

    other = cfg.copy()
    other.eval.tasks = OmegaConf.create([{"name": "exact_match"},
                                         {"name": "exact_match", "label": "exact_match_val", "args": {"split": "validation"}}])
    assert [s.label for s in validate(other)] == ["exact_match", "exact_match_val"]


def _data(path, words):
    import json

    rows = [{"input": f"Capitalize: {w}", "output": w.capitalize()} for w in words]
    path.write_text(json.dumps({"train": rows, "validation": rows[:1], "test": rows[:1]}))
    return path


def test_a_runs_identity_is_its_data_not_its_paths(tmp_path):
    """The hash covers what the dataset file and the model dir hold: other records at the same path
    are another run; the same records (or a copied model dir) at another path are the same run."""
    import os
    import shutil

    from conftest import compose_config
    from cruijff import assets

    data = _data(tmp_path / "data.json", ["alpha", "beta"])
    model = tmp_path / "models" / "tiny"
    shutil.copytree(assets.tiny_model_dir(), model)

    def chash(data_path, model_path):
        return config_hash(compose_config("dataset=json", f"dataset.path={data_path}", f"model.path={model_path}"))

    first = chash(data, model)
    _data(tmp_path / "data.json", ["gamma", "delta"])  # rewritten in place
    os.utime(data, ns=(1, 1))  # even with an old mtime
    rewritten = chash(data, model)
    assert rewritten != first
    moved = tmp_path / "elsewhere" / "data.json"
    moved.parent.mkdir()
    shutil.copy(data, moved)
    copied_model = tmp_path / "copy" / "tiny"
    shutil.copytree(model, copied_model)
    assert chash(moved, copied_model) == rewritten
    (copied_model / "config.json").write_text((copied_model / "config.json").read_text().replace("128", "129", 1))
    assert chash(moved, copied_model) != rewritten  # another architecture is another model


def test_the_processes_a_run_trains_on_count_in_its_hash():
    """``training.nproc=auto`` follows the GPUs a run gets: 1 or 2 processes train with another
    effective batch, so they are different runs."""
    from conftest import compose_config

    one = compose_config("cluster=slurm", "cluster.gpus_per_node=1")
    two = compose_config("cluster=slurm", "cluster.gpus_per_node=2")
    assert one.training.nproc == two.training.nproc == "auto"
    assert config_hash(one) != config_hash(two)


TASKS = '''
from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.solver import generate


@task
def good(n: int = 2):
    return Task(dataset=MemoryDataset([Sample(input="a", target="b")] * n), solver=generate())


@task
def needs(level):
    return good()


@task
def raises(level: int = 1):
    raise ValueError(f"level {level} is not known")


def not_a_task():
    return 3
'''


def _task_files(root):
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "t.py").write_text(TASKS)
    (tasks / "broken.py").write_text("import json\nSETTINGS = json.loads('{not json')\n\n\ndef t():\n    pass\n")
    data = root / "data.json"
    rows = [{"input": "Capitalize: ab", "output": "Ab"}]
    data.write_text(__import__("json").dumps({"train": rows, "validation": [], "test": rows}))
    return tasks, data


def test_every_task_is_loaded_with_its_args_before_anything_runs(tmp_path, monkeypatch):
    """A task file that fails to import, an argument the task does not take or lacks, a task that
    raises or returns no Task, a split the data lacks or leaves empty: each one line naming the task."""
    from cruijff.config import ConfigError, TaskSpec
    from cruijff.evaluate import check_tasks_load
    from cruijff.evaluate import tasks as loading

    tasks, data = _task_files(tmp_path)
    t, broken = tasks / "t.py", tasks / "broken.py"
    cases = [
        (f"{broken}@t", {}, f"eval.tasks[1].name='{broken}@t': importing {broken} failed: JSONDecodeError: "
                           "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (f"{t}@good", {"size": 3}, f"eval.tasks[1].args.size=3: good in {t} has no argument 'size'; it takes: n"),
        (f"{t}@needs", {}, f"eval.tasks[1].args={{}}: needs in {t} needs a value for 'level' (args: {{level: ...}})"),
        (f"{t}@raises", {"level": 3}, f"eval.tasks[1].name='{t}@raises': raises(level=3) in {t} failed: "
                                      "ValueError: level 3 is not known"),
        (f"{t}@good", {"n": 0}, f"eval.tasks[1].name='{t}@good': good(n=0) in {t} failed: ValueError: "
                                "The specified dataset is empty (has no samples)"),
        (f"{t}@not_a_task", {}, f"eval.tasks[1].name='{t}@not_a_task': not_a_task() in {t} returned int, "
                                "not an inspect Task"),
        ("exact_match", {"split": "dev"}, "eval.tasks[1].args.split='dev': data.json has no split 'dev'; "
                                          "it has: train, validation, test"),
        ("exact_match", {"split": "validation"}, "eval.tasks[1].args.split='validation': the 'validation' split of "
                                                 "data.json has no samples"),
    ]
    for name, args, message in cases:
        for _ in range(2):  # a file that failed to import fails the same way again (not half imported)
            with pytest.raises(ConfigError) as e:
                check_tasks_load([TaskSpec("exact_match"), TaskSpec(name, args)], data, "input", "output")
            assert str(e.value) == message
    calls = []
    real = loading._check
    monkeypatch.setattr(loading, "_check", lambda *a: calls.append(a[0].name) or real(*a))
    specs = [TaskSpec(f"{t}@good", {"n": 3}), TaskSpec("exact_match", {}, "em")]
    for _ in range(3):  # every grid point of a sweep: each distinct task is loaded once
        check_tasks_load(specs, data, "input", "output")
    assert calls == [f"{t}@good"]  # exact_match on this data was checked above


@pytest.mark.parametrize("args, message", [
    (["eval.tasks=[{name: tasks/broken.py@t}]"],
     "eval.tasks[0].name='tasks/broken.py@t': importing tasks/broken.py failed: JSONDecodeError: "),
    (["-m", "eval.tasks=[{name: tasks/t.py@raises, args: {level: 3}}]"],
     "run rank2_lr1e-5: eval.tasks[0].name='tasks/t.py@raises': raises(level=3) in tasks/t.py failed: "
     "ValueError: level 3 is not known"),
])
def test_a_task_that_does_not_load_stops_the_launch_before_it_trains(tmp_path, args, message):
    _task_files(tmp_path)
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cruijff: error: {message}"), proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args", [["hydra.run.dir=outputs/demo/default/nested"],
                                  ["-m", "hydra.sweep.dir=outputs/demo/default"],
                                  ["-m", "hydra.sweep.dir=outputs/demo/default/grid", "dry_run=true"]])
def test_a_run_or_sweep_inside_a_run_dir_is_refused(tmp_path, args):
    run_dir = tmp_path / "outputs" / "demo" / "default"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "run.json").write_text('{"status": "finished"}\n')
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    proc = launch(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    key, value = args[-1 if len(args) < 3 else 1].split("=")
    inside = "is" if value == "outputs/demo/default" else "is inside"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cruijff: error: {key}=") and (
        f"{inside} the run dir {run_dir} (it holds run.json or .hydra/); choose a dir outside any run") in lines[0], lines
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize("run_dir, message", [("outputs/demo", "holds other runs"), ("outputs", "holds other runs"),
                                              (".", "is the working dir or a dir above it")])
def test_a_run_dir_that_would_hold_other_runs_or_the_working_dir_is_refused(tmp_path, run_dir, message):
    """An experiment's dir, outputs/ or the working dir as a single run's dir would put one run's
    files among other runs (or above the project) and block every later launch."""
    run = tmp_path / "outputs" / "demo" / "default"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run / "run.json").write_text('{"status": "finished"}\n')
    before = {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    proc = launch(f"hydra.run.dir={run_dir}", "eval=none", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cruijff: error: hydra.run.dir=") and message in lines[0], lines
    assert {p: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")} == before
