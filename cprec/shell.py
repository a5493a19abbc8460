"""What every Hydra shell shares: one-line user errors, clean run dirs, sweep bookkeeping.

Only the shells (train.py, prt.py, ...) and this module touch Hydra.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cprec.errors import CprecError
from cprec.memory import keep_freed_memory

log = logging.getLogger("cprec")
HYDRA_FILES = {".hydra", "train.log", "prt.log", "schedule.log"}


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def parallel_threads() -> int | None:
    """Torch threads per job when a launcher runs jobs side by side, so parallel jobs share
    the cores instead of oversubscribing them; None (torch's default) otherwise.

    joblib: ``n_jobs`` jobs at once (negative counts like joblib: -1 = one per core);
    submitit: ``cpus_per_task`` cores per job.
    """
    import os

    if not is_multirun():
        return None
    launcher = HydraConfig.get().launcher
    cpus = os.cpu_count() or 1
    per_task = launcher.get("cpus_per_task")
    if isinstance(per_task, int) and per_task > 0:
        return per_task
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return None
    jobs = n_jobs if n_jobs > 0 else max(cpus + 1 + n_jobs, 1)
    return max(1, cpus // jobs)


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def _only_hydra_files(run_dir: Path) -> bool:
    return run_dir.is_dir() and all(p.name in HYDRA_FILES for p in run_dir.iterdir())


def remove_unused_run_dir(run_dir: Path) -> None:
    """Delete a run dir that holds nothing but what Hydra wrote before our task started."""
    if not _only_hydra_files(run_dir):
        return
    for handler in logging.getLogger().handlers[:]:  # release train.log
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in (run_dir.parent, run_dir.parent.parent):  # <job>/<date>/, if now empty
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()


def fail_line(message: str) -> None:
    print(f"cprec: error: {message}", file=sys.stderr, flush=True)


def run_task(task: Callable[[Path], dict | None], failed_summary: Callable[[str], None]) -> None:
    """Run ``task(out_dir)`` for a Hydra job.

    A CprecError (the user's mistake) prints one line: in a single run it exits with code 2
    and removes the run dir if the run had not started; in a sweep it is recorded in the
    job's summary.json (status "failed") and the sweep goes on. Any other exception is
    recorded the same way; a single run then re-raises it (a bug deserves its traceback).
    """
    out_dir = output_dir()
    keep_freed_memory()
    try:
        result = task(out_dir)
    except CprecError as e:
        if is_multirun():
            failed_summary(str(e))
            log.error("%s", e)
            return
        fail_line(str(e))
        remove_unused_run_dir(out_dir)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        failed_summary(f"{type(e).__name__}: {e}")
        log.error("run failed:\n%s", traceback.format_exc())
        if not is_multirun():
            raise
        return
    if not is_multirun() and isinstance(result, dict) and result.get("status") != "completed":
        fail_line(f"run ended with status {result.get('status')!r}; see {out_dir}/summary.json")
        sys.exit(1)


def _arg_value(argv: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(key + "=")), None)


def check_writable(argv: list[str]) -> None:
    """Before Hydra makes the run dir: one clear line (exit 2) if it cannot be written."""
    import os

    root = os.environ.get("CPREC_OUTPUT_ROOT", "outputs")
    for key in ("hydra.sweep.dir", "hydra.run.dir", "output_root"):
        if _arg_value(argv, key):
            root, chosen = _arg_value(argv, key), key
            break
    else:
        chosen = "output_root"
    target = Path(root).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    try:  # a real probe: permission bits say little to root or on special filesystems
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".cprec-probe-"))
    except OSError as e:
        fail_line(f"{chosen}={root!r} is invalid: cannot create folders in {existing} "
                  f"({e.strerror}); choose another with {chosen}=<folder>")
        sys.exit(2)


def pin_sweep_dir(argv: list[str], job: str) -> tuple[list[str], Path | None]:
    """For `-m`, fix the sweep dir up front so the dispatcher can check its jobs afterwards."""
    if not {"-m", "--multirun"} & set(argv):
        return argv, None
    for arg in argv:
        if arg.startswith("hydra.sweep.dir="):
            return argv, Path(arg.split("=", 1)[1])
    root = _arg_value(argv, "output_root") or "outputs"
    sweep = Path(root) / f"{job}-multirun" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    return [*argv, f"hydra.sweep.dir={sweep}"], sweep


def sweep_failures(sweep_dir: Path, result_file: str = "summary.json") -> list[str]:
    """Jobs of a sweep whose result file is missing or whose status is not 'completed'."""
    import json

    bad = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        summary = job_dir / result_file
        status = json.loads(summary.read_text()).get("status") if summary.exists() else "missing"
        if status != "completed":
            bad.append(f"{job_dir.name}: {status}")
    return bad


def finish_sweep(sweep_dir: Path | None, result_file: str = "summary.json") -> int:
    """Exit code of a sweep: 1 if any job failed or diverged (the others still ran)."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return 0
    bad = sweep_failures(sweep_dir, result_file)
    if bad:
        fail_line(f"{len(bad)} job(s) of the sweep in {sweep_dir} did not complete: "
                  + "; ".join(bad))
        return 1
    return 0
