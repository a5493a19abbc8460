"""Real mixed precision: ``amp=bf16|fp16`` runs the forward pass (and evaluation) under
``torch.autocast`` on the run's device; fp16 adds ``torch.amp.GradScaler`` (scale the loss,
unscale the gradients, skip the step and back off on inf/NaN, grow after clean steps).

It replaces cprec's simulated formats rather than stacking on them: it composes with
``schedule=fp32`` (the Q layers pass tensors through untouched, so autocast decides the
dtypes) and the fp32 optimizer; simulated quantization, simulated loss scaling and real fp16
weights are refused with one line. fp16 needs CUDA (CPU autocast to fp16 is slow emulation).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from cprec.config import TrainConfig, require, require_choice
from cprec.engine.step import StepPlugin

AMP = ("off", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(cfg: TrainConfig) -> None:
    """``amp`` is one of AMP and composes with the rest of the run (module docstring)."""
    amp = cfg.amp.name
    require_choice("amp", amp, AMP)
    require(cfg.amp.init_scale > 0, "amp.init_scale", cfg.amp.init_scale, "must be positive")
    require(cfg.amp.growth_interval > 0, "amp.growth_interval", cfg.amp.growth_interval,
            "must be positive")
    if amp == "off":
        return
    require(cfg.schedule.kind == "fp32", "amp", amp, f"real mixed precision replaces the simulated "
            f"formats; use schedule=fp32 (not schedule={cfg.schedule.name})")
    require(cfg.loss_scale.name == "none", "amp", amp, "simulated loss scaling acts on simulated "
            "formats; use loss_scale=none (amp=fp16 scales with torch's GradScaler)")
    require(not (amp == "fp16" and cfg.optim.real_dtype), "amp", amp, "GradScaler cannot unscale "
            "float16 weights' gradients; use optim.real_dtype=false (fp32 weights)")
    if amp == "fp16":
        device = cfg.trainer.device
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        require(cuda, "amp", amp, "fp16 autocast needs a CUDA device (this run is on the CPU); "
                "use amp=bf16 on the CPU")


class Autocast(StepPlugin):
    """torch.autocast around forward and evaluation; GradScaler for fp16 (its state travels
    in the checkpoint; skipped steps are counted)."""

    name = "amp"

    def __init__(self, amp: str, device: torch.device, init_scale: float, growth_interval: int) -> None:
        self.amp, self.dtype, self.device_type = amp, DTYPES[amp], device.type
        self.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale,
                                           growth_interval=growth_interval, enabled=amp == "fp16")
        self.skipped = 0

    def forward_context(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.dtype)

    def loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        return self.scaler.scale(loss)

    def before_update(self, optimizer: torch.optim.Optimizer) -> bool:
        if not self.scaler.is_enabled():
            return True
        self.scaler.unscale_(optimizer)
        found = sum(v.item() for v in self.scaler._found_inf_per_device(optimizer).values())
        return not found

    def after_update(self, updated: bool) -> None:
        if self.scaler.is_enabled():
            before = self.scaler.get_scale()
            self.scaler.update()
            self.skipped += self.scaler.get_scale() < before

    def metrics(self) -> dict[str, Any]:
        return {"loss_scale": self.scaler.get_scale(), "skipped_steps": self.skipped} \
            if self.scaler.is_enabled() else {}

    def summary(self) -> dict[str, Any]:
        return {"amp": self.amp, **self.metrics()}

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        if state:
            if state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            self.skipped = state["skipped"]


def build_amp(parts: Any) -> Autocast | None:
    """The plugin ``amp`` asks for (None: off)."""
    amp = parts.cfg.amp
    if amp.name == "off":
        return None
    return Autocast(amp.name, parts.device, amp.init_scale, amp.growth_interval)
