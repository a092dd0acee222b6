"""``--dry-run``'s minimum detectable effect (issue 19, item 3): the numbers against a hand computation for 3 and 5
seeds, the published seed sd when there are no earlier results, the measured one when there are, and the
full-scale suites' 5 seeds."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch
from kdbench.dryrun import (
    PUBLISHED_SEED_SD,
    SeedSd,
    describe_plan,
    earlier_seed_values,
    minimum_detectable_effect,
    pooled_sd,
)
from kdbench.suite import expand, load_suite, validate

# Student-t quantiles from a printed table (7 digits): t_{0.975, dof} and t_{0.8, dof}
T975 = {2: 4.3026527, 4: 2.7764451}
T80 = {2: 1.0606602, 4: 0.9409646}


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("sd", [0.2, 0.25, 0.3, 1.4])
def test_mde_matches_the_hand_computation(n: int, sd: float) -> None:
    by_hand = (T975[n - 1] + T80[n - 1]) * math.sqrt(2) * sd / math.sqrt(n)
    assert minimum_detectable_effect(sd, n) == pytest.approx(by_hand, rel=1e-6)


def test_mde_values_for_the_published_seed_sd() -> None:
    # 3 seeds: 0.88-1.31 points; 5 seeds: 0.47-0.71 (so 5 seeds resolve about half a point, 3 seeds about one)
    assert SeedSd(PUBLISHED_SEED_SD, "published").mde(3) == "0.88-1.31"
    assert SeedSd(PUBLISHED_SEED_SD, "published").mde(5) == "0.47-0.71"
    assert minimum_detectable_effect(0.25, 1) is None


def test_pooled_sd_weights_by_degrees_of_freedom() -> None:
    a, b = [70.0, 71.0, 72.5], [69.0, 69.4]
    expected = math.sqrt((statistics.variance(a) * 2 + statistics.variance(b)) / 3)
    assert pooled_sd([a, b, [1.0]]) == pytest.approx((expected, 5))
    assert pooled_sd([[1.0], []]) is None


def test_dry_run_shows_the_published_mde_per_cell_without_earlier_results(tmp_path: Path) -> None:
    suite = validate(tiny_suite(seeds=[0, 1, 2, 3, 4]))
    text = describe_plan(suite, expand(suite), tmp_path, baseline="kd")
    assert "MDE vs kd" in text and "seed sd" in text
    assert "MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sqrt(2) * sd / sqrt(n)" in text
    assert "seed sd: published, 0.2-0.3 top-1 points" in text and "MDE 0.47-0.71 for 5 seeds" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("kdb_cnn_small -> kdb_cnn_nano")]
    mse = [row for row in rows if row[4] == "mse" and row[3] == "balanced"]
    assert mse and mse[0][-1] == "0.47-0.71" and mse[0][5] == "5"
    assert any(row[4] == "kd" and row[-1] == "baseline" for row in rows)


def test_dry_run_uses_the_seed_sd_of_earlier_results(tmp_path: Path) -> None:
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "kd"}, {"name": "mse"}],
                                seeds=[0, 1], train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                                teacher={"train": {"epochs": 1, "batch_size": 32}}))
    plan = expand(suite)
    assert dispatch(plan, tmp_path / suite.name, suite.executor, progress=False).counts() == {"done": 5}
    earlier = earlier_seed_values(tmp_path / suite.name)
    cell = ("kdb_cnn_small -> kdb_cnn_nano", "balanced")
    values = {label: [store.load_record(path.parent).metrics["top1_last"]
                      for path in (tmp_path / suite.name).rglob(store.RESULT)
                      if store.load_record(path.parent).spec["label"] == label] for label in ("kd", "mse")}
    assert sorted(earlier[(*cell, "mse")].values()) == sorted(values["mse"])
    sd, _ = pooled_sd([values["kd"], values["mse"]])
    text = describe_plan(suite, plan, tmp_path, baseline="kd")
    assert "seed sd: from earlier results in" in text and "earlier runs of the cell for 2 cell(s)" in text
    (row,) = [line.split() for line in text.splitlines() if line.startswith(cell[0]) and " mse " in line]
    assert row[-2] == f"{sd:.2f}"
    assert row[-1] == f"{minimum_detectable_effect(sd, 2):.2f}"


@pytest.mark.parametrize("name", ["cifar100_full", "cifar100_lt", "imagenet_full", "imagenet_lt",
                                  "imagenet_unlabeled"])
def test_full_scale_suites_default_to_five_seeds(name: str) -> None:
    assert load_suite(name, check_files=False).seeds == (0, 1, 2, 3, 4)
