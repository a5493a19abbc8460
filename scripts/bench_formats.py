"""What a scaled recipe costs in a whole training step, next to the fp32 step, and next to
torchao's emulation of the same Linear step.

In one process, on one thread by default:

- ResNet-20 (CIFAR shape, batch 128) and the Transformer LM (Tiny Shakespeare shape:
  hidden 128, 2 blocks, 65 symbols, batch 128 x 35 tokens): the time of one SGD step
  (forward, backward, update) under ``mxfp8 mxfp4 nvfp4 fp8_delayed`` (the conf/quant
  recipes, as ``cprec train quant=<name> schedule=static`` builds them) divided by the
  fp32 step of the same model;
- one Linear layer's training step (4480 x 128 -> 512, the LM's MLP) in MXFP8 (E4M3,
  blocks of 32, floor scales): torchao's ``MXFP8Linear`` with emulated kernels
  (``KernelPreference.EMULATED``, torchao.prototype.moe_training) next to cprec's QLinear
  with ``quant=mxfp8``, both divided by the fp32 Linear step.

Times are the median of ``--repeats`` steps after ``--warmup`` (the machine may be shared:
say so when reporting).

    OMP_NUM_THREADS=1 python scripts/bench_formats.py [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from cprec import api
from cprec.config import ModelConfig, QuantConfig
from cprec.engine.memory import keep_freed_memory
from cprec.models import build_model
from cprec.numerics.scaled_step import ScaledFormats
from cprec.paths import config_dir
from cprec.quant import format_bits
from cprec.tasks.base import DatasetInfo

RECIPES = ("mxfp8", "mxfp4", "nvfp4", "fp8_delayed")


def recipe_options(name: str) -> dict:
    """conf/quant/<name>.yaml as ``cprec.quantize`` keyword arguments."""
    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "quant" / f"{name}.yaml"))


def quantized(model: nn.Module, recipe: str | None) -> tuple[nn.Module, Callable[[], None]]:
    """A copy of ``model`` under ``recipe`` (None: fp32) and what runs after each step."""
    model = copy.deepcopy(model)
    if recipe is None:
        return model, lambda: None
    options = recipe_options(recipe)
    api.quantize(model, **options)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QuantConfig), options))
    api.set_precision(model, *format_bits(cfg))
    plugin = ScaledFormats(model)
    return model, lambda: plugin.after_update(True)


def step_ms(model: nn.Module, after: Callable[[], None], batch: Callable[[], tuple],
            loss_fn: Callable, repeats: int, warmup: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for i in range(warmup + repeats):
        x, y = batch()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()
        after()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def image_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def model_rows(repeats: int, warmup: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    resnet = build_model(ModelConfig(name="resnet20"), DatasetInfo("cifar10", 3, 32, 10))
    lm = build_model(ModelConfig(name="transformer_lm", hidden=128, dropout=0.1),
                     DatasetInfo("tiny_shakespeare", 1, 35, 65))
    images = (torch.randn(128, 3, 32, 32, generator=g), torch.randint(0, 10, (128,), generator=g))
    tokens = torch.randint(0, 65, (128, 36), generator=g)
    cases = {"ResNet-20, batch 128": (resnet, lambda: images, image_loss),
             "Transformer LM, 128 x 35": (lm, lambda: (tokens[:, :-1], tokens[:, 1:]), lm_loss)}
    rows = []
    for name, (model, batch, loss) in cases.items():
        fp32 = step_ms(*quantized(model, None), batch, loss, repeats, warmup)
        cells = [f"{step_ms(*quantized(model, r), batch, loss, repeats, warmup) / fp32:.2f}x"
                 for r in RECIPES]
        rows.append(f"| {name} | {fp32:.0f} | " + " | ".join(cells) + " |")
    return rows


def linear_row(repeats: int, warmup: int) -> str:
    """fp32, torchao MXFP8Linear (emulated) and cprec's mxfp8 QLinear: one Linear step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear
        from torchao.prototype.mx_formats.config import ScaleCalculationMode
        from torchao.quantization.quantize_.common.kernel_preference import KernelPreference
    torch.manual_seed(0)
    base = nn.Linear(128, 512)
    ao = MXFP8Linear(128, 512, kernel_preference=KernelPreference.EMULATED,
                     scale_calculation_mode=ScaleCalculationMode.FLOOR)
    ao.load_state_dict(base.state_dict())
    x = torch.randn(4480, 128)
    dy = torch.randn(4480, 512)

    def loss(model: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        return (model(x) * dy).sum()

    batch = lambda: (x.clone().requires_grad_(), dy)  # noqa: E731
    fp32 = step_ms(base, lambda: None, batch, loss, repeats, warmup)
    theirs = step_ms(ao, lambda: None, batch, loss, repeats, warmup)
    ours = cprec_linear_ms(base, batch, loss, repeats, warmup)
    return (f"| Linear 4480x128 -> 512, MXFP8 | {fp32:.1f} | torchao {theirs:.1f} ms "
            f"({theirs / fp32:.2f}x) | cprec {ours:.1f} ms ({ours / fp32:.2f}x) |")


def cprec_linear_ms(base: nn.Linear, batch: Callable[[], tuple], loss: Callable, repeats: int,
           warmup: int) -> float:
    """cprec's mxfp8 step of the single Linear (quantize_first and quantize_last: it is
    both the model's first and last compute layer)."""
    model = nn.Sequential(copy.deepcopy(base))
    options = {**recipe_options("mxfp8"), "quantize_last": True}
    api.quantize(model, **options)
    api.set_precision(model, 8, 8)
    return step_ms(model, lambda: None, batch, loss, repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `cprec train` does: freed memory reused, no page faults per op
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats} steps")
    print("| model | fp32 step ms | " + " | ".join(RECIPES) + " |")
    print("|---|---|" + "---|" * len(RECIPES))
    for line in model_rows(args.repeats, args.warmup):
        print(line, flush=True)
    print()
    print("| one Linear step | fp32 ms | torchao (emulated) | cprec |")
    print("|---|---|---|---|")
    print(linear_row(args.repeats, args.warmup))


if __name__ == "__main__":
    main()
