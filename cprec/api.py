"""cprec inside your own training loop: quantized layers, named schedules and the cost ledger.

The same parts `cprec train` assembles, without its run directory or Hydra:

```python
model = cprec.quantize(model)                       # the quant.* keys as keyword arguments
sched = cprec.schedule("cpt_cosine", 400)           # any conf/schedule/<name>.yaml
ledger = cprec.CostLedger(model, x[:1])             # MACs measured from a real input
for step in range(400):
    cprec.set_precision(model, *sched.bits(step))
    ...                                             # forward, backward, optimizer step
    ledger.add(len(x))
ledger.gbitops, ledger.relative_cost                # the numbers summary.json reports
```

Mistakes raise `cprec.errors.ConfigError` / `cprec.errors.CprecError` whose
message is the same single line the CLI prints.
"""

from __future__ import annotations

import difflib
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from cprec import cost
from cprec.config import QuantConfig, ScheduleConfig, check_bits, check_quant, require_choice
from cprec.errors import ConfigError, CprecError
from cprec.paths import config_dir
from cprec.precision.ladder import check_fits_quant, parse_ladder
from cprec.precision.schedules import PrecisionSchedule, build_schedule, check_schedule
from cprec.quant import QuantRNG, build_quantizer, layer_bits, quant_layers, quantize_model
from cprec.quant import set_precision as _set_layers
from cprec.quant.recipes import ladder_recipes
from cprec.quant.scaled import fake_quantize as _fake_quantize

__all__ = ["CostLedger", "Schedule", "fake_quantize", "quantize", "schedule", "set_precision"]

Options = TypeVar("Options", QuantConfig, ScheduleConfig)
LEARNED = ("ldp", "cpt_ldp")  # schedules whose bits are learned per layer, not a function of the step


def _typed(schema: type[Options], group: str, base: dict[str, Any], options: dict[str, Any]) -> Options:
    """``base`` then ``options`` over the schema's defaults; an unknown key or a wrong type is
    a one-line ConfigError naming ``group.key``, as the CLI's."""
    names = [f.name for f in fields(schema)]
    for key, value in options.items():
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3) or names
            raise ConfigError(f"{group}.{key}", value, f"no such option; did you mean one of {near}?")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), base, options)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = f"{group}.{e.key}" if getattr(e, "key", None) else group
        raise ConfigError(key, getattr(e, "value", None) or options.get(str(e.key)),
                          str(e.msg).splitlines()[0]) from None


def quantize(model: nn.Module, seed: int = 0, ladder: list | None = None,
             bw_ladder: list | None = None, **quant_options: Any) -> nn.Module:
    """Swap ``model``'s Conv2d/Linear layers for cprec's quantized ones, in place; return it.

    Keyword arguments are the ``quant.*`` keys (``format``, ``quantize_first``,
    ``quantize_last``, ``keep_full``, ``exp_bits`` ...), CPT's defaults otherwise: fixed point,
    first layer quantized, final classifier in full precision. ``seed`` seeds stochastic
    rounding of the errors (`cprec train` uses its run seed the same way). ``ladder`` /
    ``bw_ladder``: the formats a schedule over a ladder of formats will set (with
    ``format="scaled"``; docs "Ladders"), so the layers switch format with the bits. Layers
    start at 32/32 bits (full precision) until `set_precision` is called.
    """
    cfg = _typed(QuantConfig, "quant", {}, quant_options)
    check_quant(cfg)
    fw, bw = parse_ladder(ladder, "ladder"), parse_ladder(bw_ladder, "bw_ladder")
    for key, rungs in (("ladder", fw), ("bw_ladder", bw)):
        check_fits_quant(rungs, key, cfg.format)
    return quantize_model(model, build_quantizer(cfg, seed, ladder_recipes(cfg, fw, bw)),
                          QuantRNG(seed + 7919), cfg.quantize_first, cfg.quantize_last, cfg.keep_full)


