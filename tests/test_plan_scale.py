"""Big grids: every grid point's plan is what Hydra's own composition of that point gives, and a
big plan prints as a summary (first and last rows, counts by state, totals) unless asked in full."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import ROOT, launch
from cruijff.cluster import job_resources
from cruijff.config import config_hash, register_resolvers, resolve_paths, run_name, validate
from cruijff.plan import (FINISHED, NEW, OVERWRITE, REDO, Estimate, PlannedRun, Planner, estimate, plan_state,
                          print_plan)
from cruijff.plan.timing import apply_measured, sweep_timings
from cruijff.records import layout, run_standing

register_resolvers()

# shared by every grid point: SLURM resources to compare (the model's hint read through interpolations),
# and the seed read through an interpolation of a hashed section; the learning rate is read by nothing
# the plan does but the hash, so grid points differing only in it share their plan
SHARED = ["cluster=slurm", "cluster.preflight=false", "+peft.tag=s${seed}"]
AXES = [["training=default", "training=smoke"], ["peft=lora", "peft=none"], ["optimizer.lr=1e-3", "optimizer.lr=2e-3"],
        ["seed=1", "seed=2"], ["model.resources.epoch_min=1", "model.resources.epoch_min=30"]]
JOBS = [[*SHARED, *point] for point in itertools.product(*AXES)]


@pytest.fixture(scope="module")
def hydra_compose():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        yield lambda overrides: compose("config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()


def _one_by_one(cfg, run_dir, timings, overwrite):
    """A grid point planned on its own config: hash, state, resources and cost, as the planner
    planned each point before it shared work between them."""
    validate(cfg)
    paths = resolve_paths(cfg, build=False)
    chash = config_hash(cfg, *paths)
    standing, _ = run_standing(run_dir, chash, int(cfg.training.epochs))
    state = plan_state(standing, overwrite, run_dir, None, chash)

    class Run:
        resources, estimate = job_resources(cfg), None

    if state != FINISHED:
        Run.estimate = estimate(cfg, paths[1], {})
        apply_measured(Run, cfg, paths, timings)
    return chash, state, Run.resources, dataclasses.asdict(Run.estimate) if Run.estimate else None


def _finished(run_dir, chash):
    (run_dir / "epoch_0").mkdir(parents=True)
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        (run_dir / "epoch_0" / f).write_bytes(b"x")
    layout.mark_complete(run_dir / "epoch_0", 0)
    (run_dir / "run.json").write_text(json.dumps({"status": "finished", "config_hash": chash}))


def test_the_plan_of_a_grid_is_hydras_composition_of_each_point(hydra_compose, tmp_path):
    """A grid over config groups and values, some read through interpolations, with run dirs
    finished, of another config and cut short: each point's config hash, state, SLURM resources
    and cost equal those of Hydra's own composition of that point, planned on its own."""
    sweep = tmp_path / "outputs" / "demo"
    configs = [hydra_compose(job) for job in JOBS]
    hashes = [config_hash(cfg, *resolve_paths(cfg, build=False)) for cfg in configs]
    assert len(set(hashes)) == 16  # all but the model's cluster hint
    names = [run_name(job) for job in JOBS]
    _finished(sweep / names[16], hashes[16])                    # a smoke run's one epoch: finished
    _finished(sweep / names[5], "0" * 16)                       # another config's: overwritten
    (sweep / names[9]).mkdir(parents=True)                       # cut short: redone
    (sweep / names[9] / "run.json").write_text(json.dumps({"status": "failed", "config_hash": hashes[9]}))
    (sweep / "not-a-run").mkdir()

    timings = sweep_timings(sweep)
    expected = [_one_by_one(cfg, sweep / name, timings, True) for cfg, name in zip(configs, names)]
    composed = []
    planner = Planner(hydra_compose(SHARED), sweep, compose=lambda ov: composed.append(ov) or hydra_compose(ov))
    runs = planner.plan(JOBS, overwrite=True, estimate=True)
    got = [(r.config_hash, r.state, r.resources, dataclasses.asdict(r.estimate) if r.estimate else None) for r in runs]
    assert [r.name for r in runs] == names
    assert got == expected
    assert [r.state for r in runs].count(NEW) == len(JOBS) - 3
    assert (runs[16].state, runs[5].state, runs[9].state) == (FINISHED, OVERWRITE, REDO)
    assert len(composed) == 4  # once per choice of config groups, not per grid point
    assert runs[1].estimate is not runs[2].estimate  # each run's cost is its own


def test_a_bad_value_at_a_later_grid_point_is_named_as_before(hydra_compose, tmp_path):
    planner = Planner(hydra_compose([]), tmp_path)
    jobs = [[f"optimizer.lr={lr}", f"seed={s}"] for lr in ("1e-3", "-1e-3") for s in (1, 2)]
    with pytest.raises(Exception, match=r"run lr-1e-3_seed1: optimizer\.lr=-0\.001: must be a number > 0"):
        planner.plan(jobs)


def _runs(n, finished=(), redo=()):
    cost = Estimate(samples=8, steps=2, tokens=1000, gpus=1, hours=0.5, basis="table", disk_merged=2000,
                    disk_adapter=1000, cells=2)
    return [PlannedRun(f"seed{i}", [f"seed={i}"], f"{i:016x}", FINISHED if i in finished else REDO if i in redo else NEW,
                       estimate=None if i in finished else dataclasses.replace(cost)) for i in range(n)]


def test_a_big_plan_prints_its_ends_its_states_and_totals(capsys):
    print_plan(_runs(60, finished={3, 58}, redo={10}), "demo: 60 runs")
    out = capsys.readouterr().out
    shown = [i for i in range(60) if f" seed{i} " in out]
    assert shown == [0, 1, 2, 3, 4, 55, 56, 57, 58, 59]
    assert "  runs by state: 57 new, 2 finished, 1 redo" in out
    assert "  to run: 58 runs, 0.06M tokens" in out and "29.00 GPU-hours" in out  # the totals, of all 58
    assert out.rstrip().endswith("50 rows not shown; full_table=true shows all")


def test_a_plan_prints_in_full_when_asked_or_small(capsys):
    print_plan(_runs(60), "demo: 60 runs", full=True)
    out = capsys.readouterr().out
    assert all(f" seed{i} " in out for i in range(60)) and "not shown" not in out and "runs by state" not in out
    print_plan(_runs(50), "demo: 50 runs")
    out = capsys.readouterr().out
    assert all(f" seed{i} " in out for i in range(50)) and "not shown" not in out


def test_full_table_on_the_command_line_lists_every_run_and_names_no_run(tmp_path):
    grid = ["-m", "dry_run=true", "training=smoke", "peft.lora_rank=1,2,3,4,5,6,7,8,9,10,11,12",
            "optimizer.lr=1e-4,2e-4,3e-4,4e-4,5e-4"]
    summary = launch(*grid, cwd=tmp_path, check=True).stdout
    full = launch(*grid, "full_table=true", cwd=tmp_path, check=True).stdout
    assert "60 runs" in summary and "50 rows not shown; full_table=true shows all" in summary
    assert "rank6_lr3e-4_training-smoke" not in summary and "rank12_lr5e-4_training-smoke" in summary
    assert "rank6_lr3e-4_training-smoke" in full and "not shown" not in full and "full_table-" not in full
