"""The one training loop (teachers, every method, every extra stage) and the one evaluation path."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, KeysView, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench import distributed
from kdbench.batch import Batch
from kdbench.data import RegimeData, TensorData, eval_batches, train_batches
from kdbench.engine import steplog
from kdbench.engine.checkpoint import BestPoint, ResumePoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from kdbench.engine.recipe import PerStepLR, as_train_config, build_optimizer, build_scheduler, steps_per_epoch
from kdbench.engine.steplog import SpikeCounter, StepLog
from kdbench.method import (
    LossFn,
    Method,
    StepHooks,
    after_training,
    epoch_start,
    extra_evaluations,
    final_predict_differs,
    reports_probe,
    step_hook,
)
from kdbench.models import Network, Outputs
from kdbench.spec import CHECKPOINT_EVERY_S, TrainConfig
from kdbench.store import append_jsonl, atomic_write_jsonl, move_aside, read_jsonl

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"

Predict = Callable[[torch.Tensor, Outputs], torch.Tensor]


@dataclass
class Evaluation:
    """Top-1/top-5 accuracy (percent) on a split, mean per-class accuracy of each class group, and the
    top-1 of the student's own logits when the method reports it as a probe."""

    top1: float
    top5: float
    groups: dict[str, float] = field(default_factory=dict)
    probe_top1: float | None = None

    def as_metrics(self) -> dict[str, float]:
        """The evaluation as named metrics (``top1``, ``top5``, ``top1_<group>``, ``top1_probe``)."""
        probe = {"top1_probe": self.probe_top1} if self.probe_top1 is not None else {}
        return {"top1": self.top1, "top5": self.top5, **{f"top1_{g}": v for g, v in self.groups.items()}, **probe}


@dataclass(frozen=True)
class Precision:
    """How tensors are computed: bf16 autocast (``amp``) and the channels-last memory format for 4-D inputs.
    Both are on by default on GPUs (``executor.amp`` / ``executor.channels_last``: auto, on, off)."""

    amp: bool = False
    channels_last: bool = False

    @classmethod
    def resolve(cls, runtime: Any, device: torch.device) -> Precision:
        """From a run spec's :class:`~kdbench.store.runspec.Runtime` (or a mapping of the same names, or None);
        ``auto`` means on for CUDA devices, off elsewhere."""

        def choice(name: str) -> bool:
            value = (runtime.get(name, "auto") if isinstance(runtime, Mapping)
                     else getattr(runtime, name, "auto"))
            return device.type == "cuda" if value == "auto" else value == "on"

        return cls(amp=choice("amp"), channels_last=choice("channels_last"))

    def autocast(self, device: torch.device | str) -> Any:
        """The autocast context for a forward pass (a null context when ``amp`` is off: cheaper per step than a
        disabled autocast)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the chosen memory format."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def model(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module in the chosen memory format."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


@torch.no_grad()
def evaluate(student: Network, predict: Predict, data: TensorData, batch_size: int,
             groups: dict[str, list[int]] | None = None, device: torch.device | str = "cpu",
             probe: bool = False, precision: Precision = Precision()) -> Evaluation:
    """Accuracy of ``predict(x, student(x))`` on ``data``; a group's accuracy is the mean of its classes' (the
    per-class counts are kept only when there are groups)."""
    student.eval()
    correct1 = correct5 = probe_correct = total = 0
    groups = {name: classes for name, classes in (groups or {}).items() if classes}
    num_classes = student.num_classes
    per_class_correct = torch.zeros(num_classes, dtype=torch.float64)
    per_class_total = torch.zeros(num_classes, dtype=torch.float64)
    for x, y in eval_batches(data, batch_size, device):
        x = precision.input(x)
        with precision.autocast(device):
            out = student(x)
            scores = predict(x, out).float()
        top = scores.topk(min(5, scores.shape[1]), dim=1).indices
        hit1 = top[:, 0] == y
        correct1 += int(hit1.sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        if probe:
            probe_correct += int((out.logits.argmax(1) == y).sum())
        total += len(y)
        if groups:
            per_class_correct += torch.bincount(y.cpu(), weights=hit1.cpu().double(), minlength=num_classes)
            per_class_total += torch.bincount(y.cpu(), minlength=num_classes).double()
    counts = distributed.sum_across(torch.tensor([correct1, correct5, probe_correct, total], dtype=torch.float64))
    correct1, correct5, probe_correct, total = (float(v) for v in counts)
    group_acc: dict[str, float] = {}
    if groups:
        per_class = distributed.sum_across(per_class_correct) / distributed.sum_across(per_class_total).clamp(min=1)
        group_acc = {name: float(per_class[classes].mean() * 100) for name, classes in groups.items()}
    total = max(1, total)
    return Evaluation(100.0 * correct1 / total, 100.0 * correct5 / total, group_acc,
                      100.0 * probe_correct / total if probe else None)


@dataclass
class Phase:
    """One phase of a run: a method's extra stage or its main training, with its own optimizer settings."""

    name: str
    recipe: TrainConfig
    losses: LossFn
    predict: Predict
    param_groups: Callable[[Network], list[dict[str, Any]]]
    main: bool = False
    student_train_mode: bool = True


