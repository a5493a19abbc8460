"""One optimizer step, with plug points for what changes it.

The step is: the task's loss -> each plugin may change it (add a learnable-precision cost
term, scale it for loss scaling) -> backward -> each plugin may act on the gradients and
veto the update (unscale, skip on overflow) -> the optimizer (which may itself keep its
weights in a low-precision format) -> each plugin's ``after_update``. A plugin is a small
object; the step has no branch for any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from typing import Any

import torch
from torch import nn

from cprec.tasks.base import Task


class StepPlugin:
    """Base of everything composed into the training step; every hook defaults to a no-op.

    Plugins with state (a loss scale, learned precisions) return it from ``state_dict`` so
    checkpoints carry it and resume stays exact; ``metrics``/``summary`` add their own keys
    to metrics.jsonl and summary.json.
    """

    name: str = "plugin"

    def forward_context(self) -> AbstractContextManager:
        """Entered around the forward pass and the evaluation (real mixed precision: autocast)."""
        return nullcontext()

    def loss(self, loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """The loss to back-propagate (the task's loss, or a changed one)."""
        return loss

    def before_update(self, optimizer: torch.optim.Optimizer) -> bool:
        """Act on the gradients before the optimizer; False skips this step's update."""
        return True

    def after_update(self, updated: bool) -> None:
        """Called after every step, ``updated`` False when some plugin skipped it."""

    def metrics(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GradClip(StepPlugin):
    """Clip the model's gradients to a global L2 norm (``optim.grad_clip``), after loss
    scaling has unscaled them and before the optimizer (the classic LSTM recipe's 0.25)."""

    name = "grad_clip"

    def __init__(self, model: nn.Module, max_norm: float) -> None:
        self.params, self.max_norm = [p for p in model.parameters() if p.requires_grad], max_norm

    def before_update(self, optimizer: torch.optim.Optimizer) -> bool:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        return True


def grad_clip(model: nn.Module, max_norm: float | None) -> GradClip | None:
    return None if max_norm is None else GradClip(model, max_norm)


class TrainStep:
    """``step(batch)`` trains on one batch and returns the task's (detached loss, outputs)."""

    def __init__(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
                 plugins: Sequence[StepPlugin] = ()) -> None:
        self.task, self.model, self.optimizer = task, model, optimizer
        self.plugins = list(plugins)

    def context(self) -> ExitStack:
        """Every plugin's ``forward_context``, entered together."""
        stack = ExitStack()
        for plugin in self.plugins:
            stack.enter_context(plugin.forward_context())
        return stack

    def __call__(self, batch: Any) -> tuple[torch.Tensor, Any]:
        with self.context():
            loss, out = self.task.forward(self.model, batch)
        total = loss
        for plugin in self.plugins:
            total = plugin.loss(total, self.model)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        updated = all([plugin.before_update(self.optimizer) for plugin in self.plugins])
        if updated:
            self.optimizer.step()
        for plugin in self.plugins:
            plugin.after_update(updated)
        return loss.detach(), _detach(out)

    def metrics(self) -> dict[str, Any]:
        return {k: v for p in self.plugins for k, v in p.metrics().items()}

    def summary(self) -> dict[str, Any]:
        return {k: v for p in self.plugins for k, v in p.summary().items()}

    def state_dict(self) -> dict:
        return {p.name: p.state_dict() for p in self.plugins}

    def load_state_dict(self, state: dict) -> None:
        for p in self.plugins:
            p.load_state_dict(state.get(p.name, {}))


def _detach(out: Any) -> Any:
    return out.detach() if isinstance(out, torch.Tensor) else out
