"""Pre-flight: compose the config the way Hydra will, before Hydra runs, so that a type error,
an unknown key or config option, or bad override syntax ends as one line (exit 2) with no
run directory, like every other cprec error; then validate every job (jobs.py). Sweeps are
checked job by job.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any

from cprec.cli.jobs import JobCheck, job_failures, unknown_key_line
from cprec.errors import fail_line
from cprec.paths import arg_value, config_dir

log = logging.getLogger("cprec")


class _Invalid(Exception):
    """A composition error, already phrased as the one line the user sees."""


def _hydra_args(argv: list[str]) -> Any:
    """Hydra's own parse of the command line (flags vs overrides); None if it would fail."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def error(message: str) -> None:
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]  # no usage text printed twice
    if "--version" in argv:
        return None
    try:
        return parser.parse_args(argv)
    except (ValueError, SystemExit):
        return None


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _culprit(overrides: list[str], key: str) -> str | None:
    return next((o for o in reversed(overrides) if _key_of(o) == key), None)


def _first_lines(text: str, stop: tuple[str, ...] = ("Config search path", "Search path")) -> str:
    kept = []
    for line in str(text).splitlines():
        if line.strip().startswith(stop) or line.startswith("    full_key:"):
            break
        kept.append(line.strip())
    return " ".join(x for x in kept if x)


def renamed_hint(group: str, option: str) -> str | None:
    """What a config option cprec renamed is called now (one sentence), else None."""
    if group == "schedule":
        from cprec.precision.schedules import RENAMED_SCHEDULES

        return RENAMED_SCHEDULES.get(option)
    return None


