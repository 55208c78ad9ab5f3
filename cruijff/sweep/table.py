"""The sweep's status table — runs x state, epochs, mean train loss, evals — from files only: what
``python -m cruijff status`` prints, and what the launcher redraws in place while it waits.

Safe to read while a sweep runs: it reads ``sweep.json``, each ``run.json``, each eval cell's
``results.json`` (all written atomically) and the tail of each running run's loss log.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from ..config import selected_epochs
from ..errors import CruijffError
from ..records import (CellStanding, RunState, RunStatus, SweepPlan, cell_standing, expected_cells, layout, liveness,
                       sweep_runs)
from ..ui import console, is_live
from .deaths import after_save, every_epoch_saved


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _cells(expected: dict[str, tuple[Path, str | None]], labels: list[str]) -> tuple[int, int, int]:
    """(complete, stale, total) among a run's cells of these checkpoints: a cell counts when its
    results have the key its run expects now (``eval/cells.json``) and every task scored; one of
    another key is stale (the next launch evaluates it again)."""
    done = stale = 0
    for label in labels:
        log_dir, key = expected.get(label, (None, None))
        if log_dir is None:
            continue
        standing = cell_standing(log_dir, key)
        done += standing is CellStanding.COMPLETE
        stale += standing is CellStanding.STALE
    return done, stale, len(labels)


def _evals(done: int, stale: int, total: int) -> str:
    if not total:
        return ""
    return f"{done}/{total}" + (f" ({stale} stale)" if stale else "")


_TAILS: dict[Path, tuple[int, int, int, float, int]] = {}  # loss log -> (inode, bytes read, epoch, sum, steps)


def _epoch_so_far(path: Path) -> tuple[int, float] | None:
    """(epoch, mean loss of its steps so far) of the last epoch in a loss log; the log is read on
    from where the last look stopped (a live view looks every few seconds)."""
    try:
        st = path.stat()
    except OSError:
        return None
    inode, offset, epoch, total, n = _TAILS.get(path, (st.st_ino, 0, -1, 0.0, 0))
    if inode != st.st_ino or st.st_size < offset:  # rewritten (a resumed run keeps only the epochs it keeps)
        inode, offset, epoch, total, n = st.st_ino, 0, -1, 0.0, 0
    if st.st_size > offset:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read(st.st_size - offset)
        except OSError:
            return None
        end = chunk.rfind(b"\n") + 1  # a line being written is read next time
        for line in chunk[:end].splitlines():
            try:
                row = json.loads(line)
                e, loss = int(row["epoch"]), float(row["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            if e != epoch:
                epoch, total, n = e, 0.0, 0
            total, n = total + loss, n + 1
        offset += end
    _TAILS[path] = (inode, offset, epoch, total, n)
    return (epoch, total / n) if n else None


def _mean_loss(run_dir: Path, st: RunState | None) -> str:
    """The mean train loss of the run's latest epoch: of its last complete epoch once recorded; of
    the epoch it trains (so far, and so labelled) while it runs or where it stopped mid-epoch."""
    recorded = st.epochs[-1] if st and st.epochs else None
    if recorded is not None and st.status is not RunStatus.RUNNING:
        return f"{recorded.mean_loss:.4f}"
    current = _epoch_so_far(layout.loss_file(run_dir))
    if current is None:
        return f"{recorded.mean_loss:.4f}" if recorded else ""
    epoch, mean = current
    if recorded is not None and recorded.epoch >= epoch:
        return f"{recorded.mean_loss:.4f}"
    return f"{mean:.4f} (epoch {epoch} so far)"


def _attempts(st: RunState | None) -> str:
    """How many times the run was started, the checkpoint its last attempt resumed after, and the
    kinds of its retries with other resources (``retried cuda_oom x2``)."""
    if st is None:
        return "0"
    kinds = [r.kind for r in st.retries]
    return (f"{st.attempts}" + (f", resumed after {st.resumed_from}" if st.resumed_from else "")
            + ("; retried " + ", ".join(k + (f" x{kinds.count(k)}" if kinds.count(k) > 1 else "")
                                        for k in dict.fromkeys(kinds)) if kinds else ""))


@lru_cache(maxsize=4096)
def _saved(saved: Path, mtime_ns: int) -> tuple[int | None, dict]:
    """(epochs trained, eval section) of a run's saved config."""
    cfg = OmegaConf.load(saved)
    evals = OmegaConf.to_container(cfg.eval, resolve=True) if "eval" in cfg else {}
    return cfg.training.epochs, evals if isinstance(evals, dict) else {}


