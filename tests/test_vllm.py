"""``eval.backend=vllm`` for real, on vLLM-CPU (scripts/vllm-cpu-env; skipped, with the reason, where it
is not there): one server serves the tiny model and every adapter of a sweep, and every sample's
completion and score is the HF backend's, also when base and adapter requests share the server's
batches; a killed eval job leaves no server behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LAUNCH, launch
from cruijff.records import layout

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="session")
def vllm_command() -> str:
    """The vllm program: $CRUIJFF_VLLM, the environment scripts/vllm-cpu-env built, or one on PATH."""
    given = os.environ.get("CRUIJFF_VLLM")
    if given:
        return given
    from cruijff.assets import cache_root

    built = sorted(cache_root().glob("vllm-cpu-*/.complete"))
    if built:
        return str(built[-1].parent / "bin" / "vllm")
    if shutil.which("vllm"):
        return "vllm"
    pytest.skip("vLLM is not installed here: scripts/vllm-cpu-env builds a CPU environment for it")


def _samples(log) -> dict[int, tuple]:
    return {s.id: (s.output.completion, s.scores["match"].value) for s in log.samples}


def _log(cell_dir: Path):
    from inspect_ai.log import read_eval_log

    (path,) = cell_dir.glob("*.eval")
    return read_eval_log(str(path))


def _base_cell(sweep_dir: Path, backend: str) -> Path:
    (cell,) = [d for d in (sweep_dir / "base").iterdir() if (d / "results.json").exists() and
               json.loads((d / "results.json").read_text())["key_parts"]["settings"]["backend"] == backend]
    return cell


def _copy_demo(demo, dest: Path) -> tuple[Path, Path]:
    work, run_dir, _ = demo
    shutil.copytree(work, dest, symlinks=True)
    return dest, dest / run_dir.relative_to(work)


def test_a_killed_eval_job_leaves_no_server(demo, vllm_command, tmp_path):
    """kill -9 of the eval job once its server has started its engine: the server's guard stops the
    server's whole process group (the engine with it), and then itself."""
    work, run_dir = _copy_demo(demo, tmp_path / "work")
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    launcher = subprocess.Popen([sys.executable, str(LAUNCH), "eval.backend=vllm", f"eval.vllm.command={vllm_command}"],
                                cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        server = None
        while server is None and time.monotonic() < deadline and launcher.poll() is None:
            server = next(iter(_servers(str(work))), None)
            time.sleep(0.5)
        assert server is not None, "no vLLM server started"
        while not _children(server) and time.monotonic() < deadline:  # its engine process, started by it
            time.sleep(0.5)
        assert _children(server), "the vLLM server started no engine process"
        guard = _parent(server)
        job = _parent(guard)
        assert "guard.py" in Path(f"/proc/{guard}/cmdline").read_text() and job != os.getpid()
        os.kill(job, signal.SIGKILL)  # the eval job
        deadline = time.monotonic() + 120
        while (_group(server) or _alive(guard)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not _group(server), "vLLM processes outlived their killed eval job"
        assert not _alive(guard)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def _mixed_batches(vllm_command: str, epochs: list[Path], tmp_path: Path) -> list[dict]:
    """Every sample's answer of the base and each epoch, asked of one server all at once."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, get_model

    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import build_task
    from cruijff.evaluate.vllm import Server

    server = Server(vllm_command, assets.tiny_model_dir(), adapters=epochs, device="cpu", gpus=1, chat_template=None,
                    max_model_len=None, timeout_s=900, args=[], log_file=tmp_path / "mixed.log")
    server.start()
    try:
        config = GenerateConfig(max_tokens=16, temperature=0.0, max_connections=64,
                                extra_body={"add_special_tokens": True})
        models = [get_model(f"vllm/{server.name}" + (f":{e}" if e else ""), base_url=f"{server.url}/v1",
                            api_key=server.key, memoize=False, config=config) for e in (None, *epochs)]
        task = build_task(TaskSpec("exact_match"), assets.capitalization_file(), "input", "output")
        logs = inspect_eval(task, model=models, log_dir=str(tmp_path / "mixed"), display="none", max_tasks=3,
                            limit=10, log_format="eval", score_display=False)
    finally:
        server.stop()
    assert all(log.status == "success" for log in logs)
    # the three models' requests were in flight together (their samples' times overlap)
    spans = [(min(s.started_at for s in log.samples), max(s.completed_at for s in log.samples)) for log in logs]
    assert max(a for a, _ in spans) < min(b for _, b in spans)
    return [_samples(log) for log in logs]


def _servers(marker: str) -> list[int]:
    """Pids of vLLM servers whose command line holds ``marker`` (a path of the test's)."""
    return [pid for pid, cmd in _cmdlines() if "--served-model-name" in cmd and " serve " in cmd and marker in cmd
            and "guard.py" not in cmd]  # the server itself, not its guard (whose command line holds it)


def _group(pgid: int) -> list[int]:
    """Live processes of a process group (a server started its own)."""
    out = []
    for pid, _ in _cmdlines():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(pid)
    return out


def _cmdlines() -> list[tuple[int, str]]:
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            out.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except OSError:
            continue
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_sweep_scores_every_sample_as_the_hf_backend_from_one_server(vllm_command, tmp_path):
    """Two runs of the tiny model (LoRA ranks 4 and 8), two epochs each, evaluated with
    eval.backend=vllm: one eval job and one server hold the base and all four adapters (vLLM's rank
    choice 8, a slot more than the adapters), each log's model names its checkpoint, and no server is
    left. The same answers come when base and adapter requests share the server's batches. Launched
    again with eval.backend=hf, every cell is evaluated again (the backend is part of its key; the
    vLLM cells are kept aside, never mixed in): every sample's completion and score is the same."""
    common = ["-m", "peft.lora_rank=4,8", "optimizer.lr=1e-3", "training.epochs=2", "training.max_steps_per_epoch=5",
              "eval.limit=10", "experiment.name=grouped"]
    proc = launch(*common, "eval.backend=vllm", f"eval.vllm.command={vllm_command}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "grouped"
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 2
    logs = "".join(layout.eval_log(r).read_text() for r in runs if layout.eval_log(r).exists())
    assert logs.count("cruijff: starting vLLM:") == 1, "one server for the base and all runs' adapters"
    assert "--max-loras 5 " in logs and "--max-lora-rank 8 " in logs and "--dtype float32" in logs
    entries = layout.action_log(sweep).read_text().split("\n[")
    submitted = [e for e in entries if "ACTION: Submit eval" in e]
    assert len(submitted) == 1 and all(r.name in submitted[0] for r in runs), submitted  # one job for all
    assert "job ids" in submitted[0] and "," not in submitted[0].split("job ids", 1)[1]
    assert any("adapter on the vLLM server" in e for e in entries)
    assert not _servers(str(tmp_path)), "a vLLM server outlived its eval job"
    cells = [r / "eval" / f"epoch_{e}" for r in runs for e in (0, 1)]
    served = {c: _samples(_log(c)) for c in cells}
    for c in cells:
        model = _log(c).eval.model
        assert model.startswith("vllm/") and model.endswith(f":{(c.parent.parent / c.name).resolve()}"), model
    base = _samples(_log(_base_cell(sweep, "vllm")))
    # inspect asks one server for the base and two epochs at once, so its batches mix base and adapter
    # requests (vLLM-CPU gave base requests the last adapter slot's weights unless a slot is left empty)
    mixed = _mixed_batches(vllm_command, [runs[0] / "epoch_0", runs[0] / "epoch_1"], tmp_path)
    assert mixed == [base, served[cells[0]], served[cells[1]]]

    proc = launch(*common, "eval.backend=hf", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for c in cells:
        assert _log(c).eval.model.startswith("hf/")
        assert _samples(_log(c)) == served[c], c
        assert len(served[c]) == 10
        assert list((c.parent / ".stale").glob(f"{c.name}-*/results.json"))  # the vLLM cell, kept aside
    assert _samples(_log(_base_cell(sweep, "hf"))) == base
    assert base != served[cells[-1]]  # the adapters answer otherwise than the base: not a check of nothing


@pytest.mark.slurm
def test_on_slurm_a_sweep_is_evaluated_by_one_job_and_one_server(slurm, vllm_command, tmp_path):
    """cluster=slurm: a 2 x 2 grid trains as one job array, then its evals are one SLURM job (one
    base model) whose one server serves the base and every run's adapter; nothing is left running."""
    proc = launch("-m", "experiment.name=vs", "cluster=slurm", "cluster.gpus_per_node=0", "cluster.cpus_per_task=1",
                  "cluster.mem_gb=6", "training=smoke", "peft.lora_rank=4,8", "optimizer.lr=1e-3,3e-3",
                  "eval.backend=vllm", f"eval.vllm.command={vllm_command}", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = tmp_path / "outputs" / "vs"
    runs = sorted(p.parent for p in sweep.glob("*/run.json"))
    assert len(runs) == 4
    entries = layout.action_log(sweep).read_text().split("\n[")
    (submitted,) = [e for e in entries if "ACTION: Submit eval" in e]
    assert all(r.name in submitted for r in runs)
    (job,) = submitted.split("slurm job ids ", 1)[1].split()[:1]
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job], capture_output=True, text=True).stdout
    assert out.split() == ["COMPLETED"], out
    logs = "".join(layout.eval_log(r).read_text() for r in runs if layout.eval_log(r).exists())
    assert logs.count("cruijff: starting vLLM:") == 1 and "--max-loras 5 " in logs
    for r in runs:
        assert _log(r / "eval" / "epoch_0").eval.model.endswith(f":{(r / 'epoch_0').resolve()}")
    assert _log(_base_cell(sweep, "vllm")).status == "success"
    assert not _servers(str(tmp_path))


def test_a_server_that_cannot_start_says_why_once(tmp_path, tiny_model_dir):
    """Its own output's error line (not an earlier start's in the same log), one line; the job's
    next run is not made to wait for another start that would fail the same way."""
    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.errors import CruijffError
    from cruijff.evaluate.vllm import VLLMEvaluator

    fake = tmp_path / "vllm"
    fake.write_text("#!/bin/sh\necho 'INFO reading the model'\necho 'vllm: error: unrecognized arguments: --bogus' >&2\n"
                    "exit 2\n")
    fake.chmod(0o755)
    log = tmp_path / "eval.log"
    log.write_text("(APIServer) ERROR 12-03 15:42:10 an earlier server's error\n")
    evaluator = VLLMEvaluator(command=str(fake), startup_timeout_s=60, log_file=log)
    kw = dict(data_file=assets.capitalization_file(), input_key="input", output_key="output", device="cpu", limit=2)
    for cell in ("a", "b"):
        with pytest.raises(CruijffError) as e:
            evaluator.evaluate(tiny_model_dir, [TaskSpec("exact_match")], tmp_path / cell, **kw)
        assert str(e.value).startswith("the vLLM server exited with code 2 while starting: vllm: error: "
                                       f"unrecognized arguments: --bogus (its output: {log})"), str(e.value)
    assert log.read_text().count("cruijff: starting vLLM:") == 1
    evaluator.close()


def test_a_failed_eval_job_says_its_own_reason():
    """submitit's error ends with the job's log path; the reason is the job's own line."""
    from cruijff.sweep.evals import job_failure

    text = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\nRuntimeError: eval failed: rank4: CruijffError: the vLLM server exited '
            "with code 2 while starting: vllm: error: unrecognized arguments: --bogus\n\n"
            "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /tmp/x/.submitit/1/1_0_log.err\n")
    assert job_failure(RuntimeError(text)) == ("eval failed: rank4: CruijffError: the vLLM server exited with code 2 "
                                               "while starting: vllm: error: unrecognized arguments: --bogus")
