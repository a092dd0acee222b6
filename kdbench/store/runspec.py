"""The resolved run spec (``spec.json``) as a typed object: built by the suite's plan, hashed into the run id,
saved with the run, read back by the runner, the dispatcher and the report. Serialised by :meth:`RunSpec.to_dict`
and read by :meth:`RunSpec.from_dict`, nowhere else; ``from_dict(d).to_dict() == d`` for every spec kdbench
writes, so run ids do not change when a spec goes through the typed object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import build_dataclass, jsonable
from kdbench.spec import CHECKPOINT_EVERY_S, EvalSettings, TeacherSource, TrackingSettings, TrainConfig


def _recipe_dict(recipe: TrainConfig) -> dict[str, Any]:
    """A training config as a spec holds it: every field, less those added later while at their default."""
    defaults = {f.name: f.default for f in dataclasses.fields(recipe)}
    return {name: value for name, value in jsonable(dataclasses.asdict(recipe)).items()
            if not (name in recipe.omitted_at_default and value == defaults[name])}


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component (a dataset or a regime) by name, with its resolved parameters and, for a regime
    the suite labelled itself, that label."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ComponentSpec:
        """From its JSON object (``{"name": ..., "params": {...}}``)."""
        return cls(name=raw["name"], params=dict(raw.get("params") or {}), label=raw.get("label"))

    @property
    def shown(self) -> str:
        """The name a table shows: the suite's own label, else the name."""
        return self.label or self.name

    def to_dict(self) -> dict[str, Any]:
        """Its JSON object; the label only when it has one."""
        out: dict[str, Any] = {"name": self.name, "params": jsonable(self.params)}
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass(frozen=True)
class Runtime:
    """How a run's tensors are computed and kept (recorded, not part of the run id): bf16 autocast and
    channels-last, each ``auto`` (on for GPUs), ``on`` or ``off``; deterministic algorithms; the least seconds
    between two epoch checkpoints."""

    amp: str = "auto"
    channels_last: str = "auto"
    deterministic: bool = False  # deterministic algorithms (cuDNN, torch); written only when on
    checkpoint_every_s: float = CHECKPOINT_EVERY_S  # written only when not the default

    def to_dict(self) -> dict[str, Any]:
        """Its JSON object; ``deterministic`` only when on and ``checkpoint_every_s`` only when not the default,
        so specs written before they existed stay the same."""
        out: dict[str, Any] = {"amp": self.amp, "channels_last": self.channels_last}
        if self.deterministic:
            out["deterministic"] = True
        if self.checkpoint_every_s != CHECKPOINT_EVERY_S:
            out["checkpoint_every_s"] = self.checkpoint_every_s
        return out


@dataclass(frozen=True)
class RunSpec:
    """One run: a ``student`` distilled by ``method`` from the teacher job ``teacher_id`` (with the methods of
    ``compose`` added, serialised as ``"with": [{"name": ..., "params": {...}}]`` and only when there are any),
    or a ``teacher`` trained (``method`` vanilla) or verified (``method`` verify, with its ``source``)."""

    role: str
    model: str
    teacher: str
    method: str
    label: str
    dataset: ComponentSpec
    regime: ComponentSpec
    seed: int
    epochs: int
    eval: EvalSettings
    runtime: Runtime = Runtime()
    student: str | None = None
    teacher_id: str | None = None
    method_params: dict[str, Any] = field(default_factory=dict)
    recipe: TrainConfig | None = None
    source: TeacherSource | None = None
    provenance: dict[str, Any] | None = None
    compose: tuple[ComponentSpec, ...] = ()  # methods added to ``method`` (``with``: name and resolved params)
    stage: str | None = None  # "tune": a trial of the suite's tuning stage (part of the id; absent for finals)
    tuned: dict[str, Any] | None = None  # a tuned final run: space, budget, trials, choice, cost (not hashed)
    tracking: TrackingSettings | None = None  # live tracking (kdbench.tracking): not hashed, absent while off

    @property
    def composed(self) -> bool:
        """The run trains a composition (``method`` with the ``compose`` methods added, :mod:`kdbench.compose`)."""
        return bool(self.compose)

    @property
    def is_teacher(self) -> bool:
        """A teacher job (trained or verified)."""
        return self.role == "teacher"

    @property
    def verifies(self) -> bool:
        """A teacher the suite does not train: a checkpoint or pretrained weights to verify."""
        return self.source is not None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunSpec:
        """A spec from its JSON object (``spec.json``). Raises :class:`kdbench.config.ConfigError` naming the key."""
        recipe, source = raw.get("recipe"), raw.get("source")
        return cls(
            role=raw["role"], model=raw["model"], teacher=raw["teacher"], method=raw["method"], label=raw["label"],
            dataset=ComponentSpec.from_dict(raw["dataset"]), regime=ComponentSpec.from_dict(raw["regime"]),
            seed=raw["seed"], epochs=raw["epochs"], eval=build_dataclass(EvalSettings, raw.get("eval"), "eval"),
            runtime=Runtime(**(raw.get("runtime") or {})), student=raw.get("student"),
            teacher_id=raw.get("teacher_id"), method_params=dict(raw.get("method_params") or {}),
            recipe=None if recipe is None else build_dataclass(TrainConfig, recipe, "recipe"),
            source=None if source is None else TeacherSource(**source), provenance=raw.get("provenance"),
            compose=tuple(ComponentSpec.from_dict(part) for part in raw.get("with") or ()),
            stage=raw.get("stage"), tuned=raw.get("tuned"),
            tracking=None if raw.get("tracking") is None
            else build_dataclass(TrackingSettings, raw["tracking"], "tracking"))

    def to_dict(self) -> dict[str, Any]:
        """The spec's JSON object as saved in ``spec.json`` (and hashed, less its runtime, provenance, tuning
        account and tracking, into the run id): keys in the order the plan always wrote them."""
        out: dict[str, Any] = {"role": self.role, "model": self.model, "student": self.student,
                               "teacher": self.teacher}
        if not self.is_teacher:
            out["teacher_id"] = self.teacher_id
        out.update(method=self.method, label=self.label, method_params=jsonable(self.method_params))
        if self.compose:  # left out when empty: the specs (and ids) of single-method runs stay as they were
            out["with"] = [part.to_dict() for part in self.compose]
        if self.source is not None:
            out["source"] = jsonable(dataclasses.asdict(self.source))
        out.update(dataset=self.dataset.to_dict(), regime=self.regime.to_dict(), seed=self.seed, epochs=self.epochs,
                   recipe=None if self.recipe is None else _recipe_dict(self.recipe),
                   eval=jsonable(dataclasses.asdict(self.eval)), runtime=self.runtime.to_dict())
        if self.provenance is not None:
            out["provenance"] = jsonable(self.provenance)
        if self.stage is not None:
            out["stage"] = self.stage
        if self.tuned is not None:
            out["tuned"] = jsonable(self.tuned)
        if self.tracking is not None and self.tracking.enabled:  # left out while off: specs stay as they were
            out["tracking"] = self.tracking.to_dict()
        return out

    def with_changes(self, **changes: Any) -> RunSpec:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)
