"""One writer per run dir: a single run takes its experiment's lock as a sweep does, and a local
job that outlived its killed launcher is found by its process and never trained a second time.

Real launches of the tiny model. The process that trains is held still with SIGSTOP while the
other launches are tried, so the overlap does not depend on how loaded the machine is.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import LAUNCH, launch

HOST = socket.gethostname()


def _start(args: list[str], cwd: Path, out=subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "INSPECT_DISPLAY": "none", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(LAUNCH), *args], cwd=cwd, env=env, stdout=out,
                            stderr=subprocess.STDOUT if out is not subprocess.PIPE else subprocess.PIPE, text=True)


def _training(sweep_dir: Path, proc: subprocess.Popen, timeout: float = 900) -> tuple[Path, dict]:
    """The run dir and ``run.json`` of the run being fine-tuned, once its first step is logged."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, (proc.communicate()[1] or "")[-3000:]
        for record in sweep_dir.glob("*/run.json"):
            try:
                state = json.loads(record.read_text())
            except ValueError:  # being replaced
                continue
            loss = record.parent / "logs" / "loss.jsonl"
            if state.get("status") == "running" and loss.exists() and loss.read_text().strip():
                return record.parent, state
        time.sleep(0.05)
    raise AssertionError(f"no run started fine-tuning in {sweep_dir} within {timeout} s")


def _lines(proc: subprocess.Popen) -> tuple[queue.Queue, list[str]]:
    """The lines of a running process's stdout as they come (None at its end), and its stderr so far."""
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    return lines, errors


def _files(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def test_liveness_tells_a_live_process_from_an_ended_one_and_from_a_reused_pid():
    from cruijff.records import liveness

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = liveness.start_time(proc.pid)
    assert start is not None
    assert liveness.alive(HOST, proc.pid, start) is True
    assert liveness.alive(HOST, proc.pid, start + 1) is False  # the pid is another process's now
    assert liveness.alive("another-machine", proc.pid, start) is None
    proc.kill()
    proc.wait()
    assert liveness.alive(HOST, proc.pid, start) is False


@pytest.mark.slow
def test_a_single_run_is_the_one_writer_of_its_experiment_while_it_runs(tmp_path, tiny_model_dir):
    """A second single run of the experiment, and a sweep of it, are refused with one line naming
    the run that holds it; nothing of the experiment's dir is touched, and the first run finishes."""
    args = ["experiment.name=one", "training.epochs=1", "eval.limit=5"]
    sweep_dir = tmp_path / "outputs" / "one"
    first = _start(args, tmp_path)
    try:
        run_dir, state = _training(sweep_dir, first)
        assert state["pid"] == first.pid and state["pid_start"]  # a single run trains in its own process
        os.kill(first.pid, signal.SIGSTOP)  # mid-training, for as long as the others take
        before = _files(sweep_dir)
        second = launch(*args, cwd=tmp_path)
        sweep = launch("-m", *args, cwd=tmp_path)
        after = _files(sweep_dir)
    finally:
        _resume(first.pid)
    out, err = first.communicate(timeout=900)
    holder = f"cruijff: error: outputs/one is in use by a running launch (pid {first.pid} on {HOST} since "
    for refused in (second, sweep):
        assert refused.returncode == 2, refused.stderr[-2000:]
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(holder), refused.stderr
        assert "python launch.py experiment.name=one training.epochs=1 eval.limit=5)" in lines[0]
    assert after == before
    assert first.returncode == 0, err[-3000:]
    assert "epoch_0" in out and "finished" in out
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 1


@pytest.mark.slow
def test_a_job_whose_launcher_was_killed_is_waited_for_and_never_trained_twice(tmp_path, tiny_model_dir):
    """kill -9 the launcher of a local sweep while its job trains: the job goes on. A single run of
    it is refused, naming the job; the sweep run again at once waits for the job, submits no second
    fine-tune, and evaluates the run when the job has finished it."""
    grid = ["-m", "experiment.name=orphan", "peft.lora_rank=8", "optimizer.lr=1e-3", "training.epochs=1",
            "eval.limit=5"]
    sweep_dir = tmp_path / "outputs" / "orphan"
    # its output to a file: the local job it starts writes to the same, and outlives it
    launcher = _start(grid, tmp_path, out=(tmp_path / "launcher.out").open("w"))
    job = None
    rerun = None
    try:
        run_dir, state = _training(sweep_dir, launcher)
        job = state["pid"]
        assert job != launcher.pid  # a submitit job: a process of its own
        os.kill(job, signal.SIGSTOP)
        single = launch(*grid[1:], cwd=tmp_path)  # the sweep's launcher holds the experiment
        assert single.returncode == 2
        assert f"is in use by a running launch (pid {launcher.pid} on {HOST} since " in single.stderr
        launcher.kill()  # SIGKILL: no cleanup of any kind
        launcher.wait(timeout=60)
        os.kill(job, 0)  # the job outlived it

        single = launch(*grid[1:], cwd=tmp_path)
        assert single.returncode == 2
        assert single.stderr.strip().splitlines() == [
            f"cruijff: error: outputs/orphan/{run_dir.name} is being fine-tuned by job process {job} on {HOST} "
            f"(since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(state['started']))}), a job of an earlier "
            "launch; wait for it to end, or stop it first"]

        rerun = _start(grid, tmp_path)
        (lines, errors), seen = _lines(rerun), []
        while not any("waiting for it to end" in ln for ln in seen):
            line = lines.get(timeout=600)
            assert line is not None, "".join(seen + errors)[-3000:]
            seen.append(line)
        assert f"{run_dir.name}: still fine-tuned by job process {job} on {HOST}" in seen[-1]
        _resume(job)
        rerun.wait(timeout=900)
        while (line := lines.get(timeout=60)) is not None:
            seen.append(line)
        out, err = "".join(seen), "".join(errors)
    finally:
        if job is not None:
            _resume(job)
        for proc in (launcher, rerun):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert rerun.returncode == 0, err[-3000:]
    assert f"{run_dir.name}: fine-tuning finished" in out and "1/1 runs finished" in out
    assert "submitted as local job" not in out
    state = json.loads((run_dir / "run.json").read_text())
    assert state["status"] == "finished" and state["attempts"] == 1 and state["pid"] == job
    assert len((run_dir / "logs" / "loss.jsonl").read_text().splitlines()) == state["epochs"][0]["steps"]
    log = (sweep_dir / "run-experiment.log").read_text()
    assert log.count("ACTION: Submit fine-tune") == 1 and "ACTION: Wait for job" in log
    assert "ACTION: Submit eval" in log and (sweep_dir / "summary.md").exists()


def test_status_shows_a_run_whose_process_died_as_died_not_running(tmp_path):
    """kill -9 leaves run.json saying running: status asks whether its process still runs."""
    import socket

    from cruijff.records import RunState, RunStatus, liveness
    from cruijff.sweep import status_table

    gone = subprocess.Popen(["true"])
    gone.wait()
    sweep_dir = tmp_path / "outputs" / "x"
    RunState(RunStatus.RUNNING, name="r", host=socket.gethostname(), pid=gone.pid, pid_start=12345,
             started=time.time() - 60).save(sweep_dir / "r")
    assert liveness.gone(RunState.of(sweep_dir / "r"))
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(status_table(sweep_dir, "no launch running"))
    text = console.export_text()
    row = next(ln for ln in text.splitlines() if " r " in ln)
    assert "died" in row and "running" not in row, text
