"""scikit-learn's bundled handwritten digits and the run's stratified 80/20 split, read and
split with numpy alone. Importing ``sklearn.datasets`` costs a run ~0.8 s of start-up (it
pulls in scipy); the data is one CSV file shipped inside scikit-learn, and the split is
``train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)``'s arithmetic, done
the same way here (tests/tasks/test_data.py checks both against scikit-learn's own).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np


def digits_file() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(x: 1797 x 64 float64 pixels 0..16, y: int labels), as ``sklearn.datasets.load_digits``."""
    path = digits_file()
    if path is None:  # an unusual install: scikit-learn's own loader finds it
        from sklearn.datasets import load_digits as sklearn_load

        return sklearn_load(return_X_y=True)
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Samples per class of a stratified draw (sklearn.utils.extmath._approximate_mode):
    floor of the proportional share, the rest to the largest remainders, ties drawn by ``rng``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1] if need > 0 else ():
        (inds,) = np.where(remainder == value)
        add_now = min(len(inds), need)
        floored[rng.choice(inds, size=add_now, replace=False)] += 1
        need -= add_now
        if need == 0:
            break
    return floored.astype(int)


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of ``StratifiedShuffleSplit(1, test_size, random_state=seed)``."""
    n_test = math.ceil(test_size * len(y))
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list = []
    test: list = []
    for i, indices in enumerate(class_indices):
        shuffled = indices.take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(shuffled[: n_i[i]])
        test.extend(shuffled[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): the 80/20 split stratified by label, seed 0."""
    x, y = load_digits()
    train, test = stratified_split(y, 0.2, 0)
    return x[train], x[test], y[train], y[test]
