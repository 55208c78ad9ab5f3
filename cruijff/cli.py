"""``cruijff``: ``python launch.py`` installed (``cruijff -m experiment=...``, from a project dir),
and the verbs of ``python -m cruijff``: ``init`` a project; each stage on its own, on an existing
output dir (``eval|report|status|plan|compare|export <dir>``).

A run dir's own saved config (``<run dir>/.hydra/config.yaml``) drives ``eval`` and ``report``, so
the result is what the launcher would have produced. On a sweep dir (``outputs/<experiment>``),
``eval`` evaluates every finished run, ``report`` writes the sweep's summary and plots, and
``status`` shows the state of every run and eval cell (also while the sweep runs), and ``plan`` what
the sweep's command would run now and what it would cost; ``compare`` tests two checkpoints of a
sweep against each other on the same samples; ``export`` writes one adapter checkpoint merged into
its base as Hugging Face weights.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import eval_config, validate
from .errors import CruijffError
from .evaluate import check_run_tasks, evaluate_run_dir
from .evaluate.export import export_checkpoint
from .records import ActionLog, SweepPlan, acquire_lock, layout, sweep_runs
from .report import print_comparison, refresh, report_run, report_sweep
from .project import init_project
from .status import show
from .sweep import finish


VERBS = ("init", "eval", "report", "status", "plan", "compare", "export")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in VERBS:  # anything else is the launcher's: overrides, -m, --cfg, --help
        from .app import launch

        launch(argv)
        return 0
    return verb(argv)


def verb(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cruijff", description="each stage on its own, on an existing output dir; "
                                     "without a verb, cruijff [overrides] [-m] composes and runs, as python launch.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init", help="write a starter project: an experiment, a dataset, a task, a SLURM preset")
    p.add_argument("dir", type=Path, nargs="?", default=Path("."), help="where (default: here)")
    for name, text in [("eval", "evaluate the base model and every epoch checkpoint (of a run, or of a sweep)"),
                       ("report", "write the results table (of a run) or summary and plots (of a sweep)"),
                       ("status", "state of every run and eval cell of a sweep"),
                       ("plan", "what the sweep's command will run and cost now (its dry run, refined by runs done)")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("dir", type=Path, help="a run dir or a sweep dir (outputs/<experiment>)")
    p = sub.add_parser("compare", help="two checkpoints of a sweep on the same samples: paired difference and test")
    p.add_argument("dir", type=Path, help="a sweep dir (outputs/<experiment>)")
    p.add_argument("a", help="RUN/epoch_N, RUN (its last evaluated epoch), base or base/<model>")
    p.add_argument("b", help="the checkpoint compared with A (B - A)")
    p = sub.add_parser("export", help="one adapter checkpoint merged into its base: Hugging Face weights to share or serve")
    p.add_argument("dir", type=Path, help="a checkpoint: <run dir>/epoch_N")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: <run dir>/epoch_N_merged)")
    p.add_argument("--base", type=Path, default=None, help="the base model dir (default: the one it was trained on)")
    args = parser.parse_args(argv)

    try:
        if args.command == "init":
            return init_project(args.dir)
        target = args.dir.resolve()
        if not target.is_dir():
            raise CruijffError(f"{args.dir}: no such directory")
        if args.command == "status":
            return show(target)
        elif args.command == "compare":
            print_comparison(target, args.a, args.b)
        elif args.command == "plan":
            replan(target)
        elif args.command == "export":
            out = export_checkpoint(target, args.out, args.base)
            print(f"cruijff: merged weights of {target} written to {out}")
        elif layout.is_sweep_dir(target):
            return sweep_command(args.command, target)
        else:
            eval_cfg = launch_eval(target.parent, target.name)  # a run of a sweep: as its launch evaluates
            if args.command == "eval":  # one writer: not while a launch of its experiment runs
                check_run_tasks(target, eval_cfg)  # every task loads, before anything is written
                acquire_lock(target.parent)
            unscored = evaluate_run_dir(target, eval_cfg) if args.command == "eval" else {}
            cfg = eval_config(target, eval_cfg)
            report_run(cfg, target, validate(cfg))
            if refresh(target.parent):  # its experiment's summary, where it has one
                print(f"cruijff: report {layout.summary(target.parent)} (refreshed)")
            for label, why in unscored.items():
                print(f"cruijff: {target.name}: {label}: eval failed: {why}", file=sys.stderr)
            if unscored:
                return 1
    except CruijffError as e:
        print(f"cruijff: error: {e}", file=sys.stderr)
        return 2
    return 0


def launch_eval(sweep_dir: Path, run: str | None = None) -> dict | None:
    """The eval section the sweep's last launch evaluated with (kept whole in its ``sweep.json``),
    so a run evaluated on its own stays comparable with the others; None (each run's own saved
    one): no such record, or ``run`` is not among the sweep's runs."""
    plan = SweepPlan.of(sweep_dir)
    if plan is None or (run is not None and run not in plan.names) or "max_tokens" not in (plan.eval or {}):
        return None
    return plan.eval


def replan(sweep_dir: Path) -> None:
    """Run the sweep's own command again as a dry run (the command is kept in ``sweep.json``)."""
    import os

    plan = SweepPlan.of(sweep_dir)
    command = plan.command if plan else None
    if not command:
        raise CruijffError(f"{sweep_dir}: no sweep command recorded (not a sweep dir, or made by an older version)")
    skip = ("dry_run=", "scaffold=", "detach=")
    argv = command["argv"]
    head, rest = (argv[:2], argv[2:]) if argv[0] == "-m" else (argv[:1], argv[1:])  # the script, or -m cruijff
    os.chdir(command["cwd"])
    os.execv(sys.executable, [sys.executable, *head, *(a for a in rest if not a.lstrip("+").startswith(skip)),
                              "dry_run=true"])


def sweep_command(command: str, sweep_dir: Path) -> int:
    """``eval`` (the sweep's end, as its launch would: evaluate, report, summary) or ``report`` of a
    sweep dir; 1 when a run or an eval cell failed."""
    if command == "report":
        report_sweep(sweep_dir, sweep_runs(sweep_dir))
        print(f"cruijff: report {layout.summary(sweep_dir)}")
        return 0
    eval_cfg = launch_eval(sweep_dir)  # the launch's, else each run's
    for run in sweep_runs(sweep_dir):  # every task loads, before anything is written
        if layout.saved_config(sweep_dir / run.name).exists():
            check_run_tasks(sweep_dir / run.name, eval_cfg)
    acquire_lock(sweep_dir)
    summary, failed = finish(sweep_dir, eval_cfg, False, ActionLog(layout.action_log(sweep_dir)), time.time(),
                             done="Evaluate sweep (python -m cruijff eval)")
    print(f"cruijff: {summary}")
    print(f"cruijff: report {layout.summary(sweep_dir)}")
    return 1 if failed else 0
