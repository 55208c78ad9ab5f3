"""``cruijff init [DIR]``: a starter project of the user's own, beside their data and tasks.

It holds a commented experiment over the embedded tiny model, a small dataset as JSON lines (one
record per line, its split in a field), an inspect task that reads it, a SLURM preset to fill in, a ``.gitignore`` and a
README, and a ``.cruijff`` marker. Run from that dir or any dir below it, ``cruijff`` composes its
``conf/`` over the packaged config groups.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .assets import capitalization_file
from .config import PROJECT_MARKER
from .errors import CruijffError

EXPERIMENT = """\
# @package _global_
# An experiment of this project: its name, base model, data, eval tasks and the grid to sweep.
#   cruijff experiment=example                  # one run, with the values below
#   cruijff -m experiment=example               # the grid: 2 learning rates x 2 ranks = 4 runs, then evals
#   cruijff -m experiment=example dry_run=true  # the plan (steps, GPU-hours, disk); nothing runs
# Options of this project's conf/ (experiment/, model/, dataset/, eval/, cluster/) add to cruijff's own,
# or replace one of the same name. Relative paths are this dir's; outputs go to outputs/<name>/.
defaults:
  - override /model: tiny_llama     # the embedded tiny model; a real one: model=llama3_2_1b_instruct model.path=/scratch/...
  - override /dataset: file          # JSON, JSONL, CSV, Parquet, a save_to_disk dir; dataset=chat for messages

experiment:
  name: example

dataset:
  path: data/example.jsonl          # one record per line: {"input": ..., "output": ..., "split": ...}
  split_column: split               # or split: [0.8, 0.1, 0.1] (seeded fractions of one list)
  fields:                           # the record's fields, under any names
    input: input
    output: output

training:
  epochs: 2

eval:
  tasks:
    - name: tasks/example.py@example   # this project's own inspect task
    - name: exact_match                # cruijff's built-in: the dataset's test split, exact match

hydra:
  sweeper:
    params:
      optimizer.lr: 1e-4,1e-3
      peft.lora_rank: 2,8
"""

TASK = '''\
"""An inspect task of this project: the test records of data/example.jsonl, scored by exact match.

Referenced in an experiment as ``tasks/example.py@example`` (``args: {split: validation}`` for the
validation split). Any inspect ``@task`` works the same way: https://inspect.aisi.org.uk/tasks.html
"""

import json
from pathlib import Path

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate

DATA = Path(__file__).resolve().parent.parent / "data" / "example.jsonl"


@task
def example(split: str = "test"):
    records = [r for r in map(json.loads, DATA.read_text().splitlines()) if r["split"] == split]
    return Task(
        dataset=MemoryDataset([Sample(input=r["input"], target=r["output"]) for r in records]),
        solver=generate(),
        scorer=match(location="exact", ignore_case=False),
    )
'''

SITE = """\
# Your cluster, as a SLURM preset: fill in what your site needs, then
#   cruijff -m experiment=example cluster=site
# Every key of cruijff's slurm preset can be set here (cruijff --cfg job cluster=slurm shows them).
defaults:
  - slurm
  - _self_

name: site
partition: null                # --partition, e.g. gpu
account: null                  # --account, e.g. mylab
constraint: null               # --constraint, e.g. "a100|h100"
cpus_per_gpu: 8
max_parallel: 16               # at most this many array tasks at once
setup: []                      # shell lines before each job, e.g.
                               #   - module load cuda/12.4
                               #   - source $HOME/venvs/cruijff/bin/activate
"""

README = """\
# A cruijff project

    cruijff -m experiment=example              # fine-tune a 2 x 2 grid on the tiny model, evaluate, report
    cruijff -m experiment=example dry_run=true # what it would run and cost, without running it

Configs in `conf/` add to cruijff's own; data in `data/`, inspect tasks in `tasks/`, results in `outputs/`.
"""

MARKER = """\
# A cruijff project: cruijff, run from this dir or any dir below it, composes this conf/ over its own
# config groups, at this dir (its relative paths, its outputs/).
"""

# (train, validation, test) records taken from the embedded capitalization dataset
SIZES = (500, 50, 50)


def starter_files() -> dict[str, str]:
    """The files of a starter project, by path relative to its dir."""
    data = json.loads(capitalization_file().read_text())
    lines = [json.dumps({**r, "split": split}) + "\n"
             for split, n in zip(("train", "validation", "test"), SIZES) for r in data[split][:n]]
    return {
        "conf/experiment/example.yaml": EXPERIMENT,
        "conf/cluster/site.yaml": SITE,
        "data/example.jsonl": "".join(lines),
        "tasks/example.py": TASK,
        ".gitignore": "outputs/\n",
        PROJECT_MARKER: MARKER,
        "README.md": README,
    }


def init_project(target: Path) -> int:
    """Write a starter project into ``target``; refuse, writing nothing, where a file exists."""
    files = starter_files()
    there = [name for name in files if (target / name).exists()]
    if there:
        raise CruijffError(f"{target / there[0]} exists; cruijff init writes only files that are not there yet "
                           f"({len(there)} of its {len(files)} are)")
    for name, text in files.items():
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    where = "" if target.resolve() == Path.cwd().resolve() else f"cd {os.path.relpath(target)} && "
    print(f"cruijff: starter project written to {target}; try: {where}cruijff -m experiment=example")
    return 0
