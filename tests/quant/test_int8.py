"""quant.kernels=int8 (cprec/quant/int8.py, int8_layers.py): integer GEMMs against the
simulated layer, within the float32 rounding bound of each GEMM, exact where the simulated
one is; int32 overflow avoided at the worst case; the fallbacks counted; resume exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.errors import ConfigError
from cprec.quant.int8 import INT32_SAFE_TERMS, Codes, int_mm, linear_weight_grad_product, weight_grad_product
from cprec.quant.int8_layers import gemm_counts
from cprec.quant.modules import QuantRNG, quantize_model, set_precision
from cprec.quant.quantizers import FixedPointQuantizer
from tests.helpers import FAST, read_summary, run_cli, strip

U = 2.0**-24  # float32 unit roundoff


def pair(layer: nn.Module, bits: int, zero_exact: bool = True) -> tuple[nn.Module, nn.Module]:
    """The same layer quantized twice: simulated and int8, same seed."""
    out = []
    for kernels in ("simulated", "int8"):
        copy = type(layer)(**_args(layer))
        copy.load_state_dict(layer.state_dict())
        quantize_model(nn.Sequential(copy), FixedPointQuantizer(zero_exact=zero_exact, kernels=kernels),
                       QuantRNG(7), quantize_last=True)
        set_precision(copy, bits, bits)
        out.append(copy)
    return out[0], out[1]


def _args(layer: nn.Module) -> dict:
    if isinstance(layer, nn.Conv2d):
        return dict(in_channels=layer.in_channels, out_channels=layer.out_channels,
                    kernel_size=layer.kernel_size, stride=layer.stride, padding=layer.padding,
                    groups=layer.groups, bias=layer.bias is not None)
    return dict(in_features=layer.in_features, out_features=layer.out_features, bias=layer.bias is not None)


def step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad, layer.weight.grad


def quantized_operands(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, bits: int):
    """What the simulated layer multiplies: x_q, w_q and the rounded error (the same key)."""
    from cprec.quant.fixed import quantize_inputs, stochastic_round_tensor

    xq, wq, _, _ = quantize_inputs(x, layer.weight.detach(), bits, ste=False)
    gq = stochastic_round_tensor(grad.contiguous(), bits, QuantRNG(7).next_key(grad.device))
    return xq, wq, gq


CONVS = [dict(stride=1, padding=1), dict(stride=2, padding=1), dict(stride=1, padding=0),
         dict(stride=2, padding=2)]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("conv", CONVS)
def test_conv2d_within_the_float32_bound_of_each_gemm(bits, conv) -> None:
    """Forward, input and weight gradient of a Conv2d within the closed-form bound
    (K + 8) u sum|a||b| + 8 u |y| of the simulated GEMM (K its reduction length), the
    8-bit weights' extra code-sum term included (|v| sum_window |x_q| |s_w|)."""
    torch.manual_seed(bits)
    layer = nn.Conv2d(5, 6, 3, **conv)
    x, sim, int8 = torch.randn(3, 5, 9, 9), *pair(layer, bits)
    grad = torch.randn_like(sim(x))
    (ys, gxs, gws), (yi, gxi, gwi) = step(sim, x, grad), step(int8, x, grad)
    xq, wq, gq = quantized_operands(sim, x, grad, bits)
    k = 5 * 9
    y_bound = (k + 8) * U * F.conv2d(xq.abs(), wq.abs(), **conv) + 8 * U * ys.abs()
    if bits == 8:  # the weight codes' offset v = 128 - zero point, times the window's code sums
        lo, hi = torch.aminmax(sim.weight.detach().reshape(6, -1), dim=1)
        scale = (hi.clamp_min(0) - lo.clamp_max(0)) / 255
        v = (128 - torch.round(-lo.clamp_max(0) / scale)).abs()
        y_bound += 8 * U * F.conv2d(xq.abs(), torch.ones(1, 5, 3, 3), **conv) * (v * scale).view(1, -1, 1, 1)
    assert ((yi - ys).abs() <= y_bound).all()
    assert torch.equal(gxi, gxs) or ((gxi - gxs).abs() <= 8 * U * gxs.abs().max()).all()
    n_terms = 3 * yi.shape[2] * yi.shape[3]
    w_bound = (n_terms + 8) * U * torch.nn.grad.conv2d_weight(xq.abs(), wq.shape, gq.abs(), **conv) \
        + 8 * U * gws.abs()
    assert ((gwi - gws).abs() <= w_bound).all()
    assert gemm_counts(int8)["int8"] == 2


