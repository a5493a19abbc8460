"""Fixed-point fake quantization against closed forms (issue #3 item 7).

Every check is a property a correct quantizer must have whatever its implementation:
at b bits a tensor (or weight channel) holds at most 2^b values, all on the zero-exact grid
k * step with step = (max(hi, 0) - min(lo, 0)) / (2^b - 1), within half a step of the input
(round to nearest); errors land on lo + k * step (CPT's grid) within one step, unbiased.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.quant import QuantRNG, QuantSpec, kernels, layer_bits, quantize_model, set_precision
from cprec.quant.fixed import (
    quantize_activation,
    quantize_error,
    quantize_weight,
    stochastic_round_tensor,
)
from cprec.quant.modules import QConv2d, QLinear, QuantMixin

EPS32 = torch.finfo(torch.float32).eps



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


def identity_layer(kind: str, n: int, spec: QuantSpec | None = None,
                   rng: QuantRNG | None = None) -> nn.Module:
    """A quantized layer whose output is exactly its quantized input (identity weight).

    Each weight row/channel of an identity holds only 0 and 1, which every grid holds exactly,
    so the matmul/1x1 conv passes the quantized activation through unchanged.
    """
    base = nn.Linear(n, n, bias=False) if kind == "linear" else nn.Conv2d(n, n, 1, bias=False)
    with torch.no_grad():
        base.weight.copy_(torch.eye(n).view_as(base.weight))
    model = quantize_model(nn.Sequential(base), spec or QuantSpec(), rng or QuantRNG(0),
                           quantize_first=True, quantize_last=True)
    layer = model[0]
    assert isinstance(layer, QLinear if kind == "linear" else QConv2d)
    return layer


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


# -- stochastic rounding of errors ------------------------------------------------------------
def keys(n: int, seed: int = 123) -> list[torch.Tensor]:
    rng = QuantRNG(seed)
    return [rng.next_key(torch.device("cpu")) for _ in range(n)]


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


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


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


# -- full precision is a no-op --------------------------------------------------------------
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


def test_full_precision_layer_matches_plain_layer() -> None:
    """A Q layer at 32/32 computes exactly what the plain layer computes, forward and backward."""
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 5, 3, padding=1)
    q = quantize_model(nn.Sequential(copy.deepcopy(plain)), QuantSpec(), QuantRNG(0),
                       quantize_last=True)[0]
    set_precision(nn.Sequential(q), 32, 32)
    x1 = torch.randn(2, 3, 6, 6, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    g = torch.randn(2, 5, 6, 6)
    plain(x1).backward(g)
    out = q(x2)
    out.backward(g)
    assert torch.equal(out, plain(x1))
    assert torch.equal(x1.grad, x2.grad) and torch.equal(plain.weight.grad, q.weight.grad)


# -- errors are quantized in backward ---------------------------------------------------------
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


@pytest.mark.parametrize("fw_bits", [32, 8])
@pytest.mark.parametrize("bits", [2, 4])
def test_qlinear_weight_gradient_uses_quantized_error(bits: int, fw_bits: int) -> None:
    """With input I, W.grad = E_q^T: the quantized error itself; x.grad = E_q @ W_q."""
    n, out = 12, 7
    layer = quantize_model(nn.Sequential(nn.Linear(n, out)), QuantSpec(), QuantRNG(5),
                           quantize_last=True)[0]
    layer.fw_bits, layer.bw_bits = fw_bits, bits
    x = torch.eye(n, requires_grad=True)
    c = torch.randn(n, out, generator=torch.Generator().manual_seed(bits))  # raw error
    (layer(x) * c).sum().backward()
    e_q = layer.weight.grad.T  # [n, out]
    lo, step = c.min().double(), ((c.max() - c.min()).double() / (2**bits - 1)).item()
    k = (e_q.double() - lo) / step
    assert torch.unique(e_q).numel() <= 2**bits
    assert (k - k.round()).abs().max() < 1e-3
    assert (e_q - c).abs().max().item() < step * (1 + 1e-4)
    assert torch.allclose(layer.bias.grad, e_q.sum(0), atol=1e-5)
    w_q = quantize_weight(layer.weight.detach(), fw_bits)
    assert torch.allclose(x.grad, e_q @ w_q, atol=1e-5)


@pytest.mark.parametrize("bits", [2, 4])
def test_qconv_backward_uses_quantized_error(bits: int) -> None:
    """QConv2d(bw_bits=b): x.grad = conv_input(W, E_q), W.grad = conv_weight(x, E_q), with E_q
    the error E on lo + k * step (<= 2^b values), rounded with the layer's next RNG key."""
    torch.manual_seed(1)
    rng = QuantRNG(11)
    layer = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)), QuantSpec(),
                           rng, quantize_last=True)[0]
    layer.fw_bits, layer.bw_bits = 32, bits
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    e = torch.randn(2, 4, 5, 5)  # the raw error dL/d(out) of L = sum(out * e)
    replay = copy.deepcopy(rng)
    out = layer(x)
    (out * e).sum().backward()
    e_q = stochastic_round_tensor(e, bits, replay.next_key(torch.device("cpu")))
    step = ((e.max() - e.min()).double() / (2**bits - 1)).item()
    assert torch.unique(e_q).numel() <= 2**bits
    assert (e_q - e).abs().max().item() < step * (1 + 1e-4)
    w = layer.weight.detach()
    assert torch.allclose(x.grad, torch.nn.grad.conv2d_input(x.shape, w, e_q, padding=1),
                          atol=1e-5)
    assert torch.allclose(layer.weight.grad,
                          torch.nn.grad.conv2d_weight(x.detach(), w.shape, e_q, padding=1),
                          atol=1e-5)
    assert not torch.allclose(x.grad, torch.nn.grad.conv2d_input(x.shape, w, e, padding=1),
                              atol=1e-3)


