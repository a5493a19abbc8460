"""Fixed-point fake quantization against closed forms: grids, levels, error bounds, SR.

Every check is a property a correct quantizer must have whatever its implementation:
at b bits a tensor (or weight channel) holds at most 2^b values, all on the zero-exact grid
k * step with step = (max(hi, 0) - min(lo, 0)) / (2^b - 1), within half a step of the input
(round to nearest); with zero_exact=False weights and activations are CPT's formula
(transcribed here) on the grid min + k * (max - min) / (2^b - 1); errors land on
lo + k * step (CPT's grid) within one step, unbiased.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cprec.quant import QuantRNG, quantize_model
from cprec.quant.fixed import (
    quantize_activation,
    quantize_error,
    quantize_inputs,
    quantize_weight,
    stochastic_round_tensor,
)
from cprec.quant.modules import QConv2d, QLinear

EPS32 = torch.finfo(torch.float32).eps
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


# -- helpers (closed forms) -----------------------------------------------------------------
def zero_exact_step(lo: float, hi: float, bits: int) -> float:
    """Step of the asymmetric grid spanning [min(lo, 0), max(hi, 0)] with 2^b levels."""
    return (max(hi, 0.0) - min(lo, 0.0)) / (2**bits - 1)


def assert_round_to_nearest(x: torch.Tensor, q: torch.Tensor, lo: float, hi: float,
                            bits: int) -> None:
    """q holds <= 2^b values, all integer multiples of the step, each within half a step of x."""
    step = zero_exact_step(lo, hi, bits)
    x64, q64 = x.double(), q.double()
    assert torch.unique(q).numel() <= 2**bits
    slack = 4 * EPS32 * max(abs(lo), abs(hi), 1e-30)  # float32 rounding of x / step etc.
    if step == 0:  # an all-zero tensor stays zero
        assert torch.equal(q, torch.zeros_like(q))
        return
    assert (q64 - x64).abs().max().item() <= step / 2 + slack
    k = q64 / step  # on the grid k * step (0 is exact), up to float32 rounding of k * step
    off_grid = (k - k.round()).abs().max().item()
    assert off_grid <= 1e-4 + 8 * EPS32 * k.abs().max().item(), off_grid
    assert q64.min().item() >= min(lo, 0.0) - step / 2 - slack
    assert q64.max().item() <= max(hi, 0.0) + step / 2 + slack


def make_weight(gen: torch.Generator) -> torch.Tensor:
    """Output channels with mixed signs, all positive, all negative, all zero, constant."""
    w = torch.randn(6, 8, 5, 5, generator=gen)
    w[1] = w[1].abs() + 0.3  # grid widened down to 0
    w[2] = -w[2].abs() - 0.2  # grid widened up to 0
    w[3] = 0.0
    w[4] = 0.7  # constant: 0.7 = (2^b - 1) * step exactly
    return w


def keys(n: int, seed: int = 123) -> list[torch.Tensor]:
    """n successive stochastic-rounding keys of a seeded QuantRNG."""
    rng = QuantRNG(seed)
    return [rng.next_key(torch.device("cpu")) for _ in range(n)]


def identity_layer(kind: str, n: int) -> nn.Module:
    """A quantized layer whose output is exactly its quantized input (identity weight).

    Each weight row/channel of an identity holds only 0 and 1, which every grid holds exactly,
    so the matmul/1x1 conv passes the quantized activation through unchanged.
    """
    base = nn.Linear(n, n, bias=False) if kind == "linear" else nn.Conv2d(n, n, 1, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.eye(n).view_as(base.weight))
    model = quantize_model(nn.Sequential(base), quantize_first=True, quantize_last=True)
    layer = model[0]
    assert isinstance(layer, QLinear if kind == "linear" else QConv2d)
    return layer


# -- weights --------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
def test_weight_per_channel_levels_and_error(bits: int) -> None:
    """Each output channel: <= 2^b values on k * step_c, |q - w| <= step_c / 2 (per channel)."""
    gen = torch.Generator().manual_seed(bits)
    for w in (make_weight(gen), torch.randn(5, 300, generator=gen) * 3 + 1):
        q = quantize_weight(w, bits)
        assert q.shape == w.shape and q.dtype == w.dtype
        for c in range(w.shape[0]):
            wc = w[c].flatten()
            assert_round_to_nearest(wc, q[c].flatten(), wc.min().item(), wc.max().item(), bits)
    # the channels really are separate: a huge channel does not coarsen a small one
    w = torch.stack([torch.linspace(-1, 1, 100), torch.linspace(-1000, 1000, 100)])
    q = quantize_weight(w, 4)
    assert (q[0] - w[0]).abs().max() <= 1 / 15 + 1e-6


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_weight_gradient_is_straight_through(bits: int) -> None:
    """STE: d quantize(w) / dw = identity, so w.grad is the incoming gradient, bitwise."""
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    g = torch.randn(4, 3, 3, 3)
    quantize_weight(w, bits).backward(g)
    assert torch.equal(w.grad, g)


# -- activations ----------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_activation_batch_range(bits: int) -> None:
    """Per tensor: lo/hi are the batch min/max; <= 2^b values; half-step error; STE."""
    gen = torch.Generator().manual_seed(10 + bits)
    for x in (torch.randn(8, 4, 9, 9, generator=gen) * 2 - 0.5,
              torch.rand(5, 500, generator=gen) + 0.25,  # all positive: grid starts at 0
              -torch.rand(3, 700, generator=gen) - 1.0):  # all negative: grid ends at 0
        x = x.requires_grad_()
        q, lo, hi = quantize_activation(x, bits)
        assert lo.item() == x.min().item() and hi.item() == x.max().item()
        assert_round_to_nearest(x.detach(), q.detach(), lo.item(), hi.item(), bits)
        g = torch.randn_like(x)
        q.backward(g)
        assert torch.equal(x.grad, g)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_given_range_clamps(bits: int) -> None:
    """With a fixed range: values inside within half a step; outside clamped to the grid ends."""
    x = torch.linspace(-3, 5, 4001, requires_grad=True)
    lo, hi = torch.tensor(-1.0), torch.tensor(2.0)
    q = quantize_activation(x, bits, lo, hi)
    step = zero_exact_step(-1.0, 2.0, bits)
    inside = (x >= -1) & (x <= 2)
    assert_round_to_nearest(x.detach()[inside], q.detach()[inside], -1.0, 2.0, bits)
    assert torch.unique(q.detach()).numel() <= 2**bits
    assert q.min().item() >= -1.0 - step / 2 - 1e-6 and q.max().item() <= 2.0 + step / 2 + 1e-6
    q.backward(torch.ones_like(x))
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_activation_ema_range_at_eval(kind: str) -> None:
    """Training tracks lo/hi as EMA (momentum 0.9, first batch initializes); eval uses it."""
    bits, n = 3, 4
    layer = identity_layer(kind, n)
    layer.fw_bits, layer.bw_bits = bits, 32
    gen = torch.Generator().manual_seed(3)
    shape = (16, n) if kind == "linear" else (2, n, 3, 3)
    ema_lo = ema_hi = None
    layer.train()
    for scale, shift in [(1.0, 0.0), (3.0, 1.0), (0.5, -2.0), (2.0, 0.5)]:
        x = torch.randn(shape, generator=gen) * scale + shift
        out = layer(x)
        lo, hi = x.min().item(), x.max().item()
        assert_round_to_nearest(x, out.detach(), lo, hi, bits)  # training: the batch range
        ema_lo = lo if ema_lo is None else 0.9 * ema_lo + 0.1 * lo
        ema_hi = hi if ema_hi is None else 0.9 * ema_hi + 0.1 * hi
        assert layer.act_lo.item() == pytest.approx(ema_lo, rel=1e-6, abs=1e-7)
        assert layer.act_hi.item() == pytest.approx(ema_hi, rel=1e-6, abs=1e-7)

    layer.eval()
    x = torch.randn(shape, generator=gen) * 6  # a much wider range than the EMA
    with torch.no_grad():
        out = layer(x)
    step = zero_exact_step(ema_lo, ema_hi, bits)
    zp = round(-min(ema_lo, 0.0) / step)
    expected = torch.clamp(torch.round(x.double() / step), -zp, 2**bits - 1 - zp) * step
    assert torch.allclose(out.double(), expected, rtol=0, atol=1e-5 * step)
    batch_q = quantize_activation(x, bits)[0]
    assert not torch.allclose(out, batch_q)  # not the batch's own range
    assert layer.act_lo.item() == pytest.approx(ema_lo, rel=1e-6, abs=1e-7)  # eval: no update


def test_quantize_inputs_is_activation_and_weight_at_once() -> None:
    """quantize_inputs = quantize_activation + quantize_weight bitwise, STE into both, range out."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 3, 6, 6, generator=gen) + 0.3).requires_grad_()
    w = torch.randn(5, 3, 3, 3, generator=gen).requires_grad_()
    xq, wq, lo, hi = quantize_inputs(x, w, 4)
    ref_x, ref_lo, ref_hi = quantize_activation(x, 4)
    assert torch.equal(xq, ref_x) and torch.equal(wq, quantize_weight(w, 4))
    assert (lo.item(), hi.item()) == (ref_lo.item(), ref_hi.item()) == (x.min().item(), x.max().item())
    gx, gw = torch.randn(xq.shape, generator=gen), torch.randn(wq.shape, generator=gen)
    torch.autograd.backward([xq, wq], [gx, gw])
    assert torch.equal(x.grad, gx) and torch.equal(w.grad, gw)
    a, b = torch.tensor(-0.5), torch.tensor(1.0)
    xq2, wq2, lo2, hi2 = quantize_inputs(x, w, 4, a, b)
    assert torch.equal(xq2, quantize_activation(x, 4, a, b)) and lo2 is a and hi2 is b
    full_x, full_w, _, _ = quantize_inputs(x, w, 32)
    assert full_x is x and full_w is w


