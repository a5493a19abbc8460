"""Quantized layers and model conversion: QConv2d/QLinear forward and backward, the
one-node conv against the hook path, shared input quantization, quantize_model,
set_precision, state dicts and seeded reproducibility.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.quant import (
    FORMATS,
    FixedPointQuantizer,
    FloatFormatQuantizer,
    QuantRNG,
    layer_bits,
    quant_layers,
    quantize_model,
    set_precision,
)
from cprec.quant.fixed import (
    quantize_activation,
    quantize_inputs,
    quantize_weight,
    stochastic_round_tensor,
)
from cprec.quant.modules import QConv2d, QLinear, QuantMixin


# -- layers: forward and backward ------------------------------------------------------------
def test_full_precision_layer_matches_plain_layer() -> None:
    """A Q layer at 32/32 computes exactly what the plain layer computes, forward and backward."""
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 5, 3, padding=1)
    q = quantize_model(nn.Sequential(copy.deepcopy(plain)), FixedPointQuantizer(), QuantRNG(0),
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


@pytest.mark.parametrize("fw_bits", [32, 8])
@pytest.mark.parametrize("bits", [2, 4])
def test_qlinear_weight_gradient_uses_quantized_error(bits: int, fw_bits: int) -> None:
    """QLinear's gradients use the quantized error: with input I, W.grad = E_q^T, x.grad = E_q @ W_q."""
    n, out = 12, 7
    layer = quantize_model(nn.Sequential(nn.Linear(n, out)), FixedPointQuantizer(), QuantRNG(5),
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
    """QConv2d's gradients use the quantized error E_q, rounded with the layer's next RNG key.

    x.grad = conv_input(W, E_q), W.grad = conv_weight(x, E_q), E_q on lo + k * step (<= 2^b values).
    """
    torch.manual_seed(1)
    rng = QuantRNG(11)
    layer = quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)),
                           FixedPointQuantizer(), rng, quantize_last=True)[0]
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


@pytest.mark.parametrize("bits", [(8, 8), (4, 32), (32, 6)])
@pytest.mark.parametrize("float_format", [False, True])
def test_one_node_conv_equals_the_three_node_path(bits, float_format, monkeypatch) -> None:
    """QConv2d's one autograd node gives bitwise what STE + conv + error hook give.

    Outputs, gradients (x, weight, bias) and RNG use agree for strided, dilated and grouped
    convs with an in-place ReLU after the layer, fixed point and float formats alike.
    """
    quantizer = FloatFormatQuantizer(FORMATS["fp8_e5m2"], rounding="stochastic") \
        if float_format else FixedPointQuantizer()

    def run(one_node: bool):
        if not one_node:
            monkeypatch.setattr(QConv2d, "_one_node_ok", lambda self, x: False)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1, dilation=1),
                              nn.ReLU(inplace=True),
                              nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False),
                              nn.ReLU(inplace=True))
        quantize_model(model, quantizer, QuantRNG(7), quantize_first=True, quantize_last=True)
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


def test_layers_reading_one_tensor_share_its_quantization() -> None:
    """Layers reading one tensor (conv1 and 1x1 shortcut) share its quantization, never stale.

    Quantized once (same storage), same values as quantized alone; an in-place change of x is
    seen; other bits or inference tensors are not shared.
    """
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


