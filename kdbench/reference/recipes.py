"""The authors' per-pair training recipes, kept as data (``recipes.csv``) with the source of every value.

One row is one setting of one method in one published setting (``cifar100``, ``imagenet``, ``imagenet_lt``,
``imagenet_unlabeled``) for a teacher/student pattern (``*`` matches any model; ImageNet models are named without
a timm tag, so ``resnet34`` matches ``resnet34.tv_in1k``). ``key`` is ``params.<hyper-parameter>`` (the method's
keyword) or ``train.<recipe field>``; ``value`` is a YAML scalar or list; ``source`` names the authors' file (and
the flag) it comes from. Where several rows match a cell, the most specific one wins: a row naming both models
beats one naming the student, which beats ``*``/``*``. A suite's method entry ``recipe: <setting>`` takes its
values from here (see :mod:`kdbench.suite`).

Where a method has no published recipe for a setting (most feature methods on ImageNet), ``recipe_gaps.csv`` says
so: one row per (method, setting) naming what is used instead (kdbench's defaults, the CIFAR values of a named
source) and why. Nothing is invented for those cells.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).with_name("recipes.csv")
GAPS = Path(__file__).with_name("recipe_gaps.csv")
KEY_KINDS = ("params", "train")


@dataclass(frozen=True)
class RecipeValue:
    """One value of a reference recipe and where it comes from."""

    key: str  # "params.smooth" or "train.lr"
    value: Any
    source: str

    @property
    def kind(self) -> str:
        """``params`` (a method hyper-parameter) or ``train`` (a recipe field)."""
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        """The hyper-parameter or recipe field the value sets."""
        return self.key.split(".", 1)[1]


@dataclass(frozen=True)
class RecipeRow:
    """A row of ``recipes.csv``."""

    method: str
    setting: str
    teacher: str
    student: str
    key: str
    value: Any
    source: str

    def matches(self, teacher: str, student: str) -> bool:
        """Whether the row's patterns match a pair (timm tags ignored)."""
        return (fnmatch.fnmatchcase(_untagged(teacher), self.teacher)
                and fnmatch.fnmatchcase(_untagged(student), self.student))

    @property
    def specificity(self) -> int:
        """2 for a row naming both models, 1 for one naming the student (or teacher), 0 for ``*``/``*``."""
        return sum(not any(c in pattern for c in "*?[") for pattern in (self.teacher, self.student))


def _untagged(model: str) -> str:
    return model.split(".")[0]


class RecipeTableError(ValueError):
    """``recipes.csv`` is malformed: two equally specific rows disagree, or a key is not params./train."""


@dataclass(frozen=True)
class RecipeTable:
    """All reference recipes."""

    rows: tuple[RecipeRow, ...]

    def settings(self, method: str) -> list[str]:
        """The published settings a method has a recipe for."""
        return sorted({row.setting for row in self.rows if row.method == method})

    def for_cell(self, method: str, setting: str, teacher: str, student: str) -> dict[str, RecipeValue]:
        """Every value the reference recipe sets for one (method, setting, teacher, student), by key."""
        best: dict[str, tuple[int, RecipeRow]] = {}
        for row in self.rows:
            if row.method != method or row.setting != setting or not row.matches(teacher, student):
                continue
            held = best.get(row.key)
            if held is None or row.specificity > held[0]:
                best[row.key] = (row.specificity, row)
            elif row.specificity == held[0] and row.value != held[1].value:
                raise RecipeTableError(
                    f"{method}/{setting} {teacher} -> {student}: rows '{held[1].teacher} -> {held[1].student}' and "
                    f"'{row.teacher} -> {row.student}' both set {row.key} ({held[1].value!r} vs {row.value!r})")
        return {key: RecipeValue(key, row.value, row.source) for key, (_, row) in sorted(best.items())}


def parse_row(raw: dict[str, str], line: int) -> RecipeRow:
    """A CSV row as a :class:`RecipeRow`; its value parsed as safe YAML."""
    key = raw["key"]
    kind, _, name = key.partition(".")
    if kind not in KEY_KINDS or not name:
        raise RecipeTableError(f"recipes.csv line {line}: key '{key}' must be params.<name> or train.<name>")
    if not raw.get("source"):
        raise RecipeTableError(f"recipes.csv line {line}: {key} has no source")
    try:
        value = yaml.safe_load(raw["value"])
    except yaml.YAMLError as err:
        raise RecipeTableError(f"recipes.csv line {line}: {key} value {raw['value']!r} is not YAML ({err})") from None
    return RecipeRow(method=raw["method"], setting=raw["setting"], teacher=raw["teacher"], student=raw["student"],
                     key=key, value=value, source=raw["source"])


def read_recipes(path: Path = RECIPES) -> RecipeTable:
    """Read a recipe table (the shipped one by default)."""
    with open(path, newline="") as handle:
        return RecipeTable(tuple(parse_row(raw, line) for line, raw in enumerate(csv.DictReader(handle), start=2)))


@functools.lru_cache(maxsize=1)
def reference_recipes() -> RecipeTable:
    """The shipped table, read once."""
    return read_recipes()


@dataclass(frozen=True)
class RecipeGap:
    """A (method, setting) without a published recipe (or with one for some pairs only): what is used and why."""

    method: str
    setting: str
    what_is_used: str
    why: str


def read_gaps(path: Path = GAPS) -> tuple[RecipeGap, ...]:
    """Read a gap table (the shipped one by default); every field must be non-empty."""
    gaps = []
    with open(path, newline="") as handle:
        for line, raw in enumerate(csv.DictReader(handle), start=2):
            missing = [k for k in ("method", "setting", "what_is_used", "why") if not (raw.get(k) or "").strip()]
            if missing:
                raise RecipeTableError(f"{path.name} line {line}: empty {', '.join(missing)}")
            gaps.append(RecipeGap(raw["method"], raw["setting"], raw["what_is_used"], raw["why"]))
    return tuple(gaps)


@functools.lru_cache(maxsize=1)
def recipe_gaps() -> tuple[RecipeGap, ...]:
    """The shipped gap table, read once: the (method, setting) cells with no (or only a partial) published recipe."""
    return read_gaps()
