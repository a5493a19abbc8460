"""The terminal side of a run: a progress bar that log lines do not overwrite.

Log records go through ``tqdm.write`` while the bar is open, so each keeps its own line.
The bar's ``bits`` field shows the range of forward bits the steps since its last update
really used (``3..8/8`` in a cycling schedule), not the bits of one sampled step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class BitsSeen:
    """Lowest and highest forward/backward bits used since the last ``take``."""

    def __init__(self) -> None:
        self.fw: set[int] = set()
        self.bw: set[int] = set()

    def add(self, fw: int, bw: int) -> None:
        self.fw.add(fw)
        self.bw.add(bw)

    def take(self) -> str:
        """``"3..8/8"`` (or ``"8/8"`` when one value), then start a new window."""
        def span(values: set[int]) -> str:
            if not values:
                return "-"
            lo, hi = min(values), max(values)
            return str(lo) if lo == hi else f"{lo}..{hi}"

        text = f"{span(self.fw)}/{span(self.bw)}"
        self.fw, self.bw = set(), set()
        return text


class Progress:
    """A tqdm bar over the run's steps (disabled by ``trainer.progress=false``)."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str) -> None:
        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc,
                        mininterval=0.5, dynamic_ncols=True)
        self.bits = BitsSeen()

    def update(self, step: int, window: dict[str, float]) -> None:
        """Move to ``step`` showing the training window's loss and metric and the bits used."""
        fields = {k.removeprefix("train_"): f"{v:.3f}" for k, v in window.items()}
        self.bar.set_postfix(**fields, bits=self.bits.take(), refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def logs_above_bar() -> Iterator[None]:
    """Route console log handlers through tqdm while a bar may be on screen."""
    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        yield
