"""What the report knows of a method: only what the method declares, as data (:class:`kdbench.method.ReportHints`).

The hints are looked up once per report, through the method registry, for each distinct method name of the loaded
records (:func:`lookup`), and handed down as one :class:`Hints` object: :mod:`~kdbench.report.load` reads the
diagnostics entries they name, :mod:`~kdbench.report.variants` describes settings with their template and pairs
variants with a method's reference, the plots draw the sweeps and parameters they declare, and the legend names
their labels. A method the registry does not know (the records of a plugin not installed here) gets the default
hints, which declare nothing: its runs are reported like any other method's, without extra settings or sweeps.
"""

from __future__ import annotations

import math
import string
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from kdbench.method import ReportHints


def default_hints() -> ReportHints:
    """The hints of a method that declares none (and of a method the registry does not know)."""
    from kdbench.method import ReportHints

    return ReportHints()


class _Blank(dict):
    """Format arguments where a field the settings lack reads as ``None``."""

    def __missing__(self, key: str) -> None:
        return None


def _plain(value: Any) -> Any:
    """A whole float as an int (``5.0`` -> ``5``), as a setting was written before a frame made it a float."""
    return int(value) if isinstance(value, float) and math.isfinite(value) and value.is_integer() else value


def describe(hints: ReportHints, settings: Mapping[str, Any] | None) -> str:
    """The text of one settings mapping in a table cell: the fixed text of ``hints.setting_labels`` whose value is
    one of the settings' values, else ``hints.setting_text`` formatted with the settings; ``""`` without settings,
    ``key=value`` pairs where the method declares no template or the template does not fit them."""
    if not settings:
        return ""
    values = {str(v) for v in settings.values()}
    fixed = next((text for value, text in hints.setting_labels if value in values), None)
    if fixed is not None:
        return fixed
    try:
        if hints.setting_text:
            return string.Formatter().vformat(hints.setting_text, (), _Blank(settings))
    except (TypeError, ValueError):
        pass
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def series_text(hints: ReportHints, values: Mapping[str, Any]) -> str:
    """The legend text of one curve of a method's sweep plot: its ``sweep_series`` values, written with the part of
    ``setting_text`` that names them (each other field left out with the text just before it, and with the text
    after it where that ends the template); ``key value`` pairs where the method declares no template or it does
    not fit."""
    values = {k: _plain(v) for k, v in values.items()}
    kept, dropped = [], False
    for literal, name, spec, conversion in string.Formatter().parse(hints.setting_text):
        if name is None:
            kept += [] if dropped else [literal]
        elif name in values:
            kept.append(f"{literal}{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}")
        dropped = name is not None and name not in values
    try:
        if any(name in values for _, name, _, _ in string.Formatter().parse(hints.setting_text)):
            return "".join(kept).format_map(_Blank(values)).strip()
    except (TypeError, ValueError):
        pass
    return " ".join(f"{k} {v}" for k, v in values.items())


@dataclass(frozen=True)
class Hints:
    """The declared :class:`~kdbench.method.ReportHints` of each method of one report, by method name."""

    by_method: Mapping[str, ReportHints] = field(default_factory=dict)

    def of(self, method: object) -> ReportHints:
        """The hints of ``method`` (a method name); the default ones for a name not looked up or not registered."""
        found = self.by_method.get(str(method))
        return found if found is not None else default_hints()

    def labels(self, own_predictor: bool = False) -> list[str]:
        """The labels the report's methods declare, once each, in method-name order (``own_predictor``: only of
        the methods that also declare their own predictor's settings)."""
        return list(dict.fromkeys(h.label for _, h in sorted(self.by_method.items())
                                  if h.label and (h.own_predictor_settings or not own_predictor)))


def _registry() -> Any:
    """The method registry, every method discovered; what is registered so far where discovery fails."""
    from kdbench.method import discover_methods, method_registry

    try:
        return discover_methods()
    except ImportError as err:  # the report still works: those methods get the default hints
        print(f"warning: report hints: method discovery failed ({err}); unknown methods declare nothing",
              file=sys.stderr)
        return method_registry


def lookup(methods: Iterable[object]) -> Hints:
    """The hints of each distinct method name in ``methods``, each looked up once in the method registry; a name
    the registry does not know gets the default hints (missing names are skipped)."""
    names = list(dict.fromkeys(str(m) for m in methods if isinstance(m, str)))
    if not names:
        return Hints()
    registry = _registry()
    return Hints({name: registry.get(name).report_hints if name in registry else default_hints() for name in names})


def hints_of(frame: pd.DataFrame, hints: Hints | None = None) -> Hints:
    """``hints`` where given (the report's, looked up once), else the hints of the frame's methods."""
    if hints is not None:
        return hints
    return lookup(frame.method) if "method" in frame else Hints()
