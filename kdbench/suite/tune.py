"""Equal-budget tuning (a suite's ``tune:``): every method of every cell gets the same number of trials, epochs per
trial and seeds per trial, drawn from its search space, selected on the held-out split (never test).

::

    tune:
      trials: 3                  # per (pair, regime, method) cell, the same for every method
      epochs: 8                  # per trial (milestones and warm-up scaled to it)
      seeds: [0]                 # seeds per trial; the score is their mean
      metric: val_top1_last      # a held-out metric (val_*), never a test one
      search: grid               # grid (every point; its size must equal trials) or sobol (quasi-random)
      space: {lr: [0.05, 0.1, 0.2]}                      # every method's space ...
      methods: {gendd: {lr: [1.0e-3, 3.0e-3, 1.0e-2]}}   # ... replaced key by key for a method label

A space value is a list of choices, or ``{log_uniform: [low, high]}`` / ``{uniform: [low, high]}`` (sobol only).
A key is a training setting (``lr``, ``weight_decay``, ...: the recipe) or one of the method's hyper-parameters.
Trials are student runs whose spec carries ``stage: tune``; the final runs carry the chosen values in their recipe
and parameters, and how they were chosen in ``tuned`` (left out of the run id, like a recipe's provenance).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import Settings, at_least, build_dataclass, coerce, jsonable, one_of, require, rule, setting
from kdbench.spec import Recipe

SEARCHES = ("grid", "sobol")
RANGES = ("log_uniform", "uniform")


@dataclass(frozen=True)
class TuneSettings(Settings):
    """A suite's ``tune:`` section (no tuning while ``trials`` is 0 and the search is not a grid)."""

    trials: int = setting(0, at_least(0))
    epochs: int | None = setting(None, rule(lambda v, _: v is None or v >= 1, "must be >= 1, got {value}"))
    seeds: tuple[int, ...] = setting((0,), rule(lambda v, _: len(v) >= 1 and len(set(v)) == len(v),
                                                "one or more distinct seeds, got {value}"))
    metric: str = setting("val_top1_last", rule(
        lambda v, _: v.startswith("val_"),
        "must be a held-out metric (val_top1_last or val_top1_best), never a test one; got {value!r}"))
    search: str = setting("grid", one_of("search", *SEARCHES))
    space: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    sobol_seed: int = 0

    @property
    def enabled(self) -> bool:
        """Whether the suite tunes at all."""
        return bool(self.space or self.methods)

    def space_for(self, label: str) -> dict[str, Any]:
        """A method's search space: the common one with the method's own keys replacing it."""
        return {**self.space, **(self.methods.get(label) or {})}


def _check_dimension(value: Any, key: str, search: str) -> None:
    if isinstance(value, list):
        require(len(value) >= 1, key, "an empty list of choices")
        return
    require(isinstance(value, dict) and len(value) == 1 and next(iter(value)) in RANGES, key,
            f"expected a list of choices or {{log_uniform: [low, high]}} / {{uniform: [low, high]}}, got {value!r}")
    kind, bounds = next(iter(value.items()))
    require(search == "sobol", key, f"a {kind} range needs search: sobol (a grid takes lists)")
    low, high = coerce(bounds, tuple[float, float], f"{key}.{kind}")
    require(low < high and (kind != "log_uniform" or low > 0), f"{key}.{kind}",
            f"needs 0 < low < high for log_uniform, low < high for uniform; got {[low, high]}")


def _grid_size(space: dict[str, Any]) -> int:
    return math.prod(len(v) for v in space.values())


def check_tune(tune: TuneSettings, methods: list[Any], has_val: bool,
               parameters_of: Any) -> TuneSettings:
    """Validate ``tune:`` against the suite's methods: every key a recipe field or a hyper-parameter of each method
    it applies to, every value a list or a range, one budget for all (a grid's size is its trial count, equal for
    every method), a held-out split to select on. Returns the settings with ``trials`` resolved."""
    if not tune.enabled:
        return tune
    require(has_val, "tune.metric", "tuning selects on the held-out split: set eval.val_fraction > 0")
    labels = {m.label for m in methods}
    for label in tune.methods:
        require(label in labels, f"tune.methods.{label}",
                f"no method labelled '{label}' in the suite (labels: {', '.join(sorted(labels))})")
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    sizes = {}
    for method in methods:
        space = tune.space_for(method.label)
        where = f"tune.methods.{method.label}" if method.label in tune.methods else "tune.space"
        require(bool(space), where, f"method '{method.label}' has an empty search space")
        params = parameters_of(method.name)
        for name, value in space.items():
            own = name in (tune.methods.get(method.label) or {})
            key = f"tune.methods.{method.label}" if own else "tune.space"
            require(name in recipe_fields or name in params, f"{key}.{name}",
                    f"neither a training setting nor a hyper-parameter of method '{method.name}'")
            _check_dimension(value, f"{key}.{name}", tune.search)
        sizes[method.label] = _grid_size(space) if tune.search == "grid" else tune.trials
    if tune.search == "grid":
        distinct = sorted(set(sizes.values()))
        require(len(distinct) == 1, "tune", "one budget for every method: the grids have "
                + ", ".join(f"{label} {n}" for label, n in sorted(sizes.items())) + " points")
        require(tune.trials in (0, distinct[0]), "tune.trials",
                f"a grid runs every point: {distinct[0]} trials, not {tune.trials}")
        return dataclasses.replace(tune, trials=distinct[0])
    require(tune.trials >= 1, "tune.trials", "search: sobol needs trials >= 1")
    return tune


def candidates(tune: TuneSettings, label: str) -> list[dict[str, Any]]:
    """The ``tune.trials`` configurations of a method, in trial order: the grid's points, or a scrambled Sobol
    sequence (scipy.stats.qmc, seeded by ``sobol_seed``) mapped onto the space's dimensions."""
    space = tune.space_for(label)
    names = sorted(space)
    if tune.search == "grid":
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]
    from scipy.stats import qmc

    points = qmc.Sobol(d=len(names), scramble=True, seed=tune.sobol_seed).random(tune.trials)
    out = []
    for point in points:
        values = {}
        for name, u in zip(names, point, strict=True):
            dimension = space[name]
            if isinstance(dimension, list):
                values[name] = dimension[min(int(u * len(dimension)), len(dimension) - 1)]
            else:
                kind, (low, high) = next(iter(dimension.items()))
                values[name] = (math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
                                if kind == "log_uniform" else low + u * (high - low))
        out.append(values)
    return out


def split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A configuration as (training settings, method hyper-parameters)."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    return ({k: v for k, v in values.items() if k in recipe_fields},
            {k: v for k, v in values.items() if k not in recipe_fields})


def trial_recipe(recipe: Recipe, epochs: int | None, train_values: dict[str, Any]) -> Recipe:
    """A trial's recipe: the cell's recipe with the trial's values and ``epochs`` (milestones and warm-up scaled
    to the shorter run, so a schedule keeps its shape)."""
    merged = {**jsonable(dataclasses.asdict(recipe)), **jsonable(train_values)}
    if epochs is not None and epochs != recipe.epochs:
        scale = epochs / recipe.epochs
        milestones = sorted({min(epochs - 1, max(1, round(m * scale))) for m in recipe.milestones}) \
            if epochs > 1 else []
        merged.update(epochs=epochs, milestones=milestones,
                      warmup_epochs=min(epochs - 1, round(recipe.warmup_epochs * scale)))
    return build_dataclass(Recipe, merged, "tune")
