"""Three inspect tasks on the tiny model's data, for bench/eval.py (usable with `inspect eval` too)."""

from inspect_ai import task

from cruijff.evaluate import exact_match_task


@task
def capitalize(data_file: str):
    return exact_match_task(data_file, name="capitalize")


@task
def capitalize_nocase(data_file: str):
    return exact_match_task(data_file, ignore_case=True, name="capitalize_nocase")


@task
def capitalize_validation(data_file: str):
    return exact_match_task(data_file, split="validation", name="capitalize_validation")
