"""The progress bar shows the bits the steps really used, and log lines keep their own line."""

from __future__ import annotations

import logging
import sys

from cprec.engine.progress import BitsSeen, logs_above_bar


def test_bits_window_shows_the_range_used_since_the_last_update() -> None:
    """A 10-step cycle sampled every 10 steps shows 3..8, not the 8 of the sampled step."""
    seen = BitsSeen()
    for fw in (3, 4, 5, 6, 8):
        seen.add(fw, 8)
    assert seen.take() == "3..8/8"
    seen.add(8, 8)
    assert seen.take() == "8/8"
    assert seen.take() == "-/-"


def test_console_log_handlers_write_through_tqdm_while_the_bar_is_open(monkeypatch) -> None:
    """Inside logs_above_bar a console handler is swapped for tqdm's; it comes back after."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(root, "handlers", [handler])
    with logs_above_bar():
        assert handler not in root.handlers
        assert [type(h).__name__ for h in root.handlers] == ["_TqdmLoggingHandler"]
    assert root.handlers == [handler]
