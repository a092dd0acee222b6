"""Dataset sources: the digits split, the IDX reader (on files this test writes) and clear missing-path errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.data import dataset_registry
from kdbench.data.loader import train_batches
from kdbench.data.sources import read_idx


def test_digits_fixed_stratified_split() -> None:
    a = dataset_registry.get("digits")().load()
    b = dataset_registry.get("digits")().load()
    assert (len(a.train), len(a.test)) == (1347, 450)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    train_counts = np.bincount(a.train.y.numpy())
    test_counts = np.bincount(a.test.y.numpy())
    assert np.all(np.abs(test_counts / (train_counts + test_counts) - 0.25) < 0.02)  # stratified
    assert a.train.x.shape[1:] == (1, 8, 8) and a.num_classes == 10
    assert abs(float(a.train.x.mean())) < 1e-4, "standardised with the train split's statistics"


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 5])
    for split, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images[:n])
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[:n])
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    splits = dataset_registry.get("fashion_mnist")(root=str(tmp_path)).load()
    assert splits.train.x.shape == (6, 1, 28, 28) and splits.test.y.tolist() == [0, 1, 2, 3]


def test_fashion_mnist_missing_files_name_the_path(tmp_path: Path) -> None:
    source = dataset_registry.get("fashion_mnist")(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        source.check()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dataset_registry.get("fashion_mnist")(root=str(tmp_path / "nope")).check()


def test_train_batches_seeded_order_and_hidden_labels() -> None:
    data = dataset_registry.get("synthetic")(num_train=50).load().train
    indices = np.arange(50)
    first = [b.index.tolist() for b in train_batches(data, indices, 16, labeled=True, seed=1, epoch=0)]
    again = [b.index.tolist() for b in train_batches(data, indices, 16, labeled=True, seed=1, epoch=0)]
    other = [b.index.tolist() for b in train_batches(data, indices, 16, labeled=True, seed=1, epoch=1)]
    assert first == again and first != other
    assert sorted(i for batch in first for i in batch) == list(range(50))
    assert all(b.y is None for b in train_batches(data, indices, 16, labeled=False, seed=1, epoch=0))
