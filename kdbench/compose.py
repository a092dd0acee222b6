"""Compositions: one method with others added (``crd+kd``), generically: the losses add.

A suite's method entry may carry ``with: [{name: kd, T: 4, alpha: 1.0}]``; its runs then train a
:class:`Composite` of the entry's own method (the *primary*) and the added ones. What the composite is:

- ``losses``: the primary's terms, then each added method's terms except its ``ce`` (the cross-entropy is counted
  once, the primary's), each prefixed ``<name>.`` (``kd.kd``). Every term is weighted by its own method's
  weights, so ``crd+kd`` is RepDistiller's ``gamma * CE + alpha * KL + beta * CRD``.
- ``needs``: the union (labels if any part needs them, a teacher if any part does, the union of the taps, the
  largest number of negatives).
- ``predict``, ``stages`` and the first parameter groups: the primary's; the added methods' own trainable
  parameters (their groups from ``param_groups``, less the student's parameters) follow as extra groups. An added
  method may not have stages of its own (the suite refuses it: make it the primary).
- the capabilities (:class:`~kdbench.method.BindsData`, :class:`~kdbench.method.StepHooks`,
  :class:`~kdbench.method.CustomPredictor`, :class:`~kdbench.method.RecordExtras`): forwarded to every part that
  has them, through :mod:`kdbench.method`'s module functions; the primary's predictor, the added parts' extra
  evaluations and record entries under ``<name>.``.

The composite is not a registered method: :mod:`kdbench.runner` builds it when a run spec has ``with`` entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from kdbench import method as contract
from kdbench.method import (
    Batch,
    BindsData,
    CustomPredictor,
    Method,
    Needs,
    Predict,
    RecordExtras,
    Stage,
    StepHooks,
    TrainingItems,
)
from kdbench.models import Network, Outputs

__all__ = ["CE_TERM", "Composite", "composite_label", "has_own_stages", "union_needs"]

CE_TERM = "ce"
"""The name of the cross-entropy term (:func:`kdbench.method.ce_term`): kept from the primary only."""


def composite_label(name: str, added: Sequence[str]) -> str:
    """The default label of a composition: ``<name>+<other>+...`` (``crd+kd``)."""
    return "+".join([name, *added])


def has_own_stages(cls: type[Method]) -> bool:
    """The method class defines extra stages (it overrides :meth:`Method.stages`): it can only be a primary."""
    return cls.stages is not Method.stages


def _merged(names: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    out: list[str] = []
    for taps in names:
        out += [tap for tap in taps if tap not in out]
    return tuple(out)


def union_needs(parts: Sequence[Needs]) -> Needs:
    """What a composition of methods with these needs requires: labels or a teacher if any part does, every
    part's taps (in order, once), the largest number of negatives."""
    return Needs(labels=any(n.labels for n in parts), teacher=any(n.teacher for n in parts),
                 student_taps=_merged([n.student_taps for n in parts]),
                 teacher_taps=_merged([n.teacher_taps for n in parts]),
                 negatives=max((n.negatives for n in parts), default=0))


