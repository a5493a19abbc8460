"""Two cprec runs on one machine share its cores instead of fighting over them.

Every training process claims the cores it may run on (``os.sched_getaffinity``) with a
small file in the claims dir (``$CPREC_CLAIMS_DIR``, else ``~/.cache/cprec/claims``, else
the temp dir); claims of processes that no longer exist are swept. A run whose threads are
automatic (``trainer.threads`` unset) uses torch's default while it is alone, and, while
other claims overlap its cores, its share of them: each core split evenly among the
processes that may use it (``share_of``), at least one thread. It looks again every few
steps (``ThreadShare``), so the first of two runs steps down when the second starts and
back up when it ends. ``trainer.threads=N`` stays N (and is claimed, so others make room).

The OpenMP pools sleep instead of spinning while they wait (``OMP_WAIT_POLICY=passive``,
set by the command line before torch loads): a spinning pool burns the cores another
process needs, which is what made two runs side by side 20-40x slower.

Caveat: a thread count chosen from what else runs makes float reductions depend on it, so
a run that shared its cores may differ in the last digits from the same run alone; summary.json's
``threads`` records the counts used (a run alone, or with fixed threads, is unaffected).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from cprec.engine.step import StepPlugin

CLAIMS_ENV = "CPREC_CLAIMS_DIR"
REFRESH_EVERY = 10  # steps between looks at the other claims


def claims_dir() -> Path:
    """Where this user's cprec processes leave their claims."""
    if os.environ.get(CLAIMS_ENV):
        return Path(os.environ[CLAIMS_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for base in (cache / "cprec", Path(tempfile.gettempdir()) / f"cprec-{os.getuid()}"):
        try:
            (base / "claims").mkdir(parents=True, exist_ok=True)
            return base / "claims"
        except OSError:
            continue
    return Path(tempfile.mkdtemp(prefix="cprec-claims-"))


@dataclass(frozen=True)
class Claim:
    pid: int
    cpus: frozenset[int]


def share_of(cpus: frozenset[int], others: list[Claim]) -> int:
    """Threads for a process allowed on ``cpus`` beside ``others``: the sum over its cores of
    1 / (processes allowed on that core), rounded down, at least 1."""
    share = sum(1 / (1 + sum(c in o.cpus for o in others)) for c in cpus)
    return max(1, int(share + 1e-9))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_claims(folder: Path, own: int) -> list[Claim]:
    """The live claims in ``folder`` other than ``own``'s; stale ones are removed."""
    found = []
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            claim = Claim(int(data["pid"]), frozenset(data["cpus"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours to read
        if claim.pid == own:
            continue
        if _alive(claim.pid):
            found.append(claim)
        else:
            path.unlink(missing_ok=True)
    return found


class ThreadClaim:
    """This process's claim on its cores and the thread count that follows from the others'."""

    def __init__(self, fixed: int | None, folder: Path | None = None) -> None:
        self.fixed, self.folder, self.pid = fixed, folder or claims_dir(), os.getpid()
        self.cpus = frozenset(os.sched_getaffinity(0))
        self.default = torch.get_num_threads()
        self.path = self.folder / f"{self.pid}.json"
        self.used: set[int] = set()

    def open(self) -> ThreadClaim:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": self.pid, "cpus": sorted(self.cpus)}))
        tmp.replace(self.path)
        self.refresh()
        return self

    def threads(self) -> int:
        """The thread count now: fixed, else torch's default capped at this process's share."""
        if self.fixed:
            return self.fixed
        others = read_claims(self.folder, self.pid)
        return min(self.default, share_of(self.cpus, others)) if others else self.default

    def refresh(self) -> None:
        n = self.threads()
        if n != torch.get_num_threads():
            torch.set_num_threads(n)
        self.used.add(n)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> ThreadClaim:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


class ThreadShare(StepPlugin):
    """Looks at the other runs' claims every ``REFRESH_EVERY`` steps; summary.json's
    ``threads``: the counts this run used (more than one: it shared its cores for a while)."""

    name = "threads"

    def __init__(self, claim: ThreadClaim) -> None:
        self.claim, self.steps = claim, 0

    def after_update(self, updated: bool) -> None:
        self.steps += 1
        if self.steps % REFRESH_EVERY == 0:
            self.claim.refresh()

    def summary(self) -> dict:
        mode = "fixed" if self.claim.fixed else "auto"
        return {"threads": sorted(self.claim.used), "threads_mode": mode}
