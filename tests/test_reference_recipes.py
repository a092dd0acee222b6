"""The authors' per-pair recipes as data (kdbench/reference/recipes.csv): the table's integrity, its values for the
published cells (pinned here by hand from GenDD's scripts, independently of the CSV), the suites that take their
GenDD entries from it, refusal of undeclared deviations, the report's and the dry run's marks, and the knobs the
table needs (identity warm projector, warm-start batch, the warm-up hold quirk, a frozen student fc)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from kdbench import store
from kdbench.engine.recipe import LRFactor
from kdbench.method import discover_methods, hyperparameters
from kdbench.models import create_network
from kdbench.reference import recipe_gaps
from kdbench.reference.apply import same_value
from kdbench.reference.recipes import RecipeTableError, read_gaps, read_recipes, reference_recipes
from kdbench.report import load_records, render
from kdbench.suite import Recipe, SuiteError, coerce, expand, load_suite, validate
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parent.parent

# GenDD's CIFAR-100 scripts (GenDD_cifar/sh/train_*_gendd.sh and, for the five lightweight students, the
# train_student_stage2_*.sh of commit e30348f): smooth per pair; lr 1e-3, forced to 0.01 in train_student_gendd.py
# for MobileNetV2/ShuffleV1/ShuffleV2 students.
AUTHORS_CIFAR = {
    ("resnet56_cifar", "resnet20_cifar"): (0.9, 1e-3),
    ("resnet110_cifar", "resnet32_cifar"): (0.9, 1e-3),
    ("resnet32x4_cifar", "resnet8x4_cifar"): (0.7, 1e-3),
    ("wrn_40_2_cifar", "wrn_16_2_cifar"): (0.8, 1e-3),
    ("wrn_40_2_cifar", "wrn_40_1_cifar"): (0.8, 1e-3),
    ("vgg13_cifar", "vgg8_cifar"): (0.7, 1e-3),
    ("resnet32x4_cifar", "shufflev1_cifar"): (0.7, 0.01),
    ("resnet32x4_cifar", "shufflev2_cifar"): (0.7, 0.01),
    ("vgg13_cifar", "mobilenetv2_cifar"): (0.8, 0.01),
    ("resnet50_cifar", "mobilenetv2_cifar"): (0.8, 0.01),
    ("wrn_40_2_cifar", "shufflev1_cifar"): (0.7, 0.01),
    ("wrn_40_2_cifar", "resnet8x4_cifar"): (0.7, 1e-3),
    ("vgg13_cifar", "resnet20_cifar"): (0.9, 1e-3),
}
FULL_SCALE = ("cifar100_full", "cifar100_lt", "imagenet_full", "imagenet_lt", "imagenet_unlabeled")
# The reference code every row's source names (its repository's name, then the file in it).
# image_classification_sota: DiffKD's training code (a submodule of hunto/DiffKD); cls_KD: MGD's authors' CIFAR configs
SOURCES = ("GenDD_cifar/", "GenDD_imagenet/", "RepDistiller/", "mdistiller/", "DIST_KD/", "DKL/", "MGD/", "mmpretrain/",
           "image_classification_sota/", "cls_KD/")


# ------------------------------------------------------------------------------------------------ the table

def test_every_row_names_a_real_parameter_or_recipe_field_with_a_valid_value_and_a_source() -> None:
    registry = discover_methods()
    fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
    recipe_hints = typing.get_type_hints(Recipe)
    rows = reference_recipes().rows
    assert len(rows) > 100
    for row in rows:
        where = f"{row.method}/{row.setting} {row.teacher}->{row.student} {row.key}"
        assert row.source.startswith(SOURCES) and "(" in row.source, where  # a file and its option
        if row.key.startswith("params."):
            cls = registry.get(row.method)
            name = row.key.split(".", 1)[1]
            assert name in hyperparameters(cls), where
            coerce(row.value, typing.get_type_hints(cls.__init__)[name], where)
        else:
            name = row.key.split(".", 1)[1]
            assert name in fields, where
            coerce(row.value, recipe_hints[name], where)


def test_no_two_equally_specific_rows_disagree_on_any_pair_the_table_or_a_suite_names() -> None:
    table = reference_recipes()
    pairs = {(r.teacher, r.student) for r in table.rows if "*" not in r.teacher + r.student}
    for name in FULL_SCALE:
        pairs |= {(p.teacher, p.student) for p in load_suite(name, check_files=False).pairs}
    for method in sorted({r.method for r in table.rows}):
        for setting in table.settings(method):
            for teacher, student in pairs:
                table.for_cell(method, setting, teacher, student)  # raises on a conflict


def test_the_table_gives_the_authors_smooth_and_lr_for_every_cifar_pair() -> None:
    table = reference_recipes()
    for (teacher, student), (smooth, lr) in AUTHORS_CIFAR.items():
        cell = table.for_cell("gendd", "cifar100", teacher, student)
        assert cell["params.smooth"].value == pytest.approx(smooth), (teacher, student)
        assert cell["train.lr"].value == pytest.approx(lr), (teacher, student)
        assert cell["params.mul"].value == (10 if teacher == "resnet50_cifar" else 30)
        assert cell["params.sample_steps"].value == 100 and cell["params.beta2_min"].value == 0.95
        assert cell["params.token_dim"].value == 64 and cell["params.warm_projector"].value == "auto"
    lightweight = table.for_cell("gendd", "cifar100", "resnet32x4_cifar", "shufflev1_cifar")
    assert lightweight["train.batch_size"].value == 128 and lightweight["train.warmup_epochs"].value == 20
    assert lightweight["params.warm_start_epochs"].value == 20
    assert "e30348f" in lightweight["params.smooth"].source
    standard = table.for_cell("gendd", "cifar100", "resnet56_cifar", "resnet20_cifar")
    assert {k: standard[k].value for k in ("train.warmup_epochs", "train.batch_size", "train.weight_decay",
                                           "params.warm_start_epochs", "params.warm_start_lr")} == {
        "train.warmup_epochs": 50, "train.batch_size": 64, "train.weight_decay": 0.05,
        "params.warm_start_epochs": 50, "params.warm_start_lr": 0.003}
    assert "train_res56_res20_gendd.sh" in standard["params.smooth"].source


def test_the_table_gives_the_authors_imagenet_lt_and_unlabeled_settings() -> None:
    table = reference_recipes()
    r18 = table.for_cell("gendd", "imagenet", "resnet34.tv_in1k", "resnet18")  # a timm tag is ignored
    mv1 = table.for_cell("gendd", "imagenet", "resnet50", "mobilenetv1_100")
    assert (r18["train.warmup_epochs"].value, mv1["train.warmup_epochs"].value) == (10, 20)
    for cell in (r18, mv1):
        assert cell["params.sample_steps"].value == 64 and cell["params.beta2_min"].value == 0.96
        assert cell["params.mul"].value == 10 and cell["params.smooth"].value == 0.9
        assert cell["params.warm_start_epochs"].value == 20 and cell["train.lr"].value == 2e-3
    lt = table.for_cell("gendd", "imagenet_lt", "resnext101_32x4d", "resnet50")
    assert (lt["params.smooth"].value, lt["params.warm_start_epochs"].value, lt["train.weight_decay"].value,
            lt["train.batch_size"].value) == (0.0, 0, 0.2, 256)
    unlabeled = table.for_cell("gendd", "imagenet_unlabeled", "resnet34", "resnet18")
    assert (unlabeled["params.smooth"].value, unlabeled["params.warm_start_epochs"].value) == (0.0, 0)
    kl = table.for_cell("kd", "imagenet_unlabeled", "resnet50", "mobilenetv1_100")
    assert (kl["params.T"].value, kl["train.lr"].value, kl["train.optimizer"].value) == (1.0, 0.2, "sgd")


def test_every_method_has_a_cifar100_and_an_imagenet_recipe_or_a_documented_gap() -> None:
    registry = discover_methods()
    table = reference_recipes()
    gaps = {(g.method, g.setting): g for g in recipe_gaps()}
    assert len(gaps) == len(recipe_gaps()), "one gap row per (method, setting)"
    methods = {name for name in registry.names() if registry.get(name).__module__.startswith("kdbench.methods.")}
    assert len(methods) == 24
    for method in sorted(methods):
        for setting in ("cifar100", "imagenet"):
            assert setting in table.settings(method) or (method, setting) in gaps, f"{method}/{setting}"
    for (method, setting), gap in gaps.items():
        assert method in methods and setting in ("cifar100", "imagenet"), (method, setting)
        assert gap.what_is_used.strip() and gap.why.strip()
        if setting not in table.settings(method):  # a full gap: nothing invented, kdbench's defaults are used
            assert "kdbench defaults" in gap.what_is_used, (method, setting)
    # the feature methods only RepDistiller (CIFAR-100 only) publishes have no ImageNet rows
    for method in ("ab", "cc", "fitnet", "fsp", "ft", "kdsvd", "nst", "pkt", "rkd", "sp", "vid", "vanilla", "mse"):
        assert "imagenet" not in table.settings(method) and (method, "imagenet") in gaps, method


def test_the_gap_table_refuses_empty_fields(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("method,setting,what_is_used,why\nm,imagenet,kdbench defaults,\n")
    with pytest.raises(RecipeTableError, match="line 2: empty why"):
        read_gaps(path)


def test_the_table_gives_the_verified_values_of_the_field_reference_code() -> None:
    """Pinned by hand from the reference files (mdistiller configs/cifar100/dkd/*.yaml and
    configs/imagenet/{r34_r18,r50_mv1}/*.yaml, RepDistiller train_student.py and run_cifar_distill.sh, DKL's
    DKLv1/KD-dkl configs, DIST_KD's classification configs), independently of the CSV."""
    table = reference_recipes()

    def cell(method: str, setting: str, teacher: str, student: str) -> dict:
        return {k: v.value for k, v in table.for_cell(method, setting, teacher, student).items()}

    dkd_beta = {("resnet56_cifar", "resnet20_cifar"): 2.0, ("resnet110_cifar", "resnet32_cifar"): 2.0,
                ("resnet32x4_cifar", "resnet8x4_cifar"): 8.0, ("vgg13_cifar", "vgg8_cifar"): 6.0,
                ("wrn_40_2_cifar", "wrn_16_2_cifar"): 6.0, ("wrn_40_2_cifar", "wrn_40_1_cifar"): 6.0,
                ("vgg13_cifar", "mobilenetv2_cifar"): 6.0, ("resnet32x4_cifar", "shufflev1_cifar"): 8.0,
                ("resnet50_cifar", "mobilenetv2_cifar"): 8.0}
    for (teacher, student), beta in dkd_beta.items():
        dkd = cell("dkd", "cifar100", teacher, student)
        assert dkd["params.beta"] == beta and dkd["params.T"] == 4.0 and dkd["params.warmup_epochs"] == 20
        light = student in ("mobilenetv2_cifar", "shufflev1_cifar", "shufflev2_cifar")
        assert dkd["train.lr"] == (0.01 if light else 0.05) and dkd["train.milestones"] == [150, 180, 210]
    for teacher, student, beta in (("resnet34.tv_in1k", "resnet18", 0.5), ("resnet50", "mobilenetv1_100", 2.0)):
        dkd = cell("dkd", "imagenet", teacher, student)
        assert (dkd["params.beta"], dkd["params.T"], dkd["params.warmup_epochs"]) == (beta, 1.0, 1)
    kd = cell("kd", "imagenet", "resnet34", "resnet18")
    assert (kd["params.T"], kd["params.alpha"], kd["params.gamma"]) == (1.0, 0.5, 0.5)
    assert (kd["train.lr"], kd["train.batch_size"], kd["train.weight_decay"], kd["train.milestones"]) == (
        0.2, 512, 1e-4, [30, 60, 90])
    kd_cifar = cell("kd", "cifar100", "resnet32x4_cifar", "resnet8x4_cifar")
    assert (kd_cifar["params.T"], kd_cifar["params.alpha"], kd_cifar["params.gamma"]) == (4.0, 0.9, 0.1)
    crd = cell("crd", "cifar100", "resnet32x4_cifar", "resnet8x4_cifar")
    assert (crd["params.weight"], crd["params.negatives"], crd["params.nce_t"], crd["params.momentum"],
            crd["params.feat_dim"]) == (0.8, 16384, 0.07, 0.5, 128)
    crd_in = cell("crd", "imagenet", "resnet50", "mobilenetv1_100")
    assert (crd_in["train.lr"], crd_in["train.batch_size"], crd_in["params.negatives"]) == (0.1, 256, 16384)
    ikl = cell("ikl", "cifar100", "resnet32x4_cifar", "shufflev2_cifar")
    assert (ikl["params.alpha"], ikl["params.beta"], ikl["params.global_info"], ikl["params.T2"]) == (
        3.0, 12.0, False, 100.0)
    ikl_in = cell("ikl", "imagenet", "resnet50", "mobilenetv1_100")
    assert (ikl_in["params.alpha"], ikl_in["params.beta"], ikl_in["params.global_info"], ikl_in["params.T2"]) == (
        4.0, 1.0, True, 1.0)
    dist = cell("dist", "imagenet", "resnet34", "resnet18")
    assert (dist["params.beta"], dist["params.gamma"], dist["params.T"], dist["train.batch_size"]) == (2.0, 2.0, 1.0,
                                                                                                        256)
    assert cell("reviewkd", "cifar100", "resnet32x4_cifar", "resnet8x4_cifar")["params.weight"] == 5.0
    assert cell("ft", "cifar100", "resnet32x4_cifar", "resnet8x4_cifar")["params.init_lr"] == 0.01
    assert cell("ft", "cifar100", "vgg13_cifar", "vgg8_cifar")["params.init_lr"] == 0.05
    assert "params.weight" not in cell("ofd", "imagenet", "resnet34", "resnet18")  # R50->MV1 only


def test_the_most_specific_row_wins_and_equal_rows_that_disagree_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "recipes.csv"
    path.write_text("method,setting,teacher,student,key,value,source\n"
                    "m,s,*,*,params.a,1,GenDD_cifar/x\n"
                    "m,s,*,stu,params.a,2,GenDD_cifar/y\n"
                    "m,s,tea,stu,params.a,3,GenDD_cifar/z\n"
                    "m,s,*,*,train.lr,\"[1, 2]\",GenDD_cifar/x\n")
    table = read_recipes(path)
    assert table.for_cell("m", "s", "other", "other")["params.a"].value == 1
    assert table.for_cell("m", "s", "other", "stu")["params.a"].value == 2
    assert table.for_cell("m", "s", "tea", "stu")["params.a"].value == 3
    assert table.for_cell("m", "s", "tea.tag", "stu")["params.a"].source == "GenDD_cifar/z"
    assert table.for_cell("m", "s", "x", "y")["train.lr"].value == [1, 2]
    path.write_text(path.read_text() + "m,s,*,stu,params.a,9,GenDD_cifar/w\n")
    with pytest.raises(RecipeTableError, match=r"params\.a"):
        read_recipes(path).for_cell("m", "s", "other", "stu")
    path.write_text("method,setting,teacher,student,key,value,source\nm,s,*,*,lr,1,GenDD_cifar/x\n")
    with pytest.raises(RecipeTableError, match=r"params\.<name> or train\.<name>"):
        read_recipes(path)
    path.write_text("method,setting,teacher,student,key,value,source\nm,s,*,*,train.lr,[1,GenDD_cifar/x\n")
    with pytest.raises(RecipeTableError, match=r"line 2: train\.lr"):
        read_recipes(path)


def test_recipe_values_compare_numerically() -> None:
    assert same_value(1e-3, 0.001) and same_value(50, 50.0) and same_value([150, 180], (150, 180))
    assert not same_value(0.9, 0.8) and not same_value(True, 1) and not same_value("auto", "linear")


# ------------------------------------------------------------------------------------------------ the suites

@pytest.mark.parametrize("name", FULL_SCALE)
def test_full_scale_suites_take_every_gendd_value_from_the_table_or_declare_the_deviation(name: str) -> None:
    suite = load_suite(name, check_files=False)
    gendd = [m for m in suite.methods if m.name == "gendd"]
    assert gendd and all(m.reference for m in gendd), f"{name}: its gendd entry has no reference recipe"
    plan = expand(suite)
    table = reference_recipes()
    checked = 0
    for spec in (s.to_dict() for s in plan.runs.values()):
        provenance = spec.get("provenance")
        if not provenance:
            continue
        method, setting = provenance["recipe"].split("/")
        declared = {d["key"]: d for d in provenance["deviations"]}
        for key, ref in table.for_cell(method, setting, spec["teacher"], spec["student"]).items():
            kind, field_name = key.split(".", 1)
            actual = (spec["method_params"] if kind == "params" else spec["recipe"])[field_name]
            if key in declared:
                assert same_value(actual, declared[key]["value"]) and not same_value(actual, ref.value)
                assert declared[key]["reason"].strip()
            else:
                assert same_value(actual, ref.value), f"{name} {spec['teacher']}->{spec['student']} {key}"
            checked += 1
    assert checked > 0


def test_cifar100_full_dry_run_json_carries_the_authors_smooth_and_lr_for_every_gendd_run(tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, "-m", "kdbench", "run", "cifar100_full", "--dry-run", "--json", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    plan = json.loads(out.read_text())
    gendd = [r for r in plan["runs"] if r["method"] == "gendd"]
    assert len(gendd) == 11 * 5  # 11 pairs x 5 seeds
    for run in gendd:
        smooth, lr = AUTHORS_CIFAR[(run["teacher"], run["student"])]
        assert run["method_params"]["smooth"] == pytest.approx(smooth)
        assert run["recipe"]["lr"] == pytest.approx(lr)
        assert run["provenance"] == {"recipe": "gendd/cifar100", "deviations": []}
        assert {"teacher", "student", "regime", "seed", "method_params", "recipe", "run_id"} <= set(run)
    assert len(plan["teachers"]) == 6 and all(t["role"] == "teacher" for t in plan["teachers"])
    assert "authors gendd/cifar100" in done.stdout
    assert "resnet32x4_cifar: trained here" in done.stdout and "published top-1 79.42" in done.stdout


def test_dry_run_names_each_teacher_file_and_flags_deviating_cells(tmp_path: Path) -> None:
    digest = "ab" * 32
    done = subprocess.run(
        [sys.executable, "-m", "kdbench", "run", "cifar100_lt", "--dry-run",
         f"teacher.sources={{resnet32x4_cifar: {{checkpoint: /ckpt/resnet32x4.pth, sha256: {digest}, top1: 79.42}}}}"],
        cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr
    assert f"resnet32x4_cifar: file /ckpt/resnet32x4.pth (sha256 {digest}, expected top-1 79.42" in done.stdout
    assert "published top-1 79.42" in done.stdout
    assert "wrn_40_2_cifar: trained here" in done.stdout
    assert "DEVIATES: smooth, warm_start_epochs" in done.stdout
    assert "params.smooth=0.0 (authors 0.7: long-tailed" in done.stdout
    refused = subprocess.run([sys.executable, "-m", "kdbench", "run", "cifar100_full", "--json", "x.json"],
                             cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert refused.returncode == 2 and "--dry-run" in refused.stderr and not (tmp_path / "x.json").exists()


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cifar_suite(gendd: dict, pairs: list | None = None) -> dict:
    return tiny_suite(
        dataset={"name": "synthetic", "num_classes": 10, "in_chans": 3, "img_size": 32, "num_train": 40,
                 "num_test": 20},
        regimes=[{"name": "balanced"}],
        pairs=pairs or [{"teacher": "resnet32x4_cifar", "student": "resnet8x4_cifar"},
                        {"teacher": "resnet56_cifar", "student": "resnet20_cifar"}],
        methods=[{"name": "kd"}, {"name": "gendd", **gendd}])


def test_a_suite_contradicting_the_recipe_without_a_declared_deviation_is_refused_naming_the_key() -> None:
    with pytest.raises(SuiteError) as err:
        validate(_cifar_suite({"recipe": "cifar100", "smooth": 0.5}))
    assert err.value.key == "methods[1].smooth" and "0.7" in str(err.value) and "deviations" in str(err.value)
    assert "train_res32x4_res8x4_gendd.sh" in str(err.value)
    with pytest.raises(SuiteError) as err:
        validate(_cifar_suite({"recipe": "cifar100", "train": {"lr": 0.05}}))
    assert err.value.key == "methods[1].train.lr"
    pairs = [{"teacher": "resnet56_cifar", "student": "resnet20_cifar", "params": {"gendd": {"mul": 4}}}]
    with pytest.raises(SuiteError) as err:
        validate(_cifar_suite({"recipe": "cifar100"}, pairs))
    assert err.value.key == "pairs[0].params.gendd.mul"


def test_declared_deviations_apply_and_are_recorded_unused_or_malformed_ones_are_refused() -> None:
    suite = validate(_cifar_suite({"recipe": "cifar100", "smooth": 0.5,
                                   "deviations": {"params.smooth": "an ablation of contraction"}}))
    runs = [r.to_dict() for r in expand(suite).runs.values() if r.method == "gendd"]
    assert {r["method_params"]["smooth"] for r in runs} == {0.5}
    assert runs[0]["provenance"]["deviations"][0]["reason"] == "an ablation of contraction"
    assert {r["provenance"]["deviations"][0]["reference"] for r in runs} == {0.7, 0.9}
    same = validate(_cifar_suite({"recipe": "cifar100", "mul": 30}))  # equal to the table: no deviation
    assert all(r.provenance["deviations"] == [] for r in expand(same).runs.values() if r.provenance)
    bad = [({"recipe": "cifar100", "deviations": {"params.smooth": "why"}}, "methods[1].deviations.params.smooth",
            "no cell deviates"),
           ({"recipe": "cifar100", "smooth": 0.5, "deviations": {"params.smooth": " "}},
            "methods[1].deviations.params.smooth", "reason"),
           ({"recipe": "cifar100", "deviations": {"smooth": "x"}}, "methods[1].deviations.smooth", "params.<name>"),
           ({"deviations": {"params.smooth": "x"}}, "methods[1].deviations", "reference recipe"),
           ({"recipe": "cifar10"}, "methods[1].recipe", "known: cifar100, imagenet")]
    for entry, key, text in bad:
        with pytest.raises(SuiteError) as err:
            validate(_cifar_suite(entry))
        assert err.value.key == key and text in str(err.value), (entry, str(err.value))


def test_provenance_does_not_change_run_ids_but_the_values_do() -> None:
    plain = expand(validate(_cifar_suite({"smooth": 0.7, "mul": 30})))
    ids = {rid for rid, r in plain.runs.items() if r.method == "kd"}
    with_recipe = expand(validate(_cifar_suite({"recipe": "cifar100"})))
    assert ids == {rid for rid, r in with_recipe.runs.items() if r.method == "kd"}


def test_the_report_marks_cells_that_deviate_from_their_reference_recipe(tmp_path: Path) -> None:
    def record(run_id: str, label: str, seed: int, provenance: dict | None) -> dict:
        spec = {"role": "student", "method": label, "label": label, "model": "s", "student": "s", "teacher": "t",
                "teacher_id": "T", "dataset": {"name": "cifar100"}, "regime": {"name": "balanced"}, "seed": seed,
                "epochs": 3, **({"provenance": provenance} if provenance else {})}
        return {"schema": store.SCHEMA, "run_id": run_id, "state": "done", "spec": spec,
                "metrics": {"top1_last": 50.0 + seed}, "stability": {}, "cost": {}}

    deviating = {"recipe": "gendd/cifar100", "deviations": [{"key": "params.smooth", "value": 0.0,
                                                             "reference": 0.7, "source": "x", "reason": "LT"}]}
    rows = [("a", "kd", 0, None), ("b", "gendd", 0, deviating),
            ("c", "gendd_authors", 0, {"recipe": "gendd/cifar100", "deviations": []})]
    for run_id, label, seed, provenance in rows:
        store.atomic_write_json(tmp_path / "s" / "runs" / run_id / "result.json", record(run_id, label, seed,
                                                                                           provenance))
    text = render(load_records(tmp_path), "text")
    accuracy = text.split("[accuracy", 1)[1].split("\n\n", 1)[0]  # the cell's accuracy table, not the leaderboard
    lines = {line.split()[0]: line for line in accuracy.splitlines()
             if line.split()[:1] in (["kd"], ["gendd"], ["gendd_authors"])}
    assert "deviates: smooth" in lines["gendd"] and "authors" in lines["gendd_authors"]
    assert "authors" not in lines["kd"] and "deviates" not in lines["kd"]
    csv = render(load_records(tmp_path), "csv")
    assert "deviates: smooth" in csv


# ------------------------------------------------------------------------------------------------ the knobs

def test_the_warm_projector_is_the_identity_when_dims_match_as_the_authors_code_does() -> None:
    registry = discover_methods()
    gendd = registry.get("gendd")
    teacher = create_network("resnet32x4_cifar", num_classes=10, in_chans=3)
    same = create_network("resnet8x4_cifar", num_classes=10, in_chans=3)  # 256 == 256
    other = create_network("resnet20_cifar", num_classes=10, in_chans=3)  # 64 != 256
    assert isinstance(gendd(same, teacher, num_classes=10).warm_projector, torch.nn.Identity)
    assert isinstance(gendd(same, teacher, num_classes=10, warm_projector="linear").warm_projector, torch.nn.Linear)
    assert isinstance(gendd(other, teacher, num_classes=10).warm_projector, torch.nn.Linear)
    assert gendd(same, teacher, num_classes=10, warm_start_epochs=0).stages({}) == []
    stage = gendd(same, teacher, num_classes=10, warm_start_batch_size=128).stages({})[0]
    assert stage.recipe["batch_size"] == 128
    assert "batch_size" not in gendd(same, teacher, num_classes=10).stages({})[0].recipe
    with pytest.raises(ValueError, match="warm_projector"):
        gendd(same, teacher, num_classes=10, warm_projector="mlp")


def _recipe(**kw: object) -> dict:
    return dataclasses.asdict(dataclasses.replace(Recipe(epochs=10, milestones=(6, 8), schedule="multistep"), **kw))


def test_warmup_hold_keeps_the_last_warmup_value_until_the_first_milestone_and_is_off_by_default() -> None:
    held = LRFactor(_recipe(warmup_epochs=4, warmup_hold=True), steps_per_epoch=1)
    assert [held(s) for s in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 0.75, 0.75, 0.1, 0.1, 0.01, 0.01])
    plain = LRFactor(_recipe(warmup_epochs=4), steps_per_epoch=1)
    assert [plain(s) for s in range(10)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    assert Recipe().warmup_hold is False
    with pytest.raises(SuiteError) as err:
        validate(tiny_suite(train={"epochs": 3, "warmup_epochs": 1, "warmup_hold": True, "schedule": "cosine"}))
    assert err.value.key == "train.warmup_hold"


def test_kd_can_leave_the_student_fc_at_its_random_init_as_the_unlabeled_baseline_script_does() -> None:
    kd = discover_methods().get("kd")
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1, img_size=8)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1, img_size=8)
    fc = {id(p) for p in student.classifier.parameters()}
    default = kd(student, teacher, num_classes=4).param_groups(student)
    frozen = kd(student, teacher, num_classes=4, freeze_student_fc=True).param_groups(student)
    assert fc <= {id(p) for g in default for p in g["params"]}
    assert not fc & {id(p) for g in frozen for p in g["params"]}
    assert len(frozen[0]["params"]) == len(default[0]["params"]) - len(fc)
