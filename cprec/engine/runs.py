"""Run-directory I/O (DESIGN.md contract): metrics, summary, cost, checkpoints, PRT results.

How cprec writes into a run directory, everywhere (this module is the one place):
- whole files (summary.json, cost.json, prt.json, report files, pictures, checkpoints) are
  written to a temporary file in the same folder, flushed to disk and renamed over the
  target (``atomic_write_bytes``): a reader sees the old file or the new one, never half;
  a write that fails (a full disk) removes its temporary file and raises ``RunWriteError``;
- metrics.jsonl only grows by whole lines, one ``write`` each (``MetricsLog.append``); a
  line torn by a crash or a full disk is the last one, and readers drop it;
- the newest checkpoint's predecessor is kept as checkpoint.prev.pt, so one unreadable
  checkpoint never loses the run (``load_checkpoint`` falls back to it).

Torch is imported only by the checkpoint functions, so `cprec report` can use the rest.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from cprec.errors import CprecError

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
COST = "cost.json"
LOCK = ".cprec.lock"
log = logging.getLogger("cprec")


class RunWriteError(CprecError):
    """A file of the run could not be written (a full disk, a quota): the run stops, exit 1."""

    exit_code = 1


class CheckpointError(CprecError):
    """No checkpoint of a run directory can be read: nothing to resume from."""


class RunDirBusy(CprecError):
    """Another live process is training in this run directory."""


def busy_error(run_dir: Path, pid: str) -> RunDirBusy:
    return RunDirBusy(f"{run_dir} is in use by another cprec process (PID {pid or '?'}); wait for "
                      f"it to end (or stop it), then continue with: cprec train resume={run_dir}")


def lock_holder(run_dir: Path) -> str | None:
    """The PID holding ``run_dir``'s lock, or None when no live process holds it. Creates
    nothing (a check made before Hydra writes anything into the directory)."""
    import fcntl

    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


class RunLock:
    """An exclusive lock on a run directory for the whole run (``with RunLock(dir): ...``).

    flock on ``<run dir>/.cprec.lock``: the kernel drops it when the process ends, however
    it ends, so a killed run never leaves a stale lock; the file (holding the PID) stays.
    A second process on the same directory gets RunDirBusy naming the holder's PID.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path, self.fd = Path(run_dir) / LOCK, -1

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise busy_error(self.path.parent, pid) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file.

    An OSError (ENOSPC, EDQUOT, EROFS ...) leaves no temporary file and becomes a
    RunWriteError naming the file and the reason.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise RunWriteError(f"could not write {path} ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_results(run_dir: Path, summary: dict, cost: dict) -> None:
    """The end of a run: cost.json (per-layer breakdown), then summary.json (the verdict
    other tools wait for), each atomically."""
    write_json(run_dir / COST, cost)
    write_json(run_dir / SUMMARY, summary)


def completed_summary(run_dir: Path) -> dict | None:
    """The summary of a run directory that already completed, else None."""
    path = run_dir / SUMMARY
    try:
        done = read_json(path)
    except (OSError, ValueError):
        return None  # missing or damaged: the run is continued from its checkpoint
    return done if isinstance(done, dict) and done.get("status") == "completed" else None


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def save_checkpoint(path: Path, state: dict) -> None:
    """Serialize in memory, then write atomically; the checkpoint it replaces is kept as
    checkpoint.prev.pt. (torch.save straight to disk turns a full disk into an opaque
    RuntimeError and may leave a torn file; this way it is a clear RunWriteError.)"""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = path.with_name(f".{path.name}.new")
    atomic_write_bytes(tmp, buffer.getvalue())
    if path.exists():
        os.replace(path, path.with_name(PREVIOUS_CHECKPOINT))
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "config" not in state:
        raise ValueError("not a cprec checkpoint")
    return state


def load_checkpoint(run_dir: Path) -> tuple[dict, Path] | None:
    """The newest readable checkpoint of ``run_dir`` and its path; None if there is none.

    An unreadable checkpoint.pt (truncated, garbled) falls back to checkpoint.prev.pt with
    a warning naming both; if checkpoints exist but none can be read, CheckpointError.
    """
    candidates = [run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT]
    if not any(p.exists() for p in candidates):
        return None
    problems = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            state = _load(path)
        except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors ...
            problems.append(f"{path.name}: {type(e).__name__}")
            continue
        if problems:
            log.warning("%s is unreadable (%s); resuming from %s (step %s) instead",
                        candidates[0], problems[0], path, state.get("loop", {}).get("step", "?"))
        return state, path
    raise CheckpointError(f"no readable checkpoint in {run_dir} ({'; '.join(problems)}); start "
                          f"over in a new run dir, or delete {' and '.join(c.name for c in candidates)} "
                          f"there to restart this run from step 0")


class MetricsLog:
    """Append-only metrics.jsonl that can be cut back to a checkpoint's position on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._count = len(self.read())  # records so far, kept in step with appends

    def lines(self) -> int:
        return self._count

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records (those written before the checkpoint resumed from)."""
        if not self.path.exists():
            return
        kept = [json.dumps(r) for r in self.read()][:n]
        atomic_write_bytes(self.path, "".join(line + "\n" for line in kept).encode())
        self._count = len(kept)

    def append(self, record: dict) -> None:
        """One whole line per record, in one write (see the module docstring)."""
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        except OSError as e:
            raise RunWriteError(f"could not append to {self.path} ({e.strerror or e})") from None
        self._count += 1

    def read(self) -> list[dict]:
        """The records; a last line torn by a crash is dropped, damage elsewhere raises."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except ValueError:
                if i == len(lines) - 1:
                    break
                raise ValueError(f"{self.path}: line {i + 1} is not JSON") from None
        return records


def read_metrics(run_dir: Path) -> list[dict]:
    return MetricsLog(Path(run_dir) / METRICS).read()
