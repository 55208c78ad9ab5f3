"""An eval cell is identified by the content of everything that decides its score — the checkpoint,
each task's code, arguments and data, the generation and prompt settings — never by a name or a
path: a changed input makes the cell stale (evaluated again, its old files kept aside, never
reported), runs on other data get a base control of their own, and a moved sweep dir reports the same.

Real torchtune, real inspect-ai, the tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import launch

TASKS = Path(__file__).parent / "tasks"


def _keys(run_dir: Path, **changes) -> dict[str, str]:
    """label -> key of a run's cells, under its saved eval section with ``changes`` applied."""
    from omegaconf import OmegaConf

    from cruijff.config import eval_config, resolve_paths, task_specs
    from cruijff.evaluate import cells

    evals = OmegaConf.to_container(eval_config(run_dir).eval, resolve=True)
    evals.update(changes)
    cfg = eval_config(run_dir, evals)
    model_dir, data_file = resolve_paths(cfg, build=False)
    return {c.label: c.key for c in cells(cfg, run_dir, model_dir, data_file, task_specs(cfg.eval.tasks))}


def test_a_cells_key_follows_everything_that_decides_its_score_and_nothing_else(demo, tmp_path):
    _, run_dir, _ = demo
    here = _keys(run_dir)
    assert set(here) == {"base", "epoch_0", "epoch_1"} and len(set(here.values())) == 3
    assert _keys(run_dir) == here  # the same inputs, the same keys
    changed = {
        "max_tokens": _keys(run_dir, max_tokens=12),
        "limit": _keys(run_dir, limit=7),
        "task args": _keys(run_dir, tasks=[{"name": "exact_match", "args": {"split": "validation"}}]),
        "template": _keys(run_dir, chat_template="chatml"),
    }
    for what, keys in changed.items():
        for label in here:
            assert keys[label] != here[label], (what, label)
    # batch size changes how prompts are grouped, not what is asked: the same cells
    assert _keys(run_dir, batch_size=4) == here

    # a task of a file: by the file's content and function, not by its path
    first = tmp_path / "first.py"
    shutil.copy(TASKS / "letters.py", first)
    task = [{"name": f"{first}@first_letter", "args": {"n": 3}}]
    keyed = _keys(run_dir, tasks=task)
    moved = tmp_path / "elsewhere" / "letters.py"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    assert _keys(run_dir, tasks=[{"name": f"{moved}@first_letter", "args": {"n": 3}}]) == keyed
    assert _keys(run_dir, tasks=[{"name": f"{first}@first_letter", "args": {"n": 4}}])["epoch_0"] != keyed["epoch_0"]
    first.write_text(first.read_text().replace('"apple"', '"apricot"'))  # the same function, other samples
    assert _keys(run_dir, tasks=task)["epoch_0"] != keyed["epoch_0"]
    # a task that reads a data file of its own (as cruijff init's starter task does): by that content too
    data = tmp_path / "words.json"
    data.write_text(json.dumps(["apple", "berry"]))
    reader = tmp_path / "reader.py"
    reader.write_text(
        "import json\nfrom pathlib import Path\nfrom inspect_ai import Task, task\n"
        "from inspect_ai.dataset import MemoryDataset, Sample\nfrom inspect_ai.scorer import match\n"
        "from inspect_ai.solver import generate\n\n\n@task\ndef words():\n"
        "    rows = json.loads((Path(__file__).parent / 'words.json').read_text())\n"
        "    return Task(dataset=MemoryDataset([Sample(input=f'Repeat: {w}', target=w) for w in rows]),\n"
        "                solver=generate(), scorer=match())\n")
    before = _keys(run_dir, tasks=[{"name": f"{reader}@words"}])
    data.write_text(json.dumps(["apple", "cherry"]))
    assert _keys(run_dir, tasks=[{"name": f"{reader}@words"}])["epoch_0"] != before["epoch_0"]
    other = tmp_path / "other.py"  # another file with a function of the same name
    other.write_text((TASKS / "letters.py").read_text().replace("match(location=\"begin\")", "match(location=\"end\")"))
    assert _keys(run_dir, tasks=[{"name": f"{other}@first_letter", "args": {"n": 3}}])["epoch_0"] != keyed["epoch_0"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_model_dir):
    """A finished single run of the smoke preset (one epoch, 10 eval samples)."""
    work = tmp_path_factory.mktemp("smoke run")  # a working dir with a space in its path
    proc = launch("training=smoke", "experiment.name=keyed", cwd=work, check=True)
    return work, work / "outputs" / "keyed" / "training-smoke", proc


