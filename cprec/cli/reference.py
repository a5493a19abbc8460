"""Every config key with its default and meaning, read from cprec/config.py itself.

The meaning of a field is its comment in config.py: the comment on its line, or else the
comment lines right above it. One source, so the docs' config reference (built from this
at `mkdocs build`) and `--help` cannot drift from the schemas; a test fails when a field
has no comment.
"""

from __future__ import annotations

import ast
import inspect
import io
import tokenize
from dataclasses import MISSING, Field, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from cprec import config
from cprec.paths import config_dir

GROUPS = {  # the config groups of conf/ and what each chooses
    "model": "the network (conf/model/)",
    "dataset": "the data and how it is loaded (conf/dataset/)",
    "schedule": "the precision schedule: bits per step (conf/schedule/)",
    "quant": "the number format and what is quantized (conf/quant/)",
    "optim": "optimizer, learning-rate schedule, weight storage format (conf/optim/)",
    "trainer": "run length, batches, evaluation, devices",
    "prt": "the precision range test of `cprec prt` (conf/prt/)",
    "loss_scale": "loss scaling at the error-rounding points (conf/loss_scale/)",
    "amp": "real mixed precision through torch.autocast (conf/amp/)",
    "cost": "what hardware would charge: energy and modeled time on named devices",
    "tracking": "where logger=mlflow / logger=wandb send a run (MLflow store, W&B project)",
}


@dataclass(frozen=True)
class Key:
    name: str  # dotted, e.g. "trainer.batch_size"
    type: str
    default: Any
    meaning: str


def _comments(source: str) -> dict[int, str]:
    """Line number -> the comment text on that line."""
    return {tok.start[0]: tok.string.lstrip("#").strip()
            for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT}


def _meanings(cls: type) -> dict[str, str]:
    """Field name -> its comment: on its line, else the comment block right above it."""
    source = inspect.getsource(inspect.getmodule(cls))
    comments, lines = _comments(source), source.splitlines()
    node = next(n for n in ast.walk(ast.parse(source))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    out = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        text = comments.get(stmt.lineno, "")
        if not text:
            above, line = [], stmt.lineno - 1
            while line in comments and lines[line - 1].lstrip().startswith("#"):
                above.insert(0, comments[line])
                line -= 1
            text = " ".join(above)
        out[stmt.target.id] = text
    return out


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def config_keys() -> list[Key]:
    """Every key of the train config (the groups' keys under their group's name)."""
    keys = []
    top = config.TrainConfig()
    for f in fields(config.TrainConfig):
        value = getattr(top, f.name)
        if is_dataclass(value):
            keys += _group_keys(f.name, value)
        else:
            keys.append(Key(f.name, str(f.type), _default(f), _meanings(config.TrainConfig)[f.name]))
    return keys


def _group_keys(prefix: str, value: Any) -> list[Key]:
    """A group's keys; a nested schema (quant.operands.forward.w) gives its own keys."""
    meaning, keys = _meanings(type(value)), []
    for g in fields(value):
        inner = getattr(value, g.name)
        keys += _group_keys(f"{prefix}.{g.name}", inner) if is_dataclass(inner) else \
            [Key(f"{prefix}.{g.name}", str(g.type), _default(g), meaning[g.name])]
    return keys


def train_defaults(config_name: str = "train", overrides: list[str] | None = None) -> dict[str, Any]:
    """Dotted key -> its value in the composed config (default: the bare `cprec train`)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    config.register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [])
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and f"{prefix}{key}" in GROUPS:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return flat


def group_options(group: str) -> list[str]:
    """The names `group=<name>` accepts: its files under conf/<group>/."""
    return sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def as_yaml(value: Any) -> str:
    """A value as it is written in an override (null, true, [0.5, 0.75], cpt_cosine)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list | tuple):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    return str(value)


def _rows(keys: list[Key], defaults: dict[str, Any]) -> list[str]:
    head = ["| key | `cprec train` default | schema default | meaning |", "| --- | --- | --- | --- |"]
    return head + [f"| `{k.name}` | `{as_yaml(defaults.get(k.name, k.default))}` | `{as_yaml(k.default)}` | "
                   f"{_cell(k.meaning)} |" for k in keys]


def reference_markdown() -> str:
    """The config reference as Markdown tables, one per group (the docs page's body)."""
    keys, defaults = config_keys(), train_defaults()
    out = ["## Top-level keys", "", *_rows([k for k in keys if "." not in k.name], defaults)]
    for group, what in GROUPS.items():
        options = ", ".join(f"`{o}`" for o in group_options(group)) or "set its keys directly"
        out += ["", f"## `{group}`: {what}", "", f"Options: {options}.", "",
                *_rows([k for k in keys if k.name.startswith(group + ".")], defaults)]
    return "\n".join(out) + "\n"
