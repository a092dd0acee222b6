"""The training loop: schedules, resume after a crash with identical numbers, divergence, teacher checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch, prepare, run_dirs
from kdbench.engine.recipe import LRFactor, steps_per_epoch
from kdbench.runner import execute
from kdbench.suite import ExecutorSettings, expand, validate

DEBUG = ExecutorSettings(name="debug")
TIMING = {"train_seconds", "eval_seconds"}


def _recipe(**kw):
    base = dict(schedule="cosine", epochs=10, warmup_epochs=0, milestones=[], lr_decay=0.1, min_lr=0.0, lr=0.1)
    return {**base, **kw}


def test_spike_counter() -> None:
    from kdbench.engine.steplog import SpikeCounter

    counter = SpikeCounter(factor=3.0, window=5, warmup=3)
    assert [counter.observe(v) for v in (1.0, 1.0, 10.0, 1.0, 1.0, 2.9, 3.5, 1.0)] == [0, 0, 0, 0, 0, 0, 1, 0]


def test_schedules() -> None:
    cosine = LRFactor(_recipe(), steps_per_epoch=10)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)
    warm = LRFactor(_recipe(warmup_epochs=2), steps_per_epoch=10)
    assert warm(0) == pytest.approx(1 / 20) and warm(19) == pytest.approx(1.0)
    multistep = LRFactor(_recipe(schedule="multistep", milestones=[5, 8]), steps_per_epoch=10)
    assert [multistep(s) for s in (49, 50, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])
    assert LRFactor(_recipe(schedule="constant"), 10)(99) == 1.0
    assert steps_per_epoch(65, 64) == 1 and steps_per_epoch(66, 64) == 2 and steps_per_epoch(64, 64) == 1



@pytest.mark.parametrize("schedule", [dict(), dict(warmup_epochs=2), dict(schedule="multistep", milestones=[3, 7]),
                                      dict(schedule="constant", warmup_epochs=1)])
def test_the_per_step_schedule_sets_torchs_lambdalr_values_and_resumes_from_its_state(schedule: dict) -> None:
    """PerStepLR gives every group, at every step, the learning rate torch's LambdaLR gives with the same factor
    (two groups, different base rates); a LambdaLR state saved mid-run (as older checkpoints hold) continues."""
    from kdbench.engine.recipe import PerStepLR

    def optimizer() -> torch.optim.Optimizer:
        params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
        return torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.1)

    factor = LRFactor(_recipe(**schedule), steps_per_epoch=4)
    ours_opt, torch_opt = optimizer(), optimizer()
    ours, reference = PerStepLR(ours_opt, factor), torch.optim.lr_scheduler.LambdaLR(torch_opt, factor)
    for step in range(40):
        assert [g["lr"] for g in ours_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups], step
        assert ours.get_last_lr() == reference.get_last_lr()
        if step == 17:  # a fresh optimizer and schedule (lr of step 0), then both states loaded
            resumed_opt = optimizer()
            resumed = PerStepLR(resumed_opt, factor)
            resumed_opt.load_state_dict(torch_opt.state_dict())
            resumed.load_state_dict(reference.state_dict())
            assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
        ours_opt.step()
        torch_opt.step()
        ours.step()
        reference.step()
        if step >= 17:
            resumed_opt.step()
            resumed.step()
            assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in torch_opt.param_groups]
    assert ours.state_dict()["last_epoch"] == reference.state_dict()["last_epoch"] == 40

def _plan(**overrides):
    raw = tiny_suite(regimes=[{"name": "balanced"}], **overrides)
    return expand(validate(raw))


def _strip(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


class SimulatedKill(BaseException):
    """Stands for SIGKILL: escapes every handler, so no record is written."""


def test_resume_after_crash_ends_with_the_same_numbers(tmp_path: Path) -> None:
    plan = _plan(methods=[{"name": "kd"}], train={"epochs": 5, "batch_size": 32})
    whole = dispatch(plan, tmp_path / "whole", DEBUG, progress=False)
    assert set(whole.counts()) == {"done"}
    # the same plan in another folder; the student crashes right after its epoch-2 checkpoint
    root = prepare(plan, tmp_path / "crash")
    dirs = run_dirs(root, plan)
    teacher_id = next(iter(plan.teachers))
    execute(dirs[teacher_id], log=lambda m: None)
    run_id = next(iter(plan.runs))

    def crash_after_two(message: str) -> None:
        if "epoch   2/" in message:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        execute(dirs[run_id], log=crash_after_two)
    assert not (dirs[run_id] / store.RESULT).exists()
    assert len(store.read_jsonl(dirs[run_id] / store.METRICS)) == 2
    resumed = execute(dirs[run_id], log=lambda m: None)
    reference = store.load_result(tmp_path / "whole" / "tiny" / "runs" / run_id)
    assert resumed.state == "done"
    assert resumed.metrics == reference["metrics"]
    assert _strip(store.read_jsonl(dirs[run_id] / store.METRICS)) == \
        _strip(store.read_jsonl(tmp_path / "whole" / "tiny" / "runs" / run_id / store.METRICS))


def test_checkpoints_are_checkpoint_every_s_apart_and_a_kill_resumes_from_the_last_one(tmp_path: Path,
                                                                                           monkeypatch) -> None:
    """executor.checkpoint_every_s 1.0 with epochs of 0.4 s (the loop's clock is the test's): an epoch's checkpoint
    is skipped while the last is younger than a second, so epoch 4 is saved and a kill after epoch 6 resumes from
    it; the resumed run saves its last epoch, and ends with the numbers and metrics lines of an uninterrupted run."""
    import time
    from types import SimpleNamespace

    from kdbench.engine import loop

    now = [0.0]
    monkeypatch.setattr(loop, "time", SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter))
    saved: list[int] = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (saved.append(state["epoch"]),
                                                                        real_save(path, state)))
    plan = _plan(methods=[{"name": "kd"}], train={"epochs": 8, "batch_size": 32},
                 executor={"name": "debug", "checkpoint_every_s": 1.0})
    whole = dispatch(plan, tmp_path / "whole", DEBUG, progress=False)
    assert set(whole.counts()) == {"done"}
    run_id = next(iter(plan.runs))
    root = prepare(plan, tmp_path / "crash")
    dirs = run_dirs(root, plan)
    execute(dirs[next(iter(plan.teachers))], log=lambda m: None)

    def epoch_takes_0_4_s(message: str, kill_after: int | None = None) -> None:
        if "/8  loss" in message:  # an epoch's line (not "resumed from main epoch 4")
            now[0] += 0.4
            if kill_after and f"epoch   {kill_after}/" in message:
                raise SimulatedKill

    saved.clear()
    with pytest.raises(SimulatedKill):
        execute(dirs[run_id], log=lambda m: epoch_takes_0_4_s(m, kill_after=6))
    assert saved == [4] and len(store.read_jsonl(dirs[run_id] / store.METRICS)) == 6
    resumed = execute(dirs[run_id], log=epoch_takes_0_4_s)
    assert saved == [4, 8]  # the resumed run counts from its start: 5 to 7 come within the second, 8 is the last
    assert resumed.state == "done" and [r["epoch"] for r in resumed.resumes] == [4]
    reference = tmp_path / "whole" / "tiny" / "runs" / run_id
    assert resumed.metrics == store.load_result(reference)["metrics"]
    assert _strip(store.read_jsonl(dirs[run_id] / store.METRICS)) == _strip(store.read_jsonl(reference / store.METRICS))


def _digits_state(tmp_path: Path, method_class=None, **fields):
    """A TrainState of the overhead benchmark's workload (digits, KD into kdb_cnn_nano), seeded the same each time."""
    from kdbench.bench.overhead import RECIPE, _digits_kd
    from kdbench.engine import TrainState

    tmp_path.mkdir(parents=True, exist_ok=True)
    splits, regime, student, teacher, method = _digits_kd(0)
    if method_class is not None:
        method = method_class(student, teacher, num_classes=10)
    return TrainState(student=student, teacher=teacher, method=method, train=splits.train, regime=regime,
                      test=splits.test, recipe={**RECIPE, "epochs": 5}, eval_batch_size=512, seed=0,
                      device=torch.device("cpu"), run_dir=tmp_path, log=lambda m: None, **fields)