def phases_of(method: Method, recipe: TrainConfig | Mapping[str, Any], labeled: bool = True) -> list[Phase]:
    """The method's stages (each with the run recipe updated by its own settings), then the main phase."""
    recipe = as_train_config(recipe)
    phases = [Phase(stage.name, as_train_config({**dataclasses.asdict(recipe), **stage.recipe, "epochs": stage.epochs}),
                    stage.losses, stage.predict, stage.param_groups, student_train_mode=stage.student_train_mode)
              for stage in method.stages(recipe, labeled=labeled)]
    phases.append(Phase("main", recipe, method.losses, method.predict, method.param_groups, main=True))
    return phases


@dataclass
class TrainState:
    """The objects one run trains, and the settings of its loop."""

    student: Network
    teacher: Network | None
    method: Method
    train: TensorData
    regime: RegimeData
    test: TensorData
    recipe: TrainConfig
    eval_batch_size: int
    seed: int
    device: torch.device
    run_dir: Path
    val: TensorData | None = None
    log: Callable[[str], None] = print
    spikes: SpikeCounter = field(default_factory=SpikeCounter)
    precision: Precision = Precision()
    batchnorm: str = "broadcast"  # BatchNorm statistics across data-parallel ranks: broadcast | sync | local
    on_epoch: Callable[[dict[str, Any], int], None] | None = None  # rank 0, after each epoch (and its checkpoint
    # if one is due): the epoch's metrics.jsonl line and the run's epochs so far over all phases (live tracking,
    # kdbench.tracking); a resumed run calls it only for epochs its killed run had not reported
    checkpoint_every_s: float = CHECKPOINT_EVERY_S  # an epoch's checkpoint is skipped while the last is younger


@dataclass
class FitOutcome:
    """How the loop ended (``done`` or ``diverged`` with the 1-based epoch of its phase and the reason), the
    per-epoch history, and the end-of-run evaluations (``final``) of the last and best epochs."""

    state: str
    history: list[dict[str, Any]]
    diverged_epoch: int | None = None
    diverged_phase: str | None = None
    reason: str | None = None
    nonfinite_loss: bool = False
    final: dict[str, Evaluation] = field(default_factory=dict)
    extra: dict[str, Evaluation] = field(default_factory=dict)
    resumes: list[dict[str, Any]] = field(default_factory=list)  # each restart: the phase and epoch it resumed at


def _nonfinite_weights(params: list[torch.nn.Parameter], done: int, err: Exception) -> str | None:
    """Why a step that raised counts as a divergence: the weights its forward ran on are no longer finite (an
    update blew them up, e.g. an SVD of the resulting features then fails); None when they are all finite."""
    if all(bool(torch.isfinite(p).all()) for p in params):
        return None
    what = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return f"non-finite weights after step {done} ({what})"


