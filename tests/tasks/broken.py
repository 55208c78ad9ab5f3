"""A task whose scorer fails on every sample: its eval cell gets no score."""

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import Score, accuracy, scorer
from inspect_ai.solver import generate


@scorer(metrics=[accuracy()])
def always_fails():
    async def score(state, target) -> Score:
        raise RuntimeError("this scorer always fails")

    return score


@task
def boom():
    return Task(dataset=MemoryDataset([Sample(input="Capitalize: abc", target="Abc")]), solver=generate(),
                scorer=always_fails())
