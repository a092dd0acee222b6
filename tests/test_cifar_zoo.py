"""The CIFAR zoo: parameter counts against the published tables (RepDistiller's model files, 100 classes), the
pooled feature size, and every tap's shape against what the model declares."""

from __future__ import annotations

import pytest
import torch

from kdbench.models import count_parameters, create_network
from kdbench.models.cifar_zoo import ZOO
from kdbench.models.network import check_taps

# millions of parameters, pooled feature, stage outputs at 32x32 (REFERENCE: RepDistiller/CRD model files)
PUBLISHED = {
    "resnet20_cifar": (0.278, 64, [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "resnet32_cifar": (0.473, 64, None),
    "resnet56_cifar": (0.862, 64, None),
    "resnet110_cifar": (1.737, 64, None),
    "resnet8x4_cifar": (1.234, 256, [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]),
    "resnet32x4_cifar": (7.434, 256, None),
    "wrn_16_2_cifar": (0.703, 128, [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]),
    "wrn_40_2_cifar": (2.255, 128, None),
    "wrn_40_1_cifar": (0.570, 64, [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]),
    "vgg8_cifar": (3.965, 512, [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]),
    "vgg13_cifar": (9.462, 512, None),
    "mobilenetv2_cifar": (0.813, 1280, [(16, 16, 16), (12, 16, 16), (16, 8, 8), (48, 4, 4), (160, 2, 2)]),
    "shufflev1_cifar": (0.949, 960, [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4)]),
    "shufflev2_cifar": (1.356, 1024, [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4)]),
    "resnet50_cifar": (23.705, 2048, [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_feature_and_taps_match_the_published_models(name: str) -> None:
    params_m, feature_dim, stages = PUBLISHED[name]
    net = create_network(name, num_classes=100, in_chans=3, img_size=32)
    assert abs(count_parameters(net) / 1e6 / params_m - 1) < 0.01, count_parameters(net)
    assert net.feature_dim == feature_dim and net.classifier.in_features == feature_dim
    shapes = check_taps(net, torch.zeros(2, 3, 32, 32))
    if stages is not None:
        assert list(shapes.values()) == stages


@pytest.mark.parametrize("name", sorted(set(ZOO) - set(PUBLISHED)))
def test_the_other_zoo_models_build_and_declare_their_taps(name: str) -> None:
    net = create_network(name, num_classes=10, in_chans=3, img_size=32)
    check_taps(net, torch.zeros(2, 3, 32, 32))
    out = net(torch.zeros(2, 3, 32, 32))
    assert out.logits.shape == (2, 10) and out.feature.shape == (2, net.feature_dim)


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
