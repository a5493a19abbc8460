"""`cprec <command> [overrides]`: dispatches to the thin Hydra shell of each command.

Kept free of torch imports so `cprec --help` answers instantly.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": ("cprec.cli.train", "train a model under a precision schedule (Hydra overrides; -m sweeps)"),
    "prt": ("cprec.cli.prt", "precision range test: find the bounds CPT runs use"),
    "schedule": ("cprec.cli.schedule",
                 "plot a schedule's bits over a run and its cost, no training"),
    "report": ("cprec.cli.report", "tables and plots from run and sweep directories"),
}

USAGE = "usage: cprec <command> [options or Hydra overrides]\n\ncommands:\n" + "".join(
    f"  {name:<10}{text}\n" for name, (_, text) in COMMANDS.items()
) + "\n`cprec <command> --help` shows a command's options (config groups for Hydra commands)."


SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader left


def main(argv: list[str] | None = None) -> int:
    """The console script: `cprec <command> ...`; returns the exit code.

    A closed stdout (`cprec --help | head -1`) is a normal end for a command-line tool: it
    ends quietly (exit 141, as a Unix tool stopped by SIGPIPE), with no traceback."""
    try:
        try:
            return _dispatch(sys.argv[1:] if argv is None else argv)
        finally:  # inside the try, so a write the reader no longer takes ends here too
            sys.stdout.flush()
    except BrokenPipeError:
        # the interpreter flushes stdout once more at exit: point it at /dev/null first
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return SIGPIPE_EXIT


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cprec: error: unknown command {command!r}; choose one of {list(COMMANDS)}",
              file=sys.stderr)
        return 2
    # before torch loads OpenMP: idle pool threads sleep instead of spinning on cores another
    # process needs (cprec/engine/threads.py); a user's own setting wins
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv = [f"cprec {command}", *rest]
    return module.main_cli(rest) or 0

