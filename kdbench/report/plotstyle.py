"""What every plot of the report shares: the non-interactive backend, one colour per method label (a stable
function of the label), file names, titles, the teacher's dashed line, and saving PNG + SVG atomically."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors
DPI = 150


def slug(*parts: object) -> str:
    """A file-name-safe name from parts (``digits_balanced_t_s``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(str(p) for p in parts)).strip("_")


def method_color(label: str) -> tuple[float, ...]:
    """The colour of a method label in every plot and report: from a stable hash of the label (never from the
    order the methods happen to be drawn in, and never from a list of names)."""
    return PALETTE[int(hashlib.md5(str(label).encode()).hexdigest(), 16) % len(PALETTE)]


def cell_title(key: Sequence[object]) -> str:
    """``dataset · regime · teacher -> student``."""
    return " · ".join(str(k) for k in key[:2]) + f" · {key[2]} -> {key[3]}"


def save(fig: plt.Figure, path: Path) -> Path:
    """PNG (150 dpi) and SVG beside it, each written atomically; the figure is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for target, kind in ((path, "png"), (path.with_suffix(".svg"), "svg")):
        tmp = target.with_suffix(f".tmp.{kind}")
        fig.savefig(tmp, dpi=DPI, format=kind)
        tmp.replace(target)
    plt.close(fig)
    return path


def teacher_line(ax: plt.Axes, teacher_top1: float | None) -> None:
    """The teacher's top-1 as a dashed horizontal line, where it is known."""
    if teacher_top1 is not None and np.isfinite(teacher_top1):
        ax.axhline(teacher_top1, color="0.3", linestyle="--", linewidth=1, label=f"teacher {teacher_top1:.2f}")
