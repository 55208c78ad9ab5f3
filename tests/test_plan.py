"""The sweep plan: each grid point's config as Hydra composes it, checked before anything runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, launch
from cruijff.config import CruijffError, config_hash, register_resolvers
from cruijff.config import resolve_paths
from cruijff.plan import FINISHED, NEW, REDO, Planner

register_resolvers()


@pytest.fixture()
def hydra_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield lambda overrides: compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


# planned for a GPU cluster: this machine's test SLURM (if up) has no GPU to take the jobs
PLANNED = "cluster.preflight=false"


def _hash(cfg):
    return config_hash(cfg, *resolve_paths(cfg, build=False))


@pytest.mark.parametrize("job", [
    ["peft.lora_rank=16", "optimizer.lr=0.003"],
    ["training.epochs=3", "peft.lora_dropout=0.1", "seed=7"],
    ["dataset.fields.input=question", "training.batch_size=4"],
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


@pytest.mark.parametrize("master, jobs, error", [
    # a section set whole: the keys under it are checked
    ([], [["seed=1"], ["seed=2", "model.tokenizer={max_seq_len: abc, prompt_template: null}"]],
     r"model\.tokenizer\.max_seq_len='abc': must be an integer >= 1"),
    # a key read through an interpolation (the experiment's own top-level key)
    (["+epochs=1", "training.epochs=${epochs}"], [["epochs=1"], ["epochs=abc"]],
     r"training\.epochs='abc': must be an integer >= 1"),
    # through two interpolations: the time limit follows the model's minutes per epoch
    (["cluster=slurm"], [["model.resources.epoch_min=1"], ["model.resources.epoch_min=-5"]],
     r"cluster\.timeout_min=-2: must be a number > 0"),
])
def test_later_grid_points_are_checked_where_they_differ(hydra_compose, tmp_path, master, jobs, error):
    """After the first grid point, a point is checked only where it can differ from it: a bad value
    there is still found, whichever way it gets in."""
    planner = Planner(hydra_compose(master), tmp_path, compose=lambda ov: pytest.fail("fast path expected"))
    with pytest.raises(CruijffError, match=error):
        planner.plan(jobs)


def test_two_grid_points_in_one_run_dir_are_refused(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    with pytest.raises(CruijffError, match="same run dir 'lr1e-3'"):
        planner.plan([["optimizer.lr=1e-3"], ["optimizer.lr=0.001"]])


def test_state_comes_from_complete_checkpoints_and_the_config_hash(hydra_compose, tmp_path, capsys):
    """A checkpoint counts once its completion marker is written, whatever its files and run.json
    say; run.json says only whose config the run dir holds. The dry run of a single run says what
    the planner says."""
    from cruijff.job import dry_run
    from cruijff.records import layout

    planner = Planner(hydra_compose([]), tmp_path)
    [run] = planner.plan([["training.epochs=1"]])
    assert run.state == NEW
    run_dir = tmp_path / run.name
    (run_dir / "epoch_0").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config_hash": run.config_hash}))
    assert planner.plan([["training.epochs=1"]])[0].state == REDO  # no weights on disk
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        (run_dir / "epoch_0" / f).write_bytes(b"x")
    assert planner.plan([["training.epochs=1"]])[0].state == REDO  # its files, but no marker: a save cut short
    assert layout.checkpoint_id(run_dir / "epoch_0") is None and layout.checkpoints(run_dir) == []
    marker = layout.mark_complete(run_dir / "epoch_0", 0)
    assert marker["kind"] == "adapter" and layout.checkpoint_id(run_dir / "epoch_0") == layout.adapter_id(
        run_dir / "epoch_0")
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "config_hash": run.config_hash}))
    assert planner.plan([["training.epochs=1"]])[0].state == FINISHED  # killed before run.json said so
    cfg = hydra_compose(["training.epochs=1"])
    dry_run(cfg, run_dir, ["training.epochs=1"])
    assert " finished " in capsys.readouterr().out
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config_hash": "0" * 16}))
    with pytest.raises(CruijffError, match="overwrite=False: .* different config"):
        planner.plan([["training.epochs=1"]])
    with pytest.raises(CruijffError, match="overwrite=False: .* different config"):
        dry_run(cfg, run_dir, ["training.epochs=1"])  # it said "finished" for another config's run
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


def _fake_model(path: Path, model: str) -> Path:
    """A model directory with (empty) files where the catalogue expects them: the plan needs no weights."""
    from conftest import compose_config, fake_model_dir

    return fake_model_dir(path, compose_config(f"model={model}", f"model.path={path}"))


def test_dry_run_estimates_a_70b_sweep_on_slurm(tmp_path):
    model = _fake_model(tmp_path / "Llama-3.3-70B-Instruct", "llama3_3_70b_instruct")
    record = {"input": "x" * 300, "output": "y" * 100}  # 400 characters: ~100 tokens
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"train": [record] * 2000, "test": [record] * 10}))
    work = tmp_path / "work"
    work.mkdir()
    proc = launch("-m", PLANNED, "cluster=slurm", "model=llama3_3_70b_instruct", f"model.path={model}", "dataset=json",
                  f"dataset.path={data}", "peft.lora_rank=8,16", "optimizer.lr=1e-4", "training.epochs=2", "experiment.name=big",
                  "dry_run=true", cwd=work)
    print(out := proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in out.splitlines() if "rank8_" in line or "rank16_" in line]
    assert len(rows) == 2
    # the model's batch hint (2, torchtune's 70B config): 2000 examples / (2 x 8 GPUs) = 125 steps
    assert all(" 125 " in row for row in rows)
    assert "to run: 2 runs, 0.80M tokens" in out  # 2 runs x 2 epochs x 125 x 16 examples x 100 tokens
    # 8 GPUs at 3497 tok/s for a 70.6B model (torchtune's table): 0.4M tokens per run -> ~114 s
    gpu_hours = float(re.search(r"([0-9.]+) GPU-hours", out).group(1))
    assert gpu_hours == pytest.approx(2 * 0.4e6 / 3497 * 70.6e9 / 70.55e9 * 8 / 3600, rel=0.02)
    # adapters alone by default; merged bf16 weights would be 2 epochs x 2 runs x 141 GB
    disk = re.search(r"disk: ([0-9.]+) GB of checkpoints as saved \(adapters alone.*; ([0-9.]+) GB with "
                     r"training.checkpoint=merged", out)
    adapter_gb, merged_gb = float(disk.group(1)), float(disk.group(2))
    assert merged_gb == pytest.approx(2 * 2 * 70.55e9 * 2 / 1e9, rel=0.02)
    assert 0 < adapter_gb < 0.01 * merged_gb
    assert re.search(r"GPU memory: 14\d\.\d GB per run", out)  # the bf16 weights, and the adapters' training state
    assert "torchtune README 'Memory and training speed'" in out
    assert "eval cells: 5 (1 base)" in out  # 2 runs x 2 epochs x 1 task + base
    assert not (work / "outputs").exists()


@pytest.mark.parametrize("peft, gpus, mem_gb, timeout_min", [("lora", 1, 64, 154), ("none", 2, 128, 154)])
def test_full_fine_tuning_asks_slurm_for_what_it_needs(peft, gpus, mem_gb, timeout_min):
    """An 8B model: LoRA fits one GPU; full fine-tuning holds gradients and AdamW state for every
    weight, so the catalogue's hint is two GPUs (FSDP shards it) and twice the host memory."""
    from conftest import compose_config

    cfg = compose_config("cluster=slurm", "model=llama3_1_8b_instruct", f"peft={peft}", "training.epochs=2")
    assert (cfg.cluster.gpus_per_node, cfg.cluster.mem_gb, cfg.cluster.timeout_min) == (gpus, mem_gb, timeout_min)


