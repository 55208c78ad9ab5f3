"""``cluster.executor=slurm``: sbatch job arrays through submitit, their ``#SBATCH`` lines,
sbatch's refusals as one line naming the cluster key, and what ``sacct`` and ``squeue`` say of a
job. Jobs are watched by polling every few seconds (one ``sacct`` call for all of them), so a job
that dies is noticed in seconds; submitit's own watcher backs off to minutes."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, CruijffError
from . import _submitit
from .backend import Backend
from .jobs import RESOURCES, preset_resources, share


SITE_FLAGS = ("partition", "account", "qos", "constraint")  # the preset's sbatch flags, when set


def site_flags(cluster: DictConfig) -> dict[str, str]:
    """The preset's partition, account, qos and constraint, those it sets."""
    return {key: str(cluster[key]) for key in SITE_FLAGS if cluster.get(key) not in (None, "")}


def sbatch_directives(cluster: DictConfig, name: str, resources: dict[str, Any] | None = None) -> list[str]:
    """``#SBATCH`` lines of one job of ``cluster`` (a SLURM preset), each value shell-quoted (sbatch
    reads quotes in its directives): its name, the preset's site flags, the time limit, GPUs, CPUs
    and memory (``resources`` in place of the preset's, as in :meth:`SlurmBackend.executor`), then any other
    flag of ``cluster.sbatch``. The same values the launch gives submitit, in plain sbatch spelling."""
    import shlex

    res = {k: cluster.get(k) for k in RESOURCES} | (resources or {})
    minutes, mem = int(res["timeout_min"]), float(res["mem_gb"])
    days, rest = divmod(minutes, 1440)
    flags: dict[str, Any] = {"job-name": name, **site_flags(cluster),
                             "time": (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"}
    if int(res["gpus_per_node"]):
        flags["gpus-per-node"] = int(res["gpus_per_node"])
    flags["cpus-per-task"] = int(res["cpus_per_task"])
    flags["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{int(mem * 1024)}MB"  # submitit's spelling
    flags.update(extra_flags(cluster))  # as submitit passes them: after, and over, its own
    return [f"#SBATCH --{k}" if v is True else f"#SBATCH --{k}={shlex.quote(str(v))}" for k, v in flags.items()]


# sbatch's words for a refusal -> the cluster key that decides it, and where to look for what is allowed
REFUSALS: list[tuple[tuple[str, ...], str, str]] = [  # the first that matches
    (("account",), "account", "sacctmgr show assoc user=$USER format=account lists yours"),
    (("qos",), "qos", "sacctmgr show assoc user=$USER format=qos lists yours"),
    (("gres", "generic resource"), "gpus_per_node",
     "set it to the GPUs a node of the partition has (0: none), or cluster.partition to one with GPUs "
     "(sinfo -o '%P %G' lists them)"),
    (("partition",), "partition", "sinfo -s lists this cluster's partitions"),
    (("time limit",), "timeout_min", "lower it to the partition's MaxTime (sinfo -o '%P %l' lists them)"),
    (("feature", "constraint"), "constraint", "sinfo -o '%P %f' lists the nodes' features"),
    (("memory",), "mem_gb", "sinfo -o '%P %m' lists the nodes' memory (MB)"),
]
NODE_SIZE = "sinfo -o '%P %c %m %G' lists a node's CPUs, memory (MB) and GPUs per partition"


def extra_flags(cluster: DictConfig) -> dict[str, Any]:
    """``cluster.sbatch``: any other sbatch flag, by its sbatch name."""
    extra = OmegaConf.to_container(cluster.sbatch, resolve=True) if cluster.get("sbatch") else {}
    return {str(k): v for k, v in (extra or {}).items()}


# sbatch flags of cluster.sbatch that decide what a cluster key would (a refusal names the flag)
FLAGS_OF = {"gpus_per_node": ("gres", "gpus", "gpus-per-node", "gpus-per-task"), "partition": ("partition",),
            "account": ("account",), "qos": ("qos",), "timeout_min": ("time",), "constraint": ("constraint",),
            "mem_gb": ("mem", "mem-per-cpu", "mem-per-gpu"), "cpus_per_task": ("cpus-per-task",)}


def fixed_memory(cluster: DictConfig, mem_gb: float) -> None:
    """Raise the one line of a job asked to have other memory than ``cluster.mem_gb`` (a run
    resubmitted for running out of it) where ``cluster.sbatch`` sets the job's memory: sbatch
    takes that flag over submitit's ``--mem``, so the job would get the same memory again."""
    flag = next((f for f in FLAGS_OF["mem_gb"] if f in extra_flags(cluster)), None)
    if flag and cluster.get("mem_gb") is not None and mem_gb != float(cluster.mem_gb):
        raise ConfigError(f"cluster.sbatch.{flag}", extra_flags(cluster)[flag],
                          f"sets the job's memory, so a job cannot be given {mem_gb:g} GB; a run resubmitted for "
                          "running out of memory needs cluster.mem_gb instead (remove the flag)")


def sbatch_words(stderr: str) -> str:
    """sbatch's refusal in one line: its distinct messages without their ``sbatch: error:`` prefixes."""
    out: list[str] = []
    for line in stderr.splitlines():
        line = re.sub(r"^((sbatch: (error|fatal):|sbatch:|allocation failure:|Batch job submission failed:)\s*)+", "",
                      line.strip())
        if line.startswith("Try \"sbatch --help\""):
            continue
        if line and line.lower() not in (o.lower() for o in out):
            out.append(line)
    return "; ".join(out) or "no reason given"


def refusal(stderr: str, cluster: DictConfig, resources: dict[str, Any] | None = None) -> CruijffError:
    """The one line for a job sbatch refused: the cluster key that decides it, its value, sbatch's
    own words and where to look for what is allowed. Resources too large for any node name all three."""
    words = sbatch_words(stderr)
    values = {k: cluster.get(k) for k in RESOURCES} | (resources or {}) | site_flags(cluster)
    low = words.lower()
    extra = extra_flags(cluster)
    option = re.search(r"unrecognized option '--([^=' ]+)", words)
    if option and option.group(1) in extra:
        return ConfigError(f"cluster.sbatch.{option.group(1)}", extra[option.group(1)],
                           f"sbatch refused the job: {words}; sbatch --help lists its flags")

    def named(key: str, hint: str) -> CruijffError:
        given = next((f for f in FLAGS_OF.get(key, ()) if f in extra), None)
        if given:  # the preset's own flag decides it, not the cruijff key
            return ConfigError(f"cluster.sbatch.{given}", extra[given], f"sbatch refused the job: {words}; {hint}")
        return ConfigError(f"cluster.{key}", values.get(key), f"sbatch refused the job: {words}; {hint}")

    if "node configuration is not available" in low:
        flag = next((f for k in ("mem_gb", "cpus_per_task", "gpus_per_node") for f in FLAGS_OF[k] if f in extra),
                    "exclude" if "exclude" in extra else None)
        if flag:  # the preset's own flag asks for it
            return ConfigError(f"cluster.sbatch.{flag}", extra[flag], f"sbatch refused the job: {words}; {NODE_SIZE}")
        asked = ", ".join(f"cluster.{k}={values.get(k)}" for k in ("gpus_per_node", "cpus_per_task", "mem_gb"))
        where = f" of partition {values['partition']}" if values.get("partition") else ""
        return CruijffError(f"{asked}: sbatch refused the job: {words}; no node{where} has that much: {NODE_SIZE}")
    for needles, key, hint in REFUSALS:
        if any(n in low for n in needles):
            return named(key, hint)
    return CruijffError(f"cluster={cluster.get('name', cluster.executor)}: sbatch refused the job: {words}; see the "
                        "preset's partition, account, qos, constraint and resources")


def sbatch_test(cluster: DictConfig, name: str, resources: dict[str, Any] | None = None, tasks: int = 1) -> None:
    """Ask SLURM whether it would take a job of ``cluster`` with these resources, as an array of
    ``tasks`` (``sbatch --test-only``: nothing is submitted); raise :func:`refusal` if not. Where
    there is no ``sbatch`` here, or with ``cluster.preflight=false``, nothing is checked."""
    import shutil
    import tempfile

    if shutil.which("sbatch") is None or not cluster.get("preflight", True):
        return
    lines = ["#!/bin/sh", *sbatch_directives(cluster, name, resources)]
    if tasks > 1:
        lines.append(f"#SBATCH --array=0-{tasks - 1}")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="cruijff-test-") as script:
        script.write("\n".join(lines) + "\ntrue\n")
        script.flush()
        try:
            proc = subprocess.run(["sbatch", "--test-only", script.name], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise CruijffError(f"cannot ask SLURM whether it takes the job (sbatch --test-only: {e}); "
                               "nothing submitted, try again") from None
    if proc.returncode != 0:
        raise refusal(proc.stderr or proc.stdout, cluster, resources)


def signal_delay(cluster: DictConfig, timeout_min: int) -> int:
    """Seconds before its time limit a job is told to requeue itself: ``cluster.signal_delay_s``,
    at most half the limit (a job told at once would stop before it starts)."""
    return min(int(cluster.get("signal_delay_s", 120)), timeout_min * 30)


def max_array_size(cluster: DictConfig) -> int:
    """Tasks per job array: ``cluster.max_array_size``, or the controller's MaxArraySize - 1."""
    value = cluster.get("max_array_size", "auto")
    if value != "auto":
        return max(1, int(value))
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
        match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
        return int(match.group(1)) - 1 if match else 1000  # array indices run 0..MaxArraySize-1
    except (OSError, subprocess.SubprocessError):
        return 1000


# sacct states of a job that may still run (or run again)
UNFINISHED = ("", "READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING",
              "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED")

# States that may not be final, and how long one may last before the job counts as ended:
# PREEMPTED is final where the cluster cancels preempted jobs (PreemptMode=CANCEL) but passes
# where it requeues them; COMPLETED comes before the result file is visible on a slow shared
# filesystem.
GRACE_S = {"PREEMPTED": 60.0, "COMPLETED": 20.0}
_seen: dict[str, tuple[str, float]] = {}


def job_ended(job: Any) -> bool:
    """Whether a SLURM job has ended, by its result file or sacct's state (from the watcher's
    cache: :meth:`SlurmBackend.refresh` asks once for all). A state that may not be final
    counts after its grace; a cancelled or timed-out job only once SLURM has stopped its processes."""
    if job.paths.result_pickle.exists():
        return True
    state = job.watcher.get_state(job.job_id, mode="cache").upper()
    if state in UNFINISHED:
        _seen.pop(job.job_id, None)  # a later preemption starts its grace anew
        return False
    grace = next((g for s, g in GRACE_S.items() if state.startswith(s)), 0.0)
    if grace:
        since = _seen.get(job.job_id)
        if since is None or since[0] != state:
            _seen[job.job_id] = since = (state, time.time())
        return time.time() - since[1] >= grace
    # cancelled, timed out: its processes go on until SLURM's KillWait ends them (and may save)
    return not (state.startswith(("CANCELLED", "TIMEOUT")) and str(job.job_id) in completing([job.job_id]))


def completing(job_ids: list[str]) -> set[str]:
    """Which of these SLURM jobs SLURM is still ending (squeue's COMPLETING: their processes are
    being signalled and may still write); none where squeue cannot tell."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "CG", "-o", "%i", "-j", ",".join(array_ids(job_ids))],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {line.strip() for line in out.splitlines()} & {str(j) for j in job_ids}


def ended_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """Those of these SLURM jobs that ended, with sacct's state (user names for uids) and end time
    (``2026-12-03T12:15:38``), in one sacct call; none where there is no sacct or it fails."""
    import shutil

    if not job_ids or shutil.which("sacct") is None:
        return {}
    try:
        proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,End", "-j", ",".join(array_ids(job_ids))],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    wanted = {str(j) for j in job_ids}
    out = {}
    for line in proc.stdout.splitlines():
        job, state, end = (line.split("|") + ["", ""])[:3]
        if job in wanted and state.split(" ")[0] not in UNFINISHED:
            out[job] = (with_user_names(state), end)
    return out


def scheduler_state(job) -> str:
    """The scheduler's word on a job (SLURM: sacct state, e.g. ``CANCELLED by alice``, ``TIMEOUT``)."""
    try:
        info = job.watcher.get_info(job.job_id, mode="cache")
    except Exception:
        return ""
    return with_user_names(str(info.get("State", "")).strip())


def with_user_names(state: str) -> str:
    """sacct's ``CANCELLED by 1000`` (a uid) as ``CANCELLED by alice``; a uid with no user here
    stays a number, said to be one."""
    import pwd

    def name(m: "re.Match") -> str:
        try:
            return f"by {pwd.getpwuid(int(m.group(1))).pw_name}"
        except (KeyError, OverflowError):
            return f"by uid {m.group(1)}"

    return re.sub(r"\bby (\d+)\b", name, state)


def array_ids(job_ids: Iterable[Any]) -> list[str]:
    """The jobs (arrays) these SLURM ids belong to (``12_3`` -> ``12``), once each, in id order."""
    return sorted({str(j).split("_")[0] for j in job_ids}, key=lambda x: (len(x), x))


def active_slurm_jobs(job_ids: list[str]) -> set[str]:
    """Which of these SLURM job ids (``12`` or array tasks ``12_3``) are pending or running now."""
    if not job_ids:
        return set()
    bases = array_ids(job_ids)
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-t", "PD,CF,R,S,RQ,RH", "-o", "%i", "-j", ",".join(bases)],
                              capture_output=True, text=True, timeout=60)
        failure = None
        if proc.returncode != 0 and "Invalid job id" not in proc.stderr:
            lines = proc.stderr.strip().splitlines()
            failure = lines[-1] if lines else f"exit {proc.returncode}"
    except (OSError, subprocess.SubprocessError) as e:
        failure = str(e)
    if failure is not None:
        raise CruijffError(f"cannot ask SLURM which earlier jobs still run (squeue: {failure}); "
                           "nothing submitted, try again")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()} & {str(j) for j in job_ids}


# the line slurmstepd writes into a job's stderr when it kills the job for its memory
# (jobacct_gather's OverMemoryKill, or the cgroup's out-of-memory handler)
MEMORY_KILL = re.compile(r"slurmstepd.*(exceeded (job )?memory limit|oom-kill event)", re.I)


def memory_exceeded(job: Any) -> str | None:
    """How SLURM said it ended a job for its memory: sacct's ``OUT_OF_MEMORY`` (task/cgroup; of the
    job, or of its step: ``OUT_OF_MEMORY (step 12.0)``), and slurmstepd's line in the job's stderr
    (``Exceeded job memory limit`` where job accounting kills it); None for any other end."""
    state = scheduler_state(job)
    if state.upper().startswith(("COMPLETED", *[s for s in UNFINISHED if s])):
        return None
    try:
        lines = [ln.strip() for ln in (job.stderr() or "").splitlines() if MEMORY_KILL.search(ln)]
    except Exception:
        lines = []
    line = next((ln for ln in lines if "(" in ln), lines[-1] if lines else "")[:300]
    if state.upper().startswith("OUT_OF_MEMORY"):
        said = state
    else:
        step = out_of_memory_step(job.job_id)
        said = f"OUT_OF_MEMORY (step {step})" if step else ""
    return ": ".join(p for p in (said, line) if p) or None


def out_of_memory_step(job_id: str) -> str | None:
    """The step of a SLURM job that sacct says ended ``OUT_OF_MEMORY`` (``12.0``: submitit's srun
    step, while the job itself says FAILED); None where none did, or sacct cannot tell."""
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,State", "-j", str(job_id)],
                             capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.split("|")[0] for line in out.splitlines()
                 if "|" in line and line.split("|")[1].startswith("OUT_OF_MEMORY")), None)


