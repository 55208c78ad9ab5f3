"""Evaluating one run, 2 epochs x 3 tasks: ours vs one `inspect eval` process per (task, epoch).

    python bench/eval.py [--batch-size 32]

Fine-tunes the tiny model for 2 epochs (not timed), saving merged weights per epoch
(``training.checkpoint=merged``) so that ``inspect eval --model hf/<epoch dir>`` can load them, then
times
- ours: `python -m cruijff eval`-style evaluation of both epochs (each checkpoint loaded once for
  all 3 tasks, one process), and
- the anchor, measured in the same run: `inspect eval bench/tasks.py@<task> --model hf/<epoch dir>`
  once per cell, 6 processes, as users script it today.
Both sides use the same generation settings (greedy, max 16 tokens, --batch-size prompts per
batch, which is inspect's max_connections for the hf provider). Goal: ours >= 3x faster.

Part two (``--part loads``), on a model big enough that loading counts: a random-init Llama of
~100M parameters built here in safetensors (fp32, 0.4 GB; the tiny model's tokenizer), a sweep of
R=2 runs x E=3 epochs (2 steps each, not timed), its eval stage (base control + 6 checkpoints x
T=2 tasks, one process) timed two ways:
- the anchor: the sweep trained with ``training.checkpoint=merged``, one full load per checkpoint;
- ours: the same sweep with adapter checkpoints (the default), one base load for the eval job and
  each adapter applied in memory.
Prints the weight files loaded (the model is one file, so one per load) and their bytes, as the
eval stage records them in each cell's ``results.json`` (``loaded``: what evaluating it read), the
wall time of each eval stage and the ratios.
Goal: >= 5x fewer bytes read and >= 2x faster.

Part three (``--part backends --backend hf,vllm``): the same model, R=2 runs x E=3 epochs (adapters),
T=2 tasks x 200 samples each, its eval stage run once per backend in the same run: ``hf`` (one load
in the job, adapters applied in memory) and ``vllm`` (one vLLM server for the base and all six
adapters; the program from ``--vllm`` or $CRUIJFF_VLLM, e.g. ``scripts/vllm-cpu-env``'s). Prints
server starts, model loads, bytes read, the eval stage's wall time and the ratio. On a 2-core CPU
vLLM computes on one core and its start-up dominates: the ratio there says little about a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "INSPECT_DISPLAY": "none"}
TASKS = ["capitalize", "capitalize_nocase", "capitalize_validation"]


def run(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--part", choices=["processes", "loads", "both", "backends"], default="both")
    parser.add_argument("--backend", default="hf,vllm", help="backends to compare (--part backends)")
    parser.add_argument("--vllm", default=os.environ.get("CRUIJFF_VLLM", "vllm"), help="the vllm program")
    args = parser.parse_args()
    if args.part == "backends":
        return backends(args.batch_size, args.backend.split(","), args.vllm)
    if args.part in ("processes", "both"):
        processes(args.batch_size)
    if args.part in ("loads", "both"):
        loads(args.batch_size)


def processes(bs: int) -> None:
    from cruijff import assets

    data = assets.capitalization_file()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run([sys.executable, str(ROOT / "launch.py"), "eval=none", "training.checkpoint=merged",
             "experiment.name=bench"], work)
        (run_dir,) = [p.parent for p in (work / "outputs" / "bench").glob("*/run.json")]
        tasks = ", ".join(f"{{name: '{ROOT}/bench/tasks.py@{t}', args: {{data_file: '{data}'}}}}" for t in TASKS)
        code = ("import sys; from pathlib import Path; from omegaconf import OmegaConf; "
                "from cruijff.evaluate import evaluate_run_dir as evaluate_saved; "
                f"ev = OmegaConf.create(\"{{enabled: true, tasks: [{tasks}], epochs: all, base_model: false, "
                f"max_tokens: 16, batch_size: {bs}, limit: null}}\"); "
                f"evaluate_saved(Path('{run_dir}'), ev)")
        ours = run([sys.executable, "-c", code], work)
        anchor = 0.0
        for epoch in ("epoch_0", "epoch_1"):
            for t in TASKS:
                anchor += run(["inspect", "eval", f"{ROOT}/bench/tasks.py@{t}", "--model", f"hf/{run_dir / epoch}",
                               "-T", f"data_file={data}", "-M", "device=cpu", "-M", "do_sample=false",
                               "--max-tokens", "16", "--max-connections", str(bs),
                               "--log-dir", str(work / "anchor-logs"), "--display", "none"], work)
    print(f"batch size {bs}")
    print(f"eval 2 epochs x 3 tasks, ours (one process, one load per checkpoint): {ours:6.1f} s")
    print(f"anchor: one `inspect eval` process per (task, epoch), 6 processes:   {anchor:6.1f} s")
    print(f"ratio anchor / ours: {anchor / ours:.1f}x faster   (goal >= 3x)")


# ~100M parameters: 8 layers of width 1024 (the tiny model's 354-token vocabulary and tokenizer)
BIG = dict(embed_dim=1024, num_layers=8, num_heads=16, num_kv_heads=16, intermediate_dim=2816)

# Run in the timed process: the time spent getting the model (a load, or the held one with its
# base weights restored) and applying adapters, one "<TAG> <seconds>" line each, appended to the file
# $BENCH_TIMES (the eval stage sends the job's own output to the runs' eval logs).
TIMERS = """
import os, time
from cruijff.evaluate import backend, adapter
def _timed(cls, name, tag):
    real = getattr(cls, name)
    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            with open(os.environ["BENCH_TIMES"], "a") as f:
                f.write(f"{tag} {time.perf_counter() - t0}\\n")
    setattr(cls, name, timed)
