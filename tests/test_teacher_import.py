"""Teacher files from the field: RepDistiller/mdistiller checkpoints in the reference zoo's parameter names (the
names generated here from the documented layout of RepDistiller's ``models/``), their wrappers (``model``,
``state_dict``, ``net``, DataParallel's ``module.``, a distiller's ``student.``), non-tensor entries that
``weights_only`` alone refuses, timm/torchvision state dicts; every one gives the same logits after import. Files
that do not fit, garbage and pickles that try to run code fail with one message naming the file, before any job."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli, tiny_suite
from test_data_files import write_cifar100

from kdbench import store
from kdbench.engine.checkpoint import ResumePoint, rng_state
from kdbench.models import create_network
from kdbench.models.cifar_zoo import ZOO
from kdbench.suite import SuiteError, validate
from kdbench.teachers import TeacherFileError, fit_state_dict, read_teacher

# ------------------------------------------------------------------------------ the reference names, by family


def _mobilenetv2_groups() -> dict[tuple[int, int], tuple[int, int]]:
    """kdbench (stage, block) -> RepDistiller (group, block): groups of 1, 2, 3, 4, 3, 3, 1 inverted residuals;
    kdbench's stages close after groups 1, 2, 4 and 6."""
    counts, stage_of_group = (1, 2, 3, 4, 3, 3, 1), (1, 1, 2, 3, 3, 4, 4)
    where, used = {}, {}
    for group, (count, stage) in enumerate(zip(counts, stage_of_group, strict=True)):
        for k in range(count):
            where[(stage, used.get(stage, 0))] = (group, k)
            used[stage] = used.get(stage, 0) + 1
    return where


def reference_name(arch: str, name: str) -> str:
    """kdbench's parameter name -> the name RepDistiller's model file gives the same tensor."""
    head, tail = name.rsplit(".", 1)
    if arch.startswith("wrn"):
        head = re.sub(r"^stages\.0$", "conv1", head)
        head = re.sub(r"^stages\.(\d)\.(\d+)\.shortcut$", r"block\1.layer.\2.convShortcut", head)
        head = re.sub(r"^stages\.(\d)\.(\d+)\.", r"block\1.layer.\2.", head)
        head = {"neck.0": "bn1"}.get(head, head)
    elif arch.startswith("vgg"):
        m = re.fullmatch(r"stages\.(\d)\.(\d+)\.([01])", head)
        if m:
            block, layer, kind = int(m[1]), int(m[2]), int(m[3])
            layer -= 1 if block in (1, 2, 3) else 0  # the max-pool ahead of blocks 1-3
            head = f"block{block}.{3 * layer + kind}"
        head = {"fc": "classifier"}.get(head, head)
    elif arch.startswith("mobilenetv2"):
        m = re.fullmatch(r"stages\.(\d)\.(\d+)\.body\.(\d)\.([01])", head)
        if m:
            group, k = _mobilenetv2_groups()[(int(m[1]), int(m[2]))]
            head = f"blocks.{group}.{k}.conv.{3 * int(m[3]) + int(m[4])}"
        head = {"stages.0.0": "conv1.0", "stages.0.1": "conv1.1", "neck.0.0": "conv2.0", "neck.0.1": "conv2.1",
                "fc": "classifier.0"}.get(head, head)
    elif arch.startswith("shufflev"):
        m = re.fullmatch(r"stages\.(\d)\.(\d+)\.(left|right|body|conv)\.?(\d)\.([01])", head)
        if m:
            i, j, part, index, kind = m[1], m[2], m[3], int(m[4]), m[5]
            number = {"left": index + 1, "right": index + 3, "body": index + 1, "conv": index}[part]
            head = f"layer{i}.{j}.{'conv' if kind == '0' else 'bn'}{number}"
        head = {"stages.0.0": "conv1", "stages.0.1": "bn1", "neck.0": "conv2", "neck.1": "bn2",
                "fc": "linear"}.get(head, head)
    else:  # CIFAR ResNets and ResNet50
        m = re.fullmatch(r"stages\.(\d)\.(\d+)\.body\.(\d)\.([01])", head)
        if m:
            head = f"layer{m[1]}.{m[2]}.{'conv' if m[4] == '0' else 'bn'}{int(m[3]) + 1}"
        shortcut = "shortcut" if arch == "resnet50_cifar" else "downsample"
        head = re.sub(r"^stages\.(\d)\.(\d+)\.shortcut\.", rf"layer\1.\2.{shortcut}.", head)
        head = {"stages.0.0": "conv1", "stages.0.1": "bn1",
                "fc": "linear" if arch == "resnet50_cifar" else "fc"}.get(head, head)
    return f"{head}.{tail}"


