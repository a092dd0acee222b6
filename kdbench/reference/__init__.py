"""Published top-1 numbers of the field's anchors, kept as data (``published.csv``) for the report's
``published`` column. Sources: RepDistiller/CRD (last epoch), mdistiller (best epoch), DIST_KD, torchdistill,
and the GenDD paper and README. Model names are kdbench's (CIFAR models carry the ``_cifar`` suffix)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdbench.reference.recipes import RecipeGap, recipe_gaps

__all__ = ["PUBLISHED", "RecipeGap", "load_published", "lookup", "published_teacher", "recipe_gaps"]

PUBLISHED = Path(__file__).with_name("published.csv")


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    """The reference table: dataset, regime, teacher, student, method, top1, epochs, primary, source, note."""
    frame = pd.read_csv(path, dtype={"epochs": "Int64"})
    frame["primary"] = frame["primary"].astype(bool)
    return frame


def lookup(table: pd.DataFrame, dataset: str, regime: str, teacher: str, student: str, method: str,
           epochs: int | None = None) -> pd.Series | None:
    """The primary published row for a cell and method (matching epochs when the row states them), or None.
    timm pretrained tags are ignored (``resnet34.tv_in1k`` is published as ``resnet34``)."""
    teacher, student = teacher.split(".")[0], student.split(".")[0]
    rows = table[(table["dataset"] == dataset) & (table["regime"] == regime) & (table["teacher"] == teacher)
                 & (table["student"] == student) & (table["method"] == method) & table["primary"]]
    if epochs is not None:
        rows = rows[rows["epochs"].isna() | (rows["epochs"] == epochs)]
    return None if rows.empty else rows.iloc[0]


def published_teacher(model: str, dataset: str | None = None, table: pd.DataFrame | None = None
                      ) -> pd.Series | None:
    """The published top-1 of a teacher network (the anchors' teacher files: RepDistiller's CIFAR-100 teachers,
    torchvision's ImageNet weights), or None. A timm tag is ignored (``resnet34.tv_in1k`` -> ``resnet34``)."""
    table = load_published() if table is None else table
    rows = table[(table["method"] == "teacher") & (table["teacher"] == model.split(".")[0]) & table["primary"]]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    return None if rows.empty else rows.iloc[0]