def _step(ts: TrainState, phase: Phase, optimizer: torch.optim.Optimizer, batch: Batch,
          params: list[torch.nn.Parameter], one_group: bool, log: StepLog) -> KeysView[str]:
    """Forward, loss terms, backward, gradient averaging, norm and clipping of one batch (the optimizer steps
    after it); the step's loss, terms and gradient norm go to ``log``. Returns the terms' names."""
    needs = ts.method.needs
    if ts.precision.channels_last:
        batch = dataclasses.replace(batch, x=ts.precision.input(batch.x))
    with ts.precision.autocast(ts.device):
        s = ts.student(batch.x, taps=needs.student_taps)
        t = None
        if ts.teacher is not None:
            with torch.no_grad():
                t = ts.teacher(batch.x, taps=needs.teacher_taps)
        terms = phase.losses(batch, s, t)
    values = [term.float() for term in terms.values()]
    loss = sum(values[1:], values[0])  # added in turn: a stack and a sum would be two more autograd nodes
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    distributed.average_gradients(params)
    grads = [p.grad for p in params if p.grad is not None]
    clip = phase.recipe.grad_clip
    detached = (loss.detach(), [value.detach() for value in values])
    if log.hold and grads:  # norms taken later, for many steps in one call
        log.add(*detached, grads=grads)
    elif not grads:
        log.add(*detached)
    elif one_group and not clip:  # the total is taken when the log is read, for many steps at once
        log.add(*detached, norm=list(torch._foreach_norm(grads)))
    else:
        norm = steplog.total_grad_norm(grads, one_group)
        if clip:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        log.add(*detached, norm=norm)
    return terms.keys()


def _train_epoch(ts: TrainState, phase: Phase, optimizer: torch.optim.Optimizer,
                 scheduler: PerStepLR, epoch: int,
                 steps: int) -> tuple[dict[str, float], str | None]:
    """One epoch of optimisation. Returns the mean loss terms and, if the loss diverged, why."""
    needs = ts.method.needs
    ts.student.train(phase.student_train_mode)
    ts.method.train()
    names: list[str] | None = None
    done = 0
    params = [p for g in optimizer.param_groups for p in g.get("params")]
    one_group = steplog.one_group(params)
    hold = steplog.steps_to_hold(optimizer, params, one_group, phase.recipe.grad_clip,
                                 isinstance(ts.method, StepHooks))
    log = StepLog(ts.spikes, phase.recipe.diverge_above, hold=hold)
    for batch in train_batches(ts.train, ts.regime.indices, phase.recipe.batch_size, labeled=ts.regime.labeled,
                               seed=ts.seed, epoch=epoch, device=ts.device, negatives=needs.negatives):
        try:
            step_names = _step(ts, phase, optimizer, batch, params, one_group, log)
        except Exception as err:  # what broke may follow from a divergence: a loss not read yet, or bad weights
            if diverged := log.check() or _nonfinite_weights(params, done, err):
                return {}, diverged
            raise
        if phase.main:
            step_hook(ts.method, optimizer, epoch * steps + done, phase.recipe.epochs * steps)
        optimizer.step()
        scheduler.step()
        names = names or list(step_names)
        done += 1
        if done % steplog.SYNC_EVERY == 0 and (diverged := log.check()):
            return {}, diverged
    if diverged := log.check():
        return {}, diverged
    values = []
    if names is not None and log.term_sums is not None and log.loss_sum is not None:
        totals = torch.cat([log.term_sums.reshape(-1), log.loss_sum.reshape(1)])
        values = (distributed.sum_across(totals) / distributed.world_size()).tolist()
    means = {f"train_{k}": v / max(1, done) for k, v in zip([*(names or []), "loss"], values, strict=False)}
    means.update(grad_norm_max=log.grad_norm_max, loss_spikes=log.spikes, nonfinite_grads=log.nonfinite_grads)
    return means, None


def _eval(ts: TrainState, phase: Phase, final: bool = False, data: TensorData | None = None) -> Evaluation:
    ts.method.eval()
    predict = (lambda x, out: phase.predict(x, out, final=True)) if final else phase.predict
    return evaluate(ts.student, predict, ts.test if data is None else data, ts.eval_batch_size,
                    ts.regime.groups if data is None else None, ts.device,
                    probe=phase.main and reports_probe(ts.method) and ts.regime.labeled and data is None,
                    precision=ts.precision)


