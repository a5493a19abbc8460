"""Two cprec runs side by side on one machine against the same run alone (issue 24).

    python scripts/bench_concurrent.py [--steps 60] [--repeat 1] [overrides ...]

Runs the default `cprec train` (resnet20 on digits) for ``--steps`` steps with automatic
threads (OMP_NUM_THREADS and trainer.threads unset: what a researcher starts), first alone,
then two at once, and prints each run's training time (summary.json's train_time_s) and
the ratio concurrent / alone. Run it from a checkout: ``PYTHONPATH=<checkout>`` picks
which cprec is measured (main's for "before"). The numbers mean most on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def start(run_dir: Path, steps: int, overrides: list[str], claims: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["CPREC_CLAIMS_DIR"] = str(claims)
    args = ["train", f"trainer.steps={steps}", f"trainer.eval_every={steps}", "trainer.progress=false",
            "schedule.cycles=2", *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen([sys.executable, "-m", "cprec.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen], dirs: list[Path]) -> list[float]:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"a run failed: {err.strip().splitlines()[-1:]}")
    return [json.loads((d / "summary.json").read_text())["train_time_s"] for d in dirs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=1)
    args, overrides = parser.parse_known_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cprec-bench-") as tmp:
        root, claims = Path(tmp), Path(tmp) / "claims"
        claims.mkdir()
        alone, pair = [], []
        for k in range(args.repeat):
            d = root / f"alone{k}"
            alone += finish([start(d, args.steps, overrides, claims)], [d])
            dirs = [root / f"pair{k}a", root / f"pair{k}b"]
            procs = []
            for d in dirs:
                procs.append(start(d, args.steps, overrides, claims))
                time.sleep(0.5)  # the second starts while the first trains
            pair += finish(procs, dirs)
    base = min(alone)
    print(f"cores {len(os.sched_getaffinity(0))}  load before {load:.2f}  steps {args.steps}")
    print(f"alone       train_time_s {', '.join(f'{t:.2f}' for t in alone)}")
    print(f"two at once train_time_s {', '.join(f'{t:.2f}' for t in pair)}")
    print(f"ratio (two at once / best alone): {', '.join(f'{t / base:.2f}x' for t in pair)}")


if __name__ == "__main__":
    main()
