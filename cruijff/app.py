"""``python launch.py`` and ``cruijff``: the Hydra app around :func:`cruijff.job.main`, with every
bad input reported as one line and exit 2 — before Hydra composes (group names, names that would
leave ``outputs/``), for what Hydra cannot compose, and for what the sweeper refuses before it submits.

It composes cruijff's config groups (``CONF_DIR``: the checkout's ``conf/``, or the installed
package's) under the ``conf/`` of the project it runs in (a project of the user's: the working dir's, or the
nearest above it, as git finds its repository; then it runs at the project's root)."""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .config import (CONF_DIR, check_group_overrides, check_name, leaf_keys, project_root, register_resolvers,
                     unknown_key)
from .config.keys import unread_addition
from .config.schema import AUTO_ARGS
from .errors import ConfigError, CruijffError, first_line, omegaconf_message
from .job import main as job_main
from .records import ENTRY_ENV, entry
from .sweep import SweepCallback


def launch(argv: list[str] | None = None) -> None:
    """Compose the config from the command line (Hydra's own: ``-m``, ``--cfg job``, ``--help``,
    overrides) and run the job, or the sweep; exits with the job's code."""
    import hydra

    register_resolvers()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    os.environ.setdefault(ENTRY_ENV, entry())  # the jobs record how to run them again
    root = project_root()
    if root is not None and root != Path.cwd().resolve():  # from a dir below the project's: run at its root
        os.chdir(root)
        print(f"cruijff: project {root} (its conf/, its relative paths, its outputs/)")

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
    def app(cfg: DictConfig) -> int | float:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        code = job_main(cfg)
        if HydraConfig.get().mode != RunMode.MULTIRUN and code:  # a single run's code is the process's
            sys.exit(int(code))
        return code  # a sweep's job: the sweep's callback sums them up

    run_app(app, sys.argv[1:])


def precheck(argv: list[str]) -> None:
    """Checks that need no composed config (bad group names, a name that would leave outputs/)."""
    check_group_overrides(argv)
    refused = _auto_args_override(argv)
    if refused:
        raise refused
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.startswith("+") and value:
            refused = unread_addition(key.lstrip("+"), value, known_keys)
            if refused:
                raise refused
        if key.lstrip("+") == "experiment.name":
            for v in value.split(","):
                check_name("experiment.name", v.strip("'\""))


def run_app(app: Callable[[], Any], argv: list[str]) -> None:
    """Run the Hydra app; a user error anywhere before the jobs run ends in one line and exit 2."""
    from hydra.errors import HydraException

    try:
        precheck(argv)
    except CruijffError as e:
        _exit(str(e))
    if os.environ.get("HYDRA_FULL_ERROR"):  # the user asked for Hydra's own full report
        return app()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises; the error is reported here
    try:
        app()
    except CruijffError as e:
        _exit(first_line(e))
    except (HydraException, OmegaConfBaseException) as e:
        cause = _cruijff_cause(e)
        if cause is not None:  # raised while Hydra built a plugin or resolved a run dir
            _exit(first_line(cause))
        _exit(composition_message(e, argv))
    except ValueError as e:
        if "No trials are completed yet" not in str(e):
            raise
        # hydra-optuna-sweeper, when every trial failed: the sweep ends as one whose runs failed
        SweepCallback.end_after_sweeper_error()
        print("cruijff: every trial failed", file=sys.stderr)
        sys.exit(1)


def _cruijff_cause(e: BaseException) -> CruijffError | None:
    """The CruijffError a Hydra or OmegaConf error was raised from or while handling, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, CruijffError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _exit(message: str) -> None:
    print(f"cruijff: error: {message}", file=sys.stderr)
    sys.exit(2)


def known_keys() -> list[str]:
    """The leaf keys of the default config (for a suggestion: empty where it cannot be composed)."""
    try:
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return list(leaf_keys(OmegaConf.to_container(compose(config_name="config"))))
    except Exception:
        return []


def composition_message(e: Exception, argv: list[str]) -> str:
    """One line for a config Hydra cannot compose: an unknown key gets the nearest known one."""
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    key = getattr(cause, "full_key", None)
    if key and "not in struct" in str(cause):
        # the override itself: optimiser.lr=1e-3 fails at its first level, optimiser
        given = [a.split("=", 1) for a in argv if "=" in a and not a.startswith("-")]
        key, value = next(((k, v) for k, v in given if k == key or k.startswith(key + ".")), (key, ""))
        return str(unknown_key(key, value, known_keys()))
    if isinstance(cause, OmegaConfBaseException):
        return omegaconf_message(cause)
    sweep = _sweep_without_multirun(e, argv)
    if sweep:
        return sweep
    if type(e).__name__ == "OverrideParseException":
        return (f"cannot parse the overrides ({first_line(e)}); "
                "the grammar: https://hydra.cc/docs/advanced/override_grammar/basic/")
    return first_line(e)


def _auto_args_override(argv: list[str]) -> ConfigError | None:
    """``model.args.KEY=…`` with ``model=auto``: its args are read from the model dir, not set key by key."""
    if "model=auto" not in argv:
        return None
    given = next((a for a in argv if a.lstrip("+").startswith("model.args")), None)
    if given is None:
        return None
    key, _, value = given.lstrip("+").partition("=")
    return ConfigError(key, value, AUTO_ARGS)


def _sweep_without_multirun(e: Exception, argv: list[str]) -> str | None:
    """Hydra's refusal of a sweep's values in a single run, with the command that sweeps them."""
    found = re.match(r"(?:Ambiguous value for argument|Sweep parameters) '(.*)'", first_line(e))
    if not found:
        return None
    line = found.group(1)
    command = " ".join([entry(), "-m", *(shlex.quote(a) for a in argv)])
    if not first_line(e).startswith("Ambiguous"):
        return f"{line} is a sweep: add -m to run it ({command})"
    key, _, values = line.partition("=")
    return f"{line} is a list of values: add -m to sweep them ({command}), or {key}=[{values}] for one value that is a list"
