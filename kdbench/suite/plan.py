"""A suite expanded into jobs: pairs x regimes x methods x seeds -> student run specs, one teacher job per distinct
teacher spec, and run ids (the hash of a resolved spec). A method entry with ``with:`` (a composition) runs where
each of its methods can: its spec names the added methods under ``with``.

A spec is assembled in one function per role, :func:`teacher_spec` and :func:`student_spec`; :func:`spec_id`
hashes it. A student run depends on the teacher job named by its ``teacher_id`` (:meth:`Plan.dependencies`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import jsonable, resolve_params
from kdbench.data import regime_parameters, regime_registry
from kdbench.method import discover_methods
from kdbench.pairing import pair_problem
from kdbench.reference.apply import CellRecipe
from kdbench.spec import Recipe, TrackingSettings
from kdbench.store.runspec import ComponentSpec, RunSpec, Runtime
from kdbench.suite.schema import Entry, Pair, Suite


def spec_id(spec: RunSpec | dict[str, Any]) -> str:
    """Run id: the first 12 hex digits of the SHA-256 of the canonical JSON of the resolved spec."""
    hashed = jsonable(spec.to_dict() if isinstance(spec, RunSpec) else spec)
    params = hashed.get("dataset", {}).get("params", {})
    params.pop("root", None)  # where the data sits is not what it is
    if params.get("decoder") == "pil":  # the default image decoder: ids from before the option stay
        params.pop("decoder")
    hashed.pop("runtime", None)  # how it is computed (bf16, memory format) is recorded, not part of what it is
    hashed.pop("provenance", None)  # where its values come from (reference recipe, deviations): not what it is
    hashed.pop("tuned", None)  # nor how a tuning stage chose them: the chosen values are in the spec
    hashed.pop("tracking", None)  # nor where its curves are sent while it trains (kdbench.tracking)
    if isinstance(hashed.get("source"), dict):
        hashed["source"].pop("checkpoint", None)  # nor where a checkpoint sits: its sha256 says what it is
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass
class Plan:
    """A suite expanded: teacher jobs and student runs (typed specs) by id, and the (method, regime) cells
    refused."""

    suite: Suite
    teachers: dict[str, RunSpec] = field(default_factory=dict)
    runs: dict[str, RunSpec] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def dependencies(self) -> dict[str, str]:
        """Student run id -> the id of the teacher job it waits for (runs without a teacher are left out)."""
        return {run_id: spec.teacher_id for run_id, spec in self.runs.items() if spec.teacher_id}

    def specs(self) -> dict[str, RunSpec]:
        """Every job of the plan by id: teachers first, then student runs."""
        return {**self.teachers, **self.runs}


def _runtime(suite: Suite) -> Runtime:
    """How a run's tensors are computed (kept in its spec, left out of its id)."""
    return Runtime(amp=suite.executor.amp, channels_last=suite.executor.channels_last,
                   deterministic=suite.executor.deterministic,
                   checkpoint_every_s=float(suite.executor.checkpoint_every_s))


def _tracking(suite: Suite) -> TrackingSettings | None:
    """Where a run's per-epoch metrics go (kept in its spec while on, left out of its id)."""
    return suite.tracking if suite.tracking.enabled else None


def _dataset(suite: Suite) -> ComponentSpec:
    return ComponentSpec(suite.dataset.name, suite.dataset.params)


def _regime_spec(regime: Entry) -> ComponentSpec:
    """A regime in a spec: name and parameters, plus its label when the suite gave it one of its own."""
    label = regime.label if regime.label and regime.label != regime.name else None
    return ComponentSpec(regime.name, regime.params, label)


