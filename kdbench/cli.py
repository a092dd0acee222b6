"""Command line: ``python -m kdbench run|status|list|teacher import|report|bench``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench import store
from kdbench.method import MethodFileError
from kdbench.suite import SuiteError


def _cmd_run(args: argparse.Namespace) -> int:
    from kdbench.dispatch import RunInterrupted, dispatch, interrupt_on_signals
    from kdbench.suite import expand, load_suite

    if args.json and not args.dry_run:
        print("error: --json writes the plan of a --dry-run; add --dry-run (nothing was started)", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    if args.executor:
        overrides.append(f"executor.name={args.executor}")
    if args.workers is not None:
        overrides.append(f"executor.workers={args.workers}")
    if args.no_wait:
        overrides.append("executor.wait=false")
    if args.data_root:
        overrides.append(f"dataset.root={args.data_root}")
    results = Path(args.results)
    if results.exists() and not results.is_dir():
        print(f"error: --results '{results}' is a file, not a folder (nothing was started)", file=sys.stderr)
        return 2
    suite = load_suite(args.suite, overrides, check_files=not args.dry_run)
    plan = expand(suite)
    if args.dry_run:
        from kdbench.dryrun import describe_plan, write_plan_json

        print(describe_plan(suite, plan, Path(args.results)))
        if suite.tune.enabled:
            from kdbench.suite.tuneplan import budget, tuning_plan

            trials = tuning_plan(suite)
            spent = budget(suite)
            print(f"tuning stage first: {len(trials.plan.runs)} trial run(s), the same budget for every method: "
                  f"{spent['trials']} configuration(s) x {len(spent['seeds'])} seed(s) x {spent['epochs']} epochs per "
                  f"cell ({spent['search']}), chosen on {spent['metric']}; the student runs above then take each "
                  "cell's chosen values")
        if args.json:
            write_plan_json(suite, plan, Path(args.json))
            print(f"plan: {len(plan.teachers)} teacher job(s) and {len(plan.runs)} run spec(s) -> {args.json}")
        return 0
    print(f"suite '{suite.name}' ({suite.source}): {len(plan.teachers)} teacher job(s), {len(plan.runs)} run(s), "
          f"executor {suite.executor.name} -> {Path(args.results) / suite.name}", flush=True)
    for note in plan.refused:
        print(f"  {note}", flush=True)
    try:
        with interrupt_on_signals():
            if suite.tune.enabled:
                from kdbench.tuning import run_tuned

                summary = run_tuned(suite, Path(args.results), progress=not args.quiet,
                                    say=lambda line: print(line, flush=True))
            else:
                summary = dispatch(plan, Path(args.results), suite.executor, progress=not args.quiet)
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM/SIGHUP as RunInterrupted
        signum = err.signum if isinstance(err, RunInterrupted) else signal.SIGINT
        again = shlex.join(["python", "-m", "kdbench", "run", args.suite, *args.overrides, "--results",
                            str(results)])
        where = ("the submitted SLURM jobs keep running" if suite.executor.name == "slurm"
                 else "the local workers were stopped; finished runs and checkpoints are kept")
        print(f"interrupted by {signal.Signals(signum).name}: {where}; resume with: {again}", file=sys.stderr,
              flush=True)
        return 128 + int(signum)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts().items())) or "nothing to run"
    submitted = ""
    if suite.executor.name == "slurm":
        submitted = f"; {summary.submitted} submitted, {summary.attached} attached to queued jobs"
    print(f"finished: {counts}; {summary.skipped} already finished and skipped{submitted}", flush=True)
    return 1 if summary.counts().get("failed") else 0


def _suite_dirs(root: Path) -> list[Path]:
    if (root / store.SUITE).exists():
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{store.SUITE}"))


def _cmd_status(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    folders = _suite_dirs(root) if root.is_dir() else []
    if not folders:
        print(f"error: no suite folder (with {store.SUITE}) in '{root}'", file=sys.stderr)
        return 2
    if args.watch is None:
        _print_status(folders)
        return 0
    if args.watch <= 0:
        print(f"error: --watch takes a positive number of seconds, got {args.watch:g}", file=sys.stderr)
        return 2
    from kdbench.progress import ACTIVE_STATES, WAITING_STATES, WATCH_IDLE_S, last_activity

    try:
        while True:
            print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} (every {args.watch:g}s; Ctrl-C stops watching)",
                  flush=True)
            counts = _print_status(folders)
            if not any(counts.get(state) for state in ACTIVE_STATES):
                # runs left but none running or queued: a local dispatcher may be starting the next job (its
                # process takes the run's lock only once it has imported torch); stop once the folder is quiet
                idle = time.time() - max(last_activity(folder) for folder in folders)
                if not any(counts.get(state) for state in WAITING_STATES) or idle >= WATCH_IDLE_S:
                    print("nothing is running or queued: stopped watching", flush=True)
                    return 0
                time.sleep(min(args.watch, max(1.0, WATCH_IDLE_S - idle)))
                continue
            time.sleep(args.watch)
    except KeyboardInterrupt:
        print("\nstopped watching (the runs are not affected)", flush=True)
        return 0


def _print_status(folders: list[Path]) -> dict[str, int]:
    """Print each suite folder's counts, ETA and notable runs; return the counts over all of them."""
    from kdbench import progress, slurm

    every: dict[str, int] = {}
    for folder in folders:
        expected = store.read_json(folder / store.SUITE)
        run_dirs = [folder / kind / run_id for kind in ("teachers", "runs") for run_id in expected.get(kind, [])]
        jobs = {path: slurm.job_of(ref) for path in run_dirs
                if not (path / store.RESULT).exists() and (ref := slurm.read_job_ref(path))}
        job_states = slurm.current_states(jobs.values(), confirm=True)  # one sacct (+ one squeue) call
        states = {}
        for run_dir in run_dirs:
            job = jobs.get(run_dir)
            states[run_dir] = _run_state(run_dir, job, job_states[str(job.job_id)] if job is not None else None)
        runs = dict(zip(run_dirs, progress.suite_progress(states), strict=True))
        counts = progress.count_states(runs.values())
        for state, n in counts.items():
            every[state] = every.get(state, 0) + n
        total = sum(counts.values())
        print(f"{folder.name}: {total} jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        eta = progress.estimate_eta(list(runs.values()))
        if eta is not None:
            print(f"  {eta.line()}")
        for run_dir in run_dirs:
            for line in _status_lines(run_dir, states[run_dir], runs[run_dir], jobs.get(run_dir), job_states):
                print(line)
    return every


def _progress_words(run: Any) -> str:
    """``kd balanced seed 0, epoch 4/10, 2.1 s/epoch, ~13s left`` (what is known of it)."""
    from kdbench.progress import duration

    total = "?" if run.epochs_total is None else f"{run.epochs_total}{'' if run.stages_known else '+'}"
    words = [run.title, f"epoch {run.epochs_done}/{total}" + (f" ({run.phase})" if run.phase not in (None, "main")
                                                             else "")]
    if run.seconds_per_epoch is not None:
        words.append(f"{run.seconds_per_epoch:.3g} s/epoch")
    if run.remaining_seconds is not None:
        words.append(f"~{duration(run.remaining_seconds)} left")
    return ", ".join(words)


def _status_lines(run_dir: Path, state: str, run: Any, job: Any, job_states: dict[str, str]) -> list[str]:
    """The lines ``status`` prints under a suite for one run (none for a done or pending one)."""
    job_state = job_states[str(job.job_id)] if job is not None else None
    if state in ("queued", "running") and job is not None:
        more = f"; {_progress_words(run)}" if state == "running" else ""
        return [f"  {state:8} {run_dir.name}: job {job.job_id} ({job_state}){more}"]
    if state == "running":
        return [f"  running  {run_dir.name}: {_progress_words(run)}"]
    if state == "failed":
        record = store.load_record(run_dir)
        job = (record.job if record else None) or {}
        where = f" job {job.get('job_id')} ({job.get('state')})" if job.get("job_id") else ""
        lines = [f"  failed   {run_dir.name}:{where} {(record.error if record else '') or ''}"]
        tail = [line for line in ((record.log_tail if record else None) or "").splitlines() if line.strip()][-5:]
        return lines + [f"           | {line}" for line in tail]
    if state == "lost" and job is not None:
        return [f"  lost     {run_dir.name}: job {job.job_id} ended "
                f"({job_state}) without a record; `kdbench run` again resumes it"]
    return []


def _run_state(run_dir: Path, job: Any = None, job_state: str | None = None) -> str:
    """done | diverged | failed | running | queued (SLURM job waiting) | lost (job ended, no record) |
    interrupted (checkpoint, no record, no job) | pending. ``job_state``: the job's SLURM state, when known."""
    from kdbench import slurm

    try:
        record = store.load_record(run_dir)
    except (OSError, ValueError):
        return "unreadable"
    if record is not None:
        return record.state
    if store.is_locked(run_dir):
        return "running"
    if job is not None:
        if slurm.is_active(job, job_state):
            return "running" if (job_state or slurm.slurm_state(job)) == "RUNNING" else "queued"
        return "lost"
    return "interrupted" if (run_dir / store.CHECKPOINT).exists() else "pending"


def _cmd_list(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from kdbench.method import discover_methods, hyperparameters

        registry = discover_methods()
        for name in registry.names():
            cls = registry.get(name)
            params = ", ".join(f"{k}={p.default!r}" for k, p in hyperparameters(cls).items())
            labels = "needs labels" if cls.needs.labels else "label-free"
            teacher = "" if cls.needs.teacher else ", no teacher"
            print(f"{name:10} {cls.description}  [{labels}{teacher}; uses {cls.uses}]  ({params})")
    elif args.what == "models":
        from kdbench.models import kdbench_model_names

        for name in kdbench_model_names():
            print(name)
        print("(and every timm model name: python -c 'import timm; print(timm.list_models())')")
    elif args.what == "datasets":
        from kdbench.data import dataset_registry

        for name in dataset_registry.names():
            print(f"{name:14} {dataset_registry.get(name).description}")
    elif args.what == "regimes":
        from kdbench.data import regime_registry

        for name in regime_registry.names():
            print(f"{name:10} {regime_registry.get(name).description}")
    else:
        from kdbench.suite import find_suite, list_suites, read_raw

        for name in list_suites():
            description = read_raw(find_suite(name)).get("description", "")
            print(f"{name:16} {description}")
    return 0


def _cmd_teacher_import(args: argparse.Namespace) -> int:
    from kdbench.teachers import TeacherFileError, import_teacher

    try:
        report = import_teacher(Path(args.file), args.arch, Path(args.out) if args.out else None, args.dataset,
                                args.data_root)
    except (TeacherFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    read = report.source
    print(f"{read.path}: a {read.layout} file for {read.arch}, {len(read.state)} tensors"
          + (f"; skipped entries: {', '.join(read.skipped)}" if read.skipped else "")
          + (f"; the file states top-1 {read.stated_top1:.2f}" if read.stated_top1 is not None else ""))
    print(f"sha256 {report.source_sha256}  {read.path}")
    checkpoint, sha = read.path, report.source_sha256
    if report.out is not None:
        print(f"sha256 {report.out_sha256}  {report.out}  (converted to kdbench's format)")
        checkpoint, sha = report.out, report.out_sha256
    published = (f"{report.published_top1:.2f} ({report.published_source})" if report.published_top1 is not None
                 else "none on record")
    if report.measured_top1 is not None:
        print(f"top-1 on the {report.dataset} test split: {report.measured_top1:.2f}; published: {published}")
    else:
        print(f"published top-1 on {report.dataset}: {published}; give --data-root to measure it here")
    top1 = report.measured_top1 if report.measured_top1 is not None else report.published_top1
    print("suite entry (teacher.sources):")
    print(f"  {read.arch}: {{checkpoint: {checkpoint}, sha256: {sha}, "
          f"top1: {'<top-1>' if top1 is None else f'{top1:.2f}'}}}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``kdbench`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m kdbench", description="kdbench: a reproducible KD benchmark")
    parser.add_argument("--methods", action="append", default=[], metavar="DIR",
                        help="a folder of your own method files (*.py), found beside the shipped ones; repeatable; "
                        "kept in $KDBENCH_METHODS, so workers and SLURM jobs find them too")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a suite (by name in suites/ or by path); finished runs are skipped")
    run.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a suite file")
    run.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=5 seeds=[0]")
    run.add_argument("--results", default=os.environ.get("KDBENCH_RESULTS", "results"),
                     help="results root (default: results/)")
    run.add_argument("--executor", choices=["local", "debug", "slurm"], help="override the suite's executor")
    run.add_argument("--workers", type=int, help="parallel local jobs (default: the suite's, else the cores)")
    run.add_argument("--data-root", help="the dataset's root folder (else the suite's dataset.root, else "
                     "$KDBENCH_DATA/<dataset name>)")
    run.add_argument("--no-wait", action="store_true",
                     help="slurm: submit and return; collect later with `python -m kdbench status DIR`")
    run.add_argument("--dry-run", action="store_true",
                     help="validate and print the run table, the jobs and the estimated GPU-hours; touch no data")
    run.add_argument("--json", metavar="FILE", help="with --dry-run: write every planned job's fully resolved spec "
                     "(teacher, student, regime, seed, method values, train settings) to FILE as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser("status", help="per-state counts, progress and an ETA of a results folder")
    status.add_argument("dir", help="a suite's results folder or the results root")
    status.add_argument("--watch", type=float, metavar="SECONDS",
                        help="print again every SECONDS until no run is running or queued (Ctrl-C stops watching)")
    status.set_defaults(func=_cmd_status)

    lister = sub.add_parser("list", help="list methods, models, datasets, regimes or suites")
    lister.add_argument("what", choices=["methods", "models", "datasets", "regimes", "suites"])
    lister.set_defaults(func=_cmd_list)

    teacher = sub.add_parser("teacher", help="teacher files: import a published checkpoint")
    teacher_sub = teacher.add_subparsers(dest="teacher_command", required=True)
    importer = teacher_sub.add_parser(
        "import", help="read a teacher file (kdbench, RepDistiller/mdistiller, timm/torchvision), check it fits "
        "--arch, print its sha256 and, with --data-root, its test top-1 beside the published one")
    importer.add_argument("file", help="the checkpoint file, e.g. save/models/resnet32x4_vanilla/ckpt_epoch_240.pth")
    importer.add_argument("--arch", required=True, help="kdbench model name, e.g. resnet32x4_cifar or resnet34")
    importer.add_argument("--out", help="write the weights in kdbench's format here (tensors only)")
    importer.add_argument("--data-root", help="measure top-1 on this dataset's test split (CIFAR-100 for the "
                          "_cifar zoo, ImageNet otherwise; --dataset to choose)")
    importer.add_argument("--dataset", help="dataset name for --data-root (default: by architecture)")
    importer.set_defaults(func=_cmd_teacher_import)

    for name, helptext, entry in (("report", "same as python -m kdbench.report (takes its arguments)", _cmd_report),
                                  ("bench", "speed checks: bench overhead | gendd | report (prints ratios)",
                                   _cmd_bench)):
        forwarded = sub.add_parser(name, help=helptext, add_help=False)  # its own parser answers --help
        forwarded.add_argument("args", nargs=argparse.REMAINDER)
        forwarded.set_defaults(func=entry)
    return parser


def _cmd_report(args: argparse.Namespace) -> int:
    from kdbench.report import main as report_main

    return report_main(args.args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from kdbench.bench import main as bench_main

    return bench_main(args.args)


def _use_method_folders(folders: list[str]) -> None:
    """``--methods DIR``: check each folder and add it to ``$KDBENCH_METHODS`` (read by method discovery here and
    inherited by every worker and job)."""
    from kdbench.method import METHODS_ENV

    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise MethodFileError(f"--methods: '{folder}' is not a folder")
        known = [p for p in os.environ.get(METHODS_ENV, "").split(os.pathsep) if p]
        if str(path) not in known:
            os.environ[METHODS_ENV] = os.pathsep.join([*known, str(path)])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m kdbench``: one clear message and exit code 2 for a bad suite."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] in (["report"], ["bench"]):  # everything after the command is the forwarded tool's
        args, extra = parser.parse_args(argv[:1]), []
        args.args = argv[1:]
    else:
        args, extra = parser.parse_known_args(argv)
    if extra:  # overrides given after options (run smoke --workers 2 train.epochs=3)
        if args.command != "run" or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    try:
        _use_method_folders(args.methods)
        return int(args.func(args) or 0)
    except (SuiteError, store.StoreReadError, MethodFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from kdbench.dispatch import SubmissionError

        if not isinstance(err, SubmissionError):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


