"""`cluster=slurm` against a real single-node SLURM (slurmctld, slurmd, slurmdbd + MariaDB).

Real torchtune, real inspect-ai, real submitit, real sbatch job arrays. The cluster has no GPU, so
every sweep asks for `cluster.gpus_per_node=0`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import LAUNCH, launch, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

SLURM = ["cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "cluster.mem_gb=2",
         "training.epochs=1", "eval.limit=10"]
# what the tests of submission, records and reports need of training: a few steps per epoch
SHORT = [*SLURM, "training.max_steps_per_epoch=20"]
GRID = ["-m", "experiment.name=array", *SHORT, "peft.lora_rank=8,16", "optimizer.lr=1e-3,3e-3"]
RUNS = ["rank8_lr1e-3_epochs1_steps20", "rank8_lr3e-3_epochs1_steps20", "rank16_lr1e-3_epochs1_steps20",
        "rank16_lr3e-3_epochs1_steps20"]
BAD = RUNS[2]
SECRET = "hf_do-not-write-me-anywhere"


def _sacct(*job_ids: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


@pytest.fixture(scope="module")
def array_sweep(slurm, tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("slurm")
    sweep_dir = work / "outputs" / "array"
    (sweep_dir / BAD).mkdir(parents=True)
    (sweep_dir / BAD / "epoch_0").write_text("in the way\n")  # this run's checkpoint cannot be written
    os.environ["HF_TOKEN"] = SECRET
    try:
        proc = launch(*GRID, cwd=work, timeout=900)
    finally:
        del os.environ["HF_TOKEN"]
    return work, sweep_dir, proc


def test_grid_is_one_job_array_and_evals_are_slurm_jobs(array_sweep):
    _, sweep_dir, proc = array_sweep
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"3/4 runs finished, 1 failed: {BAD}:" in proc.stdout
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    arrays = {jobs[n].split("_")[0] for n in RUNS}
    assert len(arrays) == 1 and all("_" in jobs[n] for n in RUNS)  # one sbatch, four array tasks
    states = _sacct(*arrays)
    assert all(states[jobs[n]] == "COMPLETED" for n in RUNS)  # the failure is recorded, the job ends cleanly
    log = (sweep_dir / "run-experiment.log").read_text()
    assert f"(array {arrays.pop()})" in log
    eval_ids = [line.split("slurm job ids ")[1].split(",")[0].strip()
                for line in log.splitlines() if "slurm job ids" in line and "Submit eval" not in line
                and line.strip().startswith("Result: slurm job ids") and "_" not in line]
    assert eval_ids and all(_sacct(i)[i] == "COMPLETED" for i in eval_ids)
    # cluster.eval_after=run: a run's eval job goes in when it finishes, while later tasks still train
    first_launch = log.split("ACTION: Sweep done")[0]
    assert first_launch.count("ACTION: Submit eval") == 3
    assert first_launch.index("ACTION: Submit eval") < first_launch.rindex("ACTION: Fine-tune done")
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *RUNS[:2], RUNS[3]}


def test_no_secret_reaches_a_file(array_sweep):
    work, _, _ = array_sweep
    for path in (work / "outputs").rglob("*"):
        if path.is_file() and path.stat().st_size < 5_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_rerun_submits_only_the_failed_run(array_sweep):
    work, sweep_dir, _ = array_sweep
    (sweep_dir / BAD / "epoch_0").unlink()
    proc = launch(*GRID, cwd=work, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4/4 runs finished" in proc.stdout
    submitted = [line for line in proc.stdout.splitlines() if "submitted as slurm job" in line]
    assert len(submitted) == 1 and BAD in submitted[0]


def test_detached_sweep_returns_at_once_and_its_eval_job_finishes_it(slurm, tmp_path, tiny_model_dir):
    t0 = time.time()
    proc = launch("-m", "experiment.name=detached", *SHORT, "peft.lora_rank=8", "optimizer.lr=1e-3,3e-3",
                  "detach=true", cwd=tmp_path)
    returned = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cruijff: detached:" in proc.stdout and returned < 30
    sweep_dir = tmp_path / "outputs" / "detached"
    detached = json.loads((sweep_dir / "sweep.json").read_text())["detached"]
    finish = detached["finish_job"]
    dependency = subprocess.run(["scontrol", "show", "job", finish], capture_output=True, text=True).stdout
    assert f"afterany:{detached['arrays'][0]}" in dependency.replace("_*", "")
    status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "no launch running" in status.stdout
    wait_for(lambda: _sacct(finish).get(finish) in ("COMPLETED", "FAILED", "CANCELLED"), 600, "the eval+report job")
    assert _sacct(finish)[finish] == "COMPLETED"
    assert "2/2 runs finished" in (sweep_dir / "summary.md").read_text()
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", "rank8_lr1e-3_epochs1_steps20", "rank8_lr3e-3_epochs1_steps20"}
    assert "ACTION: Sweep done (detached)" in (sweep_dir / "run-experiment.log").read_text()


def test_a_queued_resubmission_is_neither_submitted_again_nor_overwritten(slurm, tmp_path, tiny_model_dir):
    """A failed run is resubmitted (detached, held in the queue); launches after that leave it."""
    args = ["-m", "experiment.name=queued", *SHORT, "peft.lora_rank=8", "optimizer.lr=1e-3", "eval=none"]
    run_dir = tmp_path / "outputs" / "queued" / "rank8_lr1e-3_epochs1_steps20"
    (run_dir / "epoch_0").parent.mkdir(parents=True)
    (run_dir / "epoch_0").write_text("in the way\n")
    assert launch(*args, cwd=tmp_path).returncode == 1
    (run_dir / "epoch_0").unlink()
    sweep_json = tmp_path / "outputs" / "queued" / "sweep.json"
    first = json.loads(sweep_json.read_text())["jobs"][run_dir.name]
    try:
        held = launch(*args, "detach=true", "+cluster.sbatch.hold=true", cwd=tmp_path)
        assert held.returncode == 0, held.stderr[-2000:]
        queued = json.loads(sweep_json.read_text())["jobs"][run_dir.name]
        assert queued != first and json.loads((run_dir / "run.json").read_text())["status"] == "failed"
        again = launch(*args, cwd=tmp_path)  # its record still says failed, but a newer job is queued
        assert "submitted as slurm job" not in again.stdout
        assert "0/1 runs finished, 1 still running in earlier jobs (rank8_lr1e-3_epochs1_steps20)" in again.stdout
        assert json.loads(sweep_json.read_text())["jobs"][run_dir.name] == queued
        second = launch(*args, "detach=true", cwd=tmp_path)  # its eval+report job waits for the queued one
        assert second.returncode == 0, second.stderr[-2000:]
        finish = json.loads(sweep_json.read_text())["detached"]["finish_job"]
        shown = subprocess.run(["scontrol", "show", "job", finish], capture_output=True, text=True).stdout
        assert f"afterany:{queued.split('_')[0]}" in shown.replace("_*", "")
        state = json.loads((run_dir / "run.json").read_text())
        (run_dir / "run.json").write_text(json.dumps({**state, "config_hash": "0" * 16}))  # a changed config
        over = launch(*args, "overwrite=true", cwd=tmp_path)
        assert over.returncode == 2
        assert over.stderr.strip().splitlines()[-1] == (
            f"cruijff: error: rank8_lr1e-3_epochs1_steps20: overwrite=true, but its SLURM job {queued} is still pending "
            f"or running; scancel {queued} first, or wait for it")
    finally:
        for kind in ("train", "eval"):
            subprocess.run(["scancel", "-n", f"cruijff-{kind}-queued"], check=False)


def test_cancelled_and_killed_jobs_are_recorded_and_the_third_run_finishes(slurm, tmp_path, tiny_model_dir):
    """scancel one array task and SIGKILL another's training process, mid-training."""
    # 10 short epochs: long enough that the cancel and the kill land while they train
    args = ["-m", "experiment.name=faults", *SLURM, "training.epochs=10", "eval.epochs=[9]", "peft.lora_rank=8",
            "optimizer.lr=1e-3,2e-3,3e-3"]
    sweep_dir = tmp_path / "outputs" / "faults"
    cancelled, killed, survivor = "rank8_lr1e-3_epochs10", "rank8_lr2e-3_epochs10", "rank8_lr3e-3_epochs10"
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    proc = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def training(name: str) -> dict:
        state_file = sweep_dir / name / "run.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        steps = list((sweep_dir / name / "logs").glob("log_*.txt"))
        return state if state.get("status") == "running" and steps and "loss" in steps[0].read_text() else {}

    wait_for(lambda: training(cancelled) and training(killed), 300, "two runs training")
    job = json.loads((sweep_dir / "sweep.json").read_text())["jobs"][cancelled]
    subprocess.run(["scancel", job], check=True)
    os.kill(training(killed)["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-2000:]
    assert "1/3 runs finished, 2 failed" in out
    reasons = {n: json.loads((sweep_dir / n / "run.json").read_text()) for n in (cancelled, killed, survivor)}
    assert reasons[survivor]["status"] == "finished"
    assert "CANCELLED" in reasons[cancelled]["error"]
    assert reasons[killed]["status"] == "failed" and "while fine-tuning" in reasons[killed]["error"]
    log = (sweep_dir / "run-experiment.log").read_text()
    assert log.count("ACTION: Job died") == 2
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", survivor}


def test_names_with_shell_characters_are_refused_and_setup_lines_reach_slurm_quoted(slurm, tmp_path, tiny_model_dir):
    bad = "it's a; $(touch PWNED) `touch PWNED2` test"
    refused = launch("-m", f'experiment.name="{bad}"', *SHORT, "eval=none", "peft.lora_rank=8,4", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.startswith("cruijff: error: experiment.name=")
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()
    name = "quoting+=v1.0"  # every character a name may have besides letters and digits
    proc = launch("-m", f"experiment.name='{name}'", *SHORT, "eval=none", "peft.lora_rank=8,4", "optimizer.lr=1e-3",
                  "cluster.max_array_size=1", "cluster.setup=[\"export CRUIJFF_NOTE='a b; $(touch PWNED)'\"]",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2/2 runs finished" in proc.stdout
    sweep_dir = tmp_path / "outputs" / name
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]
    assert len({j.split("_")[0] for j in jobs.values()}) == 2  # max_array_size=1: split into two arrays
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))
    assert not list(Path.home().glob("PWNED*"))


def test_launcher_killed_mid_sweep_then_reruns_complete_only_what_is_missing(slurm, tmp_path, tiny_model_dir):
    args = ["-m", "experiment.name=orphans", *SHORT, "training.epochs=2", "peft.lora_rank=8",
            "optimizer.lr=1e-3,3e-3"]
    sweep_dir = tmp_path / "outputs" / "orphans"
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    proc = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (sweep_dir / "sweep.json").exists()
          and len(json.loads((sweep_dir / "sweep.json").read_text()).get("jobs", {})) == 2, 120, "submission")
    proc.kill()  # the launcher dies; its SLURM jobs do not
    proc.communicate()
    jobs = json.loads((sweep_dir / "sweep.json").read_text())["jobs"]

    again = launch(*args, cwd=tmp_path)  # while the orphaned jobs still run: nothing submitted twice
    assert again.returncode == 0, again.stderr[-2000:]
    assert "submitted as slurm job" not in again.stdout
    if "nothing to submit; 2 runs still run in earlier jobs" not in again.stdout:
        assert "2/2 runs finished" in again.stdout  # (the jobs were quicker than this launch)

    def orphans_ended() -> bool:
        states = _sacct(*jobs.values())
        return len(states) == 2 and all(s in ("COMPLETED", "FAILED") for s in states.values())

    wait_for(orphans_ended, 300, "the orphaned jobs to end")
    final = launch(*args, cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "submitted as slurm job" not in final.stdout and "2/2 runs finished" in final.stdout
    assert all(json.loads((sweep_dir / n / "run.json").read_text())["attempts"] == 1 for n in jobs)
    df = pd.read_csv(sweep_dir / "summary.csv")
    assert set(df["run"]) == {"base", *jobs}


def test_requeued_job_resumes_after_its_last_epoch_not_from_scratch(slurm, tmp_path, tiny_model_dir):
    """A running array task is requeued mid-training (what preemption or submitit's time-limit
    signal does); the job starts again and torchtune resumes from the newest complete epoch."""
    args = ["-m", "experiment.name=requeue", *SLURM, "eval=none", "training.epochs=8", "peft.lora_rank=8",
            "optimizer.lr=1e-3"]
    run_dir = tmp_path / "outputs" / "requeue" / "rank8_lr1e-3_epochs8"
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    proc = subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run_dir / "epoch_1" / "adapter_config.json").exists(), 300, "two epochs")
    job = json.loads((run_dir.parent / "sweep.json").read_text())["jobs"][run_dir.name]
    subprocess.run(["scontrol", "requeue", job], check=True)

    def running_again() -> bool:  # a requeued job waits ~2 min before it may start; let it start now
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
        return json.loads((run_dir / "run.json").read_text()).get("attempts") == 2

    wait_for(running_again, 300, "the requeued job to start")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 2
    kept = int(state["resumed_from"].split("_")[1])
    assert kept >= 1  # resumed after epoch_1 or later, not restarted
    assert "ACTION: Resume" in (run_dir.parent / "run-experiment.log").read_text()
    assert [e["epoch"] for e in state["epochs"]] == list(range(8))  # each epoch's losses once
    assert state["checkpoints"] == [f"epoch_{i}" for i in range(8)]


