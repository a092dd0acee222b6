"""The method contract (the user's extension point), the method registry and plugin discovery.

A method is a ``torch.nn.Module`` registered by name. It owns only what it adds (projectors, a diffusion
head); the trainer owns the student, the teacher and the loop. ``losses`` returns named, already weighted
terms; the trainer sums them. Methods are found by scanning the checkout's ``methods/`` folder (one file per
method; installed as the package ``kdbench.methods``), the ``kdbench.methods`` entry-point group of installed
packages, and the folders of ``$KDBENCH_METHODS`` (``--methods DIR``).

What the engine calls on every method (:class:`Method`): ``needs``, ``losses``, ``predict``, ``param_groups``,
``stages``, ``incompatibility``; ``description``, ``uses`` and ``name`` describe it, and ``report_hints``
(:class:`ReportHints`) declares, as data, the extra report columns and predictors it records.

Optional capabilities are small mixins, each documented on its class; a method inherits the ones it needs,
before :class:`Method` (``class GenDD(CustomPredictor, StepHooks, RecordExtras, Method)``):

- :class:`BindsData`: ``bind_data(train_size)`` once before training (per-item state: CRD's memory bank);
- :class:`StepHooks`: ``on_epoch_start`` / ``before_step`` (loss-weight warm-ups, GenDD's beta2 ramp);
- :class:`CustomPredictor`: a predictor other than the student's logits: ``final_predict_differs``,
  ``reports_probe``, ``describe_predictor``, ``after_training``, ``extra_evaluations``;
- :class:`RecordExtras`: ``extras()``, method-specific ``cost`` and ``diagnostics`` entries of the record.

The engine reaches a capability only through the module-level functions below (:func:`bind_data`,
:func:`epoch_start`, :func:`step_hook`, :func:`after_training`, :func:`extra_evaluations`,
:func:`describe_predictor`, :func:`method_extras`, :func:`final_predict_differs`, :func:`reports_probe`,
:func:`report_hints`), which give the default behaviour for a method without the mixin. A class that defines a
capability's hook without inheriting its mixin is refused when it is defined (``TypeError``), so no hook is ever
silently skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.batch import Batch
from kdbench.models.network import Network, Outputs
from kdbench.registry import Registry

__all__ = ["Batch", "BindsData", "CustomPredictor", "Method", "MethodFileError", "Needs", "RecordExtras",
           "ReportHints", "Stage", "StepHooks", "after_training", "bind_data", "describe_predictor",
           "discover_methods", "epoch_start", "extra_evaluations", "final_predict_differs", "hyperparameters",
           "method_extras", "method_registry", "register_method", "report_hints", "reports_probe", "step_hook"]


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


LossFn = Callable[[Batch, Outputs, "Outputs | None"], dict[str, torch.Tensor]]
Predict = Callable[[torch.Tensor, Outputs], torch.Tensor]
TrainingItems = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]


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
    predict: Predict
    param_groups: Callable[[Network], list[dict[str, Any]]]
    student_train_mode: bool = True  # False: the student runs in eval mode (BN statistics frozen), as
    # RepDistiller's init stages of AB, FT and FSP do


@dataclass(frozen=True)
class ReportHints:
    """The extra report columns and predictors a method records, declared as data (a method sets the class
    attribute ``report_hints = ReportHints(...)``), so that the report can show them without naming the method.
    This class is the one place they are documented. Every field names entries of the method's own result
    records; the default declares nothing.

    - ``label``: how plots and tables title the method's own views (``"GenDD"``).
    - ``predictor_settings``: the ``diagnostics`` key that maps each extra predictor (the record's
      ``extra_evaluations``) to its settings, a flat dict (GenDD: ``"sweep_settings"``);
      ``own_predictor_settings``: the ``diagnostics`` key with the settings of the method's own final predictor.
    - ``sweep_x``: the settings field on the x axis of the extra predictors' top-1/latency plot (``"steps"``);
      ``sweep_series``: the settings fields whose values draw one curve each.
    - ``setting_text``: a ``str.format`` template that describes one settings dict in a table cell;
      ``setting_labels``: ``(value, fixed text)`` pairs: a settings dict holding that value is described by the
      fixed text instead of the template (GenDD: its distilled map).
    - ``reference``: the method's own prediction is the reference the cell's other prediction variants are
      paired with by seed (GenDD with its authors' sampler).
    - ``parameter_curves``: hyper-parameters worth a top-1/latency-against-value plot, one at a time.
    """

    label: str = ""
    predictor_settings: str = ""
    own_predictor_settings: str = ""
    sweep_x: str = ""
    sweep_series: tuple[str, ...] = ()
    setting_text: str = ""
    setting_labels: tuple[tuple[str, str], ...] = ()
    reference: bool = False
    parameter_curves: tuple[str, ...] = ()

    def as_record(self) -> dict[str, Any]:
        """The declared (non-default) fields as plain JSON values (tuples as lists); ``{}`` when none is."""
        default = ReportHints()
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = [list(v) if isinstance(v, tuple) else v for v in value] \
                    if isinstance(value, tuple) else value
        return out


# ---------------------------------------------------------------------------------------------- capabilities


class BindsData:
    """Capability: per-item state sized by the training split (CRD's memory bank).

    ``bind_data(train_size)`` is called once before training, and before a checkpoint is loaded, with the size of
    the training split: dataset indices run from 0 to ``train_size - 1``."""

    def bind_data(self, train_size: int) -> None:
        """Allocate the per-item state for ``train_size`` training items."""


class StepHooks:
    """Capability: hooks the loop calls during the main phase (not during a method's extra stages).

    ``on_epoch_start(epoch, epochs)`` before each epoch (0-based ``epoch`` of ``epochs``): loss-weight warm-ups
    (DKD, ReviewKD), per-epoch state (IKL's prior, GenDD's target-norm statistics). ``before_step(optimizer,
    step, total_steps)`` before each optimizer step (``step`` counts from 0 over the whole phase): optimizer
    settings that change per step (GenDD's beta2 ramp). Both default to nothing."""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each epoch of the main phase."""

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """Called before each optimizer step of the main phase."""


class CustomPredictor:
    """Capability: the method predicts with something other than the student's logits (GenDD samples
    teacher-space features and applies the frozen teacher head).

    - ``final_predict_differs``: the end-of-run prediction (``predict(..., final=True)``, e.g. more samples)
      differs from the per-epoch one, so the engine re-evaluates the last and the best epoch with it.
    - ``reports_probe``: the student's own logits are a monitor worth reporting beside ``predict``.
    - ``describe_predictor(final)``: what ``predict`` computes, in a few words, for the report's captions.
    - ``after_training(student, batches)``: once after the last epoch, before the extra evaluations, with a way to
      iterate this rank's share of the training items as evaluation batches (no augmentation), e.g. to fit
      GenDD's distilled predictor (under data-parallel training every rank calls it on its own share).
    - ``extra_evaluations()``: named alternative predictors evaluated once on the final model (GenDD's sampler
      sweep: top-1 and latency of other settings of the same trained head).
    """

    final_predict_differs: ClassVar[bool] = False
    reports_probe: ClassVar[bool] = False

    def describe_predictor(self, final: bool) -> str:
        """What ``predict`` computes (``final``: the end-of-run evaluation, else the per-epoch one)."""
        return "student logits"

    def after_training(self, student: Network, batches: TrainingItems) -> None:
        """Called once after the last epoch with the training items as evaluation batches. Default: nothing."""

    def extra_evaluations(self) -> dict[str, Predict]:
        """Named alternative predictors of the final model. Default: none."""
        return {}


class RecordExtras:
    """Capability: method-specific entries of the run's record: ``extras()`` returns ``{"cost": {...},
    "diagnostics": {...}}`` (either may be left out), merged into the record's ``cost`` and ``diagnostics``."""

    def extras(self) -> dict[str, dict[str, Any]]:
        """The method's own ``cost`` and ``diagnostics`` entries."""
        return {}


# which class attributes each capability declares: a method that sets one must inherit the mixin
CAPABILITIES: dict[type, tuple[str, ...]] = {
    BindsData: ("bind_data",),
    StepHooks: ("on_epoch_start", "before_step"),
    CustomPredictor: ("final_predict_differs", "reports_probe", "describe_predictor", "after_training",
                      "extra_evaluations"),
    RecordExtras: ("extras",),
}


class Method(nn.Module):
    """Base class of every distillation method: what the engine must call.

    Subclasses set ``needs`` and ``description``, take ``(student, teacher, *, num_classes, **hyperparameters)``
    with typed keyword hyper-parameters and published defaults, and implement :meth:`losses`. Optional
    capabilities come from the mixins of this module (see its docstring).
    """

    needs: ClassVar[Needs] = Needs()  # an instance may narrow its taps to the networks it got (self.needs = ...)
    description: ClassVar[str] = ""
    uses: ClassVar[str] = "logits"  # what the method reads of the networks, for `kdbench list methods`
    name: ClassVar[str] = ""
    report_hints: ClassVar[ReportHints] = ReportHints()  # extra report columns/predictors it records

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for mixin, names in CAPABILITIES.items():
            defined = [n for n in names if n in cls.__dict__]
            if defined and not issubclass(cls, mixin):
                raise TypeError(f"{cls.__name__} defines {', '.join(defined)} but does not inherit "
                                f"kdbench.method.{mixin.__name__}: write class {cls.__name__}({mixin.__name__}, "
                                f"..., Method)")

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

    def stages(self, recipe: dict[str, Any], labeled: bool = True) -> list[Stage]:
        """Extra phases run before the main one, in order (``labeled``: the run's data has labels). Default: none."""
        return []

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the student's and the method's own parameters, same settings."""
        groups = [{"params": [p for p in student.parameters() if p.requires_grad], "name": "student"}]
        own = [p for p in self.parameters() if p.requires_grad]
        if own:
            groups.append({"params": own, "name": "method"})
        return groups


# ---------------------------------------------------------------------------------------------- engine side
# How the engine reaches the capabilities: each function dispatches on the mixin and gives the default otherwise.


def bind_data(method: Method, train_size: int) -> None:
    """:meth:`BindsData.bind_data` where the method has it; else nothing."""
    if isinstance(method, BindsData):
        method.bind_data(train_size)


def epoch_start(method: Method, epoch: int, epochs: int) -> None:
    """:meth:`StepHooks.on_epoch_start` where the method has it; else nothing."""
    if isinstance(method, StepHooks):
        method.on_epoch_start(epoch, epochs)


def step_hook(method: Method, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
    """:meth:`StepHooks.before_step` where the method has it; else nothing."""
    if isinstance(method, StepHooks):
        method.before_step(optimizer, step, total_steps)


def after_training(method: Method, student: Network, batches: TrainingItems) -> None:
    """:meth:`CustomPredictor.after_training` where the method has it; else nothing."""
    if isinstance(method, CustomPredictor):
        method.after_training(student, batches)


def extra_evaluations(method: Method) -> dict[str, Predict]:
    """:meth:`CustomPredictor.extra_evaluations` where the method has it; else none."""
    return method.extra_evaluations() if isinstance(method, CustomPredictor) else {}


def describe_predictor(method: Method, final: bool) -> str:
    """:meth:`CustomPredictor.describe_predictor` where the method has it; else ``"student logits"``."""
    return method.describe_predictor(final) if isinstance(method, CustomPredictor) else "student logits"


def final_predict_differs(method: Method) -> bool:
    """``CustomPredictor.final_predict_differs`` where the method has it; else False."""
    return bool(method.final_predict_differs) if isinstance(method, CustomPredictor) else False


def reports_probe(method: Method) -> bool:
    """``CustomPredictor.reports_probe`` where the method has it; else False."""
    return bool(method.reports_probe) if isinstance(method, CustomPredictor) else False


def method_extras(method: Method) -> dict[str, dict[str, Any]]:
    """:meth:`RecordExtras.extras` where the method has it; else ``{}``."""
    return method.extras() if isinstance(method, RecordExtras) else {}


def report_hints(method: Method | type[Method]) -> dict[str, Any]:
    """The method's :class:`ReportHints` as a record entry (``{}`` when it declares none)."""
    return method.report_hints.as_record()


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

METHODS_ENV = "KDBENCH_METHODS"
"""Folders of a user's own method files (``os.pathsep``-separated), set by ``--methods DIR``; the environment
carries it to every worker and SLURM job, so they find the same methods."""


def discover_methods(package: str = "kdbench.methods") -> Registry[type[Method]]:
    """Import, once: every module of the shipped methods package (the checkout's ``methods/`` folder, installed
    as ``kdbench.methods``), every ``kdbench.methods`` entry point of installed packages, and every ``*.py`` file
    in the folders of ``$KDBENCH_METHODS``."""
    global _discovered
    if not _discovered:
        pkg = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package}.{info.name}")
        for ep in entry_points(group="kdbench.methods"):
            ep.load()
        for folder in filter(None, os.environ.get(METHODS_ENV, "").split(os.pathsep)):
            load_method_folder(Path(folder))
        _discovered = True
    return method_registry


class MethodFileError(ValueError):
    """A folder of one's own methods is missing, or one of its files does not import (one line naming it)."""


def load_method_folder(folder: Path) -> list[str]:
    """Import every ``*.py`` file of ``folder`` (not ``_*``) as a method plugin (module
    ``kdbench_user_methods.<stem>_<folder hash>``); returns the module names. :class:`MethodFileError` names a
    missing folder or a file that does not import."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MethodFileError(f"method folder '{folder}' does not exist (--methods / ${METHODS_ENV})")
    names = []
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        # the folder in the name: two folders may each hold a file of the same name
        name = f"kdbench_user_methods.{path.stem}_{hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:
                del sys.modules[name]
                raise MethodFileError(f"method file '{path}' does not import: {type(err).__name__}: {err}") from err
        names.append(name)
    return names
