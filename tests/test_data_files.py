"""The full-scale loaders on tiny data each test writes in the real on-disk format: CIFAR-100 python pickles, an
ImageFolder tree, a WebDataset tar shard. The network is blocked while they load."""

from __future__ import annotations

import io
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_suite

from kdbench.data import dataset_registry, eval_batches, train_batches
from kdbench.data.files import FileData, open_image, scan_unlabeled
from kdbench.data.sources import Augment, TensorData, crop_flip
from kdbench.suite import SuiteError, validate


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open an internet connection fails the test: loaders read local files only (local Unix
    sockets, which DataLoader workers use to hand tensors back, stay allowed)."""
    connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"a data loader tried to use the network ({address})")
        connect(self, address)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a data loader tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection", refuse)


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """A tiny CIFAR-100 in torchvision's format: pickled dicts with bytes keys, uint8 rows of 3072 values."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)],
                 b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f, protocol=2)
    return root


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "eel"), per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            for i in range(per_class):
                write_png(root / split / name / f"{i}.png", (80 * c, 10 * i, 200))
    return root


def test_cifar100_reads_torchvision_pickles_as_uint8_and_normalises_on_the_fly(tmp_path: Path) -> None:
    root = write_cifar100(tmp_path / "data")
    splits = dataset_registry.get("cifar100")(root=str(root)).load()
    assert (len(splits.train), len(splits.test), splits.num_classes) == (20, 10, 100)
    assert splits.train.x.dtype == torch.uint8 and splits.train.image_shape == (3, 32, 32)
    raw = pickle.loads((root / "cifar-100-python" / "train").read_bytes(), encoding="bytes")
    first = torch.from_numpy(raw[b"data"][0].reshape(3, 32, 32))
    assert torch.equal(splits.train.x[0], first)  # channel-major rows, as torchvision reshapes them
    x, y = next(eval_batches(splits.test, 4))
    mean = torch.tensor((0.5071, 0.4865, 0.4409)).view(1, 3, 1, 1)
    std = torch.tensor((0.2673, 0.2564, 0.2762)).view(1, 3, 1, 1)
    assert torch.allclose(x, (splits.test.x[:4].float() / 255 - mean) / std, atol=1e-6)
    assert y.tolist() == [0, 1, 2, 3]


def test_cifar_reader_refuses_pickles_that_would_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(pickle.dumps({b"data": print}, protocol=2))  # a callable: not CIFAR data
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load (__builtin__|builtins)\.print"):
        dataset_registry.get("cifar100")(root=str(tmp_path)).load()


