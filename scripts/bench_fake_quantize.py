"""What emulating a scaled format costs next to the GEMM it feeds, and next to torchao.

For each GEMM of a ResNet-20 step (CIFAR, batch 128: the three stages' 3x3 convolutions)
and of the Tiny Shakespeare Transformer LM (hidden 128, batch 128 x 35 tokens; plus a
GPT-2-small MLP for scale), in one process on one thread by default:

- ``gemm ms``: a plain fp32 ``torch.mm`` of the GEMM's shape (M x K) @ (K x N);
- ``cprec ms`` and ``/gemm``: ``cprec.quant.scaled.fake_quantize`` of both operands as the
  layer holds them (activation (batch, C, H, W) or (tokens, K), weight (N, K[, 3, 3])),
  blocks along the reduction axis, divided by the GEMM time;
- ``cprec 2d`` vs ``torchao 2d``: the same operands as the (rows, K) matrices torchao takes
  (channels last), cprec's fake_quantize next to torchao's ``MXTensor.to_mx(...)
  .dequantize()`` / ``NVFP4Tensor.to_nvfp4(...).dequantize()``; "n/a" where K is not a
  multiple of the block (torchao does not pad).

Times are the minimum over ``--repeats`` runs (the machine may be shared).

    OMP_NUM_THREADS=1 python scripts/bench_fake_quantize.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

import torch

from cprec.quant.scaled import fake_quantize

FORMATS = {"mxfp8": ("mxfp8_e4m3", torch.float8_e4m3fn), "mxfp4": ("mxfp4", torch.float4_e2m1fn_x2),
           "nvfp4": ("nvfp4", None)}
# name -> (activation shape, weight shape, reduction axis of both, (M, K, N) of the GEMM)
CASES = {
    "resnet20 stage1 conv": ((128, 16, 32, 32), (16, 16, 3, 3), 1, (128 * 32 * 32, 144, 16)),
    "resnet20 stage2 conv": ((128, 32, 16, 16), (32, 32, 3, 3), 1, (128 * 16 * 16, 288, 32)),
    "resnet20 stage3 conv": ((128, 64, 8, 8), (64, 64, 3, 3), 1, (128 * 8 * 8, 576, 64)),
    "lm qkv (4480x128x384)": ((4480, 128), (384, 128), -1, (4480, 128, 384)),
    "lm mlp up (4480x128x512)": ((4480, 128), (512, 128), -1, (4480, 128, 512)),
    "lm mlp down (4480x512x128)": ((4480, 512), (128, 512), -1, (4480, 512, 128)),
    "gpt2-s mlp (4096x768x3072)": ((4096, 768), (3072, 768), -1, (4096, 768, 3072)),
}


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def torchao_fn(fmt: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """torchao's emulated quantize-dequantize for ``fmt`` (None without torchao)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.mx_formats.mx_tensor import MXTensor
            from torchao.prototype.mx_formats.nvfp4_tensor import (
                NVFP4Tensor,
                per_tensor_amax_to_scale,
            )
    except ImportError:
        return None
    if fmt == "nvfp4":
        return lambda x: NVFP4Tensor.to_nvfp4(
            x, 16, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max())).dequantize(torch.float32)
    dtype = FORMATS[fmt][1]
    return lambda x: MXTensor.to_mx(x, dtype, 32).dequantize(torch.float32)


def row(name: str, fmt: str, repeats: int) -> str:
    act_shape, w_shape, axis, (m, k, n) = CASES[name]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(act_shape, generator=g), torch.randn(w_shape, generator=g)
    a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    spec = FORMATS[fmt][0]
    gemm = best_ms(lambda: torch.mm(a, b), repeats)
    cprec = best_ms(lambda: (fake_quantize(x, spec, axis=axis), fake_quantize(w, spec, axis=axis)),
                    repeats)
    x2, w2 = (t.movedim(axis, -1).contiguous().reshape(-1, t.shape[axis]) for t in (x, w))
    block = 16 if fmt == "nvfp4" else 32
    ao = torchao_fn(fmt)
    if ao is None or x2.shape[-1] % block:
        c2d = ao2d = "n/a"
    else:
        c2d = f"{best_ms(lambda: (fake_quantize(x2, spec), fake_quantize(w2, spec)), repeats):.2f}"
        ao2d = f"{best_ms(lambda: (ao(x2), ao(w2)), repeats):.2f}"
    return (f"{name:28s} {fmt:6s} {gemm:9.2f} {cprec:9.2f} {cprec / gemm:7.2f} "
            f"{c2d:>9s} {ao2d:>10s}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), min of {args.repeats} runs; ms")
    print(f"{'case':28s} {'format':6s} {'gemm ms':>9s} {'cprec ms':>9s} {'/gemm':>7s} "
          f"{'cprec 2d':>9s} {'torchao 2d':>10s}")
    for name in CASES:
        for fmt in FORMATS:
            print(row(name, fmt, args.repeats), flush=True)


if __name__ == "__main__":
    main()
