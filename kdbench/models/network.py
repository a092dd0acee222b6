"""The ``Network`` wrapper: one forward pass that yields logits, the pooled feature and named taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import timm
import torch
from torch import nn


@dataclass
class Outputs:
    """What a network's forward pass gives a method.

    ``feature`` is the pooled penultimate feature (what the classifier sees), ``logits`` is
    ``classifier(feature)``, and ``taps`` holds the intermediate maps the method asked for, by name.
    """

    logits: torch.Tensor
    feature: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


class Network(nn.Module):
    """Wraps any timm model that has timm's feature API.

    Taps are named ``stage0`` ... ``stage{n-1}`` after the model's ``feature_info``; their shapes are known
    from :meth:`tap_shapes`. The classifier is the model's own (``get_classifier()``), so methods that need a
    teacher's head (GenDD) use exactly the weights that produced the teacher's logits.
    """

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__
        info = getattr(model, "feature_info", None)
        if info is None or not hasattr(model, "forward_head"):
            raise TypeError(f"model '{self.name}' lacks timm's feature API (feature_info, forward_head)")
        self.tap_names = tuple(f"stage{i}" for i in range(len(_info_list(info))))

    @property
    def feature_dim(self) -> int:
        """Dimension of the pooled feature."""
        return int(self.model.num_features)

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    @property
    def classifier(self) -> nn.Module:
        """The model's final classifier (a Linear for every model in the zoo)."""
        return self.model.get_classifier()

    def tap_index(self, tap: str) -> int:
        """Stage index of a tap name; a clear error names the model and the valid taps."""
        if tap not in self.tap_names:
            raise KeyError(f"model '{self.name}' has no tap '{tap}' (taps: {', '.join(self.tap_names)})")
        return self.tap_names.index(tap)

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ()) -> Outputs:
        """Run the model once; return logits, pooled feature and the requested taps."""
        tapped: dict[str, torch.Tensor] = {}
        if taps:
            indices = [self.tap_index(t) for t in taps]
            final, maps = self.model.forward_intermediates(x, indices=indices)
            tapped = dict(zip(taps, maps, strict=True))
        else:
            final = self.model.forward_features(x)
        feature = self.model.forward_head(final, pre_logits=True)
        return Outputs(logits=self.classifier(feature), feature=feature, taps=tapped)

    def tap_info(self, tap: str) -> tuple[int, int]:
        """(channels, reduction) of a tap as the model declares them (its ``feature_info``)."""
        info = _info_list(self.model.feature_info)[self.tap_index(tap)]
        return int(info["num_chs"]), int(info["reduction"])

    @torch.no_grad()
    def tap_shapes(self, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of every tap for an example input, for start-up checks."""
        was_training = self.training
        self.eval()
        out = self(example[:1], taps=self.tap_names)
        self.train(was_training)
        return {name: tuple(t.shape[1:]) for name, t in out.taps.items()}


def check_taps(network: Network, example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Run one example through ``network`` and check every tap against the model's declared ``feature_info``
    (channels, and spatial size = input size / reduction); a mismatch names the model, tap and both shapes."""
    shapes = network.tap_shapes(example)
    size = example.shape[-1]
    for (name, shape), info in zip(shapes.items(), _info_list(network.model.feature_info), strict=True):
        declared_chs, reduction = int(info["num_chs"]), int(info["reduction"])
        spatial = shape[1:]
        if shape[0] != declared_chs or (spatial and spatial[-1] != max(1, size // reduction)):
            raise ValueError(f"model '{network.name}': tap {name} is {shape}, but feature_info declares "
                             f"{declared_chs} channels at 1/{reduction} of the {size}px input")
    return shapes


def _info_list(info: object) -> list:
    return list(info.info) if hasattr(info, "info") else list(info)  # timm FeatureInfo or a plain list


def create_network(name: str, *, num_classes: int, in_chans: int, img_size: int | None = None,
                   **kwargs: object) -> Network:
    """Build a registered timm model by name and wrap it (the kdbench zoo registers itself on import).

    ``img_size`` reaches only kdbench's own nets (the MLPs size their first layer with it); timm's CNNs take
    any input size and would refuse the argument.
    """
    from kdbench.models.small_nets import VARIANTS

    if img_size is not None and name in VARIANTS:
        kwargs["img_size"] = img_size
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return Network(model, name=name)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
