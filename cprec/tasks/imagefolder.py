"""``dataset=imagefolder dataset.root=<folder>``: ImageNet-style training from image files.

The folder holds ``train/<class>/<image>`` and ``val/<class>/<image>`` (torchvision's
ImageFolder layout; classes are train/'s subfolders, sorted). Unlike the in-memory datasets
(tasks/vision.py) the images are streamed: DataLoader workers decode each JPEG and crop it (the
standard ImageNet augmentation: RandomResizedCrop to ``dataset.image_size`` and a
horizontal flip; evaluation: the short side resized to ``dataset.resize``, then a center
crop), and hand uint8 batches over; normalisation happens batched on the training device.

Exact resume: the order of epoch e is a permutation seeded by (seed, e), and a sample's
crop and flip are drawn from a generator seeded by (seed, epoch, sample index), so neither
depends on which worker loads it or when. The task's state is its position (epoch, batch);
a resumed run restarts the loader at that batch and sees the batches an uninterrupted run
sees. ``dataset.workers`` changes speed only (a result-neutral key).
"""

from __future__ import annotations

import atexit
import math
import os
import random
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import DatasetConfig, TrainConfig
from cprec.errors import ConfigError, DataError
from cprec.tasks.base import AccuracyWindow, DatasetInfo, ShardableTask, TaskFamily, eval_mode, shard_bounds

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # used when dataset.mean/std are null
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Folder:
    """The files of an ImageFolder root: class names and (path, label) per split."""

    classes: list[str]
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]


