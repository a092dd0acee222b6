"""Speed checks, printed as ratios measured in one process (never asserted by tests): ``python -m kdbench bench
overhead|gendd|report|input``. One module per check; this one holds the command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from kdbench.bench.gendd import bench_gendd
from kdbench.bench.inputs import bench_input
from kdbench.bench.overhead import bench_overhead
from kdbench.bench.records import bench_report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m kdbench bench overhead|gendd|report|input``."""
    parser = argparse.ArgumentParser(prog="python -m kdbench bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    overhead = sub.add_parser("overhead", help="harness epoch vs a hand-written loop (ratio)")
    overhead.add_argument("--repeats", type=int, default=7)
    overhead.add_argument("--student", default="kdb_cnn_nano", help="a kdb_* student (kdb_cnn_base: heavier steps)")
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
    inp = sub.add_parser("input", help="device-resident augmented batches vs a DataLoader (img/s, ratio)")
    inp.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist (Debian package) or digits")
    inp.add_argument("--root", default=None)
    inp.add_argument("--batch", type=int, default=128)
    inp.add_argument("--workers", type=int, default=2)
    inp.add_argument("--repeats", type=int, default=3)
    inp.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    args = parser.parse_args(argv)
    if args.what == "input":
        bench_input(args.dataset, args.root, args.batch, args.workers, args.repeats, args.threads)
    elif args.what == "overhead":
        bench_overhead(args.repeats, args.student)
    elif args.what == "gendd":
        bench_gendd(args.batch, args.teacher_dim, args.student_dim, args.mul, args.width, args.depth, args.student,
                    args.teacher, args.img_size, args.steps, args.samples)
    else:
        bench_report(args.records)
    return 0
