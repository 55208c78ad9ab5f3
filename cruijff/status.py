"""``python -m cruijff status <sweep dir>``: what ran, what is running, what failed — from files only.

Safe to run while a sweep runs: it reads ``sweep.json``, each ``run.json`` and each eval cell's
``results.json`` (all written atomically) and never takes the sweep lock.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import CruijffError
from .record import read_json


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _cells(log_dirs: list[Path], specs: list | None) -> tuple[int, int]:
    """Complete eval cells among these: every task of the sweep's list (when it has one) has a result
    and its log, else every task recorded there succeeded. The sample limit and prompt layout the
    next launch asks for are not known here: a cell counted here may still be redone by it."""
    from .evaluate import cell_complete

    done = 0
    for d in log_dirs:
        if specs:
            done += cell_complete(d, specs)
        else:
            tasks = read_json(d / "results.json").get("tasks", {})
            done += bool(tasks) and all(t.get("status") == "success" for t in tasks.values())
    return done, len(log_dirs)


def rows(sweep_dir: Path) -> list[dict]:
    """One row per run of the plan (or per run dir found), plus the base-model controls."""
    from .finetune import checkpoints

    plan = read_json(sweep_dir / "sweep.json")
    if not plan and not any(sweep_dir.glob("*/run.json")):
        raise CruijffError(f"{sweep_dir}: not a sweep dir (no sweep.json, no runs)")
    names = [r["name"] for r in plan.get("runs", [])] or sorted(p.parent.name for p in sweep_dir.glob("*/run.json"))
    jobs = plan.get("jobs", {})
    from .evaluate import task_specs

    specs = task_specs(plan.get("eval", {}).get("tasks")) or None
    out = []
    now = time.time()
    for name in names:
        run_dir = sweep_dir / name
        st = read_json(run_dir / "run.json")
        saved = run_dir / ".hydra" / "config.yaml"
        epochs = None
        if saved.exists():
            from omegaconf import OmegaConf

            epochs = OmegaConf.load(saved).training.epochs
        status = st.get("status", "pending")
        duration = st.get("duration_s")
        if status == "running" and st.get("started"):
            duration = now - st["started"]
        ckpts = [c.name for c in checkpoints(run_dir)]
        done, total = _cells([run_dir / "eval" / c for c in ckpts], specs)
        out.append({
            "run": name, "state": status, "epochs": f"{len(ckpts)}/{epochs if epochs is not None else '?'}",
            "attempts": st.get("attempts", 0), "job": jobs.get(name, ""), "duration": _duration(duration),
            "evals": f"{done}/{total}" if total else "", "error": (st.get("error") or "")[:80],
        })
    for base in sorted(p for p in (sweep_dir / "base").glob("*") if p.is_dir()):
        done, total = _cells([base], specs)
        out.append({"run": f"base ({base.name})", "state": "evaluated" if done else "pending",
                    "epochs": "", "attempts": "", "job": "", "duration": "", "evals": f"{done}/{total}",
                    "error": ""})
    return out


def show(sweep_dir: Path) -> None:
    from .ui import console
    from rich.table import Table

    from .sweep import lock_holder

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
