"""One training batch, the unit the data layer yields and every method's ``losses`` reads.

A low module (it imports only torch) so that the data layer can build batches without importing the method
contract above it; :mod:`kdbench.method` re-exports :class:`Batch` for methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch"]


@dataclass
class Batch:
    """One training batch. ``y`` is None in the unlabeled regime; ``index`` are dataset indices; ``negatives``
    (items x k dataset indices) is there when the method asked for them (``Needs.negatives``)."""

    x: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor
    negatives: torch.Tensor | None = None
