"""The report takes everything it shows of a method from the method's declared report hints (issue 18: the report
never names a method). A made-up method, registered here only, declares its own labels, settings text, sweep and
parameter curves; the report shows them, and a method the registry does not know is reported without them. On
FABRICATED records written here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import write_fabricated_runs

from kdbench import store
from kdbench.method import Method, ReportHints, discover_methods, method_registry, register_method
from kdbench.report import hints as report_hints
from kdbench.report import load_records, render, write_outputs
from kdbench.report.hints import default_hints, describe, lookup, series_text

TOY = "toyhints"  # a method name nothing else registers
PLUGIN = "plugin_not_installed"  # records of a method the registry does not know
TOY_HINTS = ReportHints(label="Toy", predictor_settings="toy_settings",
                        own_predictor_settings="toy_own", sweep_x="rounds", sweep_series=("mode",),
                        setting_text="{mode} mode in {rounds} rounds", setting_labels=(("table", "a lookup table"),),
                        reference=True, parameter_curves=("flavour",))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[Method]:
    """The made-up method, registered for this test only (the registry is restored afterwards)."""
    discover_methods()
    monkeypatch.setattr(method_registry, "_items", dict(method_registry._items))

    class Toy(Method):
        report_hints = TOY_HINTS

    return register_method(TOY)(Toy)


def _timed(top1: float, ms: float) -> dict:
    return {"top1": top1, "predict_ms_per_img_b1": ms, "predict_vs_student_b1": ms / 2,
            "predict_flops_per_img": 2e6, "student_flops_per_img": 1e6}


def _record(run_id: str, method: str, label: str, seed: int, top1: float, params: dict) -> dict:
    return {"schema": store.SCHEMA, "run_id": run_id, "state": "done",
            "spec": {"role": "student", "method": method, "label": label, "model": "s", "student": "s",
                     "teacher": "t", "teacher_id": "T1", "dataset": {"name": "digits"},
                     "regime": {"name": "balanced"}, "seed": seed, "epochs": 3, "method_params": params},
            "metrics": {"top1_last": top1, "top1_best": top1 + 1, "top5_last": 99.0}, "stability": {},
            "cost": {"predict_ms_per_img_b1": 4.0, "predict_vs_student_b1": 2.0},
            "diagnostics": {"toy_norm": 1.5, "toy_own": {"mode": "slow", "rounds": 16},
                            "toy_settings": {"fast-1": {"mode": "fast", "rounds": 1},
                                             "fast-4": {"mode": "fast", "rounds": 4},
                                             "table": {"mode": "table"}}},
            "extra_evaluations": {"fast-1": _timed(top1 - 3, 0.5), "fast-4": _timed(top1 - 1, 1.0),
                                  "table": _timed(top1 - 0.1, 0.2)}}


@pytest.fixture
def results(tmp_path: Path, toy: type[Method]) -> Path:
    """FABRICATED: the toy method's default label (its reference), a label that changes ``flavour`` (a string it
    names in ``parameter_curves``) and one that changes ``colour`` (a string it does not name), plus the same
    records of a method the registry does not know; 3 seeds, with per-epoch metrics."""
    suite = tmp_path / "results" / "toy"
    runs = []
    for seed in range(3):
        runs.append(_record(f"t{seed}", TOY, TOY, seed, 80.0 + seed, {"flavour": "plain", "colour": "red"}))
        runs.append(_record(f"s{seed}", TOY, f"{TOY}_sweet", seed, 81.0 + seed, {"flavour": "sweet", "colour": "red"}))
        runs.append(_record(f"b{seed}", TOY, f"{TOY}_blue", seed, 79.0 + seed, {"flavour": "plain", "colour": "blue"}))
        runs.append(_record(f"p{seed}", PLUGIN, PLUGIN, seed, 70.0 + seed, {"flavour": "plain"}))
    write_fabricated_runs(suite, runs)
    return tmp_path / "results"


def test_a_made_up_method_is_reported_with_what_its_hints_declare(results: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    registry = report_hints._registry
    calls: list[int] = []
    monkeypatch.setattr(report_hints, "_registry", lambda: calls.append(1) or registry())
    records = load_records(results)
    assert records.hints is not None and records.hints.of(TOY) == TOY_HINTS
    assert records.hints.of(PLUGIN) == ReportHints()  # not registered here: declares nothing
    written = {p.name for p in write_outputs(records, tmp_path / "out")}
    assert len(calls) == 1  # the registry is asked once per report, at load time
    text = (tmp_path / "out" / "report.txt").read_text()
    # the settings text comes from the toy's template and fixed labels, for its own prediction and its variants
    assert "slow mode in 16 rounds" in text and "fast mode in 4 rounds" in text and "a lookup table" in text
    assert "(Toy's N-sample sampler)" in " ".join(text.split()) and "detached feature (Toy)" in " ".join(text.split())
    assert f"Δ vs {TOY}" in text  # its own prediction is the reference its variants pair with
    for fmt in ("text", "markdown", "latex", "html", "csv"):
        assert "GenDD" not in render(records, fmt) and "gendd" not in render(records, fmt)
    # its sweep along the declared settings field, and its declared (non-numeric) parameter; not the other one
    assert {f"{TOY}_sampling_rounds.png", f"{TOY}_flavour.png", "variants.csv"} <= written
    assert f"{TOY}_colour.png" not in written and not any(name.startswith(PLUGIN) for name in written)
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index(["label", "variant"])
    # the sweet label's fast-4 vs the reference (the toy label's own prediction): (81 + s - 1) - (80 + s) = 0
    assert variants.loc[(f"{TOY}_sweet", "fast-4"), "delta_ref_n"] == 3
    assert variants.loc[(f"{TOY}_sweet", "fast-4"), "delta_ref_mean"] == pytest.approx(0.0)
    assert variants.loc[(f"{TOY}_sweet", "fast-4"), "how"] == "fast mode in 4 rounds"
    # the unknown method: its variants are reported, without settings text and without a reference
    plugin = variants.loc[(PLUGIN, "fast-4")]
    assert pd.isna(plugin["how"]) and plugin["delta_ref_n"] == 0 and plugin["delta_mean"] == pytest.approx(-1.0)
    runs = records.frame.set_index("run_id")
    assert runs.loc["t0", "eval/fast-4/setting.rounds"] == 4 and pd.isna(runs.loc["p0", "eval/fast-4/setting.rounds"])


def test_settings_text_and_series_text_follow_the_template() -> None:
    assert describe(TOY_HINTS, {"mode": "fast", "rounds": 2}) == "fast mode in 2 rounds"
    assert describe(TOY_HINTS, {"mode": "table"}) == "a lookup table"
    assert describe(TOY_HINTS, {}) == ""
    assert describe(default_hints(), {"a": 1, "b": "x"}) == "a=1, b=x"  # no template: key=value pairs
    gendd_like = ReportHints(setting_text="{sampler} K={steps} x{samples} cfg {cfg:g} t{start_step}")
    values = {"sampler": "ddim", "samples": 1.0, "cfg": 2.0, "start_step": 999.0}
    assert series_text(gendd_like, values) == "ddim x1 cfg 2 t999"  # the sweep field and its text left out
    assert series_text(TOY_HINTS, {"mode": "fast"}) == "fast"  # and the text that follows it at the end
    assert series_text(default_hints(), {"mode": "fast"}) == "mode fast"


def test_a_method_the_registry_does_not_know_gets_the_default_hints() -> None:
    found = lookup([PLUGIN, None, PLUGIN])
    assert dict(found.by_method) == {PLUGIN: ReportHints()} and found.labels() == []
    assert lookup([]).by_method == {}
