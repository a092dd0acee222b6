"""Teachers the suite does not train: a checkpoint with a required sha256 and expected top-1, verified before any
student starts, and pretrained weights from the local cache only."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch
from kdbench.suite import SuiteError, expand, validate


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """A kdb_cnn_small teacher trained by a tiny synthetic suite: its weights file, sha256 and top-1."""
    root = tmp_path_factory.mktemp("teacher")
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": "kd"}]))
    dispatch(expand(suite), root, suite.executor, progress=False)
    (teacher_dir,) = (root / "tiny" / "teachers").iterdir()
    record = store.load_result(teacher_dir)
    return teacher_dir / store.WEIGHTS, record["artifacts"]["weights_sha256"], record["metrics"]["top1_last"]


def with_source(**source: object) -> dict:
    return tiny_suite(regimes=[{"name": "balanced"}, {"name": "unlabeled"}], methods=[{"name": "kd"}, {"name": "mse"}],
                      teacher={"sources": {"kdb_cnn_small": source}})


def test_a_wrong_sha256_stops_the_suite_before_anything_is_written(trained_teacher: tuple, tmp_path: Path) -> None:
    path, _, top1 = trained_teacher
    with pytest.raises(SuiteError) as err:
        validate(with_source(checkpoint=str(path), sha256="0" * 64, top1=top1))
    assert err.value.key == "teacher.sources.kdb_cnn_small.sha256" and str(path) in str(err.value)


@pytest.mark.parametrize(("source", "key", "words"), [
    ({"checkpoint": "/no/such/file.pt", "sha256": "0" * 64, "top1": 50.0}, ".checkpoint", "does not exist"),
    ({"checkpoint": "/x.pt", "top1": 50.0}, ".sha256", "needs its sha256"),
    ({"pretrained": True, "checkpoint": "/x.pt"}, "", "exactly one of"),
])
def test_incomplete_sources_name_their_key(source: dict, key: str, words: str) -> None:
    with pytest.raises(SuiteError) as err:
        validate(with_source(**source))
    assert err.value.key == f"teacher.sources.kdb_cnn_small{key}" and words in str(err.value)


def test_a_source_for_a_model_that_teaches_nothing_is_refused() -> None:
    suite = tiny_suite(teacher={"sources": {"resnet18": {"pretrained": True}}})
    with pytest.raises(SuiteError, match="not the teacher of any pair"):
        validate(suite)


def test_a_teacher_below_its_expected_top1_fails_and_no_student_starts(trained_teacher: tuple,
                                                                        tmp_path: Path) -> None:
    path, sha, top1 = trained_teacher
    suite = validate(with_source(checkpoint=str(path), sha256=sha, top1=top1 + 5.0))
    plan = expand(suite)
    assert len(plan.teachers) == 1  # one verification job for every regime
    summary = dispatch(plan, tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"failed": 1 + len(plan.runs)}
    (teacher_dir,) = (tmp_path / "tiny" / "teachers").iterdir()
    teacher = store.load_result(teacher_dir)
    assert f"reaches top-1 {top1:.2f}" in teacher["error"] and f"expected {top1 + 5:.2f}" in teacher["error"]
    for run_dir in (tmp_path / "tiny" / "runs").iterdir():
        record = store.load_result(run_dir)
        assert "ended in state 'failed'" in record["error"]
        assert not (run_dir / store.METRICS).exists()  # never started


def test_a_verified_checkpoint_teaches_every_regime(trained_teacher: tuple, tmp_path: Path) -> None:
    path, sha, top1 = trained_teacher
    suite = validate(with_source(checkpoint=str(path), sha256=sha, top1=top1))
    summary = dispatch(expand(suite), tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 5}  # the teacher check + kd/mse x balanced/unlabeled
    (teacher_dir,) = (tmp_path / "tiny" / "teachers").iterdir()
    record = store.load_result(teacher_dir)
    assert record["spec"]["label"] == "checkpoint" and record["metrics"]["top1_last"] == pytest.approx(top1)


def test_the_checkpoint_path_does_not_change_run_ids(trained_teacher: tuple, tmp_path: Path) -> None:
    path, sha, top1 = trained_teacher
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes(path.read_bytes())
    first = expand(validate(with_source(checkpoint=str(path), sha256=sha, top1=top1)))
    second = expand(validate(with_source(checkpoint=str(copy), sha256=sha, top1=top1)))
    assert set(first.runs) == set(second.runs) and set(first.teachers) == set(second.teachers)


def test_pretrained_weights_missing_from_the_cache_fail_clearly_without_downloading(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pretrained teacher tried to use the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    suite = validate(tiny_suite(pairs=[{"teacher": "resnet18", "student": "kdb_cnn_nano"}],
                                regimes=[{"name": "balanced"}], methods=[{"name": "kd"}],
                                dataset={"name": "synthetic", "num_classes": 4, "num_train": 32, "num_test": 16,
                                         "img_size": 32, "in_chans": 3},
                                teacher={"sources": {"resnet18": {"pretrained": True, "top1": 70.0}}}))
    summary = dispatch(expand(suite), tmp_path / "r", suite.executor, progress=False)
    assert summary.counts() == {"failed": 2}
    (teacher_dir,) = (tmp_path / "r" / "tiny" / "teachers").iterdir()
    assert "no pretrained weights for 'resnet18' in the local cache" in store.load_result(teacher_dir)["error"]
