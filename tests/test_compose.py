"""Compositions (issue 19): a method with others added (``crd+kd``), generically.

Golden/analytic: the composite's terms are the primary's terms plus the added method's non-CE terms computed
separately on the same batch (CE once); KD's term is ``alpha * T^2 * KL``; gradients reach every part's parameters.
The suite's ``with:`` is validated like a method entry (errors by key path), labels default to ``<name>+<other>``,
the unlabeled regime accepts a composite whose parts all run without labels, and the run spec round-trips with
``with`` written only when there is one (every single-method spec and run id stays as it was).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_suite

from kdbench import method as contract
from kdbench import store
from kdbench.compose import Composite, composite_label, union_needs
from kdbench.data.negatives import NegativeSampler
from kdbench.dispatch import dispatch
from kdbench.engine import phases_of
from kdbench.method import (
    Batch,
    BindsData,
    Method,
    Needs,
    RecordExtras,
    StepHooks,
    discover_methods,
    hyperparameters,
)
from kdbench.models import Network, Outputs, create_network
from kdbench.store.runspec import RunSpec
from kdbench.suite import SuiteError, expand, spec_id, validate

REGISTRY = discover_methods()
SMALL = {"width": 32, "mul": 2, "sample_steps": 4, "num_samples": 2, "warm_start_epochs": 1, "negatives": 16,
         "init_epochs": 1}  # as the conformance test: small heads, few negatives
TRAIN_SIZE = 40
KD = {"T": 4.0, "alpha": 1.0}  # RepDistiller's CRD+KD: -a 1, --kd_T 4


def _pair(same: bool = False) -> tuple[Network, Network]:
    torch.manual_seed(0)
    student = create_network("kdb_cnn_small" if same else "kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_small", num_classes=4, in_chans=1).eval().requires_grad_(False)
    return student, teacher


def _build(name: str, student: Network, teacher: Network, **params: object) -> Method:
    cls = REGISTRY.get(name)
    small = {k: v for k, v in SMALL.items() if k in hyperparameters(cls)}
    method = cls(student, teacher if cls.needs.teacher else None, num_classes=4, **{**small, **params})
    contract.bind_data(method, TRAIN_SIZE)
    return method


def _batch(needs: Needs, labeled: bool) -> Batch:
    torch.manual_seed(1)
    labels = torch.arange(TRAIN_SIZE) % 4
    batch = Batch(x=torch.randn(8, 1, 8, 8), y=labels[:8] if labeled else None, index=torch.arange(8))
    if needs.negatives:
        sampler = NegativeSampler(torch.arange(TRAIN_SIZE).numpy(), labels.numpy() if labeled else None,
                                  needs.negatives)
        batch.negatives = sampler.draw(batch.index, torch.Generator().manual_seed(0))
    return batch


PRIMARIES = [(name, labeled) for name in REGISTRY.names() if name != "kd" for labeled in (True, False)
             if labeled or not REGISTRY.get(name).needs.labels]


@pytest.mark.parametrize(("name", "labeled"), PRIMARIES,
                         ids=[f"{n}+kd-{'labeled' if lab else 'unlabeled'}" for n, lab in PRIMARIES])
def test_composite_terms_are_the_primarys_plus_kds_without_its_ce(name: str, labeled: bool) -> None:
    student, teacher = _pair(same=REGISTRY.get(name).incompatibility(*_pair()) is not None)
    primary, kd = _build(name, student, teacher), _build("kd", student, teacher, **KD)
    composite = Composite(copy.deepcopy(primary), [("kd", copy.deepcopy(kd))])  # stateful parts: fresh copies
    batch = _batch(composite.needs, labeled)
    s = student(batch.x, taps=composite.needs.student_taps)
    with torch.no_grad():
        t = teacher(batch.x, taps=composite.needs.teacher_taps)
    torch.manual_seed(2)
    own, added = primary.losses(batch, s, t), kd.losses(batch, s, t)
    torch.manual_seed(2)
    terms = composite.losses(batch, s, t)
    expected = {**own, **{f"kd.{k}": v for k, v in added.items() if k != "ce"}}
    assert list(terms) == list(expected)
    for key, value in expected.items():
        assert torch.equal(terms[key].detach(), value.detach()), key
    assert "kd.ce" not in terms and ("ce" in terms) == ("ce" in own)  # the CE once, the primary's
    if labeled and "ce" in own:
        assert "ce" in added  # KD had one of its own: it was dropped, not missing
    # KD's term, by hand: alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), batch mean
    T, alpha = KD["T"], KD["alpha"]
    kl = F.kl_div(F.log_softmax(s.logits / T, dim=1), F.softmax(t.logits / T, dim=1), reduction="batchmean")
    assert torch.allclose(terms["kd.kd"], alpha * T**2 * kl, rtol=1e-5, atol=1e-7)


def test_crd_plus_kd_is_repdistillers_sum_of_weighted_terms() -> None:
    student, teacher = _pair()
    crd = _build("crd", student, teacher, weight=0.8)
    composite = Composite(crd, [("kd", _build("kd", student, teacher, **KD))])
    batch = _batch(composite.needs, labeled=True)
    s, t = student(batch.x), teacher(batch.x)
    terms = composite.losses(batch, s, t)
    assert set(terms) == {"ce", "crd", "kd.kd"}
    assert torch.allclose(terms["ce"], F.cross_entropy(s.logits, batch.y))  # gamma 1 (RepDistiller's -r 1)


@pytest.mark.parametrize(("primary", "added"), [("fitnet", "crd"), ("crd", "fitnet"), ("vid", "cc"),
                                                ("ab", "kd"), ("reviewkd", "mse")])
def test_gradients_reach_both_parts_parameters_and_never_the_teacher(primary: str, added: str) -> None:
    student, teacher = _pair()
    composite = Composite(_build(primary, student, teacher), [(added, _build(added, student, teacher))])
    groups = composite.param_groups(student)
    assert groups[0]["name"] == "student"
    own = [p for p in composite.added[added].parameters() if p.requires_grad]
    if own:
        assert any(g["name"].startswith(f"{added}.") for g in groups)
        assert {id(p) for p in own} <= {id(p) for g in groups for p in g["params"]}
    batch = _batch(composite.needs, labeled=True)
    main = phases_of(composite, {"epochs": 1, "batch_size": 8})[-1]
    s = student(batch.x, taps=composite.needs.student_taps)
    t = teacher(batch.x, taps=composite.needs.teacher_taps)
    torch.stack(list(main.losses(batch, s, t).values())).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    student_ids = {id(p) for p in student.parameters()}
    for group in groups:
        for p in group["params"]:
            if id(p) not in student_ids:
                assert p.grad is not None, f"{group['name']}: a parameter the composite optimizes got no gradient"
    assert all(p.grad is None for p in teacher.parameters())
    assert len({id(p) for g in groups for p in g["params"]}) == sum(len(g["params"]) for g in groups)


def test_stages_and_predictor_are_the_primarys() -> None:
    student, teacher = _pair()
    ab = _build("ab", student, teacher)
    composite = Composite(ab, [("kd", _build("kd", student, teacher))])
    recipe = {"epochs": 2, "batch_size": 8}
    assert [p.name for p in phases_of(composite, recipe)] == [p.name for p in phases_of(ab, recipe)]
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(composite.predict(x, student(x)), student(x).logits)
    assert contract.describe_predictor(composite, final=True) == "student logits"
    assert composite.name == "ab+kd" and composite.num_classes == 4


def test_needs_are_the_union() -> None:
    a = Needs(labels=False, teacher=True, student_taps=("stage1", "stage2"), teacher_taps=("stage2",), negatives=16)
    b = Needs(labels=True, teacher=False, student_taps=("stage2", "stage0"), teacher_taps=("stage3",), negatives=4)
    assert union_needs([a, b]) == Needs(labels=True, teacher=True, student_taps=("stage1", "stage2", "stage0"),
                                        teacher_taps=("stage2", "stage3"), negatives=16)
    student, teacher = _pair()
    crd, dkd = _build("crd", student, teacher), _build("dkd", student, teacher)
    composite = Composite(crd, [("dkd", dkd)])
    assert composite.needs.labels and composite.needs.negatives == crd.needs.negatives


class _Recorder(BindsData, StepHooks, RecordExtras, Method):
    """A method that records which capability hooks reached it."""

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, tag: str = "") -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        self.tag, self.calls = tag, []
        self.scale = torch.nn.Parameter(torch.ones(()))

    def bind_data(self, train_size: int) -> None:
        self.calls.append(("bind_data", train_size))

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.calls.append(("epoch", epoch))

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        self.calls.append(("step", step))

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        return {"ce": s.logits.sum() * 0, self.tag: self.scale * s.logits.pow(2).mean()}

    def extras(self) -> dict[str, dict]:
        return {"cost": {"bank_mb": 1.0}, "diagnostics": {"tag": self.tag}}


class _Plain(Method):
    """A method without capabilities."""

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        return {"plain": s.logits.mean()}


def test_capabilities_reach_every_part_that_has_them() -> None:
    student, teacher = _pair()
    one, two = (_Recorder(student, teacher, num_classes=4, tag=tag) for tag in ("one", "two"))
    one.name, two.name = "first", "second"
    composite = Composite(one, [("second", two), ("plain", _Plain(student, teacher, num_classes=4))])
    contract.bind_data(composite, 40)
    contract.epoch_start(composite, 3, 10)
    contract.step_hook(composite, torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), 7, 70)
    for part in (one, two):
        assert part.calls == [("bind_data", 40), ("epoch", 3), ("step", 7)]
    assert contract.method_extras(composite) == {"cost": {"bank_mb": 1.0, "second.bank_mb": 1.0},
                                                 "diagnostics": {"tag": "one", "second.tag": "two"}}
    x = torch.randn(4, 1, 8, 8)
    terms = composite.losses(Batch(x, torch.zeros(4, dtype=torch.long), torch.arange(4)), student(x), None)
    assert list(terms) == ["ce", "one", "second.two", "plain.plain"]
    assert [g["name"] for g in composite.param_groups(student)] == ["student", "method", "second.method"]
    assert not contract.final_predict_differs(composite) and not contract.reports_probe(composite)
    assert contract.extra_evaluations(composite) == {}


def test_a_composite_refuses_bad_parts() -> None:
    student, teacher = _pair()
    kd = _build("kd", student, teacher)
    with pytest.raises(ValueError, match="at least one"):
        Composite(kd, [])
    with pytest.raises(ValueError, match="once"):
        Composite(kd, [("kd", _build("kd", student, teacher))])
    with pytest.raises(ValueError, match="stages of its own"):
        Composite(kd, [("ab", _build("ab", student, teacher))])


# ---------------------------------------------------------------------------------------------- suites


def _error(raw: dict) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        validate(raw)
    return info.value


BASE = [{"name": "vanilla"}, {"name": "kd"}]


@pytest.mark.parametrize(("added", "key", "words"), [
    ([{"name": "kd", "T": "hot"}], "methods[2].with[0].T", "expected a number"),
    ([{"name": "kd", "TT": 4}], "methods[2].with[0].TT", "unknown parameter 'TT' of method 'kd'"),
    ([{"name": "kd", "label": "x"}], "methods[2].with[0].label", "unknown parameter 'label'"),
    ([{"name": "kdd"}], "methods[2].with[0].name", "unknown method 'kdd'"),
    (["kd", {"name": "kd", "T": 2}], "methods[2].with[1].name", "added twice"),
    ([{"name": "crd"}], "methods[2].with[0].name", "cannot be added to itself"),
    ([{"name": "ab"}], "methods[2].with[0].name", "stages of its own"),
    ([{"T": 4}], "methods[2].with[0]", "expected a mapping with a 'name'"),
    ([], "methods[2].with", "non-empty list"),
    ([{"name": "kd", "T": 0}], "methods[2].with[0]", "T must be > 0"),
])
def test_with_is_validated_like_a_method_entry(added: list, key: str, words: str) -> None:
    err = _error(tiny_suite(methods=[*BASE, {"name": "crd", "negatives": 16, "with": added}]))
    assert err.key == key, str(err)
    assert words in str(err)


def test_labels_default_to_name_plus_others_and_must_stay_unique() -> None:
    suite = validate(tiny_suite(methods=[*BASE, {"name": "at"}, {"name": "at", "with": ["kd"]},
                                         {"name": "at", "with": [{"name": "kd"}, {"name": "mse"}]},
                                         {"name": "fitnet", "with": "kd", "label": "hint_kd"}]))
    assert [m.label for m in suite.methods] == ["vanilla", "kd", "at", "at+kd", "at+kd+mse", "hint_kd"]
    assert composite_label("crd", ["kd"]) == "crd+kd"
    err = _error(tiny_suite(methods=[*BASE, {"name": "at", "with": ["kd"]}, {"name": "at", "with": ["kd"]}]))
    assert err.key == "methods[3].label" and "used twice" in str(err)


def test_unlabeled_regime_takes_label_free_composites_and_refuses_the_others() -> None:
    unlabeled = {"regimes": [{"name": "unlabeled"}]}
    suite = validate(tiny_suite(**unlabeled, methods=[{"name": "kd"}, {"name": "crd", "negatives": 16,
                                                                         "with": [{"name": "kd", **KD}]}]))
    runs = [spec for spec in expand(suite).runs.values() if spec.label == "crd+kd"]
    assert len(runs) == 1 and runs[0].regime.name == "unlabeled" and runs[0].teacher_id
    err = _error(tiny_suite(**unlabeled, methods=[{"name": "kd"}, {"name": "at", "with": ["dkd"]}]))
    assert err.key == "methods[1].name" and "method 'dkd' needs labels" in str(err)
    plan = expand(validate(tiny_suite(methods=[*BASE, {"name": "mse", "with": ["vanilla"]}])))
    assert "mse+vanilla x unlabeled: refused, method 'vanilla' needs labels" in plan.refused
    assert {s.regime.name for s in plan.runs.values() if s.label == "mse+vanilla"} == {"balanced"}


def test_a_pairs_values_for_the_primary_apply_to_its_composites() -> None:
    pair = {"teacher": "kdb_cnn_small", "student": "kdb_cnn_nano"}
    methods = [*BASE, {"name": "fitnet"}, {"name": "fitnet", "with": ["kd"]},
               {"name": "fitnet", "with": ["mse"], "label": "fm"}]
    plan = expand(validate(tiny_suite(pairs=[{**pair, "params": {"fitnet": {"weight": 7.0}, "fm": {"ce": 0.5}}}],
                                      methods=methods)))
    params = {s.label: s.method_params for s in plan.runs.values() if s.regime.name == "balanced"}
    assert params["fitnet"]["weight"] == params["fitnet+kd"]["weight"] == params["fm"]["weight"] == 7.0
    assert params["fm"]["ce"] == 0.5 and params["fitnet"]["ce"] == 1.0


def test_spec_round_trips_and_single_method_specs_keep_their_ids() -> None:
    plain = expand(validate(tiny_suite()))
    mixed = expand(validate(tiny_suite(methods=[{"name": "vanilla"}, {"name": "kd"}, {"name": "mse"},
                                                {"name": "mse", "with": [{"name": "kd", **KD}]}])))
    assert set(plain.runs) < set(mixed.runs)  # adding a composite changes no other run's id
    for run_id, spec in mixed.runs.items():
        d = spec.to_dict()
        assert RunSpec.from_dict(d).to_dict() == d and spec_id(RunSpec.from_dict(d)) == run_id
        assert ("with" in d) == (spec.label == "mse+kd")
    (composite,) = [s for s in mixed.runs.values() if s.label == "mse+kd" and s.regime.name == "balanced"]
    assert composite.to_dict()["with"] == [{"name": "kd", "params": {"T": 4.0, "alpha": 1.0, "gamma": 0.1,
                                                                     "ls": False, "freeze_student_fc": False}}]
    assert composite.method == "mse" and composite.composed


def test_a_composite_suite_trains_end_to_end(tmp_path: Path) -> None:
    suite = validate(tiny_suite(methods=[{"name": "crd", "negatives": 16, "with": [{"name": "kd", **KD}]}],
                                train={"epochs": 1, "batch_size": 32, "lr": 0.05},
                                teacher={"train": {"epochs": 1, "batch_size": 32}}))
    plan = expand(suite)
    summary = dispatch(plan, tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 3}, summary.states
    for run_id, spec in plan.runs.items():
        (path,) = tmp_path.rglob(f"{run_id}/{store.RESULT}")
        record = store.load_record(path.parent)
        assert record.state == "done" and record.spec["with"][0]["name"] == "kd"
        last = store.read_jsonl(path.parent / store.METRICS)[-1]
        assert "train_kd.kd" in last and "train_crd" in last
        assert ("train_ce" in last) == (spec.regime.name == "balanced")
