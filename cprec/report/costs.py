"""Which training cost a report compares runs on: `cprec report --cost gbitops|energy|time:<device>`.

BitOPs is CPT's measure; summary.json also holds the energy a format-native accelerator
would spend (``energy_j``) and, for the devices a run named in ``cost.devices``, the modeled
time (``modeled_time_s.<device>``; cprec/hardware/). The Pareto front and the accuracy vs
cost plot use the chosen one; the table shows every cost the runs have.
"""

from __future__ import annotations

from dataclasses import dataclass

from cprec.errors import CprecError

TIME_PREFIX = "modeled_time_s."


@dataclass(frozen=True)
class Cost:
    key: str  # the summary.json field
    label: str  # axis label and table column
    name: str  # the plot's file name: accuracy_vs_<name>.png


GBITOPS = Cost("gbitops", "GBitOPs", "gbitops")
ENERGY = Cost("energy_j", "energy (J)", "energy")


def parse_cost(text: str, devices: set[str] | None = None) -> Cost:
    """``gbitops``, ``energy`` or ``time:<device>`` (a device some run modeled, when known)."""
    if text == "gbitops":
        return GBITOPS
    if text == "energy":
        return ENERGY
    if text.startswith("time:") and text[5:]:
        device = text[5:]
        if devices is not None and device not in devices:
            known = (", ".join(f"time:{d}" for d in sorted(devices))
                     or "none: run with cost.devices=[h100,...]")
            raise CprecError(f"--cost {text}: no run modeled device {device!r} (modeled: {known})")
        return Cost(TIME_PREFIX + device, f"modeled time on {device} (s)", f"time_{device}")
    raise CprecError(f"--cost {text!r} is invalid: choose gbitops, energy or time:<device> "
                     "(a device of the runs' cost.devices, e.g. time:h100)")


def modeled_devices(summaries: list[dict]) -> set[str]:
    return {k[len(TIME_PREFIX):] for s in summaries for k in s if k.startswith(TIME_PREFIX)}


def extra_costs(summaries: list[dict]) -> list[Cost]:
    """The costs besides GBitOPs the runs have: energy, then each modeled device's time."""
    out = [ENERGY] if any(ENERGY.key in s for s in summaries) else []
    return out + [parse_cost(f"time:{d}") for d in sorted(modeled_devices(summaries))]
