"""What every Hydra shell shares: the command-line path up to Hydra and back, one-line user
errors, clean run dirs, sweep bookkeeping.

Only the shells (train.py, prt.py, schedule.py) and this module touch Hydra. A shell
states its config name, its task and its result file; ``shell_main`` does the rest.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from cprec.cli.preflight import check_continues_same_run, preflight
from cprec.cli.usage import help_text, wants_help
from cprec.engine.memory import keep_freed_memory
from cprec.engine.runs import RunDirBusy
from cprec.errors import CprecError, fail_line
from cprec.paths import arg_value, output_root

log = logging.getLogger("cprec")
HYDRA_FILES = {".hydra", "train.log", "prt.log", "schedule.log", ".cprec.lock"}
# flags after which Hydra prints something and runs no job: no run dir is written
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--cfg", "-c",
              "--shell-completion", "-sc"}


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def threads_per_job(multirun: bool, launcher: Mapping[str, Any], cpus: int) -> int | None:
    """Torch threads per job when a launcher runs jobs side by side, so parallel jobs share
    the cores instead of oversubscribing them; None (torch's default) otherwise.

    joblib: ``n_jobs`` jobs at once (negative counts like joblib: -1 = one per core);
    submitit: ``cpus_per_task`` cores per job.
    """
    if not multirun:
        return None
    per_task = launcher.get("cpus_per_task")
    if isinstance(per_task, int) and per_task > 0:
        return per_task
    n_jobs = launcher.get("n_jobs")
    if not isinstance(n_jobs, int) or n_jobs in (0, 1):
        return None
    jobs = n_jobs if n_jobs > 0 else max(cpus + 1 + n_jobs, 1)
    return max(1, cpus // jobs)


def parallel_threads() -> int | None:
    """``threads_per_job`` for the running Hydra job and this machine."""
    hydra_cfg = HydraConfig.get()
    return threads_per_job(hydra_cfg.mode == RunMode.MULTIRUN, hydra_cfg.launcher, os.cpu_count() or 1)


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
    # the folders made for it (<root>/<job>/<date>/), if now empty: up to the deepest folder
    # that existed before the command (check_writable), else the run dir's two parents
    stop = _EXISTED[0] if _EXISTED else run_dir.absolute().parent.parent.parent
    for parent in run_dir.absolute().parents:
        if parent == stop or stop not in parent.parents or not parent.is_dir() or any(parent.iterdir()):
            break
        parent.rmdir()


def run_task(task: Callable[[Path], dict | None], failed_summary: Callable[[str], None]) -> dict | None:
    """Run ``task(out_dir)`` for a Hydra job; its result (None when it failed in a sweep).

    A CprecError (the user's mistake, or a fault like a full disk) prints one line: in a
    single run it exits with its code (2, or 1 for a failed write) and removes the run dir
    if the run had not started; in a sweep it is recorded in the job's summary.json (status
    "failed") and the sweep goes on, except when another process holds the job's dir (its
    summary is not ours to write). Any other exception is recorded the same way; a single
    run then re-raises it (a bug deserves its traceback).
    """
    out_dir = output_dir()
    keep_freed_memory()
    try:
        result = task(out_dir)
    except CprecError as e:
        if is_multirun():
            if not isinstance(e, RunDirBusy):
                failed_summary(str(e))
            log.error("%s", e)
            return None
        fail_line(str(e))
        remove_unused_run_dir(out_dir)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, BrokenPipeError):  # a closed stdout is no failure of the run
        raise
    except Exception as e:
        failed_summary(f"{type(e).__name__}: {e}")
        log.error("run failed:\n%s", traceback.format_exc())
        if not is_multirun():
            raise
        return None
    if not is_multirun() and isinstance(result, dict) and result.get("status") != "completed":
        fail_line(f"run ended with status {result.get('status')!r}; see {out_dir}/summary.json")
        sys.exit(1)
    return result


# ---- the command line up to Hydra -------------------------------------------------------


def _flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("-")}


def wants_multirun(argv: list[str]) -> bool:
    return bool({"-m", "--multirun"} & _flags(argv)) or arg_value(argv, "hydra.mode") == "MULTIRUN"


def resume_args(argv: list[str]) -> list[str]:
    """`resume=<run dir>`: re-run that dir's saved overrides inside it (exact resume)."""
    from omegaconf import OmegaConf

    target = arg_value(argv, "resume")
    if not target:
        return argv
    saved = Path(target) / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        fail_line(f"resume={target!r} is invalid: no run directory there ({saved} is missing)")
        sys.exit(2)
    old = [o for o in OmegaConf.load(saved) if not str(o).startswith(("hydra.", "resume="))]
    extra = [a for a in argv if not a.startswith("resume=")]
    return [*old, *extra, f"hydra.run.dir={target}", f"resume={target}"]


def _override_value(text: str) -> str:
    """``text`` as the value of a Hydra override: quoted unless it is a plain path."""
    if re.fullmatch(r"[\w./~+-]+", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def pin_sweep_dir(argv: list[str], job: str) -> tuple[list[str], Path | None]:
    """For `-m`, fix the sweep dir up front so the dispatcher can check its jobs afterwards."""
    if not wants_multirun(argv):
        return argv, None
    chosen = arg_value(argv, "hydra.sweep.dir")
    if chosen:
        return argv, Path(chosen.strip("'\""))
    root, _ = output_root(argv)
    sweep = Path(root) / f"{job}-multirun" / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    return [*argv, f"hydra.sweep.dir={_override_value(str(sweep))}"], sweep


_EXISTED: list[Path] = []  # the deepest folder of the run's place that existed before the command


def check_writable(argv: list[str]) -> None:
    """Before Hydra makes the run dir: one clear line (exit 2) if it cannot be written."""
    if INFO_FLAGS & _flags(argv):
        return
    chosen = "hydra.sweep.dir" if wants_multirun(argv) else "hydra.run.dir"
    root = arg_value(argv, chosen)
    if root:
        root = root.strip("'\"")
    else:
        root, chosen = output_root(argv)
    target = Path(root).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    _EXISTED[:] = [existing]
    try:  # a real probe: permission bits say little to root or on special filesystems
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".cprec-probe-"))
    except OSError as e:
        fail_line(f"{chosen}={root!r} is invalid: cannot create folders in {existing} "
                  f"({e.strerror}); choose another with {chosen}=<folder>")
        sys.exit(2)