def fake_quantize(x: torch.Tensor, fmt: str, axis: int = -1, scale_rule: str = "floor",
                  **spec: Any) -> torch.Tensor:
    """The quantize-dequantize of ``x`` in a scaled format, in blocks along ``axis``: float32
    in, float32 out, the values a low-precision GEMM reducing over ``axis`` would see. The
    same operation cprec's scaled layers apply to each GEMM operand.

    Definition: the elements along ``axis`` are cut into groups (blocks of ``block_size``
    consecutive elements, zero-padded at the end; rows; the whole tensor; 2-D tiles). Each
    group gets one scale from its amax = max |v|, each element v becomes
    round(v / X) saturated at the element's largest finite value, times X:

    - MX (``mxfp8_e4m3 mxfp8_e5m2 mxfp6_e2m3 mxfp6_e3m2 mxfp4 mxint8``; OCP MX v1.0): blocks
      of 32, X an E8M0 power of two. ``scale_rule="floor"`` (OCP):
      X = 2^(floor(log2 amax) - emax_elem), emax_elem 8, 15, 2, 4, 2, 0; ``rceil``:
      X = 2^ceil(log2(amax / max_elem)); ``ceil``, ``even`` as torchao's ScaleCalculationMode.
      An all-zero block gets X = 2^-127; a block holding a NaN is NaN.
    - ``nvfp4``: E2M1 in blocks of 16, a per-tensor scale t = amax_tensor / (448 * 6) and
      block scales E4M3(amax_block / 6 / t); X = t * block scale (``nvfp4_16x16``: 16x16 tiles).
    - ``fp8_e4m3_tensor fp8_e5m2_tensor fp8_e4m3_row fp8_e5m2_row``: an fp32 scale
      s = max_elem / amax per tensor or per row along ``axis``, X = 1 / s (torchao float8);
      ``fp8_e4m3_1x128 fp8_e4m3_128x128`` the DeepSeek-V3 tiles.

    Rounding is to nearest, ties to even, keeping the element's subnormals (or
    ``rounding="stochastic"``). Keyword ``spec`` fields override the format's
    (``block_size=16``, ``elem="e3m2"``, ``pow2=True``, ``hadamard=True`` ...; the fields of
    ``quant.operand``). Bitwise equal to torchao's ``MXTensor.to_mx(...).dequantize()`` and
    ``NVFP4Tensor`` where both define a value (docs "Number formats" lists the differences).

    Args:
        x: the tensor (any float dtype; computed in float32).
        fmt: a format name above, or an element name (``e4m3``, ``int8``, ``fixed6``) with
            the default MX blocks.
        axis: the dimension the blocks run along (the GEMM's reduction axis).
        scale_rule: ``floor``, ``rceil``, ``ceil`` or ``even`` (E8M0 scales only).
        **spec: OperandSpec fields overriding the format's.

    Returns:
        A float32 tensor shaped as ``x``.

    Raises:
        ConfigError: an unknown format, rule or field value (one line).
    """
    return _fake_quantize(x, fmt, axis, scale_rule, **spec)


def schedule_names() -> list[str]:
    """Every named schedule: the files of conf/schedule/."""
    return sorted(p.stem for p in (Path(config_dir()) / "schedule").glob("*.yaml"))


def _schedule_yaml(name: str) -> dict[str, Any]:
    """A schedule file with its ``defaults`` (other schedules it builds on) merged in first."""
    require_choice("schedule", name, schedule_names())
    raw = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "schedule" / f"{name}.yaml"))
    defaults = raw.pop("defaults", [])
    merged: dict[str, Any] = {}
    for parent in defaults if "_self_" in defaults else [*defaults, "_self_"]:  # Hydra's order
        merged.update(raw if parent == "_self_" else _schedule_yaml(parent))
    return merged


