"""Fixtures every test folder shares: configs composed as the CLI composes them, reference
kernels in process. Plain helpers (the CLI in a subprocess, resume checks) are in helpers.py."""

from __future__ import annotations

import os

import pytest

from tests.helpers import ROOT

# subprocesses import this checkout's package, also where the editable install points at
# another one (a git worktree)
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
# pytest -n N (pytest-xdist, the README's test command): N workers share the cores, so each
# worker and the cprec processes it starts run one thread (two torch processes with default
# threads on two cores slow each other ~20x); a run of one thread is also deterministic
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def compose():
    """compose(overrides, config_name="train") -> typed TrainConfig, as the CLI builds it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cprec.config import register_schemas
    from cprec.paths import config_dir
    from cprec.validate import to_train_config

    register_schemas()

    def _compose(overrides: list[str] | None = None, config_name: str = "train"):
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides or [])
        return to_train_config(cfg)

    return _compose


@pytest.fixture(autouse=True, scope="session")
def _reference_kernels():
    """In-process tests run the reference quantization kernels (same math, no build wait)."""
    from cprec.quant import set_backend

    set_backend("reference")
    yield
