"""Equal-budget tuning (issue 19 item 1): trials per cell on the held-out split, the best configuration chosen by
the rule, final runs with the chosen values and a record of how they were chosen."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import run_dirs
from kdbench.suite import SuiteError, expand, spec_id, validate
from kdbench.suite.tune import TuneSettings, candidates
from kdbench.suite.tuneplan import cell_of, tuning_plan
from kdbench.tuning import TUNING, run_tuned

TUNE = {"epochs": 2, "seeds": [0], "space": {"lr": [0.01, 0.2]}, "methods": {"kd": {"lr": [0.02, 0.3]}}}


def _suite(**tune: object) -> dict:
    return tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "vanilla"}, {"name": "kd"}],
                      eval={"val_fraction": 0.25}, tune={**TUNE, **tune})


def test_each_cell_gets_the_same_budget_and_its_best_held_out_configuration(tmp_path: Path) -> None:
    suite = validate(_suite())
    trials = tuning_plan(suite)
    assert {len(t) for t in trials.cells.values()} == {2}  # one budget: 2 trials x 1 seed for every method
    assert all(spec.stage == "tune" and spec.epochs == 2 for spec in trials.plan.runs.values())
    summary = run_tuned(suite, tmp_path, progress=False, say=lambda line: None)
    assert summary.counts() == {"done": 1 + 4 + 2}  # teacher, 4 trials, 2 final runs
    root = tmp_path / "tiny"
    dirs = run_dirs(root, trials.plan)
    finals = [r for r in (store.load_record(p.parent) for p in (root / "runs").glob(f"*/{store.RESULT}"))
              if r.run_spec().stage is None]
    assert len(finals) == 2
    for record in finals:
        spec = record.run_spec()
        cell = trials.cells[cell_of(spec)]
        scores = {t.index: store.load_record(dirs[t.run_id]).metrics.get("val_top1_last") for t in cell}
        best = max(sorted(scores), key=lambda i: scores[i])
        chosen = cell[best].values
        assert spec.tuned["chosen"] == chosen and spec.recipe.lr == chosen["lr"]
        assert spec.tuned["budget"] == {"trials": 2, "epochs": 2, "seeds": [0], "metric": "val_top1_last",
                                        "search": "grid"}
        assert [t["score"] for t in spec.tuned["trials"]] == [scores[0], scores[1]]
        assert spec.tuned["cost_seconds"] > 0 and spec.epochs == 3  # the final run trains the suite's epochs
        # the final run is the very run a suite with that lr written by hand would have: same id
        by_hand = expand(validate(tiny_suite(
            regimes=[{"name": "balanced"}], eval={"val_fraction": 0.25},
            methods=[{"name": spec.method, "train": {"lr": chosen["lr"]}}])))
        assert record.run_id in by_hand.runs
    written = json.loads((root / TUNING).read_text())
    assert len(written["cells"]) == 2 and all("chosen" in cell for cell in written["cells"])
    from kdbench.report import load_records, render

    records = load_records(tmp_path)
    assert not records.stale and not records.missing  # trials are neither stale nor table rows
    report = render(records, "text")
    assert "Tuning synthetic: the same budget for every method (2 x 1 seed(s) x 2 epochs, grid, on val_top1_last)" \
        in report
    for record in finals:
        assert f"lr {record.run_spec().tuned['chosen']['lr']:g}" in report
    assert "lr [0.01, 0.2]" in report and "lr [0.02, 0.3]" in report and "2/2" in report
    latex = render(records, "latex")
    assert "Tuning synthetic" in latex
    again = run_tuned(suite, tmp_path, progress=False, say=lambda line: None)
    assert again.states == {} and again.skipped == 1 + 4 + 2  # nothing reruns


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"eval": {"val_fraction": 0.0}}, "tune.metric", "held-out split"),
    ({"tune": {**TUNE, "metric": "top1_last"}}, "tune.metric", "never a test one"),
    ({"tune": {**TUNE, "space": {"lrr": [0.1]}, "methods": {}}}, "tune.space.lrr", "neither a training setting"),
    ({"tune": {**TUNE, "methods": {"kd": {"T": [2.0, 4.0]}}}}, "tune", "one budget for every method"),
    ({"tune": {**TUNE, "methods": {"kdd": {"lr": [0.1, 0.2]}}}}, "tune.methods.kdd", "no method labelled"),
    ({"tune": {**TUNE, "space": {"lr": {"log_uniform": [1e-3, 1e-1]}}}}, "tune.space.lr", "needs search: sobol"),
    ({"tune": {**TUNE, "search": "random"}}, "tune.search", "unknown search"),
])
def test_bad_tuning_settings_name_their_key(change: dict, key: str, words: str) -> None:
    raw = {**_suite(), **change}
    with pytest.raises(SuiteError) as err:
        validate(raw)
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_sobol_search_draws_the_budget_inside_the_space_reproducibly() -> None:
    tune = TuneSettings(trials=8, search="sobol", space={"lr": {"log_uniform": [1e-3, 1e-1]}, "T": [2.0, 4.0, 8.0],
                                                         "weight_decay": {"uniform": [0.0, 1e-3]}})
    first, second = candidates(tune, "kd"), candidates(tune, "kd")
    assert first == second and len(first) == 8
    assert all(1e-3 <= c["lr"] <= 1e-1 and c["T"] in (2.0, 4.0, 8.0) and 0 <= c["weight_decay"] <= 1e-3
               for c in first)
    logs = sorted(math.log10(c["lr"]) for c in first)  # spread over the log range, not clustered
    assert logs[0] < -2.5 and logs[-1] > -1.5


def test_a_trial_never_shares_an_id_with_a_final_run_of_the_same_values() -> None:
    suite = validate(_suite())
    trials = tuning_plan(suite)
    finals = expand(suite)
    assert not set(trials.plan.runs) & set(finals.runs)
    spec = next(iter(trials.plan.runs.values()))
    assert spec_id(spec.with_changes(stage=None)) != spec_id(spec)
