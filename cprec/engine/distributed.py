"""Data-parallel runs: `cprec train trainer.devices=N` starts N processes through torch's
elastic launcher (torchrun's machinery); a process that an outside launcher started as one
rank (torchrun, or one task of a SLURM job step) trains as that rank.

gloo on CPU, NCCL on CUDA; every collective times out after ``trainer.dist_timeout_s``, and
the elastic agent stops the whole group when one rank dies, so a failure ends in one line
naming the rank, never a hang. The rank's own training is ``cprec.engine.data_parallel``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from cprec.config import TrainConfig
from cprec.errors import ConfigError, CprecError

log = logging.getLogger("cprec")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


class GroupFailed(CprecError):
    """A rank of a data-parallel group failed; the others were stopped."""

    exit_code = 1


def launched_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when an outside launcher started this process as one
    rank of a group, else None. torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*; a SLURM
    step of several tasks (submitit with tasks_per_node > 1) sets SLURM_PROCID/NTASKS/LOCALID,
    from which MASTER_ADDR (the job's first node) and MASTER_PORT (from the job id) follow."""
    env = os.environ
    if {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(env):
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env.setdefault("MASTER_ADDR", first_node(env.get("SLURM_JOB_NODELIST", "localhost")))
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        rank, world = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        # each SLURM task has its own cpus_per_task: its threads are not shared out
        env.update(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
                   LOCAL_WORLD_SIZE="1")
        return int(rank), int(world), int(env["LOCAL_RANK"])
    return None


def first_node(nodelist: str) -> str:
    """The first host of a SLURM node list ("gpu[01-04],gpu07" -> "gpu01")."""
    if "[" not in nodelist:
        return nodelist.split(",")[0]
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
    return out.stdout.split()[0]


def check_devices(cfg: TrainConfig) -> str:
    """The backend for ``cfg`` ("gloo" or "nccl"), after the checks that need torch."""
    import torch

    from cprec.engine.build import pick_device

    t = cfg.trainer
    if pick_device(t.device).type == "cuda":
        count = torch.cuda.device_count()
        if t.devices > count:
            raise ConfigError("trainer.devices", t.devices, f"this machine has {count} CUDA "
                              f"device(s); use at most {count} (or trainer.device=cpu)")
        return "nccl"
    if t.sync_bn:
        raise ConfigError("trainer.sync_bn", True, "SyncBatchNorm needs CUDA devices; on CPU "
                          "each process keeps its own batch statistics (trainer.sync_bn=false)")
    return "gloo"


def rank_threads(cfg: TrainConfig, local_world: int) -> int:
    """Torch threads per rank: the run's threads (or the machine's cores) shared out, >= 1."""
    return max(1, (cfg.trainer.threads or os.cpu_count() or 1) // local_world)


def run_data_parallel(cfg: TrainConfig, out_dir: Path) -> dict:
    """`cprec train` with trainer.devices > 1 (or under an outside launcher); the summary."""
    from cprec.engine import runs

    found = launched_env()
    if found is not None:  # every rank: nothing to do in a completed run dir
        if (done := runs.completed_summary(out_dir)) is not None:
            return done
        rank, world, local_rank = found
        if cfg.trainer.devices not in (1, world):
            raise ConfigError("trainer.devices", cfg.trainer.devices, f"the launcher started "
                              f"{world} processes: leave trainer.devices out or set it to {world}")
        cfg = replace(cfg, trainer=replace(cfg.trainer, devices=world))
        check_devices(cfg)
        if rank != 0:
            return rank_main(cfg, out_dir, rank, world, local_rank, outside=True)
        with runs.RunLock(out_dir):  # rank 0 holds the run dir, as the launcher does below
            return rank_main(cfg, out_dir, rank, world, local_rank, outside=True)

    with runs.RunLock(out_dir):
        done = runs.completed_summary(out_dir)
        if done is not None:
            log.info("%s is already completed; not training again", out_dir)
            return done
        check_devices(cfg)
        spawn(cfg, out_dir)
    if not (out_dir / runs.SUMMARY).is_file():  # stopped before the loop began
        raise GroupFailed(f"the data-parallel group ended before training (a signal?); "
                          f"rerun the same command to start or resume {out_dir}")
    return runs.read_json(out_dir / runs.SUMMARY)


def spawn(cfg: TrainConfig, out_dir: Path) -> None:
    """N local processes through torch.distributed.elastic (what torchrun runs).

    The agent runs in a thread, so this process keeps its own SIGTERM/SIGINT handling: a
    signal is passed on to every rank, which checkpoints and ends the run "interrupted"
    (the agent's own handler would stop the ranks before they can write their checkpoint).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=cfg.trainer.devices,
                          run_id=uuid.uuid4().hex, rdzv_backend="c10d", rdzv_endpoint="localhost:0",
                          max_restarts=0, monitor_interval=0.2, start_method="spawn")
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):  # ours is the one line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    failed: list[BaseException] = []

    def agent(errors: str) -> None:
        try:
            elastic_launch(launch, _worker)(cfg, str(out_dir), errors)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            failed.append(e)

    with tempfile.TemporaryDirectory(prefix="cprec-ranks-") as errors, forward_signals(Path(errors)):
        thread = threading.Thread(target=agent, args=(errors,), daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
        if failed and isinstance(failed[0], ChildFailedError):
            raise group_error(failed[0], Path(errors)) from None
    if failed:
        raise failed[0]


@contextmanager
def forward_signals(ranks: Path) -> Iterator[None]:
    """SIGTERM/SIGINT to this process go on to the ranks (their pids are files in ``ranks``;
    a rank not yet started finds the note ``stop`` there)."""
    def forward(signum: int, frame: object) -> None:
        (ranks / "stop").write_text(str(signum))
        for path in ranks.glob("pid-*"):
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(path.read_text()), signum)

    previous = {}
    with suppress(ValueError):  # not the main thread (some launchers): the ranks' own handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def group_error(e: Exception, errors: Path) -> CprecError:
    """One line for a failed group: a rank's own cprec error, else which rank died how."""
    for path in sorted(errors.glob("rank*.txt")):  # a cprec error: the user's one line
        code, message = path.read_text().split("\n", 1)
        error = CprecError(message)
        error.exit_code = int(code)
        return error
    rank, failure = min(e.failures.items())
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if not message or message.startswith("To enable traceback"):
        message = "no Python error: killed by a signal or os._exit"
    return GroupFailed(f"data-parallel rank {rank} (pid {failure.pid}) failed with exit code "
                       f"{failure.exitcode} ({message}); the other ranks were stopped")


def _worker(cfg: TrainConfig, out_dir: str, errors: str) -> dict:
    """One spawned rank (a fresh interpreter): train, or leave its cprec error for the parent."""
    from cprec.engine.trainer import catch_early_stops, request_stop

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    catch_early_stops()
    Path(errors, f"pid-{rank}").write_text(str(os.getpid()))
    if (stop := Path(errors, "stop")).is_file():  # signalled before this rank could be told
        request_stop(int(stop.read_text() or signal.SIGTERM))
    try:
        return rank_main(cfg, Path(out_dir), rank, world, int(os.environ["LOCAL_RANK"]))
    except CprecError as e:
        Path(errors, f"rank{rank}.txt").write_text(f"{e.exit_code}\n{e}")
        sys.exit(e.exit_code)


def setup_logging(out_dir: Path, rank: int, outside: bool) -> None:
    """Rank 0 logs like a single run (train.log and the console); the others errors only."""
    logger = logging.getLogger("cprec")
    if rank != 0:
        logger.setLevel(logging.ERROR)
    if outside:  # Hydra configured this process's logging already
        return
    logger.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(LOG_FORMAT if rank == 0 else f"[rank {rank}] %(message)s"))
    logger.addHandler(console)
    if rank == 0:
        file = logging.FileHandler(out_dir / "train.log")
        file.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(file)
    logger.propagate = False


def rank_main(cfg: TrainConfig, out_dir: Path, rank: int, world: int, local_rank: int,
              outside: bool = False) -> dict:
    """Join the group, train this rank, leave; the rank's summary (rank 0's is the run's)."""
    import torch
    import torch.distributed as dist

    setup_logging(out_dir, rank, outside)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    trainer = replace(cfg.trainer, threads=rank_threads(cfg, local_world),
                      progress=cfg.trainer.progress and rank == 0)
    cfg = replace(cfg, trainer=trainer)
    backend = check_devices(cfg)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=timedelta(seconds=cfg.trainer.dist_timeout_s))
    try:
        from cprec.engine.data_parallel import train_rank

        return train_rank(cfg, out_dir, rank, world, local_rank if backend == "nccl" else None)
    finally:
        dist.destroy_process_group()