def test_a_resumed_run_sends_trackers_only_the_epochs_its_killed_run_had_not(tmp_path: Path) -> None:
    """No checkpoint before the last epoch (checkpoint_every_s 3600): a kill after epoch 4 restarts from scratch;
    the per-epoch callback (trackers) then gets epoch 5 only, and the history is the uninterrupted one."""
    from kdbench.engine import fit

    reference = fit(_digits_state(tmp_path / "whole", checkpoint_every_s=3600.0)).history
    calls: list[int] = []

    def killed_after_four(line: dict, done: int) -> None:
        calls.append(done)
        if done == 4:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        fit(_digits_state(tmp_path / "run", checkpoint_every_s=3600.0, on_epoch=killed_after_four))
    assert calls == [1, 2, 3, 4] and not (tmp_path / "run" / "checkpoint.pt").exists()
    calls.clear()
    resumed = fit(_digits_state(tmp_path / "run", checkpoint_every_s=3600.0, on_epoch=lambda line, done:
                                calls.append(done)))
    assert calls == [5]
    assert _strip(resumed.history) == _strip(reference)


def test_a_new_best_epoch_is_always_checkpointed(tmp_path: Path, monkeypatch) -> None:
    """For a method whose final prediction differs (the engine keeps best.pt), every epoch that writes best.pt also
    writes the checkpoint, whatever checkpoint_every_s says: a resume never starts before the best.pt it keeps."""
    from kdbench.engine import fit, loop
    from kdbench.method import CustomPredictor
    from kdbench.methods.kd import KD

    class KDWithFinalPredictor(KD, CustomPredictor):
        final_predict_differs = True

    written: list[tuple[str, int]] = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (written.append((path.name, state["epoch"])),
                                                                        real_save(path, state)))
    outcome = fit(_digits_state(tmp_path, KDWithFinalPredictor, checkpoint_every_s=3600.0))
    best = [epoch for name, epoch in written if name == "best.pt"]
    checkpoints = [epoch for name, epoch in written if name == "checkpoint.pt"]
    assert best and checkpoints == sorted({*best, 5}), written
    tops = [line["top1"] for line in outcome.history]
    assert best == [e for e in range(1, 6) if tops[e - 1] > max(tops[:e - 1], default=-1.0)]


