"""Dataset registry: every dataset becomes in-memory tensors plus batched on-device augmentation.

Keeping data as tensors (not a DataLoader over PIL images) makes the data pipeline a few
indexing ops per step, so it stays a small share of step time even on two CPU cores.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cprec.config import DatasetConfig
from cprec.errors import DataError
from cprec.tasks.base import DatasetInfo, shard_bounds

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_ROOT = Path("~/.cache/cprec/data").expanduser()


@dataclass
class Dataset:
    info: DatasetInfo
    x_train: torch.Tensor  # float32, normalized, N x C x H x W
    y_train: torch.Tensor  # int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    augment: bool = False
    # the value each channel's padded border takes in augmentation (normalised units):
    # 0 = the mean colour; -mean/std = a black border around the raw image (CPT)
    pad_fill: torch.Tensor | None = None

    def to(self, device: torch.device) -> Dataset:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Dataset(self.info, move(self.x_train), move(self.y_train), move(self.x_test),
                       move(self.y_test), self.augment, move(self.pad_fill))


def _normalize(train: torch.Tensor, test: torch.Tensor, cfg: DatasetConfig
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel standardization with ``dataset.mean/std`` or the training set's statistics;
    also returns where raw 0 lands (the border of an image padded before normalising)."""
    if cfg.mean is not None:
        c = train.shape[1]
        if len(cfg.mean) != c or len(cfg.std) != c:
            from cprec.errors import ConfigError

            raise ConfigError("dataset.mean", cfg.mean, f"{cfg.name} has {c} channels: give "
                              f"{c} values for dataset.mean and dataset.std")
        mean = torch.tensor(cfg.mean, dtype=train.dtype).view(1, c, 1, 1)
        std = torch.tensor(cfg.std, dtype=train.dtype).view(1, c, 1, 1)
    else:
        mean = train.mean(dim=(0, 2, 3), keepdim=True)
        std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std, (-mean / std).view(-1)


