"""The learning-rate factor and the optimizer registry."""

from __future__ import annotations

import math

import pytest
import torch

from cprec.config import OptimConfig
from cprec.errors import ConfigError
from cprec.numerics.optim import LR_SCHEDULES, OPTIMIZERS, build_optimizer, check_optim, lr_factor


def test_multistep_drops_by_gamma_at_each_milestone() -> None:
    """x1 before 50% of the run, x0.1 from 50%, x0.01 from 75% (CPT's recipe)."""
    cfg = OptimConfig()
    assert [lr_factor(s, 100, cfg) for s in (0, 49, 50, 74, 75, 99)] == \
        [1.0, 1.0, 0.1, 0.1, pytest.approx(0.01), pytest.approx(0.01)]


def test_warmup_is_linear_from_the_first_step() -> None:
    """Warm-up reaches the base lr at its last step: (s + 1) / warmup_steps."""
    cfg = OptimConfig(warmup_steps=4, lr_schedule="constant")
    assert [lr_factor(s, 100, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_runs_from_one_to_zero_after_warmup() -> None:
    """Cosine: 1 right after warm-up, 0.5 half-way through the rest, -> 0 at the end."""
    cfg = OptimConfig(lr_schedule="cosine", warmup_steps=10)
    assert lr_factor(10, 110, cfg) == 1.0
    assert lr_factor(60, 110, cfg) == pytest.approx(0.5)
    assert lr_factor(109, 110, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_names_come_from_the_registries() -> None:
    """The config accepts exactly the registries' names, and says which."""
    assert set(OPTIMIZERS) == {"sgd", "adam", "adamw"}
    assert set(LR_SCHEDULES) == {"multistep", "cosine", "constant"}
    with pytest.raises(ConfigError, match="choose one of \\['sgd', 'adam', 'adamw'\\]"):
        check_optim(OptimConfig(name="lamb"))
    with pytest.raises(ConfigError, match="optim.lr_schedule='step'"):
        check_optim(OptimConfig(lr_schedule="step"))


def test_no_weight_decay_on_biases_and_batchnorm() -> None:
    """Matrices and kernels decay; 1-D parameters (bias, BN scale/shift) do not."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, OptimConfig(weight_decay=1e-3))
    decay, no_decay = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2] and decay["weight_decay"] == 1e-3
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_constant_warmup_runs_at_warmup_lr_then_the_schedule() -> None:
    """CPT's ResNet-110 warm-up: lr 0.01 (factor 0.1 of 0.1) for 400 steps, then 0.1 and the
    multistep drops at 50%/75% of the run."""
    cfg = OptimConfig(lr=0.1, warmup_steps=400, warmup_lr=0.01)
    factors = [lr_factor(s, 64000, cfg) for s in (0, 399, 400, 31999, 32000, 48000)]
    assert factors == [pytest.approx(0.1), pytest.approx(0.1), 1.0, 1.0, pytest.approx(0.1),
                       pytest.approx(0.01)]
    with pytest.raises(ConfigError, match="optim.warmup_lr"):
        check_optim(OptimConfig(warmup_lr=0.0))


def test_lr_schedule_starts_after_a_probe_prefix() -> None:
    """With ``start`` steps before it (a deficit probe), the lr stays at the base value through
    them and the milestones fall at start + 50% / 75% of the rest (crit_learn.py's
    piecewise-no-def-decay)."""
    cfg = OptimConfig()
    assert [lr_factor(s, 140, cfg, start=40) for s in (0, 39, 40, 89, 90, 114, 115)] == \
        [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.01)]


def test_decay_all_puts_every_parameter_under_weight_decay() -> None:
    """optim.decay_all (CPT's code): biases and BN parameters decay too."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, OptimConfig(weight_decay=1e-3, decay_all=True))
    decay, no_decay = opt.param_groups
    assert len(decay["params"]) == 4 and decay["weight_decay"] == 1e-3 and not no_decay["params"]


def test_decay_only_restricts_weight_decay_to_named_layers() -> None:
    """optim.decay_only=[0] (Kipf & Welling: the first layer only): the other layers' weights
    join the no-decay group; a prefix naming no parameter is a one-line config error."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=1e-3, decay_only=["0"])).param_groups
    assert [p.shape for p in decay["params"]] == [(4, 3)]
    assert [p.shape for p in no_decay["params"]] == [(4,), (2, 4), (2,)]
    needle = "optim.decay_only=\\['conv1'\\].*top-level modules: \\['0', '1'\\]"
    with pytest.raises(ConfigError, match=needle):
        build_optimizer(model, OptimConfig(decay_only=["conv1"]))


def test_adam_adds_l2_to_the_gradient_in_low_precision_weights_too() -> None:
    """optim.name=adam is torch.optim.Adam (L2 joins the gradient before the moments, unlike
    AdamW); lowp_optim's adam with fp32-exact updates takes the same step."""
    from cprec.numerics.lowp_optim import LowPrecisionOptimizer
    from cprec.numerics.weight_formats import parse_weight_format

    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(name="adam", lr=0.01, weight_decay=0.1, decay_all=True)
    opts = [build_optimizer(a, cfg),
            LowPrecisionOptimizer([{"params": list(b.parameters()), "weight_decay": 0.1}], cfg,
                                  parse_weight_format("fp32"), 0)]
    assert isinstance(opts[0], torch.optim.Adam)
    x = torch.randn(8, 5)
    for _ in range(3):
        for model, opt in zip((a, b), opts):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
