"""A suite's named components: dataset, regime and method entries resolved against their registries (parameters
checked against each class's signature, defaults filled in), and a method's reference recipe (``recipe:`` and
``deviations:``) checked cell by cell."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any

from kdbench.compose import composite_label, has_own_stages
from kdbench.config import build_dataclass, require, resolve_params
from kdbench.method import hyperparameters
from kdbench.reference.apply import UndeclaredDeviation
from kdbench.reference.recipes import reference_recipes
from kdbench.registry import Registry, UnknownNameError
from kdbench.spec import Recipe
from kdbench.suite.schema import Entry, Pair, SuiteError


def entry(raw: Any, key: str, registry: Registry[Any], params_of: Callable[[Any], dict[str, Any]],
          reserved: tuple[str, ...] = ("name",)) -> Entry:
    """A component entry (a name, or a mapping with ``name`` and parameters) resolved against ``registry``:
    its parameters checked against ``params_of(cls)`` and the class's type hints, defaults filled in."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise SuiteError(key, "expected a mapping with a 'name'")
    name = raw["name"]
    if not isinstance(name, str):
        raise SuiteError(f"{key}.name", f"expected a string, got {name!r}")
    try:
        cls = registry.get(name)
    except UnknownNameError as err:
        raise SuiteError(f"{key}.name", str(err)) from None
    given = {k: v for k, v in raw.items() if k not in reserved}
    init = cls.__init__
    hints = typing.get_type_hints(init) if init is not object.__init__ else {}
    params = resolve_params(params_of(cls), hints, given, key, f"{registry.kind} '{name}'")
    label = raw.get("label", name)
    if not isinstance(label, str) or not label:
        raise SuiteError(f"{key}.label", f"expected a non-empty string, got {label!r}")
    return Entry(name=name, params=params, label=label, given={k: params[k] for k in given})


def check_instantiable(item: Entry, registry: Registry[Any], key: str) -> None:
    """The entry's class accepts its parameters (its own ``__init__`` checks), else a :class:`SuiteError`."""
    try:
        registry.get(item.name)(**item.params)
    except (ValueError, TypeError) as err:
        raise SuiteError(key, str(err)) from None


def method_entry(raw: Any, key: str, registry: Registry[Any], suite_train: dict[str, Any]) -> Entry:
    """A method entry: its hyper-parameters, an optional ``label``, an optional ``train`` recipe override, an
    optional reference ``recipe`` (a setting of ``kdbench/reference/recipes.csv``) and its ``deviations``, and
    the methods added to it (``with:``, :func:`composition`)."""
    item = entry(raw, key, registry, hyperparameters, ("name", "label", "train", "recipe", "deviations", "with"))
    raw = raw if isinstance(raw, dict) else {}
    item = dataclasses.replace(item, **_reference_of(raw, key, item.name))
    if raw.get("with") is not None:
        added = composition(raw["with"], f"{key}.with", registry, item.name)
        label = raw.get("label", composite_label(item.name, [part.name for part in added]))
        item = dataclasses.replace(item, compose=added, label=label)
    own = raw.get("train")
    if own is None:
        return item
    if not isinstance(own, dict):
        raise SuiteError(f"{key}.train", f"expected a mapping, got {own!r}")
    return dataclasses.replace(item, train=build_dataclass(Recipe, {**suite_train, **own}, f"{key}.train"),
                               train_overrides=dict(own))


def composition(raw: Any, key: str, registry: Registry[Any], primary: str) -> tuple[Entry, ...]:
    """A method entry's ``with:``: one name, one mapping or a list of them, each another registered method with
    its hyper-parameters (checked as a method entry's are, errors at ``<key>[j].<param>``), each once, none the
    entry's own method, none with stages of its own (:func:`kdbench.compose.has_own_stages`)."""
    items = raw if isinstance(raw, list) else [raw]
    require(len(items) > 0, key, "expected a method or a non-empty list of methods to add")
    added: list[Entry] = []
    for j, item in enumerate(items):
        where = f"{key}[{j}]"
        part = entry(item, where, registry, hyperparameters)
        require(part.name != primary, f"{where}.name", f"'{primary}' cannot be added to itself")
        require(part.name not in [p.name for p in added], f"{where}.name", f"'{part.name}' is added twice")
        require(not has_own_stages(registry.get(part.name)), f"{where}.name",
                f"method '{part.name}' has stages of its own: it can only be the method a composition adds to "
                f"(write {{name: {part.name}, with: [{primary}]}})")
        added.append(dataclasses.replace(part, label=part.name))
    return tuple(added)


