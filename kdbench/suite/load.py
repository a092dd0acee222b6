"""Loading a suite: find, read, merge, override, then validate the raw mapping into a typed :class:`Suite`.

Validation runs section by section (name, dataset, regimes, pairs, methods, seeds, settings), then the checks that
need the whole suite (datasets without labels, teacher sources), then the plan-time checks: every method runs in
some cell and accepts its values on its pair's networks (:mod:`kdbench.pairing`). With ``check_files`` the data
root and every teacher file are opened too (:mod:`kdbench.teachers`). The first problem found is raised as one
:class:`SuiteError` naming its key path.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from kdbench import pairing, teachers
from kdbench.config import build_dataclass, coerce, refuse_non_finite, require
from kdbench.data import dataset_parameters, dataset_registry, regime_parameters, regime_registry
from kdbench.method import discover_methods, hyperparameters
from kdbench.registry import Registry
from kdbench.spec import EvalSettings, Recipe, TrackingSettings
from kdbench.suite.entries import check_instantiable, check_pair_params, check_references, entry, method_entry
from kdbench.suite.plan import Plan, expand
from kdbench.suite.schema import TOP_KEYS, Entry, ExecutorSettings, Pair, Suite, SuiteError, TeacherSettings
from kdbench.suite.source import apply_overrides, find_suite, read_raw
from kdbench.suite.tune import TuneSettings, check_tune
from kdbench.tracking import missing_package


def load_suite(name_or_path: str, overrides: Sequence[str] = (), check_files: bool = True) -> Suite:
    """Find, read, merge, override and validate a suite. Raises :class:`SuiteError` on any problem.

    ``check_files=False`` (``--dry-run``) validates everything but does not open the data root or teacher
    checkpoints."""
    path = find_suite(name_or_path)
    raw = read_raw(path)
    try:
        return validate(apply_overrides(raw, list(overrides)), source=str(path), check_files=check_files)
    except SuiteError as err:
        err.source = err.source or str(path)
        raise


def validate(raw: dict[str, Any], source: str = "", check_files: bool = True) -> Suite:
    """Turn a raw (merged, overridden) mapping into a :class:`Suite`, or raise one :class:`SuiteError`.
    ``check_files=False`` leaves the data root and teacher files unopened."""
    refuse_non_finite(raw)
    for name in raw:
        if name not in TOP_KEYS:
            raise SuiteError(str(name), f"unknown key '{name}' (known: {', '.join(sorted(TOP_KEYS))})")
    suite_name = raw.get("name")
    require(isinstance(suite_name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", suite_name or "") is not None,
            "name", f"must be a plain name (letters, digits, _ . -), got {suite_name!r}")
    dataset = _dataset(raw, check_files)
    regimes = _regimes(raw)
    pairs = _pairs(raw)
    methods_registry = discover_methods()
    train = build_dataclass(Recipe, raw.get("train"), "train")
    for i, pair in enumerate(pairs):
        build_dataclass(Recipe, {**dataclasses.asdict(train), **pair.train}, f"pairs[{i}].train")
    methods = _methods(raw, pairs, train, methods_registry)
    seeds = coerce(_list(raw, "seeds"), list[int], "seeds")
    require(len(set(seeds)) == len(seeds), "seeds", f"repeated seed in {seeds}")
    description = coerce(raw.get("description", ""), str, "description")
    teacher = _teacher_settings(raw, check_files)
    suite = Suite(name=suite_name, description=description, dataset=dataset, regimes=regimes, pairs=pairs,
                  methods=methods, seeds=tuple(seeds), train=train, teacher=teacher,
                  eval=build_dataclass(EvalSettings, raw.get("eval"), "eval"),
                  executor=build_dataclass(ExecutorSettings, raw.get("executor"), "executor"), source=source)
    suite = dataclasses.replace(suite, tracking=_tracking(raw), tune=check_tune(
        build_dataclass(TuneSettings, raw.get("tune"), "tune"), list(methods), suite.eval.val_fraction > 0,
        lambda name: hyperparameters(methods_registry.get(name))))
    _check_unlabeled_dataset(suite)
    _check_teacher_sources(suite, check_files)
    plan = expand(suite)
    for i, method in enumerate(methods):
        require(any(spec.label == method.label for spec in plan.runs.values()), f"methods[{i}].name",
                f"method '{method.name}' is refused for every regime: {'; '.join(plan.refused)}")
    _check_method_values(plan, {m.label: i for i, m in enumerate(methods)})
    return suite


def _tracking(raw: dict[str, Any]) -> TrackingSettings:
    """The ``tracking:`` section; a backend whose package is not installed is refused here, before any job."""
    settings = build_dataclass(TrackingSettings, raw.get("tracking"), "tracking")
    missing = missing_package(settings)
    require(missing is None, "tracking.backend", missing or "")
    return settings


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise SuiteError(key, "must be a non-empty list" + ("" if key in raw else " (missing)"))
    return value


def _dataset(raw: dict[str, Any], check_files: bool) -> Entry:
    """The dataset entry, buildable; with ``check_files`` its files must be where the source expects them."""
    dataset = entry(raw.get("dataset"), "dataset", dataset_registry, dataset_parameters)
    check_instantiable(dataset, dataset_registry, "dataset")
    try:
        if check_files:
            dataset_registry.get(dataset.name)(**dataset.params).check()
    except FileNotFoundError as err:
        raise SuiteError("dataset.root" if "root" in dataset.params else "dataset", str(err)) from None
    return dataset


def _regimes(raw: dict[str, Any]) -> tuple[Entry, ...]:
    """The regime entries, each buildable, each with a label of its own."""
    regimes = tuple(entry(r, f"regimes[{i}]", regime_registry, regime_parameters, ("name", "label"))
                    for i, r in enumerate(_list(raw, "regimes")))
    for i, regime in enumerate(regimes):
        check_instantiable(regime, regime_registry, f"regimes[{i}]")
        require([r.label for r in regimes].index(regime.label) == i, f"regimes[{i}].label",
                f"'{regime.label}' is used twice; give each {regime.name} regime its own label "
                f"(e.g. label: {regime.name}_{i})")
    return regimes


def _pairs(raw: dict[str, Any]) -> tuple[Pair, ...]:
    """The teacher -> student pairs, each naming known models."""
    from kdbench.models import is_model

    pairs = []
    for i, item in enumerate(_list(raw, "pairs")):
        pair = build_dataclass(Pair, item, f"pairs[{i}]")
        for role in ("teacher", "student"):
            model = getattr(pair, role)
            require(is_model(model), f"pairs[{i}].{role}", f"unknown model '{model}' (see: kdbench list models)")
        pairs.append(pair)
    return tuple(pairs)


def _methods(raw: dict[str, Any], pairs: tuple[Pair, ...], train: Recipe, registry: Registry[Any]) -> tuple[Entry, ...]:
    """The method entries: valid values, reference recipes followed (or deviations declared), labels unique,
    and each pair's per-method values valid."""
    methods = tuple(method_entry(m, f"methods[{i}]", registry, raw.get("train") or {})
                    for i, m in enumerate(_list(raw, "methods")))
    check_references(pairs, methods, train, registry)
    labels = [m.label for m in methods]
    for i, label in enumerate(labels):
        require(labels.index(label) == i, f"methods[{i}].label",
                f"'{label}' is used twice; give each variant its own label")
    check_pair_params(pairs, methods, registry)
    return methods