# -- CPT's grid (zero_exact=False) ------------------------------------------------------------
def cpt_uniform_quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                         bits: int) -> torch.Tensor:
    """CPT's UniformQuantize (cpt_cifar/modules/quantize.py), round to nearest, unsigned, as
    written there: qparams range = max - min, zero_point = min; scale = range / (qmax - qmin)
    floored at 1e-8 (cprec floors at 1e-12: the same results unless range < 1e-8 * qmax);
    output = (x + (qmin * scale - zero_point)) / scale, clamp(qmin, qmax), round, then
    * scale + (zero_point - qmin * scale)."""
    qmin, qmax = 0.0, 2.0**bits - 1.0
    scale = torch.clamp_min((hi - lo) / (qmax - qmin), 1e-8)
    out = (x + (qmin * scale - lo)) / scale
    return out.clamp(qmin, qmax).round() * scale + (lo - qmin * scale)


def assert_cpt_grid(x: torch.Tensor, q: torch.Tensor, bits: int) -> None:
    """The closed form of CPT's grid for one tensor (or channel): <= 2^b values on
    min + k * step, step = (max - min) / (2^b - 1); it starts exactly at the minimum and ends
    at the maximum (to float rounding); every value within half a step."""
    lo, hi = x.min().double().item(), x.max().double().item()
    step = (hi - lo) / (2**bits - 1)
    slack = 4 * EPS32 * max(abs(lo), abs(hi), 1e-30)
    assert torch.unique(q).numel() <= 2**bits
    assert q.min().item() == x.min().item()  # the minimum itself is a grid point
    assert abs(q.max().item() - hi) <= slack  # the top code lands on the maximum
    assert (q.double() - x.double()).abs().max().item() <= step / 2 + slack
    if step > 0:
        k = (q.double() - lo) / step
        assert (k - k.round()).abs().max().item() <= 1e-4


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_cpt_grid_is_cpts_formula(bits: int) -> None:
    """zero_exact=False: weights per output channel and activations per tensor are bitwise
    CPT's formula on their own min..max, and have its closed form (starts at min, ends at max,
    half-step error); constant channels stay exact; quantize_inputs does both at once."""
    gen = torch.Generator().manual_seed(20 + bits)
    for w in (make_weight(gen), torch.randn(5, 300, generator=gen) * 3 + 1):
        q = quantize_weight(w, bits, zero_exact=False)
        flat, shape = w.flatten(1), [-1] + [1] * (w.dim() - 1)  # CPT: flatten_dims=(1, -1)
        lo, hi = flat.min(-1)[0].view(shape), flat.max(-1)[0].view(shape)  # per output channel
        assert torch.equal(q, cpt_uniform_quantize(w, lo, hi, bits))
        for c in range(w.shape[0]):
            assert_cpt_grid(w[c], q[c], bits)
    x = torch.randn(8, 4, 9, 9, generator=gen) * 2 - 0.5
    xq, lo, hi = quantize_activation(x, bits, zero_exact=False)
    assert torch.equal(xq, cpt_uniform_quantize(x, x.min(), x.max(), bits))
    assert_cpt_grid(x, xq, bits)
    w = torch.randn(6, 4, 3, 3, generator=gen)
    both = quantize_inputs(x, w, bits, zero_exact=False)
    assert torch.equal(both[0], xq) and torch.equal(both[1], quantize_weight(w, bits, zero_exact=False))
    # a given range (CPT's eval: the EMA): values outside it clamp to its ends
    a, b = torch.tensor(-1.0), torch.tensor(2.0)
    given = quantize_activation(x, bits, a, b, zero_exact=False)
    assert torch.equal(given, cpt_uniform_quantize(x, a, b, bits))
    assert given.min().item() == -1.0 and abs(given.max().item() - 2.0) <= 4 * EPS32 * 2


