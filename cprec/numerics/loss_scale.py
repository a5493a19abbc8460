"""Loss scaling where errors are rounded: static, dynamic (GradScaler's rule), adaptive.

cprec keeps the tensors between layers in fp32 and rounds each quantized layer's error (the
gradient w.r.t. its output) to the simulated float format at one point, just before the
layer's own backward (modules.py). Backward is linear in the error, so a loss scale s changes
exactly one thing there: the error is rounded as ``Q(s * g)`` instead of ``Q(g)``. This module
installs itself at those points (``layer.error_tap``) and rounds ``Q(s * g) / s``: the same
rounding a real loss scale gives, with the weight and input gradients already unscaled (no
division of the weight gradients afterwards, and the fp32 update sees what it would see).

- ``static``: s = ``loss_scale.scale`` at every layer.
- ``dynamic``: s = S(t) with torch.amp.GradScaler's rule: an overflow (a scaled error beyond
  the format's largest finite value, or not finite) at any layer (of any rank, data
  parallel) skips the optimizer step and multiplies S by ``backoff_factor``;
  ``growth_interval`` clean steps multiply it by ``growth_factor``.
- ``adaptive`` (Zhao et al., PAPERS.md 4): layer l's error arrives carrying the scale S_prev
  of the layers after it (the loss's own scale for the last ones; where branches join, the
  smallest of theirs: residual_join in the README); l multiplies it by alpha computed from
  that scaled error (``adaptive_alpha``), so it is rounded at S_l = alpha * S_prev.
  Recomputed every ``loss_scale.update_every`` steps, reused in between.

Telemetry counts, per layer, the nonzero errors that the format rounds to zero (underflow)
and those beyond its largest finite value (overflow), over every training step between two
evaluations; it costs a few element-wise passes per error, paid only when on.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import nn

from cprec.config import TrainConfig, require, require_choice
from cprec.engine.collectives import any_rank
from cprec.engine.step import StepPlugin
from cprec.numerics.error_stats import LOSS, ErrorCounts, nearest_consumers

SCALERS = ("none", "static", "dynamic", "adaptive")


def check_loss_scale(cfg: TrainConfig) -> None:
    """The ``loss_scale`` group's values, and that scaling can act on this run's errors."""
    ls = cfg.loss_scale
    require_choice("loss_scale", ls.name, SCALERS)
    require(ls.scale > 0, "loss_scale.scale", ls.scale, "must be positive")
    require(ls.init_scale > 0, "loss_scale.init_scale", ls.init_scale, "must be positive")
    require(ls.growth_factor > 1, "loss_scale.growth_factor", ls.growth_factor, "must be > 1")
    require(0 < ls.backoff_factor < 1, "loss_scale.backoff_factor", ls.backoff_factor,
            "must be in (0, 1)")
    for key in ("growth_interval", "update_every"):
        require(getattr(ls, key) > 0, f"loss_scale.{key}", getattr(ls, key), "must be positive")
    require(0 < ls.target_underflow < 1, "loss_scale.target_underflow", ls.target_underflow,
            "a rate in (0, 1)")
    for key in ("accum_bound", "layer_bound"):
        bound = getattr(ls, key)
        require(bound is None or bound >= 1, f"loss_scale.{key}", bound, "must be >= 1 or null")
    if ls.name == "none" and not ls.telemetry:
        return
    # before the checks below, whose fixes (a float quant, schedule=static) amp refuses
    require(ls.name == "none" or cfg.amp.name == "off", "loss_scale", ls.name, "loss scaling "
            f"applies to simulated float errors, and amp={cfg.amp.name} computes in real torch "
            "dtypes (amp=fp16 scales with torch's own GradScaler); use loss_scale=none with amp")
    key, value = ("loss_scale", ls.name) if ls.name != "none" else ("loss_scale.telemetry", True)
    require(cfg.quant.format == "float", key, value, "errors are fixed point here (quant.format="
            "fixed: a per-tensor min..max grid, which no scale changes); use a float quant "
            "(e.g. quant=fp8_e4m3) or loss_scale=none")
    require(cfg.quant.quantize_errors, key, value, "errors are not rounded (quant.quantize_errors="
            "false), so there is nothing to scale or count; use quant.quantize_errors=true or "
            "loss_scale=none")
    require(cfg.schedule.kind != "fp32", key, value, "schedule=fp32 rounds no errors; use "
            "schedule=static with a float quant")


def min_subnormal(fmt: Any) -> float:
    """The smallest positive value of a FloatFormat (its smallest subnormal)."""
    return 2.0 ** (fmt.min_exp - fmt.man_bits)


def underflow_threshold(target: float) -> float:
    """sqrt(2) erfinv(T_uf): P(|g| < t sigma) = T_uf for g ~ N(0, sigma^2) at t = this."""
    return math.sqrt(2) * torch.special.erfinv(torch.tensor(target, dtype=torch.float64)).item()


def adaptive_alpha(error: torch.Tensor, prev: torch.Tensor, u_min: float, u_max: float,
                   threshold: float, accum_bound: float, layer_bound: float) -> torch.Tensor:
    """One layer's factor alpha (0-dim tensor, a power of two) for ``error`` (true values)
    arriving with scale ``prev``, as ada-loss's get_loss_scale_by_approx_range and
    bound_loss_scale_by_heuristics: u_min / (threshold * sigma), at least 1, alpha * max|g|
    at most u_max, alpha * prev at most accum_bound, alpha at most layer_bound, rounded down
    to a power of two. sigma is the scaled error's standard deviation; an all-zero or
    non-finite error gets 1."""
    g = error.detach().float()
    sigma = g.std(correction=0) * prev
    alpha = torch.where(sigma > 0, u_min / (threshold * sigma), torch.ones_like(sigma))
    alpha = torch.minimum(alpha.clamp_min(1.0), u_max / (g.abs().amax() * prev))
    alpha = torch.minimum(alpha, accum_bound / prev).clamp_max(layer_bound)
    alpha = torch.exp2(torch.floor(torch.log2(alpha)))
    return torch.where(torch.isfinite(alpha), alpha, torch.ones_like(alpha))


def join_scale(branches: torch.Tensor, error: torch.Tensor, u_max: float) -> torch.Tensor:
    """The one scale an error joined from branches carrying ``branches`` (1-d) continues with:
    as ada-loss's ``rescaling``, the largest of them at which the error stays within u_max,
    else the smallest (0-dim tensor; one branch: its own scale)."""
    if len(branches) == 1:
        return branches[0]
    fits = branches * error.detach().abs().amax() <= u_max
    largest = torch.where(fits, branches, torch.zeros_like(branches)).amax()
    return torch.where(fits.any(), largest, branches.amin())


class StaticScale:
    """One scale at every layer, all run long (``none`` is this at 1 with nothing scaled)."""

    watches_overflow = False

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def begin_step(self) -> None:
        pass

    def scale_for(self, name: str, error: torch.Tensor) -> float | torch.Tensor:
        return self.scale

    def end_step(self, overflow: bool) -> None:
        pass

    def metrics(self) -> dict[str, Any]:
        return {"loss_scale": self.scale}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DynamicScale(StaticScale):
    """torch.amp.GradScaler's rule on the simulated format: x backoff and skip the step on an
    overflow, x growth after ``growth_interval`` clean steps in a row."""

    watches_overflow = True

    def __init__(self, init_scale: float, growth: float, backoff: float, interval: int) -> None:
        super().__init__(init_scale)
        self.growth, self.backoff, self.interval = growth, backoff, interval
        self.tracker = 0  # clean steps since the last change
        self.skipped = 0

    def end_step(self, overflow: bool) -> None:
        if overflow:
            self.scale *= self.backoff
            self.tracker = 0
            self.skipped += 1
            return
        self.tracker += 1
        if self.tracker == self.interval:
            self.scale *= self.growth
            self.tracker = 0

    def metrics(self) -> dict[str, Any]:
        return {"loss_scale": self.scale, "skipped_steps": self.skipped}

    def state_dict(self) -> dict:
        return {"scale": self.scale, "tracker": self.tracker, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.tracker, self.skipped = state["scale"], state["tracker"], state["skipped"]


class AdaptiveScale:
    """Per-layer scales accumulated down the network (module docstring), recomputed on the
    steps ``t`` with ``t % update_every == 0`` and reused in between."""

    watches_overflow = False

    def __init__(self, names: list[str], cfg: Any, fmt: Any, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.bounds = (min_subnormal(fmt), fmt.max_value, underflow_threshold(cfg.target_underflow),
                       cfg.accum_bound or math.inf, cfg.layer_bound or math.inf)
        self.scales = {n: self._tensor(cfg.scale) for n in [LOSS, *names]}
        self.consumers: dict[str, list[str]] = {}
        self.step, self.due = 0, False

    def _tensor(self, value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float32, device=self.device)

    def begin_step(self) -> None:
        self.due = self.step % self.cfg.update_every == 0

    def scale_for(self, name: str, error: torch.Tensor) -> torch.Tensor:
        if self.due:
            branches = torch.stack([self.scales[k] for k in self.consumers.get(name, [LOSS])])
            prev = join_scale(branches, error, self.bounds[1])
            self.scales[name] = adaptive_alpha(error, prev, *self.bounds) * prev
        return self.scales[name]

    def end_step(self, overflow: bool) -> None:
        self.step += 1

    def layer_scales(self) -> dict[str, float]:
        return {n: float(s) for n, s in self.scales.items() if n != LOSS}

    def metrics(self) -> dict[str, Any]:
        return {"loss_scale_layers": self.layer_scales()}

    def state_dict(self) -> dict:
        return {"scales": self.layer_scales(), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.scales.update({n: self._tensor(v) for n, v in state["scales"].items()})
        self.step = state["step"]


class LossScaling(StepPlugin):
    """The loss scale at every error-rounding point, the dynamic rule's skipped steps, and the
    underflow/overflow telemetry (module docstring); ``state_dict`` carries all of it."""

    name = "loss_scale"

    def __init__(self, model: nn.Module, rule: Any, fmt: Any, count: bool) -> None:
        from cprec.quant import quant_layers

        self.rule, self.u_max = rule, fmt.max_value
        self.layers = quant_layers(model)
        self.counts = ErrorCounts(list(self.layers)) if count else None
        self.flags: list[torch.Tensor] = []  # this step's overflow flags (dynamic)
        self.overflow = False
        self.scaling = not (isinstance(rule, StaticScale) and not rule.watches_overflow
                            and rule.scale == 1.0)
        self._hooks, self._nodes = [], {}
        for name, layer in self.layers.items():
            layer.error_tap = partial(self.round, name)
            if isinstance(rule, AdaptiveScale):  # the graph's shape, learned on the first step
                self._hooks.append(layer.register_forward_hook(partial(self._node, name)))

    def _node(self, name: str, module: nn.Module, inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            self._nodes[out.grad_fn] = name

    def round(self, name: str, round_error: Any, error: torch.Tensor, bits: int,
              key: torch.Tensor) -> torch.Tensor:
        """The layer's error rounding under scale s: Q(s * g) / s, counted when asked."""
        s = self.rule.scale_for(name, error) if self.scaling else 1.0
        scaled = error * s if self.scaling else error
        rounded = round_error(scaled, bits, key)
        if self.counts is not None or self.rule.watches_overflow:
            over = ~(scaled.abs() <= self.u_max)  # beyond the largest finite value, or NaN
            if self.rule.watches_overflow:
                self.flags.append(over.any())
            if self.counts is not None:
                self.counts.add(name, error, rounded, over)
        return rounded / s if self.scaling else rounded

    def loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        if self._hooks and loss.grad_fn is not None:
            self.rule.consumers = nearest_consumers(loss, self._nodes)
            for hook in self._hooks:
                hook.remove()
            self._hooks, self._nodes = [], {}
        self.rule.begin_step()
        self.flags = []
        return loss

    def before_update(self, optimizer: torch.optim.Optimizer) -> bool:
        """Skip on an overflow in any layer of any rank (data parallel: one verdict for the
        group, so every rank skips the same steps and keeps one scale)."""
        if not self.rule.watches_overflow:
            return True
        seen = torch.stack(self.flags).any() if self.flags else torch.tensor(False)
        self.overflow = bool(any_rank(seen))
        return not self.overflow

    def after_update(self, updated: bool) -> None:
        self.rule.end_step(self.overflow)
        self.flags = []

    def metrics(self) -> dict[str, Any]:
        return {**self.rule.metrics(), **(self.counts.fold() if self.counts else {})}

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in self.rule.metrics().items()}
        return {**out, **(self.counts.run_rates() if self.counts else {})}

    def state_dict(self) -> dict:
        return {"rule": self.rule.state_dict(),
                "counts": self.counts.state_dict() if self.counts else None}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.rule.load_state_dict(state["rule"])
            if self.counts is not None and state["counts"] is not None:
                device = next(iter(self.layers.values())).weight.device
                self.counts.load_state_dict(state["counts"], device)


def build_loss_scaling(parts: Any) -> LossScaling | None:
    """The plugin ``loss_scale`` asks for (None: no scaling and no telemetry)."""
    from cprec.quant import build_quantizer, quant_layers

    cfg: TrainConfig = parts.cfg
    ls = cfg.loss_scale
    count = ls.telemetry if ls.telemetry is not None else ls.name != "none"
    if ls.name == "none" and not count:
        return None
    fmt = build_quantizer(cfg.quant).error_fmt
    names = list(quant_layers(parts.model))
    rule = {"none": lambda: StaticScale(1.0), "static": lambda: StaticScale(ls.scale),
            "dynamic": lambda: DynamicScale(ls.init_scale, ls.growth_factor, ls.backoff_factor,
                                            ls.growth_interval),
            "adaptive": lambda: AdaptiveScale(names, ls, fmt, parts.device)}[ls.name]()
    return LossScaling(parts.model, rule, fmt, count)
