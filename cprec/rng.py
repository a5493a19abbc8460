"""Process-wide random state: seeded once per run, saved and restored whole on resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from the run's seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_rank(seed: int, rank: int) -> None:
    """Rank ``rank`` > 0 of a data-parallel group: the global generators re-seeded from (seed,
    rank) once the model is built (identical on every rank), so each rank draws its own
    dropout masks; rank 0 keeps one process's stream."""
    if rank:
        seed_everything(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))


def rng_state() -> dict:
    """Every global generator's state, for a checkpoint."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what ``rng_state`` saved, so the resumed run draws the same numbers."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
