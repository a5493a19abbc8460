"""Learnable dynamic precision (LDP, PAPERS.md 3) and CPT+LDP: per-layer forward bits learned
during training, held to a training-cost target in BitOPs.

Each quantized layer l has a parameter p_l in [0, 1]. Its forward bits are
  ldp:     b_l = clamp(round(min_bits + p_l (max_bits - min_bits)), min_bits, max_bits)
  cpt_ldp: b_l = clamp(round(b_t + d_l), min_bits, max_bits), d_l = (2 p_l - 1) max_offset,
           b_t CPT's cyclic base precision of step t;
errors stay at ``bw_bits``. Rounding and clamping pass gradients straight through, and the
task loss reaches p_l through the quantization step size range / (2^b - 1): with the rounding
itself straight through, dQ(v)/d log(2^b - 1) = v - Q(v) for every quantized weight and input
v (``_LearnedStep``). The cost control is ``CostControl`` (README "Learnable dynamic
precision" states the rule). ``LearnedPrecision`` has ScheduledPrecision's methods (the plug
point of scheduled.py); ``LDPStep`` is the step plugin that updates p after each step and
adds the LDP fields to metrics.jsonl and summary.json.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from cprec.config import ScheduleConfig
from cprec.cost import step_bitops
from cprec.engine.collectives import sum_over_ranks
from cprec.engine.step import StepPlugin
from cprec.precision.scheduled import LastLayer, LayerBits
from cprec.precision.schedules import PrecisionSchedule
from cprec.quant import compute_layers, layer_bits, quant_layers, set_precision
from cprec.quant.fixed import StraightThrough
from cprec.quant.quantizers import FULL, Quantizer

log = logging.getLogger("cprec")


class _LearnedStep(torch.autograd.Function):
    """``apply(x, w, u, xq, wq)``: forward xq and wq; backward the identity into x and w (the
    straight-through estimator) and into u = log(2^b - 1) the sum over both tensors of
    grad * (v - Q(v)), the derivative through the step size (range / (2^b - 1))."""

    @staticmethod
    def forward(ctx, x, w, u, xq, wq):
        ctx.save_for_backward(x, w, xq, wq)
        return xq, wq

    @staticmethod
    def backward(ctx, gx, gw):
        x, w, xq, wq = ctx.saved_tensors
        gu = torch.zeros((), dtype=torch.float32, device=x.device)
        if gx is not None:
            gu = gu + (gx * (x - xq)).sum()
        if gw is not None:
            gu = gu + (gw * (w - wq)).sum()
        return gx, gw, gu, None, None


class LearnedBitsQuantizer(Quantizer):
    """A learned layer's quantizer: the model's fixed-point one, plus the gradient into its
    p_l in training. Never the one-node conv path (it would drop that gradient)."""

    one_node = False

    def __init__(self, base: Quantizer, owner: LearnedPrecision, index: int) -> None:
        self.base, self.owner, self.index = base, owner, index
        self.quantize_errors = base.quantize_errors

    def inputs(self, layer, x: torch.Tensor, weight: torch.Tensor, ste: bool):
        xq, wq = self.base.inputs(layer, x, weight, False)
        u = self.owner.u
        if not ste:
            return xq, wq
        if u is not None and layer.training and torch.is_grad_enabled():
            return _LearnedStep.apply(x, weight, u[self.index], xq, wq)
        return StraightThrough.apply(x, weight, xq, wq)

    def round_error(self, error: torch.Tensor, bits: int, key: torch.Tensor) -> torch.Tensor:
        return self.base.round_error(error, bits, key)

    def error_rounding(self, bits: int):
        return self.base.error_rounding(bits)


class CostControl:
    """The closed loop on the training cost, relative to the same step at max_bits/bw_bits.

    c_t = BitOPs of step t / BitOPs of step t at max_bits (forward) and bw_bits (backward),
    every compute layer counted as the ledger counts it. During the warm-up (the first
    ``warmup_steps`` steps) the signal is c_t itself; after it, the mean of c over the steps
    since the warm-up ended (the achieved cost the target is for). Direction: +1 (push
    down) while the signal is above the target, -1 (push up) while below (``cost_push``
    both; ``down``: 0).
    """

    def __init__(self, macs: dict[str, int], learned: list[str], reference: LayerBits,
                 cfg: ScheduleConfig, warmup_steps: int) -> None:
        self.macs, self.learned = macs, learned
        self.reference = step_bitops(macs, reference, 1)
        self.target, self.both = cfg.target_cost, cfg.cost_push == "both"
        self.warmup_steps = warmup_steps
        self.last = None  # c of the last step
        self.sums = [0.0, 0, 0.0, 0]  # sum and count of c: whole run, after the warm-up

    def cost(self, bits: LayerBits) -> float:
        return step_bitops(self.macs, bits, 1) / self.reference

    def shares(self, bits: LayerBits) -> list[float]:
        """Each learned layer's share of the learned layers' BitOPs at ``bits``."""
        ops = [self.macs[n] * (bits[n][0] ** 2 + 2 * bits[n][0] * bits[n][1]) for n in self.learned]
        total = sum(ops) or 1
        return [o / total for o in ops]

    def observe(self, bits: LayerBits) -> None:
        """Record one training step at ``bits``."""
        self.last = self.cost(bits)
        if self.sums[1] >= self.warmup_steps:
            self.sums[2] += self.last
            self.sums[3] += 1
        self.sums[0] += self.last
        self.sums[1] += 1

    def achieved(self, after_warmup: bool = False) -> float | None:
        total, n = self.sums[2:] if after_warmup else self.sums[:2]
        return total / n if n else None

    def direction(self) -> int:
        signal = self.achieved(True) if self.sums[3] else self.last
        if signal is None or signal == self.target:
            return 0
        return 1 if signal > self.target else (-1 if self.both else 0)

    def state_dict(self) -> dict:
        return {"last": self.last, "sums": list(self.sums)}

    def load_state_dict(self, state: dict) -> None:
        self.last, self.sums = state["last"], list(state["sums"])


def _warn_unreachable(control: CostControl, lowest_bits: LayerBits) -> None:
    lowest = control.cost(lowest_bits)
    if control.target < lowest:
        log.warning("schedule.target_cost=%g is below the cost of every learned layer at min_bits "
                    "(%.3f; full-precision layers count too): the run cannot reach it",
                    control.target, lowest)


class LearnedPrecision:
    """Per-layer learned forward bits: ScheduledPrecision's methods (scheduled.py), plus the
    p_l, their optimizer and the cost control (all in ``state_dict``)."""

    def __init__(self, schedule: PrecisionSchedule, cfg: ScheduleConfig, model: nn.Module,
                 macs: dict[str, int], last: LastLayer | None = None, eval_bits: str = "max") -> None:
        self.schedule, self.cfg, self.model, self.last = schedule, cfg, model, last
        self.eval_mode, self.macs = eval_bits, macs
        layers = quant_layers(model)
        self.names = list(layers)
        device = next(model.parameters()).device
        self.p = torch.full((len(self.names),), float(cfg.p_init), device=device, requires_grad=True)
        self.opt = torch.optim.SGD([self.p], lr=cfg.p_lr, momentum=cfg.p_momentum)
        for i, layer in enumerate(layers.values()):
            layer.quantizer = LearnedBitsQuantizer(layer.quantizer, self, i)
        self.u: torch.Tensor | None = None  # log(2^b - 1) of this step's bits, in autograd
        self.gbar: float | None = None  # running mean |task gradient| on p
        self.cycle = schedule.kind == "cpt_ldp"
        reference = self.layer_bits_of([schedule.max_bits] * len(self.names))
        warmup = math.ceil(cfg.warmup * schedule.total_steps)
        self.control = CostControl(macs, self.names, reference, cfg, warmup)
        _warn_unreachable(self.control, self.layer_bits_of([schedule.min_bits] * len(self.names)))
        self.bits = self._bits(self._base(0))
        self.step_bits = self.layer_bits_of(self.bits)

    # -- bits from p ---------------------------------------------------------------------
    def _base(self, step: int | None) -> int | None:
        """CPT's base bits of ``step`` (cpt_ldp; None: the top of the cycle), else None."""
        if not self.cycle:
            return None
        return self.schedule.max_bits if step is None else self.schedule.bits_at(step)[0]

    def _continuous(self, base: int | None) -> torch.Tensor:
        s = self.schedule
        if base is None:
            return s.min_bits + self.p * (s.max_bits - s.min_bits)
        return base + (2 * self.p - 1) * self.cfg.max_offset

    def _bits(self, base: int | None) -> list[int]:
        lo, hi = self.schedule.min_bits, self.schedule.max_bits
        return [min(max(math.floor(c + 0.5), lo), hi)
                for c in self._continuous(base).detach().double().cpu().tolist()]

    def layer_bits_of(self, bits: list[int]) -> LayerBits:
        """Every compute layer's (forward, backward) bits with the learned layers at ``bits``."""
        bw = self.schedule.bw_bits
        out = {n: (FULL, FULL) for n in compute_layers(self.model)}
        for name, b in zip(self.names, bits):
            out[name] = self.last.adjust(b, bw) if self.last and self.last.name == name else (b, bw)
        return out

    def _set(self, bits: list[int]) -> LayerBits:
        per_layer = self.layer_bits_of(bits)
        set_precision(self.model, FULL, FULL, per_layer)
        return layer_bits(self.model)

    def _mean(self, bits: list[int]) -> int:
        weights = [self.macs.get(n, 0) for n in self.names]
        return round(sum(w * b for w, b in zip(weights, bits)) / (sum(weights) or 1))

    # -- ScheduledPrecision's methods ----------------------------------------------------
    def bits_at(self, step: int) -> tuple[int, int]:
        """The MAC-weighted mean forward bits of the last step set (rounded), backward bits."""
        return self._mean(self.bits), self.schedule.bw_bits

    def apply(self, step: int) -> LayerBits:
        base = self._base(step)
        self.bits = self._bits(base)
        self.u = None
        if torch.is_grad_enabled():
            cont = self._continuous(base)
            b = torch.tensor(self.bits, dtype=cont.dtype, device=cont.device) + (cont - cont.detach())
            self.u = torch.log(torch.exp2(b) - 1)
        self.step_bits = self._set(self.bits)
        return self.step_bits

    def eval_layer_bits(self, step: int) -> list[int]:
        """Learned bits of an evaluation after ``step`` steps (cpt_ldp: at the top of the
        cycle, or with eval_bits=current at the last step's base)."""
        if self.cycle and self.eval_mode == "current":
            return self._bits(self._base(max(step - 1, 0)))
        return self._bits(self._base(None))

    def eval_bits_at(self, step: int) -> tuple[int, int]:
        return self._mean(self.eval_layer_bits(step)), self.schedule.bw_bits

    def apply_eval(self, step: int) -> LayerBits:
        self.u = None
        return self._set(self.eval_layer_bits(step))

    # -- learning ------------------------------------------------------------------------
    def update(self, updated: bool) -> None:
        """After a training step: charge its cost to the control; unless the step was skipped,
        one SGD step on p with grad_l = g_l / gbar + dir * lambda * L * share_l; clip to [0, 1]."""
        self.control.observe(self.step_bits)
        g = self.p.grad if self.p.grad is not None else torch.zeros_like(self.p)
        self.p.grad, self.u = None, None
        if not updated:
            return
        g = sum_over_ranks(g)  # data parallel: the global batch's gradient, the same p everywhere
        magnitude = float(g.abs().mean())
        self.gbar = magnitude if self.gbar is None else 0.9 * self.gbar + 0.1 * magnitude
        shares = torch.tensor(self.control.shares(self.step_bits), dtype=g.dtype, device=g.device)
        push = self.control.direction() * self.cfg.push_strength * len(self.names) * shares
        self.p.grad = g / max(self.gbar, 1e-12) + push
        self.opt.step()
        self.p.grad = None
        with torch.no_grad():
            self.p.clamp_(0.0, 1.0)

    def state_dict(self) -> dict:
        return {"p": self.p.detach().cpu().clone(), "optimizer": self.opt.state_dict(),
                "gbar": self.gbar, "control": self.control.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.p.copy_(state["p"].to(self.p.device))
        self.opt.load_state_dict(state["optimizer"])
        self.gbar = state["gbar"]
        self.control.load_state_dict(state["control"])


def inference_gbitops(macs: dict[str, int], bits: LayerBits) -> float:
    """One forward pass of one sample: sum_l MACs_l * a_l^2 BitOPs, in GBitOPs."""
    return sum(m * bits[n][0] ** 2 for n, m in macs.items()) / 1e9


class LDPStep(StepPlugin):
    """Updates the learned precisions after each step; the LDP fields of metrics.jsonl
    (``layer_bits``, ``cost_rel``, ``cost_rel_run``) and summary.json."""

    name = "ldp"

    def __init__(self, precision: LearnedPrecision, ledger) -> None:
        self.precision, self.ledger = precision, ledger

    def after_update(self, updated: bool) -> None:
        self.precision.update(updated)

    def metrics(self) -> dict:
        p = self.precision
        return {"layer_bits": dict(zip(p.names, p.bits)), "cost_rel": p.control.last,
                "cost_rel_run": p.control.achieved()}

    def summary(self) -> dict:
        p, ledger = self.precision, self.ledger
        final = p.eval_layer_bits(p.control.sums[1])
        idx = [ledger.names.index(n) for n in p.names]
        macs = [ledger.macs[n] for n in p.names]
        weighted = sum(n * sum(m * c[i][0] for i, m in zip(idx, macs))
                       for c, n in ledger.samples.items())
        samples = sum(ledger.samples.values())
        return {"layer_bits_final": dict(zip(p.names, final)),
                "bits_fw_mean": weighted / (samples * sum(macs)) if samples else None,
                "inference_gbitops": inference_gbitops(ledger.macs, p.layer_bits_of(final)),
                "inference_gbitops_max_bits": inference_gbitops(
                    ledger.macs, p.layer_bits_of([p.schedule.max_bits] * len(p.names))),
                "target_cost": p.cfg.target_cost, "achieved_cost": p.control.achieved(),
                "achieved_cost_after_warmup": p.control.achieved(True),
                "warmup_steps": p.control.warmup_steps}


def learned_precision(cfg, schedule: PrecisionSchedule, model: nn.Module, macs: dict[str, int],
                      last: LastLayer | None) -> LearnedPrecision | None:
    """The learned precision a run of ``schedule.kind`` ldp / cpt_ldp drives, else None."""
    if schedule.kind not in ("ldp", "cpt_ldp"):
        return None
    return LearnedPrecision(schedule, cfg.schedule, model, macs, last, cfg.trainer.eval_bits)


def ldp_step(parts) -> LDPStep | None:
    """The step plugin of a run whose precision is learned, else None."""
    if not isinstance(parts.precision, LearnedPrecision):
        return None
    return LDPStep(parts.precision, parts.ledger)