def test_divergence_is_recorded_not_dropped(tmp_path: Path) -> None:
    plan = _plan(methods=[{"name": "vanilla"}], train={"epochs": 3, "lr": 1.0e12, "momentum": 0.0})
    dispatch(plan, tmp_path, DEBUG, progress=False)
    record = store.load_result(tmp_path / "tiny" / "runs" / next(iter(plan.runs)))
    assert record["state"] == "diverged"
    assert record["stability"]["diverged_epoch"] >= 1
    assert "loss" in record["stability"]["reason"]
    assert record["stability"]["nonfinite_events"] == int(record["stability"]["reason"].startswith("non-finite"))


def test_loss_bound_stops_the_run(tmp_path: Path) -> None:
    plan = _plan(methods=[{"name": "vanilla"}], train={"epochs": 3, "diverge_above": 0.01})
    dispatch(plan, tmp_path, DEBUG, progress=False)
    record = store.load_result(tmp_path / "tiny" / "runs" / next(iter(plan.runs)))
    assert record["state"] == "diverged" and record["stability"]["diverged_epoch"] == 1
    assert "above the bound 0.01" in record["stability"]["reason"]
    assert record["stability"]["nonfinite_events"] == 0


def test_tampered_teacher_weights_fail_the_student_with_the_path(tmp_path: Path) -> None:
    plan = _plan(methods=[{"name": "kd"}])
    dispatch(plan, tmp_path, DEBUG, progress=False)
    root = tmp_path / "tiny"
    weights = root / "teachers" / next(iter(plan.teachers)) / store.WEIGHTS
    weights.write_bytes(weights.read_bytes() + b"tampered")
    run_dir = root / "runs" / next(iter(plan.runs))
    (run_dir / store.RESULT).unlink()
    (run_dir / store.CHECKPOINT).unlink()
    record = execute(run_dir, log=lambda m: None)
    assert record.state == "failed"
    assert "sha256" in record.error and str(weights) in record.error


