"""Small conv nets and MLPs for 8x8 (digits) and 28x28 (Fashion-MNIST) inputs, registered into timm.

Written as a timm model file: the model classes, ``_cfg``, ``default_cfgs``, then one ``@register_model``
function per variant, so ``timm.create_model("kdb_cnn_tiny", num_classes=10, in_chans=1)`` builds them. Every
model has timm's feature API (``forward_features``, ``forward_head(pre_logits=True)``,
``forward_intermediates``, ``get_classifier``, ``feature_info``), which is all :class:`kdbench.models.Network`
needs to expose logits, the pooled feature and named stage taps without hooks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["SmallConvNet", "SmallMLP"]


def _select(indices: int | Sequence[int] | None, n: int) -> list[int]:
    """timm's convention: None = all stages, an int k = the last k stages, a list = those stages."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        return list(range(n - indices, n))
    return [i if i >= 0 else n + i for i in indices]


class _StagedNet(nn.Module):
    """Shared body of the small nets: a list of stages, a pooled feature, a linear classifier, timm's API.

    Subclasses build ``self.stages`` and ``self.feature_info`` and define ``_prepare`` (the input as the first
    stage wants it) and ``_pool`` (last stage output -> pooled feature).
    """

    def _init_head(self, widths: Sequence[int], num_classes: int, drop_rate: float) -> None:
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        wanted = _select(indices, len(self.stages))
        intermediates = []
        last = max(wanted) if stop_early or intermediates_only else len(self.stages) - 1
        x = self._prepare(x)
        for i, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if i in wanted:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self._pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallConvNet(_StagedNet):
    """Stages of conv3x3-BN-ReLU, 2x2 max-pool between stages, global average pool, linear classifier."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32), num_classes: int = 10, in_chans: int = 1,
                 drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.feature_info = []
        chans, reduction = in_chans, 1
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [] if i == 0 else [nn.MaxPool2d(2)]
            reduction *= 1 if i == 0 else 2
            layers += [nn.Conv2d(chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            self.stages.append(nn.Sequential(*layers))
            last = len(layers) - 1
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}",
                                          preact_act=f"stages.{i}.{last}", preact_bn=f"stages.{i}.{last - 1}"))
            chans = width
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self._init_head(widths, num_classes, drop_rate)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pool(x).flatten(1)


class SmallMLP(_StagedNet):
    """Flatten, hidden Linear-ReLU layers (each one tap-able stage), linear classifier."""

    def __init__(self, widths: Sequence[int] = (64, 32), num_classes: int = 10, in_chans: int = 1,
                 img_size: int = 8, drop_rate: float = 0.0, **_: object) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        self.feature_info = []
        fan_in = in_chans * img_size * img_size
        for i, width in enumerate(widths):
            self.stages.append(nn.Sequential(nn.Linear(fan_in, width), nn.ReLU()))
            self.feature_info.append(dict(num_chs=width, reduction=1, module=f"stages.{i}",
                                          preact_act=f"stages.{i}.1", preact_bn=""))
            fan_in = width
        self._init_head(widths, num_classes, drop_rate)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def _create(cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: object) -> nn.Module:
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(flatten_sequential=False), **kwargs)


def _cfg(**kwargs: object) -> dict:
    cfg = dict(url="", num_classes=10, input_size=(1, 8, 8), pool_size=None, mean=(0.0,), std=(1.0,),
               first_conv="stages.0.0", classifier="fc", license="mit")
    return {**cfg, **kwargs}


default_cfgs = generate_default_cfgs({
    f"{name}.untrained": _cfg() for name in ("kdb_cnn_nano", "kdb_cnn_tiny", "kdb_cnn_small", "kdb_cnn_base",
                                             "kdb_mlp_tiny", "kdb_mlp_base")
})


VARIANTS = {
    # name: (class, widths, docstring)
    "kdb_cnn_nano": (SmallConvNet, (2, 4, 8), "About 0.5k parameters (10 classes, 1 channel): widths 2-4-8."),
    "kdb_cnn_tiny": (SmallConvNet, (4, 8, 16), "About 1.7k parameters: widths 4-8-16."),
    "kdb_cnn_small": (SmallConvNet, (16, 32, 64), "About 24k parameters: widths 16-32-64."),
    "kdb_cnn_base": (SmallConvNet, (32, 64, 128),
                     "About 94k parameters: widths 32-64-128 (feature dimension 128, a multiple of 64)."),
    "kdb_mlp_tiny": (SmallMLP, (16, 16), "MLP with hidden widths 16-16 (pass img_size=28 for 28x28 inputs)."),
    "kdb_mlp_base": (SmallMLP, (256, 128), "MLP with hidden widths 256-128 (pass img_size=28 for 28x28 inputs)."),
}


def _entrypoint(variant: str) -> None:
    """Register ``variant`` with timm as a model function named after it (timm keys on ``__name__``)."""
    cls, widths, doc = VARIANTS[variant]

    def create(pretrained: bool = False, **kwargs: object) -> nn.Module:
        return _create(cls, variant, pretrained, widths=widths, **kwargs)

    create.__name__ = create.__qualname__ = variant
    create.__doc__ = doc
    globals()[variant] = register_model(create)


for _variant in VARIANTS:
    _entrypoint(_variant)
