"""What loss scaling reads from a backward pass: underflow/overflow counts of the errors in
the simulated format (``ErrorCounts``) and which layers' errors reach which (``nearest_consumers``,
the graph adaptive scales accumulate along). Used by loss_scale.py."""

from __future__ import annotations

from typing import Any

import torch

from cprec.engine.collectives import group_sum

LOSS = "<loss>"  # the consumer of the errors that reach a layer from the loss directly


def nearest_consumers(loss: torch.Tensor, nodes: dict[Any, str]) -> dict[str, list[str]]:
    """For each layer (``nodes``: its output's autograd node -> its name), the layers whose
    errors reach it first on the way back from the loss: the nearest layers of ``nodes`` on
    every backward path from ``loss`` to it (``LOSS`` where a path meets none)."""
    root = loss.grad_fn
    pending: dict[Any, int] = {}
    stack, seen = [root], {root}
    while stack:  # count each node's parents (in backward order) for a topological walk
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is not None:
                pending[child] = pending.get(child, 0) + 1
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
    above: dict[Any, set[str]] = {root: {LOSS}}
    ready = [root]
    while ready:
        node = ready.pop()
        passed = {nodes[node]} if node in nodes else above[node]
        for child, _ in node.next_functions:
            if child is None:
                continue
            above.setdefault(child, set()).update(passed)
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return {name: sorted(above.get(node, {LOSS})) for node, name in nodes.items()}


class ErrorCounts:
    """Per layer (nonzero, underflow, overflow) counts on the device: a window since the last
    evaluation and the run's totals (Python ints, folded in at each evaluation)."""

    def __init__(self, names: list[str]) -> None:
        self.window: dict[str, torch.Tensor | None] = dict.fromkeys(names)
        self.run = {n: [0, 0, 0] for n in names}

    def add(self, name: str, error: torch.Tensor, rounded: torch.Tensor, over: torch.Tensor) -> None:
        # zeros stay zero (stochastic rounding of 0 is 0), so the nonzero errors that round to
        # zero are the difference of the two nonzero counts
        nonzero = torch.count_nonzero(error)
        counts = torch.stack([nonzero, nonzero - torch.count_nonzero(rounded), torch.count_nonzero(over)])
        seen = self.window.get(name)
        self.window[name] = counts if seen is None else seen + counts

    def _window_ints(self) -> dict[str, list[int]]:
        return {n: [0, 0, 0] if c is None else [int(v) for v in c.tolist()]
                for n, c in self.window.items()}

    def _group_window(self) -> dict[str, list[int]]:
        """The window's counts summed over a data-parallel group (every rank's errors)."""
        window = self._window_ints()
        flat = group_sum([v for c in window.values() for v in c])
        return {n: [int(v) for v in flat[3 * i:3 * i + 3]] for i, n in enumerate(window)}

    def fold(self) -> dict[str, Any]:
        """The window's rates (over the group's errors); its counts join the run's and a new
        window starts."""
        window = self._group_window()
        for name, counts in window.items():
            self.run[name] = [a + b for a, b in zip(self.run[name], counts)]
        self.window = dict.fromkeys(self.window)
        return rates(window)

    def run_rates(self) -> dict[str, Any]:
        """Rates over the whole run so far (the open window included)."""
        window = self._group_window()
        return rates({n: [a + b for a, b in zip(c, window[n])] for n, c in self.run.items()})

    def state_dict(self) -> dict:
        return {"window": self._window_ints(), "run": self.run}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.run = {n: list(c) for n, c in state["run"].items()}
        self.window = {n: torch.tensor(c, dtype=torch.int64, device=device)
                       for n, c in state["window"].items()}


def rates(counts: dict[str, list[int]]) -> dict[str, Any]:
    """underflow_rate / overflow_rate: of the nonzero errors, pooled over the layers and per
    layer (``*_layers``)."""
    def rate(num: int, den: int) -> float:
        return num / den if den else 0.0

    nonzero = sum(c[0] for c in counts.values())
    return {"underflow_rate": rate(sum(c[1] for c in counts.values()), nonzero),
            "overflow_rate": rate(sum(c[2] for c in counts.values()), nonzero),
            "underflow_rate_layers": {n: rate(c[1], c[0]) for n, c in counts.items()},
            "overflow_rate_layers": {n: rate(c[2], c[0]) for n, c in counts.items()}}
