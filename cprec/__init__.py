"""cprec: an experiment runner for dynamic-precision (cyclic precision) training research.

The command line is `cprec train|prt|schedule|report`; for your own training loop the
package exports a small API (``cprec.api``): ``quantize``, ``schedule``, ``set_precision``,
``CostLedger`` and ``fake_quantize``; ``cprec.lightning.PrecisionCallback`` for Lightning.
They are imported on first use, so `import cprec` (and `cprec --help`) stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["CostLedger", "Schedule", "fake_quantize", "quantize", "schedule", "set_precision"]

if TYPE_CHECKING:
    from cprec.api import CostLedger, Schedule, fake_quantize, quantize, schedule, set_precision


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cprec import api

        return getattr(api, name)
    raise AttributeError(f"module 'cprec' has no attribute {name!r}")
