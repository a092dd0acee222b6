"""The command line end to end, as a user runs it (subprocesses, real files, a path with spaces and quotes)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import ROOT, run_cli, tiny_suite, write_suite

from kdbench import store


def test_run_report_status_and_skip(suite_file: Path, tmp_path: Path) -> None:
    results = tmp_path / "res ults"
    first = run_cli("kdbench", "run", str(suite_file), "--results", str(results), "--quiet")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "vanilla x unlabeled: refused" in first.stdout
    assert "finished: 6 done" in first.stdout  # 1 teacher + 5 runs
    again = run_cli("kdbench", "run", str(suite_file), "--results", str(results), "--quiet")
    assert "nothing to run; 6 already finished and skipped" in again.stdout

    report = run_cli("kdbench.report", str(results))
    assert report.returncode == 0, report.stderr
    assert "synthetic · balanced · kdb_cnn_small -> kdb_cnn_nano" in report.stdout
    assert "teacher top-1" in report.stdout
    for method in ("vanilla", "kd", "mse"):
        assert f"\n{method} " in report.stdout

    csv = run_cli("kdbench.report", str(results), "--format", "csv", "--out", str(tmp_path / "out"))
    frame = pd.read_csv(io.StringIO(csv.stdout))
    assert len(frame) == 5 and {"method", "regime", "n", "top1_last_mean", "top1_best_mean"} <= set(frame)
    assert (tmp_path / "out" / "report.csv").read_text() == csv.stdout
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").glob("*.png"))
    assert len([p for p in plots if p.startswith("accuracy_vs_latency")]) == 2  # balanced and unlabeled cells
    assert len([p for p in plots if p.startswith("learning_curves")]) == 2
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<img src='data:image/png;base64," in page and "Δ vs kd" in page  # self-contained page
    assert "<img src='plots/" not in page
    markdown = run_cli("kdbench", "report", str(results), "--format", "markdown")
    assert "| method" in markdown.stdout

    status = run_cli("kdbench", "status", str(results))
    assert status.returncode == 0 and "tiny: 6 jobs: 6 done" in status.stdout


def test_broken_suites_exit_2_name_the_key_and_write_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cases = {
        "unknown method": (tiny_suite(methods=[{"name": "vanilla"}, {"name": "kd"}, {"name": "kdd"}]),
                           "methods[2].name: unknown method 'kdd' (known: "),
        "typo'd key": (tiny_suite(trian={"epochs": 1}), "trian: unknown key 'trian'"),
        "missing path": (tiny_suite(dataset={"name": "fashion_mnist", "root": str(tmp_path / "absent")}),
                         f"dataset.root: data root '{tmp_path / 'absent'}' does not exist"),
    }
    for what, (raw, message) in cases.items():
        path = write_suite(tmp_path / f"{what}.yaml", raw)
        done = run_cli("kdbench", "run", str(path), "--results", str(results))
        assert done.returncode == 2, what
        assert message in done.stderr, (what, done.stderr)
        assert done.stderr.count("\n") == 1, "one clear message"
        assert not results.exists(), f"{what}: nothing may be written"
    override = run_cli("kdbench", "run", str(tmp_path / "unknown method.yaml"), "methods[2].name=mse",
                       "train.epochs=abc", "--results", str(results))
    assert override.returncode == 2 and "train.epochs: expected an integer" in override.stderr
    unknown = run_cli("kdbench", "run", "no_such_suite", "--results", str(results))
    assert unknown.returncode == 2 and "no suite 'no_such_suite'" in unknown.stderr and "smoke" in unknown.stderr


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_numbers(tmp_path: Path) -> None:
    raw = tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "vanilla"}],
                     dataset={"name": "synthetic", "num_train": 4096, "num_test": 256},
                     train={"epochs": 12, "batch_size": 32})
    path = write_suite(tmp_path / "kill.yaml", raw)
    reference = run_cli("kdbench", "run", str(path), "--results", str(tmp_path / "ref"), "--quiet")
    assert reference.returncode == 0, reference.stderr

    results = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(path), "--results", str(results),
                             "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(results.glob("tiny/runs/*/metrics.jsonl"))
        if found and len(store.read_jsonl(found[0])) >= 2:
            metrics = found[0]
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert metrics is not None, "the run never reached epoch 2"
    run_dir = metrics.parent
    assert not (run_dir / store.RESULT).exists(), "killed before the end"
    assert (run_dir / store.CHECKPOINT).exists()

    status = run_cli("kdbench", "status", str(results))
    assert "1 interrupted" in status.stdout, status.stdout
    rerun = run_cli("kdbench", "run", str(path), "--results", str(results), "--quiet")
    assert rerun.returncode == 0, rerun.stderr
    resumed = store.load_result(run_dir)
    expected = store.load_result(tmp_path / "ref" / "tiny" / "runs" / run_dir.name)
    assert resumed["metrics"] == expected["metrics"]


def test_local_executor_runs_jobs_in_parallel_processes(suite_file: Path, tmp_path: Path) -> None:
    done = run_cli("kdbench", "run", str(suite_file), "--executor", "local", "--workers", "2",
                   "--results", str(tmp_path), "--quiet", "train.epochs=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finished: 6 done" in done.stdout
    logs = list((tmp_path / "tiny" / ".submitit").glob("*_log.out"))
    assert len(logs) == 6, "one submitit job per run"
    records = [store.load_result(p.parent) for p in tmp_path.glob("tiny/runs/*/result.json")]
    assert {r["env"]["threads"] for r in records} == {1}


def test_bench_commands_print_their_ratios() -> None:
    """Behaviour only (speed is never asserted): the bench commands run and print what they measure."""
    overhead = run_cli("kdbench", "bench", "overhead", "--repeats", "2", "--epochs", "1")
    assert overhead.returncode == 0, overhead.stderr
    for student in ("kdb_cnn_nano", "kdb_cnn_small"):  # both clocks for both students, from interleaved pairs
        lines = [line for line in overhead.stdout.splitlines() if line.startswith(student)]
        assert len(lines) == 2 and "CPU time" in lines[0] and "wall time" in lines[1], overhead.stdout
        assert all("ratio median" in line and "(min" in line for line in lines)
    assert "(ABAB...): 2 interleaved pairs" in overhead.stdout and "of the totals" in overhead.stdout
    report = run_cli("kdbench", "bench", "report", "--records", "40")
    assert report.returncode == 0 and "40 FABRICATED records" in report.stdout
    gendd = run_cli("kdbench", "bench", "gendd", "--batch", "2", "--mul", "1", "--width", "32", "--depth", "1",
                    "--student", "kdb_cnn_nano", "--teacher", "kdb_cnn_base", "--img-size", "8",
                    "--student-dim", "8", "--teacher-dim", "128", "--steps", "4", "2", "--samples", "1")
    assert gendd.returncode == 0, gendd.stderr
    assert "fraction of the matmul rate" in gendd.stdout and "K =   4" in gendd.stdout