# RepDistiller's resnet8 (models/resnet.py) state-dict names, as its file lists them: anchors the generator above
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
RESNET8_REFERENCE = (
    ["conv1.weight"] + [f"bn1.{t}" for t in _BN]
    + [f"layer{i}.0.{m}" for i in (1, 2, 3) for m in (
        ["conv1.weight"] + [f"bn1.{t}" for t in _BN] + ["conv2.weight"] + [f"bn2.{t}" for t in _BN]
        + ([] if i == 1 else ["downsample.0.weight"] + [f"downsample.1.{t}" for t in _BN]))]
    + ["fc.weight", "fc.bias"])


def trained_like(arch: str, num_classes: int = 100) -> torch.nn.Module:
    """A zoo network with non-trivial BatchNorm statistics (so a BN mix-up changes the logits)."""
    torch.manual_seed(0)
    net = create_network(arch, num_classes=num_classes, in_chans=3).eval()
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return net


def reference_state(arch: str, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {reference_name(arch, k): v.clone() for k, v in net.model.state_dict().items()}


def test_the_generated_names_are_repdistillers_resnet8_names() -> None:
    net = create_network("resnet8_cifar", num_classes=100, in_chans=3)
    assert sorted(reference_state("resnet8_cifar", net)) == sorted(RESNET8_REFERENCE)


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_a_reference_state_dict_gives_the_same_logits_in_every_zoo_model(arch: str) -> None:
    net = trained_like(arch)
    fitted, layout = fit_state_dict(create_network(arch, num_classes=100, in_chans=3).model, arch,
                                    reference_state(arch, net))
    assert layout == "RepDistiller/mdistiller"
    other = create_network(arch, num_classes=100, in_chans=3).eval()
    other.model.load_state_dict(fitted)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(other(x).logits, net(x).logits)


# ------------------------------------------------------------------------------ file layouts


class NotATensor:
    """A pickled object of a module the loader must not import or run (as a trainer's config or meter)."""

    def __init__(self) -> None:
        self.lr, self.history = 0.05, [1.0, 2.0]


class ConfigDict(dict):
    """A dict subclass, as yacs' CfgNode or EasyDict are in some trainers' checkpoints."""


@pytest.fixture(scope="module")
def resnet8() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    net = trained_like("resnet8_cifar")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x).logits
    return net, reference_state("resnet8_cifar", net), (x, logits)


def _optimizer_state(state: dict[str, torch.Tensor]) -> dict:
    params = [torch.nn.Parameter(v.detach().clone()) for v in state.values() if v.is_floating_point()][:3]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


