"""The small nets: built by name through timm, with timm's feature API and named taps."""

from __future__ import annotations

import pytest
import timm
import torch

from kdbench.models import Network, create_network, kdbench_model_names


@pytest.mark.parametrize("name", kdbench_model_names())
def test_feature_api_and_taps(name: str) -> None:
    model = timm.create_model(name, num_classes=7, in_chans=1)
    assert model.get_classifier().out_features == 7
    net = Network(model, name)
    x = torch.randn(3, 1, 8, 8)
    net.eval()
    out = net(x, taps=net.tap_names)
    assert out.logits.shape == (3, 7) and out.feature.shape == (3, net.feature_dim)
    assert torch.allclose(out.logits, model(x), atol=1e-6), "logits = classifier(pooled feature)"
    for info, tap in zip(model.feature_info, net.tap_names, strict=True):
        assert out.taps[tap].shape[1] == info["num_chs"]
    with pytest.raises(KeyError, match=f"model '{name}' has no tap 'stage9'"):
        net(x, taps=("stage9",))


def test_28x28_inputs() -> None:
    for name in ("kdb_cnn_tiny", "kdb_cnn_base"):
        assert create_network(name, num_classes=10, in_chans=1)(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)
    mlp = create_network("kdb_mlp_base", num_classes=10, in_chans=1, img_size=28)
    assert mlp(torch.randn(2, 1, 28, 28)).logits.shape == (2, 10)


def test_any_timm_model_wraps() -> None:
    net = create_network("resnet10t", num_classes=5, in_chans=3)
    out = net(torch.randn(2, 3, 32, 32), taps=("stage1",))
    assert out.logits.shape == (2, 5) and "stage1" in out.taps
