"""The CIFAR zoo: parameter counts equal to the reference model files (RepDistiller's ``models/``, 100 classes),
the pooled feature size, every tap's shape against what the model declares, and every tap pinned to the module
output the reference distillers read (``forward(x, is_feat=True, preact=False/True)``, ``get_bn_before_relu()``)."""

from __future__ import annotations

import pytest
import torch

from kdbench.models import count_parameters, create_network
from kdbench.models.cifar_zoo import ZOO
from kdbench.models.network import check_taps

# parameters of RepDistiller's model files built for 100 classes (counted by instantiating models/*.py), the
# pooled feature and the stage outputs at 32x32 (REFERENCE: RepDistiller/CRD)
PUBLISHED = {
    "resnet8_cifar": (83_892, 64, None),
    "resnet14_cifar": (181_108, 64, None),
    "resnet20_cifar": (278_324, 64, [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "resnet32_cifar": (472_756, 64, None),
    "resnet44_cifar": (667_188, 64, None),
    "resnet56_cifar": (861_620, 64, None),
    "resnet110_cifar": (1_736_564, 64, None),
    "resnet8x4_cifar": (1_233_540, 256, [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "resnet32x4_cifar": (7_433_860, 256, None),
    "wrn_16_1_cifar": (180_916, 64, None),
    "wrn_16_2_cifar": (703_284, 128, [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn_40_1_cifar": (569_780, 64, [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "wrn_40_2_cifar": (2_255_156, 128, None),
    "vgg8_cifar": (3_965_028, 512, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    "vgg11_cifar": (9_277_284, 512, None),
    "vgg13_cifar": (9_462_180, 512, None),
    "vgg16_cifar": (14_774_436, 512, None),
    "vgg19_cifar": (20_086_692, 512, None),
    "mobilenetv2_cifar": (812_836, 1280, [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
    "shufflev1_cifar": (949_258, 960, [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    "shufflev2_cifar": (1_355_528, 1024, [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)]),
    "resnet50_cifar": (23_705_252, 2048, [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_feature_and_taps_match_the_reference_models(name: str) -> None:
    params, feature_dim, stages = PUBLISHED[name]
    net = create_network(name, num_classes=100, in_chans=3, img_size=32)
    assert count_parameters(net) == params
    assert net.feature_dim == feature_dim and net.classifier.in_features == feature_dim
    shapes = check_taps(net, torch.zeros(2, 3, 32, 32))
    if stages is not None:
        assert list(shapes.values()) == stages


def _last(net: object, stage: int) -> int:
    return len(net.model.stages[stage]) - 1


def reference_taps(name: str, net: object) -> dict[str, tuple[str, str]]:
    """Where the reference reads each tap: ``tap -> ("output" | "input", module path)``; ``bn:<tap>`` -> the
    BatchNorm its ``get_bn_before_relu()`` gives for that stage ("" = none). Written from the reference files:
    ResNet/VGG/ResNet50/ShuffleV1 ``f{i}_pre`` = the last block's sum before its final ReLU; WRN ``f{i}`` = the
    raw block output (``f3`` before the closing BN-ReLU) and ``f{i}_pre`` = the *next* BN's output; MobileNetV2
    has no pre-activation variant (``preact`` returns the same list); ShuffleV2 ``f{i}_pre`` = the last basic
    block's concatenation before its ReLU and channel shuffle; ``f0_pre`` = ``f0`` everywhere."""
    stages = len(net.model.stages)
    pins = {"stage0": ("output", "stages.0"), "stage0_pre": ("output", "stages.0"), "bn:stage0_pre": ""}
    for i in range(1, stages):
        pins[f"stage{i}"] = ("output", f"stages.{i}")
        last = f"stages.{i}.{_last(net, i)}"
        if name.startswith("wrn"):
            bn = f"stages.{i + 1}.0.bn1" if i + 1 < stages else "neck.0"
            pins[f"stage{i}_pre"], pins[f"bn:stage{i}_pre"] = ("output", bn), bn
        elif name.startswith("vgg"):
            pins[f"stage{i}_pre"], pins[f"bn:stage{i}_pre"] = ("input", f"{last}.2"), f"{last}.1"
        elif name.startswith("mobilenetv2"):
            pins[f"stage{i}_pre"], pins[f"bn:stage{i}_pre"] = ("output", f"stages.{i}"), f"{last}.body.2.1"
        elif name.startswith("shufflev"):
            pins[f"stage{i}_pre"], pins[f"bn:stage{i}_pre"] = ("input", f"{last}.act"), ""
        else:  # CIFAR ResNets (last BN of the basic block: body.1) and ResNet50 (bottleneck: body.2)
            bn = f"{last}.body.2.1" if name == "resnet50_cifar" else f"{last}.body.1.1"
            pins[f"stage{i}_pre"], pins[f"bn:stage{i}_pre"] = ("input", f"{last}.act"), bn
    return pins


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_tap_is_the_module_output_the_reference_distillers_read(name: str) -> None:
    torch.manual_seed(0)
    net = create_network(name, num_classes=100, in_chans=3).eval()
    for module in net.modules():  # BN must not be the identity, else output-of-BN and input-of-BN coincide
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    pins = reference_taps(name, net)
    modules = dict(net.model.named_modules())
    seen: dict[tuple[str, str], torch.Tensor] = {}

    def record(kind: str, path: str) -> object:  # inputs before the module runs: in-place ReLUs overwrite them
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
            seen[(kind, path)] = (args[0] if kind == "input" else out).clone()
        return hook

    where = {tap: place for tap, place in pins.items() if not tap.startswith("bn:")}
    handles = [modules[path].register_forward_pre_hook(record(kind, path)) if kind == "input"
               else modules[path].register_forward_hook(record(kind, path)) for kind, path in where.values()]
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32), taps=net.tap_names + net.preact_tap_names)
    for handle in handles:
        handle.remove()
    assert set(out.taps) == set(where)
    for tap, tensor in out.taps.items():
        assert torch.equal(tensor, seen[pins[tap]]), tap
        if tap.endswith("_pre"):
            bn = net.bn_before_activation(tap)
            assert (bn is None) == (pins[f"bn:{tap}"] == "") and (bn is None or bn is modules[pins[f"bn:{tap}"]])


def test_shufflev2_has_the_reference_1x1_stem() -> None:
    stem = create_network("shufflev2_cifar", num_classes=100, in_chans=3).model.stages[0][0]
    assert stem.kernel_size == (1, 1) and stem.padding == (0, 0)


def test_the_table_covers_the_whole_zoo() -> None:
    assert set(PUBLISHED) == set(ZOO)


def test_a_wrong_declaration_is_caught_with_a_message_naming_the_tap() -> None:
    net = create_network("resnet20_cifar", num_classes=100, in_chans=3)
    net.model.feature_info[2]["num_chs"] = 99
    with pytest.raises(ValueError, match="tap stage2 is"):
        check_taps(net, torch.zeros(1, 3, 32, 32))


def test_cifar_zoo_names_do_not_shadow_timm_imagenet_models() -> None:
    import timm

    assert timm.create_model("vgg13", num_classes=10).__class__.__module__.startswith("timm")
    assert all(name.endswith("_cifar") for name in ZOO)


@pytest.mark.parametrize(("name", "feature_dim", "taps"), [
    ("resnet18", 512, 5), ("mobilenetv1_100", 1024, 5), ("beitv2_base_patch16_224", 768, 12)])
def test_imagenet_models_come_straight_from_timm_with_checked_taps(name: str, feature_dim: int, taps: int) -> None:
    net = create_network(name, num_classes=1000, in_chans=3)
    shapes = check_taps(net, torch.zeros(1, 3, 224, 224))
    assert net.feature_dim == feature_dim and len(shapes) == taps
