"""``bench input``: decode + augment images/s of an image folder (ImageFolder / ImageNet layout) through kdbench's
own file-backed path (:class:`~kdbench.data.files.FileData`, DataLoader workers) for each decoder: PIL (the
default), ``torchvision.io``, pillow-simd when installed in a folder of its own, and DALI on a GPU when importable;
with ``--consume``, whether each keeps up with a training step's images/s. ``--in-memory`` instead compares the
in-memory path (device-resident tensors, augmentation on the device) with a DataLoader over the same images."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kdbench.bench.common import device as pick_device
from kdbench.bench.common import device_name
from kdbench.measure import time_call

SAMPLE_PHOTOS = "crops of scikit-learn's two sample photos (china.jpg, flower.jpg, 427x640)"


def sample_image_folder(folder: Path, images: int, classes: int = 4, seed: int = 0, quality: int = 90) -> Path:
    """An ImageFolder tree ``folder/c<k>/<i>.jpg`` of ``images`` real photographs at ImageNet-like sizes: random
    crops (at least 200 px a side) of scikit-learn's two sample photos, resized (bicubic) to a short side of
    333-500 px and saved as JPEG at ``quality``."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(images):
        photo = photos[rng.integers(len(photos))]
        h, w = int(rng.integers(200, photo.shape[0] + 1)), int(rng.integers(200, photo.shape[1] + 1))
        top, left = int(rng.integers(0, photo.shape[0] - h + 1)), int(rng.integers(0, photo.shape[1] - w + 1))
        scale = int(rng.integers(333, 501)) / min(h, w)
        image = Image.fromarray(photo[top:top + h, left:left + w]).resize((round(w * scale), round(h * scale)),
                                                                          Image.BICUBIC)
        path = folder / f"c{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=quality)
    return folder


def class_root(root: Path) -> Path:
    """The folder holding the class folders: ``root/train`` when there is one (ImageNet layout), else ``root``."""
    root = Path(root).expanduser()
    return root / "train" if (root / "train").is_dir() else root


def folder_samples(root: Path, limit: int) -> list[str]:
    """Up to ``limit`` images of an ImageFolder tree (``root/train/<class>/`` when there is a ``train`` folder,
    else ``root/<class>/``), evenly spread over the sorted list so every class is represented."""
    from kdbench.data.files import scan_image_folder

    samples, _, _ = scan_image_folder(class_root(root))
    n = len(samples)
    return samples if n <= limit else [samples[i * n // limit] for i in range(limit)]


def decode_pass(samples: Sequence[str], decoder: str, size: int, batch: int, workers: int,
                seed: int = 0) -> tuple[float, float]:
    """One training pass over ``samples`` (at least two batches) through kdbench's file-backed path: decode with
    ``decoder``, RandomResizedCrop(``size``) + flip + normalise. Returns the seconds to the first batch (DataLoader
    start-up, which every epoch pays once) and the images/s after it (the steady rate; with N workers it may read
    high by up to N-1 batches' worth of work done before the first batch arrived). With ``workers=0`` the main
    process decodes with one torch thread, as DataLoader workers do (two threads on a busy 2-core machine made the
    small per-image tensor ops 5x slower)."""
    from kdbench.data.files import FileData, ImageTransforms

    data = FileData(list(samples), torch.zeros(len(samples), dtype=torch.long),
                    ImageTransforms(size=size, decoder=decoder), num_workers=workers)
    chunks = list(torch.arange(len(samples)).split(batch))
    if len(chunks) < 2:
        raise ValueError(f"a pass needs at least two batches: {len(samples)} images, batch {batch}")
    threads = torch.get_num_threads()
    if workers == 0:
        torch.set_num_threads(1)
    try:
        began = time.perf_counter()
        first, after = 0.0, 0
        for x, _ in data.load_batches(chunks, train=True, seed=seed):
            x.sum()
            if not first:
                first = time.perf_counter()
            else:
                after += len(x)
        return first - began, after / (time.perf_counter() - first)
    finally:
        torch.set_num_threads(threads)


def decoder_rates(samples: Sequence[str], decoders: Sequence[str], size: int, batch: int, workers: int,
                  repeats: int) -> dict[str, dict[str, list[float]]]:
    """Steady images/s and start-up seconds of each decoder over ``repeats`` passes after one short warm-up pass
    each, the decoders alternating pass by pass (so a change in the machine's load hits them alike)."""
    for decoder in decoders:
        decode_pass(samples[:2 * batch], decoder, size, batch, workers)
    out: dict[str, dict[str, list[float]]] = {d: {"img_s": [], "startup_s": []} for d in decoders}
    for r in range(repeats):
        for decoder in decoders:
            startup, rate = decode_pass(samples, decoder, size, batch, workers, seed=r)
            out[decoder]["img_s"].append(rate)
            out[decoder]["startup_s"].append(startup)
    return out


def pillow_simd_rates(folder: str, samples: Sequence[str], size: int, batch: int, workers: int,
                      repeats: int) -> tuple[str, dict[str, list[float]]]:
    """PIL's path measured in a child process whose ``PIL`` is the one installed in ``folder`` (pillow-simd, kept
    out of the project's environment: ``pip install --target DIR pillow-simd``); its version and images/s."""
    code = ("import json, sys, PIL; from kdbench.bench.inputs import decoder_rates; a = json.load(sys.stdin); "
            "rates = decoder_rates(a['samples'], ['pil'], a['size'], a['batch'], a['workers'], a['repeats']); "
            "print(json.dumps({'version': PIL.__version__, 'file': PIL.__file__, 'rates': rates['pil']}))")
    project = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, project, os.environ.get("PYTHONPATH", "")])}
    request = json.dumps({"samples": list(samples), "size": size, "batch": batch, "workers": workers,
                          "repeats": repeats})
    done = subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True, env=env,
                          check=True)
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(answer["file"]).resolve().is_relative_to(Path(folder).resolve()):
        raise RuntimeError(f"the child process imported PIL from {answer['file']}, not from {folder}")
    return f"pillow-simd {answer['version']}", answer["rates"]