LAYOUTS = {
    "repdistiller ckpt_epoch_240": lambda s: {"epoch": 240, "model": s, "accuracy": torch.tensor([79.42]),
                                             "optimizer": _optimizer_state(s)},
    "repdistiller *_last with the opt namespace": lambda s: {"opt": argparse.Namespace(model="resnet8", lr=0.05),
                                                             "model": s, "optimizer": _optimizer_state(s)},
    "mdistiller student_best": lambda s: {"model": s},
    "mdistiller whole distiller (module.student. / module.teacher.)": lambda s: {
        "model": {**{f"module.student.{k}": v for k, v in s.items()},
                  **{f"module.teacher.{k}": v for k, v in s.items()}},
        "best_acc": 72.5, "epoch": 240, "optimizer": {"state": {}, "param_groups": []}},
    "state_dict + DataParallel + numpy scalars": lambda s: {
        "state_dict": {f"module.{k}": v for k, v in s.items()}, "best_acc": np.float64(72.5),
        "epoch": np.int64(240), "scores": np.arange(4.0)},
    "net entry + foreign objects": lambda s: {"net": s, "meter": NotATensor(), "cfg": ConfigDict(lr=0.1)},
    "bare state dict": lambda s: dict(s),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-serializer"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_published_file_layout_imports_to_the_same_logits(layout: str, legacy: bool, resnet8: tuple,
                                                                tmp_path: Path) -> None:
    _, state, (x, logits) = resnet8
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(LAYOUTS[layout](state), path, _use_new_zipfile_serialization=not legacy)
    network, read = read_teacher(path, "resnet8_cifar", 100, 3)
    with torch.no_grad():
        assert torch.equal(network(x).logits, logits)
    assert read.layout == "RepDistiller/mdistiller"
    assert not any(p.requires_grad for p in network.parameters()) and not network.training


def test_files_before_torch_0_4_1_without_bn_counters_import(resnet8: tuple, tmp_path: Path) -> None:
    _, state, (x, logits) = resnet8
    torch.save({"model": {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}},
               tmp_path / "old.pth")
    network, _ = read_teacher(tmp_path / "old.pth", "resnet8_cifar", 100, 3)
    with torch.no_grad():
        assert torch.equal(network(x).logits, logits)


def test_kdbench_weights_and_run_checkpoints_import_as_they_are(resnet8: tuple, tmp_path: Path) -> None:
    net, _, (x, logits) = resnet8
    torch.save(net.state_dict(), tmp_path / "weights.pt")  # a teacher job's weights: Network keys model.*
    torch.save({"student": net.state_dict(), "method": {}, "epoch": 3}, tmp_path / "checkpoint.pt")  # older runs
    point = ResumePoint(phase=0, epoch=3, student=net.state_dict(), method={}, optimizer={}, scheduler={},
                        rng=rng_state(), history=[])
    torch.save(point.to_state(), tmp_path / "packed.pt")  # a run's epoch checkpoint, its tensors packed
    for name in ("weights.pt", "checkpoint.pt", "packed.pt"):
        network, read = read_teacher(tmp_path / name, "resnet8_cifar", 100, 3)
        assert read.layout == "kdbench/timm"
        with torch.no_grad():
            assert torch.equal(network(x).logits, logits)


def test_torchvision_names_load_into_timms_imagenet_resnet(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000).eval()  # timm's ResNet uses torchvision's names
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, tmp_path / "resnet18-f37072fd.pth")
    network, read = read_teacher(tmp_path / "resnet18-f37072fd.pth", "resnet18", 1000, 3)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(network(x).logits, model(x)) and read.layout == "kdbench/timm"


class RemovesFiles:
    """A pickle that would delete a folder when unpickled by a plain ``torch.load``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple:
        import shutil

        return shutil.rmtree, (str(self.folder),)


class RunsShell:
    """A pickle that would run a shell command (``os.system``: a module torch blocks outright)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def test_a_pickle_that_would_run_code_runs_nothing(resnet8: tuple, tmp_path: Path) -> None:
    _, state, (x, logits) = resnet8
    precious = tmp_path / "precious"
    precious.mkdir()
    torch.save({"model": state, "payload": RemovesFiles(precious)}, tmp_path / "evil.pth")
    network, read = read_teacher(tmp_path / "evil.pth", "resnet8_cifar", 100, 3)  # the payload is inert
    assert precious.is_dir() and "payload" in read.skipped
    with torch.no_grad():
        assert torch.equal(network(x).logits, logits)
    marker = tmp_path / "pwned"
    torch.save({"model": state, "payload": RunsShell(marker)}, tmp_path / "shell.pth")
    with pytest.raises(TeacherFileError, match=r"cannot be read safely .*GLOBAL (posix|nt|os)\.system"):
        read_teacher(tmp_path / "shell.pth", "resnet8_cifar", 100, 3)
    assert not marker.exists()


