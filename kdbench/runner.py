"""Execute one run directory: rebuild everything from ``spec.json``, fit, and write ``result.json``.

This is what a job runs (locally or on a cluster). It is idempotent: a finished run returns its record,
an interrupted one resumes from its checkpoint, and every ending (done, diverged, failed) leaves a record.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kdbench import distributed, store, tracking
from kdbench import method as contract
from kdbench.compose import Composite
from kdbench.data import TensorData, dataset_registry, eval_batches, regime_registry
from kdbench.data.regimes import RegimeData, hold_out
from kdbench.engine import (
    FitOutcome,
    Precision,
    TrainState,
    evaluate,
    fit,
    phases_of,
    save_checkpoint,
    seed_everything,
    set_deterministic,
    steps_per_epoch,
)
from kdbench.envinfo import environment
from kdbench.measure import inference_cost, peak_memory_mb
from kdbench.method import Method, discover_methods
from kdbench.models import Network, count_parameters, create_network
from kdbench.models.network import check_taps
from kdbench.spec import TrainConfig
from kdbench.store import sha256_file
from kdbench.store.record import (
    Artifacts,
    Cost,
    DataFacts,
    Diagnostics,
    Environment,
    Metrics,
    PrecisionFacts,
    Predictors,
    Record,
    Stability,
)
from kdbench.store.runspec import RunSpec
from kdbench.teachers import check_measured_top1, load_job_teacher, load_source


def _metrics(outcome: FitOutcome, groups: dict[str, list[int]]) -> dict[str, Any]:
    """Final metrics from the main phase's history (and the end-of-run evaluations when the method has them)."""
    history = [h for h in outcome.history if h.get("phase", "main") == "main"]
    if not history:
        return {}
    last = history[-1]
    best = max(history, key=lambda h: h.get("top1"))  # the first epoch with the highest test top-1
    keys = ["top1", "top5", *[f"top1_{g}" for g in groups], "top1_probe"]
    metrics: dict[str, Any] = {"best_epoch": best["epoch"], "epochs_completed": last["epoch"]}
    if "val_top1" in last:  # the epoch chosen on the held-out split, reported on the test split
        chosen = max(history, key=lambda h: h["val_top1"])
        metrics.update(top1_val=chosen["top1"], top5_val=chosen["top5"], val_selected_epoch=chosen["epoch"],
                       val_top1_last=last["val_top1"], val_top1_best=chosen["val_top1"])  # the held-out split's own
    for key in (k for k in keys if k in last):
        metrics[f"{key}_last"], metrics[f"{key}_best"] = last[key], best[key]
    for which, evaluation in outcome.final.items():  # end-of-run evaluation replaces the per-epoch one
        for key, value in evaluation.as_metrics().items():
            if f"{key}_{which}" in metrics:
                metrics[f"{key}_{which}_per_epoch"] = metrics[f"{key}_{which}"]
            metrics[f"{key}_{which}"] = value
    # names of the schema: top1_many/medium/few = last epoch
    for group in groups:
        if f"top1_{group}_last" in metrics:
            metrics[f"top1_{group}"] = metrics[f"top1_{group}_last"]
    return metrics


def _print(message: str) -> None:
    print(message, flush=True)


def _environment(device: torch.device | str) -> Environment:
    return Environment({**environment(device), "world_size": distributed.world_size()})


def execute(run_dir: Path, log: Callable[[str], None] = _print) -> Record:
    """Run (or resume) the run in ``run_dir`` and return its record. Never leaves a run without a record
    unless the process itself is killed (then the next call resumes from the checkpoint). The spec is read
    once, here, and handed down typed."""
    run_dir = Path(run_dir)
    if not distributed.is_main():  # data-parallel ranks > 0 train beside rank 0 and write nothing
        raw = store.read_json(run_dir / store.SPEC)
        return _execute(run_dir, RunSpec.from_dict(raw), raw, lambda message: None)  # and track nothing
    with store.run_lock(run_dir, timeout_s=24 * 3600):
        set_aside = store.set_aside_invalid_result(run_dir)  # a job may meet one that `run` never saw (requeue)
        if set_aside:
            log(f"{run_dir / store.RESULT}: {set_aside}")
        existing = store.load_record(run_dir)
        if existing is not None and existing.finished:
            return existing
        raw = store.read_json(run_dir / store.SPEC)
        began = time.time()
        tracker = tracking.GuardedTracker(None, "none", log)  # off until the spec is read
        try:
            try:
                spec = RunSpec.from_dict(raw)
                if not spec.verifies:  # a verified teacher trains no epoch: nothing to follow
                    tracker = tracking.open_tracker(spec.tracking, _run_info(run_dir, spec, raw),
                                                    lambda message: log(f"[{run_dir.name}] {message}"))
                record = _execute(run_dir, spec, raw, log, tracker.epoch_line)
            except Exception as err:  # a failed run must leave a record naming why
                log(traceback.format_exc())
                record = Record(run_id=run_dir.name, spec=raw, state="failed", error=f"{type(err).__name__}: {err}",
                                traceback=traceback.format_exc()[-4000:], env=_environment("cpu"))
            record = dataclasses.replace(record, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                         wall_seconds=time.time() - began)
            store.write_record(run_dir, record)
            tracker.finish(_summary(record))
        finally:
            tracker.close()  # stopped before its record (Ctrl-C, SIGTERM): finished as interrupted
        return record


