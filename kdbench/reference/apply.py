"""Apply a reference recipe (:mod:`kdbench.reference.recipes`) to one (method, pair) cell of a suite.

A suite's method entry with ``recipe: <setting>`` takes every value the authors' table gives for the cell,
except those the suite sets explicitly. An explicit value equal to the table's is fine; one that differs must
be declared under the entry's ``deviations: {<key>: <reason>}``, else the suite is refused. Declared deviations
travel with every run they apply to (its spec's ``provenance``), so the report can mark those cells.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdbench.reference.recipes import RecipeTable, RecipeValue, reference_recipes


@dataclass(frozen=True)
class Deviation:
    """A value a suite runs instead of the reference recipe's, and why."""

    key: str
    value: Any
    reference: Any
    source: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The deviation as it is stored in a run's spec."""
        return {"key": self.key, "value": self.value, "reference": self.reference, "source": self.source,
                "reason": self.reason}


@dataclass(frozen=True)
class CellRecipe:
    """What the reference recipe sets in one cell: the values to fill in (keys the suite leaves unset), by kind,
    and the declared deviations that apply to the cell."""

    setting: str  # "<method>/<setting>", e.g. "gendd/cifar100"
    params: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    deviations: tuple[Deviation, ...] = ()

    def provenance(self) -> dict[str, Any]:
        """The run spec's ``provenance`` entry (not hashed into the run id)."""
        return {"recipe": self.setting, "deviations": [d.to_dict() for d in self.deviations]}


class UndeclaredDeviation(ValueError):
    """An explicit value contradicts the reference recipe and the suite does not declare it."""

    def __init__(self, ref: RecipeValue, value: Any, setting: str) -> None:
        self.ref, self.value, self.setting = ref, value, setting
        super().__init__(f"{value!r} contradicts the authors' {ref.name} = {ref.value!r} of recipe '{setting}' "
                         f"({ref.source}); declare it under deviations: {{{ref.key}: <reason>}} or drop it")


def same_value(a: Any, b: Any) -> bool:
    """Equality of recipe values: numbers within 1e-9 relative, sequences element-wise, else ``==``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def apply_reference(method: str, setting: str, teacher: str, student: str, explicit_params: Mapping[str, Any],
                    explicit_train: Mapping[str, Any], declared: Mapping[str, str],
                    table: RecipeTable | None = None) -> CellRecipe:
    """The reference recipe of a cell given what the suite sets explicitly (a method's own keywords and pair
    overrides; its own ``train`` keys) and the deviations it declares. Raises :class:`UndeclaredDeviation`."""
    table = reference_recipes() if table is None else table
    values = table.for_cell(method, setting, teacher, student)
    name = f"{method}/{setting}"
    params: dict[str, Any] = {}
    train: dict[str, Any] = {}
    deviations = []
    for ref in values.values():
        explicit = explicit_params if ref.kind == "params" else explicit_train
        fill = params if ref.kind == "params" else train
        if ref.name not in explicit:
            fill[ref.name] = ref.value
        elif not same_value(explicit[ref.name], ref.value):
            if ref.key not in declared:
                raise UndeclaredDeviation(ref, explicit[ref.name], name)
            deviations.append(Deviation(ref.key, explicit[ref.name], ref.value, ref.source, declared[ref.key]))
    return CellRecipe(name, params, train, tuple(deviations))
