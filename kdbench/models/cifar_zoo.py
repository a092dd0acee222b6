"""The CIFAR model zoo of RepDistiller/CRD and mdistiller, registered into timm with a ``_cifar`` suffix.

resnet{8,14,20,32,44,56,110}_cifar, resnet8x4_cifar, resnet32x4_cifar, wrn_{16_1,16_2,40_1,40_2}_cifar,
vgg{8,11,13,16,19}_cifar (with BN), mobilenetv2_cifar (width 0.5, RepDistiller's ``mobile_half``),
shufflev1_cifar, shufflev2_cifar and resnet50_cifar, for 32x32 inputs. The suffix keeps them apart from timm's
ImageNet models of the same family (timm's ``vgg13`` is the 224x224 ImageNet VGG).

Each model computes the function of its reference (RepDistiller's ``models/``; mdistiller's
``mdistiller/models/cifar/`` are the same networks): same layers, widths, strides and order of operations, so a
reference state dict, renamed by :mod:`kdbench.models.reference_names`, gives the same logits. The code is
written for kdbench on :class:`_StagedNet`, so each model has timm's feature API. Its taps are exactly the
features the reference distillers read, ``feats, logits = model(x, is_feat=True, preact=...)``:

- ``stage{i}`` is ``feats[i]`` with ``preact=False`` (the stage outputs, the pooled feature excluded);
- ``stage{i}_pre`` is ``feats[i]`` with ``preact=True`` (``stage0_pre`` is the stem output itself, as there);
- ``Network.bn_before_activation("stage{i}_pre")`` is ``get_bn_before_relu()[i - 1]`` (None for the stem and
  for ShuffleNet V1/V2, whose reference raises NotImplementedError).

Where the reference reads a tensor that is not a stage output (WRN: the *next* BatchNorm's output; ShuffleNet
V2: the concatenation before the final ReLU and the channel shuffle) the model declares the module whose input
it is; ``tests/test_cifar_zoo.py`` pins every tap to its module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from kdbench.models.small_nets import _StagedNet


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True,
             bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
                               nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _conv_bn_preact(path: str) -> tuple[str, str]:
    """Pre-activation of a :func:`_conv_bn` block at ``path``: the input of its ReLU, described by its BN."""
    return f"{path}.2", f"{path}.1"


STEM = ("", "")
"""The stem's pre-activation tap: the stem output itself, without a BatchNorm (the reference distillers keep
``f0`` in their pre-activation list and ``get_bn_before_relu`` starts at the first stage)."""


class _ZooNet(_StagedNet):
    """A zoo model: ``stages`` (each a module), an optional ``neck`` between the last stage and global pooling
    (e.g. MobileNetV2's 1x1 conv to 1280), then global average pooling and the linear classifier ``fc``."""

    def _finish(self, chans: Sequence[int], reductions: Sequence[int], feature_dim: int, num_classes: int,
                drop_rate: float, neck: nn.Module | None = None,
                preact: Sequence[tuple[str, str]] | None = None) -> None:
        """``preact``: per stage, the path of the activation module whose input is the stage's pre-activation
        ("" when the stage output is already pre-activation) and of the BatchNorm that describes it."""
        preact = preact or [("", "")] * len(chans)
        self.feature_info = [dict(num_chs=c, reduction=r, module=f"stages.{i}", preact_act=act, preact_bn=bn)
                             for i, (c, r, (act, bn)) in enumerate(zip(chans, reductions, preact, strict=True))]
        self.neck = neck if neck is not None else nn.Identity()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self._init_head([feature_dim], num_classes, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(self.neck(x)).flatten(1)


# ---------------------------------------------------------------- ResNet for CIFAR (resnet8 ... resnet110, x4)
class _Basic(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, identity or 1x1 conv-BN shortcut, ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(cin, cout, 3, stride), _conv_bn(cout, cout, 3, relu=False))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, relu=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class CifarResNet(_ZooNet):
    """RepDistiller's CIFAR ResNet: a 3x3 stem and three stages of (depth-2)/6 basic blocks."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 16, 32, 64), num_classes: int = 100,
                 in_chans: int = 3, drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stages = nn.ModuleList([_conv_bn(in_chans, widths[0])])
        cin = widths[0]
        for i, width in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            self.stages.append(nn.Sequential(*[_Basic(cin if b == 0 else width, width, stride if b == 0 else 1)
                                               for b in range(n)]))
            cin = width
        preact = [STEM] + [(f"stages.{i}.{n - 1}.act", f"stages.{i}.{n - 1}.body.1.1") for i in (1, 2, 3)]
        self._finish(widths, (1, 1, 2, 4), widths[-1], num_classes, drop_rate, preact=preact)


# ---------------------------------------------------------------- Wide ResNet (pre-activation blocks)
class _WideBlock(nn.Module):
    """Pre-activation wide block: BN-ReLU-conv3x3, BN-ReLU-conv3x3, 1x1 conv shortcut (on the activated input)
    when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(_ZooNet):
    """WRN-depth-k for CIFAR: a 3x3 stem to 16 channels, three stages of (depth-4)/6 pre-activation blocks of
    16k, 32k, 64k channels, then the network's closing BN-ReLU (the ``neck``: the last stage's output is read
    before it, as the reference's ``f3``)."""

    def __init__(self, depth: int = 16, widen: int = 2, num_classes: int = 100, in_chans: int = 3,
                 drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stages = nn.ModuleList([nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)])
        for i in range(3):
            self.stages.append(nn.Sequential(*[_WideBlock(widths[i] if b == 0 else widths[i + 1], widths[i + 1],
                                                          (1 if i == 0 else 2) if b == 0 else 1)
                                               for b in range(n)]))
        # a stage's output is pre-activation already; the reference's pre-activation feature is the output of
        # the BatchNorm that reads it next (block2.layer[0].bn1, block3.layer[0].bn1, the closing bn1)
        preact = [("", ""), ("stages.2.0.relu1", "stages.2.0.bn1"), ("stages.3.0.relu1", "stages.3.0.bn1"),
                  ("neck.1", "neck.0")]
        self._finish(widths, (1, 1, 2, 4), widths[-1], num_classes, drop_rate,
                     neck=nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU()), preact=preact)


# ---------------------------------------------------------------- VGG with BN
VGG_CFGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class CifarVGG(_ZooNet):
    """VGG-BN for CIFAR as in RepDistiller: five blocks of conv3x3(bias)-BN-ReLU, 2x2 max-pool before blocks 1-3
    (none before block 4 at 32x32), global average pool, one linear classifier on 512 features."""

    def __init__(self, depth: int = 13, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0,
                 **_: object) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin, reductions = in_chans, []
        for i, block in enumerate(VGG_CFGS[depth]):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if i in (1, 2, 3) else []
            for width in block:
                layers.append(_conv_bn(cin, width, bias=True))
                cin = width
            self.stages.append(nn.Sequential(*layers))
            reductions.append(2 ** min(i, 3))
        preact = [STEM] + [_conv_bn_preact(f"stages.{i}.{len(stage) - 1}")
                           for i, stage in enumerate(self.stages) if i > 0]
        self._finish([b[-1] for b in VGG_CFGS[depth]], reductions, 512, num_classes, drop_rate, preact=preact)


# ---------------------------------------------------------------- MobileNetV2 (RepDistiller's CIFAR version)
class _InvertedResidual(nn.Module):
    """Expand 1x1 (always present, also for t=1, as in RepDistiller), depthwise 3x3, project 1x1 (linear)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, stride, groups=mid),
                                  _conv_bn(mid, cout, 1, relu=False))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class CifarMobileNetV2(_ZooNet):
    """MobileNetV2 for 32x32 inputs (stem stride 2, the 24-channel group at stride 1), expansion ``t``, width
    multiplier ``width``; taps after the stem and after groups 2, 3, 5 and 7; a 1x1 conv to 1280 before pooling."""

    SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))
    TAP_AFTER = (1, 2, 4, 6)  # group indices whose output closes a stage

    def __init__(self, width: float = 0.5, expand: int = 6, num_classes: int = 100, in_chans: int = 3,
                 drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        cin = int(32 * width)
        self.stages = nn.ModuleList([_conv_bn(in_chans, cin, 3, 2)])
        chans, reductions, reduction = [cin], [2], 2
        current: list[nn.Module] = []
        for g, (t, c, n, s) in enumerate(self.SETTING):
            cout = int(c * width)
            for i in range(n):
                current.append(_InvertedResidual(cin, cout, s if i == 0 else 1, expand if t != 1 else 1))
                cin = cout
            reduction *= s
            if g in self.TAP_AFTER:
                self.stages.append(nn.Sequential(*current))
                current = []
                chans.append(cout)
                reductions.append(reduction)
        last = 1280
        # the blocks end with a linear projection: their output is pre-activation, described by its BN
        preact = [STEM] + [("", f"stages.{i}.{len(self.stages[i]) - 1}.body.2.1") for i in range(1, len(self.stages))]
        self._finish(chans, reductions, last, num_classes, drop_rate,
                     neck=nn.Sequential(*current, _conv_bn(cin, last, 1)), preact=preact)


# ---------------------------------------------------------------- ShuffleNet V1 and V2
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups (ShuffleNet's channel shuffle)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleV1Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        cout -= cin if stride == 2 else 0  # a down block concatenates its pooled input to reach the stage width
        mid = cout // 4
        first_groups = 1 if cin == 24 else groups
        self.groups = first_groups
        self.conv1 = _conv_bn(cin, mid, 1, groups=first_groups)
        self.conv2 = _conv_bn(mid, mid, 3, stride, groups=mid, relu=True)
        self.conv3 = _conv_bn(mid, cout, 1, groups=groups, relu=False)
        self.stride = stride
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(channel_shuffle(self.conv1(x), self.groups)))
        res = self.shortcut(x)
        return self.act(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleV1(_ZooNet):
    """ShuffleNet V1 for CIFAR (groups 3, stages of 240/480/960 channels with 4/8/4 blocks, 1x1 stem to 24)."""

    def __init__(self, groups: int = 3, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0,
                 **_: object) -> None:
        super().__init__()
        widths, blocks = (240, 480, 960), (4, 8, 4)
        self.stages = nn.ModuleList([_conv_bn(in_chans, 24, 1)])
        cin = 24
        for width, n in zip(widths, blocks, strict=True):
            self.stages.append(nn.Sequential(*[_ShuffleV1Block(cin if i == 0 else width, width, 2 if i == 0 else 1,
                                                               groups) for i in range(n)]))
            cin = width
        # the reference has no BatchNorm before these activations (get_bn_before_relu raises)
        preact = [STEM] + [(f"stages.{i}.{n - 1}.act", "") for i, n in enumerate(blocks, start=1)]
        self._finish((24, *widths), (1, 2, 4, 8), widths[-1], num_classes, drop_rate, preact=preact)


class _ReLUShuffle(nn.Module):
    """ReLU, then the channel shuffle of two groups: the end of a ShuffleNet V2 basic block."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.relu(x), 2)


class _ShuffleV2Basic(nn.Module):
    """Split the channels in halves; 1x1 conv-BN-ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN on the second; concatenate
    with the first, ReLU, shuffle. The ReLU runs on the concatenation (the reference applies it to the second half
    only): the first half is a ReLU output already, so values and gradients are the same, and the input of
    ``act`` is exactly the reference's pre-activation feature ``cat([x1, bn3(...)])``."""

    def __init__(self, chans: int) -> None:
        super().__init__()
        half = chans // 2
        self.half = half
        self.body = nn.Sequential(_conv_bn(half, half, 1), _conv_bn(half, half, 3, groups=half, relu=False),
                                  _conv_bn(half, half, 1, relu=False))
        self.act = _ReLUShuffle()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, work = x[:, : self.half], x[:, self.half:]
        return self.act(torch.cat([keep, self.body(work)], 1))


class _ShuffleV2Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.left = nn.Sequential(_conv_bn(cin, cin, 3, 2, groups=cin, relu=False), _conv_bn(cin, mid, 1))
        self.right = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, 2, groups=mid, relu=False),
                                   _conv_bn(mid, mid, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleV2(_ZooNet):
    """ShuffleNet V2 (1x) for CIFAR: a 1x1 stem conv to 24 (the reference's 3x3 line is commented out), stages of
    116/232/464 channels (a down block then 3/7/3 basic blocks), a 1x1 conv to 1024 before pooling."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        widths, blocks = (116, 232, 464), (3, 7, 3)
        self.stages = nn.ModuleList([_conv_bn(in_chans, 24, 1)])
        cin = 24
        for width, n in zip(widths, blocks, strict=True):
            self.stages.append(nn.Sequential(_ShuffleV2Down(cin, width), *[_ShuffleV2Basic(width) for _ in range(n)]))
            cin = width
        # pre-activation: the last basic block's concatenation before its ReLU and shuffle; no BatchNorm
        # describes it (the reference's get_bn_before_relu raises)
        preact = [STEM] + [(f"stages.{i}.{n}.act", "") for i, n in enumerate(blocks, start=1)]
        self._finish((24, *widths), (1, 2, 4, 8), 1024, num_classes, drop_rate, neck=_conv_bn(cin, 1024, 1),
                     preact=preact)


# ---------------------------------------------------------------- ResNet50 for CIFAR (bottleneck blocks)
class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(_conv_bn(cin, width, 1), _conv_bn(width, width, 3, stride),
                                  _conv_bn(width, cout, 1, relu=False))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else _conv_bn(cin, cout, 1, stride, relu=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class CifarResNet50(_ZooNet):
    """ResNet-50 for 32x32 inputs (3x3 stem, no max-pool; bottleneck stages of 3/4/6/3 blocks)."""

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        self.stages = nn.ModuleList([_conv_bn(in_chans, 64, 3)])
        cin = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
            self.stages.append(nn.Sequential(*[_Bottleneck(cin if b == 0 else width * 4, width,
                                                           (1 if i == 0 else 2) if b == 0 else 1) for b in range(n)]))
            cin = width * 4
        preact = [STEM] + [(f"stages.{i}.{n - 1}.act", f"stages.{i}.{n - 1}.body.2.1")
                           for i, n in enumerate((3, 4, 6, 3), start=1)]
        self._finish((64, 256, 512, 1024, 2048), (1, 1, 2, 4, 8), 2048, num_classes, drop_rate, preact=preact)


# ---------------------------------------------------------------- registration
ZOO = {
    # name: (class, kwargs, doc)
    **{f"resnet{d}_cifar": (CifarResNet, {"depth": d}, f"CIFAR ResNet-{d} (16-32-64 channels).")
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4_cifar": (CifarResNet, {"depth": 8, "widths": (32, 64, 128, 256)}, "CIFAR ResNet-8 at 4x width."),
    "resnet32x4_cifar": (CifarResNet, {"depth": 32, "widths": (32, 64, 128, 256)}, "CIFAR ResNet-32 at 4x width."),
    **{f"wrn_{d}_{k}_cifar": (WideResNet, {"depth": d, "widen": k}, f"Wide ResNet {d}-{k} for CIFAR.")
       for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    **{f"vgg{d}_cifar": (CifarVGG, {"depth": d}, f"VGG-{d} with BN for CIFAR.") for d in VGG_CFGS},
    "mobilenetv2_cifar": (CifarMobileNetV2, {"width": 0.5}, "MobileNetV2 at width 0.5 for CIFAR (RepDistiller's)."),
    "shufflev1_cifar": (ShuffleV1, {}, "ShuffleNet V1 (groups 3) for CIFAR."),
    "shufflev2_cifar": (ShuffleV2, {}, "ShuffleNet V2 1x for CIFAR."),
    "resnet50_cifar": (CifarResNet50, {}, "ResNet-50 for CIFAR (3x3 stem, no max-pool)."),
}


def _cfg(**kwargs: object) -> dict:
    cfg = dict(url="", num_classes=100, input_size=(3, 32, 32), pool_size=None, mean=(0.5071, 0.4865, 0.4409),
               std=(0.2673, 0.2564, 0.2762), first_conv="stages.0.0", classifier="fc", license="mit")
    return {**cfg, **kwargs}


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in ZOO})


def _entrypoint(variant: str) -> None:
    cls, fixed, doc = ZOO[variant]

    def create(pretrained: bool = False, **kwargs: object) -> nn.Module:
        kwargs.pop("img_size", None)
        return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(flatten_sequential=False),
                                    **{**fixed, **kwargs})

    create.__name__ = create.__qualname__ = variant
    create.__doc__ = doc
    globals()[variant] = register_model(create)


for _variant in ZOO:
    _entrypoint(_variant)