def test_time_limit_without_requeues_left_is_recorded_and_a_rerun_resumes(slurm, tmp_path, tiny_model_dir,
                                                                        monkeypatch):
    # 12 epochs of 4 steps, each step made 2.5 s long (a test-only hook), outlast on any machine the
    # minute (+ SLURM's ~30 s slack) the first attempt gets
    monkeypatch.setenv("CRUIJFF_TEST_STEP_DELAY_S", "2.5")
    args = ["-m", "experiment.name=timelimit", *SLURM, "eval=none", "training.epochs=12",
            "training.max_steps_per_epoch=4", "peft.lora_rank=8", "optimizer.lr=1e-3"]
    run_dir = tmp_path / "outputs" / "timelimit" / "rank8_lr1e-3_epochs12_steps4"
    proc = launch(*args, "cluster.timeout_min=1", "cluster.max_requeue=0", cwd=tmp_path, timeout=600)
    assert proc.returncode == 1
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "failed" and state["error"].startswith("stopped at its time limit")
    kept = state["checkpoints"]
    monkeypatch.delenv("CRUIJFF_TEST_STEP_DELAY_S")  # the rest at full speed: what is checked is where it resumes
    again = launch(*args, "cluster.timeout_min=10", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 2 and len(state["checkpoints"]) == 12
    assert state["resumed_from"] == (kept[-1] if kept else None)


def test_each_run_asks_slurm_for_the_time_its_own_epochs_need(slurm, tmp_path, tiny_model_dir):
    """A grid over epochs: the cluster preset's time limit follows each run's epochs, so the runs go
    in one array per limit (held in the queue here: only what SLURM was asked for is checked)."""
    args = ["-m", "experiment.name=limits", *[a for a in SLURM if not a.startswith("training.epochs")],
            "training.epochs=1,2", "peft.lora_rank=8", "optimizer.lr=1e-3", "eval=none",
            "detach=true", "+cluster.sbatch.hold=true"]
    try:
        proc = launch(*args, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        jobs = json.loads((tmp_path / "outputs" / "limits" / "sweep.json").read_text())["jobs"]
        shown = {name: subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
                 for name, job in jobs.items()}
        limits = {name: text.split("TimeLimit=")[1].split()[0] for name, text in shown.items()}
        # tiny_llama: 1 minute per epoch -> epochs x 1.2 + 10 minutes
        assert limits == {"rank8_lr1e-3_epochs1": "00:12:00", "rank8_lr1e-3_epochs2": "00:13:00"}
        assert len({job.split("_")[0] for job in jobs.values()}) == 2  # two arrays
    finally:
        for kind in ("train", "eval"):
            subprocess.run(["scancel", "-n", f"cruijff-{kind}-limits"], check=False)


def test_a_job_slurm_refuses_is_one_line_naming_the_cluster_key_before_anything_is_written(slurm, tmp_path,
                                                                                          tiny_model_dir):
    """The tiny model's hint asks for a GPU and this cluster has none (no gres): the dry run asks
    sbatch (--test-only) and says what the launch would; the launch writes and submits nothing."""
    grid = ["-m", "experiment.name=refused", "cluster=slurm", "training.epochs=1", "peft.lora_rank=8,16"]
    gres = ("cruijff: error: cluster.gpus_per_node=1: sbatch refused the job: Invalid generic resource (gres) "
            "specification; set it to the GPUs a node of the partition has (0: none), or cluster.partition to "
            "one with GPUs (sinfo -o '%P %G' lists them)")
    for extra in (["dry_run=true"], []):
        proc = launch(*grid, *extra, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [gres], proc.stderr[-2000:]
    partition = launch(*grid, "cluster.gpus_per_node=0", "cluster.partition=gpu", cwd=tmp_path)
    assert partition.returncode == 2 and partition.stderr.strip().splitlines()[-1].startswith(
        "cruijff: error: cluster.partition='gpu': sbatch refused the job: invalid partition specified: gpu")
    flag = launch(*grid, "cluster.gpus_per_node=0", "+cluster.sbatch.mem=9999G", cwd=tmp_path)  # the preset's own flag
    assert flag.returncode == 2 and flag.stderr.strip().splitlines() == [
        "cruijff: error: cluster.sbatch.mem='9999G': sbatch refused the job: Requested node configuration is not "
        "available; sinfo -o '%P %c %m %G' lists a node's CPUs, memory (MB) and GPUs per partition"]
    assert not (tmp_path / "outputs").exists()
    queued = subprocess.run(["squeue", "-h", "-n", "cruijff-train-refused"], capture_output=True, text=True).stdout
    assert queued.strip() == ""


def test_a_submission_sbatch_refuses_raises_the_same_line(slurm, tmp_path):
    """Where sbatch refuses the real submission (not only --test-only), the same line, no traceback."""
    from omegaconf import OmegaConf

    from cruijff.cluster import make_executor, submitted
    from cruijff.errors import ConfigError

    cluster = OmegaConf.load(Path(__file__).parents[1] / "conf" / "cluster" / "slurm.yaml")
    cluster.merge_with({"timeout_min": 5, "gpus_per_node": 2, "cpus_per_task": 1, "mem_gb": 1})
    executor = make_executor(cluster, tmp_path, name="cruijff-refused")
    with pytest.raises(ConfigError) as refused:
        submitted(lambda: executor.submit(print, "never"), cluster)
    assert str(refused.value).startswith("cluster.gpus_per_node=2: sbatch refused the job: Invalid generic resource")


def _one_job(sweep_dir: Path) -> str:
    return next(iter(json.loads((sweep_dir / "sweep.json").read_text())["jobs"].values()))


def test_a_job_cancelled_after_its_last_save_is_finished_and_says_so(slurm, tmp_path, tiny_model_dir):
    """scancel lands after the last epoch is saved: the job goes on until SLURM kills it (KillWait),
    so the run is finished — not "died while fine-tuning" with a finished table after it."""
    sweep_dir = tmp_path / "outputs" / "late"
    proc = subprocess.Popen([sys.executable, str(LAUNCH), "-m", "experiment.name=late", *SHORT, "training.epochs=2",
                             "eval=none", "peft.lora_rank=8", "optimizer.lr=1e-3"], cwd=tmp_path,
                            env={**os.environ, "INSPECT_DISPLAY": "none"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: list(sweep_dir.glob("*/epoch_1/.complete")), 600, "the last epoch saved", every=0.02)
    job = _one_job(sweep_dir)
    subprocess.run(["scancel", job], check=True)
    out, err = proc.communicate(timeout=600)
    assert _sacct(job)[job].startswith("CANCELLED")
    assert proc.returncode == 0 and "1/1 runs finished" in out, err[-2000:]
    state = json.loads(next(sweep_dir.glob("*/run.json")).read_text())
    note = f"SLURM job {job} ended CANCELLED by root; every epoch was saved before it ended"
    assert state["status"] == "finished" and state["note"] == note
    assert note in out and "Job died" not in (sweep_dir / "run-experiment.log").read_text()


def test_status_of_a_detached_sweep_reads_the_scheduler_not_a_heartbeat(slurm, tmp_path, tiny_model_dir):
    """The job of a detached run is cancelled mid-training (its eval+report job too, so nothing
    records it): `status` says so at once, from sacct, and exits 1; it writes nothing."""
    sweep_dir = tmp_path / "outputs" / "gone"
    proc = launch("-m", "experiment.name=gone", *SLURM, "training.epochs=10", "eval=none", "peft.lora_rank=8",
                  "optimizer.lr=1e-3", "detach=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_file = sweep_dir / "rank8_lr1e-3_epochs10" / "run.json"
    finish = json.loads((sweep_dir / "sweep.json").read_text())["detached"]["finish_job"]
    try:
        wait_for(lambda: run_file.exists() and json.loads(run_file.read_text())["status"] == "running", 300, "training")
    finally:
        subprocess.run(["scancel", finish], check=False)
    job = _one_job(sweep_dir)
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: _sacct(job).get(job, "").startswith("CANCELLED"), 60, "sacct to say cancelled")
    status = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)], capture_output=True,
                            text=True, env={**os.environ, "COLUMNS": "250"})
    assert status.returncode == 1
    row = next(line for line in status.stdout.splitlines() if "rank8_lr1e-3_epochs10" in line)
    assert "died" in row and f"SLURM job {job} ended CANCELLED by root while fine-tuning" in row
    assert json.loads(run_file.read_text())["status"] == "running"  # status reads; the next launch records it