def _images(class_dir: Path, label: int) -> list[tuple[str, int]]:
    names = sorted(e.name for e in os.scandir(class_dir)
                   if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
    return [(str(class_dir / n), label) for n in names]


def scan(cfg: DatasetConfig) -> Folder:
    """List the folder's images (cheap: no image is opened); a missing root, split or class
    is a one-line error naming dataset.root."""
    if not cfg.root:
        raise ConfigError("dataset.root", cfg.root, "dataset=imagefolder needs "
                          "dataset.root=<folder holding train/<class>/ and val/<class>/>")
    root = Path(cfg.root).expanduser()
    bad = f"dataset.root={cfg.root!r} is invalid"
    if not root.is_dir():
        raise DataError(f"{bad}: no such folder")
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError(f"{bad}: it has no {split}/ folder (imagefolder reads "
                            f"train/<class>/<image> and val/<class>/<image>)")
    classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not classes:
        raise DataError(f"{bad}: train/ holds no class folders")
    index = {c: i for i, c in enumerate(classes)}
    stray = sorted(e.name for e in os.scandir(root / "val") if e.is_dir() and e.name not in index)
    if stray:
        raise DataError(f"{bad}: val/ has class folders that train/ lacks: {stray[:5]}")
    per_class = {c: _images(root / "train" / c, index[c]) for c in classes}
    empty = [c for c, files in per_class.items() if not files]
    if 0 < len(empty) < len(classes):  # a class no image can teach (none has any: below)
        more = f" (and {len(empty) - 1} more)" if empty[1:] else ""
        raise DataError(f"{bad}: the class folder {root / 'train' / empty[0]} holds no images "
                        f"({', '.join(IMAGE_EXTENSIONS)}){more}; add images or remove the folder")
    train = [f for c in classes for f in per_class[c]]
    val = [f for c in classes if (root / "val" / c).is_dir() for f in _images(root / "val" / c, index[c])]
    for split, files in zip(SPLITS, (train, val)):
        if not files:
            raise DataError(f"{bad}: {split}/ holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Folder(classes, train[: cfg.train_subset], val[: cfg.test_subset])


def info_of(cfg: DatasetConfig, folder: Folder) -> DatasetInfo:
    return DatasetInfo(cfg.name, 3, cfg.image_size, len(folder.classes))


def shape(cfg: DatasetConfig) -> tuple[DatasetInfo, int]:
    folder = scan(cfg)
    return info_of(cfg, folder), len(folder.train)


# -- decoding and cropping (runs in the DataLoader workers) ----------------------------------
def load_rgb(path: str):  # -> PIL.Image.Image
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None


def resized_crop_box(width: int, height: int, rnd: random.Random, scale: tuple = (0.08, 1.0),
                     ratio: tuple = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (left, top, w, h), torchvision's rule drawn from ``rnd``: up to
    10 tries of a random area fraction and log-uniform aspect ratio, else a center crop."""
    area, log_ratio = width * height, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rnd.uniform(*scale)
        aspect = math.exp(rnd.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return rnd.randint(0, width - w), rnd.randint(0, height - h), w, h
    in_ratio = width / height
    w, h = width, height
    if in_ratio < ratio[0]:
        h = round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w = round(height * ratio[1])
    return (width - w) // 2, (height - h) // 2, w, h


def as_uint8(img) -> torch.Tensor:
    """A PIL RGB image as a 3 x H x W uint8 tensor (normalised later, batched on the device)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class TrainImages(torch.utils.data.Dataset):
    """Training samples keyed by (epoch, index): the crop and flip are a function of
    (seed, epoch, index), never of the worker or the order of loading."""

    def __init__(self, files: list[tuple[str, int]], size: int, augment: bool, resize: int,
                 seed: int) -> None:
        self.files, self.size, self.augment, self.resize, self.seed = files, size, augment, resize, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        from PIL import Image

        epoch, i = key
        path, label = self.files[i]
        img = load_rgb(path)
        if not self.augment:
            return as_uint8(center_crop(img, self.resize, self.size)), label
        rnd = random.Random(f"{self.seed}:{epoch}:{i}")  # str seeds hash the same in every process
        left, top, w, h = resized_crop_box(*img.size, rnd)
        img = img.resize((self.size, self.size), Image.BILINEAR, box=(left, top, left + w, top + h))
        if rnd.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return as_uint8(img), label


def center_crop(img, resize: int, size: int):
    """The evaluation view: short side resized to ``resize``, then the central size x size."""
    from PIL import Image

    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = round((nw - size) / 2), round((nh - size) / 2)
    return img.crop((left, top, left + size, top + size))


class ValImages(torch.utils.data.Dataset):
    def __init__(self, files: list[tuple[str, int]], size: int, resize: int) -> None:
        self.files, self.size, self.resize = files, size, resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.files[i]
        return as_uint8(center_crop(load_rgb(path), self.resize, self.size)), label


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample order of ``epoch``: a permutation seeded by (seed, epoch) alone."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


class EpochBatches:
    """Batch sampler: the batches of every epoch from (epoch, batch) on, without end; items
    are (epoch, index) keys of TrainImages. With ``drop_last`` an epoch's last partial batch
    is skipped, else trained (smaller). Data parallel: rank r of N yields only its slice of
    every global batch, so its workers load only those images."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, seed: int, epoch: int,
                 batch: int) -> None:
        self.n, self.batch_size, self.drop_last, self.seed = n, batch_size, drop_last, seed
        self.epoch, self.batch = epoch, batch
        self.rank, self.world = 0, 1

    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, start, b = self.epoch, self.batch, self.batch_size
        while True:
            order = epoch_order(self.n, self.seed, epoch)
            for k in range(start, self.steps_per_epoch()):
                keys = order[k * b:(k + 1) * b]
                lo, hi = shard_bounds(len(keys), self.rank, self.world)
                yield [(epoch, int(i)) for i in keys[lo:hi]]
            epoch, start = epoch + 1, 0


def _init_worker(worker_id: int) -> None:
    """One thread per worker (the training process owns the cores' threads); SIGINT and
    SIGTERM ignored: a stop signal sent to the whole process group (Ctrl-C, SLURM's
    pre-emption) is the training process's to act on (checkpoint, then shut the workers
    down), not a worker death that would end the run with an error instead."""
    import signal

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# the worker-backed loader iterators alive in this process (see _stop_workers_at_exit)
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # registered after torch's and multiprocessing's hooks, so it runs before them
def _stop_workers_at_exit() -> None:
    """Shut down the workers of loaders still alive at exit (a run that ended with an error
    keeps its task alive in the traceback) the way the loader itself does; multiprocessing's
    own exit hook would SIGTERM them, which they ignore, and wait for them forever."""
    for iterator in list(_LIVE_ITERATORS):
        iterator._shutdown_workers()
        for worker in getattr(iterator, "_workers", []):
            if worker.is_alive():
                worker.kill()


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A DataError raised in a worker arrives wrapped with the worker's traceback: keep its
    own one line (the message a worker-less loader raises)."""
    try:
        yield
    except DataError as e:
        raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None


class ImageFolderTask(ShardableTask):
    """Classification over a streamed ImageFolder: cross-entropy, accuracy; data parallel,
    each rank streams its slice of every batch and scores its slice of val/."""

    def __init__(self, cfg: TrainConfig, device: torch.device, batch_size: int) -> None:
        d = cfg.dataset
        folder = scan(d)
        mean, std = (d.mean, d.std) if d.mean is not None else (IMAGENET_MEAN, IMAGENET_STD)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError("dataset.mean", d.mean, "imagefolder images are RGB: give 3 values "
                              "for dataset.mean and dataset.std")
        self.device, self.seed, self.workers = device, cfg.seed, d.workers
        self.info, self.n_train, self.n_val = info_of(d, folder), len(folder.train), len(folder.val)
        self.batch_size = min(batch_size, self.n_train)
        self.train_set = TrainImages(folder.train, d.image_size, d.augment, d.resize, cfg.seed)
        self.val_set = ValImages(folder.val, d.image_size, d.resize)
        self.sampler = EpochBatches(self.n_train, self.batch_size, cfg.trainer.drop_last, cfg.seed, 0, 0)
        self.steps_per_epoch = self.sampler.steps_per_epoch()
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.epoch, self.batch = 0, 0  # the position: the next batch is this epoch's batch-th
        self._batches: Iterator | None = None
        self.share = (0, 0)  # (this rank's, the global batch's) samples of the last batch

    def shard(self, rank: int, world: int) -> None:
        super().shard(rank, world)
        self.sampler.rank, self.sampler.world = rank, world
        self._batches = None

    def _batches_of(self, dataset: torch.utils.data.Dataset, **kwargs) -> Iterator:
        """Batches of a DataLoader with its own seeded generator: making the iterator draws the
        workers' base seed from it, not from the global RNG (which resume restores exactly)."""
        iterator = iter(torch.utils.data.DataLoader(
            dataset, num_workers=self.workers, pin_memory=self.device.type == "cuda",
            worker_init_fn=_init_worker if self.workers else None,
            generator=torch.Generator().manual_seed(self.seed), **kwargs))
        if self.workers:
            _LIVE_ITERATORS.add(iterator)
        return iterator

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float()
        return (x - self.mean) / self.std

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batches is None:  # (re)start the loader at the current position
            s = self.sampler
            s.epoch, s.batch = self.epoch, self.batch
            self._batches = self._batches_of(self.train_set, batch_sampler=s)
        with _one_line_errors():
            x, y = next(self._batches)
        self.share = (len(y), min(self.batch_size, self.n_train - self.batch * self.batch_size))
        self.batch += 1
        if self.batch == self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        return self._normalized(x), y.to(self.device, non_blocking=True)

    def forward(self, model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(batch[0])
        return F.cross_entropy(out, batch[1]), out

    def batch_share(self) -> tuple[int, int]:
        return self.share

    def new_window(self) -> AccuracyWindow:
        return AccuracyWindow(self.device)

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch_size: int) -> list[float]:
        """(summed loss, correct) over this rank's slice of val/ in file order, center-cropped,
        in eval mode; batches of ``batch_size``."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        lo, hi = shard_bounds(self.n_val, self.rank, self.world)
        part = torch.utils.data.Subset(self.val_set, range(lo, hi))
        with eval_mode(model), _one_line_errors():
            for x, y in self._batches_of(part, batch_size=batch_size, shuffle=False):
                y = y.to(self.device, non_blocking=True)
                out = model(self._normalized(x))
                loss_sum += F.cross_entropy(out, y, reduction="sum")
                correct += (out.argmax(1) == y).sum()
        return [float(loss_sum), int(correct)]

    def metrics_of(self, sums: list[float]) -> dict[str, float]:
        return {"test_loss": sums[0] / self.n_val, "test_acc": sums[1] / self.n_val}

    def sample_input(self) -> torch.Tensor:
        return dummy_input(self.info).to(self.device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = state["epoch"], state["batch"]
        self._batches = None  # the next batch restarts the loader there


def dummy_input(info: DatasetInfo) -> torch.Tensor:
    """A batch of one image of the crop size: MACs depend on the shape only."""
    return torch.zeros(1, 3, info.size, info.size)


def generate_folder(root: Path, classes: int, train_per_class: int, val_per_class: int,
                    size: tuple[int, int] = (40, 40), seed: int = 0) -> Path:
    """Write a small ImageFolder of random JPEGs (tests, benchmark, smoke runs): each class
    a different mean colour plus noise, so a model can tell them apart; sizes vary a little."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        colour = rng.integers(40, 216, 3)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = Path(root) / split / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                w, h = (int(v * rng.uniform(0.85, 1.15)) for v in size)
                pixels = np.clip(colour + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"img{k:05d}.jpg", quality=90)
    return Path(root)


def family() -> TaskFamily:
    return TaskFamily(shape, lambda cfg, device, batch_size: ImageFolderTask(cfg, device, batch_size),
                      dummy_input, unit="images")