def teacher_spec(suite: Suite, pair: Pair, regime: Entry) -> RunSpec:
    """The resolved spec of the teacher job a (pair, regime) cell distils from: a verified file or pretrained
    weights (the same for every regime), or a teacher trained on the regime's teacher data."""
    other = regime_registry.get(regime.name).teacher_regime
    trained_on = regime if other is None else Entry(
        other, resolve_params(regime_parameters(regime_registry.get(other)), {}, {}, "regime", other))
    source = suite.teacher.source(pair.teacher)
    common = {"role": "teacher", "model": pair.teacher, "teacher": pair.teacher, "dataset": _dataset(suite),
              "seed": suite.teacher.seed, "eval": suite.eval, "runtime": _runtime(suite),
              "tracking": _tracking(suite)}
    if source is not None:  # verified, not trained: the same teacher for every regime
        return RunSpec(**common, method="verify", label="checkpoint" if source.checkpoint else "pretrained",
                       source=source, regime=ComponentSpec("balanced"), epochs=0)
    return RunSpec(**common, method="vanilla", label="vanilla", regime=_regime_spec(trained_on),
                   epochs=suite.teacher.train.epochs, recipe=suite.teacher.train)


def student_spec(suite: Suite, pair: Pair, regime: Entry, method: Entry, seed: int, recipe: Recipe,
                 cell: CellRecipe | None, teacher_id: str | None) -> RunSpec:
    """The resolved spec of one student run: ``method`` on ``pair`` under ``regime`` with ``seed``, trained by
    ``recipe``, its values from the reference ``cell`` (if any), distilling from teacher job ``teacher_id``."""
    return RunSpec(role="student", model=pair.student, student=pair.student, teacher=pair.teacher,
                   teacher_id=teacher_id, method=method.name, label=method.label,
                   method_params=pair.method_params(method, cell), dataset=_dataset(suite),
                   regime=_regime_spec(regime), seed=seed, epochs=recipe.epochs, recipe=recipe, eval=suite.eval,
                   runtime=_runtime(suite), tracking=_tracking(suite), provenance=cell.provenance() if cell else None,
                   compose=tuple(ComponentSpec(part.name, part.params) for part in method.compose))


def expand(suite: Suite) -> Plan:
    """pairs x regimes x methods x seeds -> run specs; one teacher job per distinct teacher spec. A method that
    cannot run in a cell (it needs labels the regime lacks, or refuses the pair) is noted in ``refused``."""
    plan = Plan(suite)
    methods_registry = discover_methods()
    for pair in suite.pairs:
        for regime in suite.regimes:
            labeled = regime_registry.get(regime.name).labeled
            t_spec = teacher_spec(suite, pair, regime)
            t_id = spec_id(t_spec)
            for method in suite.methods:
                classes = [methods_registry.get(name) for name in method.names]
                refusal = _refusal(classes, method, pair, regime, labeled)
                if refusal:
                    if refusal not in plan.refused:
                        plan.refused.append(refusal)
                    continue
                needs_teacher = any(cls.needs.teacher for cls in classes)
                if needs_teacher:
                    plan.teachers[t_id] = t_spec
                cell = pair.reference(method)
                recipe = pair.recipe(suite.train, method, cell)
                for seed in suite.seeds:
                    spec = student_spec(suite, pair, regime, method, seed, recipe, cell,
                                        t_id if needs_teacher else None)
                    plan.runs[spec_id(spec)] = spec
    return plan


def _refusal(classes: list[Any], method: Entry, pair: Pair, regime: Entry, labeled: bool) -> str | None:
    """Why a method entry's (pair, regime) cell is not run (``<label> x <where>: refused, <why>``), or None.
    ``classes``: the entry's method and, for a composition, the added ones: any one refusing refuses the cell."""
    for cls in classes:
        problem = pair_problem(cls, pair.teacher, pair.student)
        if problem:
            return f"{method.label} x {pair.teacher} -> {pair.student}: refused, {problem}"
    for cls in classes:
        if cls.needs.labels and not labeled:
            return f"{method.label} x {regime.name}: refused, method '{cls.name}' needs labels"
    return None