# -- model conversion -------------------------------------------------------------------------
@pytest.mark.parametrize("first,last", [(True, False), (False, False), (True, True),
                                        (False, True)])
def test_quantize_torchvision_resnet18(first: bool, last: bool) -> None:
    """Every Conv2d/Linear becomes Q except the first (conv1) / last (fc) as configured;
    parameters are shared, BatchNorm untouched; set_precision reaches every Q layer."""
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10)
    before = {n: (type(m), m) for n, m in model.named_modules()}
    params = dict(model.named_parameters())
    quantize_model(model, QuantSpec(), QuantRNG(0), quantize_first=first, quantize_last=last)
    compute = [n for n, (t, _) in before.items() if t in (nn.Conv2d, nn.Linear)]
    assert len(compute) == 21 and compute[0] == "conv1" and compute[-1] == "fc"
    for name, m in model.named_modules():
        t, original = before[name]
        assert m is original  # converted in place
        if t is nn.Conv2d or t is nn.Linear:
            quantized = (name != "conv1" or first) and (name != "fc" or last)
            assert isinstance(m, QuantMixin) == quantized, name
            assert type(m) is ({nn.Conv2d: QConv2d, nn.Linear: QLinear}[t] if quantized else t)
        else:
            assert type(m) is t  # BatchNorm, ReLU, pooling, containers: untouched
    after = dict(model.named_parameters())
    assert after.keys() == params.keys() and all(after[n] is params[n] for n in params)
    set_precision(model, 5, 7)
    bits = layer_bits(model)
    assert bits["conv1"] == ((5, 7) if first else (32, 32))
    assert bits["fc"] == ((5, 7) if last else (32, 32))
    assert bits["layer2.0.downsample.0"] == (5, 7)
    set_precision(model, 4, 8, per_layer={"layer1.0.conv1": (2, 6)})
    assert layer_bits(model)["layer1.0.conv1"] == (2, 6)
    assert layer_bits(model)["layer1.0.conv2"] == (4, 8)


