"""The scaled formats' layers: each GEMM's operands quantized from the high-precision tensor
along that GEMM's own reduction axis, checked against ``fake_quantize`` in closed form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cprec.quant import quantize_model, set_precision
from cprec.quant.quantizers import ScaledQuantizer
from cprec.quant.recipe import LayerRecipe
from cprec.quant.scaled import fake_quantize

FMT = "mxfp4"  # coarse enough that the axis shows in every result


def quantized(layer: nn.Module, recipe: LayerRecipe | None = None) -> nn.Module:
    model = nn.Sequential(layer)
    quantize_model(model, ScaledQuantizer(recipe or LayerRecipe.uniform(FMT)), quantize_first=True,
                   quantize_last=True)
    set_precision(model, 4, 4)
    return model


def axis_sensitive(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Values whose magnitude grows 2x per row and 1.5x per column: a block along either axis
    spans a different range, so quantizing along rows and along columns differ."""
    g = torch.Generator().manual_seed(seed)
    r = 2.0 ** torch.arange(rows, dtype=torch.float32)[:, None] / 2 ** (rows // 2)
    c = 1.5 ** torch.arange(cols, dtype=torch.float32)[None, :] / 1.5 ** (cols // 2)
    return (r * c * (torch.rand(rows, cols, generator=g) + 0.5) *
            torch.randint(0, 2, (rows, cols), generator=g).mul(2).sub(1))


def test_axis_sensitive_tensors_show_the_axis() -> None:
    t = axis_sensitive(64, 64, 0)
    assert not torch.equal(fake_quantize(t, FMT, axis=0), fake_quantize(t, FMT, axis=1))


def test_linear_step_blocks_each_gemm_along_its_own_axis() -> None:
    """forward: x, W along in-features; dX: dY, W along out-features; dW: dY, x along tokens."""
    layer = nn.Linear(64, 64, bias=True)
    with torch.no_grad():
        layer.weight.copy_(axis_sensitive(64, 64, 1))
    x = axis_sensitive(64, 64, 2).requires_grad_()
    dy = axis_sensitive(64, 64, 3)
    w = layer.weight.detach().clone()
    model = quantized(layer)
    y = model(x)
    y.backward(dy)
    q = fake_quantize
    assert torch.equal(y, F.linear(q(x.detach(), FMT, axis=1), q(w, FMT, axis=1), layer.bias))
    assert torch.equal(x.grad, q(dy, FMT, axis=1) @ q(w, FMT, axis=0))
    assert torch.equal(layer.weight.grad, q(dy, FMT, axis=0).T @ q(x.detach(), FMT, axis=0))
    assert torch.equal(layer.bias.grad, dy.sum(0))
    # and not the once-quantized reuse torchao's emulation does (ao#1501)
    assert not torch.equal(layer.weight.grad, q(dy, FMT, axis=1).T @ q(x.detach(), FMT, axis=1))


def test_linear_on_token_batches_reduces_over_every_token() -> None:
    """(batch, T, K) input: the weight-gradient GEMM's blocks run over batch x T."""
    layer = nn.Linear(32, 32, bias=False)
    x = torch.randn(4, 16, 32, requires_grad=True)
    dy = torch.randn(4, 16, 32)
    quantized(layer)(x).backward(dy)
    rows, drows = x.detach().reshape(64, 32), dy.reshape(64, 32)
    expect = fake_quantize(drows, FMT, axis=0).T @ fake_quantize(rows, FMT, axis=0)
    assert torch.equal(layer.weight.grad, expect)


def test_weight_grad_in_high_precision_is_the_unquantized_gradient() -> None:
    """torchao's rowwise_with_gw_hp: dW = dY^T x exactly, while dX stays quantized."""
    recipe = LayerRecipe.parse({"operand": "fp8_e4m3_row", "weight_grad": {"high_precision": True}})
    layer = nn.Linear(48, 40, bias=False)
    x = torch.randn(24, 48, requires_grad=True)
    dy = torch.randn(24, 40)
    w = layer.weight.detach().clone()
    quantized(layer, recipe)(x).backward(dy)
    assert torch.equal(layer.weight.grad, dy.T @ x.detach())
    expect = fake_quantize(dy, "fp8_e4m3_row", axis=1) @ fake_quantize(w, "fp8_e4m3_row", axis=0)
    assert torch.equal(x.grad, expect)
    assert not torch.equal(x.grad, dy @ w)


def along_positions(t: torch.Tensor, fmt: str) -> torch.Tensor:
    """Blocks of each image's H*W positions, per channel (padded: 36 = 32 + 4 here)."""
    n, c, h, w = t.shape
    return fake_quantize(t.reshape(n, c, h * w), fmt, axis=2).reshape(t.shape)


def test_weight_grad_rows_span_every_image() -> None:
    """fp8 rowwise: one scale per input channel over all N*H*W positions."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 1, bias=False)
    x = torch.randn(2, 4, 3, 3)
    x[1, 0] *= 1000  # image 1's channel 0 sets channel 0's row scale for image 0 too
    x.requires_grad_()
    dy = torch.randn(2, 4, 3, 3)
    quantized(conv, LayerRecipe.uniform("fp8_e4m3_row"))(x).backward(dy)
    rows = lambda t: fake_quantize(t.transpose(0, 1).reshape(4, -1), "fp8_e4m3_row")  # noqa: E731
    expect = rows(dy) @ rows(x.detach()).T
    torch.testing.assert_close(conv.weight.grad.reshape(4, 4), expect, rtol=1e-5, atol=1e-5)  # sum order


def test_conv_axes_are_channels_then_batch_x_space() -> None:
    """forward along C_in (x per pixel, W per tap), dX along C_out, dW along N*H*W."""
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 40, 3, padding=1, bias=True)
    x = torch.randn(3, 48, 6, 6).mul(torch.logspace(-3, 3, 48)[None, :, None, None])
    x.requires_grad_()
    dy = torch.randn(3, 40, 6, 6)
    w = conv.weight.detach().clone()
    y = quantized(conv)(x)
    y.backward(dy)
    q, xd = fake_quantize, x.detach()
    assert torch.equal(y, F.conv2d(q(xd, FMT, axis=1), q(w, FMT, axis=1), conv.bias, padding=1))
    gx = torch.nn.grad.conv2d_input(x.shape, q(w, FMT, axis=0), q(dy, FMT, axis=1), padding=1)
    torch.testing.assert_close(x.grad, gx, rtol=1e-5, atol=1e-5)  # sum order
    gw = torch.nn.grad.conv2d_weight(along_positions(xd, FMT), w.shape, along_positions(dy, FMT),
                                     padding=1)
    torch.testing.assert_close(conv.weight.grad, gw, rtol=1e-5, atol=1e-4)
    assert torch.equal(conv.bias.grad, dy.sum((0, 2, 3)))


def test_conv_channels_fewer_than_a_block_are_zero_padded() -> None:
    """A first conv (3 channels, blocks of 32): each pixel's 3 values are one block."""
    conv = nn.Conv2d(3, 8, 3, bias=False)
    x = torch.randn(2, 3, 5, 5)
    y = quantized(conv)(x)
    per_pixel = fake_quantize(x.permute(0, 2, 3, 1).reshape(-1, 3), FMT).reshape(2, 5, 5, 3)
    expect = F.conv2d(per_pixel.permute(0, 3, 1, 2), fake_quantize(conv.weight.detach(), FMT, axis=1))
    assert torch.equal(y, expect)


def test_full_precision_bits_leave_the_layer_unquantized() -> None:
    layer = nn.Linear(16, 16)
    x = torch.randn(4, 16)
    model = quantized(layer)
    set_precision(model, 32, 32)
    assert torch.equal(model(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("fmt", ["mxfp8_e4m3", "nvfp4", "fp8_e4m3_tensor"])
def test_eval_forward_is_the_forward_gemm(fmt: str) -> None:
    layer = nn.Linear(32, 16)
    model = quantized(layer, LayerRecipe.uniform(fmt)).eval()
    x = torch.randn(8, 32)
    with torch.no_grad():
        y = model(x)
    assert torch.equal(y, F.linear(fake_quantize(x, fmt), fake_quantize(layer.weight, fmt), layer.bias))


def test_convs_the_scaled_step_cannot_pad_are_refused() -> None:
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match="reflect"):
        quantized(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