class Composite(BindsData, StepHooks, CustomPredictor, RecordExtras, Method):
    """The primary method with the ``added`` methods (``(name, instance)`` pairs, names unique, none the
    primary's): see the module docstring for what each part contributes."""

    def __init__(self, primary: Method, added: Sequence[tuple[str, Method]]) -> None:
        super().__init__(None, None, num_classes=primary.num_classes)  # type: ignore[arg-type]
        names = [name for name, _ in added]
        if not added:
            raise ValueError("a composition needs at least one added method")
        if len(set(names)) != len(names) or primary.name in names:
            raise ValueError(f"each method appears once in a composition: {primary.name} with {', '.join(names)}")
        for name, part in added:
            if has_own_stages(type(part)):
                raise ValueError(f"method '{name}' has stages of its own: it can only be the primary of a "
                                 "composition")
        self.primary = primary
        self.added = nn.ModuleDict(dict(added))
        self.needs = union_needs([primary.needs, *(part.needs for _, part in added)])  # type: ignore[misc]
        self.name = composite_label(primary.name, names)  # type: ignore[misc]
        self.description = f"{primary.description} + " + " + ".join(  # type: ignore[misc]
            f"{name} ({type(part).description})" for name, part in added)
        self.uses = primary.uses  # type: ignore[misc]
        self.report_hints = primary.report_hints  # type: ignore[misc]

    def parts(self) -> list[tuple[str, Method]]:
        """Every part with its name: the primary first."""
        return [(self.primary.name, self.primary), *((name, part) for name, part in self.added.items())]

    # ---------------------------------------------------------------------------------------------- contract

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        """The primary's terms, then each added method's terms but its ``ce``, prefixed ``<name>.``."""
        terms = dict(self.primary.losses(batch, s, t))
        for name, part in self.added.items():
            terms.update({f"{name}.{key}": value for key, value in part.losses(batch, s, t).items()
                          if key != CE_TERM})
        return terms

    def predict(self, x: torch.Tensor, s: Outputs, *, final: bool = False) -> torch.Tensor:
        """The primary's prediction."""
        return self.primary.predict(x, s, final=final)

    def stages(self, recipe: dict[str, Any], labeled: bool = True) -> list[Stage]:
        """The primary's stages (an added method has none)."""
        return self.primary.stages(recipe, labeled=labeled)

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """The primary's groups, then each added method's groups without the student's parameters (its own
        modules, with its own settings), named ``<name>.<group>``."""
        groups = self.primary.param_groups(student)
        in_student = {id(p) for p in student.parameters()}
        for name, part in self.added.items():
            for group in part.param_groups(student):
                own = [p for p in group["params"] if id(p) not in in_student]
                if own:
                    groups.append({**group, "params": own, "name": f"{name}.{group.get('name', 'method')}"})
        return groups

    # ---------------------------------------------------------------------------------------------- capabilities

    def bind_data(self, train_size: int) -> None:
        """Every part's :meth:`~kdbench.method.BindsData.bind_data`."""
        for _, part in self.parts():
            contract.bind_data(part, train_size)

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Every part's ``on_epoch_start``."""
        for _, part in self.parts():
            contract.epoch_start(part, epoch, epochs)

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """Every part's ``before_step``."""
        for _, part in self.parts():
            contract.step_hook(part, optimizer, step, total_steps)

    @property  # type: ignore[misc, override]
    def final_predict_differs(self) -> bool:
        """The primary's: it predicts."""
        return contract.final_predict_differs(self.primary)

    @property  # type: ignore[misc, override]
    def reports_probe(self) -> bool:
        """The primary's: it predicts."""
        return contract.reports_probe(self.primary)

    def describe_predictor(self, final: bool) -> str:
        """The primary's description."""
        return contract.describe_predictor(self.primary, final)

    def after_training(self, student: Network, batches: TrainingItems) -> None:
        """Every part's ``after_training``."""
        for _, part in self.parts():
            contract.after_training(part, student, batches)

    def extra_evaluations(self) -> dict[str, Predict]:
        """The primary's extra predictors, then the added parts' under ``<name>.``."""
        out = dict(contract.extra_evaluations(self.primary))
        for name, part in self.added.items():
            out.update({f"{name}.{key}": fn for key, fn in contract.extra_evaluations(part).items()})
        return out

    def extras(self) -> dict[str, dict[str, Any]]:
        """The primary's ``cost`` and ``diagnostics`` entries, then the added parts' under ``<name>.``."""
        out: dict[str, dict[str, Any]] = {"cost": {}, "diagnostics": {}}
        for name, part in self.parts():
            prefix = "" if part is self.primary else f"{name}."
            for section, entries in contract.method_extras(part).items():
                out.setdefault(section, {}).update({f"{prefix}{k}": v for k, v in entries.items()})
        return {section: entries for section, entries in out.items() if entries}
