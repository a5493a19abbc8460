"""Where cprec's configs live, found from the package so console scripts work anywhere."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path


def config_dir() -> str:
    """Absolute path of the Hydra config tree.

    A source checkout (editable install) keeps it at the top-level ``conf/``; a wheel ships
    it inside the package as ``cprec/conf``. Hydra needs an absolute path because a
    relative ``config_path`` is resolved against the calling module, which breaks under
    console scripts.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"cprec configs not found next to {package}; reinstall cprec")


def prt_result_path(output_root: str | Path, model: str, dataset: str, formats: bool = False) -> Path:
    """The file that `cprec prt` writes and CPT runs read bounds from (DESIGN.md contract);
    a range test over a ladder of formats has its own (``<model>-<dataset>.formats.json``)."""
    return Path(output_root) / "prt" / f"{model}-{dataset}{'.formats' if formats else ''}.json"


def output_root(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The folder every run and sweep lands under, and the setting that chose it.

    Code that runs before Hydra composes (the writability probe, sweep-dir pinning) must
    agree with train.yaml's ``output_root: ${oc.env:CPREC_OUTPUT_ROOT,outputs}``: the
    ``output_root=`` override wins, then ``$CPREC_OUTPUT_ROOT``, then ``outputs``. Returns
    ``(root, setting)`` with setting ``"output_root"`` or ``"CPREC_OUTPUT_ROOT"``.
    """
    environ = os.environ if environ is None else environ
    for arg in reversed(argv):  # Hydra applies overrides in order: the last one wins
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key == "output_root":
            return value, "output_root"
    if environ.get("CPREC_OUTPUT_ROOT"):
        return environ["CPREC_OUTPUT_ROOT"], "CPREC_OUTPUT_ROOT"
    return "outputs", "output_root"


def arg_value(argv: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith(key + "=")), None)
