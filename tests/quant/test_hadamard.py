"""The 16x16 random Hadamard transform: orthogonal, undone exactly, cancels in dW."""

from __future__ import annotations

import torch

from cprec.quant.hadamard import RandomHadamard, hadamard_matrix
from cprec.quant.scaled import OperandState, quantize_operand
from cprec.quant.spec import preset


def test_hadamard_is_orthogonal_exactly() -> None:
    h = hadamard_matrix(16)
    assert torch.equal(h @ h.T, 16 * torch.eye(16))
    m = RandomHadamard(seed=3).matrix(torch.float64)
    assert torch.equal(m @ m.T, torch.eye(16, dtype=torch.float64))  # entries +-1/4: exact
    assert set(m.abs().unique().tolist()) == {0.25}


def test_transform_is_undone_exactly_on_dyadic_inputs() -> None:
    """Exact arithmetic: for dyadic inputs every float64 sum of +-x/4 is exact, so the
    round trip is bit for bit the input; a trailing run shorter than 16 is kept as is."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2 ** 20, 2 ** 20, (7, 40, 3), generator=g).double() / 1024
    rht = RandomHadamard(seed=1)
    y = rht.transform(x, axis=1)
    assert torch.equal(y[:, 32:], x[:, 32:]) and not torch.equal(y[:, :32], x[:, :32])
    assert torch.equal(rht.inverse(y, axis=1), x)
    xf = torch.randn(64, 48, generator=g)
    assert torch.allclose(rht.inverse(rht.transform(xf, 0), 0), xf, atol=1e-6, rtol=0)


def test_transforms_cancel_in_the_weight_gradient_gemm() -> None:
    """dW = dY^T X over the token axis: the transformed operands give the same product."""
    g = torch.Generator().manual_seed(2)
    dy = torch.randint(-64, 64, (48, 8), generator=g).double()
    x = torch.randint(-64, 64, (48, 5), generator=g).double()
    rht = RandomHadamard(seed=4)
    assert torch.equal(rht.transform(dy, 0).T @ rht.transform(x, 0), dy.T @ x)


def test_seeds_and_state() -> None:
    a, b = RandomHadamard(seed=5), RandomHadamard(seed=6)
    assert not torch.equal(a.matrix(), b.matrix())
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.matrix(), b.matrix())


def test_hadamard_operands_give_the_transformed_gemm() -> None:
    """quantize_operand(hadamard=True) quantizes x M along the axis and maps back with M^T,
    so the weight-gradient GEMM of two such operands is (to float32 rounding of the back
    transform) the GEMM of the transformed quantized operands, which NVFP4 hardware runs."""
    g = torch.Generator().manual_seed(7)
    dy, x = torch.randn(256, 32, generator=g), torch.randn(256, 64, generator=g)
    rht = RandomHadamard(seed=8)
    spec, plain = preset("nvfp4", hadamard=True), preset("nvfp4")
    state = OperandState(hadamard=rht)
    q_dy = quantize_operand(dy, spec, axis=0, state=state)
    q_x = quantize_operand(x, spec, axis=0, state=state)
    t_dy = quantize_operand(rht.transform(dy, 0), plain, axis=0)
    t_x = quantize_operand(rht.transform(x, 0), plain, axis=0)
    assert torch.equal(q_dy, rht.inverse(t_dy, 0))
    hardware = t_dy.double().T @ t_x.double()
    assert torch.allclose(q_dy.double().T @ q_x.double(), hardware, rtol=0, atol=1e-4)
    assert not torch.equal(q_dy, quantize_operand(dy, plain, axis=0))
