"""Where cprec's configs live, found from the package so console scripts work anywhere."""

from __future__ import annotations

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


def prt_result_path(output_root: str | Path, model: str, dataset: str) -> Path:
    """The file that `cprec prt` writes and CPT runs read bounds from (DESIGN.md contract)."""
    return Path(output_root) / "prt" / f"{model}-{dataset}.json"