def _state(ts: TrainState) -> dict[str, Any]:
    return {"student": ts.student.state_dict(), "method": ts.method.state_dict()}


def _resume_point(ts: TrainState, path: Path, num_phases: int) -> tuple[ResumePoint | None,
                                                                         dict[str, Any] | None]:
    """The checkpoint to resume from, already applied to the student, the method and the RNG; or, when the file
    cannot be used (truncated, garbled, another run's shapes), ``(None, restart)``: the file is moved aside (kept),
    the modules and RNG are as they were before the attempt, and ``restart`` says so for the record."""
    if not path.exists():
        return None, None
    modules = (ts.student, ts.method)
    before = [copy.deepcopy(m.state_dict()) for m in modules]
    rng_before = rng_state()
    try:
        resume = ResumePoint.from_state(load_checkpoint(path))
        if not 0 <= resume.phase < num_phases:
            raise ValueError(f"phase {resume.phase} of a run with {num_phases} phase(s)")
        ts.student.load_state_dict(resume.student)
        ts.method.load_state_dict(resume.method)
        set_rng_state(resume.rng)
        return resume, None
    except Exception as err:  # any failure to read or apply it: torch, pickle, zip, shapes, keys
        for module, state in zip(modules, before, strict=True):
            module.load_state_dict(state)
        set_rng_state(rng_before)
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        moved = move_aside(path) if distributed.is_main() else path
        ts.log(f"{path} cannot be resumed from ({reason}): moved aside to {moved.name}; the run restarts from "
               "scratch")
        return None, {"phase": "restart", "epoch": 0, "restarted_from_scratch": reason,
                      "set_aside": moved.name}