def test_state_dict_round_trip() -> None:
    """A converted model's state (weights, BN stats, activation EMAs) reloads exactly."""
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    a = quantize_model(tv.models.resnet18(num_classes=10), QuantSpec(), QuantRNG(0))
    set_precision(a, 6, 8)
    a.train()
    a(torch.randn(4, 3, 32, 32)).sum().backward()
    state = a.state_dict()
    assert "layer1.0.conv1.act_lo" in state and "layer1.0.conv1.act_hi" in state
    b = quantize_model(tv.models.resnet18(num_classes=10), QuantSpec(), QuantRNG(0))
    b.load_state_dict(state)  # strict
    set_precision(b, 6, 8)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        if isinstance(ta, torch.Tensor):
            assert torch.equal(ta, tb), na
    for name, layer in quant_layers_of(b).items():
        assert layer.act_seen == quant_layers_of(a)[name].act_seen
        assert layer.act_hi.item() > layer.act_lo.item()
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def quant_layers_of(model: nn.Module) -> dict[str, QuantMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantMixin)}


# -- reproducibility ------------------------------------------------------------------------
def train_tiny(seed: int, rng_seed: int, steps: int = 4) -> dict[str, torch.Tensor]:
    """A few SGD steps of a small all-quantized conv net (4/6 bits) on seeded random data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    quantize_model(model, QuantSpec(), QuantRNG(rng_seed), quantize_last=True)
    set_precision(model, 4, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_seeded_training_is_bitwise_reproducible() -> None:
    """Same seeds (torch + QuantRNG): bitwise-identical weights; another RNG seed differs."""
    a, b = train_tiny(0, 42), train_tiny(0, 42)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train_tiny(0, 43)  # only the error-rounding noise differs
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))


def test_quantize_inputs_is_activation_and_weight_at_once() -> None:
    """One call for a layer's inputs: bitwise the separate quantizers, straight-through
    gradients into both, the batch range (or the given one) returned."""
    from cprec.quant.fixed import quantize_inputs

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


def test_layers_reading_one_tensor_share_its_quantization() -> None:
    """A ResNet stage's conv1 and 1x1 shortcut read the same x: quantized once (same
    storage), same values as quantized alone; an in-place change of x is seen."""
    from cprec.quant.fixed import quantize_inputs

    x = torch.randn(2, 3, 5, 5).requires_grad_()
    w1, w2 = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 1, 1)
    a, _, _, _ = quantize_inputs(x, w1, 4)
    b, wq2, _, _ = quantize_inputs(x, w2, 4)
    assert a.data_ptr() == b.data_ptr() and torch.equal(wq2, quantize_weight(w2, 4))
    assert quantize_inputs(x, w2, 6)[0].data_ptr() != a.data_ptr()  # other bits: not shared
    y = x.detach().clone()
    first = quantize_inputs(y, w1, 4)[0].clone()
    y.mul_(3.0)
    again = quantize_inputs(y, w2, 4)[0]
    assert torch.equal(again, quantize_activation(y, 4)[0]) and not torch.equal(again, first)
    with torch.inference_mode():  # no version counter: computed, never shared
        z = torch.randn(2, 3, 5, 5)
        assert quantize_inputs(z, w1, 4)[0].data_ptr() != quantize_inputs(z, w2, 4)[0].data_ptr()


@pytest.mark.parametrize("bits", [(8, 8), (4, 32), (32, 6)])
@pytest.mark.parametrize("float_format", [False, True])
def test_one_node_conv_equals_the_three_node_path(bits, float_format, monkeypatch) -> None:
    """QConv2d's single autograd node (_QuantizedConv2d) gives bitwise the outputs, the
    gradients (x, weight, bias) and the RNG use of STE + conv + error hook, for strided,
    dilated and grouped convs, with an in-place ReLU after the layer."""
    from cprec.quant import FORMATS, QuantSpec

    spec = QuantSpec(float_format=FORMATS["fp8_e5m2"], rounding="stochastic") if float_format \
        else QuantSpec()

    def run(one_node: bool):
        if not one_node:
            monkeypatch.setattr(QConv2d, "_one_node_ok", lambda self, x: False)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1),
                              nn.ReLU(inplace=True),
                              nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False),
                              nn.ReLU(inplace=True))
        quantize_model(model, spec, QuantRNG(7), quantize_first=True, quantize_last=True)
        set_precision(model, *bits)
        x = torch.randn(3, 4, 9, 9, requires_grad=True)
        out = model(x)
        out.pow(2).sum().backward()
        rng = model[0].rng.state_dict()
        node = type(model[0](x).grad_fn).__name__  # after the RNG state is taken
        monkeypatch.undo()
        return [out.detach(), x.grad] + [p.grad for p in model.parameters()], rng, node

    fused, fused_rng, fused_node = run(True)
    plain, plain_rng, plain_node = run(False)
    assert fused_node == "_QuantizedConv2dBackward" and plain_node != fused_node
    assert fused_rng == plain_rng
    for a, b in zip(fused, plain):
        assert torch.equal(a, b)


# -- fast kernels ---------------------------------------------------------------------------
def kernel_cases() -> list[tuple[str, tuple]]:
    """Every kernel on shapes with ragged tails, at several widths, NaN input included."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 8, 7, 9, generator=gen) * 3 + 0.5
    big = torch.randn(70001, generator=gen)  # above the C kernels' one-thread limit
    w = torch.randn(16, 3, 3, 3, generator=gen)
    w2d = torch.randn(10, 33, generator=gen)  # a Linear weight
    with_nan, with_inf = x.clone(), x.clone()
    with_nan[1, 2, 3, 4] = float("nan")
    with_inf[0, 1, 2, 3] = float("inf")
    signed_zeros = torch.tensor([-0.0, 0.0, 1.0, -0.0] * 5).view(4, 5)
    wide = torch.randn(64, 64, 3, 3, generator=gen)  # per-channel work over the thread limit
    lo, hi = torch.tensor(-1.5), torch.tensor(2.5)
    cases = []
    for bits in (1, 2, 4, 8, 16):
        lv = torch.tensor(float(2**bits - 1))
        for key in keys(2, seed=bits):
            cases += [("quant_stochastic", (t, key, lv))
                      for t in (x, big, with_nan, with_inf, signed_zeros)]
        cases += [("quant_tensor_batch_range", (t, lv))
                  for t in (x, big, with_nan, with_inf, signed_zeros)]
        cases += [("quant_tensor_given_range", (t, lo, hi, lv)) for t in (x, big, with_inf)]
        cases += [("quant_per_channel", (t, lv)) for t in (w, w2d, wide, signed_zeros)]
        cases += [("quant_inputs_batch_range", (x, w, lv)),
                  ("quant_inputs_given_range", (big, w2d, lo, hi, lv))]
    return cases


