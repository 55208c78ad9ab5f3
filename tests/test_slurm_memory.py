"""A training job SLURM ends for exceeding its memory request is resubmitted with 1.5 x the
memory, up to ``cluster.max_mem_gb``, and resumes; at the cap the run fails naming the key.

Real SLURM (scripts/slurm-cluster: where this machine allows, task/cgroup constrains each job's
RAM and sacct says OUT_OF_MEMORY), real submitit, real torchtune on the tiny model, whose job
needs a few hundred MB: 0.25 GB is too little, and a few steps of 1.5 x are enough.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from conftest import compose_config, launch, wait_for
from cruijff.cluster import backend
from cruijff.config import SCHEMA, check_value
from cruijff.errors import ConfigError
from cruijff.records import Retry, RunState, RunStatus
from cruijff.sweep.deaths import next_memory
from cruijff.sweep.launcher import with_learned_memory


ARGS = ["cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1", "training.epochs=1",
        "training.max_steps_per_epoch=5", "eval=none", "peft.lora_rank=8", "optimizer.lr=1e-3"]
RUN = "rank8_lr1e-3_epochs1_steps5"


def _requested_memory(job: str, experiment: str, since: float) -> str:
    """sacct's ReqMem (``122M``) of the training job ``job`` of ``experiment`` submitted after ``since``.

    SLURM's accounting gets a job's record in parts: for a few seconds, even after the job has
    ended, its ReqTRES can be empty and ReqMem reads ``16?``; this waits until the record names
    the memory asked for."""
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 1))

    def record() -> list[str] | None:
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", start, "-o", "JobID,JobName,ReqTRES,ReqMem", "-j", job],
                             capture_output=True, text=True, check=True).stdout
        return next((row for row in (line.split("|") for line in out.splitlines()) if row[0] == job), None)

    wait_for(lambda: "mem=" in (record() or ["", "", ""])[2], 120, f"sacct's record of job {job} with its memory")
    _, name, _, mem = record()
    assert name == f"cruijff-train-{experiment}"
    return mem


@pytest.mark.slow
@pytest.mark.slurm
def test_a_job_over_its_memory_is_resubmitted_with_more_and_finishes(slurm, tmp_path, tiny_model_dir):
    began = time.time()
    proc = launch("-m", "experiment.name=hostoom", *ARGS, "cluster.mem_gb=0.25", "cluster.max_mem_gb=2",
                  cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    sweep_dir = tmp_path / "outputs" / "hostoom"
    state = json.loads((sweep_dir / RUN / "run.json").read_text())
    assert state["status"] == "finished"
    retries = state["retries"]
    mem = 0.25
    for retry in retries:  # one retry where 0.375 GB is enough; more where it is not
        assert retry["kind"] == "host_oom" and retry["before"] == {"mem_gb": mem}
        mem = round(mem * 1.5, 3)
        assert retry["after"] == {"mem_gb": mem}
        assert "OUT_OF_MEMORY" in retry["error"] or "memory limit" in retry["error"]
        assert f"{RUN}: {retry['at']} ran out of memory ({retry['before']['mem_gb']:g} GB): resubmitted" in proc.stdout
    first = re.search(r"submitted as slurm job (\S+)", proc.stdout).group(1)
    assert retries and retries[0]["at"] == f"job {first}"
    log = (sweep_dir / "run-experiment.log").read_text()
    assert log.count("ACTION: Retry") == len(retries) and "host_oom at job" in log
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert plan["runs"][0]["resources"]["mem_gb"] == mem  # a later launch asks for it at once
    last = plan["jobs"][RUN]
    assert state["job_id"] == last and last not in [r["at"].split()[1] for r in retries]
    assert _requested_memory(last, "hostoom", began) == f"{int(mem * 1024)}M"  # what SLURM was asked for


@pytest.mark.slow
@pytest.mark.slurm
def test_at_the_cap_the_run_fails_naming_the_key(slurm, tmp_path, tiny_model_dir):
    proc = launch("-m", "experiment.name=hostcap", *ARGS, "cluster.mem_gb=0.1", "cluster.max_mem_gb=0.12",
                  cwd=tmp_path, timeout=600)
    assert proc.returncode == 1
    state = json.loads((tmp_path / "outputs" / "hostcap" / RUN / "run.json").read_text())
    assert state["status"] == "failed"
    assert [r["after"] for r in state["retries"]] == [{"mem_gb": 0.12}]  # 1.5 x 0.1, held to the cap
    assert "ran out of memory with 0.12 GB" in state["error"]
    assert "cluster.max_mem_gb=0.12 allows no more" in state["error"]
    assert "cluster.max_mem_gb=0.12 allows no more" in proc.stderr
    began = time.time()
    again = launch("-m", "experiment.name=hostcap", *ARGS, "cluster.mem_gb=0.1", "cluster.max_mem_gb=0.12",
                   cwd=tmp_path, timeout=600)
    assert again.returncode == 1
    job = re.search(r"submitted as slurm job (\S+)", again.stdout).group(1)
    assert _requested_memory(job, "hostcap", began) == "122M"  # at once what the run was last given
    assert "ACTION: Ask more memory" in (tmp_path / "outputs" / "hostcap" / "run-experiment.log").read_text()


@pytest.mark.slow
@pytest.mark.slurm
def test_a_cap_below_the_first_request_is_one_line_before_anything_is_submitted(slurm, tmp_path):
    proc = launch("-m", "experiment.name=lowcap", *ARGS, "cluster.mem_gb=0.1", "cluster.max_mem_gb=0.05",
                  cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "cruijff: error: cluster.max_mem_gb=0.05: at least the memory a run's job asks for first (cluster.mem_gb=0.1)")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("flag", ["mem", "mem-per-cpu", "mem-per-gpu"])
def test_a_preset_sbatch_memory_flag_refuses_more_memory_instead_of_asking_the_same(tmp_path, flag):
    """sbatch takes cluster.sbatch's memory flag over submitit's --mem: a resubmission with more
    memory would get the same; it is one line naming the flag instead. The preset's own memory
    is asked for as the flag says."""
    cfg = compose_config("cluster=slurm", "cluster.gpus_per_node=0", "cluster.mem_gb=1", f"+cluster.sbatch.{flag}=1G")
    where = backend(cfg.cluster)
    script = where.array_script(where.executor(tmp_path / "%j", name="x", resources={"mem_gb": 1.0}), 1)
    assert f"#SBATCH --{flag}=1G" in script
    with pytest.raises(ConfigError, match=f"cluster.sbatch.{flag}='1G': sets the job's memory.*cluster.mem_gb"):
        where.executor(tmp_path / "%j", name="x", resources={"mem_gb": 1.5})
    plain = backend(compose_config("cluster=slurm", "cluster.gpus_per_node=0", "cluster.mem_gb=1").cluster)
    assert "#SBATCH --mem=1536MB" in plain.array_script(
        plain.executor(tmp_path / "%j", name="x", resources={"mem_gb": 1.5}), 1)


def test_tiny_memory_grows_at_least_a_megabyte_and_under_one_is_refused():
    assert next_memory(0.0001, 0.0004) == 0.0004 and next_memory(0.0004, 0.0004) is None  # never 0, ends at the cap
    assert next_memory(0.001, 1) == 0.002 and next_memory(0.25, 2) == 0.375
    with pytest.raises(ConfigError, match=r"cluster.mem_gb=0.0001: must be a number >= 0.001"):
        check_value("cluster.mem_gb", 0.0001, "number>=0.001")
    assert SCHEMA["cluster.mem_gb"] == "number>=0.001"  # 1 MB: SLURM reads --mem=0 as the whole node


def test_a_relaunch_asks_for_learned_memory_at_most_a_lowered_cap(tmp_path):
    """run.json says a job was resubmitted with 8 GB; cluster.max_mem_gb is now 4."""
    (tmp_path / "r").mkdir()
    RunState(RunStatus.FAILED, name="r", retries=[Retry("host_oom", "job 1", {"mem_gb": 4.0}, {"mem_gb": 8.0},
                                                        time.time(), "OUT_OF_MEMORY")]).save(tmp_path / "r")
    cluster = compose_config("cluster=slurm", "cluster.mem_gb=2", "cluster.max_mem_gb=4").cluster
    planned = {"r": {"mem_gb": 2.0, "timeout_min": 60}}
    assert with_learned_memory(tmp_path, ["r"], planned, cluster)["r"] == {"mem_gb": 4.0, "timeout_min": 60}
    assert "held to cluster.max_mem_gb=4" in (tmp_path / "run-experiment.log").read_text()
    cluster.max_mem_gb = 16
    assert with_learned_memory(tmp_path, ["r"], planned, cluster)["r"]["mem_gb"] == 8.0