def dali_rates(root: Path, size: int, batch: int, workers: int, repeats: int,
               images: int) -> dict[str, list[float]]:
    """Images/s of a DALI pipeline on the GPU (file reader, mixed-device decode with a random crop, resize to
    ``size``, flip, normalise) over ``images`` images, ``repeats`` times after a warm-up pass (start-up: the
    pipeline's build, once)."""
    from nvidia.dali import fn, pipeline_def, types

    from kdbench.data.files import IMAGENET_MEAN, IMAGENET_STD

    @pipeline_def(batch_size=batch, num_threads=max(1, workers), device_id=torch.cuda.current_device())
    def pipeline() -> tuple[Any, Any]:  # DALI builds its graph from this function
        jpegs, labels = fn.readers.file(file_root=str(root), random_shuffle=True, name="reader")
        decoded = fn.decoders.image_random_crop(jpegs, device="mixed", output_type=types.RGB,
                                                random_area=[0.08, 1.0])
        resized = fn.resize(decoded, resize_x=size, resize_y=size)
        out = fn.crop_mirror_normalize(resized, dtype=types.FLOAT, output_layout="CHW",
                                       mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                       mirror=fn.random.coin_flip())
        return out, labels

    began = time.perf_counter()
    pipe = pipeline()
    pipe.build()
    startup = time.perf_counter() - began
    steps = max(1, images // batch)

    def one_pass() -> None:
        for _ in range(steps):
            pipe.run()
        torch.cuda.synchronize()

    one_pass()
    rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        one_pass()
        rates.append(steps * batch / (time.perf_counter() - began))
    return {"img_s": rates, "startup_s": [startup] * repeats}


def _library(decoder: str) -> str:
    if decoder == "pil":
        import PIL

        return f"Pillow {PIL.__version__}"
    import torchvision

    return f"torchvision.io {torchvision.__version__}"


def _row(decoder: str, library: str, workers: int, rates: dict[str, list[float]], pil: list[float],
         consume: float | None, paired: bool = False) -> dict[str, Any]:
    """One decoder's measurement; ``paired``: its passes alternated with PIL's ``pil`` passes, so the median of the
    pass-by-pass ratios is given too (robust to the machine's load changing between passes)."""
    median = statistics.median(rates["img_s"])
    row: dict[str, Any] = {"decoder": decoder, "library": library, "workers": workers, **rates,
                           "median_img_s": median, "median_startup_s": statistics.median(rates["startup_s"]),
                           "vs_pil": median / statistics.median(pil),
                           "vs_pil_paired": statistics.median(r / p for r, p in zip(rates["img_s"], pil, strict=True))
                           if paired else None}
    if consume:
        per_worker = median / max(1, workers)
        row.update(keeps_up=median >= consume, workers_needed=math.ceil(consume / per_worker))
    return row


def measure_input(samples: Sequence[str], source: str, size: int, batch: int, workers: Sequence[int],
                  repeats: int, consume: float | None = None, pillow_simd: str | None = None,
                  dali_root: Path | None = None) -> dict[str, Any]:
    """Every decoder's images/s at every worker count, as one JSON-ready dict."""
    import PIL

    from kdbench.envinfo import environment

    decoders = ("pil", "torchvision")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for n in workers:
        rates = decoder_rates(samples, decoders, size, batch, n, repeats)
        pil = rates["pil"]["img_s"]
        rows += [_row(d, _library(d), n, rates[d], pil, consume, paired=True) for d in decoders]
        if pillow_simd:
            try:
                library, simd = pillow_simd_rates(pillow_simd, samples, size, batch, n, repeats)
                rows.append(_row("pillow-simd", library, n, simd, pil, consume))
            except (OSError, RuntimeError, ValueError, subprocess.CalledProcessError) as err:
                skipped["pillow-simd"] = f"{type(err).__name__}: {getattr(err, 'stderr', '') or err}"[-300:]
        if dali_root is not None:
            try:
                rows.append(_row("dali", "nvidia.dali (GPU decode)", n,
                                 dali_rates(dali_root, size, batch, n, repeats, len(samples)), pil, consume))
            except Exception as err:  # not installed, or any DALI failure: reported, the rest still stands
                skipped["dali"] = f"{type(err).__name__}: {err}"[:300]
    if not pillow_simd:
        skipped["pillow-simd"] = ("not measured: give --pillow-simd DIR, a folder where `pip install --target DIR "
                                  "pillow-simd` installed it (never into the project's environment)")
    if dali_root is None:
        skipped["dali"] = "not measured: no GPU" if not torch.cuda.is_available() else "not measured"
    sizes = [Path(s).stat().st_size for s in samples]
    return {"bench": "input", "source": source, "images": len(samples),
            "mean_file_kib": sum(sizes) / len(sizes) / 1024, "size": size, "batch": batch, "repeats": repeats,
            "augmentation": f"RandomResizedCrop({size}, scale (0.08, 1)) + horizontal flip + normalise, per image",
            "timing": ("kdbench's FileData.load_batches; img/s after the first batch of each pass, start-up = time to "
                       "the first batch; median"),
            "pil": PIL.__version__, "cores": os.cpu_count(), "environment": environment(pick_device()),
            "consume_img_s": consume, "results": rows, "not_measured": skipped}


def render_input(result: dict[str, Any]) -> str:
    """The human table of a ``bench input`` result."""
    from tabulate import tabulate

    consume = result["consume_img_s"]
    headers = ["decoder", "library", "workers", "img/s (median)", "min-max", "vs PIL", "paired", "start-up s"]
    if consume:
        headers.append(f"keeps up with {consume:,.0f} img/s?")
    rows = []
    for r in result["results"]:
        row = [r["decoder"], r["library"], r["workers"], f"{r['median_img_s']:,.0f}",
               f"{min(r['img_s']):,.0f}-{max(r['img_s']):,.0f}", f"{r['vs_pil']:.2f}x",
               f"{r['vs_pil_paired']:.2f}x" if r["vs_pil_paired"] else "-", f"{r['median_startup_s']:.2f}"]
        if consume:
            row.append("yes" if r["keeps_up"] else f"no: about {r['workers_needed']} workers at this rate")
        rows.append(row)
    head = (f"bench input: {result['images']} images of {result['source']} (mean {result['mean_file_kib']:.0f} KiB); "
            f"{result['augmentation']}; batch {result['batch']}; {result['cores']} cores; {result['timing']} of "
            f"{result['repeats']} passes, decoders alternating")
    notes = ("\nvs PIL: ratio of the medians; paired: median of the pass-by-pass ratios (decoders alternating in "
             "one process; pillow-simd runs in a child process after them, so it has no paired ratio)")
    skipped = "".join(f"\n{name}: {why}" for name, why in result["not_measured"].items())
    return f"{head}\n{tabulate(rows, headers=headers, disable_numparse=True)}{notes}{skipped}"


def bench_input(root: str | None, images: int, limit: int, size: int, batch: int, workers: Sequence[int] | None,
                repeats: int, consume: float | None, pillow_simd: str | None,
                json_path: str | None) -> dict[str, Any]:
    """``python -m kdbench bench input``: generate (or read ``root``), measure, print, optionally write JSON."""
    workers = list(workers) if workers else [os.cpu_count() or 1]
    with tempfile.TemporaryDirectory() as folder:
        tree = Path(root) if root else sample_image_folder(Path(folder), images)
        samples = folder_samples(tree, limit if root else images)
        result = measure_input(samples, f"'{root}'" if root else SAMPLE_PHOTOS, size, batch, workers, repeats,
                               consume, pillow_simd, class_root(tree) if torch.cuda.is_available() else None)
    print(render_input(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written: {json_path}")
    return result


def bench_in_memory(dataset: str, root: str | None, batch_size: int, workers: int, repeats: int,
                    threads: int) -> None:
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
