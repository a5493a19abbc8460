"""The config reference: every schema field has a meaning (its comment in config.py), and the
docs page is filled from it at build time."""

from __future__ import annotations

import importlib.util
from dataclasses import fields, is_dataclass

from cprec.cli.reference import GROUPS, as_yaml, config_keys, group_options, reference_markdown
from cprec.config import TrainConfig
from tests.helpers import ROOT


def _leaves(prefix: str, value: object) -> set[str]:
    """Dotted keys of a schema's fields; a nested schema (quant.operands) gives its own."""
    if not is_dataclass(value):
        return {prefix}
    return {k for g in fields(value) for k in _leaves(f"{prefix}.{g.name}", getattr(value, g.name))}


def schema_keys() -> set[str]:
    top = TrainConfig()
    return {k for f in fields(TrainConfig) for k in _leaves(f.name, getattr(top, f.name))}


def test_every_field_of_every_schema_has_a_meaning() -> None:
    keys = config_keys()
    assert {k.name for k in keys} == schema_keys()
    undocumented = [k.name for k in keys if not k.meaning]
    assert undocumented == [], f"add a comment to these fields in cprec/config.py: {undocumented}"


def test_every_group_of_the_schema_is_described_and_lists_its_files() -> None:
    groups = {f.name for f in fields(TrainConfig) if is_dataclass(getattr(TrainConfig(), f.name))}
    assert set(GROUPS) == groups
    assert "cpt_cosine" in group_options("schedule") and "resnet20" in group_options("model")


def test_the_reference_shows_every_key_with_the_bare_runs_default() -> None:
    text = reference_markdown()
    for name in schema_keys():
        assert f"| `{name}` |" in text, name
    # the bare `cprec train` composes schedule=cpt_cosine over the schema's fp32 default
    assert "| `schedule.name` | `cpt_cosine` | `fp32` |" in text
    assert "&lt;name&gt;" in text and "<name>" not in text  # no raw HTML from the comments
    assert as_yaml(None) == "null" and as_yaml([0.5, True]) == "[0.5, true]"


def test_the_docs_hook_fills_the_config_page() -> None:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert hooks.MARKER in page
    filled = hooks.on_page_markdown(page, None, None, None)
    assert hooks.MARKER not in filled and "| `trainer.batch_size` |" in filled
