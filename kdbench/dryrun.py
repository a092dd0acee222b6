"""``kdbench run SUITE --dry-run``: what a suite would run, where its data must be, and what it would cost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tabulate import tabulate

from kdbench.data import dataset_registry
from kdbench.suite import ExecutorSettings, Plan, Suite


def describe_plan(suite: Suite, plan: Plan, results_root: Path) -> str:
    """The run table (pair x regime x method: seeds, runs, epochs), the teacher jobs, the executor and the
    estimated GPU-hours. Reads nothing but the suite."""
    source = dataset_registry.get(suite.dataset.name)
    layout = getattr(source, "LAYOUT", None)
    root = suite.dataset.params.get("root")
    lines = [f"suite '{suite.name}': {suite.description}",
             f"dataset: {suite.dataset.name}" + (f", root {root}" if root else
                                                   (", root $KDBENCH_DATA/" + suite.dataset.name
                                                    if "root" in suite.dataset.params else "")),
             *([f"expected layout: {layout}"] if layout else []),
             f"results: {results_root / suite.name}", ""]
    cells: Counter = Counter()
    epochs: dict[tuple[str, str, str], int] = {}
    for spec in plan.runs.values():
        regime = spec["regime"].get("label", spec["regime"]["name"])
        key = (f"{spec['teacher']} -> {spec['student']}", regime, spec["label"])
        cells[key] += 1
        epochs[key] = spec["epochs"]
    rows = [[*key, n, epochs[key]] for key, n in sorted(cells.items())]
    lines.append(tabulate(rows, headers=["pair", "regime", "method", "runs", "epochs"], tablefmt="simple"))
    lines += [f"{note}" for note in plan.refused]
    kinds = Counter(spec.get("label") if spec.get("source") else "trained" for spec in plan.teachers.values())
    lines += ["", f"teacher jobs: {len(plan.teachers)} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
              + f"); student runs: {len(plan.runs)}"]
    lines += ["", _executor_line(suite.executor), _gpu_hours(suite.executor, len(plan.teachers), len(plan.runs))]
    return "\n".join(lines)


def _executor_line(executor: ExecutorSettings) -> str:
    if executor.name != "slurm":
        return f"executor: {executor.name}"
    parts = [f"{k} {getattr(executor, k)}" for k in ("partition", "account", "qos", "constraint")
             if getattr(executor, k)]
    parts += [f"{executor.gpus_per_run} GPU(s), {executor.cpus_per_task} CPU(s) per run",
              f"time limit {executor.timeout_min} min"]
    if executor.teacher:
        parts.append(f"teacher jobs: {executor.teacher}")
    return "executor: slurm, " + ", ".join(parts)


def _gpu_hours(executor: ExecutorSettings, teachers: int, runs: int) -> str:
    def hours(kind: str, count: int) -> tuple[float, bool]:
        settings = executor.for_kind(kind)
        per_run = settings.hours_per_run
        bound = per_run is None
        per_run = settings.timeout_min / 60 if per_run is None else per_run
        return count * max(1, settings.gpus_per_run) * per_run, bound

    (t_hours, t_bound), (s_hours, s_bound) = hours("teacher", teachers), hours("student", runs)
    unit = "GPU-hours" if executor.gpus_per_run or executor.for_kind("teacher").gpus_per_run else "CPU-job-hours"
    how = "upper bound from the time limits (set executor.hours_per_run for an estimate)" if t_bound or s_bound \
        else "from executor.hours_per_run"
    return f"estimated {unit}: {t_hours + s_hours:,.0f} ({t_hours:,.0f} teachers + {s_hours:,.0f} students; {how})"