def test_finished_runs_are_skipped(tmp_path: Path) -> None:
    plan = _plan(methods=[{"name": "vanilla"}])
    first = dispatch(plan, tmp_path, DEBUG, progress=False)
    second = dispatch(plan, tmp_path, DEBUG, progress=False)
    assert first.counts() == {"done": 1} and second.states == {} and second.skipped == 1


GENDD_SMALL = {"name": "gendd", "width": 32, "mul": 2, "sample_steps": 4, "num_samples": 2,
               "warm_start_epochs": 2, "eval_sweep": [{"sampler": "ddim", "steps": 2, "samples": 1}],
               "train": {"optimizer": "adamw", "lr": 1.0e-3, "weight_decay": 5.0e-2, "epochs": 3}}


def test_gendd_record_states_stages_costs_and_diagnostics(tmp_path: Path) -> None:
    plan = _plan(methods=[GENDD_SMALL])
    dispatch(plan, tmp_path, DEBUG, progress=False)
    record = store.load_result(tmp_path / "tiny" / "runs" / next(iter(plan.runs)))
    assert record["state"] == "done", record.get("error")
    assert record["cost"]["extra_epochs"] == {"warm_start": 2} and record["cost"]["total_epochs"] == 5
    phases = [line["phase"] for line in store.read_jsonl(tmp_path / "tiny" / "runs" / record["run_id"] /
                                                         store.METRICS)]
    assert phases == ["warm_start"] * 2 + ["main"] * 3
    metrics = record["metrics"]
    assert {"top1_last", "top1_best", "top1_probe_last", "top1_last_per_epoch"} <= set(metrics)
    cost = record["cost"]
    # 1 token (teacher feature 64 = token_dim), 4 steps, 2 branches (CFG), 2 samples
    assert cost["head_rows_per_image_predict"] == 1 * 4 * 2 * 2 and cost["head_rows_per_image_train"] == 2
    assert cost["predict_ms_per_img_b1"] > cost["student_ms_per_img_b1"] > 0
    assert cost["predict_flops_per_img"] > cost["student_flops_per_img"] > 0
    diagnostics = record["diagnostics"]
    assert diagnostics["nonfinite_samples"] == 0 and diagnostics["sampled_to_target_norm_ratio"] > 0
    assert diagnostics["first_sampling_timestep"] == 999
    assert list(record["extra_evaluations"]) == ["ddim-2x1-cfgdefault-tdefault"]
    assert "predict_ms_per_img_b1" in record["extra_evaluations"]["ddim-2x1-cfgdefault-tdefault"]


def test_unlabeled_gendd_has_no_warm_start_and_reports_no_untrained_probe(tmp_path: Path) -> None:
    """Without labels the student's fc is never trained, so its accuracy is not a probe and is not recorded."""
    plan = expand(validate(tiny_suite(regimes=[{"name": "unlabeled"}], methods=[GENDD_SMALL])))
    dispatch(plan, tmp_path, DEBUG, progress=False)
    record = store.load_result(tmp_path / "tiny" / "runs" / next(iter(plan.runs)))
    assert record["state"] == "done", record.get("error")
    assert record["cost"]["extra_epochs"] == {} and record["cost"]["total_epochs"] == 3
    assert "top1_last" in record["metrics"]
    assert not [key for key in record["metrics"] if "probe" in key]


@pytest.mark.parametrize("crash_at", ["warm_start epoch   1/", "main epoch   2/"])
def test_gendd_resume_across_its_stages_ends_with_the_same_numbers(tmp_path: Path, crash_at: str) -> None:
    plan = _plan(methods=[GENDD_SMALL])
    dispatch(plan, tmp_path / "whole", DEBUG, progress=False)
    root = prepare(plan, tmp_path / "crash")
    dirs = run_dirs(root, plan)
    execute(dirs[next(iter(plan.teachers))], log=lambda m: None)
    run_id = next(iter(plan.runs))

    def crash(message: str) -> None:
        if crash_at in message:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        execute(dirs[run_id], log=crash)
    resumed = execute(dirs[run_id], log=lambda m: None)
    reference = store.load_result(tmp_path / "whole" / "tiny" / "runs" / run_id)
    assert resumed.metrics == reference["metrics"]
    assert resumed.diagnostics.get("target_norm_mean") == reference["diagnostics"]["target_norm_mean"]


