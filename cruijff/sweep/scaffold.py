"""``scaffold=true``: every file the launch would use, rendered to read before anything runs —
each run's ``finetune.yaml``, ``scripts/tune_commands.sh`` and, on SLURM, one sbatch script per job
array exactly as the launch would submit them, and each run's own ``finetune.sbatch`` to read, edit
and submit by hand."""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import DictConfig

from ..cluster import backend
from ..config import device_guess, peft_method, processes, resolve_paths
from ..finetune import config_text, render, tune_command
from ..plan import PlannedRun
from ..records import layout
from .launcher import train_arrays


def scaffold_text(cfg: DictConfig, run_dir: Path) -> tuple[str, str]:
    """The ``finetune.yaml`` a run's job will write, rendered ahead of time for the device it will
    get, and the ``tune run`` command that runs it."""
    path = layout.finetune_config(run_dir.resolve())
    model_dir, data_file = resolve_paths(cfg, build=False)
    conf = render(cfg, path.parent, model_dir, data_file, device=device_guess(cfg))
    nproc, method = processes(cfg), peft_method(cfg)
    return (config_text(conf, path, run_dir.name, nproc, cfg.get("base_recipe"), method),
            tune_command(nproc, path, method))


def finetune_sbatch(cluster: DictConfig, run_dir: Path, resources: dict, command: str) -> str | None:
    """A run's standalone SLURM script: the preset's ``#SBATCH`` flags with the run's resources,
    named for the run, its output in the run's ``logs/``; the preset's setup lines; then the run's
    ``tune run`` command (``command``, as :func:`scaffold_text` gives it). None where no
    scheduler reads scripts (a local cluster)."""
    logs = layout.finetune_log(run_dir).parent
    header = backend(cluster).script_header(run_dir.name, resources)
    if header is None:
        return None
    header += [f"#SBATCH --output={shlex.quote(str(logs / 'sbatch-%j.out'))}",
               f"#SBATCH --error={shlex.quote(str(logs / 'sbatch-%j.err'))}"]
    lines = ["#!/bin/bash", *header,
             f"# {run_dir.name} with torchtune alone: edit it, then sbatch {shlex.quote(str(layout.finetune_sbatch(run_dir)))}",
             "# (the launch itself runs this through cruijff: run.json, requeue and resume, evals)",
             "set -eo pipefail", *[str(line) for line in cluster.setup or []], command]
    return "\n".join(lines) + "\n"


def write_scaffold(config: DictConfig, sweep_dir: Path, todo: list[PlannedRun],
                   rendered: dict[str, tuple[str, str]]) -> list[Path]:
    """Every run's ``finetune.yaml`` in its run dir (on SLURM with its ``finetune.sbatch``), and in
    ``scripts/``: the torchtune commands and, on SLURM, the job-array scripts that the launch will submit."""
    written: list[Path] = []
    for run in todo:
        path = layout.finetune_config(sweep_dir / run.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered[run.name][0])
        written.append(path)
        text = finetune_sbatch(config.cluster, path.parent.resolve(), run.resources, rendered[run.name][1])
        if text is not None:
            layout.finetune_log(path.parent).parent.mkdir(exist_ok=True)  # sbatch writes the job's output there
            script = layout.finetune_sbatch(path.parent)
            script.write_text(text)
            written.append(script)
    scripts = layout.scripts_dir(sweep_dir)
    scripts.mkdir(exist_ok=True)
    lines = ["#!/usr/bin/env bash", "# Each run with torchtune alone (what the jobs run, without cruijff's records).",
             "set -euo pipefail"] + [rendered[run.name][1] for run in todo]
    (scripts / "tune_commands.sh").write_text("\n".join(lines) + "\n")
    written.append(scripts / "tune_commands.sh")
    where = backend(config.cluster)
    if where.queued and todo:
        arrays = train_arrays(config, [r.name for r in todo], {r.name: r.resources for r in todo})
        for old in scripts.glob("train*.sbatch"):  # from an earlier scaffold of this sweep
            old.unlink()
        for k, (executor, members) in enumerate(arrays, 1):
            text = where.array_script(executor, len(members)) or ""
            path = scripts / ("train.sbatch" if len(arrays) == 1 else f"train-{k}.sbatch")
            runs = ", ".join(todo[i].name for i in members[:10]) + (f", ... ({len(members) - 10} more)"
                                                                    if len(members) > 10 else "")
            shebang, rest = text.split("\n", 1)  # sbatch wants the interpreter on the first line
            path.write_text(f"{shebang}\n# A job array the launch submits (one task per run to run), as submitit "
                            f"renders it.\n# Runs: {runs}\n{rest}")
            written.append(path)
    return written