def _run_info(run_dir: Path, spec: RunSpec, raw: dict[str, Any]) -> tracking.RunInfo:
    """What a tracker shows of a run: ``<label> <regime> seed <n>`` (teachers: ``teacher <model> ...``)."""
    what = f"teacher {spec.model}" if spec.is_teacher else spec.label
    return tracking.RunInfo(run_id=run_dir.name, run_dir=run_dir, suite=run_dir.parent.parent.name,
                            name=f"{what} {spec.regime.shown} seed {spec.seed} {run_dir.name}", role=spec.role,
                            config=raw)


def _summary(record: Record) -> dict[str, Any]:
    """A record's final numbers for a tracker: its state, metrics, wall time and training cost."""
    cost = {key: record.cost.get(key) for key in ("train_seconds", "seconds_per_epoch", "total_epochs")
            if record.cost.get(key) is not None}
    return {"state": record.state, **record.metrics.to_dict(), "wall_seconds": record.wall_seconds, **cost}


def _data(spec: RunSpec) -> tuple[Any, RegimeData, TensorData | None]:
    """The dataset's splits, the regime's training subset, and the held-out validation split (if asked)."""
    splits = dataset_registry.get(spec.dataset.name)(**spec.dataset.params).load()
    regime = regime_registry.get(spec.regime.name)(**spec.regime.params)
    regime_data = regime.apply(splits.train.y.numpy(), splits.num_classes)
    if spec.eval.val_fraction <= 0:
        return splits, regime_data, None
    regime_data, val_indices = hold_out(regime_data, splits.train.y.numpy(), spec.eval.val_fraction,
                                        spec.eval.val_seed)
    return splits, regime_data, splits.train.subset(val_indices)


def _stability(outcome: FitOutcome) -> Stability:
    history = outcome.history
    return Stability(diverged_epoch=outcome.diverged_epoch, diverged_phase=outcome.diverged_phase,
                     reason=outcome.reason,
                     grad_norm_max=max((h.get("grad_norm_max") for h in history), default=None),
                     loss_spikes=sum(h.get("loss_spikes", 0) for h in history),
                     nonfinite_events=sum(h.get("nonfinite_grads", 0) for h in history) + int(outcome.nonfinite_loss))


def _training_cost(spec: RunSpec, recipe: TrainConfig, outcome: FitOutcome, method: Method, student: Network,
                   teacher: Network | None, regime_data: RegimeData) -> dict[str, Any]:
    main_seconds = [h.get("train_seconds") for h in outcome.history if h.get("phase", "main") == "main"]
    per_epoch = sum(main_seconds) / len(main_seconds) if main_seconds else None
    stage_epochs = {p.name: p.recipe.epochs for p in phases_of(method, recipe, regime_data.labeled) if not p.main}
    return {"train_seconds": sum(h.get("train_seconds") for h in outcome.history), "seconds_per_epoch": per_epoch,
            "train_step_ms": None if per_epoch is None
            else 1000 * per_epoch / steps_per_epoch(len(regime_data.indices), recipe.batch_size),
            "params": count_parameters(student), "extra_params": count_parameters(method),
            "teacher_params": count_parameters(teacher) if teacher is not None else None,
            "epochs": spec.epochs, "extra_epochs": stage_epochs,
            "total_epochs": spec.epochs + sum(stage_epochs.values())}


