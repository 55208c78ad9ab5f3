"""``eval.backend=vllm``: one vLLM server per base model serves the base control and every adapter
checkpoint of an eval job; inspect's ``vllm`` provider asks it, and each log's model names its
checkpoint (``vllm/<base dir>:<epoch dir>``).

What the server is started with, so that its scores are the HF backend's (each measured on vLLM-CPU):

- **BOS.** The chat endpoint tokenizes the rendered prompt without special tokens; every request asks
  for them (``add_special_tokens``), as the HF path's tokenizer adds the first BOS that cruijff's
  templates leave to it. Without it, answers differ.
- **One adapter slot more than the adapters** (``--max-loras``): vLLM-CPU gives base requests batched
  with adapter requests the last slot's adapter; a slot left empty keeps the base the base.
- **``--max-lora-rank``** is one of vLLM's choices (1, 8, 16, 32, ...): the smallest that holds the
  largest adapter's rank (rank 4 alone is refused).
- **dtype per device**: fp32 on CPU, bf16 on GPU, as training.

Adapters known when the server starts are registered with it (``--lora-modules``); one met later is
loaded at run time (inspect's provider does it). Full-weight checkpoints (``peft=none``,
``training.checkpoint=merged``) are served as their own model, one server each, after the base's
server has stopped: a GPU never holds two copies of a model.

The server's output goes to the eval log. It must answer its health check within
``eval.vllm.startup_timeout_s``. It runs under a guard (:mod:`.guard`) that stops its whole process
group (vLLM's engine processes with it) when the job ends, whichever way: closed by the job, at the
interpreter's exit, or when the job's process dies (kill -9: the kernel's parent-death signal).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import TaskSpec
from ..config.schema import program_exists
from ..errors import CruijffError
from ..records import CellResults, layout
from .backend import _weights_view, score_cell, weight_files

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # what vLLM's --max-lora-rank accepts
HEALTH_POLL_S = 1.0
STOP_GRACE_S = 40.0  # the guard's own grace (20 s) and then some
GUARD = Path(__file__).with_name("guard.py")


def lora_rank_choice(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that holds an adapter of ``rank``."""
    for choice in LORA_RANKS:
        if choice >= rank:
            return choice
    raise CruijffError(f"LoRA rank {rank}: vLLM serves ranks up to {LORA_RANKS[-1]}; use eval.backend=hf")


def adapter_rank(ckpt: Path) -> int:
    return int(json.loads((ckpt / layout.ADAPTER_CONFIG).read_text())["r"])


