"""Suite loading, validation errors that name the key, overrides, extends, grid expansion and run ids."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_suite, write_suite

from kdbench.suite import SuiteError, apply_overrides, expand, load_suite, parse_key_path, spec_id, validate


def _error(raw: dict) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        validate(raw)
    return info.value


def test_unknown_method_names_the_key_and_the_known_methods() -> None:
    raw = tiny_suite(methods=[{"name": "vanilla"}, {"name": "kd"}, {"name": "kdd"}])
    err = _error(raw)
    assert err.key == "methods[2].name"
    assert "unknown method 'kdd'" in str(err)
    known = str(err).split("(known: ")[1].rstrip(")").split(", ")
    assert {"kd", "mse", "vanilla", "gendd"} <= set(known) and known == sorted(known)


@pytest.mark.parametrize(("change", "key", "words"), [
    ({"trian": {}}, "trian", "unknown key 'trian'"),
    ({"train": {"epochs": 3, "lr": "fast"}}, "train.lr", "expected a number"),
    ({"train": {"epochs": 0}}, "train.epochs", "must be >= 1"),
    ({"train": {"optimiser": "sgd"}}, "train.optimiser", "unknown key"),
    ({"train": {"optimizer": "lamb"}}, "train.optimizer", "unknown optimizer 'lamb'"),
    ({"methods": [{"name": "kd", "Tt": 2}]}, "methods[0].Tt", "unknown parameter 'Tt' of method 'kd'"),
    ({"methods": [{"name": "kd", "T": "hot"}]}, "methods[0].T", "expected a number"),
    ({"pairs": [{"teacher": "kdb_cnn_small", "student": "resnet9000"}]}, "pairs[0].student", "unknown model"),
    ({"dataset": {"name": "cifar1000"}}, "dataset.name", "unknown dataset 'cifar1000'"),
    ({"regimes": [{"name": "longtail", "imbalance": 0.5}]}, "regimes[0]", "imbalance must be >= 1"),
    ({"seeds": [0, 0]}, "seeds", "repeated seed"),
    ({"seeds": []}, "seeds", "non-empty list"),
    ({"executor": {"name": "slurmm"}}, "executor.name", "unknown executor"),
    ({"executor": {"name": "slurm", "partiton": "gpu"}}, "executor.partiton", "unknown key 'partiton'"),
    ({"executor": {"name": "slurm", "teacher": {"gpus": 8}}}, "executor.teacher.gpus", "teacher jobs may override"),
    ({"executor": {"name": "slurm", "teacher": {"timeout_min": 0}}}, "executor.timeout_min", "must be >= 1"),
    ({"executor": {"name": "slurm", "mem_gb": "lots"}}, "executor.mem_gb", "expected a number"),
    ({"executor": {"name": "slurm", "max_requeues": -1}}, "executor.max_requeues", "must be >= 0"),
    ({"executor": {"name": "debug", "checkpoint_every_s": -1}}, "executor.checkpoint_every_s", "must be >= 0"),
    ({"methods": [{"name": "vanilla"}], "regimes": [{"name": "unlabeled"}]}, "methods[0].name", "needs labels"),
])
def test_bad_values_name_their_key(change: dict, key: str, words: str) -> None:
    err = _error(tiny_suite(**change))
    assert err.key == key, str(err)
    assert words in str(err)


def test_missing_data_path_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no such dir"
    err = _error(tiny_suite(dataset={"name": "fashion_mnist", "root": str(missing)}))
    assert err.key == "dataset.root"
    assert str(missing) in str(err)


def test_vanilla_is_refused_for_unlabeled_and_says_so() -> None:
    plan = expand(validate(tiny_suite()))
    assert any("vanilla x unlabeled: refused" in note for note in plan.refused)
    assert {(s.label, s.regime.name) for s in plan.runs.values()} == {
        ("vanilla", "balanced"), ("kd", "balanced"), ("mse", "balanced"), ("kd", "unlabeled"), ("mse", "unlabeled")}


def test_grid_expansion_counts_and_teacher_sharing() -> None:
    raw = tiny_suite(seeds=[0, 1, 2], regimes=[{"name": "balanced"}, {"name": "longtail", "imbalance": 4},
                                               {"name": "unlabeled"}])
    plan = expand(validate(raw))
    assert len(plan.runs) == 3 * 3 + 3 * 3 + 2 * 3  # vanilla refused for unlabeled
    # unlabeled distils from the balanced teacher; longtail's teacher trains on the long-tailed set itself
    assert len(plan.teachers) == 2
    by_regime = {s.regime.name: s.teacher_id for s in plan.runs.values() if s.teacher_id}
    assert by_regime["unlabeled"] == by_regime["balanced"] != by_regime["longtail"]
    assert all(s.teacher_id is None for s in plan.runs.values() if s.method == "vanilla")
    teacher = plan.teachers[by_regime["longtail"]]
    assert teacher.is_teacher and teacher.regime.to_dict() == {"name": "longtail", "params": {
        "imbalance": 4.0, "seed": 0, "many_above": 100, "few_below": 20}}


def test_run_ids_are_stable_and_depend_on_the_spec() -> None:
    plan_a = expand(validate(tiny_suite()))
    plan_b = expand(validate(tiny_suite()))
    assert list(plan_a.runs) == list(plan_b.runs)
    spec = next(iter(plan_a.runs.values())).to_dict()
    assert spec_id(spec) == spec_id(dict(reversed(list(spec.items()))))  # key order does not matter
    assert spec_id({**spec, "seed": 99}) != spec_id(spec)
    # the data's location is not part of what it is
    moved = {**spec, "dataset": {**spec["dataset"], "params": {**spec["dataset"]["params"], "root": "/x"}}}
    assert spec_id(moved) == spec_id(spec)
    # the default is resolved into the spec, so {name: kd} and {name: kd, T: 4.0} are the same run
    explicit = expand(validate(tiny_suite(methods=[{"name": "kd", "T": 4.0}])))
    implicit = expand(validate(tiny_suite(methods=[{"name": "kd"}])))
    assert list(explicit.runs) == list(implicit.runs)
    assert len(next(iter(plan_a.runs))) == 12


def test_run_id_golden() -> None:
    """Run ids of a fixed spec must not change by accident (results folders would be orphaned)."""
    assert spec_id({"role": "student", "seed": 0, "method": "kd"}) == \
        spec_id({"method": "kd", "seed": 0, "role": "student"})
    # sha256 of the canonical JSON {"method":"kd","role":"student","seed":0}, first 12 hex digits
    assert spec_id({"role": "student", "seed": 0, "method": "kd"}) == "95261767ee6e"


def test_a_method_may_have_its_own_recipe() -> None:
    raw = tiny_suite(methods=[{"name": "kd"}, {"name": "mse", "train": {"optimizer": "adamw", "lr": 1.0e-3}}])
    plan = expand(validate(raw))
    recipes = {s.method: s.recipe for s in plan.runs.values()}
    assert recipes["kd"].optimizer == "sgd" and recipes["mse"].optimizer == "adamw"
    assert recipes["mse"].lr == 1e-3 and recipes["mse"].epochs == 3 and recipes["mse"].batch_size == 32
    err = _error(tiny_suite(methods=[{"name": "kd", "train": {"lrr": 1}}]))
    assert err.key == "methods[0].train.lrr"


def test_yaml_1_1_exponent_strings_are_numbers() -> None:
    suite = validate(tiny_suite(train={"lr": "5e-4", "weight_decay": "1e-4"}))
    assert suite.train.lr == 5e-4 and suite.train.weight_decay == 1e-4
    assert _error(tiny_suite(train={"lr": "5e-4x"})).key == "train.lr"


def test_overrides_with_dotted_and_indexed_paths() -> None:
    raw = tiny_suite()
    out = apply_overrides(raw, ["train.epochs=7", "methods[1].T=2", "methods.2.alpha=0.5", "seeds=[3, 4]"])
    suite = validate(out)
    assert suite.train.epochs == 7
    assert suite.methods[1].params["T"] == 2.0 and suite.methods[2].params["alpha"] == 0.5
    assert suite.seeds == (3, 4)
    assert raw["train"]["epochs"] == 3, "overrides must not mutate the input"
    assert parse_key_path("methods[1].T") == ["methods", 1, "T"]
    with pytest.raises(SuiteError, match=r"methods\[9\]"):
        apply_overrides(raw, ["methods[9].T=2"])
    with pytest.raises(SuiteError, match=r"key\.path=value"):
        apply_overrides(raw, ["train.epochs"])
    err = _error(apply_overrides(raw, ["train.epoch=5"]))
    assert err.key == "train.epoch"


def test_extends_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    write_suite(tmp_path / "base.yaml", tiny_suite(name="base"))
    child = write_suite(tmp_path / "child.yaml", {"extends": "base.yaml", "seeds": [5],
                                                  "train": {"epochs": 2}, "description": "child"})
    suite = load_suite(str(child))
    assert suite.name == "child" and suite.seeds == (5,)
    assert suite.train.epochs == 2 and suite.train.batch_size == 32  # merged key by key
    assert [m.name for m in suite.methods] == ["vanilla", "kd", "mse"]


def test_circular_extends_is_an_error(tmp_path: Path) -> None:
    write_suite(tmp_path / "a.yaml", {"extends": "b.yaml"})
    write_suite(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(SuiteError, match="circular extends"):
        load_suite(str(tmp_path / "a.yaml"))


def test_yaml_is_parsed_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(str(path))


def test_shipped_suites_validate() -> None:
    from kdbench.suite import list_suites

    names = list_suites()
    assert {"smoke", "fashion", "cifar100_full", "cifar100_lt", "imagenet_full", "imagenet_lt",
            "imagenet_unlabeled"} <= set(names)
    for name in names:  # the data of the GPU suites is not here: validate everything else
        suite = load_suite(name, check_files=False)
        assert expand(suite).runs
    assert expand(load_suite("smoke")).runs  # digits ships with scikit-learn: fully checked


@pytest.mark.parametrize("name", ["cifar100_full", "imagenet_full", "imagenet_lt", "imagenet_unlabeled"])
def test_gpu_suites_dry_run_prints_the_plan_and_a_real_run_names_the_missing_data(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import run_cli

    monkeypatch.delenv("KDBENCH_DATA", raising=False)
    dry = run_cli("kdbench", "run", name, "--dry-run", "--results", str(tmp_path))
    assert dry.returncode == 0, dry.stderr
    assert "pair" in dry.stdout and "student runs:" in dry.stdout and "estimated GPU-hours" in dry.stdout
    real = run_cli("kdbench", "run", name, "--results", str(tmp_path))
    assert real.returncode == 2 and "Traceback" not in real.stderr
    (line,) = real.stderr.strip().splitlines()
    assert "dataset.root" in line and ("does not exist" in line or "no data root given" in line)
    assert not any(tmp_path.iterdir())  # nothing started, nothing written


def test_teacher_jobs_take_their_overrides_and_students_the_suite_defaults() -> None:
    suite = validate(tiny_suite(executor={"name": "slurm", "partition": "gpu", "gpus_per_run": 1, "timeout_min": 60,
                                          "teacher": {"gpus_per_run": 8, "timeout_min": 600}}))
    teacher, student = suite.executor.for_kind("teacher"), suite.executor.for_kind("student")
    assert (teacher.gpus_per_run, teacher.timeout_min, teacher.partition) == (8, 600, "gpu")
    assert (student.gpus_per_run, student.timeout_min, student.partition) == (1, 60, "gpu")


def test_executor_settings_do_not_change_run_ids() -> None:
    local = expand(validate(tiny_suite()))
    on_slurm = expand(validate(tiny_suite(executor={"name": "slurm", "partition": "gpu", "cpus_per_task": 4})))
    assert set(local.runs) == set(on_slurm.runs) and set(local.teachers) == set(on_slurm.teachers)


def test_a_pair_recipe_overrides_the_suite_and_a_method_recipe_overrides_both() -> None:
    suite = validate(tiny_suite(
        pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano", "train": {"lr": 0.01}},
               {"teacher": "kdb_cnn_small", "student": "kdb_cnn_tiny"}],
        methods=[{"name": "kd"}, {"name": "mse", "train": {"lr": 0.2}}], regimes=[{"name": "balanced"}]))
    lrs = {(s.student, s.label): s.recipe.lr for s in expand(suite).runs.values()}
    assert lrs == {("kdb_cnn_nano", "kd"): 0.01, ("kdb_cnn_nano", "mse"): 0.2, ("kdb_cnn_tiny", "kd"): 0.05,
                   ("kdb_cnn_tiny", "mse"): 0.2}
    with pytest.raises(SuiteError) as err:
        validate(tiny_suite(pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano", "train": {"lr": "x"}}]))
    assert err.value.key == "pairs[0].train.lr"


def test_a_pair_sets_a_methods_hyperparameters_for_its_own_cells() -> None:
    suite = validate(tiny_suite(
        pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano", "params": {"kd": {"T": 2.0}}},
               {"teacher": "kdb_cnn_small", "student": "kdb_cnn_tiny"}],
        methods=[{"name": "kd"}], regimes=[{"name": "balanced"}]))
    temperatures = {s.student: s.method_params["T"] for s in expand(suite).runs.values()}
    assert temperatures == {"kdb_cnn_nano": 2.0, "kdb_cnn_tiny": 4.0}
    for change, key in [({"kdd": {"T": 2.0}}, "pairs[0].params.kdd"), ({"kd": {"Tt": 2.0}}, "pairs[0].params.kd.Tt")]:
        with pytest.raises(SuiteError) as err:
            validate(tiny_suite(pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano", "params": change}]))
        assert err.value.key == key


def test_a_method_that_cannot_run_on_a_pair_is_refused_for_that_pair_and_says_why() -> None:
    plan = expand(validate(tiny_suite(
        methods=[{"name": "kd"}, {"name": "kdsvd"}], regimes=[{"name": "balanced"}],
        pairs=[{"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano"},
               {"teacher": "kdb_cnn_small", "student": "kdb_cnn_small"}])))
    assert {(s.student, s.label) for s in plan.runs.values()} == {
        ("kdb_cnn_nano", "kd"), ("kdb_cnn_small", "kd"), ("kdb_cnn_small", "kdsvd")}
    assert any("kdsvd x kdb_cnn_small -> kdb_cnn_nano: refused" in note and "equal channels" in note
               for note in plan.refused)


FEATURE_METHODS = ("at", "sp", "rkd", "pkt", "fitnet", "nst", "cc", "kdsvd", "crd", "vid", "ab", "ft", "fsp", "ofd",
                   "reviewkd")


def test_cifar_dry_run_lists_every_feature_method_alone_and_with_kd_for_every_pair_5_seeds_and_the_mde(
        tmp_path: Path) -> None:
    from kdbench.dryrun import describe_plan

    suite = load_suite("cifar100_full", check_files=False)
    plan = expand(suite)
    cells: dict[tuple[str, str], list] = {}
    for spec in plan.runs.values():
        cells.setdefault((f"{spec.teacher} -> {spec.student}", spec.label), []).append(spec)
    pairs = {f"{p.teacher} -> {p.student}" for p in suite.pairs}
    assert len(pairs) == 11 and suite.seeds == (0, 1, 2, 3, 4)
    for pair in pairs:
        assert (pair, "crd") in cells and (pair, "crd+kd") in cells
        for name in FEATURE_METHODS:  # alone and +kd in the same pairs (kdsvd, fsp: equal channels only)
            assert ((pair, name) in cells) == ((pair, f"{name}+kd") in cells), (pair, name)
            for label in (name, f"{name}+kd"):
                assert sorted(s.seed for s in cells.get((pair, label), [])) in ([], [0, 1, 2, 3, 4])
        for spec in cells[(pair, "crd+kd")]:
            assert spec.method == "crd" and spec.method_params == cells[(pair, "crd")][0].method_params
            (added,) = spec.compose
            assert added.name == "kd" and (added.params["T"], added.params["alpha"]) == (4.0, 1.0)
    assert sum(1 for pair in pairs for name in FEATURE_METHODS if (pair, f"{name}+kd") in cells) >= 11 * 13
    text = describe_plan(suite, plan, tmp_path, baseline="kd")
    rows = [line.split() for line in text.splitlines() if " -> " in line and " balanced " in line]
    crd_kd = [row for row in rows if row[4] == "crd+kd"]
    assert len(crd_kd) == 11 and all(row[5] == "5" and row[-1] == "0.47-0.71" for row in crd_kd)
    assert "MDE 0.47-0.71 for 5 seeds" in text
