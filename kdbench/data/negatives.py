"""Contrastive negatives drawn by the data path (CRD's "exact" sampling), so a method needs no special trainer.

For each item of a batch, ``k`` dataset indices drawn uniformly with replacement from the training items of
*other* classes (RepDistiller's ``CIFAR100InstanceSample``, mode ``exact``), or from all training items when the
regime has no labels. Draws come from the epoch's own generator, so a resumed run draws the same negatives.
"""

from __future__ import annotations

import numpy as np
import torch


class NegativeSampler:
    """Draws ``k`` negatives per item among ``indices`` (dataset indices of the training items).

    With ``labels`` (one per dataset index), an item's negatives come from the other classes only; the draw is
    vectorised: items sorted by class, a uniform position among the ``n - n_c`` others, shifted past class c's
    block. Without labels every training item is a candidate.
    """

    def __init__(self, indices: np.ndarray, labels: np.ndarray | torch.Tensor | None, k: int) -> None:
        if k < 1:
            raise ValueError(f"the number of negatives must be >= 1, got {k}")
        self.k = k
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.labels = None
        if labels is None:
            self.pool = index
            return
        all_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        item_labels = all_labels[index]
        order = torch.argsort(item_labels, stable=True)
        self.pool = index[order]
        counts = torch.bincount(item_labels, minlength=int(all_labels.max()) + 1)
        if int((counts > 0).sum()) < 2:
            raise ValueError("contrastive negatives from other classes need at least two classes in the training set")
        self.labels = all_labels
        self.counts = counts
        self.starts = torch.cumsum(counts, 0) - counts

    def draw(self, batch_index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``len(batch_index) x k`` dataset indices of negatives for the items ``batch_index``."""
        rows = len(batch_index)
        u = torch.rand(rows, self.k, generator=generator, dtype=torch.float64)
        n = len(self.pool)
        if self.labels is None:
            return self.pool[(u * n).long().clamp_(max=n - 1)]
        cls = self.labels[batch_index.cpu()]
        others = (n - self.counts[cls]).to(torch.float64)[:, None]
        pos = (u * others).long().clamp_(max=others.long() - 1)
        pos = pos + (pos >= self.starts[cls][:, None]).long() * self.counts[cls][:, None]
        return self.pool[pos]
