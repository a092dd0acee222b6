"""``bench input``: one augmented training epoch of batches (random crop + flip, on the device) from the
in-memory path against a DataLoader with worker processes and per-image torchvision transforms."""

from __future__ import annotations

import torch

from kdbench.bench.common import device as pick_device
from kdbench.bench.common import device_name
from kdbench.measure import time_call


def bench_input(dataset: str, root: str | None, batch_size: int, workers: int, repeats: int, threads: int) -> None:
    """Images/s of one training epoch of input batches (no model): device-resident tensors with on-device
    crop/flip vs a DataLoader with ``workers`` processes and per-image RandomCrop/flip transforms. The main
    process uses ``threads`` torch threads (kdbench's local runs use one)."""
    import numpy as np
    from torchvision import transforms as T

    from kdbench.data import dataset_registry, train_batches
    from kdbench.data.sources import Augment, TensorData

    device = pick_device()
    torch.set_num_threads(threads)
    params = {"root": root} if root else {}
    splits = dataset_registry.get(dataset)(**params).load()
    data = TensorData(splits.train.x.to(device), splits.train.y.to(device), augment=Augment(pad=4))
    indices = np.arange(len(data))

    def resident() -> None:
        for batch in train_batches(data, indices, batch_size, labeled=True, seed=0, epoch=0, device=device):
            batch.x.sum()
        if device.type == "cuda":
            torch.cuda.synchronize()

    class PerImage(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.x, self.y = splits.train.x, splits.train.y
            size = self.x.shape[-1]
            self.transform = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()])

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.transform(self.x[i]), self.y[i]

    loader = torch.utils.data.DataLoader(PerImage(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def dataloader() -> None:
        for x, _ in loader:
            x.to(device, non_blocking=True).sum()
        if device.type == "cuda":
            torch.cuda.synchronize()

    fast = time_call(resident, device, warmup=1, repeats=repeats, budget_s=0.0, min_repeats=repeats)
    slow = time_call(dataloader, device, warmup=1, repeats=repeats, budget_s=0.0, min_repeats=repeats)
    n = len(data)
    print(f"input pipeline, {dataset} ({n} training images, batch {batch_size}, crop pad 4 + flip) on "
          f"{device_name(device)}")
    print(f"  device-resident tensors, on-device augmentation: {n / fast:12,.0f} img/s  ({fast:.3f} s/epoch)")
    print(f"  DataLoader, {workers} workers, per-image transforms: {n / slow:12,.0f} img/s  ({slow:.3f} s/epoch)")
    print(f"  ratio: {slow / fast:.1f}x faster (median of {repeats})")
