"""A user-defined inspect task, referenced as tests/tasks/letters.py@first_letter with task args."""

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.scorer import match
from inspect_ai.solver import generate


@task
def first_letter(n: int = 3):
    words = ["apple", "berry", "cherry", "damson", "elder", "fig", "grape"][:n]
    return Task(
        dataset=MemoryDataset([Sample(input=f"Repeat: {w}", target=w) for w in words]),
        solver=generate(),
        scorer=match(location="begin"),
    )
