"""bf16 autocast and channels-last: off by default on CPUs, on by default on GPUs, forced on here for a CPU run."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import tiny_suite

from kdbench import store
from kdbench.dispatch import dispatch
from kdbench.engine import Precision
from kdbench.suite import expand, validate


def test_auto_means_on_for_gpus_only() -> None:
    assert Precision.resolve({"amp": "auto", "channels_last": "auto"}, torch.device("cpu")) == Precision(False, False)
    assert Precision.resolve({"amp": "auto", "channels_last": "auto"}, torch.device("cuda")) == Precision(True, True)
    assert Precision.resolve({"amp": "off", "channels_last": "on"}, torch.device("cuda")) == Precision(False, True)
    assert Precision.resolve(None, torch.device("cpu")) == Precision(False, False)


SMALL_GENDD = {"name": "gendd", "width": 64, "mul": 2, "sample_steps": 4, "num_samples": 2, "warm_start_epochs": 1}


def test_a_run_trains_under_bf16_autocast_and_channels_last_and_records_it(tmp_path: Path) -> None:
    methods = [{"name": "kd"}, SMALL_GENDD]
    suite = validate(tiny_suite(regimes=[{"name": "balanced"}], methods=methods,
                                executor={"name": "debug", "amp": "on", "channels_last": "on"}))
    plan = expand(suite)
    default = expand(validate(tiny_suite(regimes=[{"name": "balanced"}], methods=methods)))
    assert plan.runs.keys() == default.runs.keys()  # precision is recorded, not part of the run id
    summary = dispatch(plan, tmp_path, suite.executor, progress=False)
    assert summary.counts() == {"done": 3}
    for run_dir in (tmp_path / "tiny" / "runs").iterdir():
        record = store.load_result(run_dir)
        assert record["precision"] == {"amp_bf16": True, "channels_last": True}
        assert 0.0 <= record["metrics"]["top1_last"] <= 100.0


def _gendd_pair() -> tuple:
    from kdbench.method import discover_methods
    from kdbench.models import create_network

    torch.manual_seed(0)
    student = create_network("kdb_cnn_nano", num_classes=4, in_chans=1)
    teacher = create_network("kdb_cnn_base", num_classes=4, in_chans=1).eval()
    method = discover_methods().get("gendd")(student, teacher, num_classes=4, width=32, mul=2, sample_steps=8,
                                             num_samples=2)
    for p in method.head.parameters():  # a head that is not zero-initialised, so its output matters
        torch.nn.init.normal_(p, std=0.05)
    return student, teacher, method


def test_gendd_head_loss_and_sampler_stay_fp32_under_bf16_autocast() -> None:
    """Backbones may run in bf16; GenDD's head, diffusion loss, sampler and teacher head do not: with the same
    (bf16) features and seed, predictions and losses under bf16 autocast equal the fp32 path bit for bit."""
    import numpy as np

    from kdbench.method import Batch
    from kdbench.models import Outputs

    student, teacher, method = _gendd_pair()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        s_feat, t_feat = student(x).feature.bfloat16(), teacher(x).feature.bfloat16()  # as a bf16 backbone gives
    batch = Batch(x=x, y=torch.arange(6) % 4, index=torch.arange(6))

    def run(autocast: bool) -> tuple[torch.Tensor, dict]:
        torch.manual_seed(1)
        np.random.seed(1)
        s = Outputs(logits=torch.zeros(6, 4), feature=s_feat if autocast else s_feat.float())
        t = Outputs(logits=torch.zeros(6, 4), feature=t_feat if autocast else t_feat.float())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = method.predict(x, s, final=True)
            losses = method.losses(batch, s, t)
        return logits, losses

    fp32_logits, fp32_losses = run(False)
    amp_logits, amp_losses = run(True)
    assert amp_logits.dtype == torch.float32 and torch.equal(amp_logits, fp32_logits)
    assert amp_losses["diffusion"].dtype == torch.float32
    assert torch.equal(amp_losses["diffusion"], fp32_losses["diffusion"])
    sampled = method.sample_features(method.condition(s_feat))
    assert sampled.dtype == torch.float32