@pytest.mark.parametrize("name", ["resnet20", "cpt_mobilenetv2"])
def test_block_input_quantized_once_for_conv1_and_shortcut(monkeypatch, name: str) -> None:
    """In a training step every 1x1 shortcut conv reuses its block's conv1 quantization of the
    block input (ResNet-20: 2 hits of 21 lookups; CPT's MobileNetV2: 4, one per shortcut
    conv), and the step (loss, gradients, updated weights, running statistics, keys drawn)
    is bitwise the step without sharing."""
    from cprec.config import ModelConfig
    from cprec.models import build_model
    from cprec.quant import fixed
    from cprec.tasks.base import DatasetInfo

    calls = {"lookups": 0, "hits": 0}
    get = fixed._RecentBatchInputs.get.__func__

    def counting_get(cls, x, key):
        result = get(cls, x, key)
        calls["lookups"] += 1
        calls["hits"] += result is not None
        return result

    monkeypatch.setattr(fixed._RecentBatchInputs, "get", classmethod(counting_get))
    size = 8 if name == "resnet20" else 16

    def step(entries: int):
        old = fixed.share_batch_inputs(entries)
        calls.update(lookups=0, hits=0)
        torch.manual_seed(0)
        model = build_model(ModelConfig(name=name), DatasetInfo("x", 3, size, 10))
        rng = QuantRNG(1)
        quantize_model(model, FixedPointQuantizer(), rng)
        set_precision(model, 4, 6)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(8, 3, size, size, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        fixed.share_batch_inputs(old)
        state = [v for v in model.state_dict().values() if isinstance(v, torch.Tensor)]
        return [loss.detach(), *grads, *state], rng.counter, dict(calls)

    shared, shared_keys, shared_calls = step(4)
    alone, alone_keys, alone_calls = step(0)
    model = build_model(ModelConfig(name=name), DatasetInfo("x", 3, size, 10))
    shortcut_convs = [n for n, m in model.named_modules() if n.endswith("shortcut.0")]
    assert shared_calls["hits"] == len(shortcut_convs) == {"resnet20": 2, "cpt_mobilenetv2": 4}[name]
    assert alone_calls == {"lookups": shared_calls["lookups"], "hits": 0}
    if name == "resnet20":
        assert shared_calls["lookups"] == 21  # every quantized conv (the classifier is fp32)
    assert shared_keys == alone_keys
    for a, b in zip(shared, alone):
        assert torch.equal(a, b)


# -- model conversion -------------------------------------------------------------------------
@pytest.mark.parametrize("first,last", [(True, False), (False, False), (True, True),
                                        (False, True)])
def test_quantize_torchvision_resnet18(first: bool, last: bool) -> None:
    """quantize_model converts every Conv2d/Linear in place, first/last only as configured.

    Parameters are shared, BatchNorm untouched; set_precision (per layer too) reaches every Q
    layer and layer_bits reports it.
    """
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10)
    before = {n: (type(m), m) for n, m in model.named_modules()}
    params = dict(model.named_parameters())
    quantize_model(model, FixedPointQuantizer(), QuantRNG(0), quantize_first=first, quantize_last=last)
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
    a = quantize_model(tv.models.resnet18(num_classes=10), FixedPointQuantizer(), QuantRNG(0))
    set_precision(a, 6, 8)
    a.train()
    a(torch.randn(4, 3, 32, 32)).sum().backward()
    state = a.state_dict()
    assert "layer1.0.conv1.act_lo" in state and "layer1.0.conv1.act_hi" in state
    b = quantize_model(tv.models.resnet18(num_classes=10), FixedPointQuantizer(), QuantRNG(0))
    b.load_state_dict(state)  # strict
    set_precision(b, 6, 8)
    for (na, ta), (nb, tb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        if isinstance(ta, torch.Tensor):
            assert torch.equal(ta, tb), na
    for name, layer in quant_layers(b).items():
        assert layer.act_seen == quant_layers(a)[name].act_seen
        assert layer.act_hi.item() > layer.act_lo.item()
    a.eval(), b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


# -- reproducibility ------------------------------------------------------------------------
def train_tiny(seed: int, rng_seed: int, steps: int = 4) -> dict[str, torch.Tensor]:
    """A few SGD steps of a small all-quantized conv net (4/6 bits) on seeded random data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 4))
    quantize_model(model, FixedPointQuantizer(), QuantRNG(rng_seed), quantize_last=True)
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
    """Same seeds (torch + QuantRNG) give bitwise-identical weights; another RNG seed differs."""
    a, b = train_tiny(0, 42), train_tiny(0, 42)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = train_tiny(0, 43)  # only the error-rounding noise differs
    assert any(not torch.equal(a[k], c[k]) for k in a if k.endswith("weight"))
