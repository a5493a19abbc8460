"""Datasets: shapes, the fixed digits split, subsets, seeded batched augmentation, IDX reading."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cprec.config import DatasetConfig
from cprec.data import DEBIAN_FASHION_MNIST, BatchStream, build_dataset, random_crop_flip, read_idx
from cprec.errors import DataError


def test_digits_split_is_fixed_and_normalized() -> None:
    """digits is the same 1437/360 split of 8x8 images on every build, all 10 classes, mean 0 and std 1."""
    a, b = build_dataset(DatasetConfig(name="digits")), build_dataset(DatasetConfig(name="digits"))
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.info.classes == 10 and set(a.y_train.tolist()) == set(range(10))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-3


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
