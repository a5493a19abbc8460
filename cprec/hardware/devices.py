"""Named devices: dense peak throughput per data type and memory bandwidth, from the
vendors' datasheets (dense figures: the datasheets' "with sparsity" numbers halved).

- h100: NVIDIA H100 Tensor Core GPU datasheet (2023), H100 SXM column: FP32 67 TFLOPS,
  TF32 989 / BF16 1,979 / FP16 1,979 / FP8 3,958 TFLOPS and INT8 3,958 TOPS with sparsity;
  HBM3 3.35 TB/s.
- a100: NVIDIA A100 Tensor Core GPU datasheet (2021), A100 80GB SXM: FP32 19.5 TFLOPS,
  TF32 156, BF16/FP16 312 TFLOPS, INT8 624 TOPS (dense); HBM2e 2,039 GB/s. No FP8.
- b200: NVIDIA DGX B200 datasheet (2024), per GPU (the system's figures / 8): FP4 9 PFLOPS,
  FP8/FP6 4.5 PFLOPS, INT8 4.5 POPS, BF16/FP16 2.25 PFLOPS, TF32 1.1 PFLOPS dense; FP32 80
  TFLOPS; HBM3e 8 TB/s.
- mi300x: AMD Instinct MI300X data sheet (2023): FP32 matrix 163.4 TFLOPS, TF32 653.7,
  BF16/FP16 1,307.4, FP8 2,614.9 TFLOPS, INT8 2,614.9 TOPS (dense); HBM3 5.3 TB/s.
"""

from __future__ import annotations

from dataclasses import dataclass

from cprec.config import require_choice
from cprec.hardware.formats import FP32, OperandFormat, holds

DTYPES: dict[str, OperandFormat] = {
    "fp32": FP32,
    "tf32": OperandFormat("float", 19, 8, 10),
    "bf16": OperandFormat("float", 16, 8, 7),
    "fp16": OperandFormat("float", 16, 5, 10),
    "fp8_e4m3": OperandFormat("float", 8, 4, 3),
    "fp8_e5m2": OperandFormat("float", 8, 5, 2),
    "fp6_e2m3": OperandFormat("float", 6, 2, 3),
    "fp6_e3m2": OperandFormat("float", 6, 3, 2),
    "fp4_e2m1": OperandFormat("float", 4, 2, 1),
    "int8": OperandFormat("int", 8),
}

T = 1e12


@dataclass(frozen=True)
class Device:
    name: str
    peak: dict[str, float]  # data type -> dense operations (multiply and add: 2 per MAC) per second
    bandwidth: float  # memory bytes per second


def _fp8(rate: float) -> dict[str, float]:
    return {"fp8_e4m3": rate, "fp8_e5m2": rate}


DEVICES: dict[str, Device] = {
    "h100": Device("NVIDIA H100 SXM", {"fp32": 67 * T, "tf32": 494.5 * T, "bf16": 989.5 * T,
                                       "fp16": 989.5 * T, **_fp8(1979 * T), "int8": 1979 * T}, 3.35e12),
    "a100": Device("NVIDIA A100 80GB SXM", {"fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T,
                                            "fp16": 312 * T, "int8": 624 * T}, 2.039e12),
    "b200": Device("NVIDIA B200", {"fp32": 80 * T, "tf32": 1100 * T, "bf16": 2250 * T, "fp16": 2250 * T,
                                   **_fp8(4500 * T), "fp6_e2m3": 4500 * T, "fp6_e3m2": 4500 * T,
                                   "fp4_e2m1": 9000 * T, "int8": 4500 * T}, 8e12),
    "mi300x": Device("AMD Instinct MI300X", {"fp32": 163.4 * T, "tf32": 653.7 * T, "bf16": 1307.4 * T,
                                             "fp16": 1307.4 * T, **_fp8(2614.9 * T), "int8": 2614.9 * T},
                     5.3e12),
}


def gemm_dtype(device: Device, a: OperandFormat, b: OperandFormat) -> str:
    """The fastest data type of ``device`` that holds both operands exactly (fp32 always does);
    of equally fast ones, one of the operands' kind (INT8 for integers, FP8 for floats)."""
    fits = [d for d in device.peak if holds(DTYPES[d], a) and holds(DTYPES[d], b)]
    return max(fits, key=lambda d: (device.peak[d], DTYPES[d].kind == a.kind))


def check_devices(names: list[str]) -> None:
    """``cost.devices``: every name one of DEVICES (one-line ConfigError otherwise)."""
    for name in names:
        require_choice("cost.devices", name, DEVICES)
