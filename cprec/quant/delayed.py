"""Delayed scaling: a per-tensor fp32 scale taken from the amax of earlier steps.

Transformer Engine's DelayedScaling, as its update kernel
(``transformer_engine/common/recipe/delayed_scaling.cu``, ``amax_and_scale_update``)
computes it, so that cprec's ``fp8_delayed`` recipe reproduces TE's scale sequence:

- the history holds ``length`` float32 amaxes, all 0 at first; the scale starts at 1.0;
- during a step the tensor is cast with the current scale and its amax is recorded in slot
  0 (``record``; recorded twice in a step, the larger counts);
- NaN amaxes count as 0 (TE reduces with CUDA ``fmaxf``, which skips NaN), so a NaN step
  neither freezes the scale for the history's length nor poisons it;
- after the step (``update``): amax = max of all ``length`` slots (``amax_compute_algo =
  "max"``, TE's default; ``"most_recent"`` takes slot 0 alone); the history is rolled one
  slot towards the front (slot 0's value moves to the end, the oldest value leaves, slot 0
  is cleared); scale = (max_elem * 2^-margin) / amax in float32 when that amax is finite
  and > 0, else the scale is kept.

So the scale used at step t+1 is max_elem / max(amax of steps t-length+1 .. t). The state
(history and scale) goes into checkpoints (``state_dict``), so a resumed run casts with
exactly the scales an uninterrupted one would.
"""

from __future__ import annotations

import torch

ALGOS = ("max", "most_recent")


class AmaxHistory:
    """The amax history and current scale of one delayed-scaled tensor."""

    def __init__(self, length: int = 1024, max_value: float = 448.0, margin: int = 0,
                 algo: str = "max", device: torch.device | str = "cpu") -> None:
        if length < 1:
            raise ValueError(f"history length must be >= 1, got {length}")
        if algo not in ALGOS:
            raise ValueError(f"amax_compute_algo must be one of {ALGOS}, got {algo!r}")
        self.max_value, self.margin, self.algo = max_value, margin, algo
        self.history = torch.zeros(length, dtype=torch.float32, device=device)
        self.scale = torch.ones((), dtype=torch.float32, device=device)

    def record(self, amax: torch.Tensor) -> None:
        """This step's amax (a 0-dim tensor) into slot 0."""
        self.history[0] = torch.fmax(self.history[0], amax.detach().float().reshape(()))

    def update(self) -> torch.Tensor:
        """End of step: roll the history, recompute the scale; returns the new scale."""
        h = self.history
        amax = torch.nan_to_num(h, nan=0.0, posinf=float("inf")).max() if self.algo == "max" \
            else h[0].clone()
        self.history = torch.cat([torch.zeros_like(h[:1]), h[2:], h[:1]]) if h.numel() > 1 \
            else torch.zeros_like(h)
        scaled_max = torch.tensor(self.max_value * 2.0 ** -self.margin, dtype=torch.float32)
        ok = torch.isfinite(amax) & (amax > 0)
        self.scale = torch.where(ok, scaled_max.to(h.device) / amax, self.scale)
        return self.scale

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"history": self.history.clone(), "scale": self.scale.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["history"].shape != self.history.shape:
            raise ValueError(f"amax history of length {state['history'].numel()} does not fit "
                             f"length {self.history.numel()}")
        self.history = state["history"].to(self.history).clone()
        self.scale = state["scale"].to(self.scale).clone()
