"""Regimes: deterministic index sets with the right class counts and many/medium/few groups."""

from __future__ import annotations

import numpy as np
import pytest

from kdbench.data import dataset_registry, regime_registry
from kdbench.data.regimes import longtail_counts


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return dataset_registry.get("digits")().load().train.y.numpy()


def test_longtail_profile_formula() -> None:
    # n_c = floor(n_max * imbalance^(-c/(C-1))): CIFAR-100-LT's profile, by hand for C=4, n_max=100, imb=8
    assert longtail_counts(100, 4, 8.0) == [100, 50, 25, 12]
    assert longtail_counts(500, 100, 100.0)[0] == 500 and longtail_counts(500, 100, 100.0)[-1] == 5


def test_longtail_counts_and_groups_on_digits(digits_labels: np.ndarray) -> None:
    regime = regime_registry.get("longtail")(imbalance=10.0)
    data = regime.apply(digits_labels, 10)
    n_max = int(np.bincount(digits_labels).min())
    assert data.class_counts == longtail_counts(n_max, 10, 10.0)
    assert data.class_counts[0] / data.class_counts[-1] == pytest.approx(10, rel=0.1)
    assert np.all(np.diff(data.indices) > 0), "indices are sorted and unique"
    assert np.bincount(digits_labels[data.indices], minlength=10).tolist() == data.class_counts
    counts = data.class_counts
    assert data.groups["many"] == [c for c in range(10) if counts[c] > 100]
    assert data.groups["few"] == [c for c in range(10) if counts[c] < 20]
    assert sorted(data.groups["many"] + data.groups["medium"] + data.groups["few"]) == list(range(10))
    assert data.labeled


def test_same_regime_and_seed_give_byte_identical_indices(digits_labels: np.ndarray) -> None:
    a = regime_registry.get("longtail")(imbalance=10.0, seed=3).apply(digits_labels, 10)
    b = regime_registry.get("longtail")(imbalance=10.0, seed=3).apply(digits_labels, 10)
    c = regime_registry.get("longtail")(imbalance=10.0, seed=4).apply(digits_labels, 10)
    assert a.indices.tobytes() == b.indices.tobytes()
    assert a.indices.tobytes() != c.indices.tobytes()
    assert a.class_counts == c.class_counts


def test_balanced_and_unlabeled_use_every_image(digits_labels: np.ndarray) -> None:
    balanced = regime_registry.get("balanced")().apply(digits_labels, 10)
    unlabeled = regime_registry.get("unlabeled")().apply(digits_labels, 10)
    assert balanced.indices.tolist() == unlabeled.indices.tolist() == list(range(len(digits_labels)))
    assert balanced.labeled and not unlabeled.labeled
    assert regime_registry.get("unlabeled").teacher_regime == "balanced"
