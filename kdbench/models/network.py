"""The ``Network`` wrapper: one forward pass that yields logits, the pooled feature and named taps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
    from :meth:`tap_shapes`. Where the model's pre-activation is known (see :func:`preact_modules`), the taps
    ``stage{i}_pre`` give the stage output before its final activation (OFD, AB and ReviewKD read these), and
    :meth:`bn_before_activation` the BatchNorm whose affine parameters describe it. The classifier is the model's
    own (``get_classifier()``), so methods that need a teacher's head (GenDD) use exactly the weights that
    produced the teacher's logits.
    """

    def __init__(self, model: nn.Module, name: str = "") -> None:
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__
        info = getattr(model, "feature_info", None)
        if info is None or not hasattr(model, "forward_head"):
            raise TypeError(f"model '{self.name}' lacks timm's feature API (feature_info, forward_head)")
        self.tap_names = tuple(f"stage{i}" for i in range(len(_info_list(info))))
        # stage index -> (module whose input is the pre-activation, or None: the output already is; its BN)
        self._preact: dict[int, tuple[nn.Module | None, nn.Module | None]] = preact_modules(model)
        self.preact_tap_names = tuple(f"stage{i}{PRE}" for i in sorted(self._preact))

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
        """Stage index of a tap name (``stage{i}`` or ``stage{i}_pre``); a clear error names the model and the
        valid taps."""
        if tap in self.tap_names:
            return self.tap_names.index(tap)
        if tap in self.preact_tap_names:
            return self.tap_names.index(tap[: -len(PRE)])
        known = ", ".join((*self.tap_names, *self.preact_tap_names))
        hint = " (its pre-activation is not declared for this model)" if tap.endswith(PRE) else ""
        raise KeyError(f"model '{self.name}' has no tap '{tap}'{hint} (taps: {known})")

    def bn_before_activation(self, tap: str) -> nn.Module | None:
        """The BatchNorm whose output (up to a residual sum) is the pre-activation tap ``tap``, or None."""
        return self._preact[self.tap_index(tap)][1]

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ()) -> Outputs:
        """Run the model once; return logits, pooled feature and the requested taps."""
        if not taps:
            feature = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            return Outputs(logits=self.classifier(feature), feature=feature)
        post = {self.tap_index(t) for t in taps if not t.endswith(PRE)}
        captured: dict[str, torch.Tensor] = {}
        handles = []
        for tap in (t for t in taps if t.endswith(PRE)):
            act = self._preact[self.tap_index(tap)][0] if tap in self.preact_tap_names else None
            if tap not in self.preact_tap_names or act is None:
                post.add(self.tap_index(tap))  # unknown (tap_index raises) or the stage output itself
            else:
                handles.append(act.register_forward_pre_hook(_capture_input(captured, tap)))
        try:  # the hooks stay until the head has run: a pre-activation may sit in the neck (WRN's closing BN)
            if post:
                indices = sorted(post)  # timm returns the maps in stage order
                final, maps = self.model.forward_intermediates(x, indices=indices)
                by_index = dict(zip(indices, maps, strict=True))
            else:
                final, by_index = self.model.forward_features(x), {}
            feature = self.model.forward_head(final, pre_logits=True)
        finally:
            for handle in handles:
                handle.remove()
        tapped = {t: captured[t] if t in captured else by_index[self.tap_index(t)] for t in taps}
        return Outputs(logits=self.classifier(feature), feature=feature, taps=tapped)

    def tap_info(self, tap: str) -> tuple[int, int]:
        """(channels, reduction) of a tap as the model declares them (its ``feature_info``)."""
        info = _info_list(self.model.feature_info)[self.tap_index(tap)]
        return int(info["num_chs"]), int(info["reduction"])

    @torch.no_grad()
    def tap_shapes(self, example: torch.Tensor, taps: Sequence[str] | None = None) -> dict[str, tuple[int, ...]]:
        """Shape (without batch) of every stage tap (or of ``taps``) for an example input, for start-up checks."""
        was_training = self.training
        self.eval()
        out = self(example[:1], taps=self.tap_names if taps is None else taps)
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
    if network.preact_tap_names:
        _check_preact(network, example)
    return shapes