def _teacher_settings(raw: dict[str, Any], check_files: bool) -> TeacherSettings:
    """The teacher settings; with ``check_files`` every checkpoint exists and has its stated sha256."""
    settings = build_dataclass(TeacherSettings, raw.get("teacher"), "teacher")
    if check_files:
        for name in settings.sources:
            teachers.verify_source_file(settings.source(name), f"teacher.sources.{name}")
    return settings


def _check_unlabeled_dataset(suite: Suite) -> None:
    """A transfer set without training labels: only the unlabeled regime, no validation split, and every teacher
    from a file or pretrained weights (nothing to train one on)."""
    name = suite.dataset.name
    if getattr(dataset_registry.get(name), "has_train_labels", True):
        return
    for i, regime in enumerate(suite.regimes):
        require(not regime_registry.get(regime.name).labeled, f"regimes[{i}].name",
                f"dataset '{name}' has no training labels: only the unlabeled regime applies")
    require(suite.eval.val_fraction == 0, "eval.val_fraction",
            f"dataset '{name}' has no training labels to hold a validation split out of")
    for i, pair in enumerate(suite.pairs):
        require(pair.teacher in suite.teacher.sources, f"pairs[{i}].teacher",
                f"dataset '{name}' has no labels to train teacher '{pair.teacher}' on: give it a "
                f"checkpoint or pretrained weights under teacher.sources")


def _check_teacher_sources(suite: Suite, check_files: bool) -> None:
    """Every source names the teacher of some pair; with ``check_files`` every teacher file fits its
    architecture for this dataset's classes and channels (:func:`kdbench.teachers.check_source_fits`)."""
    names = {pair.teacher for pair in suite.pairs}
    for name in suite.teacher.sources:
        require(name in names, f"teacher.sources.{name}",
                f"'{name}' is not the teacher of any pair (teachers: {', '.join(sorted(names))})")
    if not check_files:
        return
    shape = dataset_registry.get(suite.dataset.name)(**suite.dataset.params).known_shape()
    for name in sorted(suite.teacher.sources):
        teachers.check_source_fits(suite.teacher.source(name), name, shape, f"teacher.sources.{name}")


def _check_method_values(plan: Plan, index: dict[str, int]) -> None:
    """Every distinct (method, values, pair) of the plan is built on the pair's networks
    (:func:`kdbench.pairing.value_refusal`), so that any value a job would refuse (``T: 0``, an impossible width)
    is refused now, naming its method entry (``methods[i].with[j]`` for a method a composition adds), before any
    job starts."""
    for spec in plan.runs.values():
        parts = [(f"methods[{index[spec.label]}]", spec.method, spec.method_params)]
        parts += [(f"methods[{index[spec.label]}].with[{j}]", part.name, part.params)
                  for j, part in enumerate(spec.compose)]
        for key, method, params in parts:
            problem = pairing.value_refusal(method, params, spec.teacher, spec.student)
            if problem:
                raise SuiteError(key, f"method '{method}' refuses its values on {spec.teacher} -> "
                                      f"{spec.student}: {problem}")