class Schedule:
    """A named schedule resolved for a run of ``total_steps`` steps: ``bits(step)`` gives the
    (forward, backward) bits of training step ``step`` (0-based), as `cprec train` sets them."""

    def __init__(self, name: str, resolved: PrecisionSchedule) -> None:
        self.name, self.resolved = name, resolved

    @property
    def total_steps(self) -> int:
        return self.resolved.total_steps

    def bits(self, step: int) -> tuple[int, int]:
        if not (isinstance(step, int) and 0 <= step < self.total_steps):
            raise CprecError(f"step {step!r} is outside the steps of schedule {self.name!r}: "
                             f"0..{self.total_steps - 1}")
        return self.resolved.bits_at(step)

    @property
    def fw_range(self) -> tuple[int, int]:
        """Lowest and highest forward bits the schedule uses."""
        return self.resolved.fw_range

    @property
    def bw_range(self) -> tuple[int, int]:
        return self.resolved.bw_range

    def __repr__(self) -> str:
        return (f"Schedule({self.name!r}, total_steps={self.total_steps}, fw={self.fw_range}, "
                f"bw={self.bw_range})")


def schedule(name: str, steps: int, **schedule_options: Any) -> Schedule:
    """The named schedule (``conf/schedule/<name>.yaml``) over ``steps`` training steps.

    Keyword arguments are the ``schedule.*`` keys (``min_bits``, ``max_bits``, ``cycles``,
    ``bits``, ``bw_bits`` ...). Bounds are ``min_bits``/``max_bits`` as given (pass a
    ``cprec prt`` result's ``lower_bits``/``upper_bits`` there); learned schedules (``ldp``,
    ``cpt_ldp``) need `cprec train`, whose loop trains their precision parameters.
    """
    if not (isinstance(steps, int) and steps > 0):
        raise ConfigError("steps", steps, "must be a positive number of training steps")
    cfg = _typed(ScheduleConfig, "schedule", _schedule_yaml(name), schedule_options)
    check_schedule(cfg)
    if cfg.kind in LEARNED:
        raise ConfigError("schedule", name, "learns per-layer bits inside cprec's training loop; "
                          f"use `cprec train schedule={name}`, or a schedule of the step alone here")
    if cfg.bounds == "prt":
        raise ConfigError("schedule.bounds", "prt", "the API takes bounds as min_bits= and max_bits= "
                          "(a cprec prt result's lower_bits and upper_bits)")
    return Schedule(name, build_schedule(cfg, steps))


def set_precision(model: nn.Module, fw_bits: int, bw_bits: int) -> None:
    """Give every quantized layer of ``model`` forward bits ``fw_bits`` (weights and
    activations) and backward bits ``bw_bits`` (errors) for the coming steps; 32 = full."""
    check_bits("fw_bits", fw_bits)
    check_bits("bw_bits", bw_bits)
    if not quant_layers(model):
        raise CprecError("the model has no quantized layers: call cprec.quantize(model) first")
    _set_layers(model, fw_bits, bw_bits)


class CostLedger:
    """A training run's exact cost in BitOPs (DESIGN.md "Cost accounting"), charged per step
    at the bits the model's layers hold when `add` is called.

    ``example_input`` is one real input batch (its first sample is used) or a tuple of the
    forward's arguments for one sample: MACs are measured from the shapes it produces.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor | tuple) -> None:
        self.model = model
        self.ledger = cost.CostLedger(cost.measure_macs(model, example_input))

    def add(self, batch_size: int) -> None:
        """Charge one training step of ``batch_size`` samples at the layers' current bits."""
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ConfigError("batch_size", batch_size, "must be a positive number of samples")
        self.ledger.add(layer_bits(self.model), batch_size)

    @property
    def bitops(self) -> int:
        return self.ledger.bitops

    @property
    def gbitops(self) -> float:
        """Total training BitOPs / 1e9 (summary.json's ``gbitops``)."""
        return self.ledger.gbitops

    @property
    def relative_cost(self) -> float:
        """Cost relative to the same steps at 32/32 bits (summary.json's ``relative_cost``)."""
        return self.ledger.relative_cost

    def per_layer(self) -> list[dict]:
        """Per layer: MACs, mean forward/backward bits, GBitOPs and share of the total."""
        return self.ledger.per_layer()

    def state_dict(self) -> dict:
        return self.ledger.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ledger.load_state_dict(state)