class SlurmBackend(Backend):
    """Jobs wait in SLURM's queue as job arrays, throttled by ``cluster.max_parallel``; they
    outlive the launcher, and ``sacct``/``squeue`` say which still run and how each ended."""

    name = "slurm"
    queued = True
    stock_launcher = "SlurmLauncher"
    poll_s = 3.0

    def executor(self, folder: Path | str, *, name: str, dependency: str | None = None,
                 resources: dict[str, Any] | None = None, parallel: int | None = None) -> Any:
        import submitit

        cluster = self.cluster
        res = preset_resources(cluster, resources)
        timeout = int(res["timeout_min"])
        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm",
                                         slurm_max_num_timeout=int(cluster.max_requeue))
        extra = extra_flags(cluster)
        fixed_memory(cluster, float(res["mem_gb"]))
        if dependency:
            extra["dependency"] = dependency
        params: dict[str, Any] = dict(
            name=name,
            timeout_min=timeout,
            gpus_per_node=int(res["gpus_per_node"]),
            cpus_per_task=int(res["cpus_per_task"]),
            mem_gb=float(res["mem_gb"]),
            slurm_array_parallelism=int(parallel or cluster.max_parallel),
            slurm_signal_delay_s=signal_delay(cluster, timeout),
            slurm_setup=[str(line) for line in cluster.setup or []],
            slurm_additional_parameters=extra,
        )
        for key, value in site_flags(cluster).items():
            params[f"slurm_{key}"] = value
        if params["gpus_per_node"] == 0:
            del params["gpus_per_node"]
        executor.update_parameters(**params)
        return executor

    def resources(self, cfg: DictConfig) -> dict[str, Any]:
        return {key: cast(self.cluster[key]) for key, cast in RESOURCES.items()}

    def max_array_size(self) -> int:
        return max_array_size(self.cluster)

    def slots(self, sizes: list[int]) -> list[int | None]:
        return list(share(int(self.cluster.max_parallel), sizes))

    def preflight(self, name: str, resources: dict[str, Any] | None = None, tasks: int = 1) -> None:
        sbatch_test(self.cluster, name, resources, tasks)

    def submitted(self, submit: Callable[[], Any], resources: dict[str, Any] | None = None) -> Any:
        from submitit.core.utils import FailedJobError

        try:
            return submit()
        except FailedJobError as e:
            raise refusal(str(e), self.cluster, resources) from None

    def script_header(self, name: str, resources: dict[str, Any] | None = None) -> list[str] | None:
        return sbatch_directives(self.cluster, name, resources)

    def array_script(self, executor: Any, tasks: int) -> str | None:
        return _submitit.array_script(executor, tasks)

    def refresh(self, jobs: list) -> None:
        if jobs:
            jobs[0].watcher.update()  # one sacct call for every job registered with the watcher

    def ended(self, job: Any) -> bool:
        return job_ended(job)

    def state(self, job: Any) -> str:
        return scheduler_state(job)

    def active(self, job_ids: list[str]) -> set[str]:
        return active_slurm_jobs(job_ids)

    def ended_jobs(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        return ended_jobs(job_ids)

    def memory_exceeded(self, job: Any) -> str | None:
        return memory_exceeded(job)
