"""A user-defined inspect task on the embedded capitalization data whose samples carry metadata:
the word's initial letter, which a config can name as the samples' cluster field
(``{name: tests/tasks/capitalize.py@capitalize, cluster: initial}``)."""

import json

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate

from cruijff.assets import capitalization_file


@task
def capitalize(n: int = 20, split: str = "test"):
    rows = json.loads(capitalization_file().read_text())[split][:n]
    word = [r["input"].split(": ", 1)[1] for r in rows]
    return Task(
        dataset=MemoryDataset([Sample(id=i + 1, input=r["input"], target=r["output"], metadata={"initial": w[0]})
                               for i, (r, w) in enumerate(zip(rows, word))]),
        solver=generate(),
        scorer=match(location="exact", ignore_case=False),
    )
