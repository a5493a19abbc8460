"""Low-precision weights: formats, update rounding (nearest, stochastic, Kahan), real dtypes."""

from __future__ import annotations

import io

import pytest
import torch

from cprec.config import OptimConfig
from cprec.errors import ConfigError
from cprec.numerics.lowp_optim import LowPrecisionOptimizer, store_weights_in
from cprec.numerics.optim import build_optimizer, check_optim
from cprec.numerics.weight_formats import parse_weight_format
from tests.helpers import resumed_and_whole


def one_weight(value: float, fmt: str, rounding: str, lr: float = 1.0, **extra) -> tuple:
    w = torch.nn.Parameter(torch.tensor([value]))
    cfg = OptimConfig(lr=lr, momentum=0.0, weight_decay=0.0, weight_format=fmt,
                      update_rounding=rounding, **extra)
    opt = LowPrecisionOptimizer([{"params": [w], "weight_decay": 0.0}], cfg,
                                parse_weight_format(fmt), seed=0)
    return w, opt


def apply(w: torch.nn.Parameter, opt: torch.optim.Optimizer, grad: float, steps: int) -> None:
    for _ in range(steps):
        w.grad = torch.tensor([grad])
        opt.step()


def test_small_updates_vanish_with_nearest_and_survive_with_kahan() -> None:
    """bf16 1.0 after 1000 updates of -1e-5: nearest stays 1.0; Kahan with a float32 buffer
    ends at the bf16 value nearest 0.99, with the paper's bf16 buffer within one bf16 step of
    it, and weight + buffer within 2e-3 of 0.99 (the buffer keeps what rounding drops)."""
    w, opt = one_weight(1.0, "bf16", "nearest")
    apply(w, opt, 1e-5, 1000)
    assert w.item() == 1.0
    nearest_099 = torch.tensor(0.99).to(torch.bfloat16).float().item()
    w, opt = one_weight(1.0, "bf16", "kahan", kahan_buffer="fp32")
    apply(w, opt, 1e-5, 1000)
    assert w.item() == nearest_099 == 0.98828125
    w, opt = one_weight(1.0, "bf16", "kahan")
    apply(w, opt, 1e-5, 1000)
    assert abs(w.item() - nearest_099) <= 2 ** -8
    assert abs(w.item() + opt.state[w]["kahan"].item() - 0.99) < 2e-3


def test_stochastic_rounding_is_unbiased_over_many_draws() -> None:
    """The mean of SR(w + u) over 4000 independent draws equals w + u within 4 standard errors."""
    values = []
    for seed in range(4000):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        cfg = OptimConfig(lr=1.0, momentum=0.0, weight_format="bf16", update_rounding="stochastic")
        opt = LowPrecisionOptimizer([{"params": [w], "weight_decay": 0.0}], cfg,
                                    parse_weight_format("bf16"), seed=seed)
        apply(w, opt, 1e-3, 1)
        values.append(w.item())
    x = torch.tensor(values, dtype=torch.float64)
    exact = 1.0 - 1e-3
    assert set(values) <= {1.0, 0.99609375}  # the two bf16 neighbours
    assert abs(x.mean().item() - exact) < 4 * x.std().item() / len(values) ** 0.5


def test_fixed_point_with_kahan_tracks_the_exact_sum() -> None:
    """fixed8 (step 2^-6): 500 updates of -3e-4. Nearest never moves. Kahan with a float32 buffer
    ends within one step of the exact sum; with its fixed8 buffer (step 2^-6 / 2^7) weight +
    buffer stay within the closed-form bound 500 * buffer_step / 2 of it."""
    w, opt = one_weight(0.3, "fixed8", "nearest")
    step = opt.state[w]["fixed_step"].item()
    assert step == 2.0 ** -6  # smallest power of two with 127 * step >= 2 * 0.5 (the floor)
    start = w.item()
    apply(w, opt, 3e-4, 500)
    assert w.item() == start
    exact = start - 500 * 3e-4
    w, opt = one_weight(0.3, "fixed8", "kahan", kahan_buffer="fp32")
    apply(w, opt, 3e-4, 500)
    assert abs(w.item() - exact) <= step / 2
    w, opt = one_weight(0.3, "fixed8", "kahan")
    apply(w, opt, 3e-4, 500)
    buffer = opt.state[w]["kahan"].item()
    assert (buffer / (step / 128)).is_integer() and abs(buffer) <= step / 2
    assert abs(w.item() + buffer - exact) <= 500 * (step / 128) / 2


