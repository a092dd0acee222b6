"""The report's options: which methods the paired comparisons are taken against.

``baseline`` (default :data:`DEFAULT_BASELINE`, ``--baseline``): every ``Δ vs`` column, the leaderboard's
wins/ties/losses and probability of improvement, and the resolution line pair each method with it by seed.
``control`` (default :data:`DEFAULT_CONTROL`, ``--control``): the no-distillation run; a second ``Δ vs`` column
and the cost table's train-time ratio. The two are listed first in every table. The defaults are data
(``defaults.toml`` beside this module), so no module of the report names a method.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")


def _defaults(path: Path = DEFAULTS_FILE) -> dict[str, str]:
    with path.open("rb") as handle:
        return {key: str(value) for key, value in tomllib.load(handle).items()}


_DEFAULTS = _defaults()
DEFAULT_BASELINE: str = _DEFAULTS.get("baseline", "")
"""The label paired deltas are taken against unless ``--baseline`` names another."""
DEFAULT_CONTROL: str = _DEFAULTS.get("control", "")
"""The no-distillation control's label unless ``--control`` names another."""


@dataclass(frozen=True)
class ReportOptions:
    """What the report compares against: ``baseline`` (every paired delta, the leaderboard) and ``control``
    (a second delta column and the cost table's ratio)."""

    baseline: str = DEFAULT_BASELINE
    control: str = DEFAULT_CONTROL

    @property
    def baselines(self) -> tuple[str, str]:
        """The labels a ``Δ vs`` column is shown for, in column order."""
        return (self.baseline, self.control)

    @property
    def first(self) -> tuple[str, str]:
        """The labels every table lists first, in this order."""
        return (self.control, self.baseline)
