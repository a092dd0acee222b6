"""Fault injection: nothing a user's disk or hand does to kdbench's inputs and outputs escapes as a Python error.

Records are truncated, garbled, of the wrong shape or type; suites are binary, nested, duplicated; values are
non-finite or out of range; checkpoints are corrupt; ``kdbench run`` gets SIGTERM. Each case must give one clear
line, the documented exit code, no traceback, and lose nothing (bad files moved aside, runs redone to the numbers
of an untouched run). Data: the SYNTHETIC test set of ``conftest.tiny_suite``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_suite, write_suite

from kdbench import store
from kdbench.cli import main
from kdbench.report import load_records, problem_lines
from kdbench.report import main as report_main
from kdbench.suite import SuiteError, load_suite


def _long_local_suite(path: Path) -> Path:
    """One 40-epoch vanilla run on the local executor: long enough to be signalled mid-run."""
    return write_suite(path, tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "vanilla"}],
                                        dataset={"name": "synthetic", "num_train": 4096, "num_test": 256},
                                        train={"epochs": 40, "batch_size": 32},
                                        executor={"name": "local", "workers": 1, "checkpoint_every_s": 0}))


def _records(folder: Path) -> dict[str, dict]:
    return {p.parent.name: store.read_json(p) for p in folder.glob("*/runs/*/result.json")}


def test_the_reader_names_the_file_and_the_problem_of_every_bad_record(tmp_path: Path) -> None:
    good = {"schema": store.SCHEMA, "run_id": "r", "state": "done", "spec": {}, "metrics": {"top1_last": 1.0}}
    cases = {
        "truncated": (b'{"schema": 1, "state": "do', "not valid JSON"),
        "empty": (b"", "empty"),
        "list": (b"[1, 2, 3]", "holds a JSON list, expected an object"),
        "latin1": ('{"state": "d\xe9"}'.encode("latin-1"), "not UTF-8"),
        "nan": (b'{"metrics": {"top1_last": NaN}}', "non-finite number NaN"),
        "state": (json.dumps({**good, "state": "weird"}).encode(), "state 'weird'"),
        "schema": (json.dumps({**good, "schema": 99}).encode(), "schema 99 is newer than this kdbench reads"),
        "metric": (json.dumps({**good, "metrics": {"top1_last": "oops"}}).encode(),
                   "metrics.top1_last = 'oops' is not a number"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name / store.RESULT
        path.parent.mkdir()
        path.write_bytes(data)
        with pytest.raises(store.StoreReadError) as err:
            store.read_record(path)
        assert message in str(err.value) and str(path) in str(err.value), name
        assert not store.is_finished(path.parent), name
    (tmp_path / "ok").mkdir()
    store.atomic_write_json(tmp_path / "ok" / store.RESULT, good)
    assert store.read_record(tmp_path / "ok" / store.RESULT) == good
    scanned = {s.path.parent.name: s for s in store.scan_results(tmp_path)}
    assert scanned["metric"].record is not None and "top1_last" not in scanned["metric"].record["metrics"]
    assert scanned["metric"].dropped == ["metrics.top1_last = 'oops' is not a number"]
    assert scanned["truncated"].record is None and "not valid JSON" in scanned["truncated"].problem


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01binary\xff" * 50, "binary data"),
    ("name: x\nseeds: [0]\n".encode("utf-16"), "binary data"),
    (b"name: caf\xe9\n", "not UTF-8 text"),
    (("a: " + "[" * 3000 + "]" * 3000).encode(), "nested deeper than 32 levels"),
    (b"name: x\nseeds: [0]\nseeds: [1]\n", "seeds: given twice, on lines 2 and 3"),
    (b"name: x\ntrain:\n  lr: 0.1\n  lr: 0.2\n", "lr: given twice, on lines 3 and 4"),
    (b"a: 1\n" + b"#" * (1 << 20) + b"\n", "larger than a suite can be (1048576 bytes)"),
])
def test_suite_files_that_are_not_suites_give_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  content: bytes, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not results.exists()


@pytest.mark.parametrize(("override", "message"), [
    ("methods[1].T=0", "methods[1]: method 'kd' refuses its values on kdb_cnn_small -> kdb_cnn_nano: T must be > 0"),
    ("methods[1].T=-1", "T must be > 0"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("methods[1].alpha=.nan", "methods[1].alpha: expected a finite number, got nan"),
    ("dataset.num_train=.inf", "dataset.num_train: expected a finite number"),
])
def test_values_a_job_would_refuse_are_refused_before_any_job(suite_file: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture, override: str,
                                                               message: str) -> None:
    results = tmp_path / "results"
    assert main(["run", str(suite_file), override, "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not results.exists(), "no teacher may train for a suite whose students would all fail"


def test_a_results_path_that_is_a_file_is_refused(suite_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    afile = tmp_path / "results.txt"
    afile.write_text("not a folder")
    assert main(["run", str(suite_file), "--results", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert report_main([str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_bad_records_specs_and_checkpoints_are_set_aside_and_their_runs_redone_to_the_same_numbers(
        suite_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reference = tmp_path / "reference"
    assert main(["run", str(suite_file), "--results", str(reference), "--quiet"]) == 0
    expected = _records(reference)
    broken = tmp_path / "broken"
    shutil.copytree(reference, broken)
    runs = sorted((broken / "tiny" / "runs").iterdir())
    assert len(runs) == 5
    truncated, wrong_shape, latin1, oops, corrupt_ckpt = runs
    (truncated / store.RESULT).write_bytes((truncated / store.RESULT).read_bytes()[:40])
    (wrong_shape / store.RESULT).write_text("[1, 2, 3]")
    (latin1 / store.RESULT).write_bytes(b'{"state": "d\xe9"}')
    record = store.read_json(oops / store.RESULT)
    store.atomic_write_json(oops / store.RESULT, {**record, "metrics": {**record["metrics"], "top1_last": "oops"}})
    (oops / store.SPEC).write_text('{"role": "student"')  # a garbled spec of a finished run
    (corrupt_ckpt / store.RESULT).unlink()  # an unfinished run whose checkpoint is garbage
    (corrupt_ckpt / store.CHECKPOINT).write_bytes(b"PK\x03\x04 not a torch file")

    records = load_records(broken)
    lines = "\n".join(problem_lines(records))
    for run_dir in (truncated, wrong_shape, latin1):
        assert f"unreadable {run_dir / store.RESULT}" in lines
    assert f"invalid    {oops / store.RESULT}: metrics.top1_last = 'oops' is not a number" in lines
    assert report_main([str(broken)]) == 0
    capsys.readouterr()

    assert main(["run", str(suite_file), "--results", str(broken), "--quiet"]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    for run_dir in (truncated, wrong_shape, latin1, oops):
        assert f"{run_dir}: result.json" in out.out and "moved aside" in out.out
        assert list(run_dir.glob("result.json.corrupt-*")), "the bad record is kept beside the new one"
    assert f"{oops}: spec.json" in out.out and list(oops.glob("spec.json.corrupt-*"))
    assert list(corrupt_ckpt.glob("checkpoint.pt.corrupt-*"))
    restarted = store.read_record(corrupt_ckpt / store.RESULT)
    assert restarted["resumes"][0]["restarted_from_scratch"]
    got = _records(broken)
    assert {k: v["metrics"] for k, v in got.items()} == {k: v["metrics"] for k, v in expected.items()}
    assert "set aside" in "\n".join(problem_lines(load_records(broken)))


def test_sigterm_on_run_stops_the_workers_keeps_checkpoints_and_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    path = _long_local_suite(tmp_path / "term.yaml")
    results = tmp_path / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(path), "--results", str(results),
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = list(results.glob("tiny/runs/*/metrics.jsonl"))
        if found and len(store.read_jsonl(found[0])) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "interrupted by SIGTERM" in err and "resume with: python -m kdbench run" in err
    assert "Traceback" not in out + err
    run_dir = next(results.glob("tiny/runs/*"))
    assert not (run_dir / store.RESULT).exists() and (run_dir / store.CHECKPOINT).exists()
    assert not store.is_locked(run_dir), "no worker trains on after kdbench run has exited"
    orphans = subprocess.run(["pgrep", "-f", str(results)], capture_output=True, text=True)
    assert orphans.stdout.strip() == "", orphans.stdout

    rerun = subprocess.run([sys.executable, "-m", "kdbench", "run", str(path), "--results", str(results),
                            "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    untouched = subprocess.run([sys.executable, "-m", "kdbench", "run", str(path), "--results",
                                str(tmp_path / "untouched"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                               timeout=600)
    assert untouched.returncode == 0, untouched.stderr
    resumed = store.read_record(run_dir / store.RESULT)
    assert resumed["resumes"], "the rerun resumed from the kept checkpoint"
    assert resumed["metrics"] == _records(tmp_path / "untouched")[run_dir.name]["metrics"]


def test_load_suite_raises_only_suite_errors_for_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.yaml"
    for content in (b"\xff\xfe\x00", b"- a\n- b\n", b"{{{{", b"name: [unclosed"):
        path.write_bytes(content)
        with pytest.raises(SuiteError):
            load_suite(str(path))


def test_a_worker_killed_by_sigkill_leaves_a_record_saying_killed_and_resumes(tmp_path: Path) -> None:
    path = _long_local_suite(tmp_path / "k.yaml")
    results = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "kdbench", "run", str(path), "--results", str(results),
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    found: list[Path] = []
    while time.monotonic() < deadline:
        found = list(results.glob("tiny/runs/*/metrics.jsonl"))
        if found and len(store.read_jsonl(found[0])) >= 2:
            break
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-f", f"submitit.core._submit {results}"], capture_output=True,
                             text=True).stdout.split()
    assert workers, "the worker process is running"
    for pid in workers:
        os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1 and "Traceback" not in out + err, out + err
    record = store.read_record(found[0].parent / store.RESULT)
    assert record["state"] == "failed" and record["error"].startswith("killed:") and record["job"]["ending"] == "killed"
    rerun = subprocess.run([sys.executable, "-m", "kdbench", "run", str(path), "--results", str(results),
                            "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    resumed = store.read_record(found[0].parent / store.RESULT)
    assert resumed["state"] == "done" and resumed["resumes"], "resumed from the kept checkpoint"
