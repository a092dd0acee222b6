"""Data-parallel training: 2 gloo processes on CPU train one run with the same loop, sharded batches and averaged
gradients; only rank 0 writes; the record means what a 1-process record means."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_suite

from kdbench import distributed, store
from kdbench.dispatch import dispatch
from kdbench.suite import expand, validate


def _run(tmp_path: Path, processes: int, method: str = "kd") -> dict:
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=[{"name": method}],
                                train={"epochs": 2, "batch_size": 32, "lr": 0.05},
                                executor={"name": "local", "workers": 1, "processes_per_run": processes}))
    summary = dispatch(expand(suite), tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 2}, summary.states
    (run_dir,) = (tmp_path / "tiny" / "runs").iterdir()
    return {"record": store.load_result(run_dir), "dir": run_dir}


def test_two_gloo_processes_train_one_run_with_the_same_record_semantics(tmp_path: Path) -> None:
    single = _run(tmp_path / "one", 1)
    double = _run(tmp_path / "two", 2)
    one, two = single["record"], double["record"]
    assert one["run_id"] == two["run_id"]  # the spec (global batch 32) is the same; the world size is recorded
    assert (one["env"]["world_size"], two["env"]["world_size"]) == (1, 2)
    assert set(one["metrics"]) == set(two["metrics"]) and two["state"] == "done"
    assert 0.0 <= two["metrics"]["top1_last"] <= 100.0
    lines = store.read_jsonl(double["dir"] / store.METRICS)
    assert [line["epoch"] for line in lines] == [1, 2]  # one writer: no line twice
    # the evaluation covered the whole test split (counts summed over both ranks), not one rank's half
    assert two["data"]["test_size"] == 48
    assert abs(lines[-1]["top1"] * 48 / 100 - round(lines[-1]["top1"] * 48 / 100)) < 1e-6


def _check_collectives(expected_world: int) -> None:
    assert distributed.world_size() == expected_world
    r = distributed.rank()
    grad = torch.nn.Parameter(torch.zeros(3))
    grad.grad = torch.full((3,), float(r + 1))
    distributed.average_gradients([grad])
    assert torch.allclose(grad.grad, torch.full((3,), 1.5))
    assert distributed.shard(torch.arange(5)).tolist() == ([0, 2, 4] if r == 0 else [1, 3])
    assert distributed.sum_across(torch.tensor([float(r)], dtype=torch.float64)).item() == 1.0
    assert distributed.gather_rows(torch.full((2, 3), float(r))).tolist() == [[0.0] * 3] * 2 + [[1.0] * 3] * 2
    # CRD's memory bank stays the same on every rank: each applies every rank's rows
    from kdbench.methods.crd import ContrastMemory

    torch.manual_seed(0)  # the same initial memory everywhere, as seed_everything gives
    memory = ContrastMemory(dim=4, num_data=6, temperature=0.07, momentum=0.5)
    before = memory.memory_s.clone()
    v = torch.nn.functional.normalize(torch.randn(2, 4) + r, dim=1)
    memory.update(torch.tensor([r, r + 2]), v, v)
    rows = distributed.gather_rows(memory.memory_s[None])
    assert torch.equal(rows[0], rows[1])
    assert (memory.memory_s != before).any(dim=1).nonzero().flatten().tolist() == [0, 1, 2, 3]
    # GenDD's distilled map: every rank fits from its shard's statistics summed over ranks, so every rank holds
    # the map fitted on all rows (shards of unequal size: 7 and 5 rows)
    from kdbench.methods.gendd.predictor import fit_linear_map

    generator = torch.Generator().manual_seed(3)
    z, y = torch.randn(12, 3, generator=generator), torch.randn(12, 2, generator=generator)
    mine = slice(0, 7) if r == 0 else slice(7, 12)
    weight, bias = fit_linear_map(z[mine], y[mine], 1e-3, reduce=distributed.sum_across)
    whole_weight, whole_bias = fit_linear_map(z, y, 1e-3)
    assert torch.allclose(weight, whole_weight, atol=1e-12) and torch.allclose(bias, whole_bias, atol=1e-12)


def test_collectives_average_gradients_and_shard_batches() -> None:
    distributed.launch_local(_check_collectives, (2,), nprocs=2)


def _fit_and_save_batchnorm(out: str, mode: str) -> None:
    """In each of 2 gloo ranks: one epoch of the engine's loop with ``batchnorm: mode``; save this rank's buffers."""
    from kdbench.data import dataset_registry, regime_registry
    from kdbench.engine import TrainState, fit, seed_everything
    from kdbench.method import discover_methods
    from kdbench.models import create_network
    from kdbench.spec import TrainConfig

    torch.set_num_threads(1)
    splits = dataset_registry.get("synthetic")(num_classes=4, num_train=96, num_test=48).load()
    regime = regime_registry.get("balanced")().apply(splits.train.y.numpy(), splits.num_classes)
    seed_everything(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=splits.in_chans, img_size=splits.img_size)
    method = discover_methods().get("vanilla")(student, None, num_classes=4)
    run_dir = Path(out) / mode
    run_dir.mkdir(parents=True, exist_ok=True)
    fit(TrainState(student=student, teacher=None, method=method, train=splits.train, regime=regime,
                   test=splits.test, recipe=TrainConfig(epochs=1, batch_size=32), eval_batch_size=64, seed=0,
                   device=torch.device("cpu"), run_dir=run_dir, log=lambda message: None, batchnorm=mode))
    torch.save(dict(distributed.batchnorm_buffers(student)), run_dir / f"rank{distributed.rank()}.pt")


def test_the_training_loop_leaves_every_rank_with_rank_0s_batchnorm_statistics(tmp_path: Path) -> None:
    """``batchnorm: broadcast`` (the default): after the loop every rank holds rank 0's running statistics;
    ``local`` (the old behaviour) leaves each rank its own shard's, which is what the option fixes."""
    for mode in ("broadcast", "local"):
        distributed.launch_local(_fit_and_save_batchnorm, (str(tmp_path), mode), nprocs=2)
    ranks = {mode: [torch.load(tmp_path / mode / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
             for mode in ("broadcast", "local")}
    for mode, (zero, one) in ranks.items():
        assert zero.keys() == one.keys() and any(k.endswith("running_mean") for k in zero)
        same = all(torch.equal(zero[k], one[k]) for k in zero)
        assert same == (mode == "broadcast"), mode