# ------------------------------------------------------------------------------ files that do not fit


def _write(tmp_path: Path, name: str, obj: object) -> Path:
    path = tmp_path / name
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize(("case", "words"), [
    ("another architecture", r"does not fit architecture 'resnet8_cifar' .*\d+ unexpected \(layer1\.1\."),
    ("cifar-10 classifier", r"2 mis-shaped \(fc\.weight \(10, 64\) vs \(100, 64\), fc\.bias"),
    ("garbage bytes", r"is not a torch checkpoint"),
    ("truncated file", r"(is not a torch checkpoint|cannot be read safely)"),
    ("empty file", r"is not a torch checkpoint"),
    ("no tensors", r"holds no model tensors"),
])
def test_a_file_that_does_not_fit_names_itself_and_what_is_wrong(case: str, words: str, resnet8: tuple,
                                                                 tmp_path: Path) -> None:
    _, state, _ = resnet8
    good = _write(tmp_path, "good.pth", {"model": state})
    cifar10 = dict(state, **{"fc.weight": state["fc.weight"][:10], "fc.bias": state["fc.bias"][:10]})
    objects = {"another architecture": {"model": reference_state("resnet14_cifar",
                                                                 create_network("resnet14_cifar", num_classes=100,
                                                                                in_chans=3))},
               "cifar-10 classifier": {"model": cifar10}, "garbage bytes": b"\x80\x04garbage" * 50,
               "truncated file": good.read_bytes()[: good.stat().st_size // 2], "empty file": b"",
               "no tensors": {"epoch": 240, "accuracy": 79.42}}
    path = _write(tmp_path, "teacher.pth", objects[case])
    with pytest.raises(TeacherFileError) as err:
        read_teacher(path, "resnet8_cifar", 100, 3)
    assert str(path) in str(err.value) and re.search(words, str(err.value)), str(err.value)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ before any job; end to end


def _cifar_suite(tmp_path: Path, sources: dict, pairs: list[dict]) -> dict:
    root = write_cifar100(tmp_path / "data", n_train=40, n_test=20)
    return tiny_suite(name="published_teachers", dataset={"name": "cifar100", "root": str(root)},
                      regimes=[{"name": "balanced"}], pairs=pairs, methods=[{"name": "kd"}],
                      train={"epochs": 1, "batch_size": 20, "lr": 0.05}, teacher={"sources": sources},
                      executor={"name": "local", "workers": 1})


def test_a_matching_sha256_on_a_file_that_is_no_checkpoint_stops_the_suite(tmp_path: Path) -> None:
    garbage = _write(tmp_path, "ckpt_epoch_240.pth", b"not a checkpoint at all" * 10)
    suite = _cifar_suite(tmp_path, {"resnet8_cifar": {"checkpoint": str(garbage), "sha256": store.sha256_file(garbage),
                                                      "top1": 1.0}},
                         [{"teacher": "resnet8_cifar", "student": "resnet8_cifar"}])
    with pytest.raises(SuiteError) as err:
        validate(suite)
    assert err.value.key == "teacher.sources.resnet8_cifar.checkpoint" and "is not a torch checkpoint" in str(err.value)
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    result = run_cli("kdbench", "run", str(suite_path), "--results", str(tmp_path / "results"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "is not a torch checkpoint" in result.stderr
    assert not (tmp_path / "results").exists()  # nothing started, nothing written


def test_a_wrong_architecture_stops_the_suite_with_the_counts(resnet8: tuple, tmp_path: Path) -> None:
    _, state, _ = resnet8
    path = _write(tmp_path, "ckpt_epoch_240.pth", {"model": state})
    suite = _cifar_suite(tmp_path, {"resnet14_cifar": {"checkpoint": str(path), "sha256": store.sha256_file(path),
                                                       "top1": 1.0}},
                         [{"teacher": "resnet14_cifar", "student": "resnet8_cifar"}])
    with pytest.raises(SuiteError, match=r"does not fit architecture 'resnet14_cifar' .* missing"):
        validate(suite)


def _top1(network: torch.nn.Module, root: Path) -> float:
    from kdbench.data import dataset_registry
    from kdbench.engine import evaluate

    splits = dataset_registry.get("cifar100")(root=str(root)).load()
    return evaluate(network, lambda x, out: out.logits, splits.test, 64).top1


def test_repdistiller_and_mdistiller_files_teach_students_through_the_cli(tmp_path: Path) -> None:
    """Two published-format teachers (RepDistiller's ckpt_epoch_240 layout, legacy serializer; mdistiller's
    distiller checkpoint) verified by sha256 and top-1, then students distil from them."""
    teachers = {"resnet8_cifar": trained_like("resnet8_cifar"), "resnet14_cifar": trained_like("resnet14_cifar")}
    files = {"resnet8_cifar": (tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"),
             "resnet14_cifar": (tmp_path / "mdistiller" / "student_best")}
    for path in files.values():
        path.parent.mkdir()
    torch.save(LAYOUTS["repdistiller ckpt_epoch_240"](reference_state("resnet8_cifar", teachers["resnet8_cifar"])),
               files["resnet8_cifar"], _use_new_zipfile_serialization=False)
    torch.save(LAYOUTS["mdistiller whole distiller (module.student. / module.teacher.)"](
        reference_state("resnet14_cifar", teachers["resnet14_cifar"])), files["resnet14_cifar"])
    suite = _cifar_suite(tmp_path, {}, [{"teacher": "resnet8_cifar", "student": "resnet8_cifar"},
                                        {"teacher": "resnet14_cifar", "student": "resnet8_cifar"}])
    root = Path(suite["dataset"]["root"])
    suite["teacher"]["sources"] = {arch: {"checkpoint": str(path), "sha256": store.sha256_file(path),
                                          "top1": _top1(teachers[arch], root), "tolerance": 0.01}
                                   for arch, path in files.items()}
    suite_path = tmp_path / "suite.yaml"
    suite_path.write_text(yaml.safe_dump(suite))
    result = run_cli("kdbench", "run", str(suite_path), "--results", str(tmp_path / "results"), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    folder = tmp_path / "results" / "published_teachers"
    records = [store.load_result(p) for kind in ("teachers", "runs") for p in (folder / kind).iterdir()]
    assert sorted(r["state"] for r in records) == ["done"] * 4
    layouts = sorted(r["diagnostics"]["file_layout"] for r in records if r["spec"]["role"] == "teacher")
    assert layouts == ["RepDistiller/mdistiller"] * 2
    assert all(r["metrics"]["epochs_completed"] == 1 for r in records if r["spec"]["role"] == "student")


def test_teacher_import_converts_prints_the_sha256_and_the_top1_beside_the_published_one(tmp_path: Path) -> None:
    net = trained_like("resnet8_cifar")
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(LAYOUTS["repdistiller *_last with the opt namespace"](reference_state("resnet8_cifar", net)), path)
    root = write_cifar100(tmp_path / "data", n_train=10, n_test=20)
    out = tmp_path / "converted.pt"
    result = run_cli("kdbench", "teacher", "import", str(path), "--arch", "resnet8_cifar", "--out", str(out),
                     "--data-root", str(root))
    assert result.returncode == 0, result.stderr
    assert f"sha256 {store.sha256_file(path)}" in result.stdout and f"sha256 {store.sha256_file(out)}" in result.stdout
    assert f"top-1 on the cifar100 test split: {_top1(net, root):.2f}" in result.stdout
    assert "skipped entries: opt, optimizer" in result.stdout
    converted, read = read_teacher(out, "resnet8_cifar", 100, 3)
    assert read.layout == "kdbench/timm"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(converted(x).logits, net(x).logits)
    published = run_cli("kdbench", "teacher", "import", str(out), "--arch", "resnet8_cifar")
    assert "published top-1 on cifar100: none on record" in published.stdout
    bad = run_cli("kdbench", "teacher", "import", str(path), "--arch", "resnet32x4_cifar")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "resnet32x4_cifar" in bad.stderr
