"""The method contract (the user's extension point), the method registry and plugin discovery.

A method is a ``torch.nn.Module`` registered by name. It owns only what it adds (projectors, a diffusion
head); the trainer owns the student, the teacher and the loop. ``losses`` returns named, already weighted
terms; the trainer sums them. Methods are found by scanning the ``methods`` package (one file per method)
and the ``kdbench.methods`` entry-point group of installed packages.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.models.network import Network, Outputs
from kdbench.registry import Registry

__all__ = ["Batch", "Method", "Needs", "Stage", "discover_methods", "hyperparameters", "method_registry",
           "register_method"]


@dataclass(frozen=True)
class Needs:
    """What a method requires: labels (refused in the unlabeled regime), a teacher, intermediate taps
    (``stage{i}``, or ``stage{i}_pre`` for the pre-activation), and ``negatives``: that many contrastive
    negatives per item in every batch (CRD), drawn by the data path."""

    labels: bool = False
    teacher: bool = True
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    negatives: int = 0


@dataclass
class Batch:
    """One training batch. ``y`` is None in the unlabeled regime; ``index`` are dataset indices; ``negatives``
    (items x k dataset indices) is there when the method asked for them (``Needs.negatives``)."""

    x: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor
    negatives: torch.Tensor | None = None


LossFn = Callable[[Batch, Outputs, "Outputs | None"], dict[str, torch.Tensor]]


@dataclass
class Stage:
    """An extra training phase a method runs before its main one (e.g. GenDD's warm start).

    It trains the student (and the method's modules that ``param_groups`` returns) with its own losses, its own
    epochs and its own optimizer settings (``recipe`` overrides keys of the run's recipe). Its epochs count in
    the run's total budget, which the record states.
    """

    name: str
    epochs: int
    recipe: dict[str, Any]
    losses: LossFn
    predict: Callable[[torch.Tensor, Outputs], torch.Tensor]
    param_groups: Callable[[Network], list[dict[str, Any]]]
    student_train_mode: bool = True  # False: the student runs in eval mode (BN statistics frozen), as
    # RepDistiller's init stages of AB, FT and FSP do


class Method(nn.Module):
    """Base class of every distillation method.

    Subclasses set ``needs`` and ``description``, take ``(student, teacher, *, num_classes, **hyperparameters)``
    with typed keyword hyper-parameters and published defaults, and implement :meth:`losses`.

    ``final_predict_differs``: the final evaluation (``predict(..., final=True)``, e.g. more samples) differs
    from the per-epoch one, so the engine re-evaluates the last and the best epoch with it.
    ``reports_probe``: the student's own logits are a monitor worth reporting beside ``predict`` (GenDD).
    """

    needs: ClassVar[Needs] = Needs()  # an instance may narrow its taps to the networks it got (self.needs = ...)
    description: ClassVar[str] = ""
    uses: ClassVar[str] = "logits"  # what the method reads of the networks, for `kdbench list methods`
    name: ClassVar[str] = ""
    final_predict_differs: ClassVar[bool] = False
    reports_probe: ClassVar[bool] = False

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @classmethod
    def incompatibility(cls, student: Network, teacher: Network | None) -> str | None:
        """Why this method cannot distil ``teacher`` into ``student`` (e.g. unequal stage channels), or None."""
        return None

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms for one batch; the trainer sums them."""
        raise NotImplementedError(f"{type(self).__name__} must implement losses()")

    def predict(self, x: torch.Tensor, s: Outputs, *, final: bool = False) -> torch.Tensor:
        """Class scores used for evaluation (``final``: the end-of-run evaluation). Default: the student's logits."""
        return s.logits

    def bind_data(self, train_size: int) -> None:
        """Called once before training (and before a checkpoint is loaded) with the size of the training split:
        dataset indices run from 0 to ``train_size - 1``. For methods with per-item state (CRD's memory bank)."""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Hook called before each training epoch (e.g. for loss-weight warm-ups)."""

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """Hook called before each optimizer step of the main phase (e.g. GenDD's beta2 ramp)."""

    def stages(self, recipe: dict[str, Any], labeled: bool = True) -> list[Stage]:
        """Extra phases run before the main one, in order (``labeled``: the run's data has labels). Default: none."""
        return []

    def after_training(self, student: Network,
                       batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """Called once after the last epoch, before the extra evaluations, with a way to iterate the training
        items as evaluation batches (no augmentation), e.g. to fit GenDD's distilled predictor. Default: nothing."""

    def describe_predictor(self, final: bool) -> str:
        """What :meth:`predict` computes, in a few words, for the report's column captions (``final``: the
        end-of-run evaluation, else the per-epoch one). Default: the student's logits."""
        return "student logits"

    def extra_evaluations(self) -> dict[str, Callable[[torch.Tensor, Outputs], torch.Tensor]]:
        """Named alternative predictors evaluated once on the final model (e.g. GenDD's sampler sweep: top-1 and
        latency of other step counts from the same trained head). Default: none."""
        return {}

    def extras(self) -> dict[str, dict[str, Any]]:
        """Method-specific ``cost`` and ``diagnostics`` entries merged into the run's record."""
        return {}

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the student's and the method's own parameters, same settings."""
        groups = [{"params": [p for p in student.parameters() if p.requires_grad], "name": "student"}]
        own = [p for p in self.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own, "name": "method"})
        return groups


def ce_term(batch: Batch, logits: torch.Tensor, weight: float) -> dict[str, torch.Tensor]:
    """``{"ce": weight * CE(logits, y)}`` when the batch has labels and the weight is not zero, else nothing:
    the cross-entropy term every distillation method adds, dropped in the unlabeled regime."""
    if batch.y is None or not weight:
        return {}
    return {"ce": weight * F.cross_entropy(logits, batch.y)}


method_registry: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def decorator(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method('{name}') must decorate a Method subclass, got {cls!r}")
        cls.name = name
        method_registry.add(name, cls)
        return cls

    return decorator


def hyperparameters(cls: type[Method]) -> dict[str, inspect.Parameter]:
    """The method's hyper-parameters: the keyword-only arguments of ``__init__`` after ``num_classes``."""
    params = inspect.signature(cls.__init__).parameters
    return {n: p for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "num_classes"}


_discovered = False


def discover_methods(package: str = "methods") -> Registry[type[Method]]:
    """Import every module of the ``methods`` package and every ``kdbench.methods`` entry point, once."""
    global _discovered
    if not _discovered:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")
        for ep in entry_points(group="kdbench.methods"):
            ep.load()
        _discovered = True
    return method_registry