def _digits(cfg: DatasetConfig) -> tuple:
    from cprec.tasks.digits import digits_split  # scikit-learn's file, without importing it

    x_tr, x_te, y_tr, y_te = digits_split()
    as_img = lambda a: torch.tensor(a, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # noqa: E731
    return as_img(x_tr), torch.tensor(y_tr), as_img(x_te), torch.tensor(y_te), 10


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{path}: unsupported IDX element type {dtype_code:#x} (expected ubyte)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_like(cfg: DatasetConfig, name: str) -> tuple:
    """MNIST-format IDX files. An explicit ``dataset.root`` is the only place looked in (a
    root that lacks the files is an error naming them, never a silent load from elsewhere);
    without one: cprec's data cache, then Debian's package folder (Fashion-MNIST)."""
    tv_dir = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_DATA_ROOT
    dirs = [root, root / tv_dir / "raw", root / name]
    if name == "fashion_mnist" and not cfg.root:
        dirs.append(DEBIAN_FASHION_MNIST)
    found = [_find_idx(dirs, s) for s in IDX_STEMS]
    if None in found and cfg.download:
        try:
            import torchvision

            cls = {"mnist": torchvision.datasets.MNIST,
                   "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        except Exception:  # offline or blocked: fall through to the clear error below
            pass
        found = [_find_idx(dirs, s) for s in IDX_STEMS]
    if None in found:
        missing = ", ".join(f"{s}(.gz)" for s, f in zip(IDX_STEMS, found) if f is None)
        if cfg.root:
            raise DataError(f"dataset.root={cfg.root!r} is invalid: {missing} not found there "
                            f"(nor in its {tv_dir}/raw or {name} subfolder)")
        hint = ("install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
                if name == "fashion_mnist" else "")
        raise DataError(f"dataset {name}: {missing} not found in {[str(d) for d in dirs]}; "
                        f"{hint}give the folder holding them as dataset.root=<folder>")
    x_tr, y_tr, x_te, y_te = (torch.from_numpy(read_idx(p).copy()) for p in found)
    img = lambda a: a.to(torch.float32).unsqueeze(1) / 255.0  # noqa: E731
    return img(x_tr), y_tr.long(), img(x_te), y_te.long(), 10


def _cifar(cfg: DatasetConfig, name: str) -> tuple:
    import torchvision

    root = Path(cfg.root).expanduser() if cfg.root else DEFAULT_DATA_ROOT
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    try:
        train = cls(str(root), train=True, download=cfg.download)
        test = cls(str(root), train=False, download=cfg.download)
    except Exception as e:  # missing files offline, or a corrupt archive
        folder = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]
        raise DataError(f"dataset {name}: cannot load from {root} ({type(e).__name__}); "
                        f"put the extracted '{folder}' folder there or run once online "
                        f"with dataset.download=true") from None
    img = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    classes = 10 if name == "cifar10" else 100
    return (img(train.data), torch.tensor(train.targets), img(test.data),
            torch.tensor(test.targets), classes)


def _synthetic(cfg: DatasetConfig) -> tuple:
    """Random images whose class shifts the mean, so a model can learn them (benchmarks)."""
    g = torch.Generator().manual_seed(1234)
    shape = (cfg.channels, cfg.size, cfg.size)
    centers = torch.randn(cfg.classes, *shape, generator=g)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, cfg.classes, (n,), generator=g)
        return centers[y] * 0.5 + torch.randn(n, *shape, generator=g), y

    x_tr, y_tr = make(cfg.num_train)
    x_te, y_te = make(cfg.num_test)
    return x_tr, y_tr, x_te, y_te, cfg.classes


DATASETS: dict[str, Callable[[DatasetConfig], tuple]] = {
    "digits": _digits,
    "fashion_mnist": lambda c: _mnist_like(c, "fashion_mnist"),
    "mnist": lambda c: _mnist_like(c, "mnist"),
    "cifar10": lambda c: _cifar(c, "cifar10"),
    "cifar100": lambda c: _cifar(c, "cifar100"),
    "synthetic": _synthetic,
}


# datasets with no files, so no dataset.root: what they are instead
NO_FILES = {"digits": "ships inside scikit-learn", "synthetic": "is generated in memory"}


def check_root(cfg: DatasetConfig) -> None:
    """An explicit dataset.root is where a dataset's files are: refused for a dataset that has
    none (it would be ignored), as a root without the files is refused for the others."""
    if cfg.root is not None and cfg.name in NO_FILES:
        from cprec.errors import ConfigError

        raise ConfigError("dataset.root", cfg.root, f"dataset={cfg.name} has no files to read (it "
                          f"{NO_FILES[cfg.name]}), so a root would be ignored; leave dataset.root out")


# (channels, size, classes, training samples) of each dataset, known without loading it
SHAPES = {"digits": (1, 8, 10, 1437), "mnist": (1, 28, 10, 60000),
          "fashion_mnist": (1, 28, 10, 60000), "cifar10": (3, 32, 10, 50000),
          "cifar100": (3, 32, 100, 50000)}


def dataset_shape(cfg: DatasetConfig) -> tuple[DatasetInfo, int]:
    """(info, number of training samples) without loading the data (for previews)."""
    if cfg.name == "synthetic":
        c, size, classes, n = cfg.channels, cfg.size, cfg.classes, cfg.num_train
    elif cfg.name in SHAPES:
        c, size, classes, n = SHAPES[cfg.name]
    else:
        from cprec.errors import ConfigError

        raise ConfigError("dataset.name", cfg.name, f"choose one of {sorted(DATASETS)}")
    if cfg.train_subset is not None:
        n = min(n, cfg.train_subset)
    return DatasetInfo(cfg.name, c, size, classes), n


def build_dataset(cfg: DatasetConfig) -> Dataset:
    """Load a registered dataset into normalized in-memory tensors."""
    if cfg.name not in DATASETS:
        from cprec.errors import ConfigError

        raise ConfigError("dataset.name", cfg.name, f"choose one of {sorted(DATASETS)}")
    x_tr, y_tr, x_te, y_te, classes = DATASETS[cfg.name](cfg)
    if cfg.train_subset is not None:
        x_tr, y_tr = x_tr[: cfg.train_subset], y_tr[: cfg.train_subset]
    if cfg.test_subset is not None:
        x_te, y_te = x_te[: cfg.test_subset], y_te[: cfg.test_subset]
    x_tr, x_te, raw_zero = _normalize(x_tr, x_te, cfg)
    info = DatasetInfo(cfg.name, x_tr.shape[1], x_tr.shape[2], classes)
    return Dataset(info, x_tr.contiguous(), y_tr.long(), x_te.contiguous(), y_te.long(),
                   cfg.augment, raw_zero if cfg.pad_before_normalize else None)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4,
                     fill: torch.Tensor | None = None, part: tuple[int, int] | None = None
                     ) -> torch.Tensor:
    """Batched random crop and horizontal flip in one gather, on x's device.

    The border is zeros, or ``fill`` per channel (a raw image's black in normalised units).
    ``part=(start, total)``: x is samples start.. of a batch of ``total`` (a data-parallel
    shard); the draws are the whole batch's, so every shard augments as one process would.
    """
    n, c, h, w = x.shape
    start, total = part or (0, n)
    padded = F.pad(x, (padding, padding, padding, padding))
    if fill is not None:
        border = torch.ones_like(padded[:1, :1])
        border[..., padding:padding + h, padding:padding + w] = 0
        padded = padded + border * fill.view(1, c, 1, 1)
    shifts = torch.randint(0, 2 * padding + 1, (2, total), generator=generator,
                           device=generator.device)[:, start:start + n].to(x.device)
    flip = torch.rand(total, generator=generator, device=generator.device)[start:start + n].to(x.device) < 0.5
    cols = torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # flipping = reading columns backwards
    rows = shifts[0][:, None] + torch.arange(h, device=x.device)
    cols = shifts[1][:, None] + cols
    b = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[b, ch, rows[:, None, :, None], cols[:, None, None, :]]