def test_scaffold_renders_every_config_and_the_array_script_and_submits_nothing(tmp_path):
    proc = launch("-m", PLANNED, "cluster=slurm", "experiment.name=scaf", "scaffold=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep_dir = tmp_path / "outputs" / "scaf"
    names = [f"rank{r}_lr{lr}" for r in (2, 8) for lr in ("1e-5", "1e-4", "1e-3")]
    for name in names:
        conf = yaml.safe_load((sweep_dir / name / "finetune.yaml").read_text())
        assert conf["output_dir"] == str((sweep_dir / name).resolve())
        assert (conf["device"], conf["dtype"]) == ("cuda", "bf16")  # what the GPU node will run
        assert not (sweep_dir / name / "run.json").exists()
    script = (sweep_dir / "scripts" / "train.sbatch").read_text()
    assert script.startswith("#!/bin/bash\n")  # sbatch reads the interpreter from the first line
    assert "#SBATCH --array=0-5%6" in script and "#SBATCH --gpus-per-node=1" in script
    commands = (sweep_dir / "scripts" / "tune_commands.sh").read_text().splitlines()
    assert sum(line.startswith("tune run lora_finetune_single_device --config ") for line in commands) == 6
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["jobs"] == {} and [r["name"] for r in plan["runs"]] == names
    assert "ACTION: Scaffold" in (sweep_dir / "run-experiment.log").read_text()
    assert not (sweep_dir / "summary.md").exists()
    # the plan stage on its own, from anywhere: the sweep's command again, as a dry run
    replanned = subprocess.run([sys.executable, "-m", "cruijff", "plan", str(sweep_dir)], cwd="/",
                               capture_output=True, text=True, timeout=300)
    assert replanned.returncode == 0, replanned.stderr[-2000:]
    assert "scaf: 6 runs, 6 to run (dry run: nothing written, nothing submitted)" in replanned.stdout
    assert "eval cells: 13 (1 base)" in replanned.stdout


def test_runs_that_need_different_time_limits_go_to_separate_arrays(tmp_path):
    """A grid over epochs: each run's job asks for the time its own epochs need (the cluster preset
    derives the limit from the model's minutes per epoch), so the grid is one array per limit."""
    proc = launch("-m", PLANNED, "cluster=slurm", "experiment.name=limits", "scaffold=true", "training.epochs=1,3",
                  "peft.lora_rank=8,16", "optimizer.lr=1e-3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scripts = tmp_path / "outputs" / "limits" / "scripts"
    assert not (scripts / "train.sbatch").exists()
    first, second = (scripts / "train-1.sbatch").read_text(), (scripts / "train-2.sbatch").read_text()
    # tiny_llama: 1 minute per epoch -> epochs x 1.2 + 10 minutes
    assert "#SBATCH --time=12" in first and "#SBATCH --array=0-1%2" in first
    assert "# Runs: rank8_lr1e-3_epochs1, rank16_lr1e-3_epochs1" in first
    assert "#SBATCH --time=14" in second and "# Runs: rank8_lr1e-3_epochs3, rank16_lr1e-3_epochs3" in second
    assert first.startswith("#!/bin/bash\n")  # sbatch reads the interpreter from the first line
    runs = json.loads((tmp_path / "outputs" / "limits" / "sweep.json").read_text())["runs"]
    assert {r["name"]: r["resources"]["timeout_min"] for r in runs} == {
        "rank8_lr1e-3_epochs1": 12, "rank16_lr1e-3_epochs1": 12, "rank8_lr1e-3_epochs3": 14,
        "rank16_lr1e-3_epochs3": 14}


def test_scaffold_writes_each_array_the_launch_would_submit(tmp_path):
    """A grid larger than the cluster's array size goes as several arrays: the scaffold shows each."""
    proc = launch("-m", PLANNED, "cluster=slurm", "experiment.name=split", "scaffold=true", "cluster.max_array_size=2",
                  "peft.lora_rank=4,8,16", "optimizer.lr=1e-3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scripts = tmp_path / "outputs" / "split" / "scripts"
    assert sorted(p.name for p in scripts.glob("*.sbatch")) == ["train-1.sbatch", "train-2.sbatch"]
    first, second = (scripts / "train-1.sbatch").read_text(), (scripts / "train-2.sbatch").read_text()
    assert "#SBATCH --array=0-1%" in first and "# Runs: rank4_lr1e-3, rank8_lr1e-3" in first
    assert "#SBATCH --array=0-0%" in second and "# Runs: rank16_lr1e-3" in second


def test_scaffold_quotes_every_path_in_the_scripts_it_writes(tmp_path, monkeypatch):
    """A working dir with a space and shell characters reaches the scripts as one quoted word: each
    line of tune_commands.sh hands torchtune the config's path whole, and every path of the sbatch
    script (as submitit renders it) is one word."""
    import os
    import shlex

    work = tmp_path / "my study $(touch pwned)"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")  # submitit renders sbatch scripts where srun is
    (bin_dir / "tune").write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done >> "$TUNE_ARGS"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    proc = launch("-m", PLANNED, "cluster=slurm", "experiment.name=q", "scaffold=true", "peft.lora_rank=8", "optimizer.lr=1e-3",
                  cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    scripts = work / "outputs" / "q" / "scripts"
    config = (work / "outputs" / "q" / "rank8_lr1e-3" / "finetune.yaml").resolve()
    for script in ("tune_commands.sh", "train.sbatch"):
        syntax = subprocess.run(["bash", "-n", str(scripts / script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
    args = tmp_path / "args.txt"
    subprocess.run(["bash", str(scripts / "tune_commands.sh")], check=True, cwd=tmp_path,
                   env={**os.environ, "TUNE_ARGS": str(args)})
    assert args.read_text().splitlines() == ["run", "lora_finetune_single_device", "--config", str(config)]
    assert not (tmp_path / "pwned").exists() and not (work / "pwned").exists()
    assert f"#   tune run lora_finetune_single_device --config {shlex.quote(str(config))}\n" in config.read_text()
    sbatch = (scripts / "train.sbatch").read_text().splitlines()
    for line in (ln for ln in sbatch if ln.startswith("#SBATCH --") and "=" in ln):
        assert len(shlex.split(line.split("=", 1)[1])) == 1, line
    assert f"#SBATCH --output={shlex.quote(str(work / 'outputs/q/.submitit/%A_%a/%A_%a_0_log.out'))}" in sbatch
    srun = shlex.split(next(ln for ln in sbatch if ln.startswith("srun ")))
    assert srun[srun.index("--output") + 1] == str(work / "outputs/q/.submitit/%A_%a/%A_%a_%t_log.out")


def test_scaffold_writes_each_run_a_finetune_sbatch_to_submit_by_hand(tmp_path):
    """Each run gets finetune.sbatch: the site preset's #SBATCH flags with the run's resources, named
    for the run, its output in the run's logs/, the preset's setup lines, then the run's tune command
    (here the distributed form: two GPUs); every path one quoted word."""
    import shlex

    work = tmp_path / "my study"
    work.mkdir()
    proc = launch("-m", PLANNED, "cluster=example_site", "experiment.name=hand", "scaffold=true", "peft.lora_rank=8",
                  "optimizer.lr=1e-3,1e-4", "cluster.gpus_per_node=2", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("rank8_lr1e-3", "rank8_lr1e-4"):
        run_dir = (work / "outputs" / "hand" / name).resolve()
        script = run_dir / "finetune.sbatch"
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert syntax.returncode == 0, syntax.stderr
        lines = script.read_text().splitlines()
        assert lines[0] == "#!/bin/bash"
        header = [ln for ln in lines if ln.startswith("#SBATCH")]
        assert header == [
            f"#SBATCH --job-name={name}", "#SBATCH --partition=gpu", "#SBATCH --account=mylab",
            "#SBATCH --constraint='a100|h100'", "#SBATCH --time=00:13:00", "#SBATCH --gpus-per-node=2",
            "#SBATCH --cpus-per-task=16", "#SBATCH --mem=4GB", "#SBATCH --mail-type=FAIL",
            f"#SBATCH --output='{run_dir}/logs/sbatch-%j.out'", f"#SBATCH --error='{run_dir}/logs/sbatch-%j.err'"]
        assert (run_dir / "logs").is_dir()  # sbatch cannot open its output in a dir that is not there
        assert lines[-3:] == ["module load cuda/12.4", "source $HOME/venvs/cruijff/bin/activate",
                              "tune run --nproc_per_node 2 lora_finetune_distributed --config "
                              f"'{run_dir}/finetune.yaml'"]
        assert shlex.split(lines[-1])[-1] == str(run_dir / "finetune.yaml")
        assert lines[-1] in (work / "outputs" / "hand" / "scripts" / "tune_commands.sh").read_text().splitlines()


def test_scaffold_runs_full_fine_tuning_with_its_own_recipe():
    from conftest import compose_config
    from cruijff.sweep.scaffold import scaffold_text

    text, command = scaffold_text(compose_config("peft=none", "training.device=cpu"), Path("/srv/my runs/full"))
    assert command == "tune run full_finetune_single_device --config '/srv/my runs/full/finetune.yaml'"
    assert f"#   {command}\n" in text
