"""Dataset sources: real data read from local files or shipped by a package, plus a synthetic set for tests.

A source is registered by name and built from keyword parameters (validated from its signature, like
methods). ``load()`` returns the train and test splits as in-memory tensors. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdbench.registry import Registry, init_parameters


@dataclass
class TensorData:
    """An in-memory labelled split: images ``x`` (N, C, H, W) float32 and labels ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class Splits:
    """A dataset's train and test splits and its shape facts."""

    train: TensorData
    test: TensorData
    num_classes: int

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train.x.shape[-1])


class DataSource:
    """Base class of a dataset source. Subclasses take keyword parameters and implement ``load``."""

    description: str = ""
    root_required: bool = False

    def check(self) -> None:
        """Raise :class:`FileNotFoundError` naming the missing path if the data is not on disk."""

    def load(self) -> Splits:
        raise NotImplementedError


dataset_registry: Registry[type[DataSource]] = Registry("dataset")


dataset_parameters = init_parameters
"""The parameters a suite may set, from the ``__init__`` signature."""


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits with the train split's per-channel mean and standard deviation."""
    mean = train.mean(axis=(0, 2, 3), keepdims=True)
    std = train.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return (torch.from_numpy(((train - mean) / std).astype(np.float32)),
            torch.from_numpy(((test - mean) / std).astype(np.float32)))


@dataset_registry.register("digits")
class Digits(DataSource):
    """UCI optical digits (1,797 8x8 grey images, 10 classes) as shipped by scikit-learn.

    A fixed stratified split (``test_fraction`` of each class to test, ``split_seed``) so every run and
    every machine sees the same train and test images.
    """

    description = "UCI optical digits, 8x8x1, 10 classes, shipped by scikit-learn (1347 train / 450 test)"

    def __init__(self, test_fraction: float = 0.25, split_seed: int = 0) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.test_fraction, self.split_seed = test_fraction, split_seed

    def load(self) -> Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = (digits.images / 16.0)[:, None].astype(np.float64)
        labels = digits.target.astype(np.int64)
        idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=self.test_fraction,
                                               stratify=labels, random_state=self.split_seed)
        idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
        x_train, x_test = _standardize(images[idx_train], images[idx_test])
        return Splits(TensorData(x_train, torch.from_numpy(labels[idx_train])),
                      TensorData(x_test, torch.from_numpy(labels[idx_test])), num_classes=10)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@dataset_registry.register("fashion_mnist")
class FashionMNIST(DataSource):
    """Fashion-MNIST (60,000 + 10,000 28x28 grey images, 10 classes) from the four IDX files on disk.

    ``root`` is the folder holding ``train-images-idx3-ubyte(.gz)`` and friends; Debian's
    ``dataset-fashion-mnist`` package installs them in ``/usr/share/datasets/fashion-mnist``.
    """

    description = "Fashion-MNIST, 28x28x1, 10 classes, read from the IDX files under `root`"
    root_required = True
    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")

    def __init__(self, root: str = "/usr/share/datasets/fashion-mnist") -> None:
        self.root = Path(root)

    def _file(self, stem: str) -> Path:
        for candidate in (self.root / stem, self.root / f"{stem}.gz"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"{self.root / stem}(.gz) not found: fashion_mnist expects the four IDX files "
                                f"{', '.join(self.FILES)} in root '{self.root}'")

    def check(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"data root '{self.root}' does not exist (fashion_mnist expects the IDX "
                                    f"files there; Debian: apt-get install dataset-fashion-mnist)")
        for stem in self.FILES:
            self._file(stem)

    def load(self) -> Splits:
        self.check()
        arrays = [read_idx(self._file(stem)) for stem in self.FILES]
        x_train, x_test = _standardize(arrays[0][:, None] / 255.0, arrays[2][:, None] / 255.0)
        return Splits(TensorData(x_train, torch.from_numpy(arrays[1].astype(np.int64))),
                      TensorData(x_test, torch.from_numpy(arrays[3].astype(np.int64))), num_classes=10)


@dataset_registry.register("synthetic")
class Synthetic(DataSource):
    """SYNTHETIC data for unit tests only: Gaussian blobs around random class prototypes (seeded).

    Not a benchmark: the report marks it as synthetic.
    """

    description = "SYNTHETIC Gaussian class blobs for unit tests only (not real data)"

    def __init__(self, num_classes: int = 4, num_train: int = 128, num_test: int = 64, img_size: int = 8,
                 in_chans: int = 1, noise: float = 1.0, seed: int = 0) -> None:
        self.num_classes, self.num_train, self.num_test = num_classes, num_train, num_test
        self.img_size, self.in_chans, self.noise, self.seed = img_size, in_chans, noise, seed

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.in_chans, self.img_size, self.img_size)
        prototypes = torch.randn(self.num_classes, *shape, generator=gen)

        def sample(n: int) -> TensorData:
            y = torch.arange(n) % self.num_classes
            x = prototypes[y] + self.noise * torch.randn(n, *shape, generator=gen)
            return TensorData(x.float(), y.long())

        return Splits(sample(self.num_train), sample(self.num_test), num_classes=self.num_classes)