def test_fixed_point_saturates_at_the_largest_code() -> None:
    """A fixed<B> weight pushed past the range stays at +-(2^(B-1)-1) * step."""
    w, opt = one_weight(0.9, "fixed4", "nearest")
    step = opt.state[w]["fixed_step"].item()  # 7 * step >= 1.8 -> step 0.5
    apply(w, opt, -10.0, 3)
    assert step == 0.5 and w.item() == 7 * step


def test_sgd_with_momentum_in_bf16_matches_torch_sgd_rounded_each_step() -> None:
    """Nearest rounding on top of the same SGD math: momentum, Nesterov and weight decay equal
    torch.optim.SGD followed by a cast to bf16, step for step."""
    torch.manual_seed(0)
    w0 = torch.randn(50).to(torch.bfloat16).float()
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    cfg = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_format="bf16")
    ours = LowPrecisionOptimizer([{"params": [a], "weight_decay": 1e-2}], cfg, parse_weight_format("bf16"), 0)
    ref = torch.optim.SGD([b], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
    for _ in range(20):
        g = torch.randn(50)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        with torch.no_grad():
            b.copy_(b.to(torch.bfloat16).float())
        assert torch.equal(a, b)


def test_adamw_in_e5m2_keeps_every_weight_in_the_format() -> None:
    """AdamW with Kahan on e5m2 weights: after each step every weight and buffer is an e5m2 value."""
    fmt = parse_weight_format("e5m2")
    model = torch.nn.Linear(8, 4)
    cfg = OptimConfig(name="adamw", lr=1e-2, weight_format="e5m2", update_rounding="kahan")
    opt = build_optimizer(model, cfg)
    for _ in range(5):
        model(torch.randn(16, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        for p in model.parameters():
            assert fmt.representable(p) and fmt.representable(opt.state[p]["kahan"])


def test_real_bf16_weights_halve_the_memory_and_train() -> None:
    """optim.real_dtype: parameters and Kahan buffers are torch.bfloat16; the layer still sees
    float32 weights; a step changes them."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    cfg = OptimConfig(lr=0.1, weight_format="bf16", update_rounding="kahan", real_dtype=True)
    opt = build_optimizer(model, cfg)
    params = list(model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert model[0].weight.dtype == torch.float32  # what the layer computes with
    before = [p.detach().clone() for p in params]
    torch.nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 2, (32,))).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, params))
    assert all(opt.state[p]["kahan"].dtype == torch.bfloat16 for p in params)


def test_state_dict_round_trip_continues_bit_exactly() -> None:
    """Kahan buffers, momentum and the SR counter travel in the state dict: a reloaded optimizer
    continues exactly like the original."""
    torch.manual_seed(0)
    cfg = OptimConfig(lr=0.05, weight_format="bf16", update_rounding="stochastic")
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    opt_a = build_optimizer(a, cfg)
    grads = [[torch.randn_like(p) for p in a.parameters()] for _ in range(6)]
    for g in grads[:3]:
        for p, gp in zip(a.parameters(), g):
            p.grad = gp.clone()
        opt_a.step()
    buffer = io.BytesIO()  # through bytes, as a checkpoint travels (no shared tensors)
    torch.save({"model": a.state_dict(), "optim": opt_a.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    b.load_state_dict(saved["model"])
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(saved["optim"])
    for g in grads[3:]:
        for m, opt in ((a, opt_a), (b, opt_b)):
            for p, gp in zip(m.parameters(), g):
                p.grad = gp.clone()
            opt.step()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("changes, key", [
    ({"weight_format": "fixed0"}, "optim.weight_format"),
    ({"weight_format": "e0m3"}, "optim.weight_format"),
    ({"weight_format": "int8"}, "optim.weight_format"),
    ({"update_rounding": "kahan"}, "optim.update_rounding"),  # kahan with fp32 weights
    ({"weight_format": "fixed8", "real_dtype": True}, "optim.real_dtype"),
    ({"weight_format": "bf16", "update_rounding": "up"}, "optim.update_rounding"),
    ({"weight_format": "bf16", "state_format": "fixed8"}, "optim.state_format"),
])
def test_bad_weight_settings_name_the_key(changes: dict, key: str) -> None:
    """Each inconsistent low-precision setting is a ConfigError naming its key."""
    with pytest.raises(ConfigError) as e:
        check_optim(OptimConfig(**changes))
    assert e.value.key == key


def test_store_weights_in_keeps_the_parameter_count() -> None:
    """The parametrization stores the same parameters (as bf16), no extra copies."""
    model = torch.nn.Linear(8, 4)
    n = sum(p.numel() for p in model.parameters())
    store_weights_in(model, "bf16")
    assert sum(p.numel() for p in model.parameters()) == n
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == 2 * n


# -- in the training loop ----------------------------------------------------------------
SMALL = ["model=mlp", "trainer.steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=6",
         "trainer.progress=false", "schedule.cycles=3", "schedule.bounds=config"]


@pytest.mark.parametrize("fmt, rounding", [("bf16", "kahan"), ("fixed8", "stochastic"), ("e5m2", "nearest")])
def test_after_training_every_parameter_is_in_the_format(compose, tmp_path, fmt, rounding) -> None:
    """A CPT run with low-precision weights: afterwards every parameter (and Kahan buffer) is
    a value of the weight format; the ledger is the same as with fp32 weights."""
    from cprec.engine.build import build_run
    from cprec.engine.trainer import Trainer

    cfg = compose([*SMALL, f"optim.weight_format={fmt}", f"optim.update_rounding={rounding}"])
    parts = build_run(cfg)
    summary = Trainer(parts, tmp_path / "lp").run()
    assert summary["status"] == "completed"
    opt, wf = parts.optimizer, parse_weight_format(fmt)
    for p in parts.model.parameters():
        step = opt.state[p].get("fixed_step")
        assert wf.representable(p, step=step)
    plain = Trainer(build_run(compose(SMALL)), tmp_path / "fp32").run()
    assert summary["gbitops"] == plain["gbitops"]


def test_resume_with_kahan_buffers_is_bit_exact(compose, tmp_path) -> None:
    """Stopped after the step-6 checkpoint and resumed: Kahan bf16 weights end bit-identical."""
    cfg = compose([*SMALL, "optim.weight_format=bf16", "optim.update_rounding=kahan"])
    resumed, whole = resumed_and_whole(cfg, tmp_path, 6)
    assert resumed == whole


# -- the last layer ------------------------------------------------------------------------
def test_last_layer_guideline_values() -> None:
    """ceil(log2(C + 1)): 4 bits for 10 classes, 7 for 100, 1 for 1."""
    from cprec.precision.scheduled import last_layer_guideline

    assert [last_layer_guideline(c) for c in (1, 2, 10, 100, 1000)] == [1, 2, 4, 7, 10]


def test_last_bits_auto_floors_the_classifier_and_a_lower_setting_warns(compose, caplog) -> None:
    """quantize_last with last_bits=auto keeps the classifier at >= 4 bits for 10 classes while
    the others cycle 3..8; last_bits=2 sets it to 2/2 and logs a warning."""
    from cprec.engine.build import build_run

    parts = build_run(compose([*SMALL, "quant.quantize_last=true", "quant.last_bits=auto"]))
    last = parts.precision.last.name
    bits = [parts.precision.apply(t) for t in range(12)]
    assert min(b[last][0] for b in bits) == 4 and min(b["1"][0] for b in bits) == 3
    with caplog.at_level("WARNING", logger="cprec"):
        parts = build_run(compose([*SMALL, "quant.quantize_last=true", "quant.last_bits=2"]))
    assert parts.precision.apply(0)[parts.precision.last.name] == (2, 2)
    assert "below cprec's guideline of 4 bits for 10 classes" in caplog.text


def test_last_bits_is_validated(compose) -> None:
    """quant.last_bits takes null, 'auto' or 1..32."""
    with pytest.raises(ConfigError, match="quant.last_bits"):
        compose(["quant.last_bits=0"])