def test_native_kernels_match_torch_ops_bitwise() -> None:
    """The C kernels (CPU training's path) return exactly what the torch functions return:
    every output (scales and zero points too), every width, NaN and inf propagated alike.
    Exactly = bitwise, except that a range bound of zero may carry the other sign (which
    of -0.0 and 0.0 is the minimum depends on the reduction order) with the same results."""
    from cprec.quant import native

    if native.library() is None:
        pytest.skip("no C compiler on this machine: CPU kernels run as torch ops")
    for name, args in kernel_cases():
        ref, fast = getattr(kernels, name)(*args), native.KERNELS[name](*args)
        assert len(ref) == len(fast), name
        for i, (a, b) in enumerate(zip(ref, fast)):
            assert a.shape == b.shape, (name, i)
            assert torch.equal(a.isnan(), b.isnan()), (name, i)
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), (name, i, (a - b).abs().max())


@pytest.fixture()
def dispatch_spies(monkeypatch):
    """Compilation on, with spies in place of the C kernel and of torch.compile: which path
    ran is recorded (the spies compute with the torch functions)."""
    from cprec.quant import native

    calls: list[str] = []

    def fake_compile(fn, **kwargs):
        def compiled(*args):
            calls.append("compile")
            return fn(*args)
        return compiled

    def fake_native(*args):
        calls.append("native")
        return kernels.quant_tensor_batch_range(*args)

    monkeypatch.setattr(kernels, "_fast", {})
    monkeypatch.setattr(kernels, "_failed", False)
    monkeypatch.setattr(kernels.torch, "compile", fake_compile)
    monkeypatch.setitem(native.KERNELS, "quant_tensor_batch_range", fake_native)
    kernels.set_compile(True)
    yield calls
    kernels.set_compile(False)


