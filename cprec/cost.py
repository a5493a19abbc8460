"""Exact training cost in BitOPs (DESIGN.md "Cost accounting", a contract).

A training step of batch B at forward bits a_l and backward bits g_l costs, per
Conv/Linear layer l, ``B * MACs_l * (a_l*a_l + 2*a_l*g_l)`` BitOPs: the forward pass, the
error back-propagation and the weight gradient. Full-precision layers count 32/32.
Evaluation is not training cost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from cprec.quant import compute_layers

FULL_PRECISION_BITOPS = 32 * 32 * 3


@dataclass(frozen=True)
class LayerShape:
    """One compute layer's sizes per sample, measured from a real forward pass."""

    macs: int
    weights: int  # weight elements
    inputs: int  # input activation elements per sample
    outputs: int  # output elements per sample


def measure_shapes(model: nn.Module, sample: torch.Tensor | tuple) -> dict[str, LayerShape]:
    """Every Conv2d/Linear's MACs and sizes per sample, from the shapes of a real forward pass.

    ``sample`` is a batch of one real input (its first sample is used), or a tuple of the
    forward's arguments for one sample (token windows with a state, a whole graph). A layer
    called several times (an LSTM cell over time steps) sums its calls. The model's state is
    left untouched.
    """
    seen: dict[str, list[int]] = {}
    hooks = []
    for name, layer in compute_layers(model).items():
        def hook(mod: nn.Module, inputs: tuple, out: torch.Tensor, name: str = name) -> None:
            s = seen.setdefault(name, [0, mod.weight.numel(), 0, 0])
            s[0] += out.numel() * mod.weight[0].numel()  # (cin/groups)*kh*kw conv, in_features linear
            s[2] += inputs[0].numel()
            s[3] += out.numel()
        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*sample) if isinstance(sample, tuple) else model(sample[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return {n: LayerShape(*v) for n, v in seen.items()}


def measure_macs(model: nn.Module, sample: torch.Tensor | tuple) -> dict[str, int]:
    """MACs per sample of every Conv2d/Linear (``measure_shapes``'s first field)."""
    return {n: s.macs for n, s in measure_shapes(model, sample).items()}


def step_bitops(macs: dict[str, int], bits: dict[str, tuple[int, int]], batch: int) -> int:
    """BitOPs of one training step of ``batch`` samples at per-layer (forward, backward) bits."""
    return batch * sum(m * (bits[n][0] ** 2 + 2 * bits[n][0] * bits[n][1]) for n, m in macs.items())


class CostLedger:
    """Accumulates a run's training BitOPs exactly (integers), per layer on demand."""

    def __init__(self, macs: dict[str, int]) -> None:
        self.macs = macs
        self.names = list(macs)
        self.samples: Counter[tuple] = Counter()  # per-layer bits config -> samples trained
        self._bitops_cache: dict[tuple, int] = {}

    def add(self, bits: dict[str, tuple[int, int]], batch: int) -> None:
        """Record one step of ``batch`` samples at per-layer (forward, backward) ``bits``."""
        self.samples[tuple(bits[n] for n in self.names)] += batch

    def _per_sample(self, config: tuple) -> int:
        if config not in self._bitops_cache:
            self._bitops_cache[config] = step_bitops(self.macs, dict(zip(self.names, config)), 1)
        return self._bitops_cache[config]

    @property
    def bitops(self) -> int:
        return sum(self._per_sample(c) * n for c, n in self.samples.items())

    @property
    def full_precision_bitops(self) -> int:
        return sum(self.samples.values()) * sum(self.macs.values()) * FULL_PRECISION_BITOPS

    @property
    def gbitops(self) -> float:
        return self.bitops / 1e9

    @property
    def relative_cost(self) -> float:
        full = self.full_precision_bitops
        return self.bitops / full if full else 1.0

    def per_layer(self) -> list[dict]:
        """Per-layer breakdown: MACs, mean bits over the samples trained, share of the cost."""
        total = self.bitops or 1
        trained = sum(self.samples.values()) or 1
        rows = []
        for i, name in enumerate(self.names):
            m = self.macs[name]
            ops = sum(n * m * (c[i][0] ** 2 + 2 * c[i][0] * c[i][1]) for c, n in self.samples.items())
            rows.append({
                "name": name, "macs": m,
                "bits_fw_mean": sum(n * c[i][0] for c, n in self.samples.items()) / trained,
                "bits_bw_mean": sum(n * c[i][1] for c, n in self.samples.items()) / trained,
                "gbitops": ops / 1e9, "share": ops / total,
            })
        return rows

    def state_dict(self) -> dict:
        return {"samples": [[list(map(list, c)), n] for c, n in self.samples.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = Counter({tuple(tuple(b) for b in c): n for c, n in state["samples"]})