def test_grids_differ_only_where_the_minimum_is_not_zero() -> None:
    """Post-ReLU inputs (minimum exactly 0) get bitwise the same grid either way; signed
    tensors do not: the zero-exact grid moves every point to put 0 on it."""
    gen = torch.Generator().manual_seed(4)
    relu = torch.relu(torch.randn(4, 8, 6, 6, generator=gen))
    signed = torch.randn(4, 8, 6, 6, generator=gen) + 0.2
    for bits in (2, 3, 8):
        assert torch.equal(quantize_activation(relu, bits)[0],
                           quantize_activation(relu, bits, zero_exact=False)[0])
        zero_exact = quantize_activation(signed, bits)[0]
        assert (zero_exact == 0).any()  # 0 is a grid point
        assert not torch.equal(zero_exact, quantize_activation(signed, bits, zero_exact=False)[0])


def test_rounding_error_of_the_two_grids_at_3_bits() -> None:
    """Measured: at 3 bits on Gaussian weight channels the zero-exact grid's squared rounding
    error is above CPT's grid's by ~27% for channels of 9 values (a 3x3 conv on one input
    channel), ~7% for 27, ~1.4% for 144 (3x3 x 16 channels), ~0.3% for 576 (3x3 x 64): CPT's
    grid has both extremes on it, the zero-exact one cuts an end by up to half a step."""
    gen = torch.Generator().manual_seed(0)
    for n, low, high in ((9, 1.20, 1.35), (27, 1.04, 1.10), (144, 1.0, 1.03), (576, 0.99, 1.02)):
        w = torch.randn(4000, n, generator=gen)
        zero_exact, cpt = (((quantize_weight(w, 3, z) - w).double() ** 2).sum().item()
                           for z in (True, False))
        assert low < zero_exact / cpt < high, (n, zero_exact / cpt)