def fit(ts: TrainState) -> FitOutcome:
    """Train every phase from the last checkpoint (if any) to its last epoch, evaluating after every epoch and
    checkpointing after an epoch when the last checkpoint is ``ts.checkpoint_every_s`` old (0: every epoch), after
    each phase's last and with each new best; then, for methods whose final prediction differs, evaluate the last
    and best epochs with it. A resumed run gives ``ts.on_epoch`` only the epochs its killed run had not."""
    ckpt_path, best_path, metrics_path = ts.run_dir / CHECKPOINT, ts.run_dir / BEST, ts.run_dir / METRICS
    phases = phases_of(ts.method, ts.recipe, ts.regime.labeled)
    main = distributed.is_main()  # under data-parallel training only rank 0 writes
    history: list[dict[str, Any]] = []
    resumes: list[dict[str, Any]] = []
    start_phase = 0
    resume, restart = _resume_point(ts, ckpt_path, len(phases))
    if restart:
        resumes = [restart]
    if resume:
        history, start_phase = list(resume.history), resume.phase
        resumes = [*resume.resumes, {"phase": phases[start_phase].name, "epoch": resume.epoch}]
        ts.log(f"resumed from {phases[start_phase].name} epoch {resume.epoch} ({ckpt_path})")
    reported = 0  # epochs already given to ts.on_epoch (trackers) by the run we resume: not sent again
    if main and (history or metrics_path.exists()):
        reported = len(read_jsonl(metrics_path)) if metrics_path.exists() else 0
        atomic_write_jsonl(metrics_path, history)  # drop lines written after the checkpoint we resume from
    saved_at = time.monotonic()  # the last checkpoint (or the start): one is written when it is older than
    # ts.checkpoint_every_s after an epoch, after each phase's last epoch and with every new best.pt
    for index in range(start_phase, len(phases)):
        phase = phases[index]
        phase_steps = steps_per_epoch(len(ts.regime.indices), phase.recipe.batch_size)
        optimizer = build_optimizer(phase.param_groups(ts.student), phase.recipe)
        scheduler = build_scheduler(optimizer, phase.recipe, phase_steps)
        start = 0
        ts.spikes = SpikeCounter()  # a new phase's loss level is not a spike
        if resume and index == start_phase:
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            start = resume.epoch
            ts.spikes.recent.extend(resume.spikes)
        epochs = phase.recipe.epochs
        for epoch in range(start, epochs):
            if phase.main:
                epoch_start(ts.method, epoch, epochs)
            lr = scheduler.get_last_lr()[0]
            began = time.perf_counter()
            train_metrics, diverged = _train_epoch(ts, phase, optimizer, scheduler, epoch, phase_steps)
            if diverged:
                ts.log(f"{phase.name} epoch {epoch + 1}/{epochs}: diverged: {diverged}")
                return FitOutcome("diverged", history, diverged_epoch=epoch + 1, diverged_phase=phase.name,
                                  reason=diverged, nonfinite_loss=diverged.startswith("non-finite"),
                                  resumes=resumes)
            train_seconds = time.perf_counter() - began
            if ts.batchnorm != "local":  # one model on every rank: rank 0's BatchNorm statistics
                distributed.broadcast_batchnorm(ts.student, ts.method)
            result = _eval(ts, phase)
            best_so_far = max((h.get("top1") for h in history if h.get("phase") == "main"), default=-1.0)
            if ts.val is not None:
                result_val = _eval(ts, phase, data=ts.val)
                train_metrics = {**train_metrics, "val_top1": result_val.top1}
            line = {"phase": phase.name, "epoch": epoch + 1, "lr": lr, **train_metrics, **result.as_metrics(),
                    "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - began - train_seconds}
            history.append(line)
            new_best = main and phase.main and final_predict_differs(ts.method) and result.top1 > best_so_far
            if new_best:
                save_checkpoint(best_path, BestPoint(epoch + 1, **_state(ts)).to_state())
            if main:
                append_jsonl(metrics_path, line)  # the file is history's view: rewritten from it on resume
                # a new best.pt forces a checkpoint: a resume never starts before the best.pt it would keep
                if new_best or epoch + 1 == epochs or time.monotonic() - saved_at >= ts.checkpoint_every_s:
                    point = ResumePoint(phase=index, epoch=epoch + 1, **_state(ts), optimizer=optimizer.state_dict(),
                                        scheduler=scheduler.state_dict(), rng=rng_state(), history=history,
                                        resumes=resumes, spikes=list(ts.spikes.recent))
                    save_checkpoint(ckpt_path, point.to_state())
                    saved_at = time.monotonic()
                if ts.on_epoch is not None and len(history) > reported:
                    ts.on_epoch(line, len(history))
            ts.log(f"{phase.name} epoch {epoch + 1:>3}/{epochs}  loss {line.get('train_loss', float('nan')):.4f}  "
                   f"top1 {result.top1:6.2f}  lr {lr:.3g}  {train_seconds:.2f}s")
    outcome = FitOutcome("done", history, resumes=resumes)
    after_training(ts.method, ts.student, lambda: eval_batches(ts.train.subset(ts.regime.indices), ts.eval_batch_size,
                                                              ts.device))
    for name, predict in extra_evaluations(ts.method).items():  # on the last epoch's model
        ts.method.eval()
        outcome.extra[name] = evaluate(ts.student, predict, ts.test, ts.eval_batch_size, ts.regime.groups,
                                       ts.device, precision=ts.precision)
        ts.log(f"extra evaluation {name}: top1 {outcome.extra[name].top1:.2f}")
    if final_predict_differs(ts.method):
        last_phase = phases[-1]
        last = _eval(ts, last_phase, final=True)
        distributed.barrier()  # rank 0 wrote the best checkpoint
        best = BestPoint.from_state(load_checkpoint(best_path))
        ts.student.load_state_dict(best.student)
        ts.method.load_state_dict(best.method)
        outcome.final.update(last=last, best=_eval(ts, last_phase, final=True))
        ts.log(f"final evaluation: last {last.top1:.2f}, best (epoch {best.epoch}) "
               f"{outcome.final.get('best').top1:.2f}")
    return outcome
