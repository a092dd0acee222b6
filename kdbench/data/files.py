"""File-backed splits for data that does not fit in memory: ImageFolder trees and WebDataset-style tar shards.

A :class:`FileData` holds the list of samples (a file path, or a member of an uncompressed tar shard, and a
label; -1 when unlabeled), knows its labels without opening an image (regimes need only those), and decodes
batches in DataLoader worker processes: with PIL (the default) or with ``torchvision.io`` (``decoder:
torchvision``: libjpeg-turbo into a uint8 tensor, then the same transforms on the tensor: 1.3-1.5x the images/s
of PIL's path with 0, 1 or 2 workers on a busy 2-core CPU, ``python -m kdbench bench input``; the same pixels up
to one uint8 level of resize rounding; torchvision 0.29 deprecates its decoders in favour of TorchCodec).
Transforms follow torchvision: RandomResizedCrop + flip for training, Resize + CenterCrop for evaluation, then the
dataset's normalisation.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DECODERS = ("pil", "torchvision")


@dataclass(frozen=True)
class TarMember:
    """One file inside an uncompressed tar shard: where its bytes are."""

    shard: str
    offset: int
    size: int


def check_decoder(decoder: str) -> None:
    """``ValueError`` naming the valid decoders unless ``decoder`` is one."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got '{decoder}'")


@dataclass(frozen=True)
class ImageTransforms:
    """The torchvision recipe of a file-backed split: train crop ``size`` from a RandomResizedCrop with
    ``scale`` (GenDD uses (0.6, 1) on ImageNet; torchvision's default is (0.08, 1)), eval Resize ``resize`` then
    CenterCrop ``size``, then normalisation. ``decoder``: ``pil`` (PIL image, torchvision's PIL transforms) or
    ``torchvision`` (``torchvision.io`` uint8 tensor, the same transforms from ``transforms.v2`` on the tensor,
    antialiased; they draw the same random crops and flips from the same seed)."""

    size: int = 224
    resize: int = 256
    scale: tuple[float, float] = (0.08, 1.0)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    decoder: str = "pil"

    def __post_init__(self) -> None:
        check_decoder(self.decoder)

    def build(self, train: bool) -> Any:
        """sample -> normalised float tensor (C, H, W): decoding with ``decoder``, then the transforms."""
        if self.decoder == "torchvision":
            from torchvision.transforms import v2

            steps = [v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True), v2.RandomHorizontalFlip()] \
                if train else [v2.Resize(self.resize, antialias=True), v2.CenterCrop(self.size)]
            tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
            return _Then(decode_tensor, v2.Compose([*steps, *tail]))
        from torchvision import transforms as T

        steps = [T.RandomResizedCrop(self.size, scale=self.scale), T.RandomHorizontalFlip()] if train else \
            [T.Resize(self.resize), T.CenterCrop(self.size)]
        return _Then(open_image, T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)]))


@dataclass(frozen=True)
class _Then:
    """``transform(decode(sample))`` (a picklable pair, for DataLoader workers started by spawn)."""

    decode: Any
    transform: Any

    def __call__(self, sample: str | TarMember) -> torch.Tensor:
        return self.transform(self.decode(sample))


@dataclass
class FileData:
    """A split whose images stay on disk: ``samples`` (paths or tar members) and labels ``y`` (-1: unlabeled)."""

    samples: list[str | TarMember]
    y: torch.Tensor
    transforms: ImageTransforms = field(default_factory=ImageTransforms)
    num_workers: int = 4

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.transforms.size, self.transforms.size)

    def subset(self, indices: torch.Tensor | np.ndarray) -> FileData:
        """The same data restricted to ``indices`` (kept in the given order)."""
        index = [int(i) for i in torch.as_tensor(indices).tolist()]
        return replace(self, samples=[self.samples[i] for i in index], y=self.y[index])

    def load_batches(self, chunks: Sequence[torch.Tensor], train: bool, seed: int) -> Iterator[tuple[torch.Tensor,
                                                                                                     torch.Tensor]]:
        """Decode the batches ``chunks`` (index tensors) in order, in worker processes; augmentation seeded."""
        dataset = _Decoded(self, self.transforms.build(train), seed)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[c.tolist() for c in chunks],
                                             num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                             persistent_workers=False)
        yield from loader


class _Decoded(torch.utils.data.Dataset):
    """Sample ``i`` decoded and transformed; each sample's augmentation draws from a generator seeded by
    (epoch seed, index), so results do not depend on the number of workers."""

    def __init__(self, data: FileData, transform: Any, seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(self.seed * 7_919 + i)  # torchvision's random transforms draw from the global RNG
        return self.transform(self.data.samples[i]), self.data.y[i]


def open_image(sample: str | TarMember) -> Any:
    """The RGB PIL image of a sample."""
    from PIL import Image

    if isinstance(sample, TarMember):
        return Image.open(io.BytesIO(_read_bytes(sample))).convert("RGB")
    with Image.open(sample) as image:
        return image.convert("RGB")


def _read_bytes(sample: str | TarMember) -> bytes:
    if isinstance(sample, TarMember):
        with open(sample.shard, "rb") as f:
            f.seek(sample.offset)
            return f.read(sample.size)
    with open(sample, "rb") as f:
        return f.read()


def decode_tensor(sample: str | TarMember) -> torch.Tensor:
    """The RGB uint8 tensor (3, H, W) of a sample, decoded by ``torchvision.io`` (JPEG, PNG, WebP, GIF); formats
    it cannot read (BMP, PPM, TIFF) go through PIL."""
    from torchvision.io import ImageReadMode, decode_image

    data = _read_bytes(sample)
    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        with Image.open(io.BytesIO(data)) as image:
            return pil_to_tensor(image.convert("RGB"))


def scan_image_folder(root: Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """An ImageFolder tree ``root/<class>/<image>``: sorted samples, labels, and the class names (sorted, or the
    given ``classes`` so train and val agree on the label of each class)."""
    root = Path(root)
    names = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    if not names:
        raise FileNotFoundError(f"'{root}' has no class folders: expected the ImageFolder layout "
                                f"{root}/<class name>/<image>.jpg")
    samples, labels = [], []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        samples += [str(p) for p in files]
        labels += [label] * len(files)
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{root}/<class>/'")
    return samples, labels, names


def scan_unlabeled(root: Path) -> list[str | TarMember]:
    """Every image under ``root``: plain files (any depth) and members of uncompressed ``*.tar`` shards
    (WebDataset layout: ``<key>.jpg`` next to ``<key>.txt`` / ``.json``; only the images are used)."""
    root = Path(root)
    samples: list[str | TarMember] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            samples.append(str(path))
        elif path.suffix == ".tar":
            samples += tar_images(path)
    if not samples:
        raise FileNotFoundError(f"no images or .tar shards under '{root}' (expected image files, or WebDataset "
                                f"shards such as {root}/00000.tar holding <key>.jpg)")
    return samples


def tar_images(shard: Path) -> list[TarMember]:
    """The image members of one uncompressed tar shard, with their byte offsets (read without extracting)."""
    with tarfile.open(shard, "r:") as tar:
        return [TarMember(str(shard), member.offset_data, member.size) for member in tar.getmembers()
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_SUFFIXES]


def read_list(path: Path, root: Path) -> tuple[list[str], list[int]]:
    """A split list as ImageNet-LT ships it: one ``<path relative to root> <label>`` per line."""
    samples, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected '<relative path> <label>', got {line!r}")
        samples.append(str(root / parts[0]))
        labels.append(int(parts[1]))
    return samples, labels