# -- stochastic rounding of errors ------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_stochastic_rounding_grid_and_unbiased(bits: int) -> None:
    """q in {lo + floor(v) step, lo + ceil(v) step}, v = (g - lo) / step; E[q] = g (5 sigma)."""
    gen = torch.Generator().manual_seed(bits)
    g = torch.randn(3000, generator=gen) * 2 + 0.5
    lo, hi = g.min().double(), g.max().double()
    step = ((hi - lo) / (2**bits - 1)).item()
    v = (g.double() - lo) / step
    frac = v - v.floor()
    n_keys = 200
    errs = []
    for key in keys(n_keys):
        q = stochastic_round_tensor(g, bits, key)
        k = (q.double() - lo) / step
        assert (k - k.round()).abs().max().item() < 1e-3  # on the grid lo + k * step
        assert k.round().min().item() >= 0 and k.round().max().item() <= 2**bits - 1
        assert torch.unique(q).numel() <= 2**bits
        assert (q.double() - g.double()).abs().max().item() < step * (1 + 1e-4)  # within a step
        lower_or_upper = (k.round() == v.floor()) | (k.round() == v.ceil())
        assert lower_or_upper[(frac > 1e-3) & (frac < 1 - 1e-3)].all()
        errs.append((q.double() - g.double()) / step)
    err = torch.stack(errs)  # [keys, elements], in steps
    var = frac * (1 - frac)  # Bernoulli(frac) variance of the rounding error, in steps^2
    # bias per band of fractional parts: round-to-nearest would fail the outer bands
    for band_lo, band_hi in [(0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]:
        sel = (frac >= band_lo) & (frac < band_hi)
        total, sigma = err[:, sel].sum(), (n_keys * var[sel].sum()).sqrt()
        assert total.abs() < 5 * sigma + 1e-3, (band_lo, total.item(), sigma.item())
    total, sigma = err.sum(), (n_keys * var.sum()).sqrt()
    assert total.abs() < 5 * sigma


def test_stochastic_rounding_keys() -> None:
    """Same key: identical output; different keys: different noise (many elements differ)."""
    g = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    k1, k2 = keys(2)
    a, b, c = (stochastic_round_tensor(g, 4, k) for k in (k1, k1.clone(), k2))
    assert torch.equal(a, b)
    assert (a != c).float().mean().item() > 0.1  # ~E[2 f (1 - f)] = 1/3 of the elements
    for adjacent in (torch.tensor(5, dtype=torch.int32), torch.tensor(6, dtype=torch.int32)):
        assert not torch.equal(stochastic_round_tensor(g, 4, adjacent), a)


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_quantize_error_gradient_levels(bits: int) -> None:
    """The gradient reaching x through quantize_error(x) holds <= 2^b values on lo + k * step."""
    x = torch.randn(40, 30, requires_grad=True)
    c = torch.randn(40, 30)  # d(sum(y * c))/dy = c: the raw error, known in closed form
    calls = []

    def key_source(device: torch.device) -> torch.Tensor:
        calls.append(device)
        return torch.tensor(17 + len(calls), dtype=torch.int32, device=device)

    y = quantize_error(x, bits, key_source)
    assert torch.equal(y, x)  # identity forward
    (y * c).sum().backward()
    assert len(calls) == 1  # one key per backward pass
    step = ((c.max() - c.min()).double() / (2**bits - 1)).item()
    k = (x.grad.double() - c.min().double()) / step
    assert torch.unique(x.grad).numel() <= 2**bits
    assert (k - k.round()).abs().max() < 1e-3
    assert (x.grad - c).abs().max().item() < step * (1 + 1e-4)
    if bits <= 3:
        assert not torch.allclose(x.grad, c)  # really rounded


# -- every device, and full precision as a no-op ---------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_quantizers_run_on_the_tensors_device(device: str) -> None:
    """Outputs (and the RNG key) live on the input's device; nothing is pulled to the CPU."""
    dev = torch.device(device)
    g = torch.randn(64, 9, device=dev)
    key = QuantRNG(1).next_key(dev)
    assert key.device.type == dev.type and key.dtype == torch.int32
    assert stochastic_round_tensor(g, 8, key).device.type == dev.type
    assert quantize_weight(g, 4).device.type == dev.type
    q, lo, hi = quantize_activation(g, 4)
    assert q.device.type == lo.device.type == hi.device.type == dev.type
    assert quantize_activation(g, 4, lo, hi).device.type == dev.type
    if device == "cuda":  # the same key gives the same stream on every device
        assert torch.equal(stochastic_round_tensor(g, 8, key).cpu(),
                           stochastic_round_tensor(g.cpu(), 8, key.cpu()))


def test_32_bits_returns_the_input() -> None:
    """bits=32 is full precision: weights, activations and errors pass through untouched."""
    x = torch.randn(5, 7, requires_grad=True)
    assert quantize_weight(x, 32) is x
    q, lo, hi = quantize_activation(x, 32)
    assert q is x and lo.item() == x.min().item() and hi.item() == x.max().item()
    assert quantize_activation(x, 32, lo, hi) is x
    assert quantize_error(x, 32, QuantRNG(0).next_key) is x
    key = QuantRNG(0).next_key(torch.device("cpu"))
    assert torch.equal(stochastic_round_tensor(x.detach(), 32, key), x.detach())