def _reference_of(raw: dict[str, Any], key: str, method: str) -> dict[str, Any]:
    """A method entry's ``recipe`` (checked against the reference table) and ``deviations`` (key -> reason)."""
    setting, deviations = raw.get("recipe"), raw.get("deviations")
    if setting is None:
        require(deviations is None, f"{key}.deviations", "deviations need a reference recipe (recipe: <setting>)")
        return {}
    known = reference_recipes().settings(method)
    require(isinstance(setting, str) and setting in known, f"{key}.recipe",
            f"no reference recipe '{setting}' for method '{method}' (known: {', '.join(known) or 'none'})")
    deviations = {} if deviations is None else deviations
    require(isinstance(deviations, dict), f"{key}.deviations",
            f"expected a mapping of <params.name | train.name>: <reason>, got {deviations!r}")
    for name, reason in deviations.items():
        require(isinstance(name, str) and name.split(".", 1)[0] in ("params", "train") and "." in name,
                f"{key}.deviations.{name}", "a deviation key is params.<name> or train.<name>")
        require(isinstance(reason, str) and reason.strip() != "", f"{key}.deviations.{name}",
                "give the reason for running another value than the authors' (a non-empty string)")
    return {"reference": setting, "deviations": dict(deviations)}


def check_references(pairs: Sequence[Pair], methods: Sequence[Entry], train: Recipe, registry: Registry[Any]) -> None:
    """Every cell of a method with a reference recipe follows it, or deviates where the suite declares it;
    every declared deviation applies to some cell; the values the recipe fills in are valid."""
    for i, method in enumerate(methods):
        if method.reference is None:
            continue
        cls = registry.get(method.name)
        used: set[str] = set()
        for j, pair in enumerate(pairs):
            try:
                cell = pair.reference(method)
            except UndeclaredDeviation as err:
                by_pair = err.ref.name in pair.overrides(method)
                key = (f"pairs[{j}].params.{method.label}.{err.ref.name}" if err.ref.kind == "params" and by_pair
                       else f"methods[{i}].{err.ref.name}" if err.ref.kind == "params"
                       else f"methods[{i}].train.{err.ref.name}")
                raise SuiteError(key, f"{pair.teacher} -> {pair.student}: {err}") from None
            used.update(d.key for d in cell.deviations)
            where = f"methods[{i}] (recipe {cell.setting}, {pair.teacher} -> {pair.student})"
            resolve_params(hyperparameters(cls), typing.get_type_hints(cls.__init__),
                           pair.method_params(method, cell), where, f"method '{method.name}'")
            pair.recipe(train, method, cell).check(where + ".train")
        for name in method.deviations:
            require(name in used, f"methods[{i}].deviations.{name}",
                    f"no cell deviates from the reference value of {name} (recipe {method.name}/{method.reference}):"
                    " remove the declaration")


def check_pair_params(pairs: Sequence[Pair], methods: Sequence[Entry], registry: Registry[Any]) -> None:
    """Each pair's ``params`` names a method of the suite (or a registered one, kept inert) and gives it valid
    hyper-parameters."""
    labels = [m.label for m in methods]
    for i, pair in enumerate(pairs):
        for label, overrides in pair.params.items():
            key = f"pairs[{i}].params.{label}"
            # a method the suite does not run (e.g. after `extends:` replaced the methods) keeps inert settings
            known = label in labels or label in registry.names()
            require(known, key, f"no method labelled '{label}' in this suite (labels: {', '.join(labels)})")
            require(isinstance(overrides, dict), key, f"expected a mapping of hyper-parameters, got {overrides!r}")
            name = methods[labels.index(label)].name if label in labels else label
            given = methods[labels.index(label)].params if label in labels else {}
            cls = registry.get(name)
            resolve_params(hyperparameters(cls), typing.get_type_hints(cls.__init__), {**given, **overrides},
                           key, f"method '{name}'")

