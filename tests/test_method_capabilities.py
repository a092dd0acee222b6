"""The slim method contract: optional capabilities are mixins reached through kdbench.method's functions (the
default for a method without the mixin), a hook defined without its mixin is refused, methods declare their
report hints as data, and ``Batch`` lives in the low module kdbench.batch."""

from __future__ import annotations

import json

import pytest
import torch

import kdbench.method as contract
from kdbench.method import (
    CAPABILITIES,
    BindsData,
    CustomPredictor,
    Method,
    RecordExtras,
    ReportHints,
    StepHooks,
    discover_methods,
)
from kdbench.models import create_network


def _pair():
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval()
    return student, teacher


class Plain(Method):
    """A method with no optional capability."""

    def losses(self, batch, s, t):
        return {"zero": s.logits.sum() * 0}


class Everything(BindsData, StepHooks, CustomPredictor, RecordExtras, Method):
    """A method with every capability, recording each call."""

    final_predict_differs = True
    reports_probe = True

    def __init__(self, student, teacher, *, num_classes: int) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.calls: list[tuple] = []

    def bind_data(self, train_size):
        self.calls.append(("bind_data", train_size))

    def on_epoch_start(self, epoch, epochs):
        self.calls.append(("on_epoch_start", epoch, epochs))

    def before_step(self, optimizer, step, total_steps):
        self.calls.append(("before_step", step, total_steps))

    def after_training(self, student, batches):
        self.calls.append(("after_training", len(list(batches()))))

    def describe_predictor(self, final):
        return f"mine ({'final' if final else 'per epoch'})"

    def extra_evaluations(self):
        return {"twice": lambda x, s: 2 * s.logits}

    def extras(self):
        return {"diagnostics": {"calls": len(self.calls)}}


def _call_the_hooks(method: Method, student: torch.nn.Module) -> None:
    """Every hook the engine calls, through kdbench.method's functions, as the engine does."""
    contract.bind_data(method, 10)
    contract.epoch_start(method, 1, 3)
    contract.step_hook(method, torch.optim.SGD(student.parameters(), lr=0.1), 5, 9)
    contract.after_training(method, student, lambda: iter([(torch.zeros(1), torch.zeros(1))] * 2))


def test_the_engine_functions_give_the_defaults_without_a_mixin() -> None:
    student, teacher = _pair()
    method = Plain(student, teacher, num_classes=4)
    _call_the_hooks(method, student)  # no-ops
    assert contract.extra_evaluations(method) == {}
    assert contract.describe_predictor(method, final=True) == "student logits"
    assert contract.method_extras(method) == {}
    assert contract.final_predict_differs(method) is False and contract.reports_probe(method) is False
    assert contract.report_hints(method) == {}
    assert not isinstance(method, (BindsData, StepHooks, CustomPredictor, RecordExtras))


def test_the_engine_functions_call_the_mixins() -> None:
    student, teacher = _pair()
    method = Everything(student, teacher, num_classes=4)
    _call_the_hooks(method, student)
    assert method.calls == [("bind_data", 10), ("on_epoch_start", 1, 3), ("before_step", 5, 9),
                            ("after_training", 2)]
    x = torch.randn(2, 1, 8, 8)
    out = student(x)
    assert torch.equal(contract.extra_evaluations(method)["twice"](x, out), 2 * out.logits)
    assert contract.describe_predictor(method, final=False) == "mine (per epoch)"
    assert contract.method_extras(method) == {"diagnostics": {"calls": 4}}
    assert contract.final_predict_differs(method) is True and contract.reports_probe(method) is True


@pytest.mark.parametrize(("mixin", "name"), [(m, n) for m, names in CAPABILITIES.items() for n in names])
def test_a_hook_without_its_mixin_is_refused_when_the_class_is_defined(mixin: type, name: str) -> None:
    body = {name: True} if name in ("final_predict_differs", "reports_probe") else {name: lambda self, *a: None}
    with pytest.raises(TypeError, match=f"defines {name} but does not inherit kdbench.method.{mixin.__name__}"):
        type("Forgetful", (Method,), body)
    type("Careful", (mixin, Method), body)  # with the mixin it is a method like any other


def test_registered_methods_inherit_the_capabilities_they_use() -> None:
    registry = discover_methods()
    expected = {"crd": {BindsData, RecordExtras}, "dkd": {StepHooks}, "ikl": {StepHooks},
                "reviewkd": {StepHooks}, "gendd": {StepHooks, CustomPredictor, RecordExtras}}
    for name in registry.names():
        cls = registry.get(name)
        has = {mixin for mixin in CAPABILITIES if issubclass(cls, mixin)}
        assert has == expected.get(name, set()), name


def test_report_hints_are_data_and_gendd_declares_its_predictors() -> None:
    assert ReportHints().as_record() == {}
    gendd = discover_methods().get("gendd")
    hints = contract.report_hints(gendd)
    assert json.loads(json.dumps(hints)) == hints  # plain JSON: the runner can write it into the record
    assert hints["predictor_settings"] == "sweep_settings" and hints["own_predictor_settings"] == "sampler"
    assert hints["sweep_x"] == "steps" and hints["reference"] is True
    assert hints["parameter_curves"] == ["token_dim", "smooth", "sample_steps"]
    assert hints["setting_text"].format(sampler="ddim", steps=4, samples=1, cfg=1.0, start_step=999) \
        == "ddim K=4 x1 cfg 1 t999"
    for name in discover_methods().names():
        if name != "gendd":
            assert contract.report_hints(discover_methods().get(name)) == {}, name


def test_batch_lives_in_the_low_module_and_is_re_exported() -> None:
    import ast
    from pathlib import Path

    import kdbench.batch

    assert contract.Batch is kdbench.batch.Batch
    tree = ast.parse(Path(kdbench.batch.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "torch"}