def test_val_selected_epoch_uses_a_held_out_split(tmp_path: Path) -> None:
    from kdbench.data.regimes import RegimeData, hold_out

    labels = np.repeat(np.arange(4), [10, 6, 3, 1])
    data = RegimeData(np.arange(20), True, [10, 6, 3, 1])
    train, val = hold_out(data, labels, 0.34, seed=0)
    assert np.bincount(labels[val], minlength=4).tolist() == [3, 2, 1, 0]  # round(0.34 n), one image always kept
    assert sorted([*train.indices.tolist(), *val.tolist()]) == list(range(20)) and train.class_counts == [7, 4, 2, 1]
    again = hold_out(data, labels, 0.34, seed=0)[1]
    assert again.tobytes() == val.tobytes()

    plan = _plan(methods=[{"name": "vanilla"}], eval={"val_fraction": 0.25})
    dispatch(plan, tmp_path, DEBUG, progress=False)
    record = store.load_result(tmp_path / "tiny" / "runs" / next(iter(plan.runs)))
    assert record["data"]["val_size"] == 24 and record["data"]["train_size"] == 72
    lines = store.read_jsonl(tmp_path / "tiny" / "runs" / record["run_id"] / store.METRICS)
    chosen = max(lines, key=lambda h: h["val_top1"])
    assert record["metrics"]["top1_val"] == chosen["top1"]
    assert record["metrics"]["val_selected_epoch"] == chosen["epoch"]
    # the held-out split's own top-1 (the figure to choose settings by): at the last and at the chosen epoch
    assert record["metrics"]["val_top1_last"] == lines[-1]["val_top1"]
    assert record["metrics"]["val_top1_best"] == chosen["val_top1"]


STAGED = {
    "ab": ({"name": "ab", "init_epochs": 2, "init_lr": 0.02}, "ab_init"),
    "ft": ({"name": "ft", "init_epochs": 2}, "ft_paraphraser"),
    "fsp": ({"name": "fsp", "init_epochs": 2}, "fsp_init"),
    "crd": ({"name": "crd", "negatives": 32}, None),
}


@pytest.mark.parametrize("name", sorted(STAGED))
def test_methods_with_stages_or_state_resume_mid_stage_with_the_same_numbers(tmp_path: Path, name: str) -> None:
    method, stage = STAGED[name]
    pairs = [{"teacher": "kdb_cnn_small", "student": "kdb_cnn_small"}] if name == "fsp" else None
    plan = _plan(methods=[method], **({"pairs": pairs} if pairs else {}))
    dispatch(plan, tmp_path / "whole", DEBUG, progress=False)
    run_id = next(iter(plan.runs))
    reference = store.load_result(tmp_path / "whole" / "tiny" / "runs" / run_id)
    assert reference["state"] == "done", reference.get("error")
    if stage:
        assert reference["cost"]["extra_epochs"] == {stage: 2} and reference["cost"]["total_epochs"] == 5
    root = prepare(plan, tmp_path / "crash")
    dirs = run_dirs(root, plan)
    execute(dirs[next(iter(plan.teachers))], log=lambda m: None)
    crash_at = f"{stage} epoch   1/" if stage else "main epoch   2/"

    def crash(message: str) -> None:
        if crash_at in message:
            raise SimulatedKill

    with pytest.raises(SimulatedKill):
        execute(dirs[run_id], log=crash)
    if stage in ("ab_init", "fsp_init"):  # RepDistiller's init stages run the student in eval mode: BN frozen
        from kdbench.engine.checkpoint import ResumePoint, load_checkpoint

        saved = ResumePoint.from_state(load_checkpoint(dirs[run_id] / "checkpoint.pt")).student
        means = [v for k, v in saved.items() if k.endswith("running_mean")]
        assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)
    resumed = execute(dirs[run_id], log=lambda m: None)
    assert resumed.state == "done"
    assert resumed.resumes[0]["phase"] == (stage or "main")
    assert resumed.metrics == reference["metrics"]
    assert _strip(store.read_jsonl(dirs[run_id] / store.METRICS)) == \
        _strip(store.read_jsonl(tmp_path / "whole" / "tiny" / "runs" / run_id / store.METRICS))
