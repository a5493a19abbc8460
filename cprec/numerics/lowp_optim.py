"""SGD, Adam and AdamW for weights stored in a low-precision format (arXiv 1810.05486).

After every step each parameter holds a value of the weight format and nothing else: no
fp32 master copy is kept. The update u the optimizer computes (in fp32, one parameter at a
time) reaches the weight by ``optim.update_rounding``:

- ``nearest``: w <- round(w + u). An update below half a unit in the last place vanishes.
- ``stochastic``: w <- SR(w + u), unbiased: E[w_new] = w + u.
- ``kahan``: a compensation buffer c per parameter, itself stored in the weight format
  (the paper's SGD with Kahan summation): u' = c + u; w_new = round(w + u');
  c = round(u' - (w_new - w)). The part of the update the weight could not take waits in c.
  Rounding c itself costs a little of the sum (bf16 1.0 after 1000 updates of -1e-5 ends
  one bf16 step above the exact 0.99's nearest value); ``optim.kahan_buffer=fp32`` keeps c
  in float32 and tracks the sum exactly, at 4 bytes more per weight. For ``fixed<B>`` the
  buffer is a fixed<B> number too, with a step 2^(B-1) times finer than the weight's (it
  only ever holds less than half a weight step): B more bits of the sum, as the paper says.

Optimizer state (momentum, Adam moments) is float32 unless ``optim.state_format`` names a
float format (it is then rounded to nearest after every update). With
``optim.real_dtype=true`` (bf16/fp16 only) parameters and compensation buffers are real
``torch.bfloat16``/``torch.float16`` tensors (see ``store_weights_in``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from cprec.config import OptimConfig
from cprec.numerics.weight_formats import REAL_DTYPES, WeightFormat, parse_weight_format
from cprec.quant import QuantRNG

UPDATE_ROUNDING = ("nearest", "stochastic", "kahan")


def _sgd_update(w: torch.Tensor, g: torch.Tensor, group: dict, state: dict,
                state_format: WeightFormat) -> torch.Tensor:
    """-lr * (momentum/Nesterov step of g + wd * w), as torch.optim.SGD computes it."""
    if group["weight_decay"]:
        g = g.add(w, alpha=group["weight_decay"])
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        buf = g.clone() if buf is None else buf.float().mul_(momentum).add_(g)
        state["momentum_buffer"] = state_format.round(buf).to(buf.dtype)
        g = g.add(buf, alpha=momentum) if group["nesterov"] else buf
    return g.mul(-group["lr"])  # not in place: g may be the gradient or the momentum buffer


def _adamw_update(w: torch.Tensor, g: torch.Tensor, group: dict, state: dict,
                  state_format: WeightFormat) -> torch.Tensor:
    """-lr * (wd * w + m_hat / (sqrt(v_hat) + eps)), as torch.optim.AdamW computes it."""
    beta1, beta2 = group["betas"]
    step = state["step"] = state.get("step", 0) + 1
    m = state.get("exp_avg", torch.zeros_like(w)).float().lerp_(g, 1 - beta1)
    v = state.get("exp_avg_sq", torch.zeros_like(w)).float().mul_(beta2).addcmul_(g, g, value=1 - beta2)
    state["exp_avg"], state["exp_avg_sq"] = state_format.round(m), state_format.round(v)
    denom = (v / (1 - beta2 ** step)).sqrt_().add_(group["eps"])
    update = (m / (1 - beta1 ** step)).div_(denom)
    return update.add_(w, alpha=group["weight_decay"]).mul_(-group["lr"])


def _adam_update(w: torch.Tensor, g: torch.Tensor, group: dict, state: dict,
                 state_format: WeightFormat) -> torch.Tensor:
    """Adam with L2 regularisation, as torch.optim.Adam computes it: wd * w joins the gradient."""
    if group["weight_decay"]:
        g = g.add(w, alpha=group["weight_decay"])
    return _adamw_update(w, g, {**group, "weight_decay": 0.0}, state, state_format)


UPDATES = {"sgd": _sgd_update, "adam": _adam_update, "adamw": _adamw_update}


class LowPrecisionOptimizer(torch.optim.Optimizer):
    """SGD, Adam or AdamW whose parameters live in ``fmt``, updated by ``rounding``.

    Building it rounds the parameters onto the format (for ``fixed<B>`` after picking each
    tensor's step). Its ``state_dict`` holds momentum/moments, compensation buffers, the
    fixed-point steps and the stochastic-rounding counter, so resume is exact.
    """

    def __init__(self, params: list[dict], cfg: OptimConfig, fmt: WeightFormat, seed: int) -> None:
        defaults = {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov and cfg.momentum > 0,
                    "betas": tuple(cfg.betas), "eps": 1e-8, "weight_decay": 0.0}
        super().__init__(params, defaults)
        self.kind, self.fmt, self.rounding = cfg.name, fmt, cfg.update_rounding
        self.kahan_fp32 = cfg.kahan_buffer == "fp32"
        self.state_format = parse_weight_format(cfg.state_format, "optim.state_format")
        self.rng = QuantRNG(seed + 104729)
        with torch.no_grad():
            for p in self._params():
                if fmt.fixed_bits is not None:
                    self.state[p]["fixed_step"] = fmt.fixed_step(p)
                p.copy_(fmt.round(p.float(), step=self.state[p].get("fixed_step")).to(p.dtype))

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        state, fmt = self.state[p], self.fmt
        w = p.float()
        u = UPDATES[self.kind](w, p.grad.float(), group, state, self.state_format)
        step = state.get("fixed_step")
        if self.rounding == "stochastic":
            w_new = fmt.round(w + u, stochastic=True, key=self.rng.next_key(p.device), step=step)
        elif self.rounding == "kahan":
            c = state.get("kahan")
            u = u if c is None else u.add_(c.float())
            w_new = fmt.round(w + u, step=step)
            c = u - (w_new - w)
            c_step = None if step is None else step / (1 << (fmt.fixed_bits - 1))
            state["kahan"] = c if self.kahan_fp32 else fmt.round(c, step=c_step).to(p.dtype)
        else:
            w_new = fmt.round(w + u, step=step)
        p.copy_(w_new.to(p.dtype))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rounding_rng": self.rng.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rng.load_state_dict(state_dict["rounding_rng"])
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "rounding_rng"})


class _Upcast(nn.Module):
    """Parametrization: a parameter stored in a half-size dtype, used as float32."""

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.float()


def store_weights_in(model: nn.Module, fmt_name: str) -> None:
    """``optim.real_dtype``: keep every parameter as a real bf16/fp16 tensor (half the memory),
    seen by the layers as float32 through a parametrization (so the quantizers, BatchNorm
    and the loss run as before); gradients reach the stored tensor in its own dtype."""
    dtype = REAL_DTYPES[fmt_name]
    for module in list(model.modules()):
        for name, param in list(module.named_parameters(recurse=False)):
            param.data = param.data.to(dtype)
            parametrize.register_parametrization(module, name, _Upcast(), unsafe=True)
