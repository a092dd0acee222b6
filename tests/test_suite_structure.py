"""The suite package's structure and the low typed-config layers it is built on (issue 18): small modules, the
schema pure (no files opened, no networks built), constraints declared with their fields, errors with key paths."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from conftest import tiny_suite

from kdbench.config import ConfigError, Settings, at_least, build_dataclass, jsonable, refuse_non_finite, setting
from kdbench.spec import EvalSettings, Recipe, TeacherSource, TrainConfig
from kdbench.suite import SuiteError, expand, student_spec, teacher_spec, validate

KDBENCH = Path(__file__).resolve().parent.parent / "kdbench"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions), absolute names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((KDBENCH / "suite").glob("*.py")), ids=lambda p: p.name)
def test_every_module_of_the_suite_package_is_under_300_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) < 300


@pytest.mark.parametrize(("module", "allowed"), [
    ("config.py", set()),
    ("spec.py", {"kdbench.config"}),
    ("suite/schema.py", {"kdbench.config", "kdbench.spec", "kdbench.reference.apply", "kdbench.suite.tune"}),
    ("suite/tune.py", {"kdbench.config", "kdbench.spec"}),
])
def test_the_low_typed_layers_import_only_what_is_below_them(module: str, allowed: set[str]) -> None:
    ours = {name for name in _imports(KDBENCH / module) if name.startswith("kdbench")}
    assert ours <= allowed | {"kdbench.registry"}, f"{module} imports {sorted(ours - allowed)}"
    assert not {"torch", "kdbench.models", "kdbench.teachers", "kdbench.pairing", "kdbench.store"} & _imports(
        KDBENCH / module)


def test_the_old_names_are_still_importable_from_kdbench_suite() -> None:
    import kdbench.suite as suite

    for name in ("SuiteError", "Recipe", "TeacherSource", "EvalSettings", "ExecutorSettings", "TeacherSettings",
                 "Entry", "Pair", "Suite", "Plan", "expand", "spec_id", "teacher_spec", "load_suite", "validate",
                 "apply_overrides", "parse_key_path", "read_raw", "find_suite", "list_suites", "deep_merge",
                 "safe_yaml", "parse_suite_text", "coerce", "build_dataclass", "resolve_params", "suites_dir"):
        assert hasattr(suite, name), name
    assert suite.SuiteError is ConfigError and TrainConfig is Recipe


def test_a_settings_class_checks_its_declared_constraints_with_the_key_path() -> None:
    @dataclasses.dataclass(frozen=True)
    class Knobs(Settings):
        count: int = setting(1, at_least(1))
        name: str = "x"

    assert build_dataclass(Knobs, {"count": 3}, "knobs") == Knobs(3)
    with pytest.raises(ConfigError) as info:
        build_dataclass(Knobs, {"count": 0}, "knobs")
    assert str(info.value) == "knobs.count: must be >= 1, got 0"
    with pytest.raises(ConfigError, match=r"^knobs\.size: unknown key 'size' \(known: count, name\)$"):
        build_dataclass(Knobs, {"size": 2}, "knobs")


@pytest.mark.parametrize(("cls", "value", "message"), [
    (Recipe, {"epochs": 0}, "train.epochs: must be >= 1, got 0"),
    (Recipe, {"optimizer": "lamb"}, "train.optimizer: unknown optimizer 'lamb' (known: adamw, sgd)"),
    (Recipe, {"epochs": 5, "milestones": [2, 9]}, "train.milestones: every milestone must be in (0, 5), got [2, 9]"),
    (Recipe, {"epochs": 2, "warmup_epochs": 5, "milestones": [9]},  # warm-up is checked before milestones
     "train.warmup_epochs: must be in [0, epochs), got 5"),
    (Recipe, {"warmup_hold": True}, "train.warmup_hold: holds the lr after a warm-up until the first milestone: "
                                    "needs schedule multistep and warmup_epochs >= 1 (got cosine, 0)"),
    (Recipe, {"schedule": "step", "lr": 0}, "train.schedule: unknown schedule 'step' (known: constant, cosine, "
                                            "multistep)"),
    (Recipe, {"diverge_above": 0}, "train.diverge_above: must be > 0"),
    (EvalSettings, {"val_fraction": 0.5}, "train.val_fraction: must be in [0, 0.5), got 0.5"),
    (TeacherSource, {}, "train: give exactly one of checkpoint: <path> or pretrained: true"),
    (TeacherSource, {"checkpoint": "/x.pt", "tolerance": -1}, "train.tolerance: must be >= 0"),
    (TeacherSource, {"checkpoint": "/x.pt", "sha256": "ab"},
     "train.sha256: a checkpoint needs its sha256 (64 hex digits: sha256sum FILE)"),
    (TeacherSource, {"checkpoint": "/x.pt", "sha256": "a" * 64},
     "train.top1: a checkpoint needs the top-1 it is expected to reach"),
])
def test_spec_values_refuse_what_a_run_could_not_use(cls: type, value: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_dataclass(cls, value, "train")
    assert str(info.value) == message


def test_a_teacher_source_is_a_pure_value_its_file_is_not_opened(tmp_path: Path) -> None:
    source = build_dataclass(TeacherSource, {"checkpoint": str(tmp_path / "absent.pt"), "sha256": "a" * 64,
                                             "top1": 50.0}, "teacher.sources.kdb_cnn_small")
    assert source.checkpoint.endswith("absent.pt")  # the loader (check_files) refuses a missing file, not the type
    raw = tiny_suite(teacher={"train": {"epochs": 3}, "sources": {"kdb_cnn_small": dataclasses.asdict(source)}})
    validate(raw, check_files=False)
    with pytest.raises(SuiteError, match=r"kdb_cnn_small\.checkpoint: teacher checkpoint .* does not"):
        validate(raw)


def test_a_missing_required_key_names_itself() -> None:
    with pytest.raises(SuiteError) as info:
        validate(tiny_suite(pairs=[{"teacher": "kdb_cnn_small"}]))
    assert str(info.value) == "pairs[0].student: required key is missing"


def test_non_finite_values_and_jsonable() -> None:
    with pytest.raises(ConfigError, match=r"^methods\[1\]\.T: expected a finite number, got inf$"):
        refuse_non_finite({"methods": [{}, {"T": float("inf")}]})
    assert jsonable({"a": (1, 2), "b": {3}}) == {"a": [1, 2], "b": [3]}


def test_the_plan_assembles_each_role_in_one_function_and_knows_each_runs_teacher() -> None:
    suite = validate(tiny_suite())
    plan = expand(suite)
    pair, regime = suite.pairs[0], suite.regimes[0]
    kd = next(m for m in suite.methods if m.name == "kd")
    t_spec = teacher_spec(suite, pair, regime)
    from kdbench.suite import spec_id

    spec = student_spec(suite, pair, regime, kd, 0, pair.recipe(suite.train, kd), None, spec_id(t_spec))
    assert plan.runs[spec_id(spec)] == spec
    assert plan.dependencies()[spec_id(spec)] == spec_id(t_spec)
    assert all(plan.runs[run_id].method != "vanilla" for run_id in plan.dependencies())
