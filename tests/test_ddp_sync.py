"""Data-parallel state that must be one across ranks, checked in 2 gloo processes on CPU (the project's
``distributed.launch_local``): batch-norm buffers after :func:`distributed.broadcast_batchnorm`, the
variable-length row gather, and GenDD's distilled map fitted on every rank's rows. Each worker writes what it
measured (rank 0) to a JSON file that the test reads back, so the numbers are asserted here too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdbench import distributed


def _bn_modules() -> tuple[nn.Module, nn.Module]:
    """A small 'student' with every kind of normalisation layer that tracks statistics, and a 'method' module
    with a BatchNorm of its own (a projector): both must be synchronised."""
    from timm.layers import BatchNormAct2d

    student = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1),
                            BatchNormAct2d(4), nn.InstanceNorm2d(4, track_running_stats=True),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten())
    student.register_buffer("marker", torch.zeros(1))  # not a normalisation buffer: left as each rank has it
    method = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    return student, method


def _flat(*modules: nn.Module) -> torch.Tensor:
    return torch.cat([b.double().reshape(-1) for _, b in distributed.batchnorm_buffers(*modules)])


def _check_batchnorm_and_gather(out: str) -> None:
    r = distributed.rank()
    torch.manual_seed(0)  # the same initial modules on every rank, as seed_everything gives
    student, method = _bn_modules()
    student.train(), method.train()
    data = torch.Generator().manual_seed(100 + r)  # each rank its own shard
    for _ in range(2 + r):  # and an unequal number of batches: num_batches_tracked differs as well
        method(student(torch.randn(8, 2, 6, 6, generator=data) * (1 + r) + r))
    student.marker.fill_(r)
    names = [name for name, _ in distributed.batchnorm_buffers(student, method)]
    mine_before = _flat(student, method)
    before = distributed.gather_rows(mine_before[None])
    probe = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    student.eval(), method.eval()
    with torch.no_grad():
        outputs_before = distributed.gather_rows(method(student(probe))[None])

    distributed.broadcast_batchnorm(student, method)

    after = distributed.gather_rows(_flat(student, method)[None])
    with torch.no_grad():
        outputs_after = distributed.gather_rows(method(student(probe))[None])
    assert torch.equal(after[0], after[1])  # exactly, every buffer
    assert torch.equal(after[r], before[0])  # rank 0's values, on rank 0 unchanged
    assert torch.equal(outputs_after[0], outputs_after[1])  # so every rank evaluates one model
    assert float(student.marker) == r  # other buffers are not touched
    tracked = {name: int(b) for name, b in distributed.batchnorm_buffers(student, method)
               if name.endswith("num_batches_tracked")}
    # rank 0 saw 2 batches (rank 1: 3); InstanceNorm (student[5]) never counts them
    assert tracked == {"0.1.num_batches_tracked": 2, "0.4.num_batches_tracked": 2, "0.5.num_batches_tracked": 0,
                       "1.1.num_batches_tracked": 2}

    # rows of different lengths per rank (none at all on one of them), in rank order, on every rank
    block = torch.arange(6 * (1 - r), dtype=torch.float64).reshape(-1, 2) + 100 * r
    rows = distributed.gather_variable_rows(block)
    assert rows.shape == (3, 2) and torch.equal(rows, torch.arange(6, dtype=torch.float64).reshape(3, 2))
    ints = distributed.gather_variable_rows(torch.full((1 + 2 * r, 3), r, dtype=torch.long))
    assert ints.tolist() == [[0, 0, 0]] + [[1, 1, 1]] * 3
    everything = distributed.gather_rows(rows.reshape(1, -1))
    assert torch.equal(everything[0], everything[1])

    with pytest.raises(ValueError, match="batchnorm: broadcast"):  # SyncBatchNorm trains only on GPUs
        distributed.convert_sync_batchnorm(student)

    if r == 0:
        sizes = [b.numel() for _, b in distributed.batchnorm_buffers(student, method)]
        statistics = torch.cat([torch.full((n,), not name.endswith("num_batches_tracked"))
                                for name, n in zip(names, sizes, strict=True)])
        Path(out).write_text(json.dumps({
            "names": names,
            "max_abs_diff_before": float((before[0] - before[1]).abs().max()),
            "statistics_diff_before": float((before[0] - before[1])[statistics].abs().max()),
            "max_abs_diff_after": float((after[0] - after[1]).abs().max()),
            "output_diff_before": float((outputs_before[0] - outputs_before[1]).abs().max()),
            "output_diff_after": float((outputs_after[0] - outputs_after[1]).abs().max()),
        }))


def test_broadcast_makes_every_ranks_batchnorm_buffers_equal(tmp_path: Path) -> None:
    out = tmp_path / "bn.json"
    distributed.launch_local(_check_batchnorm_and_gather, (str(out),), nprocs=2)
    measured = json.loads(out.read_text())
    kinds = {name.rsplit(".", 1)[1] for name in measured["names"]}
    assert kinds == {"running_mean", "running_var", "num_batches_tracked"}
    assert len(measured["names"]) == 4 * 3  # BatchNorm2d, BatchNormAct2d, InstanceNorm2d, BatchNorm1d
    assert measured["statistics_diff_before"] > 0.1 and measured["output_diff_before"] > 1e-3  # they had drifted
    assert measured["max_abs_diff_after"] == 0.0 and measured["output_diff_after"] == 0.0


def test_process_group_helpers_are_no_ops_in_one_process() -> None:
    student, method = _bn_modules()
    student.train()
    student(torch.randn(4, 2, 6, 6))
    before = _flat(student, method).clone()
    distributed.broadcast_batchnorm(student, method)
    assert torch.equal(_flat(student, method), before)
    rows = torch.randn(3, 2)
    assert distributed.gather_variable_rows(rows) is rows
    assert distributed.convert_sync_batchnorm(student) is student
    assert isinstance(student[1], nn.BatchNorm2d) and not isinstance(student[1], nn.SyncBatchNorm)
    from kdbench.spec import BATCHNORM_MODES

    assert BATCHNORM_MODES == ("broadcast", "sync", "local")


def test_sync_batchnorm_conversion_keeps_parameters_buffers_and_activations() -> None:
    from timm.layers import SyncBatchNormAct

    torch.manual_seed(0)
    student, _ = _bn_modules()
    student.train()
    student(torch.randn(8, 2, 6, 6))  # non-trivial running statistics
    student.eval()
    x = torch.randn(3, 2, 6, 6)
    with torch.no_grad():
        expected = student(x)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    weight = student[1].weight
    converted = distributed.to_sync_batchnorm(student)
    assert converted is student  # the root is not a BatchNorm layer: converted in place
    assert type(student[1]) is nn.SyncBatchNorm and type(student[4]) is SyncBatchNormAct
    assert isinstance(student[4].act, nn.ReLU)  # timm's BatchNormAct keeps its activation
    assert student[1].weight is weight  # the optimizer's parameters stay the same objects
    assert list(student.state_dict()) == list(state)  # checkpoints load either way
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())
    with torch.no_grad():  # in eval mode (no synchronisation) it computes what the BatchNorm layers did
        assert torch.equal(student(x), expected)


def _check_gendd_distilled_map(out: str) -> None:
    from kdbench.methods.gendd.method import GenDD
    from kdbench.methods.gendd.predictor import fit_linear_map
    from kdbench.models import create_network

    r = distributed.rank()
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    shards = {0: [x[0:4], x[4:7]], 1: [x[7:10], x[10:12]]}  # unequal shares: 7 and 5 items

    def build(**distilled: object) -> tuple[GenDD, torch.nn.Module]:
        torch.manual_seed(0)  # the same networks and head on every rank
        student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
        teacher = create_network("kdb_cnn_base", num_classes=4, in_chans=1).eval()
        method = GenDD(student, teacher, num_classes=4, width=32, mul=2, sample_steps=4, num_samples=2,
                       warm_start_epochs=0, eval_sweep=({"sampler": "distilled", "ridge": 1e-3, **distilled},))
        return method, student

    def rows_of(method: GenDD, student: torch.nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():  # what the fit sees: the condition and the sampler's averaged sample, per batch
            zs = [method.condition(student(b).feature) for b in batches]
            return torch.cat(zs).double(), torch.cat([method.sample_features(z) for z in zs]).double()

    method, student = build()
    method.after_training(student, lambda: iter([(b, None) for b in shards[r]]))
    weight, bias = method.distilled
    both = distributed.gather_rows(torch.cat([weight.reshape(-1), bias])[None])
    assert torch.equal(both[0], both[1])  # every rank holds the very same map
    # the map one process fits on the union of both ranks' rows
    union = [rows_of(method, student, shards[k]) for k in (0, 1)]
    z, y = torch.cat([u[0] for u in union]), torch.cat([u[1] for u in union])
    whole_weight, whole_bias = fit_linear_map(z, y, 1e-3)
    assert torch.allclose(weight, whole_weight, rtol=0, atol=1e-10)
    assert torch.allclose(bias, whole_bias, rtol=0, atol=1e-10)
    assert method.distill_fit["items"] == 12
    own_weight, _ = fit_linear_map(*union[r], 1e-3)  # what a rank fitted on its shard alone
    shard_diff = float((own_weight - whole_weight).abs().max())
    assert shard_diff > 1e-4

    # ``items``: the ranks share it as the data is sharded (rank r: len(range(r, 9, 2)) = 5, 4 rows)
    limited, student = build(items=9)
    limited.after_training(student, lambda: iter([(b, None) for b in shards[r]]))
    first = [rows_of(limited, student, shards[k]) for k in (0, 1)]
    z9 = torch.cat([first[0][0][:5], first[1][0][:4]])
    y9 = torch.cat([first[0][1][:5], first[1][1][:4]])
    assert limited.distill_fit["items"] == 9
    assert torch.allclose(limited.distilled[0], fit_linear_map(z9, y9, 1e-3)[0], rtol=0, atol=1e-10)
    if r == 0:
        Path(out).write_text(json.dumps({
            "rank_map_diff": float((both[0] - both[1]).abs().max()),
            "union_map_diff": float(max((weight - whole_weight).abs().max(), (bias - whole_bias).abs().max())),
            "shard_only_map_diff": shard_diff,
        }))


def test_gendd_distilled_map_is_fitted_on_the_rows_of_every_rank(tmp_path: Path) -> None:
    out = tmp_path / "gendd.json"
    distributed.launch_local(_check_gendd_distilled_map, (str(out),), nprocs=2)
    measured = json.loads(out.read_text())
    assert measured["rank_map_diff"] == 0.0
    assert measured["union_map_diff"] <= 1e-10
    assert measured["shard_only_map_diff"] > 1e-4  # a rank's own shard gives another map: the test can fail
