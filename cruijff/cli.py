"""``python -m cruijff eval|report <run dir>``: each stage on its own, on an existing run dir.

The run's own saved config (``<run dir>/.hydra/config.yaml``) drives it, so the result is what the
launcher would have produced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import CruijffError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cruijff", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in [("eval", "evaluate the base model and every epoch checkpoint of a run"),
                       ("report", "print and write the results table of a run")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)

    from .launch import check, evaluate_saved, load_run, report_run

    try:
        run_dir = args.run_dir.resolve()
        if args.command == "eval":
            evaluate_saved(run_dir)
        cfg = load_run(run_dir)
        report_run(cfg, run_dir, check(cfg))
    except CruijffError as e:
        print(f"cruijff: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