@pytest.mark.parametrize("bits", range(2, 9))
def test_linear_within_the_float32_bound_on_tokens(bits) -> None:
    """A Linear on [batch, time, features] (the LSTM's and Transformer's shape): the weight
    gradient sums over every token."""
    torch.manual_seed(bits)
    sim, int8 = pair(nn.Linear(20, 12), bits)
    x, grad = torch.randn(4, 7, 20), torch.randn(4, 7, 12)
    (ys, gxs, gws), (yi, gxi, gwi) = step(sim, x, grad), step(int8, x, grad)
    xq, wq, gq = quantized_operands(sim, x, grad, bits)
    v = 0.0
    if bits == 8:
        lo, hi = torch.aminmax(sim.weight.detach(), dim=1)
        scale = (hi.clamp_min(0) - lo.clamp_max(0)) / 255
        v = ((128 - torch.round(-lo.clamp_max(0) / scale)).abs() * scale)
    y_bound = (28 * U * (xq.abs() @ wq.abs().t()) + 8 * U * ys.abs()
               + 8 * U * xq.abs().sum(-1, keepdim=True) * v)
    assert ((yi - ys).abs() <= y_bound).all()
    assert torch.equal(gxi, gxs)
    w_bound = 36 * U * (gq.abs().reshape(-1, 12).t() @ xq.abs().reshape(-1, 20)) + 8 * U * gws.abs()
    assert ((gwi - gws).abs() <= w_bound).all()


def test_exactly_equal_where_the_simulated_gemm_is_exact() -> None:
    """Integer inputs and weights on grids of scale 1 (x in 0..7, each weight channel -3..4
    at 3 bits): every simulated product and sum is exact in float32, so the integer path
    must give the very same numbers."""
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    with torch.no_grad():
        w = torch.randint(-3, 5, conv.weight.shape).float()
        w.view(3, -1)[:, 0], w.view(3, -1)[:, 1] = -3.0, 4.0  # each channel spans -3..4
        conv.weight.copy_(w)
    x = torch.randint(0, 8, (2, 2, 6, 6)).float()
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0.0, 7.0
    sim, int8 = pair(conv, 3)
    ys, yi = sim(x), int8(x)
    assert torch.equal(ys, F.conv2d(x, w, padding=1)) and torch.equal(yi, ys)


def test_int32_cannot_overflow_at_the_worst_case() -> None:
    """All codes -128: each product is 2^14, and 2 x 2^17 of them sum to 2^32, which int32
    cannot hold; the chunked sum is exact. Same through the weight-gradient products."""
    n = 2 * (INT32_SAFE_TERMS + 1)
    a = torch.full((2, n), -128, dtype=torch.int8)
    b = torch.full((n, 3), -128, dtype=torch.int8)
    assert (int_mm(a, b) == n * 2**14).all() and n * 2**14 == 2**32
    one, zero = torch.tensor(1.0), torch.tensor(0.0, dtype=torch.float64)
    rows = torch.cat([a[:1], torch.ones(1, n, dtype=torch.int8)])  # K = 1, ones row
    cols = torch.cat([b[:, :1], torch.ones(n, 1, dtype=torch.int8)], 1)  # O = 1, ones column
    dw = weight_grad_product(rows, cols, Codes(a[:1], zero, one), Codes(b[:, :1], zero, one))
    assert dw.item() == 2.0**32
    dw = linear_weight_grad_product(Codes(b[:, :1], zero, one), Codes(b[:, :1], zero, one))
    assert dw.item() == 2.0**32


def test_fallbacks_are_taken_and_counted() -> None:
    """More than 8 bits, CPT's grid, a grouped convolution, loss scaling's error tap: each
    runs simulated (results equal to the simulated layer's) and is counted by its reason."""
    x = torch.randn(2, 4, 6, 6)
    cases = [(nn.Conv2d(4, 4, 3), 12, True, "more than 8 bits"),
             (nn.Conv2d(4, 4, 3), 6, False, "CPT's grid"),
             (nn.Conv2d(4, 4, 3, groups=2), 6, True, "grouped, dilated")]
    for layer, bits, zero_exact, reason in cases:
        sim, int8 = pair(layer, bits, zero_exact)
        grad = torch.randn_like(sim(x))
        assert all(torch.equal(a, b) for a, b in zip(step(sim, x, grad), step(int8, x, grad)))
        (how,) = gemm_counts(int8)
        assert reason in how and gemm_counts(int8)[how] == 3
    _, tapped = pair(nn.Linear(6, 3), 6)
    tapped.error_tap = lambda round_error, error, bits, key: round_error(error, bits, key)
    tapped(torch.randn(2, 6, requires_grad=True))
    assert "loss scaling" in next(iter(gemm_counts(tapped)))


