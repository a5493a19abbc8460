"""The Python API (cprec.quantize / schedule / set_precision / CostLedger): the same layers,
bits and ledger as `cprec train`, and the CLI's one-line errors as exceptions."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import cprec
from cprec.config import TrainConfig
from cprec.cost import FULL_PRECISION_BITOPS
from cprec.engine.build import plan_run
from cprec.errors import ConfigError, CprecError
from cprec.quant import layer_bits
from cprec.quant.modules import QLinear
from tests.helpers import ROOT, read_summary, run_cli

EXAMPLE_MARK = "# docs-example: plain-pytorch"


def docs_example() -> str:
    """The plain-PyTorch example of docs/guides/python-api.md, as the reader copies it."""
    page = (ROOT / "docs" / "guides" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    found = [b for b in blocks if b.startswith(EXAMPLE_MARK)]
    assert len(found) == 1, "the page holds exactly one plain-PyTorch example"
    return found[0]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_importing_cprec_imports_no_torch_until_the_api_is_used() -> None:
    probe = "import sys, cprec; print('torch' in sys.modules); cprec.schedule; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_quantize_swaps_the_layers_in_place_with_cpts_first_and_last_rule() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3))
    assert cprec.quantize(model) is model
    assert [type(m) is QLinear for m in (model[0], model[2], model[3])] == [True, True, False]
    cprec.quantize(last := nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), quantize_last=True)
    assert all(type(m) is QLinear for m in last)


def test_a_schedule_gives_the_bits_cprec_train_plans(compose) -> None:
    """Every named schedule of the step alone: bits(step) equals the run plan's schedule."""
    for name in ("cpt_cosine", "cpt_exp_rise_fall", "cos_decay", "static6", "deficit", "fp32"):
        cfg = compose([f"schedule={name}", "trainer.steps=64", "schedule.cycles=4", "schedule.bounds=config",
                       "schedule.deficit_steps=16"])
        planned = plan_run(cfg, 1437).schedule
        api = cprec.schedule(name, 64, cycles=4, bounds="config", deficit_steps=16)
        assert [api.bits(s) for s in range(64)] == [planned.bits_at(s) for s in range(64)], name


def test_set_precision_and_the_ledger_charge_the_closed_form_cost() -> None:
    model = cprec.quantize(mlp(), quantize_last=True)
    ledger = cprec.CostLedger(model, torch.zeros(1, 8, 8))
    cprec.set_precision(model, 4, 8)
    assert set(layer_bits(model).values()) == {(4, 8)}
    ledger.add(10)
    cprec.set_precision(model, 6, 6)
    ledger.add(3)
    macs = 64 * 32 + 32 * 10
    assert ledger.bitops == 10 * macs * (4 * 4 + 2 * 4 * 8) + 3 * macs * (6 * 6 + 2 * 6 * 6)
    assert ledger.relative_cost == ledger.bitops / (13 * macs * FULL_PRECISION_BITOPS)
    assert ledger.gbitops == ledger.bitops / 1e9 and len(ledger.per_layer()) == 2


@pytest.mark.parametrize(("call", "message"), [
    (lambda: cprec.schedule("cpt_cosin", 10), "schedule='cpt_cosin' is invalid: choose one of"),
    (lambda: cprec.schedule("cpt_cosine", 40, cycle=3), "schedule.cycle=3 is invalid: no such option; "
                                                       "did you mean one of ['cycles']?"),
    (lambda: cprec.schedule("cpt_cosine", 40, min_bits=0), "schedule.min_bits=0 is invalid: bits must be in"),
    (lambda: cprec.schedule("cpt_cosine", 40, cycles="x"), "schedule.cycles='x' is invalid"),
    (lambda: cprec.schedule("cpt_cosine", 0), "steps=0 is invalid"),
    (lambda: cprec.schedule("ldp", 40), "use `cprec train schedule=ldp`"),
    (lambda: cprec.schedule("cpt_cosine", 40, cycles=4).bits(40), "step 40 is outside the steps of schedule"),
    (lambda: cprec.quantize(nn.Linear(2, 2), format="int"), "quant.format='int' is invalid"),
    (lambda: cprec.set_precision(cprec.quantize(mlp()), 40, 8), "fw_bits=40 is invalid: bits must be"),
    (lambda: cprec.set_precision(mlp(), 4, 8), "call cprec.quantize(model) first"),
])
def test_api_mistakes_raise_the_clis_one_line_errors(call, message: str) -> None:
    with pytest.raises(CprecError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, ConfigError) or "quantize" in message or "outside" in message


def test_the_same_schedule_refusal_as_the_cli(tmp_path) -> None:
    """A schedule too short for its cycles: the API raises what `cprec train` prints."""
    with pytest.raises(ConfigError) as err:
        cprec.schedule("cpt_cosine", 20)
    out = run_cli(["train", "trainer.steps=20", "trainer.progress=false"], cwd=tmp_path)
    assert out.returncode == 2 and str(err.value) in out.stderr


@pytest.mark.slow
def test_the_docs_example_runs_and_charges_what_cprec_train_charges(tmp_path) -> None:
    """The plain-PyTorch example trains and its ledger equals `cprec train`'s for the same
    model (cprec's mlp), steps, batch size and schedule."""
    namespace: dict = {}
    exec(compile(docs_example(), "python-api.md", "exec"), namespace)  # noqa: S102 (our own docs)
    steps, batch, cycles = namespace["steps"], namespace["batch_size"], namespace["cycles"]
    out = run_cli(["train", "model=mlp", f"trainer.steps={steps}", f"trainer.batch_size={batch}",
                   f"schedule.cycles={cycles}", "trainer.progress=false", "hydra.run.dir=run"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    summary = read_summary(tmp_path / "run")
    assert namespace["ledger"].gbitops == summary["gbitops"]
    assert namespace["ledger"].relative_cost == pytest.approx(summary["relative_cost"], rel=1e-12)
    assert namespace["loss"].item() < 1.0  # it trained


def test_train_config_defaults_match_the_api_defaults() -> None:
    """cprec.quantize's defaults are the quant group's (CPT's): fixed point, last layer full."""
    q = TrainConfig().quant
    assert (q.format, q.quantize_first, q.quantize_last) == ("fixed", True, False)