def _status(sweep_dir: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "cruijff", "status", str(sweep_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_moved_sweep_dir_reports_and_shows_status_as_before(smoke_run, tmp_path):
    work, run_dir, _ = smoke_run
    sweep_dir = run_dir.parent
    cell = json.loads((run_dir / "eval" / "epoch_0" / "results.json").read_text())
    assert not Path(cell["tasks"]["exact_match"]["log"]).is_absolute()  # logs by name, in the cell's dir
    here = subprocess.run([sys.executable, "-m", "cruijff", "report", str(sweep_dir)], capture_output=True, text=True)
    assert here.returncode == 0, here.stderr
    moved = tmp_path / "project space" / "keyed"
    shutil.copytree(sweep_dir, moved, copy_function=shutil.copy)  # new mtimes, as cp -r gives
    there = subprocess.run([sys.executable, "-m", "cruijff", "report", str(moved)], capture_output=True, text=True)
    assert there.returncode == 0, there.stderr
    a, b = pd.read_csv(sweep_dir / "summary.csv"), pd.read_csv(moved / "summary.csv")
    assert a["n"].notna().all() and a[a["run"] != "base"]["gain"].notna().all()
    pd.testing.assert_frame_equal(a, b)
    status = _status(moved)
    assert "pending" not in status and "stale" not in status and "1/1" in status


def test_a_changed_eval_setting_makes_the_cells_stale_then_they_are_evaluated_again(smoke_run):
    from cruijff.records import layout
    from cruijff.sweep import eval_todo

    work, run_dir, _ = smoke_run
    sweep_dir = run_dir.parent
    cell_dir = run_dir / "eval" / "epoch_0"
    old = json.loads((cell_dir / "results.json").read_text())
    # what a launch with eval.max_tokens=12 checks first (it records the keys the cells must have)
    from omegaconf import OmegaConf

    from cruijff.config import eval_config

    evals = OmegaConf.to_container(eval_config(run_dir).eval, resolve=True)
    todo = eval_todo(sweep_dir, [run_dir.name], {**evals, "max_tokens": 12})
    assert todo and todo[0][0] == run_dir.name
    row = next(ln for ln in _status(sweep_dir).splitlines() if run_dir.name in ln)
    assert "0/1 (1 stale)" in row, row
    # the report never mixes the stale score in
    subprocess.run([sys.executable, "-m", "cruijff", "report", str(sweep_dir)], check=True, capture_output=True)
    assert "epoch_0" not in (sweep_dir / "summary.csv").read_text()

    proc = launch("training=smoke", "experiment.name=keyed", "eval.max_tokens=12", cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = json.loads((cell_dir / "results.json").read_text())
    assert new["key"] != old["key"] and new["key_parts"]["settings"]["max_tokens"] == 12
    [kept] = (run_dir / "eval" / ".stale").glob("epoch_0-*")  # the old files, kept aside
    assert json.loads((kept / "results.json").read_text())["key"] == old["key"]
    assert list(kept.glob("*.eval"))
    log = layout.action_log(sweep_dir).read_text()
    assert "ACTION: Stale eval" in log and "settings.max_tokens" in log
    assert "stale" not in _status(sweep_dir).split("base (")[0]
    # the experiment's summary (written by the report above) was brought up to date by the launch
    assert "epoch_0" in (sweep_dir / "summary.csv").read_text()


def test_a_failed_eval_cell_fails_the_command_and_says_which(smoke_run):
    work, _, _ = smoke_run
    proc = launch("training=smoke", "experiment.name=keyed", f"eval.tasks=[{{name: '{TASKS / 'broken.py'}@boom'}}]",
                  cwd=work)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "epoch_0: eval failed: boom:" in proc.stderr and "this scorer always fails" in proc.stderr
    # the experiment's summary names the cells without a score
    sweep_dir = work / "outputs" / "keyed"
    subprocess.run([sys.executable, "-m", "cruijff", "report", str(sweep_dir)], check=True, capture_output=True)
    md = (sweep_dir / "summary.md").read_text()
    assert "## Eval cells without a score" in md and "training-smoke/epoch_0`: boom:" in md, md


def _dataset(path: Path, answer) -> Path:
    from cruijff import assets

    data = json.loads(assets.capitalization_file().read_text())
    out = {split: [{"input": r["input"], "output": answer(r)} for r in rows] for split, rows in data.items()}
    path.write_text(json.dumps(out))
    return path


def test_runs_on_other_data_get_their_own_base_control_and_are_paired_with_it(tmp_path, tiny_model_dir):
    """Runs of one experiment on two datasets whose samples share ids (as a grid over
    ``dataset.path`` makes them): each dataset's runs are compared with the base model on *their*
    data (the base echoes words: ~0 on capitalizing, high on repeating)."""
    cap = _dataset(tmp_path / "cap.json", lambda r: r["output"])
    echo = _dataset(tmp_path / "echo.json", lambda r: r["input"].split(": ", 1)[1])
    for data in (cap, echo):
        launch("training=smoke", "experiment.name=data", "dataset=json", f"dataset.path={data}", cwd=tmp_path,
               check=True)
    sweep_dir = tmp_path / "outputs" / "data"
    report = subprocess.run([sys.executable, "-m", "cruijff", "report", str(sweep_dir)], capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    bases = sorted((sweep_dir / "base").glob("tiny_llama-*"))
    assert len(bases) == 2
    df = pd.read_csv(sweep_dir / "summary.csv")
    base_scores = df[df["run"] == "base"].set_index("base")["score"]
    assert sorted(base_scores.round(1)) == [0.0, 1.0] or (base_scores.min() < 0.2 and base_scores.max() > 0.7), base_scores
    runs = df[df["run"] != "base"]
    assert set(runs["base"]) == set(base_scores.index)  # each run with its own data's control
    for r in runs.itertuples():  # the paired gain is over the control that saw the same samples
        assert abs(r.gain - (r.score - base_scores[r.base])) < 1e-9, r
    # two cells that scored other samples are never paired
    names = sorted(runs["run"])
    proc = subprocess.run([sys.executable, "-m", "cruijff", "compare", str(sweep_dir), f"{names[0]}/epoch_0",
                           f"{names[1]}/epoch_0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot be paired" in proc.stderr, proc.stderr


def test_an_eval_killed_before_its_results_counts_as_missing_and_its_files_are_kept_aside(tmp_path):
    """kill -9 during an eval leaves inspect's logs without a results.json (written last, atomically):
    the cell is not complete, and before it is evaluated again its files go to .stale/."""
    from cruijff.evaluate.cells import Cell
    from cruijff.evaluate.stage import set_aside
    from cruijff.records import ActionLog, CellResults, CellStanding, TaskResult, cell_standing

    cell_dir = tmp_path / "run" / "eval" / "epoch_0"
    cell_dir.mkdir(parents=True)
    (cell_dir / "partial.eval").write_bytes(b"cut short")
    assert cell_standing(cell_dir, "k1") is CellStanding.MISSING
    act = ActionLog(tmp_path / "run-experiment.log")
    set_aside(Cell("epoch_0", tmp_path, cell_dir, key="k1"), "run", act)
    assert not cell_dir.exists()
    [kept] = (tmp_path / "run" / "eval" / ".stale").iterdir()
    assert (kept / "partial.eval").read_bytes() == b"cut short"
    # a complete cell of another key is stale, and counts under its own key only
    cell_dir.mkdir()
    (cell_dir / "a.eval").write_bytes(b"log")
    CellResults(tasks={"t": TaskResult("success", "a.eval", "t", "accuracy", 1.0, 1)}, key="k0").save(cell_dir)
    assert cell_standing(cell_dir, "k1") is CellStanding.STALE
    assert cell_standing(cell_dir, "k0") is CellStanding.COMPLETE
    (cell_dir / "a.eval").unlink()
    assert cell_standing(cell_dir, "k0") is CellStanding.FAILED
