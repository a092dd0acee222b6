"""The report on FABRICATED records (fixtures written here): statistics, problem lists, formats."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from kdbench import store
from kdbench.report import cell_stats, load_records, render


def _record(run_id: str, label: str, seed: int, top1: float, state: str = "done", role: str = "student",
            regime: str = "balanced", dataset: str = "digits", teacher: str = "t", student: str = "s") -> dict:
    return {"schema": store.SCHEMA, "run_id": run_id, "state": state,
            "spec": {"role": role, "method": label, "label": label, "model": student, "student": student,
                     "teacher": teacher, "teacher_id": "T1" if role == "student" else None,
                     "dataset": {"name": dataset}, "regime": {"name": regime}, "seed": seed, "epochs": 3},
            "metrics": {"top1_last": top1, "top1_best": top1 + 1, "top5_last": 99.0} if state == "done" else {},
            "stability": {"diverged_epoch": 2 if state == "diverged" else None}, "cost": {}}


@pytest.fixture
def results(tmp_path: Path) -> Path:
    suite = tmp_path / "fixture"
    rows = [("r1", "kd", 0, 90.0), ("r2", "kd", 1, 92.0), ("r3", "kd", 2, 94.0), ("r4", "vanilla", 0, 80.0)]
    for run_id, label, seed, top1 in rows:
        store.atomic_write_json(suite / "runs" / run_id / "result.json", _record(run_id, label, seed, top1))
    teacher = _record("T1", "vanilla", 0, 99.0, role="teacher")
    store.atomic_write_json(suite / "teachers" / "T1" / "result.json", teacher)
    store.atomic_write_json(suite / "runs" / "r5" / "result.json", _record("r5", "vanilla", 1, 0, "diverged"))
    failed = {**_record("r6", "vanilla", 2, 0, "failed"), "error": "RuntimeError: boom"}
    store.atomic_write_json(suite / "runs" / "r6" / "result.json", failed)
    (suite / "runs" / "r7").mkdir(parents=True)
    (suite / "runs" / "r7" / "result.json").write_text("{corrupt")
    store.atomic_write_json(suite / "runs" / "r8" / "result.json", {**_record("r8", "kd", 3, 50), "schema": 0})
    store.atomic_write_json(suite / "suite.json", {"teachers": ["T1"], "runs": ["r1", "r2", "r3", "r4", "r5",
                                                                               "r6", "r9"]})
    # an earlier version of the suite's kd (another run id): stale, never mixed into the kd cell
    store.atomic_write_json(suite / "runs" / "r10" / "result.json", _record("r10", "kd", 0, 10.0))
    return tmp_path


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


T_975_2DF = 4.302652729911275  # Student-t quantile, 0.975, 2 degrees of freedom (from tables)


def test_statistics_match_hand_computed_values(results: Path) -> None:
    stats = cell_stats(load_records(results).frame).set_index("method")
    assert stats.loc["kd", "n"] == 3
    assert stats.loc["kd", "top1_last_mean"] == pytest.approx(92.0)
    assert stats.loc["kd", "top1_last_sd"] == pytest.approx(2.0)  # sample sd of 90, 92, 94
    assert stats.loc["kd", "top1_last_ci95"] == pytest.approx(T_975_2DF * 2.0 / 3 ** 0.5)  # 4.9683
    assert stats.loc["vanilla", "n"] == 1 and stats.loc["vanilla", "top1_last_sd"] == 0.0
    assert pd.isna(stats.loc["vanilla", "top1_last_ci95"])
    # kd - vanilla over the one seed both finished (seed 0): 90 - 80
    assert stats.loc["kd", "delta_vs_vanilla"] == pytest.approx(10.0) and stats.loc["kd", "delta_vs_vanilla_n"] == 1
    assert stats.loc["vanilla", "runs_diverged"] == 1 and stats.loc["vanilla", "runs_failed"] == 1


@pytest.fixture
def paired(tmp_path: Path) -> Path:
    """FABRICATED: one CIFAR cell (a published pair) with kd, vanilla and gendd on seeds 0-2."""
    values = {"kd": (70.0, 72.0, 71.0), "vanilla": (68.0, 69.0, 71.0), "gendd": (60.0, 61.0, 62.0)}
    for label, tops in values.items():
        for seed, top1 in enumerate(tops):
            rec = _record(f"{label}{seed}", label, seed, top1, dataset="cifar100", teacher="resnet32x4_cifar",
                          student="resnet8x4_cifar")
            store.atomic_write_json(tmp_path / "runs" / f"{label}{seed}" / "result.json", rec)
    return tmp_path


def test_paired_deltas_and_their_ci_match_hand_computed_values(paired: Path) -> None:
    stats = cell_stats(load_records(paired).frame).set_index("method")
    # kd - vanilla per seed: 2, 3, 0 -> mean 5/3, sd sqrt(7/3), CI half width t * sd / sqrt(3)
    sd = (7 / 3) ** 0.5
    assert stats.loc["kd", "delta_vs_vanilla"] == pytest.approx(5 / 3)
    assert stats.loc["kd", "delta_vs_vanilla_ci95"] == pytest.approx(T_975_2DF * sd / 3 ** 0.5)  # 3.7946
    assert bool(stats.loc["kd", "delta_vs_vanilla_inside_noise"]) is True
    assert stats.loc["vanilla", "delta_vs_kd"] == pytest.approx(-5 / 3)
    # gendd - kd per seed: -10, -11, -9 -> mean -10, sd 1, half width 2.4841: outside the noise
    assert stats.loc["gendd", "delta_vs_kd"] == pytest.approx(-10.0)
    assert stats.loc["gendd", "delta_vs_kd_ci95"] == pytest.approx(T_975_2DF / 3 ** 0.5)
    assert bool(stats.loc["gendd", "delta_vs_kd_inside_noise"]) is False
    assert pd.isna(stats.loc["kd"].get("delta_vs_kd"))
    # the published column: RepDistiller's KD 73.33 for resnet32x4 -> resnet8x4
    assert stats.loc["kd", "published_top1"] == pytest.approx(73.33)
    assert stats.loc["vanilla", "published_top1"] == pytest.approx(72.50)
    text = render(load_records(paired))
    assert "-10.00 ±2.48 (3)" in text and "+1.67 ±3.79 (3)~" in text
    assert "73.33" in text and "-2.33" in text  # kd mean 71.00 - 73.33


def test_problems_are_listed_and_the_rest_reports(results: Path) -> None:
    text = render(load_records(results))
    assert "92.00 ± 2.00" in text and "(teacher top-1 99.00)" in text
    assert "diverged   r5" in text and "at epoch 2" in text
    assert "failed     r6" in text and "RuntimeError: boom" in text
    assert "missing    r9" in text
    assert "stale      r10  kd (suite fixture: not in the plan that last ran there" in text
    assert "r10" not in set(load_records(results).frame["run_id"])
    assert "unreadable" in text and "r7/result.json: not valid JSON" in text
    assert "r8/result.json: schema 0, expected 1" in text
    assert "1 diverged, 1 failed" in text  # the vanilla row's 'not done' column
    assert "1/3" in text  # stability: diverged/total for vanilla


def test_formats(results: Path, tmp_path: Path) -> None:
    records = load_records(results)
    frame = pd.read_csv(io.StringIO(render(records, "csv")))
    assert list(frame["method"]) == ["vanilla", "kd"]
    assert "\\toprule" in render(records, "latex")
    assert "| method" in render(records, "markdown")
    page = render(records, "html")
    assert page.startswith("<!doctype html>") and "<table>" in page and "diverged   r5" in page

    from kdbench.report import write_outputs

    written = {p.name for p in write_outputs(records, tmp_path / "out")}
    assert {"report.txt", "report.md", "report.html", "report.tex", "report.csv"} <= written
    # the fixtures have no latency and no per-epoch metrics: no plot is drawn, and nothing breaks
    assert not any(name.endswith(".png") for name in written)


def test_empty_folder_reports_nothing_found(tmp_path: Path) -> None:
    assert "no finished student runs found" in render(load_records(tmp_path))


def test_a_failing_plot_is_reported_not_fatal(results: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from kdbench.report import plots

    def broken(*args, **kwargs):
        raise ValueError("cannot draw")

    monkeypatch.setattr(plots, "sampling_steps_curves", broken)
    from kdbench.report import write_outputs

    written = write_outputs(load_records(results), tmp_path / "out")
    assert (tmp_path / "out" / "report.html") in written
    assert "plot broken failed: ValueError: cannot draw" in capsys.readouterr().err


def _timed(top1: float, ms: float, ratio: float) -> dict:
    return {"top1": top1, "predict_ms_per_img_b1": ms, "predict_ms_per_img_b64": ms / 10,
            "predict_vs_student_b1": ratio, "predict_flops_per_img": 1e6 * ratio, "student_flops_per_img": 1e6}


def test_prediction_variants_are_paired_by_seed_and_judged_against_the_authors_sampler(tmp_path: Path) -> None:
    from kdbench.report.plots import write_plots
    from kdbench.report.variants import variant_rows, variant_summary

    suite = tmp_path / "fast"
    for seed, own, flow in ((0, 90.0, 88.0), (1, 92.0, 91.0)):
        gendd = _record(f"g{seed}", "gendd", seed, own)
        gendd["cost"] = {"predict_ms_per_img_b1": 50.0, "predict_vs_student_b1": 100.0}
        gendd["diagnostics"] = {"sampler": {"sampler": "ddpm", "steps": 100, "samples": 5, "cfg": 2.0,
                                            "start_step": 999},
                                "sweep_settings": {"x0": {"sampler": "x0", "steps": 1, "samples": 1, "cfg": 2.0,
                                                          "start_step": 999},
                                                   "distilled": {"sampler": "distilled"}}}
        gendd["extra_evaluations"] = {"x0": _timed(own - 1.0, 1.0, 2.5), "distilled": _timed(own - 0.2, 0.6, 1.2)}
        store.atomic_write_json(suite / "runs" / f"g{seed}" / "result.json", gendd)
        flow_record = _record(f"f{seed}", "gendd_flow", seed, flow)
        flow_record["spec"]["method"] = "gendd"
        flow_record["extra_evaluations"] = {"euler-1": _timed(flow + 0.5, 0.9, 1.9)}
        store.atomic_write_json(suite / "runs" / f"f{seed}" / "result.json", flow_record)
    records = load_records(tmp_path)
    summary = variant_summary(variant_rows(records.frame)).set_index(["label", "variant"])
    x0, distilled = summary.loc[("gendd", "x0")], summary.loc[("gendd", "distilled")]
    assert x0["delta_mean"] == pytest.approx(-1.0) and x0["delta_ref_mean"] == pytest.approx(-1.0)
    assert not x0["meets_goal"]  # 2.5x the student and 1 point below
    assert distilled["meets_goal"] and distilled["x_student"] == pytest.approx(1.2)
    # the flow head's Euler step: +0.5 over its own prediction, but (88.5 - 90 + 91.5 - 92) / 2 = -1.0 vs GenDD's
    euler = summary.loc[("gendd_flow", "euler-1")]
    assert euler["delta_mean"] == pytest.approx(0.5) and euler["delta_ref_mean"] == pytest.approx(-1.0)
    assert euler["delta_ref_n"] == 2 and not euler["meets_goal"]
    own = summary.loc[("gendd", "own prediction")]
    assert own["how"] == "ddpm K=100 x5 cfg 2 t999" and own["ms_b1"] == pytest.approx(50.0)
    text = render(records)
    assert "prediction variants" in text and "linear map of LN(f_s)" in text
    assert "\n\n" not in render(records, "csv").strip()  # one table: the variants have a file of their own
    from kdbench.report import write_data_files

    files = {p.name: p for p in write_data_files(records, _mkdir(tmp_path / "data"))}
    assert "meets_goal" in pd.read_csv(files["variants.csv"]).columns
    plots = [p.name for p in write_plots(records, tmp_path / "out")]
    assert "prediction_variants_digits_balanced_t_s.png" in plots


def test_stale_records_enter_the_tables_only_with_all(results: Path) -> None:
    default = load_records(results)
    assert "r10" not in set(default.frame["run_id"]) and ("fixture", "r10", "kd") in default.stale
    everything = load_records(results, include_stale=True)
    assert "r10" in set(everything.frame["run_id"]) and ("fixture", "r10", "kd") in everything.stale
