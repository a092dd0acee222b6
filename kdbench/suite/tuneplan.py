"""Tuning in the plan: the trial runs of every (pair, regime, method) cell, and the final runs with each cell's
chosen values (:mod:`kdbench.suite.tune` declares ``tune:``; :mod:`kdbench.tuning` runs the two stages)."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import coerce, jsonable
from kdbench.method import discover_methods
from kdbench.store.runspec import RunSpec
from kdbench.suite.plan import Plan, expand, spec_id
from kdbench.suite.schema import Suite
from kdbench.suite.tune import candidates, split_values, trial_recipe

CellKey = tuple[str, str, str, str]  # teacher, student, regime (as shown), method label


def cell_of(spec: RunSpec) -> CellKey:
    """The (pair, regime, method) cell a run belongs to."""
    return (spec.teacher, spec.student or spec.model, spec.regime.shown, spec.label)


def cell_name(key: CellKey) -> str:
    """``kd x balanced (t -> s)``."""
    teacher, student, regime, label = key
    return f"{label} x {regime} ({teacher} -> {student})"


@dataclass
class Trial:
    """One trial run of a cell: its configuration (index in the cell's candidates), seed and run id."""

    index: int
    values: dict[str, Any]
    seed: int
    run_id: str


@dataclass
class TuningPlan:
    """The trial stage of a tuned suite: teacher jobs and trial runs, and each cell's trials."""

    plan: Plan
    cells: dict[CellKey, list[Trial]] = field(default_factory=dict)


def _typed_params(method: str, params: dict[str, Any], where: str) -> dict[str, Any]:
    init = discover_methods().get(method).__init__
    hints = typing.get_type_hints(init)
    return jsonable({name: coerce(value, hints.get(name, Any), f"{where}.{name}") for name, value in params.items()})


def with_values(spec: RunSpec, values: dict[str, Any], **changes: Any) -> RunSpec:
    """``spec`` with a configuration's training settings in its recipe and hyper-parameters in its parameters."""
    train_values, param_values = split_values(values)
    recipe = changes.pop("recipe", spec.recipe)
    if train_values:
        recipe = trial_recipe(recipe, None, train_values)
    params = {**spec.method_params, **_typed_params(spec.method, param_values, f"tune.{spec.label}")}
    return spec.with_changes(recipe=recipe, method_params=params, epochs=recipe.epochs, **changes)


def tuning_plan(suite: Suite) -> TuningPlan:
    """Every cell's trials: ``tune.trials`` configurations x ``tune.seeds``, each trained ``tune.epochs``, marked
    ``stage: tune`` (so a trial is never taken for a final run with the same values)."""
    base = expand(suite)
    tune = suite.tune
    out = TuningPlan(Plan(suite, teachers=dict(base.teachers), refused=list(base.refused)))
    first_seed = suite.seeds[0]
    for spec in (s for s in base.runs.values() if s.seed == first_seed):
        trials = out.cells.setdefault(cell_of(spec), [])
        for index, values in enumerate(candidates(tune, spec.label)):
            short = trial_recipe(spec.recipe, tune.epochs, {})
            for seed in tune.seeds:
                trial = with_values(spec, values, recipe=short, seed=seed, stage="tune")
                run_id = spec_id(trial)
                out.plan.runs[run_id] = trial
                trials.append(Trial(index, values, seed, run_id))
    return out


def final_plan(suite: Suite, chosen: dict[CellKey, dict[str, Any]], tuned: dict[CellKey, dict[str, Any]]) -> Plan:
    """The suite's runs with each cell's chosen configuration (cells without one are refused, saying so);
    ``tuned`` holds, per cell, how it was chosen (recorded with each final run, not part of its id)."""
    base = expand(suite)
    plan = Plan(suite, teachers=dict(base.teachers), refused=list(base.refused))
    for spec in base.runs.values():
        key = cell_of(spec)
        if key not in chosen:
            note = f"{cell_name(key)}: refused, no trial of its tuning stage finished"
            if note not in plan.refused:
                plan.refused.append(note)
            continue
        final = with_values(spec, chosen[key], tuned=tuned[key])
        plan.runs[spec_id(final)] = final
    needed = {s.teacher_id for s in plan.runs.values() if s.teacher_id}
    plan.teachers = {tid: t for tid, t in plan.teachers.items() if tid in needed}
    return plan


def budget(suite: Suite) -> dict[str, Any]:
    """The tuning budget every method gets, as recorded and reported."""
    tune = suite.tune
    return {"trials": tune.trials, "epochs": tune.epochs or suite.train.epochs, "seeds": list(tune.seeds),
            "metric": tune.metric, "search": tune.search}
