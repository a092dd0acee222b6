"""Data: dataset sources (digits, fashion_mnist, synthetic), regimes (balanced, longtail, unlabeled), batches."""

from kdbench.data.loader import eval_batches, train_batches
from kdbench.data.regimes import Regime, RegimeData, regime_parameters, regime_registry
from kdbench.data.sources import (
    DataSource,
    Splits,
    TensorData,
    dataset_parameters,
    dataset_registry,
)

__all__ = ["DataSource", "Regime", "RegimeData", "Splits", "TensorData", "dataset_parameters",
           "dataset_registry", "eval_batches", "regime_parameters", "regime_registry", "train_batches"]