def vllm_dtype(device: str) -> str:
    return "bfloat16" if device.startswith("cuda") else "float32"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``vllm serve`` process: a model dir (a base with LoRA adapters, or full weights)."""

    def __init__(self, command: str, model_dir: Path, *, adapters: list[Path], device: str, gpus: int,
                 chat_template: str | None, max_model_len: int | None, timeout_s: float,
                 args: list[str], log_file: Path):
        self.command, self.model_dir, self.device, self.gpus = command, model_dir, device, gpus
        self.adapters = list(dict.fromkeys(adapters))
        self.chat_template, self.max_model_len, self.timeout_s = chat_template, max_model_len, timeout_s
        self.args, self.log_file = list(args), log_file
        self.name = str(model_dir)  # what requests name for the base (inspect's vllm/<name>)
        self.key = secrets.token_hex(16)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="cruijff-vllm-"))
        self._view: Path | None = None
        self._log_start = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        weights = self._view or self.model_dir
        argv = [self.command, "serve", str(weights), "--served-model-name", self.name,
                "--host", "127.0.0.1", "--port", str(self.port), "--api-key", self.key,
                "--dtype", vllm_dtype(self.device), "--seed", "0"]
        if self.max_model_len:
            argv += ["--max-model-len", str(self.max_model_len)]
        if self.device.startswith("cuda") and self.gpus > 1:
            argv += ["--tensor-parallel-size", str(self.gpus)]
        if self.chat_template is not None:
            template = self._tmp / "chat_template.jinja"
            template.write_text(self.chat_template)
            argv += ["--chat-template", str(template)]
        if self.adapters:
            rank = max(adapter_rank(a) for a in self.adapters)
            argv += ["--enable-lora", "--max-loras", str(len(self.adapters) + 1),
                     "--max-cpu-loras", str(len(self.adapters) + 1), "--max-lora-rank", str(lora_rank_choice(rank)),
                     "--lora-modules", *(json.dumps({"name": str(a), "path": str(a), "base_model_name": self.name})
                                         for a in self.adapters)]
        return argv + self.args

    def start(self) -> None:
        """Start the server and wait for its health check; raise (its output's last line) if it
        exits or does not answer in time."""
        self._view = _weights_view(self.model_dir)  # full weights: not the adapter files beside them
        self.port = _free_port()
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if not self.device.startswith("cuda"):
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GB of KV cache: the default (4) is a laptop's RAM
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with open(self.log_file, "a") as log:
            self._log_start = log.tell()  # this start's output begins here (the log may hold earlier ones)
            log.write(f"cruijff: starting vLLM: {' '.join(a if a != self.key else '***' for a in argv)}\n")
            log.flush()
            if not program_exists(self.command):
                raise CruijffError(f"eval.vllm.command={self.command!r}: no such program")
            # through the guard, which stops the server's whole process group however this job ends
            self.process = subprocess.Popen([sys.executable, str(GUARD), str(os.getpid()), *argv], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                            start_new_session=True)
        atexit.register(self.stop)
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise CruijffError(f"the vLLM server exited with code {code} while starting: {self._last_line()} "
                                   f"(its output: {self.log_file})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise CruijffError(f"the vLLM server did not answer within eval.vllm.startup_timeout_s="
                                   f"{self.timeout_s:g} s (its output: {self.log_file})")
            time.sleep(HEALTH_POLL_S)

    def _last_line(self) -> str:
        """The line of this start's output that says why it ended: its last error line, else its last."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no output)"
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]  # after cruijff's "starting" line
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        return (errors or lines or ["(no output)"])[-1][-300:]

    def stop(self) -> None:
        """Stop the server and every process it started (the guard stops its process group); idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        for d in (self._view, self._tmp):
            if d is not None:
                shutil.rmtree(d, ignore_errors=True)
        self._view = None
        _forget(self.name)


def _forget(name: str) -> None:
    """inspect's vllm provider keeps each base model's server address for the process; a server
    started again for the same model (at another port) must not be asked at the old one."""
    with contextlib.suppress(Exception):
        from inspect_ai.model._providers import _vllm_lora

        _vllm_lora._vllm_servers.pop(name, None)


class VLLMEvaluator:
    """The eval job's models on vLLM: one server at a time, kept while the cells it serves come
    (the base, its adapters), started again only for another model (full weights, another base,
    another prompt layout). ``loads``: the servers started so far."""

    def __init__(self, command: str = "vllm", startup_timeout_s: float = 900, max_model_len: int | None = None,
                 args: list[str] | None = None, log_file: Path | None = None):
        self.command, self.timeout_s, self.max_model_len = command, startup_timeout_s, max_model_len
        self.args = list(args or [])
        self.log_file = log_file
        self.server: Server | None = None
        self._key: tuple | None = None
        self.expected: dict[str, list[Path]] = {}
        self.loads = 0
        self._failed: dict[tuple, str] = {}  # why a server could not start, by what it was to serve

    @classmethod
    def of(cls, eval_cfg: Any, log_file: Path | None = None) -> "VLLMEvaluator":
        v = eval_cfg["vllm"]
        return cls(str(v["command"]), float(v["startup_timeout_s"]), v.get("max_model_len"),
                   [str(a) for a in v.get("args") or []], log_file)

    def expect(self, model_dir: Path, adapters: list[Path]) -> None:
        """Adapters of ``model_dir`` this job will evaluate: registered when its server starts."""
        known = self.expected.setdefault(str(model_dir.resolve()), [])
        known.extend(a.resolve() for a in adapters if a.resolve() not in known)

    def _serve(self, model_dir: Path, chat_template: str | None, device: str, gpus: int, log_file: Path) -> Server:
        key = (str(model_dir.resolve()), chat_template, device, gpus)
        if key == self._key and self.server is not None and self.server.process is not None \
                and self.server.process.poll() is None:
            return self.server
        if key in self._failed:  # a server that could not start is not tried again for each run
            raise CruijffError(self._failed[key])
        self.close()
        self.server = Server(self.command, model_dir.resolve(), adapters=self.expected.get(key[0], []),
                             device=device, gpus=gpus, chat_template=chat_template,
                             max_model_len=self.max_model_len, timeout_s=self.timeout_s, args=self.args,
                             log_file=self.log_file or log_file)
        try:
            self.server.start()
        except CruijffError as e:
            self._failed[key] = str(e)
            raise
        self._key = key
        self.loads += 1
        return self.server

    def evaluate(self, model_dir: Path, tasks: list[TaskSpec], log_dir: Path, *, adapter: Path | None = None,
                 device: str, gpus: int = 1, max_tokens: int = 16, batch_size: int = 32, data_file: Path,
                 input_key: str, output_key: str, limit: int | None = None, chat_template: str | None = None,
                 tags: list[str] | None = None, metadata: dict | None = None, display: str | None = None,
                 record: dict | None = None, log_file: Path | None = None) -> CellResults:
        """As :meth:`cruijff.evaluate.backend.Evaluator.evaluate`, on the server of ``model_dir``
        (``adapter``: one of its adapter checkpoints, by its path on the server)."""
        from inspect_ai.model import GenerateConfig, get_model

        log_dir.mkdir(parents=True, exist_ok=True)
        if adapter is not None:
            self.expect(model_dir, [adapter])
        loads = self.loads
        server = self._serve(model_dir, chat_template, device, gpus, log_file or log_dir / "vllm.log")
        started = self.loads > loads
        loaded = {"weights": weight_files(model_dir) if started else [], "server": started,
                  "adapters": [f for a in server.adapters for f in weight_files(a, adapters=True)] if started else
                  [] if adapter is None or adapter.resolve() in server.adapters else weight_files(adapter, adapters=True)}
        name = f"vllm/{server.name}" + (f":{adapter.resolve()}" if adapter is not None else "")
        model = get_model(
            name, base_url=f"{server.url}/v1", api_key=server.key, memoize=False,
            config=GenerateConfig(max_tokens=max_tokens, temperature=0.0, max_connections=batch_size,
                                  extra_body={"add_special_tokens": True}),
        )
        return score_cell(model, tasks, log_dir, cell_model=str(adapter or model_dir), data_file=data_file,
                          input_key=input_key, output_key=output_key, limit=limit, chat_template=chat_template,
                          tags=tags, metadata=metadata, display=display, record={**(record or {}), "loaded": loaded})

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = self._key = None
