"""Every job of a command, checked before Hydra runs any: keys no schema has (a `+key=value`
override) and cprec's own validation of each composed config (values, combinations, the
run's plan: length, schedule, batch), so that a mistake ends as one line per invalid job
(exit 2) before a run directory exists or anything is trained. preflight.py composes.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

JobCheck = Callable[[Any], None]  # a command's checks of one typed config (TrainConfig)


def unknown_key(cfg: Any, reference: Any, prefix: str = "") -> tuple[str, list[str]] | None:
    """(dotted key, the valid keys beside it) of the first key of ``cfg`` that ``reference``
    (the schema's structured config) lacks; keys under a free-form (Any) field are free."""
    from dataclasses import is_dataclass

    from omegaconf import DictConfig, OmegaConf

    for key in cfg.keys():
        if key == "hydra" and not prefix:
            continue
        if key not in reference:
            return f"{prefix}{key}", [str(k) for k in reference.keys()]
        ref, value = reference._get_node(key), cfg._get_node(key)
        if isinstance(ref, DictConfig) and is_dataclass(OmegaConf.get_type(ref)) \
                and isinstance(value, DictConfig):
            found = unknown_key(value, ref, f"{prefix}{key}.")
            if found:
                return found
    return None


def unknown_key_line(cfg: Any, overrides: list[str]) -> str | None:
    """The one line for a key no schema has, naming the override and the nearest valid keys
    (as a misspelled key without `+` is refused); None when every key is known."""
    from omegaconf import OmegaConf

    from cprec.config import TrainConfig

    if OmegaConf.get_type(cfg) is not TrainConfig:
        return None
    found = unknown_key(cfg, OmegaConf.structured(TrainConfig))
    if found is None:
        return None
    key, there = found
    group, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, there, n=3, cutoff=0.5)
    dotted = [f"{group}.{k}" if group else k for k in (near or there)]
    culprit = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), key)
    what = "nearest" if near else "keys there"
    return (f"{culprit} is invalid: no config has the key {key}, so it would be stored and "
            f"ignored; {what}: {', '.join(dotted)}")


def typed_error(cfg: Any, check: JobCheck | None) -> str | None:
    """cprec's verdict on one composed job (validation, then the command's ``check``): the
    one-line error, or None. A failure of the check itself leaves the verdict to the run."""
    from omegaconf import OmegaConf, open_dict

    from cprec.config import TrainConfig
    from cprec.errors import CprecError

    if OmegaConf.get_type(cfg) is not TrainConfig:
        return None
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    try:
        from cprec.validate import to_train_config

        typed = to_train_config(cfg)
        if check is not None:
            check(typed)
    except CprecError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - a bug in a check is the run's to report, with its traceback
        return None
    return None


def swept_label(overrides: list[str], swept: set[int]) -> str:
    """A sweep job's name in the failure lines: the values of its swept keys."""
    return " ".join(o for i, o in enumerate(overrides) if i in swept) or "the sweep's job"


def job_failures(jobs: list[tuple[list[str], Any]], check: JobCheck | None,
                 swept: set[int], multirun: bool) -> list[str]:
    """The failure lines of the composed ``jobs`` (one per invalid job; a single run's error
    as it is), [] when every job is valid."""
    lines = []
    for number, (overrides, cfg) in enumerate(jobs):
        error = typed_error(cfg, check)
        if error is not None:
            lines.append(f"job {number} ({swept_label(overrides, swept)}): {error}" if multirun else error)
    if multirun and lines:
        lines.append(f"{len(lines)} of {len(jobs)} job(s) of the sweep are invalid; nothing was run")
    return lines