def _selected(evals: dict, epochs: int | None) -> list[str] | None:
    """The checkpoints an eval section asks for (``eval.epochs``: ``all`` or a list) of a run that
    trains ``epochs`` epochs; None where that is not known."""
    if not evals:
        return None
    if not evals.get("enabled", True):
        return []
    chosen = evals.get("epochs", "all")
    if chosen != "all" and not isinstance(chosen, list):
        return None
    picked = selected_epochs(chosen, epochs)
    return None if picked is None else [f"epoch_{e}" for e in picked]


def ended_in_queue(sweep_dir: Path, states: dict[str, RunState | None]) -> dict[str, tuple[bool, str, float | None]]:
    """Runs whose record says running while SLURM says their job ended (cancelled, timed out,
    failed) — a detached sweep's, or one whose launch was killed — by the scheduler (one sacct
    call): whether every epoch was saved before (then the run is finished), what happened in one
    line, and when. Read only: the next launch records them."""
    from ..cluster import ended_jobs

    running = {n: st.job_id for n, st in states.items()
               if st is not None and st.status is RunStatus.RUNNING and st.job_id}
    ended = ended_jobs(list(running.values()))
    out = {}
    for name, job in running.items():
        if job not in ended:
            continue
        state, end = ended[job]
        try:
            at = time.mktime(time.strptime(end, "%Y-%m-%dT%H:%M:%S"))
        except ValueError:
            at = None
        complete, how = every_epoch_saved(sweep_dir / name), f"SLURM job {job} ended {state}"
        out[name] = (complete, after_save(how) if complete else f"{how} while fine-tuning", at)
    return out


