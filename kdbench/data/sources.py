"""Dataset sources: real data read from local files or shipped by a package, plus a synthetic set for tests.

A source is registered by name and built from keyword parameters (validated from its signature, like
methods). ``load()`` returns the train and test splits as in-memory tensors. Nothing is ever downloaded.
"""

from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.registry import Registry, init_parameters


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation done on the batch tensor (on the training device): a random crop after
    zero-padding by ``pad`` pixels and a random horizontal flip, the CIFAR recipe of RepDistiller/mdistiller."""

    pad: int = 4
    flip: bool = True


@dataclass
class TensorData:
    """An in-memory labelled split: images ``x`` (N, C, H, W) and labels ``y`` (N,) int64 (-1: no label).

    ``x`` is float32 and ready to use, or uint8 with the per-channel ``mean``/``std`` (of x/255) that turn it into
    model input batch by batch on the device (CIFAR-100 as uint8 is 150 MB, not 600). ``augment`` applies to
    training batches only.
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: Augment | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of a model input."""
        return tuple(int(v) for v in self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor | np.ndarray) -> TensorData:
        """The same data restricted to ``indices`` (kept in the given order)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorData(self.x[index], self.y[index], self.mean, self.std, self.augment)

    def to_input(self, x: torch.Tensor, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        """Raw batch -> model input: scale and normalise uint8, then (training only) augment."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
            if self.mean is not None and self.std is not None:
                mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
                std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
                x = (x - mean) / std
        if train and self.augment is not None:
            x = crop_flip(x, self.augment, generator)
        return x


def crop_flip(x: torch.Tensor, augment: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop of each image after zero padding by ``augment.pad``, then a random horizontal flip.

    Offsets and flips are drawn on the CPU from ``generator`` (so the result is the same on any device) and
    applied with two gathers (rows, then columns) on ``x``'s device.
    """
    n, c, h, w = x.shape
    pad = augment.pad
    if pad:
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)  # (n, h): the rows each image keeps
        cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)  # (n, w)
        x = torch.gather(padded, 2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
        x = torch.gather(x, 3, cols[:, None, None, :].expand(n, c, h, w))
    if augment.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@dataclass
class Splits:
    """A dataset's train and test splits and its shape facts."""

    train: TensorData | Any
    test: TensorData | Any
    num_classes: int

    @property
    def in_chans(self) -> int:
        return int(self.train.image_shape[0])

    @property
    def img_size(self) -> int:
        return int(self.train.image_shape[-1])


class DataSource:
    """Base class of a dataset source. Subclasses take keyword parameters and implement ``load``."""

    description: str = ""
    has_train_labels: bool = True  # False: a transfer set without labels (only the unlabeled regime applies)

    def check(self) -> None:
        """Raise :class:`FileNotFoundError` naming the missing path if the data is not on disk."""

    def known_shape(self) -> tuple[int, int] | None:
        """(classes, input channels) as far as they are known without loading the data (None: not known), so that
        a teacher file can be checked against the networks of this data before any job starts."""
        return None

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

    def known_shape(self) -> tuple[int, int]:
        return 10, 1

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

    def known_shape(self) -> tuple[int, int]:
        return 10, 1

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

    def known_shape(self) -> tuple[int, int]:
        return self.num_classes, self.in_chans

    def load(self) -> Splits:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.in_chans, self.img_size, self.img_size)
        prototypes = torch.randn(self.num_classes, *shape, generator=gen)

        def sample(n: int) -> TensorData:
            y = torch.arange(n) % self.num_classes
            x = prototypes[y] + self.noise * torch.randn(n, *shape, generator=gen)
            return TensorData(x.float(), y.long())

        return Splits(sample(self.num_train), sample(self.num_test), num_classes=self.num_classes)


