"""`cprec train|prt|schedule --help`: examples and every key's meaning, from config.py."""

from __future__ import annotations

from pathlib import Path

from cprec.cli.reference import as_yaml, config_keys
from tests.helpers import run_cli


def test_train_help_explains_every_key_with_its_value_and_gives_examples(tmp_path: Path) -> None:
    out = run_cli(["train", "--help", "model=lstm", "dataset=tiny_shakespeare"], cwd=tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    assert text.startswith("usage: cprec train ") and "examples:\n  cprec train " in text
    assert text.count("\n  cprec train") >= 3 and "docs/reference/config.md" in text
    for key in config_keys():  # each key on its own line, its meaning's first words beside it
        line = next((ln for ln in text.splitlines() if ln.strip().startswith(f"{key.name}=")), None)
        assert line is not None, key.name
        assert key.meaning.split()[0] in text
    assert "  model.name=lstm " in text and "  dataset.name=tiny_shakespeare " in text  # overrides shown
    assert "  schedule.name=cpt_cosine " in text and f"  trainer.batch_size={as_yaml(128)} " in text
    assert "schedule    the precision schedule" in text and "cpt_cosine" in text
    assert not any(tmp_path.iterdir())  # help writes nothing


def test_prt_and_schedule_help_have_their_own_page(tmp_path: Path) -> None:
    prt = run_cli(["prt", "--help"], cwd=tmp_path)
    schedule = run_cli(["schedule", "-h"], cwd=tmp_path)
    assert prt.returncode == schedule.returncode == 0
    assert prt.stdout.startswith("usage: cprec prt ") and "bounds" in prt.stdout
    first = schedule.stdout.splitlines()[0]
    assert first.startswith("usage: cprec schedule ") and "-m" not in first


def test_help_with_a_bad_override_is_one_line_and_hydra_help_is_hydras(tmp_path: Path) -> None:
    bad = run_cli(["train", "--help", "model=nosuch"], cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("cprec: error: model=nosuch is invalid")
    assert len(bad.stderr.splitlines()) == 1
    hydra = run_cli(["train", "--hydra-help"], cwd=tmp_path)
    assert hydra.returncode == 0 and "Hydra" in hydra.stdout
