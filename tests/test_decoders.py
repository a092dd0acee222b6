"""The image-folder decoders of :mod:`kdbench.data.files`: ``torchvision`` (``torchvision.io`` + transforms v2 on
the uint8 tensor) gives the same training and evaluation tensors as ``pil`` (the default) up to rounding.

Tolerances, in uint8 levels (one level = 1/255 before normalisation): decoding agrees to 2 levels (both libraries
use libjpeg-turbo with its default integer IDCT and fancy upsampling, so here the pixels are identical; another
libjpeg-turbo build may round a level differently); after RandomResizedCrop/Resize the two antialiased bilinear
resamplers (PIL's and torch's uint8 kernel) round differently by at most one level, and rarely (mean under 0.1
level). The images are real photographs: crops of scikit-learn's two sample photos written as JPEG.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from kdbench.bench.inputs import sample_image_folder
from kdbench.data.files import IMAGENET_STD, FileData, ImageTransforms, decode_tensor, open_image

STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised images in uint8 levels."""
    return ((a - b) * STD * 255).abs()


def pil_pixels(sample: str) -> torch.Tensor:
    return torch.from_numpy(np.array(open_image(sample))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = sample_image_folder(tmp_path_factory.mktemp("photos"), 12)
    return sorted(str(p) for p in folder.rglob("*.jpg"))


def test_decoded_pixels_agree(photos: list[str]) -> None:
    for sample in photos:
        ours = decode_tensor(sample)
        assert ours.dtype == torch.uint8 and ours.shape == pil_pixels(sample).shape
        assert (ours.int() - pil_pixels(sample).int()).abs().max() <= 2


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_transforms_agree_up_to_resize_rounding(photos: list[str], train: bool) -> None:
    pil = ImageTransforms(size=96, resize=110, decoder="pil").build(train)
    tv = ImageTransforms(size=96, resize=110, decoder="torchvision").build(train)
    means = []
    for i, sample in enumerate(photos):
        torch.manual_seed(i)
        a = pil(sample)
        torch.manual_seed(i)  # the same seed draws the same crop and flip in both pipelines
        b = tv(sample)
        assert a.shape == b.shape == (3, 96, 96) and b.dtype == torch.float32
        diff = levels(a, b)
        assert diff.max() <= 1 + 1e-3
        means.append(float(diff.mean()))
    assert np.mean(means) < 0.1
    if train:  # the tolerance can fail: another seed draws another crop
        torch.manual_seed(0)
        first = pil(photos[0])
        torch.manual_seed(1)
        assert float(levels(first, tv(photos[0])).mean()) > 1.0


def test_file_data_batches_agree(photos: list[str]) -> None:
    labels = torch.arange(len(photos)) % 3
    chunks = list(torch.arange(len(photos)).split(5))
    batches = {}
    for decoder in ("pil", "torchvision"):
        data = FileData(photos, labels, ImageTransforms(size=64, resize=72, decoder=decoder), num_workers=1)
        batches[decoder] = list(data.load_batches(chunks, train=True, seed=3))
    for (xa, ya), (xb, yb) in zip(batches["pil"], batches["torchvision"], strict=True):
        assert torch.equal(ya, yb) and xa.shape == xb.shape
        assert levels(xa, xb).max() <= 1 + 1e-3


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_other_formats_decode_like_pil(tmp_path: Path, suffix: str) -> None:
    """Lossless formats give PIL's pixels exactly; those torchvision.io cannot read (BMP, TIFF) go through PIL."""
    from PIL import Image

    rng = np.random.default_rng(0)
    path = tmp_path / f"image{suffix}"
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(path, **(
        {"lossless": True} if suffix == ".webp" else {}))
    assert torch.equal(decode_tensor(str(path)), pil_pixels(str(path)))


def test_default_is_pil_an_unknown_decoder_is_refused_and_both_pickle() -> None:
    assert ImageTransforms().decoder == "pil"
    with pytest.raises(ValueError, match="pil, torchvision"):
        ImageTransforms(decoder="opencv")
    for decoder in ("pil", "torchvision"):  # DataLoader workers started by spawn receive the transform pickled
        pickle.loads(pickle.dumps(ImageTransforms(decoder=decoder).build(True)))


def test_a_suite_chooses_the_decoder_and_only_a_non_default_one_changes_the_run_id(tmp_path: Path) -> None:
    from kdbench.data import dataset_registry
    from kdbench.suite import spec_id

    source = dataset_registry.get("image_folder")(root=str(tmp_path), decoder="torchvision")
    assert source.decoder == "torchvision"
    with pytest.raises(ValueError, match="decoder must be one of pil, torchvision"):
        dataset_registry.get("imagenet")(decoder="opencv")
    spec = {"dataset": {"name": "image_folder", "params": {"size": 224}}, "seed": 0}
    pil = {**spec, "dataset": {"name": "image_folder", "params": {"size": 224, "decoder": "pil"}}}
    tv = {**spec, "dataset": {"name": "image_folder", "params": {"size": 224, "decoder": "torchvision"}}}
    assert spec_id(pil) == spec_id(spec) != spec_id(tv)  # ids of runs written before the option stay
