"""Issue 28 item 6: every refusal of a combination names a combination that works. The walk
follows each refusal's suggested fixes (the `key=value` it names) and asserts that each
leads to an accepted config or to a refusal naming the remaining fix, never back to a
refusal already met (no circles)."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from cprec.errors import CprecError

# the combinations cprec refuses, across groups (values that are fine on their own)
REFUSED = [
    ["amp=bf16", "schedule=fp32", "loss_scale=static"],  # the circle
    ["amp=bf16"],  # default schedule=cpt_cosine
    ["amp=bf16", "schedule=fp32", "optim.real_dtype=true", "optim.weight_format=e4m3"],
    ["loss_scale=static"],  # fixed-point errors
    ["loss_scale=static", "quant=fp8_e4m3", "schedule=fp32"],
    ["loss_scale=adaptive", "quant=fp8_e4m3", "schedule=static", "quant.quantize_errors=false"],
    ["quant=fp8_e4m3"],  # a float format's width is fixed: no cyclic schedule
    ["schedule=ldp", "quant=fp8_e4m3"],
    ["schedule=static", "schedule.bw_min_bits=4"],
    ["trainer.steps=40"],  # 32 one-step cycles
    ["trainer.steps=20"],  # fewer steps than cycles
    ["trainer.batch_size=2000"],
    ["trainer.devices=4", "trainer.batch_size=2"],
    ["dataset=cora", "trainer.devices=2"],
    ["model=lstm"],  # a language model on digits
    ["optim.update_rounding=stochastic"],
]
@pytest.fixture
def compose():
    """compose(overrides) -> the composed config as the CLI composes it, not yet validated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.config import register_schemas
    from cprec.paths import config_dir

    register_schemas()

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return hydra_compose(config_name="train", overrides=overrides)

    return _compose


FIX = re.compile(r"(?<!not )(?<![\w.])([a-z_]+(?:\.[a-z_]+)*)(=|<=)([\w.\-]+)")


def refusal(compose, overrides: list[str]) -> str | None:
    """The one line `cprec train <overrides>` is refused with before it runs, else None."""
    from cprec.cli.train import check_job
    from cprec.validate import to_train_config

    try:
        check_job(to_train_config(compose(overrides)))
    except CprecError as e:
        return str(e)
    return None


def fixes(compose, message: str, overrides: list[str]) -> list[str]:
    """The concrete fixes a refusal names in its last clause (after the last ';': `use
    key=value`, `e.g. key=value`, `key<=n`), without those that change nothing (the
    message naming the current value)."""
    clause = message.partition(" is invalid: ")[2].rpartition(";")[2]
    named = dict.fromkeys(f"{key}={value}" for key, _, value in FIX.findall(clause))
    before = OmegaConf.to_container(compose(overrides))
    return [f for f in named if OmegaConf.to_container(compose([*overrides, f])) != before]


def walk(compose, overrides: list[str], seen: tuple[str, ...], depth: int = 0) -> bool:
    """Whether some suggested fix of ``overrides``' refusal leads to an accepted config;
    every path must name a fix and must not come back to a refusal met on it (``seen``)."""
    message = refusal(compose, overrides)
    if message is None:
        return True
    assert message not in seen, "circle: " + " -> ".join([*seen, message])
    named = fixes(compose, message, overrides)
    assert named, f"{overrides}: the refusal names no fix: {message}"
    assert depth < 4, f"{overrides}: still refused after 4 fixes: {message}"
    results = [walk(compose, [*overrides, fix], (*seen, message), depth + 1) for fix in named]
    return any(results)


@pytest.mark.parametrize("overrides", REFUSED, ids=" ".join)
def test_each_refused_combination_names_a_fix_that_works(compose, overrides: list[str]) -> None:
    assert refusal(compose, overrides) is not None, f"{overrides} is accepted"
    assert walk(compose, list(overrides), ())


def test_amp_with_loss_scaling_says_why_and_names_loss_scale_none(compose) -> None:
    """The issue's example: the rule (loss scaling is for simulated float errors; amp=fp16 has
    its own GradScaler) and the fix, loss_scale=none, which is accepted."""
    message = refusal(compose, REFUSED[0])
    assert message.startswith("loss_scale='static' is invalid: loss scaling applies to simulated")
    assert "GradScaler" in message and message.endswith("use loss_scale=none with amp")
    assert refusal(compose, [*REFUSED[0], "loss_scale=none"]) is None
