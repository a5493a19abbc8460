"""`cprec report DIR...`: the argparse shell around cprec.report.tables (no Hydra: a report
reads finished run directories, it composes no config)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cprec.errors import CprecError
from cprec.report.costs import modeled_devices, parse_cost
from cprec.report.tables import ReportError, find_runs, group_runs, write_report


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other cprec error
        raise ReportError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cprec report",
                description="Compare runs: one table (markdown, CSV, JSON) and PNG plots from "
                            "run and sweep directories. Runs are grouped by their overrides "
                            "other than the seed; each group shows mean ± sample std over its "
                            "completed runs, and counts its failed or diverged ones.",
                epilog="writes report.md, report.csv, report.json, accuracy_vs_<cost>.png "
                       "(language models: perplexity_vs_<cost>.png; <cost> gbitops unless --cost "
                       "says otherwise) and runs/*.png into --out")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                   help="run or sweep directories (searched recursively for summary.json)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <first DIR>/report)")
    p.add_argument("--no-plots", action="store_true", help="tables only, no PNGs")
    p.add_argument("--cost", default="gbitops", metavar="COST",
                   help="the cost of the Pareto front and the plot: gbitops (default), energy "
                        "(energy_j) or time:<device> (modeled_time_s.<device>, for a device the "
                        "runs named in cost.devices, e.g. time:h100)")
    return p


def main_cli(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
        runs = find_runs(args.dirs)
        cost = parse_cost(args.cost, modeled_devices([r.summary for r in runs]))
        groups = group_runs(runs)
        out = args.out or args.dirs[0] / "report"
        text = write_report(groups, runs, args.dirs, out, plots=not args.no_plots, cost=cost)
    except (ReportError, CprecError) as e:
        print(f"cprec: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. --out not writable
        print(f"cprec: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    print(text, end="")
    print(f"report written to {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main_cli(sys.argv[1:]))
