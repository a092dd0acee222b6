"""Speed checks, printed as ratios measured in one process (never asserted by tests): ``python -m kdbench bench
overhead|gendd|report|input|gpu``. One module per check; this one holds the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from kdbench.bench.gendd import bench_gendd
from kdbench.bench.gpu import bench_gpu
from kdbench.bench.inputs import bench_in_memory, bench_input
from kdbench.bench.overhead import STUDENTS, bench_overhead
from kdbench.bench.records import bench_report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdbench bench overhead|gendd|report|input|gpu``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench bench",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = parser.add_subparsers(dest="what", required=True)
    overhead = sub.add_parser("overhead", help="harness epochs vs a hand-written loop, alternating epoch by epoch "
                                               "(ratio per pair)")
    overhead.add_argument("--repeats", type=int, default=16, help="runs per student (each a fresh harness run)")
    overhead.add_argument("--epochs", type=int, default=5, help="epochs per run (harness/hand-written pairs)")
    overhead.add_argument("--students", nargs="+", default=list(STUDENTS),
                          help="kdb_* students (default: the nano and the small one)")
    gendd = sub.add_parser("gendd", help="GenDD head step FLOP/s vs matmul, predict ms/img vs the student")
    gendd.add_argument("--batch", type=int, default=64, help="images per step (CIFAR recipe: 64)")
    gendd.add_argument("--teacher-dim", type=int, default=256, help="teacher feature dim (resnet32x4: 256)")
    gendd.add_argument("--student-dim", type=int, default=256, help="student feature dim (resnet8x4: 256)")
    gendd.add_argument("--mul", type=int, default=30, help="row repetition (CIFAR: 30, ImageNet: 10)")
    gendd.add_argument("--width", type=int, default=1024)
    gendd.add_argument("--depth", type=int, default=3)
    gendd.add_argument("--student", default="resnet18")
    gendd.add_argument("--teacher", default="resnet34")
    gendd.add_argument("--img-size", type=int, default=224)
    gendd.add_argument("--steps", type=int, nargs="+", default=[100, 64, 16, 4])
    gendd.add_argument("--samples", type=int, default=5)
    report = sub.add_parser("report", help="time to aggregate N fabricated records")
    report.add_argument("--records", type=int, default=10_000)
    inp = sub.add_parser("input", help="image-folder decode+augment img/s per decoder (PIL, torchvision.io, ...)")
    inp.add_argument("--root", default=None, help="an ImageFolder tree (root/<class>/*.jpg or root/train/<class>/); "
                     "default: crops of scikit-learn's two sample photos written to a temp folder")
    inp.add_argument("--images", type=int, default=512, help="images to generate when no --root is given")
    inp.add_argument("--limit", type=int, default=1024, help="at most this many images of --root per pass")
    inp.add_argument("--size", type=int, default=224, help="RandomResizedCrop size")
    inp.add_argument("--batch", type=int, default=None, help="images per batch (default 64; --in-memory: 128)")
    inp.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader workers (default: cores)")
    inp.add_argument("--repeats", type=int, default=None, help="timed passes per decoder, decoders alternating "
                     "(default 5; --in-memory: 3)")
    inp.add_argument("--consume", type=float, default=None, metavar="IMG_PER_S",
                     help="the training step's consumption (e.g. bench gpu's img/s): does each decoder keep up?")
    inp.add_argument("--pillow-simd", default=None, metavar="DIR",
                     help="a folder holding pillow-simd (pip install --target DIR pillow-simd): PIL measured there")
    inp.add_argument("--json", default=None, metavar="PATH", help="also write the measurements as JSON")
    inp.add_argument("--in-memory", action="store_true",
                     help="instead: device-resident augmented batches vs a DataLoader over --dataset (img/s, ratio)")
    inp.add_argument("--dataset", default="fashion_mnist", help="--in-memory: fashion_mnist (Debian) or digits")
    inp.add_argument("--threads", type=int, default=1, help="--in-memory: torch threads of the main process")
    gpu = sub.add_parser("gpu", help="harness vs bare loop, torch.compile, GenDD head and sampler on one GPU")
    gpu.add_argument("--smoke", action="store_true", help="the same code paths at tiny sizes (runs on a CPU)")
    gpu.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON to PATH")
    gpu.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    args = parser.parse_args(argv)
    if args.what == "gpu":
        if not args.smoke and not torch.cuda.is_available():
            print("bench gpu: no GPU here; the full sizes (ResNet-18 at 224 px, batch 256) would take hours on a "
                  "CPU. Run it on one GPU, or add --smoke for the same code paths at tiny sizes.")
            return 2
        bench_gpu(args.smoke, args.json, not args.no_compile)
    elif args.what == "input" and args.in_memory:
        bench_in_memory(args.dataset, args.root, args.batch or 128, args.workers[0] if args.workers else 2,
                        args.repeats or 3, args.threads)
    elif args.what == "input":
        bench_input(args.root, args.images, args.limit, args.size, args.batch or 64, args.workers, args.repeats or 5,
                    args.consume, args.pillow_simd, args.json)
    elif args.what == "overhead":
        bench_overhead(args.repeats, tuple(args.students), args.epochs)
    elif args.what == "gendd":
        bench_gendd(args.batch, args.teacher_dim, args.student_dim, args.mul, args.width, args.depth, args.student,
                    args.teacher, args.img_size, args.steps, args.samples)
    else:
        bench_report(args.records)
    return 0
