"""User-facing errors: one clear line, exit code 2, no traceback."""

from __future__ import annotations

import sys
from typing import Any


class CprecError(Exception):
    """A mistake the user can fix; its message is the whole story."""

    exit_code = 2


class ConfigError(CprecError):
    """A config value that is out of range or inconsistent."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
        self.key, self.value, self.allowed = key, value, allowed


class DataError(CprecError):
    """A dataset that cannot be found or read."""


def fail_line(message: str) -> None:
    """The one line a user mistake ends with (stderr); the caller chooses the exit code."""
    print(f"cprec: error: {message}", file=sys.stderr, flush=True)
