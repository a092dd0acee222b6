"""``kdbench run SUITE --dry-run``: what a suite would run, where its data must be, and what it would cost."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tabulate import tabulate

from kdbench.data import dataset_registry
from kdbench.reference import published_teacher
from kdbench.store import atomic_write_json
from kdbench.store.runspec import RunSpec
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
    recipes: dict[tuple[str, str, str], str] = {}
    details: dict[tuple[str, str, str], str] = {}
    for spec in plan.runs.values():
        key = (f"{spec.teacher} -> {spec.student}", spec.regime.shown, spec.label)
        cells[key] += 1
        epochs[key] = spec.epochs
        recipes[key] = recipe_flag(spec)
        details[key] = deviation_detail(spec)
    with_recipe = any(recipes.values())
    rows = [[*key, n, epochs[key], *([recipes[key]] if with_recipe else [])] for key, n in sorted(cells.items())]
    lines.append(tabulate(rows, headers=["pair", "regime", "method", "runs", "epochs",
                                         *(["recipe"] if with_recipe else [])], tablefmt="simple"))
    lines += [f"{note}" for note in plan.refused]
    deviating = sorted({f"  {key[2]} x {key[0]}: {why}" for key, why in details.items() if why})
    if deviating:
        lines += ["", f"cells that deviate from their reference recipe ({len(deviating)}):", *deviating]
    lines += ["", "teachers:", *teacher_lines(suite, plan)]
    kinds = Counter(spec.label if spec.verifies else "trained" for spec in plan.teachers.values())
    lines += ["", f"teacher jobs: {len(plan.teachers)} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
              + f"); student runs: {len(plan.runs)}"]
    lines += ["", _executor_line(suite.executor), _gpu_hours(suite.executor, len(plan.teachers), len(plan.runs))]
    return "\n".join(lines)


def recipe_flag(spec: RunSpec) -> str:
    """``authors <recipe>``, ``DEVIATES: <keys>``, or "" (the method has no reference recipe in this suite)."""
    provenance = spec.provenance or {}
    if not provenance.get("recipe"):
        return ""
    deviations = provenance.get("deviations") or []
    if not deviations:
        return f"authors {provenance['recipe']}"
    return "DEVIATES: " + ", ".join(d["key"].split(".", 1)[-1] for d in deviations)


def deviation_detail(spec: RunSpec) -> str:
    """Each declared deviation of a run: ``key=value (authors v: reason)``; "" when it has none."""
    provenance = spec.provenance or {}
    return "; ".join(f"{d['key']}={d['value']!r} (authors {d['reference']!r}: {d['reason']})"
                     for d in provenance.get("deviations") or [])


def teacher_lines(suite: Suite, plan: Plan) -> list[str]:
    """Per teacher of the plan: its file (path, sha256, expected and published top-1), its pretrained weights, or
    'trained here' with its recipe."""
    lines = []
    for spec in sorted(plan.teachers.values(), key=lambda s: (s.model, str(s.regime.to_dict()))):
        model, source = spec.model, spec.source
        published = published_teacher(model, suite.dataset.name)
        stated = f", published top-1 {published['top1']:.2f} ({published['source']})" if published is not None else ""
        if source and source.checkpoint:
            lines.append(f"  {model}: file {source.checkpoint} (sha256 {source.sha256}, expected top-1 "
                         f"{source.top1} ± {source.tolerance}{stated})")
        elif source:
            lines.append(f"  {model}: pretrained weights from the local timm cache (expected top-1 {source.top1} "
                         f"± {source.tolerance}{stated})")
        else:
            stated = stated if spec.regime.name == "balanced" else ""  # published teachers saw the full set
            lines.append(f"  {model}: trained here ({spec.epochs} epochs, {spec.regime.shown}, seed {spec.seed}"
                         f"{stated})")
    if any(not spec.verifies for spec in plan.teachers.values()):
        lines.append("  (to distil from the papers' teacher files instead: README, 'Reproducing a published cell')")
    return lines


def write_plan_json(suite: Suite, plan: Plan, path: Path) -> None:
    """Every planned job's fully resolved spec, by run id (teachers, then student runs), as one JSON file."""
    atomic_write_json(path, {
        "suite": suite.name, "source": suite.source,
        "teachers": [{"run_id": run_id, **spec.to_dict()} for run_id, spec in plan.teachers.items()],
        "runs": [{"run_id": run_id, **spec.to_dict()} for run_id, spec in plan.runs.items()],
        "refused": list(plan.refused)})


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
