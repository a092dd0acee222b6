"""Every record below a folder, read once, as one pandas frame: one row per run (what ``runs.parquet`` holds).

This is the only module of the report that reads ``result.json`` files (through :func:`kdbench.store.scan_results`)
and the only one that knows their layout; every table, statistic and plot works on :attr:`Records.frame`. A run's
columns: its spec (method, label, model, student, teacher, dataset, regime, seed, epochs, ``param_*`` for its
scalar method parameters, ``recipe_*``), its state and error, stability, metrics, cost, ``env_*``, the predictors it
was evaluated with, and, for a run whose method evaluated other predictors of the trained model at the end
(``extra_evaluations``), one ``eval/<variant>/<field>`` column per value of each (see :func:`evaluation_column`),
with the settings the method's report hints point to (:mod:`~kdbench.report.hints`, looked up once here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench import store
from kdbench.report.hints import Hints, lookup

EVAL_PREFIX = "eval/"
SETTING = "setting."  # a field of a variant's settings: ``eval/<variant>/setting.<key>``
OWN = "own prediction"  # the variant name of a run's own final prediction


@dataclass
class Records:
    """All records under a folder: a flat frame of readable ones, and what could not be used."""

    frame: pd.DataFrame
    problems: list[tuple[str, str]] = field(default_factory=list)   # (path, problem)
    missing: list[tuple[str, str]] = field(default_factory=list)    # (suite, run id)
    stale: list[tuple[str, str, str]] = field(default_factory=list)  # (suite, run id, label): not in the plan
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (path, problem): invalid values left out
    set_aside: list[str] = field(default_factory=list)  # invalid records `run` moved aside (and redid)
    hints: Hints | None = None  # the report hints of the frame's methods, looked up once (None: not yet)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _scalars(values: Any, kinds: tuple[type, ...] = (int, float), prefix: str = "") -> dict[str, Any]:
    return {f"{prefix}{k}": v for k, v in _mapping(values).items() if isinstance(v, kinds)}


SCALAR = (int, float, str, bool)


def run_row(record: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """One record as one row of plain values (its ``eval/`` columns apart: see :func:`evaluation_values`)."""
    spec = _mapping(record.get("spec"))
    stability = _mapping(record.get("stability"))
    regime = _mapping(spec.get("regime"))
    row = {
        "path": str(path.parent), "run_id": record.get("run_id"), "state": record.get("state"),
        "role": spec.get("role"), "method": spec.get("method"), "label": spec.get("label", spec.get("method")),
        "model": spec.get("model"), "student": spec.get("student"), "teacher": spec.get("teacher"),
        "teacher_id": spec.get("teacher_id"), "dataset": _mapping(spec.get("dataset")).get("name"),
        "regime": regime.get("label") or regime.get("name"), "seed": spec.get("seed"), "epochs": spec.get("epochs"),
        "error": record.get("error"), "diverged_epoch": stability.get("diverged_epoch"),
        "loss_spikes": stability.get("loss_spikes"), "grad_norm_max": stability.get("grad_norm_max"),
        "nonfinite_events": stability.get("nonfinite_events"),
        **_provenance(spec.get("provenance")),
        **_tuned(spec.get("tuned")),
    }
    row.update(_scalars(spec.get("method_params"), SCALAR, "param_"))
    metrics = _scalars(record.get("metrics"))
    row.update(metrics)
    row.update(_predictor_columns(metrics, _mapping(record.get("predictors"))))
    row.update(val_size=_mapping(record.get("data")).get("val_size"), wall_seconds=record.get("wall_seconds"))
    row.update(_scalars(record.get("cost")))
    row.update(_scalars(spec.get("recipe"), SCALAR, "recipe_"))
    row.update(_scalars(record.get("env"), SCALAR, "env_"))
    return row


def _predictor_columns(metrics: Mapping[str, Any], predictors: Mapping[str, Any]) -> dict[str, Any]:
    """One predictor per column. ``top1_last/best/val`` are the method's own (final) predictor; ``epoch_top1_*``
    the per-epoch one. For a method whose final predictor differs (an N-sample sampler: its runner re-evaluates
    the last and the per-epoch-best epoch with it, keeping the per-epoch values as ``*_per_epoch``), its final
    ``best`` is the better of those two evaluations (so best >= last), and it has no final val-selected value
    (that epoch was never evaluated with the final predictor)."""
    differs = "top1_last_per_epoch" in metrics
    out: dict[str, Any] = {"predictor_final": predictors.get("final"), "predictor_epoch": predictors.get("per_epoch"),
                           "final_predictor_differs": differs}
    if not differs:
        out.update({f"epoch_{key}": metrics.get(key) for key in ("top1_last", "top1_best", "top1_val")})
        return out
    out.update(epoch_top1_last=metrics.get("top1_last_per_epoch"), epoch_top1_best=metrics.get("top1_best_per_epoch"),
               epoch_top1_val=metrics.get("top1_val"))
    finals = [v for v in (metrics.get("top1_last"), metrics.get("top1_best")) if v is not None]
    out.update(top1_best=max(finals) if finals else None, top1_val=None, top5_val=None)
    return out


def _plain_values(values: Any) -> str:
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(_mapping(values).items()))


def _tuned(tuned: Any) -> dict[str, Any]:
    """How a tuned run's values were chosen (:mod:`kdbench.tuning`), as plain columns; nothing for other runs."""
    tuned = _mapping(tuned)
    if not tuned:
        return {}
    spent = _mapping(tuned.get("budget"))
    space = "; ".join(f"{k} {v}" for k, v in sorted(_mapping(tuned.get("space")).items()))
    return {"tuned_chosen": _plain_values(tuned.get("chosen")), "tuned_space": space,
            "tuned_trials": f"{tuned.get('trials_finished')}/{spent.get('trials')}",
            "tuned_budget": f"{spent.get('trials')} x {len(spent.get('seeds') or [])} seed(s) x "
                            f"{spent.get('epochs')} epochs, {spent.get('search')}, on {spent.get('metric')}",
            "tuned_score": tuned.get("chosen_score"), "tuned_hours": tuned.get("cost_device_hours"),
            "tuned_device": tuned.get("device")}