def test_auto_keeps_small_gemms_simulated() -> None:
    """auto: a GEMM below 2^24 MACs stays simulated (bitwise), counted; int8 takes it."""
    layer = nn.Linear(64, 32)
    x, grad = torch.randn(16, 64), torch.randn(16, 32)
    sim, _ = pair(layer, 6)
    auto = quantize_model(nn.Sequential(layer), FixedPointQuantizer(kernels="auto"), QuantRNG(7),
                          quantize_last=True)[0]
    set_precision(auto, 6, 6)
    assert all(torch.equal(a, b) for a, b in zip(step(sim, x, grad), step(auto, x, grad)))
    assert "a small GEMM" in next(iter(gemm_counts(auto)))


def test_errors_above_8_bits_keep_the_weight_gradient_in_float() -> None:
    """fw 6, bw 12: the forward is int8, the errors' codes do not fit, so dW runs float."""
    sim, int8 = pair(nn.Linear(6, 3), 6)
    set_precision(int8, 6, 12)
    step(int8, torch.randn(5, 6), torch.randn(5, 3))
    counts = gemm_counts(int8)
    assert counts["int8"] == 1 and counts["simulated: errors at more than 8 bits"] == 1


@pytest.mark.parametrize("overrides, needle", [
    (["quant=fp16", "quant.kernels=int8"], "integer GEMMs run fixed-point layers"),
    (["schedule=ldp", "quant.kernels=int8"], "learns its bits through its own quantizer"),
    (["quant.kernels=int4"], "choose one of ['simulated', 'int8', 'auto']"),
])
def test_what_int8_cannot_run_is_refused_in_one_line(compose, overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        compose(overrides)


def test_auto_runs_a_float_format_simulated(compose) -> None:
    assert compose(["quant=fp16", "quant.kernels=auto"]).quant.kernels == "auto"


def test_kill_and_resume_ends_where_the_uninterrupted_run_ends(compose, tmp_path) -> None:
    """With quant.kernels=int8: metrics, summary (its GEMM counts included) equal."""
    from dataclasses import replace

    from cprec.engine import runs
    from cprec.engine.build import build_run
    from cprec.engine.trainer import Trainer, step_plugins

    cfg = compose([*FAST, "model=lenet", "quant.kernels=int8", "trainer.threads=1"])
    parts = build_run(cfg)
    whole = Trainer(parts, tmp_path / "whole", step_plugins(parts)).run()
    first = build_run(cfg)
    first.plan = replace(first.plan, total_steps=12)
    Trainer(first, tmp_path / "run", step_plugins(first)).run()
    (tmp_path / "run" / runs.SUMMARY).unlink()
    again = build_run(cfg)
    resumed = Trainer(again, tmp_path / "run", step_plugins(again)).run()
    assert strip(resumed) == strip(whole) and whole["gemms"]["int8"] > 0
    assert [strip(r) for r in runs.read_metrics(tmp_path / "run")] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]


@pytest.mark.slow
def test_cli_trains_on_integer_gemms_with_the_simulated_ledger(tmp_path) -> None:
    """`cprec train quant.kernels=int8` end to end (fast kernels): GBitOPs equal to the
    simulated run's, the GEMMs counted in summary.json, accuracy close to the simulated run."""
    sims = []
    for kernels in ("simulated", "int8"):
        out = run_cli(["train", *FAST, "model=lenet", f"quant.kernels={kernels}", "trainer.threads=1",
                       f"hydra.run.dir={kernels}"], tmp_path, compile_kernels=True)
        assert out.returncode == 0, out.stderr[-2000:]
        sims.append(read_summary(tmp_path / kernels))
    sim, int8 = sims
    assert int8["gbitops"] == sim["gbitops"] and "gemms" not in sim
    assert int8["gemms"]["int8"] > 0 and abs(int8["final_acc"] - sim["final_acc"]) < 0.1
    assert json.loads((tmp_path / "int8" / "summary.json").read_text())["gemms"] == int8["gemms"]
