"""Datasets: shapes, the fixed digits split, subsets, seeded batched augmentation, IDX reading."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cprec.config import DatasetConfig
from cprec.errors import DataError
from cprec.tasks.vision import DEBIAN_FASHION_MNIST, BatchStream, build_dataset, random_crop_flip, read_idx


def test_digits_split_is_fixed_and_normalized() -> None:
    """digits is the same 1437/360 split of 8x8 images on every build, all 10 classes, mean 0 and std 1."""
    a, b = build_dataset(DatasetConfig(name="digits")), build_dataset(DatasetConfig(name="digits"))
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.info.classes == 10 and set(a.y_train.tolist()) == set(range(10))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3


def test_digits_are_scikit_learns_data_and_split_without_importing_it() -> None:
    """Issue 28 item 15: the digits file and the stratified split read with numpy are exactly
    scikit-learn's load_digits + train_test_split(test_size=0.2, random_state=0, stratify=y),
    and loading them imports no scikit-learn (a subprocess: this one may have it already)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from cprec.tasks.digits import digits_split

    x, y = load_digits(return_X_y=True)
    theirs = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    for mine, ref in zip(digits_split(), theirs):
        assert mine.dtype == ref.dtype and np.array_equal(mine, ref)
    code = ("import sys; from cprec.tasks.vision import build_dataset; from cprec.config import "
            "DatasetConfig; build_dataset(DatasetConfig()); print(any(m.startswith('sklearn') "
            "for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_train_subset_keeps_first_n() -> None:
    """train_subset=100 keeps exactly the first 100 training examples of the full split, in order."""
    full = build_dataset(DatasetConfig(name="digits"))
    sub = build_dataset(DatasetConfig(name="digits", train_subset=100))
    assert len(sub.y_train) == 100 and torch.equal(sub.y_train, full.y_train[:100])


def test_synthetic_is_cifar_shaped() -> None:
    """The synthetic dataset is CIFAR-shaped: 2048 training images of 3x32x32 and 10 classes."""
    d = build_dataset(DatasetConfig(name="synthetic"))
    assert d.x_train.shape == (2048, 3, 32, 32) and d.info.classes == 10


def test_crop_flip_is_seeded_and_a_real_crop() -> None:
    """Every output is a shifted (and maybe mirrored) window of the zero-padded input."""
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1
    out1 = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    out2 = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    assert torch.equal(out1, out2) and out1.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out1[i], w) for w in windows)


def test_batch_stream_resumes_identically() -> None:
    """A BatchStream restored from a state_dict taken past an epoch boundary yields the same batches."""
    d = build_dataset(DatasetConfig(name="digits", augment=True))
    s1 = BatchStream(d, 64, seed=0, device=torch.device("cpu"))
    for _ in range(30):  # crosses an epoch boundary (22 steps per epoch)
        s1.next()
    state = s1.state_dict()
    expected = [s1.next() for _ in range(5)]
    s2 = BatchStream(d, 64, seed=0, device=torch.device("cpu"))
    s2.load_state_dict(state)
    for (xa, ya), (xb, yb) in zip(expected, [s2.next() for _ in range(5)]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    """read_idx decodes a gzipped IDX file (ubyte type code, big-endian dims) back to the exact array."""
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">BBBB", 0, 0, 0x08, 3) + struct.pack(">3I", 2, 3, 4) + arr.tobytes()
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_missing_idx_files_say_where_to_put_them(tmp_path: Path) -> None:
    """MNIST with download=false and no IDX files under root is a DataError that names dataset.root."""
    with pytest.raises(DataError, match="dataset.root"):
        build_dataset(DatasetConfig(name="mnist", root=str(tmp_path), download=False))


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package() -> None:
    """Debian's Fashion-MNIST loads 60000 28x28 training images with labels 0..9 and honours test_subset."""
    d = build_dataset(DatasetConfig(name="fashion_mnist", download=False, test_subset=1000))
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.info.classes == 10 and int(d.y_train.max()) == 9


def test_padding_before_normalizing_gives_a_black_border() -> None:
    """dataset.pad_before_normalize: the crop's border is raw 0 in normalised units,
    (0 - mean) / std per channel, with the configured mean and std (CPT's constants)."""
    cfg = DatasetConfig(name="synthetic", num_train=64, num_test=8, augment=True,
                        pad_before_normalize=True, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    d = build_dataset(cfg)
    assert torch.allclose(d.pad_fill, torch.tensor([-1.0, -1.0, 0.0]))
    x = torch.full((1, 3, 4, 4), 7.0)
    for seed in range(20):  # some crop shifts away from the centre: its border shows
        out = random_crop_flip(x, torch.Generator().manual_seed(seed), padding=2, fill=d.pad_fill)
        inside = out == 7.0
        assert torch.equal(out[0, 0][~inside[0, 0]], torch.full_like(out[0, 0][~inside[0, 0]], -1.0))
        assert torch.all(out[0, 2][~inside[0, 2]] == 0.0)
    raw = build_dataset(DatasetConfig(name="synthetic", num_train=64, num_test=8))
    assert torch.allclose(d.x_train, (raw_synthetic(cfg) - torch.tensor(cfg.mean).view(1, 3, 1, 1))
                          / torch.tensor(cfg.std).view(1, 3, 1, 1))
    assert raw.pad_fill is None


def raw_synthetic(cfg: DatasetConfig) -> torch.Tensor:
    from cprec.tasks.vision import DATASETS

    return DATASETS["synthetic"](cfg)[0]


def test_mean_and_std_must_match_the_channels() -> None:
    """A 3-value mean for 1-channel digits is one clear error naming the channel count."""
    from cprec.errors import ConfigError

    with pytest.raises(ConfigError, match="digits has 1 channels"):
        build_dataset(DatasetConfig(name="digits", mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2]))


def test_keeping_the_last_partial_batch() -> None:
    """drop_last=False: each epoch sees every sample once, the last batch smaller (1437 = 22 x 64
    + 29), and ceil(n / b) steps per epoch; drop_last=True skips the 29."""
    d = build_dataset(DatasetConfig(name="digits"))
    keep = BatchStream(d, 64, seed=0, device=torch.device("cpu"), drop_last=False)
    assert keep.steps_per_epoch == 23
    sizes, seen = [], []
    for _ in range(23):
        x, y = keep.next()
        sizes.append(len(y))
        seen.append(keep.perm[keep.index - len(y):keep.index])
    assert sizes == [64] * 22 + [29] and sorted(torch.cat(seen).tolist()) == list(range(1437))
    assert len(keep.next()[1]) == 64 and keep.epoch == 1
    drop = BatchStream(d, 64, seed=0, device=torch.device("cpu"))
    assert drop.steps_per_epoch == 22 and all(len(drop.next()[1]) == 64 for _ in range(23))