def _provenance(provenance: Any) -> dict[str, Any]:
    """A run's reference recipe (``<method>/cifar100``) and the keys it deviates from it on, as report columns."""
    provenance = _mapping(provenance)
    if not provenance.get("recipe"):
        return {}
    keys = [str(_mapping(d).get("key", "")).split(".", 1)[-1] for d in provenance.get("deviations") or []
            if isinstance(d, Mapping)]
    return {"reference_recipe": str(provenance.get("recipe")), "deviations": ", ".join(sorted(keys))}


def evaluation_column(variant: str, name: str) -> str:
    """The frame's column of one value of one prediction variant: ``eval/<variant>/<name>`` (a setting's
    name is ``setting.<key>``)."""
    return f"{EVAL_PREFIX}{variant}/{name}"


def evaluation_values(record: Mapping[str, Any], hints: Hints | None = None) -> dict[str, Any]:
    """The ``eval/`` columns of one record: every number of each extra evaluation and every scalar of its
    settings, and the settings of the run's own prediction (variant :data:`OWN`), where the record's method
    declares the diagnostics entries that hold them (``hints``: the report's, by method name; the method's
    ``predictor_settings`` and ``own_predictor_settings``); ``{}`` without extra evaluations."""
    evaluations = _mapping(record.get("extra_evaluations"))
    if not evaluations:
        return {}
    declared = (hints or Hints()).of(_mapping(record.get("spec")).get("method"))
    diagnostics = _mapping(record.get("diagnostics"))
    settings = _mapping(diagnostics.get(declared.predictor_settings)) if declared.predictor_settings else {}
    own = diagnostics.get(declared.own_predictor_settings) if declared.own_predictor_settings else None
    out = {evaluation_column(OWN, SETTING + k): v for k, v in _scalars(own, SCALAR).items()}
    for name, result in evaluations.items():
        values = {**_scalars(result), **_scalars(settings.get(name), SCALAR, SETTING)}
        out.update({evaluation_column(str(name), k): v for k, v in values.items()})
    return out


