"""summary.json ``gemms``: how the quantized layers' GEMMs ran under ``quant.kernels=int8|auto``.

The counts live on the layers (quant/int8_layers.py); this plugin carries them through a
checkpoint, so a resumed run reports the same totals as an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from cprec.engine.step import StepPlugin
from cprec.quant.int8_layers import gemm_counts


class GemmCounts(StepPlugin):
    """Reports ``gemms``: per way a GEMM ran (``int8``, or why not), how many times."""

    name = "gemm_counts"

    def __init__(self, model: nn.Module) -> None:
        self.model, self.before = model, Counter()

    def _total(self) -> dict[str, int]:
        return dict(sorted((self.before + Counter(gemm_counts(self.model))).items()))

    def summary(self) -> dict[str, Any]:
        return {"gemms": self._total()}

    def state_dict(self) -> dict:
        return {"counts": self._total()}

    def load_state_dict(self, state: dict) -> None:
        self.before = Counter(state.get("counts", {})) - Counter(gemm_counts(self.model))


def gemm_count_plugin(model: nn.Module, kernels: str) -> GemmCounts | None:
    return None if kernels == "simulated" else GemmCounts(model)
