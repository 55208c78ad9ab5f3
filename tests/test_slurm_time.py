"""Time limits from measurement, on the real single-node SLURM (slurmctld, slurmd, slurmdbd).

One run is stopped at its time limit after its first epoch and requeued with a limit computed from
its own epochs; a second launch of a grid around it gives the runs still to run a limit from that
finished run. The cluster has no GPU: every job asks for ``cluster.gpus_per_node=0``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import LAUNCH, launch, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

EXP = "measured"
ARGS = ["cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=2", "eval=none",
        "training.epochs=3", "training.max_steps_per_epoch=4", "peft.lora_rank=8"]
PRESET_MIN = 5  # the first launch's cluster.timeout_min


def _limit(text: str) -> int:
    """Minutes of a SLURM time limit as sacct and scontrol print it (HH:MM:SS)."""
    h, m, s = (int(x) for x in text.split("-")[-1].split(":"))
    return h * 60 + m + (1 if s else 0)


@pytest.fixture(scope="module")
def requeued(slurm, tmp_path_factory, tiny_model_dir):
    """A run of 3 epochs stopped at its time limit once its first epoch is saved, and requeued.

    SLURM tells a job its limit is near with the signal submitit asks for (``--signal=USR2@30``:
    ``cluster.signal_delay_s=30``); SLURM's time check runs every ~30 s and cannot be aimed at an
    epoch's end, so the test sends that same signal itself, once the first epoch is saved. Each
    step is made 2.5 s longer (a test-only hook), so the epochs left take a measurable time."""
    work = tmp_path_factory.mktemp("time")
    sweep_dir = work / "outputs" / EXP
    env = {**os.environ, "INSPECT_DISPLAY": "none", "PYTHONUNBUFFERED": "1", "CRUIJFF_TEST_STEP_DELAY_S": "2.5"}
    proc = subprocess.Popen([sys.executable, str(LAUNCH), "-m", f"experiment.name={EXP}", *ARGS, "optimizer.lr=1e-3",
                             f"cluster.timeout_min={PRESET_MIN}", "cluster.signal_delay_s=30"],
                            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any((d / "epoch_0" / ".complete").exists() for d in sweep_dir.glob("*/")), 300, "epoch_0")
        (name, job), = json.loads((sweep_dir / "sweep.json").read_text())["jobs"].items()
        subprocess.run(["scancel", "--signal=USR2", job], check=True)

        def running_again() -> bool:  # a requeued job waits ~2 min before it may start; let it start now
            subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
            return json.loads((sweep_dir / name / "run.json").read_text()).get("attempts") == 2

        wait_for(running_again, 300, "the requeued job to start")
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    return work, sweep_dir, name, job, proc.returncode, out, err


def test_a_run_requeued_at_its_time_limit_gets_the_limit_its_epochs_left_need(requeued):
    _, sweep_dir, name, job, rc, out, err = requeued
    assert rc == 0, err[-2000:]
    state = json.loads((sweep_dir / name / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 2
    assert state["checkpoints"] == ["epoch_0", "epoch_1", "epoch_2"]
    (retry,) = state["retries"]
    assert retry["kind"] == "time_limit" and retry["at"] == f"job {job}" and retry["error"] is None
    assert retry["before"] == {"timeout_min": PRESET_MIN}
    new = retry["after"]["timeout_min"]
    assert 1 <= new < PRESET_MIN
    # SLURM ran the requeued job under the new limit (its accounting says so a few seconds after it ends)
    def attempts() -> list[list[str]]:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-D", "-o", "JobID,State,TimeLimit", "-j", job],
                             capture_output=True, text=True, check=True).stdout
        return [r.split("|") for r in out.strip().splitlines() if r.startswith(job + "|")]

    wait_for(lambda: attempts()[-1][1] == "COMPLETED", 60, "sacct to record the requeued job's end")
    rows = attempts()
    assert [state for _, state, _ in rows] == ["REQUEUED", "COMPLETED"] and _limit(rows[-1][2]) == new, rows
    log = (sweep_dir / "run-experiment.log").read_text()
    line = f"requeued with time limit {new} min (was {PRESET_MIN} min): measured "
    assert "ACTION: Retry" in log and f"{name}: time limit (job {job})" in log and line in log
    outputs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*.out"))
    assert f"cruijff: {name}: time limit: {line}" in outputs


def test_a_second_launch_gives_the_runs_left_a_limit_measured_on_the_finished_one(requeued):
    work, sweep_dir, name, _, rc, _, _ = requeued
    assert rc == 0
    grid = ["-m", f"experiment.name={EXP}", *ARGS, "optimizer.lr=1e-3,3e-3"]  # the preset: 3 x 1 min x 1.2 + 10
    dry = launch(*grid, "dry_run=true", cwd=work)
    assert dry.returncode == 0, dry.stderr[-2000:]
    shown = [line.strip() for line in dry.stdout.splitlines() if line.strip().startswith("time limit:")]
    assert len(shown) == 1 and "(measured: 1 run, " in shown[0] and shown[0].endswith("s/epoch) for 1 run"), dry.stdout
    minutes = int(shown[0].split("time limit: ")[1].split(" min")[0])
    assert minutes < 14
    try:
        proc = launch(*grid, "detach=true", "+cluster.sbatch.hold=true", cwd=work)
        assert proc.returncode == 0, proc.stderr[-2000:]
        jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
        (other,) = [n for n in jobs if n != name]
        shown = subprocess.run(["scontrol", "show", "job", jobs[other]], capture_output=True, text=True).stdout
        assert _limit(shown.split("TimeLimit=")[1].split()[0]) == minutes
    finally:
        for kind in ("train", "eval"):
            subprocess.run(["scancel", "-n", f"cruijff-{kind}-{EXP}"], check=False)