PRE = "_pre"


def _check_preact(network: Network, example: torch.Tensor) -> None:
    """Every pre-activation tap must be tied to its stage output: through its activation it gives the stage output
    back (a ResNet's sum before the ReLU), or it is the output of its BatchNorm applied to the stage output (a
    pre-activation WRN, whose next block normalises the stage output); its BatchNorm has the tap's channels."""
    was_training = network.training
    network.eval()
    with torch.no_grad():
        out = network(example[:1], taps=(*network.tap_names, *network.preact_tap_names))
        for tap in network.preact_tap_names:
            stage = out.taps[tap[: -len(PRE)]]
            pre = out.taps[tap]
            act = network._preact[network.tap_index(tap)][0]
            bn = network.bn_before_activation(tap)
            through_act = pre if act is None else act(pre.clone())
            tied = through_act.shape == stage.shape and torch.allclose(through_act, stage, atol=1e-5)
            if not tied and bn is not None and pre.shape == stage.shape:
                tied = torch.allclose(bn(stage), pre, atol=1e-5)
            if not tied:
                network.train(was_training)
                raise ValueError(f"model '{network.name}': tap {tap} is neither the input of the activation that "
                                 f"gives {tap[: -len(PRE)]} nor its BatchNorm's output; its pre-activation "
                                 "declaration is wrong")
            if bn is not None and getattr(bn, "num_features", None) != pre.shape[1]:
                network.train(was_training)
                raise ValueError(f"model '{network.name}': the BatchNorm declared before {tap} has "
                                 f"{getattr(bn, 'num_features', None)} channels, the tap {pre.shape[1]}")
    network.train(was_training)


def _capture_input(store: dict[str, torch.Tensor], tap: str) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        store[tap] = args[0].clone()  # a copy: in-place activations overwrite their input

    return hook


def preact_modules(model: nn.Module) -> dict[int, tuple[nn.Module | None, nn.Module | None]]:
    """Where each stage's pre-activation is, by stage index: (the activation module whose input it is, or None
    when the stage output is already pre-activation; the BatchNorm that describes it, or None).

    A model declares it in its ``feature_info`` entries (``preact_act`` / ``preact_bn``: module paths, ``""`` for
    none), as the kdbench zoo does; timm's ResNets and its BatchNormAct models (EfficientNet, MobileNet) are
    resolved here. Stages of other models have no pre-activation tap. :func:`check_taps` verifies every one.
    """
    infos = _info_list(model.feature_info)
    found: dict[int, tuple[nn.Module | None, nn.Module | None]] = {}
    modules = dict(model.named_modules())
    for index, info in enumerate(infos):
        if "preact_act" in info:
            act, bn = info["preact_act"], info.get("preact_bn", "")
            found[index] = (modules[act] if act else None, modules[bn] if bn else None)
            continue
        stage = modules.get(info.get("module", ""))
        if stage is None:
            continue
        resolved = _timm_preact(model, info["module"], stage, modules)
        if resolved is not None:
            found[index] = resolved
    return found


def _timm_preact(model: nn.Module, path: str, stage: nn.Module,
                 modules: dict[str, nn.Module]) -> tuple[nn.Module, nn.Module] | None:
    from timm.layers import BatchNormAct2d

    if type(model).__name__ == "ResNet" and type(model).__module__.startswith("timm"):
        if path == "act1":
            return modules["act1"], modules["bn1"]
        block = list(stage.children())[-1]
        last = "3" if hasattr(block, "act3") else "2"
        return getattr(block, f"act{last}"), getattr(block, f"bn{last}")
    fused = [m for m in stage.modules() if isinstance(m, BatchNormAct2d)]
    if fused and isinstance(stage, nn.Module):
        return fused[-1].act, fused[-1]
    return None


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