def rows(sweep_dir: Path, scheduler: bool = False) -> list[dict]:
    """One row per run of the plan (or per run dir found), plus the base-model controls;
    ``scheduler``: a run recorded running whose SLURM job ended says so (:func:`ended_in_queue`)."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None and not layout.run_dirs(sweep_dir):
        raise CruijffError(f"{sweep_dir}: not a sweep dir (no sweep.json, no runs)")
    jobs = plan.jobs if plan else {}
    out = []
    now = time.time()
    bases: dict[Path, str | None] = {}  # the base controls the runs expect now, with their keys
    states = {r.name: RunState.of(sweep_dir / r.name) for r in sweep_runs(sweep_dir)}
    gone = ended_in_queue(sweep_dir, states) if scheduler else {}
    for name, st in states.items():
        run_dir = sweep_dir / name
        saved = layout.saved_config(run_dir)
        epochs, own_eval = _saved(saved, saved.stat().st_mtime_ns) if saved.exists() else (None, {})
        status = st.status.value if st else "pending"
        duration = st.duration_s if st else None
        error = (st.error or st.note if st else None) or ""
        if st and status == "running" and liveness.gone(st):  # its process ended without a word
            status, error = "died", liveness.death(st)
        elif name in gone:
            complete, error, end = gone[name]
            status = "finished" if complete else "died"
            duration = end - st.started if end and st.started else duration
        elif st and status == "running" and st.started:
            duration = now - st.started
        ckpts = [c.name for c in layout.checkpoints(run_dir)]
        expected = expected_cells(run_dir)
        if "base" in expected:
            bases.setdefault(*expected["base"])
        # over the checkpoints the eval section asks for (the launch's, else the run's own), trained or not
        wanted = _selected((plan.eval if plan else None) or own_eval, epochs)
        if wanted is None:
            wanted = [c for c in ckpts if c in expected] if layout.eval_plan_file(run_dir).exists() else ckpts
        elif st is not None and st.stopped:  # stopped at a rung: the epochs it never trained have no cell to wait for
            wanted = [c for c in wanted if c in ckpts]
        done, stale, total = _cells(expected, wanted)
        out.append({
            "run": name, "state": status, "epochs": f"{len(ckpts)}/{epochs if epochs is not None else '?'}",
            "mean loss": _mean_loss(run_dir, st), "attempts": _attempts(st), "job": jobs.get(name, ""),
            "duration": _duration(duration),
            "evals": _evals(done, stale, total), "error": error[:80],
        })
    for base in sorted(set(layout.base_dirs(sweep_dir)) | set(bases)):
        if base in bases or not bases:
            standing = cell_standing(base, bases.get(base))
            state = {CellStanding.COMPLETE: "evaluated", CellStanding.MISSING: "pending"}.get(standing, str(standing))
            evals = _evals(int(standing is CellStanding.COMPLETE), int(standing is CellStanding.STALE), 1)
        else:  # no run of the sweep is compared with it now
            state, evals = "stale", "unused"
        out.append({"run": f"base ({base.name})", "state": state,
                    "epochs": "", "mean loss": "", "attempts": "", "job": "", "duration": "", "evals": evals,
                    "error": ""})
    return out


ORDER = {"running": 0, "failed": 1, "died": 1, "pending": 2}


def table(sweep_dir: Path, note: str, limit: int | None = None, scheduler: bool = False):
    """The status table: one row per run (state, epochs, mean loss of the latest epoch, attempts, job,
    duration, evals over the checkpoints asked for, error or note) and per base control, titled with the
    counts and ``note`` (who is launching); ``limit``: at most that many rows, the running and failed runs
    first; ``scheduler``: see :func:`rows`."""
    from rich.table import Table

    table_rows = rows(sweep_dir, scheduler)
    runs = [r for r in table_rows if not r["run"].startswith("base (")]
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    title = f"{sweep_dir.name}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" — {note}"
    left = 0
    if limit is not None and len(table_rows) > limit:
        table_rows = sorted(table_rows, key=lambda r: ORDER.get(r["state"], 3))
        left, table_rows = len(table_rows) - limit, table_rows[:limit]
    colors = {"finished": "green", "evaluated": "green", "stopped": "cyan", "failed": "red", "died": "red", "running": "yellow", "stale": "magenta"}
    out = Table(title=title, caption=f"… {left} more" if left else None)
    for c in ("run", "state", "epochs", "mean loss", "attempts", "job", "duration", "evals", "note"):
        out.add_column(c, justify="right" if c in ("epochs", "mean loss", "attempts", "evals") else "left")
    for r in table_rows:
        color = colors.get(r["state"])
        state = f"[{color}]{r['state']}[/{color}]" if color else r["state"]
        out.add_row(r["run"], state, r["epochs"], r["mean loss"], str(r["attempts"]), r["job"], r["duration"],
                    r["evals"], r["error"])
    return out


class SweepView:
    """The sweep's status table, redrawn in place while the launcher waits on its jobs (on a
    terminal; where output is plain, the launcher's own lines say what happens). It goes when the
    wait ends: the sweep prints its final table once, at its end."""

    def __init__(self, sweep_dir: Path, every_s: float = 2.0):
        self.sweep_dir, self.every_s = sweep_dir, every_s
        self._live, self._last = None, 0.0

    def __enter__(self) -> "SweepView":
        if is_live():
            from rich.live import Live

            self._live = Live(self._render(), console=console(), auto_refresh=False, transient=True)
            self._live.start()
        return self

    def _render(self):
        try:
            return table(self.sweep_dir, "launching", limit=max(5, console().size.height - 8))
        except CruijffError as e:  # a record being replaced: keep the last view
            return str(e)

    def refresh(self) -> None:
        if self._live is not None and time.time() - self._last >= self.every_s:
            self._last = time.time()
            self._live.update(self._render(), refresh=True)

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
