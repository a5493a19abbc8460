"""A run's energy and modeled device time, from its cost ledger and its layers' shapes.

Per compute layer and training step of B samples, the three GEMMs (DESIGN.md "Cost
accounting": forward Y = W X, input gradient dX = W^T dY, weight gradient dW = dY X^T):
- compute: B * MACs per GEMM, each at the energy of its operand pair (weights and
  activations at the forward format, errors at the backward one);
- memory: each GEMM reads its two operands once and writes its result once in fp32
  (the weights: once per step; activations and errors: per sample).
Energy charges the formats' own widths (an accelerator built for them); modeled time runs
each GEMM as a roofline max(compute, memory) in the fastest data type the device has that
holds both operands, its operands moved at that data type's width (a 3-bit operand in an
INT8 GEMM moves 8 bits). Left out: caches and operand reuse inside a GEMM, scales'
arithmetic, non-GEMM work (normalization, activations, the optimizer), kernel launch and
communication. It says what the formats would cost on a device, not what a run measures.
"""

from __future__ import annotations

from cprec.config import QuantConfig
from cprec.cost import CostLedger, LayerShape
from cprec.hardware.devices import DEVICES, DTYPES, Device, gemm_dtype
from cprec.hardware.energy import mac_energy_pj, traffic_energy_pj
from cprec.hardware.formats import OperandFormat, layer_formats

RESULT_BITS = 32  # GEMM results (outputs, gradients) are written in fp32


def _gemms(s: LayerShape, batch: float, fw: OperandFormat, bw: OperandFormat) -> list[tuple]:
    """(MACs, operand a, a's elements, operand b, b's elements, result elements) per GEMM."""
    return [(batch * s.macs, fw, s.weights, fw, batch * s.inputs, batch * s.outputs),  # Y = W X
            (batch * s.macs, bw, batch * s.outputs, fw, s.weights, batch * s.inputs),  # dX = W^T dY
            (batch * s.macs, bw, batch * s.outputs, fw, batch * s.inputs, s.weights)]  # dW = dY X^T


def step_energy_j(shapes: dict[str, LayerShape], formats: dict[str, tuple[OperandFormat, OperandFormat]],
                  batch: float) -> float:
    """Joules of one training step of ``batch`` samples."""
    pj = 0.0
    for name, s in shapes.items():
        for macs, a, na, b, nb, nr in _gemms(s, batch, *formats[name]):
            bits = na * (a.bits + a.scale_bits) + nb * (b.bits + b.scale_bits) + nr * RESULT_BITS
            pj += macs * mac_energy_pj(a, b) + traffic_energy_pj(bits)
    return pj * 1e-12


def step_time_s(device: Device, shapes: dict[str, LayerShape],
                formats: dict[str, tuple[OperandFormat, OperandFormat]], batch: float) -> float:
    """Seconds of one training step on ``device``: a roofline per GEMM, summed."""
    total = 0.0
    for name, s in shapes.items():
        for macs, a, na, b, nb, nr in _gemms(s, batch, *formats[name]):
            dtype = gemm_dtype(device, a, b)
            width = DTYPES[dtype].bits
            moved = ((na + nb) * width + nr * RESULT_BITS) / 8
            total += max(2 * macs / device.peak[dtype], moved / device.bandwidth)
    return total


def run_hardware_cost(ledger: CostLedger, shapes: dict[str, LayerShape], quant: QuantConfig,
                      steps: int, devices: list[str], rungs: dict | None = None) -> dict[str, float]:
    """``energy_j`` and ``modeled_time_s.<device>`` of the steps the ledger recorded.

    The ledger counts samples per per-layer bits configuration; ``steps`` (the steps it
    holds) gives the batch, samples / steps, so the weights' traffic is charged per step."""
    total = sum(ledger.samples.values())
    out = {"energy_j": 0.0, **{f"modeled_time_s.{d}": 0.0 for d in devices}}
    if not total or not steps:
        return out
    batch = total / steps
    for config, samples in ledger.samples.items():
        formats = {n: layer_formats(quant, *bits, rungs) for n, bits in zip(ledger.names, config)}
        n_steps = samples / batch
        out["energy_j"] += n_steps * step_energy_j(shapes, formats, batch)
        for d in devices:
            out[f"modeled_time_s.{d}"] += n_steps * step_time_s(DEVICES[d], shapes, formats, batch)
    return out
