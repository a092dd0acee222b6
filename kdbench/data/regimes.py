"""Data regimes: which training images a run sees and whether it sees their labels.

A regime turns a labelled train split into an index set (sorted, deterministic for a given regime seed: the
same for every method and every run seed) plus its class counts and, for long-tailed sets, the
many/medium/few class groups used in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kdbench.registry import Registry, init_parameters


@dataclass
class RegimeData:
    """The training subset of a regime: indices into the train split, labels on or off, class groups."""

    indices: np.ndarray
    labeled: bool
    class_counts: list[int]
    groups: dict[str, list[int]] = field(default_factory=dict)


class Regime:
    """Base class of a regime. ``teacher_regime`` names the regime the teacher trains on (``None``: this one)."""

    description: str = ""
    labeled: bool = True
    teacher_regime: str | None = None

    def apply(self, labels: np.ndarray, num_classes: int) -> RegimeData:
        raise NotImplementedError


regime_registry: Registry[type[Regime]] = Registry("regime")


regime_parameters = init_parameters
"""The parameters a suite may set, from the ``__init__`` signature."""


def _counts(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> list[int]:
    known = labels[indices]
    return np.bincount(known[known >= 0], minlength=num_classes).astype(int).tolist()  # -1: no label at all


def frequency_groups(counts: list[int], many_above: int, few_below: int) -> dict[str, list[int]]:
    """many (> ``many_above`` training images) / medium / few (< ``few_below``) classes, the LT convention."""
    return {
        "many": [c for c, n in enumerate(counts) if n > many_above],
        "medium": [c for c, n in enumerate(counts) if few_below <= n <= many_above],
        "few": [c for c, n in enumerate(counts) if n < few_below],
    }


@regime_registry.register("balanced")
class Balanced(Regime):
    """Every labelled training image."""

    description = "the whole labelled train split"

    def apply(self, labels: np.ndarray, num_classes: int) -> RegimeData:
        indices = np.arange(len(labels))
        return RegimeData(indices, True, _counts(labels, indices, num_classes))


def longtail_counts(max_count: int, num_classes: int, imbalance: float) -> list[int]:
    """Exponential profile: class c keeps ``floor(max_count * imbalance^(-c / (C - 1)))`` images."""
    if num_classes == 1:
        return [max_count]
    return [int(max_count * imbalance ** (-c / (num_classes - 1))) for c in range(num_classes)]


@regime_registry.register("longtail")
class LongTail(Regime):
    """Long-tailed subset with an exponential profile (as CIFAR-100-LT): class 0 is the head.

    Each class keeps a seeded random subset of its images. Classes with more than ``many_above`` images form
    the ``many`` group, fewer than ``few_below`` the ``few`` group, the rest ``medium``. The teacher trains on
    the long-tailed set itself.
    """

    description = "exponential long-tailed subset (imbalance = head/tail ratio), many/medium/few groups"

    def __init__(self, imbalance: float = 10.0, seed: int = 0, many_above: int = 100, few_below: int = 20) -> None:
        if imbalance < 1:
            raise ValueError(f"imbalance must be >= 1, got {imbalance}")
        self.imbalance, self.seed, self.many_above, self.few_below = imbalance, seed, many_above, few_below

    def apply(self, labels: np.ndarray, num_classes: int) -> RegimeData:
        available = np.bincount(labels, minlength=num_classes)
        targets = longtail_counts(int(available.min()), num_classes, self.imbalance)
        rng = np.random.default_rng(self.seed)
        chosen = []
        for c, n in enumerate(targets):
            members = np.flatnonzero(labels == c)
            chosen.append(rng.permutation(members)[:n])
        indices = np.sort(np.concatenate(chosen))
        counts = _counts(labels, indices, num_classes)
        return RegimeData(indices, True, counts, frequency_groups(counts, self.many_above, self.few_below))


@regime_registry.register("given")
class Given(Regime):
    """The training split exactly as the dataset defines it (e.g. ImageNet-LT through ``train_list``), with the
    many/medium/few groups of its own class counts. The teacher trains on the same split."""

    description = "the dataset's own training split (e.g. ImageNet-LT's list), many/medium/few groups"

    def __init__(self, many_above: int = 100, few_below: int = 20) -> None:
        self.many_above, self.few_below = many_above, few_below

    def apply(self, labels: np.ndarray, num_classes: int) -> RegimeData:
        indices = np.arange(len(labels))
        counts = _counts(labels, indices, num_classes)
        return RegimeData(indices, True, counts, frequency_groups(counts, self.many_above, self.few_below))


@regime_registry.register("unlabeled")
class Unlabeled(Regime):
    """The student sees every training image but no label; the teacher trained on the labelled set."""

    description = "train images without labels (methods that need labels are refused)"
    labeled = False
    teacher_regime = "balanced"

    def apply(self, labels: np.ndarray, num_classes: int) -> RegimeData:
        indices = np.arange(len(labels))
        return RegimeData(indices, self.labeled, _counts(labels, indices, num_classes))


def hold_out(data: RegimeData, labels: np.ndarray, fraction: float, seed: int) -> tuple[RegimeData, np.ndarray]:
    """Split a regime's indices into training and a held-out validation set: ``round(fraction * n_c)`` images of
    each class c (seeded; at least one image of every class stays in training). Returns (train part, val indices)."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels[data.indices]):
        members = data.indices[labels[data.indices] == c]
        take = min(round(fraction * len(members)), len(members) - 1)
        held.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    train = np.setdiff1d(data.indices, val)
    counts = np.bincount(labels[train], minlength=len(data.class_counts)).astype(int).tolist()
    return RegimeData(train, data.labeled, counts, data.groups), val
