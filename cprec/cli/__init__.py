"""The command line: `cprec <command>`, one thin shell per subcommand, pre-flight checks,
console output. Only this package touches Hydra and sys.argv.

``main`` is the console script's entry point (``cprec = cprec.cli:main``); importing it
imports no torch, so `cprec --help` answers instantly.
"""

from cprec.cli.dispatch import main

__all__ = ["main"]