# ---- pre-flight: Hydra's composition errors as one line ---------------------------------


def sweep_failures(sweep_dir: Path, result_file: str = "summary.json") -> list[str]:
    """Statuses of the sweep's jobs that did not complete (a missing result is "missing")."""
    from cprec.cli.console import job_dirs, read_result

    statuses = [(read_result(d / result_file) or {"status": "missing"}).get("status")
                for d in job_dirs(sweep_dir)]
    return [str(s) for s in statuses if s != "completed"]


def finish_sweep(sweep_dir: Path | None, result_file: str | None = "summary.json") -> int:
    """Print one line per job and what to run next; exit code 1 if any job failed or
    diverged (the others still ran)."""
    if sweep_dir is None or result_file is None or not sweep_dir.is_dir():
        return 0
    from cprec.cli.console import shown_path, sweep_summary

    # `cprec report` reads summary.json files: sweeps of such jobs get it as the next step
    report = f"cprec report {shlex.quote(shown_path(sweep_dir))}" if result_file == "summary.json" else None
    print(sweep_summary(sweep_dir, result_file, report), flush=True)
    bad = sweep_failures(sweep_dir, result_file)
    if bad:
        counts = ", ".join(f"{bad.count(s)} {s}" for s in dict.fromkeys(bad))
        fail_line(f"{len(bad)} job(s) of the sweep in {sweep_dir} did not complete ({counts})")
        return 1
    return 0


def check_run_dir_free(argv: list[str]) -> None:
    """A single run into a directory another live process trains in ends here, before Hydra
    rewrites anything there (the run itself also holds the lock: runs.RunLock)."""
    from cprec.engine.distributed import launched_env
    from cprec.engine.runs import busy_error, lock_holder

    if (launched_env() or (0,))[0] != 0:  # a launched group: rank 0 checks (and locks) for all
        return
    run_dir = arg_value(argv, "hydra.run.dir")
    if run_dir and not wants_multirun(argv) and (pid := lock_holder(Path(run_dir))):
        fail_line(str(busy_error(Path(run_dir).absolute(), pid)))
        sys.exit(2)


def already_completed(argv: list[str]) -> bool:
    """A single run into a run dir that already completed (``resume=`` or ``hydra.run.dir=``)
    trains nothing: say so and show its result without starting Hydra, which would rewrite
    the dir's ``.hydra/`` files and log (a completed run's directory is not modified)."""
    from cprec.cli.console import result_block
    from cprec.engine.runs import completed_summary

    run_dir = arg_value(argv, "hydra.run.dir")
    if not run_dir or wants_multirun(argv) or INFO_FLAGS & _flags(argv):
        return False
    run_dir = Path(run_dir.strip("'\""))
    summary = completed_summary(run_dir)
    if summary is None:
        return False
    print(f"{run_dir} is already completed; not training again (nothing there was changed)")
    print(result_block(summary, run_dir), flush=True)
    return True


def check_launcher(argv: list[str]) -> None:
    """hydra/launcher=slurm (or slurm_ddp) needs SLURM's tools on this machine (a login node):
    without them submitit ends in a traceback after the sweep dir exists, so say so first."""
    launcher = str(arg_value(argv, "hydra/launcher"))
    if launcher.startswith("slurm") and not (shutil.which("sbatch") and shutil.which("srun")):
        fail_line(f"hydra/launcher={launcher} is invalid: SLURM's sbatch/srun are not on this "
                  "machine's PATH; run the command on the cluster's login node, or rehearse with "
                  "hydra/launcher=local")
        sys.exit(2)


def shell_main(argv: list[str], hydra_main: Callable[[], Any], *, config_name: str, job: str,
               result_file: str | None = None, resumable: bool = False,
               check: Callable[[Any], None] | None = None) -> int:
    """The whole path of a Hydra command: `resume=` (if ``resumable``), sweep-dir pinning,
    pre-flight composition, the writability probe, Hydra itself, then the sweep's verdict.

    ``config_name`` is the primary config (conf/<name>.yaml), ``job`` names the output
    folders (``<root>/<job>-multirun/...``), ``result_file`` is what each job leaves
    (None: sweeps are not summarised), ``check`` what the command checks of each job's typed
    config before any job runs (besides cprec.validate). Returns the exit code.
    """
    if wants_help(argv):  # cprec's own page: every key's meaning, examples (not Hydra's dump)
        overrides = [a for a in argv if a not in ("-h", "--help")]
        preflight(overrides, config_name)
        print(help_text(f"cprec {job}", config_name, overrides), end="")
        return 0
    if resumable:
        argv = resume_args(argv)
        check_run_dir_free(argv)
    argv, sweep = pin_sweep_dir(argv, job)
    preflight(argv, config_name, check)
    if resumable:
        check_continues_same_run(argv, config_name)
        if already_completed(argv):
            return 0
    check_launcher(argv)
    check_writable(argv)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()
    return finish_sweep(sweep, result_file)
