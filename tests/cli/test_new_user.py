"""Issue 28: what a new user trips over, each through the CLI in a subprocess: refusals
that are one line and exit 2 with nothing written, records left alone, a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, ROOT, read_summary, run_cli


def _closed_stdout(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cprec <args>` whose stdout reader has gone before it writes (`cprec --help | head -0`)."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        return subprocess.run([sys.executable, "-m", "cprec.cli", *args], cwd=cwd, env=env,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["schedule", "--help"], ["prt", "--help"]])
def test_closed_stdout_ends_quietly(args: list[str], tmp_path: Path) -> None:
    """Item 13: a closed stdout is a normal end: no traceback, SIGPIPE's exit code."""
    r = _closed_stdout(args, tmp_path)
    assert r.stderr == "" and r.returncode == 141, r.stderr


def _one_line_refusal(r: subprocess.CompletedProcess, cwd: Path) -> str:
    """The refusal's single stderr line, after checking exit 2, no traceback, nothing written."""
    assert r.returncode == 2, r.stderr + r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cprec: error: ") and "Traceback" not in r.stderr
    assert list(cwd.iterdir()) == [], "written before the refusal: " + str(list(cwd.iterdir()))
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    # item 1: 32 cycles of one step would train every step at min_bits
    (["trainer.steps=40"], "40 steps in 32 cycles make cycles of one step"),
    # item 2: a batch larger than the training set, sizes named
    (["trainer.batch_size=2000"], "dataset=digits has 1437 training samples, fewer than one batch; "
                                  "use trainer.batch_size<=1437"),
    (["dataset.train_subset=100"], "dataset=digits with dataset.train_subset=100 has 100 training"),
    # item 3: a +key no schema has: nearest keys, or the keys there
    (["+trainer.batch_sise=3"], "+trainer.batch_sise=3 is invalid: no config has the key "
                                "trainer.batch_sise, so it would be stored and ignored; nearest: "
                                "trainer.batch_size"),
    (["+trainer.foo=1"], "keys there: trainer.epochs, trainer.steps"),
    # item 4: a root for a dataset without files
    (["dataset.root=/tmp"], "dataset=digits has no files to read (it ships inside scikit-learn)"),
    # item 10: a refused value leaves no outputs/ behind, nor does a refusal once the run
    # started (data missing: known when it loads)
    (["trainer.eval_batch_size=0"], "trainer.eval_batch_size=0 is invalid"),
    (["dataset=mnist", "model=mlp", "dataset.download=false", "dataset.root=/nonexistent-cprec"],
     "dataset.root='/nonexistent-cprec' is invalid: train-images-idx3-ubyte(.gz)"),
    # item 14 (and 7): data-parallel LM/graph refused before any process starts, in user words
    (["dataset=cora", "trainer.devices=2"], "trains the whole graph as one batch in one process"),
])
def test_refused_in_one_line_before_anything_is_written(args: list[str], needle: str,
                                                         tmp_path: Path) -> None:
    line = _one_line_refusal(run_cli(["train", *args], tmp_path), tmp_path)
    assert needle in line, line


def test_a_sweep_is_validated_job_by_job_before_any_job_runs(tmp_path: Path) -> None:
    """Item 8: jobs invalid only in combination: one whole line per invalid job, exit 2,
    nothing trained (no sweep dir)."""
    r = run_cli(["train", "-m", "model=mlp", "schedule=static,cpt_cosine", "trainer.steps=20,40",
                 "trainer.progress=false"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    # Hydra's job order: static,20  static,40  cpt_cosine,20  cpt_cosine,40
    assert [line.split(": ")[2] for line in lines[:-1]] == [
        "job 2 (schedule=cpt_cosine trainer.steps=20)", "job 3 (schedule=cpt_cosine trainer.steps=40)"]
    assert "32 cycles need at least 32 training steps and the run has 20" in lines[0]
    assert lines[0].endswith("or use schedule=static for a quick smoke test")  # the whole reason
    assert "40 steps in 32 cycles make cycles of one step" in lines[1]
    assert lines[-1] == "cprec: error: 2 of 4 job(s) of the sweep are invalid; nothing was run"
    assert list(tmp_path.iterdir()) == []


def test_imagefolder_class_without_images_is_refused(tmp_path: Path) -> None:
    """Item 5: an empty class folder would be a class with no samples: refused, named."""
    from cprec.tasks.imagefolder import generate_folder

    root = generate_folder(tmp_path / "data", 3, 2, 1)
    (root / "train" / "zz_empty").mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    line = _one_line_refusal(run_cli(["train", "dataset=imagefolder", f"dataset.root={root}",
                                      "model=torchvision", "dataset.workers=0"], cwd), cwd)
    assert f"the class folder {root / 'train' / 'zz_empty'} holds no images" in line


def test_short_cycles_warn_and_the_summary_reports_the_bits_used(tmp_path: Path) -> None:
    """Items 1 and 20: cycles of 4 steps for 6 levels (3..8) train, with a warning in the log,
    summary.json and the result block; bits_fw_min/max are the bits used (3..7); the result
    block and the log say where the bounds came from."""
    r = run_cli(["train", *FAST, "schedule.cycles=6", "hydra.run.dir=run"], tmp_path)
    assert r.returncode == 0, r.stderr
    summary = read_summary(tmp_path / "run")
    assert (summary["bits_fw_min"], summary["bits_fw_max"], summary["bounds_source"]) == (3, 7, "default")
    warning = summary["warnings"][0]
    assert warning.startswith("cycles of 4 steps are shorter than the 6 bit levels 3..8: the run "
                              "trains at 3..7 bits")
    assert warning.endswith("schedule.cycles=4 gives every level a step")
    assert f"warning  {warning}" in r.stdout
    assert "bits     forward 3..7, backward 8  bounds from default" in r.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "forward 3..7 bits, backward 8..8 bits, bounds from default" in log and warning in log


def _tree(run_dir: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resuming_a_completed_run_changes_nothing_there(tmp_path: Path) -> None:
    """Item 9: `resume=<completed run>` (twice) and `hydra.run.dir=<it>` say so, show the
    result and leave every file of the run dir as it was (.hydra/overrides.yaml included)."""
    assert run_cli(["train", *FAST, "schedule=static", "hydra.run.dir=run"], tmp_path).returncode == 0
    before = _tree(tmp_path / "run")
    for args in (["resume=run"], ["resume=run"], [*FAST, "schedule=static", "hydra.run.dir=run"]):
        r = run_cli(["train", *args], tmp_path)
        assert r.returncode == 0 and "run is already completed; not training again" in r.stdout, r.stderr
        assert "completed  final acc" in r.stdout
    # item 7: other settings are refused in the user's words (the group, not schedule.kind)
    other = run_cli(["train", *FAST, "hydra.run.dir=run"], tmp_path)
    assert other.returncode == 2
    assert "holds a run with schedule=static, not schedule=cpt_cosine" in other.stderr
    assert _tree(tmp_path / "run") == before