def evaluations_of(row: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A frame row's (``frame.to_dict("records")``) ``eval/`` columns regrouped: variant -> its values (settings
    under ``setting.<key>``); missing values are left out, and so is a variant without any value. Variants come in
    column order, the own prediction's settings (variant :data:`OWN`) included."""
    out: dict[str, dict[str, Any]] = {}
    for column, value in row.items():
        if not str(column).startswith(EVAL_PREFIX):
            continue
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        variant, name = str(column).removeprefix(EVAL_PREFIX).rsplit("/", 1)
        out.setdefault(variant, {})[name] = value
    return out


def settings_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """A variant's settings from its values (:func:`evaluations_of`), ``setting.`` taken off the names."""
    return {k.removeprefix(SETTING): v for k, v in values.items() if k.startswith(SETTING)}


def _plans(root: Path, problems: list[tuple[str, str]]) -> tuple[dict[Path, set[str]], list[tuple[str, str]]]:
    """Per suite folder the ids its last plan names (``suite.json``), and the ids it names but has no record of."""
    plans: dict[Path, set[str]] = {}
    missing = []
    for suite_file in sorted(root.rglob(store.SUITE)):
        try:
            expected = store.read_json(suite_file)
        except store.StoreReadError as err:
            problems.append((str(suite_file), err.problem))
            continue
        folder = suite_file.parent
        plans[folder] = set()
        for kind in ("teachers", "runs"):
            ids = expected.get(kind, [])
            plans[folder].update(ids)
            missing += [(folder.name, rid) for rid in ids if not (folder / kind / rid / store.RESULT).exists()]
    return plans, missing


def load_records(root: Path, include_stale: bool = False) -> Records:
    """Read every record below ``root`` once; list unreadable ones and runs a suite expects but has no record of.

    A suite folder's ``suite.json`` names the runs of the plan that last ran there. A record in that folder that
    the plan does not name (left over from an earlier version of the suite, e.g. before a method's parameters
    changed) is listed as stale and left out of the tables, so a cell never mixes two versions of a method;
    ``include_stale`` (``--all``) puts them in the tables too (still listed)."""
    root = Path(root)
    problems: list[tuple[str, str]] = []
    plans, missing = _plans(root, problems)
    rows, kept, stale, dropped = [], [], [], []
    for scanned in store.scan_results(root):
        if scanned.record is None:
            problems.append((str(scanned.path), scanned.problem or "unreadable"))
            continue
        dropped += [(str(scanned.path), what) for what in scanned.dropped]
        if _mapping(scanned.record.get("spec")).get("stage") == "tune":
            continue  # a tuning trial: reported through the final runs it chose (their spec's ``tuned``)
        folder = scanned.path.parent.parent.parent  # <suite>/{runs,teachers}/<id>/result.json
        if folder in plans and scanned.path.parent.name not in plans.get(folder, set()):
            spec = _mapping(scanned.record.get("spec"))
            stale.append((folder.name, scanned.path.parent.name, str(spec.get("label", spec.get("method")))))
            if not include_stale:
                continue
        rows.append(run_row(scanned.record, scanned.path))
        kept.append(scanned.record)
    hints = lookup(row.get("method") for row in rows)  # once per report, each method name once
    evaluations = [evaluation_values(record, hints) for record in kept]
    frame = pd.DataFrame(rows)
    if any(evaluations):  # object columns: a setting keeps its JSON type (an int stays an int)
        frame = pd.concat([frame, pd.DataFrame(evaluations, index=frame.index, dtype=object)], axis=1)
    set_aside = sorted(str(p) for p in root.rglob(f"{store.RESULT}.corrupt-*"))
    return Records(frame, problems, missing, stale, dropped, set_aside, hints)
