"""Pre-flight: compose the config the way Hydra will, before Hydra runs, so that a type error,
an unknown key or config option, or bad override syntax ends as one line (exit 2) with no
run directory, like every other cprec error. Sweeps are checked value by value.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _combinations(parser: Any, overrides: list[str], multirun: bool) -> Iterator[list[str]]:
    """The override lists whose composition proves every job of the command composes: the
    command itself, or for a sweep its first job and each other value of each swept key
    (a range is checked at its ends; an interval() is left to its sweeper plugin)."""
    from hydra.errors import OverrideParseException

    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as e:
            raise _Invalid(explain(e, overrides)) from e
    if not multirun:  # compose itself reports a sweep without -m
        yield list(overrides)
        return
    choices: list[list[str]] = []
    for o in parsed:
        if not o.is_sweep_override():
            choices.append([o.input_line])
        elif o.is_hydra_override():
            raise _Invalid(f"{o.input_line} is invalid: Hydra's own settings cannot be swept")
        elif o.is_discrete_sweep():
            values = list(dict.fromkeys(f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()))
            if values:
                choices.append(values[:1] + values[-1:] if o.is_range_sweep() else values)
    base = [values[0] for values in choices]
    yield base
    for i, values in enumerate(choices):
        for value in values[1:]:
            yield [*base[:i], value, *base[i + 1:]]


def preflight(argv: list[str], config_name: str) -> None:
    """Compose the config before Hydra runs anything, so a bad override (wrong type, unknown
    key or option, bad syntax; in a sweep, any one value) ends with one line and exit 2
    before a run dir exists, like cprec's own validation. Help and info flags skip it; a
    failure of the check itself (not of the config) leaves the verdict to Hydra."""
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
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3", job_name=name):
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            for overrides in _combinations(parser, list(args.overrides), multirun):
                try:
                    compose(config_name=name, overrides=overrides, return_hydra_config=True)
                except (HydraException, OmegaConfBaseException) as e:
                    raise _Invalid(explain(e, overrides)) from e
    except _Invalid as e:
        fail_line(str(e))
        sys.exit(2)
    except Exception as e:  # the check broke, not the config: Hydra will judge
        log.debug("pre-flight skipped: %r", e)


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


