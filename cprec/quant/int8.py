"""Integer GEMMs on fixed-point codes: the arithmetic behind ``quant.kernels=int8``.

A fixed-point operand is ``scale * (a + offset)``: ``a`` int8 codes, ``offset`` a number
(per tensor) or a vector (per output channel), ``scale`` likewise. The product of two
operands along K is then

    sum_k (a_k + u)(b_k + v) = sum_k a_k b_k + v sum_k a_k + u sum_k b_k + K u v

The first sum is one int8 GEMM with int32 accumulation (``torch._int_mm``), exact; the
sums of codes come out of the same GEMM as one extra row or column (a row of ones appended
to the other operand), so no extra pass over a large operand is made. Zero-exact grids have
integral offsets, so a forward product is an exact integer until its one conversion to
float32; the errors' grid has a fractional offset, combined in float64 (rounded at 2^-53).
Only the product with the scales is then rounded to float32. The simulated layer rounds
each of its K float32 additions instead, so the two agree to float32 rounding, and this one
is the closer of them to the exact product of the quantized values.

Codes at b <= 7 bits fit int8 as they are (|code| <= 127); at 8 bits a code k in 0..255 is
stored as k - 128 and the 128 moves into the offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cprec.quant import native
from cprec.quant.backends import REFERENCE, backend

# |a_k b_k| <= 128 * 128 = 2^14, so this many products always fit an int32 partial sum
INT32_SAFE_TERMS = (2**31 - 1) // (128 * 128)
CHUNK = 1 << 16


@dataclass
class Codes:
    """One operand as ``scale * (a + offset)``: ``a`` int8, ``offset`` float64 (0-dim, or one
    value per output channel), ``scale`` float32 likewise."""

    a: torch.Tensor
    offset: torch.Tensor
    scale: torch.Tensor


def _codes(v: torch.Tensor, lo: torch.Tensor | float, scale: torch.Tensor, add: torch.Tensor | float,
           dtype: torch.dtype) -> torch.Tensor:
    """round((v - lo) / scale) + add as int8/uint8 bytes: one C pass where the native kernels
    are built (native_kernels.c ``grid_codes``, bitwise the same), else torch ops (and
    always with the reference kernels, ``CPREC_KERNELS=reference``)."""
    if scale.dim() == 0 and backend() != REFERENCE and native.library() is not None and native.accepts(v):
        return native.grid_codes(v, float(lo), float(scale), float(add), dtype)
    return (torch.round((v - lo) / scale) + add).to(dtype)


def grid_codes(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, levels: int,
               unsigned: bool = False) -> Codes:
    """The codes of ``q``, values of a zero-exact grid ``c * scale`` (c = k - zero_point, k in
    0..levels): c recovered as round(q / scale) (exact: |c| <= 255 and q / scale is within
    2^-22 relative of it). With ``unsigned`` the codes are k as uint8, offset -zero_point
    (what oneDNN's int8 convolution takes; ``to_signed`` makes int8 of them). Else at <= 7
    bits the int8 code is c (offset 0) and at 8 bits k - 128 (offset 128 - zero_point).
    ``scale``/``zero_point`` per tensor or per channel (dim 0, broadcastable to ``q``)."""
    if unsigned:
        a, offset = _codes(q, 0.0, scale, zero_point, torch.uint8), -zero_point.double()
    elif levels > 127:
        a, offset = _codes(q, 0.0, scale, zero_point - 128, torch.int8), 128 - zero_point.double()
    else:
        a, offset = _codes(q, 0.0, scale, 0.0, torch.int8), torch.zeros_like(zero_point, dtype=torch.float64)
    flat = (lambda t: t.reshape(-1)) if scale.dim() else (lambda t: t)
    return Codes(a, flat(offset), flat(scale))


def to_signed(x: Codes, levels: int) -> Codes:
    """Unsigned codes k (uint8, 0..levels) as int8 for ``torch._int_mm``: as they are at most
    7 bits, else k - 128 (the top bit flipped) with 128 moved into the offset."""
    if x.a.dtype == torch.int8:
        return x
    if levels <= 127:
        return Codes(x.a.view(torch.int8), x.offset, x.scale)
    return Codes(torch.bitwise_xor(x.a, 128).view(torch.int8), x.offset + 128, x.scale)


def stochastic_codes(q: torch.Tensor, lo: torch.Tensor, scale: torch.Tensor, levels: int) -> Codes:
    """The codes of ``q`` on the errors' grid ``lo + k * scale`` (quant_stochastic): offset
    lo / scale, fractional."""
    offset = lo.double() / scale.double()
    if levels > 127:  # k in 0..255 stored as k - 128
        return Codes(_codes(q, lo, scale, -128.0, torch.int8), offset + 128, scale)
    return Codes(_codes(q, lo, scale, 0.0, torch.int8), offset, scale)


def zero_code(x: Codes) -> int:
    """The int8 code whose value is exactly 0 (a zero-exact grid's, per tensor)."""
    return int(torch.round(-x.offset))


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` [M, K] int8 @ ``b`` [K, N] int8, exact: int32 accumulation, in chunks of K short
    enough that no partial sum can overflow (returned as int64 when chunked)."""
    k = a.shape[1]
    if k <= INT32_SAFE_TERMS:
        return torch._int_mm(a, b)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64, device=a.device)
    for start in range(0, k, CHUNK):
        out += torch._int_mm(a[:, start:start + CHUNK], b[start:start + CHUNK])
    return out


def with_ones_row(a: torch.Tensor) -> torch.Tensor:
    """``a`` [R, ...] int8 (any strides) copied to [R + 1, K] with a row of ones below: in a
    GEMM that row gives the other operand's sums along K."""
    out = torch.empty(a.shape[0] + 1, a[0].numel(), dtype=torch.int8, device=a.device)
    out[:-1].view(a.shape).copy_(a)
    out[-1] = 1
    return out


def _scaled(total: torch.Tensor, *scales: torch.Tensor, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The exact product times the scales (float64), rounded to float32 once (into a new
    tensor of ``shape``: never a view, so an in-place op after the layer is allowed)."""
    scale = scales[0].double()
    for s in scales[1:]:
        scale = scale * s.double()
    total = total * scale
    return (total if shape is None else total.view(shape)).float()


def forward_product(x_rows: torch.Tensor, w: Codes, x: Codes) -> torch.Tensor:
    """sum over K of (w + v)(x + u), scaled: ``w.a`` [O, K], ``x_rows`` [K + 1, L] (x's codes
    with a ones row below: im2col_rows), v per output channel, u per tensor; float32 [L, O]
    (the output positions by channel: channels-last)."""
    o, k = w.a.shape
    p = int_mm(with_ones_row(w.a), x_rows[:k])  # rows 0..O-1: sum w x; row O: sum_k x
    total, v, u = p[:o], w.offset.view(-1, 1), x.offset
    if torch.any(v != 0) or torch.any(u != 0):
        wsum = w.a.sum(1, dtype=torch.int64).double().view(-1, 1)
        total = total.double() + v * p[o:].double() + u * (wsum + k * v)
    return _scaled(total, w.scale.view(-1, 1), x.scale).t()


def with_ones_column(a: torch.Tensor) -> torch.Tensor:
    """``a`` [..., O] int8 (any strides) copied to [M, O + 1] (M the product of the leading
    sizes) with a column of ones: in a GEMM it gives the other operand's sums along M."""
    out = torch.empty(a[..., 0].numel(), a.shape[-1] + 1, dtype=torch.int8, device=a.device)
    out.view(*a.shape[:-1], -1)[..., :-1].copy_(a)
    out[:, -1] = 1
    return out


def weight_grad_product(x_rows: torch.Tensor, e_cols: torch.Tensor, x: Codes, e: Codes) -> torch.Tensor:
    """sum over L of (x + u)(e + m), scaled, for every (k, o): ``x_rows`` [K + 1, L] the
    codes with a ones row below, ``e_cols`` [L, O + 1] with a ones column; float32 [K, O]."""
    k, o = x_rows.shape[0] - 1, e_cols.shape[1] - 1
    p = int_mm(x_rows, e_cols).double()  # [K+1, O+1]: the sums in the last row and column
    u, m, n = x.offset, e.offset, x_rows.shape[1]
    total = p[:k, :o] + u * p[k:, :o] + m * p[:k, o:] + n * u * m
    return _scaled(total, x.scale, e.scale)


def linear_forward_product(x: Codes, w: Codes, shape: tuple[int, ...]) -> torch.Tensor:
    """sum over the features of (x + u)(w + v), scaled: ``x.a`` [M, I], ``w.a`` [O, I]; [M, O]
    as ``shape``."""
    o, i = w.a.shape
    p = int_mm(x.a, with_ones_row(w.a).t())  # [M, O+1]; column O: sum_i x
    total, v, u = p[:, :o], w.offset.view(1, -1), x.offset
    if torch.any(v != 0) or torch.any(u != 0):
        wsum = w.a.sum(1, dtype=torch.int64).double().view(1, -1)
        total = total.double() + v * p[:, o:].double() + u * (wsum + i * v)
    return _scaled(total, w.scale.view(1, -1), x.scale, shape=shape)


def linear_weight_grad_product(x: Codes, e: Codes) -> torch.Tensor:
    """sum over the tokens of (e + m)(x + u), scaled: ``x.a`` [M, I], ``e.a`` [M, O]; [O, I]."""
    o, n = e.a.shape[1], x.a.shape[0]
    p = int_mm(with_ones_row(e.a.t()), x.a).double()  # [O+1, I]; row O: sum_m x
    esum = e.a.sum(0, dtype=torch.int32).double().view(-1, 1)  # |sum| < 2^31 below 2^24 tokens
    u, m = x.offset, e.offset
    total = p[:o] + m * p[o:] + u * esum + n * u * m
    return _scaled(total, x.scale, e.scale)


def im2col_rows(a: torch.Tensor, pad_code: int, kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
    """int8 [N, C, H, W] -> [C * kh * kw + 1, N * H' * W']: one row per weight position (a
    conv weight's (c, i, j) order), one column per output position, and a row of ones below;
    the border filled with ``pad_code``, the code of 0, so a padded position is worth exactly
    0 as in the float convolution. One strided copy per kernel position."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = a.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph), value=pad_code)
    rows = torch.empty(c * kh * kw + 1, n * ho * wo, dtype=torch.int8, device=a.device)
    rows[-1] = 1
    view = rows[:-1].view(c, kh, kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            view[:, i, j].copy_(a[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                                .transpose(0, 1))
    return rows


def onednn_conv(x: Codes, w: Codes, weight_shape: torch.Size, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
    """The convolution of unsigned activation codes (``grid_codes(unsigned=True)``) with the
    weight codes by oneDNN's int8 kernel (int32 accumulation, then the scales in float32;
    channels-last output). The kernel has no weight zero points, so 8-bit weights (k - 128,
    offset v = 128 - zero_point) bring one more output channel of ones: it is x's code sum
    under each window times x's scale, and v times it is added to each channel."""
    o, wa, scales = weight_shape[0], w.a.view(weight_shape), w.scale
    offsets = bool(torch.any(w.offset != 0))
    if offsets:
        wa, scales = torch.cat([wa, torch.ones_like(wa[:1])]), torch.cat([scales, scales.new_ones(1)])
    packed = torch.ops.onednn.qconv_prepack(wa, scales, float(x.scale), zero_code(x), list(stride),
                                            list(padding), [1, 1], 1, list(x.a.shape))
    zeros = torch.zeros(wa.shape[0], dtype=torch.int64, device=w.a.device)
    out = torch.ops.onednn.qconv2d_pointwise(
        x.a, float(x.scale), zero_code(x), packed, scales, zeros, None, list(stride), list(padding),
        [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
    if not offsets:
        return out
    return torch.addcmul(out[:, :o], (w.scale * w.offset.float()).view(1, -1, 1, 1), out[:, o:])


def onednn_int8() -> bool:
    """Whether oneDNN's int8 convolution is there and exact here: int32 accumulation needs
    VNNI (without it, x86 int8 kernels add pairs in saturating int16)."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    if not (caps.get("avx512_vnni") or caps.get("avx_vnni") or caps.get("amx_int8")):
        return False
    try:
        return hasattr(torch.ops.onednn, "qconv2d_pointwise") and torch.backends.mkldnn.is_available()
    except (AttributeError, RuntimeError):
        return False
