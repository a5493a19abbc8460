"""dataset=imagefolder (a streamed ImageFolder), model=torchvision, the ImageNet presets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cprec.engine import runs
from cprec.engine.build import build_run, plan_run
from cprec.quant import build_quantized, compute_layers, quant_layers
from cprec.tasks.imagefolder import ImageFolderTask, TrainImages, generate_folder, scan
from tests.helpers import read_summary, resumed_and_whole, run_cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 4 training and 2 validation JPEGs of about 40 x 40."""
    return generate_folder(tmp_path_factory.mktemp("imagefolder"), 3, 4, 2)


def small(root: Path) -> list[str]:
    return ["dataset=imagefolder", f"dataset.root={root}", "model=torchvision",
            "dataset.image_size=32", "dataset.resize=36", "dataset.workers=0",
            "trainer.batch_size=5", "trainer.drop_last=false", "trainer.steps=8",
            "trainer.eval_every=4", "trainer.progress=false", "schedule.cycles=2",
            "schedule.bounds=config"]


def test_a_generated_folder_trains_two_steps_through_the_cli(folder: Path, tmp_path: Path) -> None:
    """`cprec train dataset=imagefolder model=torchvision` on 3 classes: 2 steps, the contract."""
    out = run_cli(["train", *small(folder), "trainer.steps=2", "trainer.eval_every=2",
                   "trainer.batch_size=4", "trainer.threads=1", "schedule.cycles=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (summary_path,) = (tmp_path / "outputs").rglob("summary.json")
    s = read_summary(summary_path.parent)
    assert (s["status"], s["steps"]) == ("completed", 2)
    assert (s["dataset"], s["model"]) == ("imagefolder", "torchvision")
    assert 0 <= s["final_acc"] <= 1 and s["macs_per_sample"] > 0 and s["gbitops"] > 0
    (record,) = runs.read_metrics(summary_path.parent)
    assert record["step"] == 2 and record["test_acc"] == s["final_acc"]


@pytest.mark.parametrize("layout, needle", [
    ("no_val", "is invalid: it has no val/ folder"),
    ("missing", "is invalid: no such folder"),
    ("unset", "dataset.root=None is invalid: dataset=imagefolder needs dataset.root="),
])
def test_a_missing_folder_is_one_line(folder: Path, tmp_path: Path, layout: str, needle: str) -> None:
    """No val/, no root folder, no dataset.root: one line, exit 2, no run written."""
    root = tmp_path / "data"
    if layout == "no_val":
        (root / "train" / "a").mkdir(parents=True)
        (root / "train" / "a" / "x.jpg").write_bytes((next(folder.rglob("*.jpg"))).read_bytes())
    args = [] if layout == "unset" else [f"dataset.root={root}"]
    out = run_cli(["train", "dataset=imagefolder", "model=torchvision", *args], tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not list(tmp_path.rglob("*.yaml")) and not list(tmp_path.rglob("summary.json"))


def test_config_mistakes_are_named(compose, folder: Path) -> None:
    """An unknown model.arch lists torchvision's models; a resize below the crop is refused."""
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.arch='resnet7' is invalid: .*'resnet18', 'resnet34'"):
        build_run(compose([*small(folder), "model.arch=resnet7"]))
    with pytest.raises(ConfigError, match="dataset.resize=30 is invalid"):
        compose([*small(folder), "dataset.resize=30"])


def test_plan_without_data_matches_the_built_run(compose, folder: Path) -> None:
    """`cprec schedule` (the folder listed, nothing decoded) and `cprec train` agree."""
    cfg = compose([*small(folder), "trainer.steps=null", "trainer.epochs=2"])
    parts = build_run(cfg)
    assert plan_run(cfg) == parts.plan and parts.total_steps == 2 * 3  # ceil(12 / 5) per epoch
    assert parts.task.info.classes == 3 and parts.task.n_train == 12


def batches(task: ImageFolderTask, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [task.next_batch() for _ in range(n)]


def test_the_batch_stream_resumes_exactly_and_ignores_workers(compose, folder: Path) -> None:
    """Batches 0..6 in one go (no workers) equal 2 batches, a state_dict, then 5 more in a
    new task (one worker process): order and augmentation are keyed by seed/epoch/index."""
    cfg = compose(small(folder))
    device = torch.device("cpu")
    whole = batches(ImageFolderTask(cfg, device, 5), 7)
    cfg.dataset.workers = 1
    first = ImageFolderTask(cfg, device, 5)
    head = batches(first, 2)
    second = ImageFolderTask(cfg, device, 5)
    second.load_state_dict(first.state_dict())
    for (x, y), (x2, y2) in zip(whole, head + batches(second, 5)):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert [len(y) for _, y in whole] == [5, 5, 2, 5, 5, 2, 5]  # drop_last=false keeps the 2
    assert not torch.equal(whole[0][0], whole[3][0])  # the next epoch is reshuffled
    assert second.state_dict() == {"epoch": 2, "batch": 1}


def test_augmentation_is_a_function_of_seed_epoch_and_index(folder: Path, compose) -> None:
    files = scan(compose(small(folder)).dataset).train
    images = TrainImages(files, 32, True, 36, seed=0)
    assert torch.equal(images[(0, 3)][0], images[(0, 3)][0])
    assert images[(0, 3)][0].shape == (3, 32, 32) and images[(0, 3)][0].dtype == torch.uint8
    assert not torch.equal(images[(0, 3)][0], images[(1, 3)][0])
    assert not torch.equal(images[(0, 3)][0], TrainImages(files, 32, True, 36, seed=1)[(0, 3)][0])


def test_resume_from_a_middle_checkpoint_is_bit_exact(compose, folder: Path, tmp_path: Path) -> None:
    """Stop at the step-4 checkpoint (mid-epoch), resume in a new Trainer: same summary and
    metrics as the uninterrupted 8-step run."""
    resumed, whole = resumed_and_whole(compose(small(folder)), tmp_path, 4)
    assert resumed == whole and whole["steps"] == 8
    strip = lambda d: {k: v for k, v in d.items() if k not in ("train_time_s", "wall_time_s")}  # noqa: E731
    assert [strip(r) for r in runs.read_metrics(tmp_path / "split")] == \
        [strip(r) for r in runs.read_metrics(tmp_path / "whole")]


def test_keep_full_patterns_leave_those_layers_in_full_precision(compose, folder: Path) -> None:
    """quant.keep_full: CPT's ImageNet choice (first conv, shortcut convs, FC in fp32); the
    default empty list changes nothing."""
    from cprec.models import build_model
    from cprec.tasks.base import DatasetInfo

    cfg = compose([*small(folder), "experiment=imagenet_resnet18"])
    info = DatasetInfo("imagefolder", 3, 32, 3)
    model, _ = build_quantized(build_model(cfg.model, info), cfg.quant, 0)
    full = [n for n in compute_layers(model) if n not in quant_layers(model)]
    assert full == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0",
                    "layer4.0.downsample.0", "fc"]
    plain = compose([*small(folder)])
    model, _ = build_quantized(build_model(plain.model, info), plain.quant, 0)
    assert [n for n in compute_layers(model) if n not in quant_layers(model)] == ["fc"]


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_imagenet_presets_are_cpt_s_recipe(compose, depth: int) -> None:
    """experiment=imagenet_resnet<d>: cpt_imagenet/train.py's settings on a torchvision ResNet."""
    cfg = compose([f"experiment=imagenet_resnet{depth}"])
    assert (cfg.model.name, cfg.model.arch) == ("torchvision", f"resnet{depth}")
    s, o, t, d, q = cfg.schedule, cfg.optim, cfg.trainer, cfg.dataset, cfg.quant
    assert (s.name, s.min_bits, s.max_bits, s.bw_bits, s.cycles) == ("cpt_cosine", 4, 8, 8, 32)
    assert s.bounds == "config" and (t.epochs, t.batch_size, t.drop_last) == (90, 256, False)
    assert (t.eval_bits, t.eval_every) == ("current", None)  # once per epoch, at the bits trained
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 0.1, 0.9, 1e-4)
    assert o.decay_all and o.warmup_steps == 0
    assert [int(m * 450450) for m in o.milestones] == [150150, 300300]  # epochs 30, 60 of 90 x 5005
    assert (d.name, d.image_size, d.resize, d.augment, d.mean) == ("imagefolder", 224, 256, True,
                                                                   [0.485, 0.456, 0.406])
    assert (q.quantize_first, q.quantize_last, q.keep_full) == (False, False, ["*downsample*"])
    if depth == 18:
        assert cfg.paper["results"]["4-8/8"] == {"vs": "8/8", "acc_gain": 0.04, "cost_saving": 30.4}


def test_schedule_preview_reads_only_the_listing(compose, folder: Path, tmp_path: Path) -> None:
    """`cprec schedule dataset=imagefolder model=torchvision`: the plan and the cost preview."""
    from cprec.precision.preview import preview_schedule

    result = preview_schedule(compose(small(folder)), tmp_path)
    assert result["total_steps"] == 8 and 0 < result["relative_cost"] < 1


def test_prt_results_are_kept_per_torchvision_arch(compose, folder: Path, tmp_path: Path) -> None:
    """outputs/prt/torchvision.<arch>-<dataset>.json: resnet34 never takes resnet18's bounds."""
    import json

    from cprec.paths import prt_result_path
    from cprec.precision.bounds import resolve_bounds

    path = prt_result_path(tmp_path, "torchvision.resnet18", "imagefolder")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "torchvision.resnet18", "dataset": "imagefolder",
                                "lower_bits": 4, "upper_bits": 7}))
    base = [*small(folder), f"output_root={tmp_path}", "schedule.bounds=auto"]
    assert resolve_bounds(compose(base)) == (4, 7, f"prt:{path}")
    assert resolve_bounds(compose([*base, "model.arch=resnet34"]))[2] == "default"


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_checkpoints(folder: Path, tmp_path: Path) -> None:
    """SIGTERM to the whole group (SLURM's pre-emption) reaches the DataLoader workers too: they
    ignore it and the run checkpoints and ends "interrupted" (exit 1, no traceback), not killed
    by a dead worker; resume= completes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [*small(folder), "trainer.steps=40", "trainer.eval_every=20", "trainer.checkpoint_every=2",
            "dataset.workers=1", "trainer.threads=1", "hydra.run.dir=run"]
    proc = subprocess.Popen([sys.executable, "-m", "cprec.cli", "train", *args], cwd=tmp_path,
                            env={**os.environ, "CPREC_KERNELS": "reference"}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert read_summary(tmp_path / "run")["status"] == "interrupted"
    out = run_cli(["train", f"resume={tmp_path / 'run'}"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert read_summary(tmp_path / "run")["steps"] == 40


def test_a_folder_that_does_not_fit_the_layout_is_named(compose, folder: Path, tmp_path: Path) -> None:
    """A val/ class that train/ lacks, and a train/ without images, are one-line DataErrors."""
    import shutil

    from cprec.errors import DataError

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"val/ has class folders that train/ lacks: \['zebra'\]"):
        scan(compose(small(root)).dataset)
    (root / "val" / "zebra").rmdir()
    for image in (root / "train").rglob("*.jpg"):
        image.unlink()
    with pytest.raises(DataError, match="train/ holds no images"):
        scan(compose(small(root)).dataset)


def test_an_unreadable_image_in_a_worker_is_one_line_and_exits(folder: Path, tmp_path: Path) -> None:
    """A corrupt JPEG read by a worker process: the one line a worker-less loader gives,
    exit 2, and the process ends (its workers ignore SIGTERM: they are shut down, not waited
    for forever)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(folder, root)
    bad = sorted((root / "train").rglob("*.jpg"))[5]
    bad.write_bytes(b"not a jpeg")
    out = run_cli(["train", *small(root), "trainer.batch_size=12", "trainer.steps=2",
                   "schedule.cycles=1", "dataset.workers=1"], tmp_path, timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip() == f"cprec: error: {bad}: cannot read the image (cannot identify " \
                                 f"image file '{bad}')"