def test_crop_flip_is_a_padded_crop_and_a_flip_seeded_by_the_generator() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    a = crop_flip(x, Augment(pad=1), torch.Generator().manual_seed(3))
    b = crop_flip(x, Augment(pad=1), torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    gen = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 3, (2,), generator=gen), torch.randint(0, 3, (2,), generator=gen)
    flip = torch.rand(2, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        expected = padded[i, :, dy[i]:dy[i] + 4, dx[i]:dx[i] + 4]
        assert torch.equal(a[i], expected.flip(2) if flip[i] else expected)
    assert torch.equal(crop_flip(x, Augment(pad=0, flip=False)), x)


def test_training_batches_of_cifar_are_augmented_and_reproducible(tmp_path: Path) -> None:
    splits = dataset_registry.get("cifar100")(root=str(write_cifar100(tmp_path / "d"))).load()
    first = [b.x for b in train_batches(splits.train, np.arange(20), 8, labeled=True, seed=0, epoch=1)]
    again = [b.x for b in train_batches(splits.train, np.arange(20), 8, labeled=True, seed=0, epoch=1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    plain = TensorData(splits.train.x, splits.train.y, splits.train.mean, splits.train.std, augment=None)
    unaugmented = [b.x for b in train_batches(plain, np.arange(20), 8, labeled=True, seed=0, epoch=1)]
    assert not all(torch.equal(a, b) for a, b in zip(first, unaugmented, strict=True))


def test_image_folder_loads_class_folders_with_train_and_eval_transforms(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree")
    (root / "val" / "dog" / "1.png").unlink()  # val may be smaller; labels still come from train's classes
    source = dataset_registry.get("image_folder")(root=str(root), size=16, resize=20, num_workers=0)
    splits = source.load()
    assert isinstance(splits.train, FileData) and splits.num_classes == 3 and splits.img_size == 16
    assert splits.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and splits.test.y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    x, y = next(eval_batches(splits.test, 8))
    assert x.shape == (8, 3, 16, 16) and y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    batches = list(train_batches(splits.train, np.arange(9), 4, labeled=False, seed=0, epoch=0))
    assert [len(b.x) for b in batches] == [4, 4] and all(b.y is None for b in batches)  # lone last image dropped
    again = list(train_batches(splits.train, np.arange(9), 4, labeled=False, seed=0, epoch=0))
    assert all(torch.equal(a.x, b.x) for a, b in zip(batches, again, strict=True))
    # file-backed splits hand CRD's negatives too: other classes' items, the images unchanged
    contrast = list(train_batches(splits.train, np.arange(9), 4, labeled=True, seed=0, epoch=0, negatives=5))
    for plain, with_negatives in zip(batches, contrast, strict=True):
        assert torch.equal(plain.x, with_negatives.x) and with_negatives.negatives.shape == (4, 5)
        assert not (splits.train.y[with_negatives.negatives] == with_negatives.y[:, None]).any()


def test_image_folder_decodes_the_same_with_worker_processes(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree")
    one = dataset_registry.get("image_folder")(root=str(root), size=16, resize=20, num_workers=0).load()
    two = dataset_registry.get("image_folder")(root=str(root), size=16, resize=20, num_workers=2).load()
    a = [b.x for b in train_batches(one.train, np.arange(9), 4, labeled=True, seed=1, epoch=2)]
    b = [b.x for b in train_batches(two.train, np.arange(9), 4, labeled=True, seed=1, epoch=2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_webdataset_shard_images_are_read_in_place(tmp_path: Path) -> None:
    from PIL import Image

    shard = tmp_path / "shards" / "00000.tar"
    shard.parent.mkdir()
    colors = [(255, 0, 0), (0, 255, 0)]
    with tarfile.open(shard, "w") as tar:
        for i, color in enumerate(colors):
            image = io.BytesIO()
            Image.new("RGB", (8, 8), color).save(image, format="PNG")
            for name, payload in ((f"{i:05d}.png", image.getvalue()), (f"{i:05d}.txt", b"a caption")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    write_png(tmp_path / "shards" / "loose" / "extra.png", (0, 0, 255))
    samples = scan_unlabeled(tmp_path / "shards")
    assert len(samples) == 3  # two shard members (captions skipped) and one loose file
    assert [open_image(s).getpixel((0, 0)) for s in samples] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


@pytest.mark.parametrize("name", ["cifar100", "image_folder", "imagenet"])
def test_missing_data_root_is_one_message_naming_path_and_layout(name: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(SuiteError) as err:
        validate(tiny_suite(dataset={"name": name, "root": str(missing)}))
    assert err.value.key == "dataset.root" and str(missing) in str(err.value) and "expects" in str(err.value)
    with pytest.raises(SuiteError, match=r"no data root given .*KDBENCH_DATA"):
        validate(tiny_suite(dataset={"name": name}))


def test_kdbench_data_names_the_root_of_every_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar100(tmp_path / "cifar100")
    monkeypatch.setenv("KDBENCH_DATA", str(tmp_path))
    splits = dataset_registry.get("cifar100")().load()
    assert len(splits.train) == 20


@pytest.mark.parametrize("dataset", ["cifar100", "image_folder"])
def test_a_suite_trains_end_to_end_on_the_file_formats(dataset: str, tmp_path: Path) -> None:
    from kdbench.dispatch import dispatch
    from kdbench.suite import expand

    if dataset == "cifar100":
        params = {"name": "cifar100", "root": str(write_cifar100(tmp_path / "d", n_train=40, n_test=20))}
    else:
        params = {"name": "image_folder", "root": str(write_image_folder(tmp_path / "d")), "size": 16,
                  "resize": 20, "num_workers": 0}
    suite = validate(tiny_suite(dataset=params, regimes=[{"name": "balanced"}],
                                methods=[{"name": "vanilla"}, {"name": "kd"}],
                                train={"epochs": 1, "batch_size": 8}, teacher={"train": {"epochs": 1, "batch_size": 8}},
                                eval={"batch_size": 8, "val_fraction": 0.0}))
    summary = dispatch(expand(suite), tmp_path / "results", suite.executor, progress=False)
    assert summary.counts() == {"done": 3}


def test_imagenet_lt_lists_define_the_split_and_given_groups_follow_its_counts(tmp_path: Path) -> None:
    from kdbench.data import regime_registry

    root = write_image_folder(tmp_path / "imagenet", per_class=4)
    lines = ["train/cat/0.png 0", "train/cat/1.png 0", "train/cat/2.png 0", "train/cat/3.png 0",
             "train/dog/0.png 1", "train/dog/1.png 1", "train/eel/0.png 2"]
    (tmp_path / "lt_train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "lt_test.txt").write_text("val/cat/0.png 0\nval/eel/3.png 2\n")
    source = dataset_registry.get("imagenet")(root=str(root), size=16, resize=20, num_workers=0,
                                              train_list=str(tmp_path / "lt_train.txt"),
                                              val_list=str(tmp_path / "lt_test.txt"))
    splits = source.load()
    assert splits.num_classes == 3 and len(splits.train) == 7 and splits.test.y.tolist() == [0, 2]
    assert splits.train.samples[4].endswith("train/dog/0.png")
    data = regime_registry.get("given")(many_above=3, few_below=2).apply(splits.train.y.numpy(), 3)
    assert data.class_counts == [4, 2, 1] and data.groups == {"many": [0], "medium": [1], "few": [2]}


def test_unlabeled_transfer_set_refuses_labelled_regimes_and_trained_teachers(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "tree")
    dataset = {"name": "unlabeled_folder", "root": str(root / "train"), "eval_root": str(root / "val"), "size": 16,
               "resize": 20, "num_workers": 0}
    with pytest.raises(SuiteError) as err:
        validate(tiny_suite(dataset=dataset, regimes=[{"name": "balanced"}]))
    assert err.value.key == "regimes[0].name" and "only the unlabeled regime" in str(err.value)
    with pytest.raises(SuiteError) as err:
        validate(tiny_suite(dataset=dataset, regimes=[{"name": "unlabeled"}], methods=[{"name": "kd"}]))
    assert err.value.key == "pairs[0].teacher" and "teacher.sources" in str(err.value)


def test_students_distil_on_an_unlabeled_transfer_set_and_are_tested_on_labelled_images(tmp_path: Path) -> None:
    from kdbench import store
    from kdbench.dispatch import dispatch
    from kdbench.suite import expand

    root = write_image_folder(tmp_path / "tree")
    labelled = {"name": "image_folder", "root": str(root), "size": 16, "resize": 20, "num_workers": 0}
    teach = validate(tiny_suite(dataset=labelled, regimes=[{"name": "balanced"}], methods=[{"name": "kd"}],
                                train={"epochs": 1, "batch_size": 4}, teacher={"train": {"epochs": 1, "batch_size": 4}},
                                eval={"batch_size": 8}))
    dispatch(expand(teach), tmp_path / "first", teach.executor, progress=False)
    (teacher_dir,) = (tmp_path / "first" / "tiny" / "teachers").iterdir()
    record = store.load_result(teacher_dir)
    source = {"checkpoint": str(teacher_dir / "weights.pt"), "sha256": record["artifacts"]["weights_sha256"],
              "top1": record["metrics"]["top1_last"]}
    transfer = {"name": "unlabeled_folder", "root": str(root / "train"), "eval_root": str(root / "val"),
                "size": 16, "resize": 20, "num_workers": 0}
    suite = validate(tiny_suite(dataset=transfer, regimes=[{"name": "unlabeled"}], methods=[{"name": "kd"}],
                                train={"epochs": 1, "batch_size": 4}, eval={"batch_size": 8},
                                teacher={"sources": {"kdb_cnn_small": source}}))
    summary = dispatch(expand(suite), tmp_path / "second", suite.executor, progress=False)
    assert summary.counts() == {"done": 2}
    (run_dir,) = (tmp_path / "second" / "tiny" / "runs").iterdir()
    student = store.load_result(run_dir)
    assert student["data"]["labeled"] is False and student["data"]["test_size"] == 9
