"""Parameter names of the reference CIFAR zoo -> the names of kdbench's zoo, one explicit rule table per family.

The reference is RepDistiller's ``models/`` (``resnet.py``, ``resnetv2.py``, ``wrn.py``, ``vgg.py``,
``mobilenetv2.py``, ``ShuffleNetv1.py``, ``ShuffleNetv2.py``); mdistiller's ``mdistiller/models/cifar/`` builds the
same modules under the same names, and its ``cifar_teachers.tar`` holds RepDistiller's files. The published CIFAR
teachers are state dicts in these names. Each rule rewrites one reference name pattern; a name no rule matches is
returned as None (reported as unexpected by the importer, never dropped silently). The rules only rename: whether
the renamed dict fits a model is checked name by name and shape by shape in :mod:`kdbench.teachers`.

=================  ===========================================  ==============================================
family             reference name                               kdbench name
=================  ===========================================  ==============================================
CIFAR ResNet       conv1 / bn1                                  stages.0.0 / stages.0.1
                   layer{i}.{j}.conv{k} / .bn{k}  (k = 1, 2)    stages.{i}.{j}.body.{k-1}.0 / .1
                   layer{i}.{j}.downsample.{0,1}                stages.{i}.{j}.shortcut.{0,1}
                   fc                                           fc
ResNet50 (CIFAR)   as above with k = 1..3; shortcut.{0,1};      ...; stages.{i}.{j}.shortcut.{0,1}; fc
                   linear
WRN                conv1                                        stages.0
                   block{i}.layer.{j}.{bn1,conv1,bn2,conv2}     stages.{i}.{j}.{bn1,conv1,bn2,conv2}
                   block{i}.layer.{j}.convShortcut              stages.{i}.{j}.shortcut
                   bn1 (closing BN) / fc                        neck.0 / fc
VGG                block{i}.{3m} / .{3m+1}  (conv / BN)         stages.{i}.{m+p}.0 / .1  (p = 1 after a pool)
                   classifier                                   fc
MobileNetV2        conv1.{0,1}                                  stages.0.{0,1}
                   blocks.{g}.{k}.conv.{0,1,3,4,6,7}            stages.{s}.{j}.body.{0,0,1,1,2,2}.{0,1,0,1,0,1}
                   conv2.{0,1} / classifier.0                   neck.0.{0,1} / fc
ShuffleV1          conv1 / bn1                                  stages.0.0 / stages.0.1
                   layer{i}.{j}.conv{k} / .bn{k}                stages.{i}.{j}.conv{k}.0 / .1
                   linear                                       fc
ShuffleV2          conv1 / bn1                                  stages.0.0 / stages.0.1
                   layer{i}.0.conv{k} / .bn{k}  (down block)    k = 1, 2: left.{k-1}; k = 3..5: right.{k-3}
                   layer{i}.{j>0}.conv{k} / .bn{k}              stages.{i}.{j}.body.{k-1}.0 / .1
                   conv2 / bn2 / linear                         neck.0 / neck.1 / fc
=================  ===========================================  ==============================================

(MobileNetV2: group ``g`` of the reference's seven inverted-residual groups lies in stage ``s`` of kdbench's,
which closes after groups 1, 2, 4 and 6; ``j`` counts the blocks of the stage.)
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

from kdbench.models import cifar_zoo as zoo

Rename = Callable[[str], "str | None"]
_TENSOR = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


Rule = tuple[str, Callable[[re.Match[str]], "str | None"]]


def _rules(*rules: Rule) -> Rename:
    """A renamer from ``(pattern, builder)`` rules: the first pattern that matches the whole name wins; a builder
    may answer None (the name fits the pattern but no layer of the model)."""
    compiled = [(re.compile(pattern + r"\." + _TENSOR), build) for pattern, build in rules]

    def rename(key: str) -> str | None:
        for pattern, build in compiled:
            match = pattern.fullmatch(key)
            if match:
                module = build(match)
                return None if module is None else f"{module}.{match.groups()[-1]}"
        return None

    return rename


def _stem_and_head(head: str) -> tuple[Rule, ...]:
    return ((r"conv1", lambda m: "stages.0.0"), (r"bn1", lambda m: "stages.0.1"), (head, lambda m: "fc"))


def _resnet(model: nn.Module) -> Rename:
    head = "linear" if isinstance(model, zoo.CifarResNet50) else "fc"
    return _rules(*_stem_and_head(head),
                  (r"layer(\d)\.(\d+)\.(conv|bn)(\d)",
                   lambda m: f"stages.{m[1]}.{m[2]}.body.{int(m[4]) - 1}.{0 if m[3] == 'conv' else 1}"),
                  (r"layer(\d)\.(\d+)\.(?:downsample|shortcut)\.([01])",
                   lambda m: f"stages.{m[1]}.{m[2]}.shortcut.{m[3]}"))


def _wrn(model: nn.Module) -> Rename:
    return _rules((r"conv1", lambda m: "stages.0"), (r"bn1", lambda m: "neck.0"), (r"fc", lambda m: "fc"),
                  (r"block(\d)\.layer\.(\d+)\.(bn1|conv1|bn2|conv2)", lambda m: f"stages.{m[1]}.{m[2]}.{m[3]}"),
                  (r"block(\d)\.layer\.(\d+)\.convShortcut", lambda m: f"stages.{m[1]}.{m[2]}.shortcut"))


def _vgg(model: nn.Module) -> Rename:
    offset = [1 if isinstance(stage[0], nn.MaxPool2d) else 0 for stage in model.stages]

    def layer(m: re.Match[str]) -> str | None:
        block, index = int(m[1]), int(m[2])
        if index % 3 == 2 or block >= len(offset):  # a ReLU position has no tensors
            return None
        return f"stages.{block}.{index // 3 + offset[block]}.{index % 3}"

    return _rules((r"block(\d)\.(\d+)", layer), (r"classifier", lambda m: "fc"))


def _mobilenetv2(model: nn.Module) -> Rename:
    where: dict[tuple[int, int], tuple[int, int]] = {}  # reference (group, block) -> kdbench (stage, block)
    stage, block = 1, 0
    for group, (_, _, count, _) in enumerate(model.SETTING):
        for k in range(count):
            where[(group, k)] = (stage, block)
            block += 1
        if group in model.TAP_AFTER:
            stage, block = stage + 1, 0

    def inverted(m: re.Match[str]) -> str | None:
        if (int(m[1]), int(m[2])) not in where:
            return None
        s, j = where[(int(m[1]), int(m[2]))]
        index = int(m[3])
        return f"stages.{s}.{j}.body.{index // 3}.{index % 3}"

    return _rules((r"conv1\.([01])", lambda m: f"stages.0.{m[1]}"), (r"conv2\.([01])", lambda m: f"neck.0.{m[1]}"),
                  (r"classifier\.0", lambda m: "fc"), (r"blocks\.(\d)\.(\d+)\.conv\.([013467])", inverted))


def _shufflev1(model: nn.Module) -> Rename:
    return _rules(*_stem_and_head("linear"),
                  (r"layer(\d)\.(\d+)\.(conv|bn)(\d)",
                   lambda m: f"stages.{m[1]}.{m[2]}.conv{m[4]}.{0 if m[3] == 'conv' else 1}"))


def _shufflev2(model: nn.Module) -> Rename:
    def unit(m: re.Match[str]) -> str:
        k, kind = int(m[4]), 0 if m[3] == "conv" else 1
        if m[2] != "0":
            return f"stages.{m[1]}.{m[2]}.body.{k - 1}.{kind}"
        branch = f"left.{k - 1}" if k <= 2 else f"right.{k - 3}"
        return f"stages.{m[1]}.0.{branch}.{kind}"

    return _rules(*_stem_and_head("linear"), (r"conv2", lambda m: "neck.0"), (r"bn2", lambda m: "neck.1"),
                  (r"layer(\d)\.(\d+)\.(conv|bn)(\d)", unit))


FAMILIES: dict[type[nn.Module], Callable[[nn.Module], Rename]] = {
    zoo.CifarResNet: _resnet,
    zoo.CifarResNet50: _resnet,
    zoo.WideResNet: _wrn,
    zoo.CifarVGG: _vgg,
    zoo.CifarMobileNetV2: _mobilenetv2,
    zoo.ShuffleV1: _shufflev1,
    zoo.ShuffleV2: _shufflev2,
}
"""Zoo class -> builder of its renamer (a model instance in, ``reference name -> kdbench name | None`` out)."""


def reference_renamer(model: nn.Module) -> Rename | None:
    """The renamer from the reference zoo's parameter names to ``model``'s, or None when ``model`` has no
    reference zoo counterpart (timm's ImageNet models: their names are torchvision's already)."""
    build = FAMILIES.get(type(model))
    return None if build is None else build(model)