def explain(error: Exception, overrides: list[str]) -> str:
    """One line for a Hydra/OmegaConf composition error: ``<key>=<value> is invalid: <reason>``
    where the override at fault can be named, else Hydra's own words on one line."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    message = str(error)
    if isinstance(error, OverrideParseException):
        return (f"{error.override} is invalid: {_first_lines(error.message).split(' See ')[0]} "
                "(see https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        if error.missing_cfg_file.startswith("hydra/sweeper/optuna"):
            return ("hydra/sweeper=optuna (experiment=search_cpt_digits ...) is invalid: Hydra's Optuna "
                    "sweeper is not installed; pip install -e \".[optuna]\" (or pip install "
                    "hydra-optuna-sweeper)")
        group = error.missing_cfg_file.rpartition("/")[0]
        culprit, options = _culprit(overrides, group), list(error.options or [])
        if culprit and (hint := renamed_hint(group, culprit.partition("=")[2])):
            return f"{culprit} is invalid: {hint}"
        if culprit and options:
            return f"{culprit} is invalid: choose one of {options}"
        return _first_lines(message) + (f"; choose one of {options}" if options else "")
    sweep = re.match(r"(?:Ambiguous value for argument|Sweep parameters) '(.*?)'", message)
    if sweep:
        line = sweep.group(1)
        key, _, value = line.partition("=")
        hint = (f"; for a list write {key}=[{value}], for a string {key}='{value}'"
                if message.startswith("Ambiguous") else "")
        return f"{line} is invalid: sweeping over values needs -m{hint}"
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = _first_lines(cause.msg)
        reason = reason[:1].lower() + reason[1:]
        parent = cause.parent_node
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and parent is not None:
            keys = [str(k) for k in parent.keys() if not str(k).startswith("_") and k != "hydra"]
            reason += f"; keys there: {', '.join(keys)}" if keys else ""
        return f"{_culprit(overrides, cause.full_key) or cause.full_key} is invalid: {reason}"
    named = [o for o in overrides if f"'{_key_of(o)}'" in message]  # e.g. +seed=3, ~foo
    reason = _first_lines(message)
    return f"{named[0]} is invalid: {reason[:1].lower() + reason[1:]}" if len(named) == 1 else reason


MAX_JOBS = 1000  # a larger sweep is checked value by value (each value once), not job by job


def _jobs(parser: Any, overrides: list[str], multirun: bool) -> tuple[list[list[str]], set[int]]:
    """The override lists of every job of the command (a sweep's whole product, in Hydra's
    job order; a range sweep value by value, an interval() left to its sweeper plugin), and
    the positions of the swept overrides. A sweep of more than MAX_JOBS jobs: its first job
    and each other value of each swept key."""
    from hydra.errors import OverrideParseException

    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as e:
            raise _Invalid(explain(e, overrides)) from e
    if not multirun:  # compose itself reports a sweep without -m
        return [list(overrides)], set()
    choices: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
        elif o.is_hydra_override():
            raise _Invalid(f"{o.input_line} is invalid: Hydra's own settings cannot be swept")
        elif o.is_discrete_sweep():
            values = list(dict.fromkeys(f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()))
            if values:
                choices.append(values)
    swept = {i for i, values in enumerate(choices) if len(values) > 1}
    if math.prod(map(len, choices)) <= MAX_JOBS:
        return [list(job) for job in itertools.product(*choices)], swept
    base = [values[0] for values in choices]
    return [base, *([*base[:i], v, *base[i + 1:]] for i in sorted(swept) for v in choices[i][1:])], swept


def preflight(argv: list[str], config_name: str, check: JobCheck | None = None) -> None:
    """Compose every job's config before Hydra runs anything, so a bad override (wrong type,
    unknown key or option, bad syntax, a `+key` no schema has; in a sweep, any job) ends with
    one line and exit 2 before a run dir exists, and validate each job as its run will
    (cprec.validate, then the command's ``check``): one line per invalid job, exit 2,
    nothing run. Help and info flags skip it; a failure of the check itself (not of the
    config) leaves the verdict to Hydra."""
    args = _hydra_args(argv)
    if args is None or args.help or args.hydra_help or args.info or args.shell_completion \
            or args.experimental_rerun or args.config_path or args.config_dir:
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = args.multirun or arg_value(args.overrides, "hydra.mode") == "MULTIRUN"
    name = args.config_name or config_name
    composed = []
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=name):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            jobs, swept = _jobs(parser, list(args.overrides), multirun)
            for overrides in jobs:
                try:
                    cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
                except (HydraException, OmegaConfBaseException) as e:
                    raise _Invalid(explain(e, overrides)) from e
                if (line := unknown_key_line(cfg, overrides)) is not None:
                    raise _Invalid(line)
                composed.append((overrides, cfg))
    except _Invalid as e:
        fail_line(str(e))
        sys.exit(2)
    except Exception as e:  # the check broke, not the config: Hydra will judge
        log.debug("pre-flight skipped: %r", e)
        return
    failures = job_failures(composed, check, swept, multirun)
    for line in failures:
        fail_line(line)
    if failures:
        sys.exit(2)


def check_continues_same_run(argv: list[str], config_name: str) -> None:
    """Continuing a run dir that holds a checkpoint (``resume=`` or ``hydra.run.dir=``) under
    settings that compute something else ends here, one line and exit 2, before Hydra
    rewrites the dir's ``.hydra/`` files: refused only later (the checkpoint's own check),
    the dir's saved overrides would already name the new settings, and a plain ``resume=``
    of it would then fail too. An invalid value is reported here for the same reason."""
    args = _hydra_args(argv)
    run_dir = None if args is None or args.multirun else arg_value(args.overrides, "hydra.run.dir")
    if not run_dir:
        return
    run_dir = Path(run_dir.strip("'\""))
    saved = run_dir / ".hydra" / "config.yaml"
    if not ((run_dir / "checkpoint.pt").is_file() and saved.is_file()):
        return
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from cprec.config import check_same_run, register_schemas
    from cprec.errors import CprecError
    from cprec.validate import to_train_config

    register_schemas()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3",
                                   job_name=args.config_name or config_name):
            cfg = compose(config_name=args.config_name or config_name,
                          overrides=list(args.overrides), return_hydra_config=True)
        with open_dict(cfg):
            del cfg["hydra"]
        current = asdict(to_train_config(cfg))
        check_same_run(asdict(to_train_config(OmegaConf.load(saved))), current, run_dir)
    except CprecError as e:
        fail_line(str(e))
        sys.exit(2)
    except Exception as e:  # the check broke, not the config: the checkpoint's check remains
        log.debug("same-run check skipped: %r", e)


# ---- after Hydra: a sweep's verdict -----------------------------------------------------