def test_kernel_dispatch_sends_only_what_c_takes(dispatch_spies) -> None:
    """Contiguous float32 CPU tensors go to C; channels-last, float64 or empty ones to
    torch.compile; with compilation off, straight to the torch ops."""
    from cprec.quant import native

    if native.library() is None:
        pytest.skip("no C compiler on this machine")
    x, lv = torch.randn(8, 6, 5, 5), torch.tensor(255.0)
    run = kernels.kernel(kernels.quant_tensor_batch_range)
    run(x, lv)
    assert dispatch_spies == ["native"]
    for other in (x.to(memory_format=torch.channels_last), x.double()):
        run(other, lv.to(other.dtype))
    assert dispatch_spies == ["native"] + ["compile"] * 2
    assert not native.accepts(torch.empty(0, 3), lv)  # torch's own error, not C's garbage
    kernels.set_compile(False)
    assert kernels.kernel(kernels.quant_tensor_batch_range) is kernels.quant_tensor_batch_range


def test_native_build_failure_falls_back(monkeypatch, tmp_path, caplog, dispatch_spies) -> None:
    """A compiler that fails: one warning, nothing left in the cache, kernels via torch."""
    from cprec.quant import native

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CC", "false")  # exits 1 whatever it is given
    monkeypatch.setenv("CPREC_CACHE_DIR", str(tmp_path))
    with caplog.at_level("WARNING"):
        assert native.library() is None
    assert "native quantization kernels unavailable" in caplog.text
    assert list(tmp_path.iterdir()) == []  # no half-written library left behind
    kernels.kernel(kernels.quant_tensor_batch_range)(torch.randn(3, 5), torch.tensor(15.0))
    assert dispatch_spies == ["compile"]


def test_native_kernels_ignore_the_default_dtype() -> None:
    """Range outputs are float32 buffers even when torch's default dtype is not."""
    from cprec.quant import native

    if native.library() is None:
        pytest.skip("no C compiler on this machine")
    x, lv = torch.randn(4, 100), torch.tensor(15.0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = native.quant_tensor_batch_range(x, lv)
    finally:
        torch.set_default_dtype(old)
    assert (out[1].item(), out[2].item()) == (x.min().item(), x.max().item())


def test_native_build_goes_to_temp_dir_when_cache_is_unwritable(monkeypatch, tmp_path) -> None:
    from cprec.quant import native

    if native.library() is None:
        pytest.skip("no C compiler on this machine")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("CPREC_CACHE_DIR", str(blocker / "cache"))  # a dir under a file
    monkeypatch.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    assert native.library() is not None
    private = tmp_path / "tmp" / f"cprec-{os.getuid()}"
    assert [p.suffix for p in private.iterdir()] == [".so"]
    assert private.stat().st_mode & 0o777 == 0o700
    private.chmod(0o777)  # a directory others can write: its libraries are not trusted
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_lib", None)
    assert native.library() is None


def test_hybrid_fp8_errors_use_their_own_format() -> None:
    """E4M3 forward, E5M2 errors: the error reaching a layer lies on the E5M2 grid, and small
    errors (1e-4, below E4M3's smallest subnormal 2^-9) survive instead of flushing to 0."""
    from cprec.config import QuantConfig
    from cprec.quant import FORMATS, build_quantized, format_bits
    from cprec.quant.floatfmt import quantize_float

    cfg = QuantConfig(format="float", exp_bits=4, man_bits=3, has_inf=False, error_exp_bits=5,
                      error_man_bits=2)
    assert format_bits(cfg) == (8, 8)
    layer, _ = build_quantized(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4)), cfg, seed=0)
    set_precision(layer, 8, 8)
    seen = {}
    x = torch.randn(16, 8)
    out = layer[0](x)
    out.register_hook(lambda g: seen.setdefault("g", g))  # runs after the quantizing hook
    (out * 1e-4).sum().backward()
    g = seen["g"]
    assert torch.equal(quantize_float(g, FORMATS["fp8_e5m2"]), g)
    assert (g != 0).float().mean() > 0.9  # E4M3 rounding would leave ~5% of them non-zero


def test_error_format_needs_both_widths() -> None:
    from cprec.config import TrainConfig, validate
    from cprec.errors import ConfigError

    cfg = TrainConfig()
    cfg.quant.error_exp_bits = 5
    with pytest.raises(ConfigError, match="together"):
        validate(cfg)
