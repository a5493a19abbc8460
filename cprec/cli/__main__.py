"""`python -m cprec.cli ...` runs the console script (the tests' and launchers' way in)."""

import sys

from cprec.cli.dispatch import main

sys.exit(main())