class BatchStream:
    """Seeded, resumable stream of shuffled training batches, reshuffled every epoch; with
    ``drop_last`` an epoch's last partial batch is skipped, else trained (smaller)."""

    def __init__(self, data: Dataset, batch_size: int, seed: int, device: torch.device,
                 drop_last: bool = True) -> None:
        self.data, self.batch_size, self.device = data, min(batch_size, len(data.y_train)), device
        self.drop_last = drop_last
        self.order_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.epoch, self.index = 0, 0
        self.perm = torch.randperm(len(data.y_train), generator=self.order_gen)
        self.rank, self.world = 0, 1  # data parallel: this process gathers its slice only
        self.local_n = self.global_n = 0  # samples of the last batch: here, and in all

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.data.y_train)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (this rank's slice of it; the augmentation draws stay the whole
        batch's, so the slices together are one process's batch)."""
        idx = self.next_indices()
        self.global_n = len(idx)
        if self.world == 1:
            self.local_n = len(idx)
            return self.gather(idx)
        lo, hi = shard_bounds(len(idx), self.rank, self.world)
        self.local_n = hi - lo
        return self.gather(idx[lo:hi], part=(lo, len(idx)))

    def next_indices(self) -> torch.Tensor:
        """The next batch's sample indices (CPU), advancing the position."""
        end = self.index + (self.batch_size if self.drop_last else 1)
        if end > len(self.perm):
            self.epoch += 1
            self.index = 0
            self.perm = torch.randperm(len(self.data.y_train), generator=self.order_gen)
        idx = self.perm[self.index : self.index + self.batch_size]
        self.index += len(idx)
        return idx

    def gather(self, idx: torch.Tensor, part: tuple[int, int] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (augmented) samples ``idx``; ``part`` as in ``random_crop_flip``."""
        idx = idx.to(self.data.x_train.device)
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        if self.data.augment:
            x = random_crop_flip(x, self.aug_gen, fill=self.data.pad_fill, part=part)
        return x, y

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "perm": self.perm.clone(),
                "order_gen": self.order_gen.get_state(), "aug_gen": self.aug_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.perm = state["epoch"], state["index"], state["perm"]
        self.order_gen.set_state(state["order_gen"])
        self.aug_gen.set_state(state["aug_gen"])


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple]:
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]
