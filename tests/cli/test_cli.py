"""The CLI end to end, in subprocesses, on the embedded digits data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FAST, read_summary, run_cli

CONTRACT_SUMMARY = {"status", "final_acc", "best_acc", "final_loss", "steps", "gbitops",
                    "relative_cost", "train_time_s", "wall_time_s", "seed", "model", "dataset",
                    "schedule", "bits_fw_min", "bits_fw_max", "bits_bw", "bounds_source"}
CONTRACT_METRICS = {"step", "epoch", "lr", "bits_fw", "bits_bw", "train_loss", "train_acc",
                    "test_loss", "test_acc", "gbitops"}


def only_run_dir(root: Path) -> Path:
    dirs = [p.parent for p in root.rglob(".hydra")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def test_help_is_fast_and_lists_commands() -> None:
    """`cprec --help` must not import torch: well under a second."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "cprec.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert time.perf_counter() - start < 3.0  # generous for a loaded CI box; ~0.1 s here
    for command in ("train", "prt", "schedule", "report"):
        assert command in out.stdout
    probe = "import sys, cprec.cli, cprec.cli.train, cprec.config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_train_help_and_cfg(tmp_path: Path) -> None:
    """--help lists every config group; --cfg job prints the composed config and writes no run dir."""
    help_out = run_cli(["train", "--help"], tmp_path)
    assert help_out.returncode == 0
    for group in ("model", "dataset", "schedule", "optim", "quant", "experiment"):
        assert f"\n  {group} " in help_out.stdout
    cfg = run_cli(["train", "--cfg", "job", "model=lenet"], tmp_path)
    assert cfg.returncode == 0 and "name: lenet" in cfg.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_bare_train_reaches_target_accuracy(tmp_path: Path) -> None:
    """The README's default job: `cprec train` on digits, CPT 3..8/8, >= 0.9 test accuracy."""
    out = run_cli(["train"], tmp_path, compile_kernels=True)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "outputs" / "train")
    summary = read_summary(run_dir)
    assert CONTRACT_SUMMARY <= set(summary)
    assert summary["status"] == "completed" and summary["final_acc"] >= 0.9
    assert (summary["schedule"], summary["bits_fw_min"], summary["bits_fw_max"]) == ("cpt_cosine", 3, 8)
    assert summary["bounds_source"] == "default" and 0 < summary["relative_cost"] < 0.05
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 30 and all(CONTRACT_METRICS <= set(r) for r in records)
    assert records[-1]["gbitops"] == pytest.approx(summary["gbitops"])
    for name in ("checkpoint.pt", "train.log", "cost.json", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name


@pytest.mark.slow
def test_fp32_run_reports_full_precision_cost(tmp_path: Path) -> None:
    """fp32: 32 bits, relative cost 1, GBitOPs = steps * batch * MACs * 3072 / 1e9."""
    out = run_cli(["train", *FAST, "schedule=fp32"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "outputs")
    s = read_summary(run_dir)
    assert (s["bits_fw_min"], s["bits_fw_max"], s["bits_bw"], s["relative_cost"]) == (32, 32, 32, 1.0)
    verdict, bits, where = out.stdout.splitlines()[-3:]  # the result block ends the output
    assert bits == "bits     forward 32, backward 32  bounds from config"
    assert verdict.startswith(f"completed  final acc {s['final_acc']:.4f}  best {s['best_acc']:.4f}  ")
    assert f"{s['gbitops']:.3g} GBitOPs (1.0000 of fp32)  train " in verdict
    assert where == f"run dir  {run_dir.relative_to(tmp_path)}"
    macs = 64 * 256 + 256 * 256 + 256 * 10  # mlp on 8x8 digits
    assert s["macs_per_sample"] == macs
    assert s["gbitops"] == pytest.approx(24 * 128 * macs * 3072 / 1e9, rel=1e-12)


@pytest.mark.slow
def test_two_job_multirun(tmp_path: Path) -> None:
    """-m gives numbered job dirs named by their overrides; static 8/8 costs the closed form,
    CPT less."""
    out = run_cli(["train", "-m", *FAST, "schedule=static,cpt_cosine"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "outputs" / "train-multirun").rglob(".hydra"))
    assert jobs[0].name.startswith("0_") and "schedule=static" in jobs[0].name
    assert jobs[1].name.startswith("1_") and "schedule=cpt_cosine" in jobs[1].name
    costs = [read_summary(j)["relative_cost"] for j in jobs]
    quantized, full = 64 * 256 + 256 * 256, 256 * 10  # the classifier stays full precision
    expected = (quantized * (64 + 128) + full * 3072) / ((quantized + full) * 3072)
    assert costs[0] == pytest.approx(expected, rel=1e-12) and costs[1] < costs[0]


@pytest.mark.slow
def test_fashion_mnist_trains(tmp_path: Path) -> None:
    """A short real run on Debian's Fashion-MNIST files (skips where they are not installed)."""
    from cprec.tasks.vision import DEBIAN_FASHION_MNIST

    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    out = run_cli(["train", "dataset=fashion_mnist", "model=mlp", "trainer.steps=100",
                   "trainer.eval_every=50", "trainer.progress=false", "dataset.download=false",
                   "dataset.train_subset=8000", "dataset.test_subset=2000", "schedule.cycles=4"],
                  tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    s = read_summary(only_run_dir(tmp_path / "outputs"))
    assert s["dataset"] == "fashion_mnist" and s["final_acc"] > 0.7  # chance is 0.1; ~0.80 here


@pytest.mark.parametrize("args, needle, code", [
    (["train", "schedule.bits=40", "schedule=static"], "schedule.bits=40", 2),
    (["train", "schedule.min_bits=8", "schedule.max_bits=4"], "schedule.min_bits", 2),
    (["train", "trainer.steps=10", "schedule.cycles=32"], "schedule.cycles", 2),
    (["train", "model=vgg"],
     "model=vgg is invalid: choose one of ['cpt_mobilenetv2', 'gcn', 'lenet', 'lstm', 'mlp'", 2),
    (["train", "trainer.steps=abc"], "trainer.steps=abc is invalid: value 'abc' of type 'str'", 2),
    (["train", "trainer.stepz=3"], "trainer.stepz=3 is invalid: key 'stepz' not in", 2),
    (["train", "schedule.bits=[8"], "schedule.bits=[8 is invalid: no viable alternative", 2),
    (["train", "-m", "seed=0,1", "trainer.steps=10,abc"], "trainer.steps=abc is invalid", 2),
    (["prt", "-m", "model=mlp,resnet999"], "model=resnet999 is invalid: choose one of", 2),
    (["train", "schedule.bounds=prt"], "cprec prt model=resnet20 dataset=digits", 2),
    (["nonsense"], "unknown command", 2),
    (["train", "trainer.eval_bits=best"], "trainer.eval_bits='best' is invalid: choose one of", 2),
    (["train", "optim.warmup_lr=-1"], "optim.warmup_lr=-1", 2),
    (["train", "dataset.mean=[0.5]"], "dataset.mean", 2),
])
def test_user_errors_are_one_line(tmp_path: Path, args: list[str], needle: str, code: int) -> None:
    """cprec's validation and Hydra's composition errors alike: one line, exit 2, no run dir."""
    out = run_cli(args, tmp_path)
    assert out.returncode == code, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not list((tmp_path / "outputs").rglob("*.yaml")) if (tmp_path / "outputs").exists() else True


def test_hydra_overrides_pass_preflight(tmp_path: Path) -> None:
    """The pre-flight composes Hydra's own settings too, and lets valid ones through."""
    out = run_cli(["train", "--cfg", "hydra", "hydra/launcher=parallel", "hydra.launcher.n_jobs=3",
                   "hydra.run.dir=elsewhere"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "n_jobs: 3" in out.stdout and "dir: elsewhere" in out.stdout
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "elsewhere").exists()


def test_sweep_lands_under_cprec_output_root(tmp_path: Path) -> None:
    """CPREC_OUTPUT_ROOT moves sweeps too (they used to land in ./outputs), and a sweep ends
    with one line per job and the report command."""
    root = tmp_path / "elsewhere"
    # run_cli drops CPREC_OUTPUT_ROOT (tests must not write elsewhere), so call the CLI here
    env = {**os.environ, "CPREC_KERNELS": "reference", "CPREC_OUTPUT_ROOT": str(root)}
    out = subprocess.run([sys.executable, "-m", "cprec.cli", "train", "-m", *FAST, "seed=3",
                          "trainer.threads=1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "outputs").exists()
    (sweep,) = (root / "train-multirun").glob("*/*")
    assert read_summary(only_run_dir(sweep))["status"] == "completed"
    lines = out.stdout.splitlines()
    shown = sweep.relative_to(tmp_path)  # paths below the working dir are shown relative
    assert lines[-3] == f"sweep {shown}: 1 job(s)"
    assert lines[-2].startswith("0  completed  final acc ")  # one job: nothing differs
    assert lines[-1] == f"next: cprec report {shown}"
