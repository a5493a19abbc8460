"""`cprec train|prt|schedule --help`: what the command does, three examples, every config
group with its options and every key with its value and one-line meaning.

The meanings are config.py's field comments (cprec.cli.reference), the same text as the
docs' config reference. `--hydra-help` still shows Hydra's own flags.
"""

from __future__ import annotations

import textwrap
from typing import Any

from cprec.cli.reference import GROUPS, as_yaml, config_keys, group_options, train_defaults

COMMANDS = {  # config name -> (what the command does, its examples)
    "train": ("Train one model under a precision schedule and write its run directory (metrics.jsonl, "
              "summary.json, cost.json, checkpoints). Every setting is a Hydra override.", [
                  ("cprec train", "CPT (cpt_cosine, 3..8/8 bits) on the embedded digits"),
                  ("cprec train model=resnet38 dataset=fashion_mnist schedule=static schedule.bits=6",
                   "a static 6/8-bit baseline"),
                  ("cprec train -m schedule=static,cpt_cosine seed=0,1,2",
                   "a 6-job sweep; then cprec report <sweep dir>"),
              ]),
    "prt": ("The precision range test: train briefly at rising bits and write the lower/upper bounds "
            "CPT runs pick up (outputs/prt/<model>-<dataset>.json).", [
                ("cprec prt", "the bounds for the default model and dataset"),
                ("cprec prt model=resnet38 dataset=fashion_mnist", "another model and dataset"),
                ("cprec prt prt.upper_bits=auto", "measure the upper bound too"),
            ]),
    "preview": ("Show a schedule's bits at every step (schedule.csv, schedule.png) and its relative "
                "cost (schedule.json) without training.", [
                    ("cprec schedule", "the default CPT schedule"),
                    ("cprec schedule schedule=demon_decay trainer.steps=64000 schedule.cycles=8",
                     "a Better Schedules profile"),
                    ("cprec schedule experiment=cifar100_resnet74", "a paper preset's schedule"),
                ]),
}
EXTRA_GROUPS = {  # groups that set several of the groups above at once
    "experiment": "a paper's preset (model, dataset, schedule and recipe together), or a search "
                  "over schedules (search_*: cprec train -m experiment=search_cpt_digits)",
    "recipe": "a paper's training recipe (optimizer, lr schedule, epochs, batch)",
}
DOCS = ("The manual: docs/ (pip install -e \".[docs]\" && mkdocs serve); every key: "
        "docs/reference/config.md.")


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def _columns(rows: list[tuple[str, str]], indent: int = 2, width: int = 100) -> list[str]:
    left = min(max((len(a) for a, _ in rows), default=0), 44) + 2
    out = []
    for a, b in rows:
        wrapped = textwrap.wrap(b, width - indent - left) or [""]
        out.append(" " * indent + a.ljust(left) + wrapped[0] if len(a) < left else " " * indent + a)
        if len(a) >= left:
            out.append(" " * (indent + left) + wrapped[0])
        out += [" " * (indent + left) + line for line in wrapped[1:]]
    return out


def help_text(command: str, config_name: str, overrides: list[str]) -> str:
    """The whole --help page of ``command`` with ``overrides`` applied to the values shown."""
    what, examples = COMMANDS[config_name]
    values: dict[str, Any] = train_defaults(config_name, overrides)
    sweep = "" if config_name == "preview" else " [-m: a sweep over comma-separated values]"
    lines = [f"usage: {command} [group=option ...] [key=value ...]{sweep}",
             "", *textwrap.wrap(what, 98), "", "examples:"]
    lines += _columns(examples)
    lines += ["", "config groups (group=option):"]
    groups = {**GROUPS, **EXTRA_GROUPS}
    lines += _columns([(g, f"{what}: {', '.join(group_options(g))}" if group_options(g) else what)
                       for g, what in groups.items()])
    shown = " (with your overrides)" if overrides else ""
    lines += ["", f"keys (key=value; the values this command would use{shown}):"]
    lines += _columns([(f"{k.name}={as_yaml(values.get(k.name, k.default))}", k.meaning)
                       for k in config_keys()])
    lines += ["", DOCS, f"`{command} --cfg job [overrides]` prints the composed config; "
              "`--hydra-help` shows Hydra's own flags."]
    return "\n".join(lines) + "\n"
