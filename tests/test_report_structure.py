"""The report's structure as issue 18 asks for it: a package of small modules that names no method, spells no
string-key lookup, and reads every record once (then works on the frame). Plus the generic behaviour that
replaces the method names: any method's predictor sweeps and swept parameters are plotted, and the baseline is an
option. On FABRICATED records written here."""

from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_fabricated_runs

from kdbench import store
from kdbench.method import Method, ReportHints, discover_methods, method_registry, register_method
from kdbench.report import ReportOptions, load_records, render, write_outputs
from kdbench.report.cli import main
from kdbench.report.options import DEFAULT_BASELINE, DEFAULT_CONTROL

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "kdbench" / "report"
MODULES = sorted(REPORT.glob("*.py"))


def _registered_names() -> set[str]:
    """Every method name registered in ``methods/`` (``@register_method("name")``), read from the sources."""
    pattern = re.compile(r"""register_method\(\s*["']([^"']+)["']""")
    return {name for path in (ROOT / "methods").rglob("*.py") for name in pattern.findall(path.read_text())}


def test_the_report_is_a_package_of_modules_under_300_lines() -> None:
    assert len(MODULES) >= 10
    sizes = {path.name: len(path.read_text().splitlines()) for path in MODULES}
    assert {name: n for name, n in sizes.items() if n > 300} == {}


def test_no_report_module_names_a_registered_method() -> None:
    names = _registered_names()
    assert {DEFAULT_BASELINE, DEFAULT_CONTROL} <= names  # the defaults are data (defaults.toml), and real methods
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    quoted = re.compile(rf"""["']({alternatives})["']""")
    offenders = []
    for path in MODULES:
        source = path.read_text()
        constants = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)}
        offenders += [f"{path.name}: literal {value!r}" for value in sorted(constants & names, key=str)]
        offenders += [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(source.splitlines(), 1)
                      if quoted.search(line)]
    assert offenders == []


def test_no_report_module_looks_up_a_string_key_with_brackets() -> None:
    offenders = [f"{path.name}:{i}" for path in MODULES for i, line in enumerate(path.read_text().splitlines(), 1)
                 if '["' in line]
    assert offenders == []


def _record(run_id: str, label: str, method: str, seed: int, top1: float, params: dict | None = None) -> dict:
    return {"schema": store.SCHEMA, "run_id": run_id, "state": "done",
            "spec": {"role": "student", "method": method, "label": label, "model": "s", "student": "s",
                     "teacher": "t", "teacher_id": "T1", "dataset": {"name": "digits"},
                     "regime": {"name": "balanced"}, "seed": seed, "epochs": 3, "method_params": params or {}},
            "metrics": {"top1_last": top1, "top1_best": top1 + 1, "top5_last": 99.0}, "stability": {},
            "cost": {"predict_ms_per_img_b1": 1.0 + len(label) / 10, "predict_vs_student_b1": 1.0}}


def _evaluation(top1: float, ms: float) -> dict:
    return {"top1": top1, "predict_ms_per_img_b1": ms, "predict_ms_per_img_b32": ms / 8,
            "predict_vs_student_b1": ms, "predict_flops_per_img": 1e6 * ms, "student_flops_per_img": 1e6}


@pytest.fixture
def newkd(monkeypatch: pytest.MonkeyPatch) -> type[Method]:
    """A method no module of the report knows, registered for this test only, that declares where its records keep
    its predictors' settings and how they read (its report hints)."""
    discover_methods()
    monkeypatch.setattr(method_registry, "_items", dict(method_registry._items))  # restored after the test

    class NewKD(Method):
        report_hints = ReportHints(label="NewKD", predictor_settings="sweep_settings", own_predictor_settings="sampler",
                                   sweep_x="steps", sweep_series=("sampler", "samples", "cfg", "start_step"),
                                   setting_text="{sampler} K={steps} x{samples} cfg {cfg:g} t{start_step}",
                                   reference=True)

    return register_method("newkd")(NewKD)