_timed(backend.Evaluator, "model", "MODEL")
_timed(adapter.AdapterSwap, "apply", "APPLY")
"""


def read_by_cells(sweep_dir: Path) -> dict:
    """What the eval stage recorded reading, over the sweep's cells: weight files, adapter files,
    bytes, servers started."""
    import json

    from cruijff.records import layout

    files = adapters = size = servers = cells = 0
    for f in layout.cell_files(sweep_dir):
        loaded = json.loads(Path(f).read_text()).get("loaded") or {}
        cells += 1
        files += len(loaded.get("weights", []))
        adapters += len(loaded.get("adapters", []))
        size += sum(b for _, b in loaded.get("weights", []) + loaded.get("adapters", []))
        servers += bool(loaded.get("server"))
    return dict(cells=cells, files=files, adapters=adapters, bytes=size, servers=servers)


def evaluate_sweep(sweep_dir: Path, work: Path, eval_cfg: dict, what: str) -> tuple[float, str]:
    """Time the eval stage of a sweep (every run, in this order, one process); its timer lines."""
    from cruijff.records import layout

    runs = layout.run_dirs(sweep_dir)
    code = TIMERS + (
        "from pathlib import Path\n"
        "from cruijff.records import ActionLog, layout\n"
        "from cruijff.sweep import eval_todo, evaluate_in_turn\n"
        f"sweep = Path({str(sweep_dir)!r})\n"
        f"todo = eval_todo(sweep, {runs!r}, {eval_cfg!r})\n"
        f"failed = evaluate_in_turn(sweep, todo, {eval_cfg!r}, ActionLog(layout.action_log(sweep)))\n"
        "assert not failed, failed\n")
    times = sweep_dir.parent / f".{sweep_dir.name}.times"
    times.write_text("")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env={**ENV, "BENCH_TIMES": str(times)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"eval of {what} failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-2000:]}")
    return wall, times.read_text()


def build_big_model(dest: Path) -> int:
    """A random-init Llama of ~100M parameters in Hugging Face format; its parameter count."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cruijff import assets

    tiny = assets.tiny_model_dir()
    dest.mkdir(parents=True)
    for f in tiny.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, dest / f.name)
    base = LlamaConfig.from_pretrained(tiny)
    config = LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=BIG["embed_dim"], intermediate_size=BIG["intermediate_dim"],
        num_hidden_layers=BIG["num_layers"], num_attention_heads=BIG["num_heads"],
        num_key_value_heads=BIG["num_kv_heads"], max_position_embeddings=base.max_position_embeddings,
        rms_norm_eps=base.rms_norm_eps, tie_word_embeddings=False, bos_token_id=base.bos_token_id,
        eos_token_id=base.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.do_sample = False
    model.save_pretrained(str(dest), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def loads(bs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "big_llama"
        n = build_big_model(model_dir)
        arch = [f"model.args.{k}={v}" for k, v in BIG.items()]
        measured = {}
        for mode in ("merged", "adapter"):
            name = f"loads_{mode}"
            run([sys.executable, str(ROOT / "launch.py"), "-m", f"experiment.name={name}",
                 f"model.path={model_dir}", *arch, "peft.lora_rank=8", "optimizer.lr=1e-4,1e-3", "training.epochs=3",
                 "training.max_steps_per_epoch=2", "training.batch_size=4", f"training.checkpoint={mode}",
                 "eval=none"], work)
            sweep_dir = work / "outputs" / name
            eval_cfg = dict(enabled=True, epochs="all", base_model=True, max_tokens=8, batch_size=bs, limit=20,
                            tasks=[dict(name="exact_match", args={}),
                                   dict(name="exact_match", label="validation", args=dict(split="validation"))])
            wall, out = evaluate_sweep(sweep_dir, work, eval_cfg, f"the {mode} sweep")
            seconds = {tag: sum(float(ln.split()[1]) for ln in out.splitlines() if ln.startswith(tag + " "))
                       for tag in ("MODEL", "APPLY")}
            measured[mode] = dict(wall=wall, **read_by_cells(sweep_dir), **seconds)
    gb = 1e9
    print(f"\nrandom-init Llama, {n / 1e6:.0f}M parameters (fp32); R=2 runs x E=3 epochs x T=2 tasks, "
          f"limit 20, max 8 tokens")
    for mode, label in (("merged", "anchor (merged checkpoints, a full load each)"),
                        ("adapter", "ours (adapters, one base load, applied in memory)")):
        m = measured[mode]
        print(f"{label:52s} {m['cells']} cells, {m['files']} weight files opened, {m['adapters']} adapters read, "
              f"{m['bytes'] / gb:5.2f} GB read, eval stage {m['wall']:6.1f} s "
              f"(getting the model {m['MODEL']:.1f} s, applying adapters {m['APPLY']:.1f} s)")
    a, o = measured["merged"], measured["adapter"]
    if not a["bytes"] or not o["bytes"]:  # a record of nothing is no measurement
        sys.exit(f"no weights recorded as read (anchor {a['bytes']} B, ours {o['bytes']} B): the cells' "
                 "results.json have no 'loaded' record")
    print(f"ratio bytes read, anchor / ours: {a['bytes'] / o['bytes']:.1f}x fewer   (goal >= 5x)")
    print(f"ratio eval stage wall, anchor / ours: {a['wall'] / o['wall']:.1f}x faster   (goal >= 2x)")


def backends(bs: int, names: list[str], vllm: str) -> None:
    """The eval stage of one sweep (R=2 x E=3 adapters + the base, T=2 tasks x 200 samples) per backend."""
    import json
    import shutil

    from cruijff import assets

    cap = json.loads(assets.capitalization_file().read_text())
    data = {"train": cap["train"], "validation": cap["validation"] + cap["train"][:100],
            "test": cap["test"] + cap["train"][100:200]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = work / "big_llama"
        n = build_big_model(model_dir)
        (work / "data.json").write_text(json.dumps(data))
        arch = [f"model.args.{k}={v}" for k, v in BIG.items()]
        run([sys.executable, str(ROOT / "launch.py"), "-m", "experiment.name=backends", f"model.path={model_dir}",
             *arch, "dataset=file", f"dataset.path={work / 'data.json'}", "peft.lora_rank=8", "optimizer.lr=1e-4,1e-3",
             "training.epochs=3", "training.max_steps_per_epoch=2", "training.batch_size=4", "eval=none"], work)
        measured = {}
        for backend in names:
            sweep_dir = work / "outputs" / f"backends_{backend}"
            shutil.copytree(work / "outputs" / "backends", sweep_dir)
            eval_cfg = dict(enabled=True, epochs="all", base_model=True, max_tokens=8, batch_size=bs, limit=None,
                            backend=backend, vllm=dict(command=vllm, startup_timeout_s=1800, max_model_len=None, args=[]),
                            tasks=[dict(name="exact_match", args={}),
                                   dict(name="exact_match", label="validation", args=dict(split="validation"))])
            wall, _ = evaluate_sweep(sweep_dir, work, eval_cfg, f"the sweep with eval.backend={backend}")
            measured[backend] = dict(wall=wall, **read_by_cells(sweep_dir))
    print(f"\nrandom-init Llama, {n / 1e6:.0f}M parameters (fp32); R=2 runs x E=3 epochs x T=2 tasks x 200 samples, "
          f"max 8 tokens, {bs} prompts at once; {os.cpu_count()} CPUs, no GPU")
    for backend, m in measured.items():
        print(f"eval.backend={backend:5s} {m['cells']} cells, {m['servers']} server starts, "
              f"{m['files'] if backend == 'hf' else 0} model loads in the job, {m['bytes'] / 1e9:5.2f} GB read, "
              f"eval stage {m['wall']:6.1f} s")
    if len(measured) == 2:
        (a, ma), (b, mb) = measured.items()
        print(f"ratio eval stage wall, {a} / {b}: {ma['wall'] / mb['wall']:.2f}x   (on CPU, vLLM computes on one "
              "core and its start-up dominates: a GPU's ratio differs)")


if __name__ == "__main__":
    main()