def data_root(root: str | None, source: str, layout: str) -> Path:
    """The folder a source reads: its ``root`` parameter, else ``$KDBENCH_DATA/<source>``; a missing folder is a
    :class:`FileNotFoundError` naming the path and the expected layout (nothing is ever downloaded)."""
    if root is None:
        base = os.environ.get("KDBENCH_DATA")
        if not base:
            raise FileNotFoundError(f"{source}: no data root given (set dataset.root in the suite, --data-root, or "
                                    f"KDBENCH_DATA); expected layout: {layout}")
        root = str(Path(base) / source)
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data root '{path}' does not exist ({source} expects: {layout})")
    return path


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR python batches and nothing else: only numpy's array reconstruction may be looked up,
    so a tampered file cannot run code (the same care as ``torch.load(weights_only=True)``)."""

    ALLOWED = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                         ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> dict[str, Any]:
    """One CIFAR python batch file (``train``, ``test``...) as a dict with str keys."""
    with open(path, "rb") as f:
        raw = _CifarUnpickler(f, encoding="bytes").load()
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}


CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataset_registry.register("cifar100")
class CIFAR100(DataSource):
    """CIFAR-100 (50,000 + 10,000 32x32 colour images, 100 classes) in torchvision's on-disk format.

    ``root`` holds ``cifar-100-python/{train,test}`` (or is that folder): what ``torchvision.datasets.CIFAR100``
    leaves after a download elsewhere; it is never downloaded here. Kept in memory as uint8; batches are
    normalised with the usual mean/std and augmented (random crop after 4-pixel padding, flip) on the device.
    """

    description = "CIFAR-100, 32x32x3, 100 classes, torchvision's cifar-100-python pickles under `root`"
    LAYOUT = "<root>/cifar-100-python/{train,test,meta} (torchvision's CIFAR100 format)"

    def __init__(self, root: str | None = None, augment: bool = True, pad: int = 4) -> None:
        self.root, self.augment, self.pad = root, augment, pad

    def folder(self) -> Path:
        root = data_root(self.root, "cifar100", self.LAYOUT)
        folder = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        for name in ("train", "test"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"'{folder / name}' not found: cifar100 expects {self.LAYOUT}")
        return folder

    def check(self) -> None:
        self.folder()

    def known_shape(self) -> tuple[int, int]:
        return 100, 3

    def load(self) -> Splits:
        folder = self.folder()
        augment = Augment(pad=self.pad) if self.augment else None

        def split(name: str) -> TensorData:
            batch = read_cifar_batch(folder / name)
            x = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).copy())
            y = torch.as_tensor(np.asarray(batch["fine_labels"], dtype=np.int64))
            return TensorData(x, y, CIFAR100_MEAN, CIFAR100_STD, augment)

        return Splits(split("train"), split("test"), num_classes=100)


@dataset_registry.register("image_folder")
class ImageFolderSource(DataSource):
    """Any labelled image tree in torchvision's ImageFolder layout: ``root/train/<class>/*.jpg`` and
    ``root/val/<class>/*.jpg`` (class names sorted into labels; val uses train's class list). Images stay on
    disk and are decoded by ``num_workers`` DataLoader workers: RandomResizedCrop(``size``, scale
    (``scale_min``, 1)) + flip for training, Resize(``resize``) + CenterCrop(``size``) for evaluation.
    ``decoder``: ``pil`` (the default) or ``torchvision`` (``torchvision.io``: about 1.4x the images/s, the same
    pixels up to one uint8 level of resize rounding; see :mod:`kdbench.data.files`)."""

    description = "labelled ImageFolder tree under `root` (train/ and val/), decoded from disk"
    folder_name = "image_folder"
    LAYOUT = "<root>/train/<class>/<image> and <root>/val/<class>/<image> (ImageFolder)"

    def __init__(self, root: str | None = None, size: int = 224, resize: int = 256, scale_min: float = 0.08,
                 num_workers: int = 4, train_dir: str = "train", val_dir: str = "val", train_list: str | None = None,
                 val_list: str | None = None, decoder: str = "pil") -> None:
        if not 0.0 < scale_min <= 1.0:
            raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
        from kdbench.data.files import check_decoder

        check_decoder(decoder)
        self.root, self.size, self.resize, self.scale_min, self.decoder = root, size, resize, scale_min, decoder
        self.num_workers, self.train_dir, self.val_dir = num_workers, train_dir, val_dir
        self.train_list, self.val_list = train_list, val_list

    def folders(self) -> tuple[Path, Path]:
        root = data_root(self.root, self.folder_name, self.LAYOUT)
        train, val = root / self.train_dir, root / self.val_dir
        for folder in (train, val):
            if not folder.is_dir():
                raise FileNotFoundError(f"'{folder}' not found: {self.folder_name} expects {self.LAYOUT}")
        return train, val

    def check(self) -> None:
        self.folders()
        for key in ("train_list", "val_list"):
            listed = getattr(self, key)
            if listed is not None and not Path(listed).expanduser().is_file():
                raise FileNotFoundError(f"{key} '{listed}' does not exist (lines '<path under root> <label>', "
                                        f"as ImageNet_LT_train.txt)")

    def known_shape(self) -> tuple[int, int] | None:
        try:
            train, _ = self.folders()
        except FileNotFoundError:
            return None
        return sum(1 for entry in train.iterdir() if entry.is_dir()), 3

    def load(self) -> Splits:
        from kdbench.data.files import FileData, ImageTransforms, read_list, scan_image_folder

        self.check()
        train_dir, val_dir = self.folders()
        train_samples, train_labels, classes = scan_image_folder(train_dir)
        val_samples, val_labels, _ = scan_image_folder(val_dir, classes)
        root = train_dir.parent
        if self.train_list:  # a fixed split such as ImageNet-LT: the list's images and labels
            train_samples, train_labels = read_list(Path(self.train_list).expanduser(), root)
        if self.val_list:
            val_samples, val_labels = read_list(Path(self.val_list).expanduser(), root)
        transforms = ImageTransforms(size=self.size, resize=self.resize, scale=(self.scale_min, 1.0),
                                     decoder=self.decoder)
        return Splits(FileData(list(train_samples), torch.as_tensor(train_labels), transforms, self.num_workers),
                      FileData(list(val_samples), torch.as_tensor(val_labels), transforms, self.num_workers),
                      num_classes=len(classes))


@dataset_registry.register("imagenet")
class ImageNet(ImageFolderSource):
    """ImageNet-1k (ILSVRC 2012) in ImageFolder layout: ``root/train/n01440764/*.JPEG`` and ``root/val/<wnid>/``
    (the validation images sorted into class folders, as torchvision's ImageNet and timm expect). Same transforms
    as ``image_folder``; GenDD's ImageNet recipe uses ``scale_min: 0.6``."""

    description = "ImageNet-1k in ImageFolder layout under `root` (train/<wnid>/, val/<wnid>/); ImageNet-LT by lists"
    folder_name = "imagenet"
    LAYOUT = "<root>/train/<wnid>/<image>.JPEG and <root>/val/<wnid>/<image>.JPEG (val sorted into class folders)"


@dataset_registry.register("unlabeled_folder")
class UnlabeledFolder(DataSource):
    """A transfer set without labels (any images under ``root``, or WebDataset ``*.tar`` shards such as CC3M's)
    for training, and a labelled ImageFolder tree ``eval_root/<class>/`` (e.g. ImageNet's val) for evaluation.
    Only the ``unlabeled`` regime applies, and every teacher must come from ``teacher.sources``."""

    description = "unlabeled images or tar shards under `root` to train on; labelled ImageFolder `eval_root` to test"
    has_train_labels = False
    LAYOUT = "<root>/**/<image> or <root>/*.tar (WebDataset shards), and <eval_root>/<class>/<image>"

    def __init__(self, root: str | None = None, eval_root: str | None = None, size: int = 224, resize: int = 256,
                 scale_min: float = 0.08, num_workers: int = 4, decoder: str = "pil") -> None:
        from kdbench.data.files import check_decoder

        check_decoder(decoder)
        self.root, self.eval_root, self.size, self.resize = root, eval_root, size, resize
        self.scale_min, self.num_workers, self.decoder = scale_min, num_workers, decoder

    def check(self) -> None:
        data_root(self.root, "unlabeled_folder", self.LAYOUT)
        if self.eval_root is None:
            raise FileNotFoundError(f"unlabeled_folder needs eval_root, a labelled ImageFolder tree ({self.LAYOUT})")
        data_root(self.eval_root, "unlabeled_folder eval_root", self.LAYOUT)

    def known_shape(self) -> tuple[int, int] | None:
        folder = Path(self.eval_root).expanduser() if self.eval_root else None
        if folder is None or not folder.is_dir():
            return None
        return sum(1 for entry in folder.iterdir() if entry.is_dir()), 3

    def load(self) -> Splits:
        from kdbench.data.files import FileData, ImageTransforms, scan_image_folder, scan_unlabeled

        self.check()
        train = scan_unlabeled(data_root(self.root, "unlabeled_folder", self.LAYOUT))
        test, labels, classes = scan_image_folder(Path(self.eval_root).expanduser())
        transforms = ImageTransforms(size=self.size, resize=self.resize, scale=(self.scale_min, 1.0),
                                     decoder=self.decoder)
        return Splits(FileData(list(train), torch.full((len(train),), -1, dtype=torch.long), transforms,
                               self.num_workers),
                      FileData(list(test), torch.as_tensor(labels), transforms, self.num_workers),
                      num_classes=len(classes))