def _verify_teacher(run_dir: Path, spec: RunSpec, raw: dict[str, Any], log: Callable[[str], None]) -> Record:
    """A teacher the suite does not train (:func:`kdbench.teachers.load_source`): measure its top-1 on the test
    split and fail unless it is as expected (:func:`kdbench.teachers.check_measured_top1`). The verified weights
    are written in kdbench's format for the students."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    splits, regime_data, _ = _data(spec)
    network, details = load_source(spec.source, spec.model, splits.num_classes, splits.in_chans, splits.img_size,
                                   log)
    check_taps(network, next(eval_batches(splits.test, 2))[0])
    network.to(device)
    evaluation = evaluate(network, lambda x, out: out.logits, splits.test, spec.eval.batch_size,
                          regime_data.groups, device)
    check_measured_top1(spec.source, spec.model, evaluation.top1, log)
    weights = run_dir / store.WEIGHTS
    save_checkpoint(weights, {k: v.cpu() for k, v in network.state_dict().items()})
    measured = evaluation.as_metrics()
    metrics = {**{f"{k}_last": v for k, v in measured.items()}, **{f"{k}_best": v for k, v in measured.items()},
               "best_epoch": 0}
    return Record(run_id=run_dir.name, spec=raw, state="done", metrics=Metrics(metrics), empty=("stability",),
                  diagnostics=Diagnostics({"expected_top1": spec.source.top1, **details}), resumes=[],
                  extra_evaluations={}, data=DataFacts(test_size=len(splits.test), labeled=True),
                  cost=Cost({"params": count_parameters(network), "epochs": 0, "total_epochs": 0}),
                  artifacts=Artifacts(weights=store.WEIGHTS, weights_sha256=sha256_file(weights)),
                  env=_environment(device))


def _execute(run_dir: Path, spec: RunSpec, raw: dict[str, Any], log: Callable[[str], None],
             on_epoch: Callable[[dict[str, Any], int], None] | None = None) -> Record:
    if spec.is_teacher and spec.verifies:
        return _verify_teacher(run_dir, spec, raw, log)
    device = distributed.device()
    splits, regime_data, val = _data(spec)
    shape = {"num_classes": splits.num_classes, "in_chans": splits.in_chans, "img_size": splits.img_size}
    set_deterministic(spec.runtime.deterministic)
    seed_everything(spec.seed)
    student = create_network(spec.model, **shape)
    sync_bn = spec.recipe.batchnorm == "sync"  # before anything holds references to the BatchNorm layers
    if sync_bn:
        student = Network(distributed.convert_sync_batchnorm(student.model), name=student.name)
    teacher = load_job_teacher(run_dir, spec.teacher_id, spec.teacher, **shape) if spec.teacher_id else None
    example_input = next(eval_batches(splits.test, 2))[0]
    for network in (student, teacher):  # every tap has the shape its model declares, before any training
        if network is not None:
            check_taps(network, example_input)
    registry = discover_methods()
    method: Method = registry.get(spec.method)(student, teacher, num_classes=splits.num_classes,
                                               **spec.method_params)
    if spec.compose:  # a composition (``with``): the added methods' losses add to the method's
        method = Composite(method, [(part.name, registry.get(part.name)(student, teacher,
                                                                        num_classes=splits.num_classes,
                                                                        **part.params))
                                    for part in spec.compose])
    if sync_bn:
        method = distributed.convert_sync_batchnorm(method)
    contract.bind_data(method, len(splits.train))
    precision = Precision.resolve(spec.runtime, device)
    for module in (student, method, teacher):
        if module is not None:
            precision.model(module.to(device))
    prefix = f"[{spec.role} {spec.label} {spec.regime.name} seed {spec.seed} {run_dir.name}]"
    ts = TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime_data,
                    test=splits.test, val=val, recipe=spec.recipe, eval_batch_size=spec.eval.batch_size,
                    seed=spec.seed, device=device, run_dir=run_dir, log=lambda msg: log(f"{prefix} {msg}"),
                    precision=precision, batchnorm=spec.recipe.batchnorm, on_epoch=on_epoch,
                    checkpoint_every_s=spec.runtime.checkpoint_every_s)
    outcome = fit(ts)

    artifacts = Artifacts()
    main = distributed.is_main()
    if main and spec.is_teacher and outcome.state == "done":
        weights = run_dir / store.WEIGHTS
        save_checkpoint(weights, {k: v.cpu() for k, v in student.state_dict().items()})
        artifacts = Artifacts(weights=store.WEIGHTS, weights_sha256=sha256_file(weights))
    cost = _training_cost(spec, spec.recipe, outcome, method, student, teacher, regime_data)
    extra_evaluations = {}
    if main and outcome.state == "done":  # timings: rank 0 alone, on its own device
        example = next(eval_batches(splits.test, spec.eval.batch_size, device))[0]
        method.eval()
        cost.update(inference_cost(student, lambda x, out: method.predict(x, out, final=True), example,
                                   batch_sizes=(1, len(example))))
        predictors = contract.extra_evaluations(method)
        for name, evaluation in outcome.extra.items():
            timing = inference_cost(student, predictors.get(name), example, batch_sizes=(1, len(example)))
            extra_evaluations[name] = {**evaluation.as_metrics(), **timing}
    elif outcome.state == "done":
        extra_evaluations = {name: evaluation.as_metrics() for name, evaluation in outcome.extra.items()}
    cost["peak_memory_mb"] = peak_memory_mb(device)
    extras = contract.method_extras(method)
    cost.update(extras.get("cost", {}))
    return Record(
        run_id=run_dir.name, spec=raw, state=outcome.state,
        metrics=Metrics(_metrics(outcome, regime_data.groups)),
        stability=_stability(outcome),
        diagnostics=Diagnostics(extras.get("diagnostics", {})),
        resumes=outcome.resumes,
        extra_evaluations=extra_evaluations,
        predictors=Predictors(final=contract.describe_predictor(method, final=True),
                              per_epoch=contract.describe_predictor(method, final=False),
                              final_differs=contract.final_predict_differs(method)),
        data=DataFacts(train_size=len(regime_data.indices), test_size=len(splits.test),
                       val_size=len(val) if val is not None else 0, labeled=regime_data.labeled,
                       class_counts=regime_data.class_counts, groups=regime_data.groups,
                       synthetic=spec.dataset.name == "synthetic"),
        precision=PrecisionFacts(amp_bf16=precision.amp, channels_last=precision.channels_last),
        cost=Cost(cost),
        artifacts=artifacts,
        env=_environment(device),
    )
