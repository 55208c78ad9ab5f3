"""``python -m cruijff status <sweep dir>``: what ran, what is running, what failed — from files only.

Safe to run while a sweep runs: it reads ``sweep.json``, each ``run.json`` and each eval cell's
``results.json`` (all written atomically) and asks who holds the sweep lock without taking it.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import OmegaConf

from .config import TaskSpec, task_specs
from .errors import CruijffError
from .evaluate import cell_complete
from .records import CellResults, RunState, SweepPlan, layout, lock_holder, sweep_runs
from .ui import console


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _cells(log_dirs: list[Path], specs: list[TaskSpec] | None) -> tuple[int, int]:
    """Complete eval cells among these: every task of the sweep's list (when it has one) has a result
    and its log, else every task recorded there succeeded. The sample limit and prompt layout the
    next launch asks for are not known here: a cell counted here may still be redone by it."""
    done = 0
    for d in log_dirs:
        if specs:
            done += cell_complete(d, specs)
        else:
            cell = CellResults.of(d)
            done += bool(cell and cell.tasks) and all(t.status == "success" for t in cell.tasks.values())
    return done, len(log_dirs)


def rows(sweep_dir: Path) -> list[dict]:
    """One row per run of the plan (or per run dir found), plus the base-model controls."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None and not layout.run_dirs(sweep_dir):
        raise CruijffError(f"{sweep_dir}: not a sweep dir (no sweep.json, no runs)")
    jobs = plan.jobs if plan else {}
    specs = task_specs((plan.eval if plan else {}).get("tasks")) or None
    out = []
    now = time.time()
    for r in sweep_runs(sweep_dir):
        run_dir = sweep_dir / r.name
        st = RunState.of(run_dir)
        saved = layout.saved_config(run_dir)
        epochs = OmegaConf.load(saved).training.epochs if saved.exists() else None
        status = st.status.value if st else "pending"
        duration = st.duration_s if st else None
        if st and status == "running" and st.started:
            duration = now - st.started
        ckpts = [c.name for c in layout.checkpoints(run_dir)]
        done, total = _cells([layout.eval_dir(run_dir, c) for c in ckpts], specs)
        out.append({
            "run": r.name, "state": status, "epochs": f"{len(ckpts)}/{epochs if epochs is not None else '?'}",
            "attempts": st.attempts if st else 0, "job": jobs.get(r.name, ""), "duration": _duration(duration),
            "evals": f"{done}/{total}" if total else "", "error": ((st.error if st else None) or "")[:80],
        })
    for base in layout.base_dirs(sweep_dir):
        done, total = _cells([base], specs)
        out.append({"run": f"base ({base.name})", "state": "evaluated" if done else "pending",
                    "epochs": "", "attempts": "", "job": "", "duration": "", "evals": f"{done}/{total}",
                    "error": ""})
    return out


def show(sweep_dir: Path) -> None:
    from rich.table import Table

    table_rows = rows(sweep_dir)
    holder = lock_holder(sweep_dir)
    runs = [r for r in table_rows if not r["run"].startswith("base (")]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    title = f"{sweep_dir.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    title += f" — launch running ({holder})" if holder else " — no launch running"
    colors = {"finished": "green", "evaluated": "green", "failed": "red", "running": "yellow"}
    table = Table(title=title)
    for c in ("run", "state", "epochs", "attempts", "job", "duration", "evals", "error"):
        table.add_column(c, justify="right" if c in ("epochs", "attempts", "evals") else "left")
    for r in table_rows:
        color = colors.get(r["state"])
        state = f"[{color}]{r['state']}[/{color}]" if color else r["state"]
        table.add_row(r["run"], state, r["epochs"], str(r["attempts"]), r["job"], r["duration"],
                      r["evals"], r["error"])
    console().print(table)