@pytest.fixture
def results(tmp_path: Path, newkd: type[Method]) -> Path:
    """FABRICATED: a method no module of the report knows (``newkd``, registered with its report hints) that
    records a predictor sweep and whose labels sweep a parameter, beside two other labels, 3 seeds, with per-epoch
    metrics."""
    suite = tmp_path / "results" / "fab"
    runs = []
    for seed in range(3):
        runs.append(_record(f"a{seed}", "base", "base", seed, 70.0 + seed))
        runs.append(_record(f"c{seed}", "ctrl", "ctrl", seed, 60.0 + seed / 2))
        for width in (8, 16):
            record = _record(f"n{width}_{seed}", f"newkd_w{width}", "newkd", seed, 72.0 + width / 8 + seed,
                             {"width": width, "mode": "fast"})
            record["diagnostics"] = {"sampler": {"sampler": "euler", "steps": 8, "samples": 1, "cfg": 1.0,
                                                 "start_step": 0},
                                     "sweep_settings": {f"euler-{k}": {"sampler": "euler", "steps": k, "samples": 1,
                                                                        "cfg": 1.0, "start_step": 0}
                                                        for k in (1, 2, 4)}}
            record["extra_evaluations"] = {f"euler-{k}": _evaluation(70.0 + k + seed, 0.5 * k) for k in (1, 2, 4)}
            runs.append(record)
    write_fabricated_runs(suite, runs)
    return tmp_path / "results"


def test_any_method_gets_its_sweep_variants_and_parameter_plots(results: Path, tmp_path: Path) -> None:
    written = {p.name for p in write_outputs(load_records(results), tmp_path / "out")}
    assert {"newkd_sampling_steps.png", "newkd_width.png", "prediction_variants_digits_balanced_t_s.png",
            "variants.csv"} <= written
    assert not any(name.startswith(("base_", "ctrl_")) for name in written)  # nothing they record to plot
    variants = pd.read_csv(tmp_path / "out" / "variants.csv").set_index(["label", "variant"])
    # euler-4 of newkd_w16 vs its method's reference: the own prediction of the runs labelled ``newkd``: none here
    assert variants.loc[("newkd_w16", "euler-4"), "delta_ref_n"] == 0
    # own top-1 72 + 2 + seed, euler-4 70 + 4 + seed: +0 over the own prediction, on 3 seeds
    assert variants.loc[("newkd_w16", "euler-4"), "delta_mean"] == pytest.approx(0.0)
    text = (tmp_path / "out" / "report.txt").read_text()
    assert "euler K=4 x1 cfg 1 t0" in text and "prediction variants" in text


def test_the_frame_holds_every_evaluation_and_nothing_is_read_again(results: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    read_json = store.read_json

    def counting(path: Path, *args, **kwargs):
        reads.append(str(path))
        return read_json(path, *args, **kwargs)

    monkeypatch.setattr(store, "read_json", counting)
    records = load_records(results)
    assert sorted(reads) == sorted(str(p) for p in results.rglob(store.RESULT))  # each record, once
    assert len(reads) == 12
    assert "eval/euler-4/top1" in records.frame.columns and "eval/own prediction/setting.steps" in records.frame
    first = render(records, "text")
    for path in results.rglob(store.RESULT):
        path.unlink()  # the tables, statistics and plots work on the frame alone
    for name in ("result_or_empty", "load_result", "read_record", "scan_results"):
        monkeypatch.setattr(store, name, lambda *a, **k: pytest.fail("the report read a record again"))
    assert render(records, "text") == first
    written = {p.name for p in write_outputs(records, tmp_path / "out")}
    assert {"newkd_sampling_steps.png", "learning_curves_digits_balanced_t_s.png", "runs.parquet"} <= written
    assert len(reads) == 12  # and read_json was not called again either
    parquet = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert parquet.loc[:, "eval/euler-2/top1"].notna().sum() == 6


def test_the_baseline_and_control_are_options(results: Path, capsys: pytest.CaptureFixture) -> None:
    records = load_records(results)
    default = render(records)
    assert f"Δ vs {DEFAULT_BASELINE}" in default and f"P(better than {DEFAULT_BASELINE})" in default
    text = render(records, options=ReportOptions(baseline="base", control="ctrl"))
    assert "Δ vs base" in text and "Δ vs ctrl" in text and "P(better than base)" in text and "x ctrl" in text
    accuracy = text.split("[accuracy", 1)[1]
    rows = [line.split()[0] for line in accuracy.splitlines()[3:7]]
    assert rows == ["ctrl", "base", "newkd_w16", "newkd_w8"]  # the control, the baseline, then the rest
    cells = pd.read_csv(io.StringIO(render(records, "csv", options=ReportOptions("base", "ctrl"))))
    # newkd_w16 - base per seed: (74 + s) - (70 + s) = 4
    assert cells.set_index("method").loc["newkd_w16", "delta_vs_base"] == pytest.approx(4.0)
    assert main([str(results), "--baseline", "ctrl", "--control", "base"]) == 0
    assert "P(better than ctrl)" in capsys.readouterr().out

