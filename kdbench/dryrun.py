"""``kdbench run SUITE --dry-run``: what a suite would run, where its data must be, what it would cost, and what
its seeds can resolve.

Per comparison cell (pair x regime x method against the baseline, KD by default: the report's
``defaults.toml``) the run table shows the cell's GPU-hours and the minimum detectable effect (MDE) of its seeds:
the smallest true top-1 difference to the baseline that a paired two-sided t-test at alpha 0.05 detects with power
0.8, ``MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_diff / sqrt(n)`` with ``n`` seeds and
``sd_diff = sqrt(2) * sd`` (independent seeds of seed sd ``sd``). The seed sd comes from earlier results of the
suite in the results folder when there are any (the cell's own runs of the method and the baseline, else the pooled
sd of the suite's cells), else from the published range 0.2-0.3 top-1 points on CIFAR-100 (the MDE is then shown
for both ends); the output says which.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from kdbench.data import dataset_registry
from kdbench.reference import published_teacher
from kdbench.store import atomic_write_json, scan_results
from kdbench.store.runspec import RunSpec
from kdbench.suite import ExecutorSettings, Plan, Suite

ALPHA = 0.05
POWER = 0.8
PUBLISHED_SEED_SD = (0.2, 0.3)
"""The seed sd of top-1 (points) published for CIFAR-100 students (0.18-0.30 in the papers' tables), used when
there are no earlier results."""
METRIC = "top1_last"
"""The metric whose seed sd is read from earlier records (the report's headline metric)."""

Cell = tuple[str, str, str]  # (pair "teacher -> student", regime as shown, method label)


def minimum_detectable_effect(seed_sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The MDE of a paired two-sided t-test with ``n`` seeds (None below 2):
    ``(t_{1-alpha/2, n-1} + t_{power, n-1}) * sqrt(2) * seed_sd / sqrt(n)``."""
    from kdbench.report.summary import minimum_detectable_effect as paired_mde  # the report's resolution line

    return paired_mde(math.sqrt(2) * seed_sd, n, alpha, power)  # sqrt(2) * sd: the sd of a paired difference


def _cell_of(spec: RunSpec) -> Cell:
    return (f"{spec.teacher} -> {spec.student}", spec.regime.shown, spec.label)


def earlier_seed_values(folder: Path) -> dict[Cell, dict[int, float]]:
    """``METRIC`` of every finished student run recorded below ``folder`` (the suite's results), by cell and
    seed; unreadable records are skipped (the report lists them)."""
    values: dict[Cell, dict[int, float]] = defaultdict(dict)
    if not folder.is_dir():
        return {}
    for scanned in scan_results(folder):
        record = scanned.record
        if record is None or record.get("state") != "done":
            continue
        try:
            spec = RunSpec.from_dict(record["spec"])
        except (KeyError, TypeError, ValueError):
            continue
        value = (record.get("metrics") or {}).get(METRIC)
        if spec.is_teacher or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        values[_cell_of(spec)][spec.seed] = float(value)
    return dict(values)


def pooled_sd(samples: Iterable[Sequence[float]]) -> tuple[float, int] | None:
    """The pooled sd of groups of seed values (those with 2 or more) and how many values it rests on."""
    groups = [list(g) for g in samples if len(g) >= 2]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in groups) / dof), sum(map(len, groups))


@dataclass(frozen=True)
class SeedSd:
    """Where a cell's seed sd comes from: ``values`` (one sd, or the published low and high end) and a note."""

    values: tuple[float, ...]
    source: str

    def text(self) -> str:
        """The sd as table text (``0.2-0.3`` for the published range)."""
        return "-".join(f"{sd:.2g}" if self.source == "published" else f"{sd:.2f}" for sd in self.values)

    def mde(self, n: int) -> str:
        """The MDE for ``n`` seeds as table text (``0.47-0.70`` for a range)."""
        found = [minimum_detectable_effect(sd, n) for sd in self.values]
        if any(m is None for m in found):
            return "-"
        return "-".join(f"{m:.2f}" for m in found)


def seed_sds(plan_cells: Iterable[Cell], baseline: str, earlier: dict[Cell, dict[int, float]]) -> dict[Cell, SeedSd]:
    """Each comparison cell's seed sd: its own earlier runs (the method's and the baseline's), else the pooled sd
    of every earlier cell of the suite, else :data:`PUBLISHED_SEED_SD`."""
    suite_wide = pooled_sd(v.values() for v in earlier.values())
    out = {}
    for cell in plan_cells:
        own = pooled_sd([list(earlier.get(cell, {}).values()),
                         list(earlier.get((cell[0], cell[1], baseline), {}).values())])
        if own is not None:
            out[cell] = SeedSd((own[0],), f"earlier runs of the cell ({own[1]})")
        elif suite_wide is not None:
            out[cell] = SeedSd((suite_wide[0],), f"earlier runs of the suite, pooled ({suite_wide[1]})")
        else:
            out[cell] = SeedSd(PUBLISHED_SEED_SD, "published")
    return out


def describe_plan(suite: Suite, plan: Plan, results_root: Path, baseline: str | None = None) -> str:
    """The run table (pair x regime x method: runs, epochs, GPU-hours, the MDE against ``baseline``, the
    report's default when None), the teacher jobs, the executor and the estimated GPU-hours. Reads the suite and
    the finished records of earlier runs of the suite under ``results_root`` (for the seed sd)."""
    if baseline is None:
        from kdbench.report.options import DEFAULT_BASELINE

        baseline = DEFAULT_BASELINE
    source = dataset_registry.get(suite.dataset.name)
    layout = getattr(source, "LAYOUT", None)
    root = suite.dataset.params.get("root")
    lines = [f"suite '{suite.name}': {suite.description}",
             f"dataset: {suite.dataset.name}" + (f", root {root}" if root else
                                                   (", root $KDBENCH_DATA/" + suite.dataset.name
                                                    if "root" in suite.dataset.params else "")),
             *([f"expected layout: {layout}"] if layout else []),
             f"results: {results_root / suite.name}", ""]
    cells: Counter[Cell] = Counter()
    epochs: dict[tuple[str, str, str], int] = {}
    recipes: dict[tuple[str, str, str], str] = {}
    details: dict[tuple[str, str, str], str] = {}
    for spec in plan.runs.values():
        key = _cell_of(spec)
        cells[key] += 1
        epochs[key] = spec.epochs
        recipes[key] = recipe_flag(spec)
        details[key] = deviation_detail(spec)
    with_recipe = any(recipes.values())
    per_run, _ = _hours_per_run(suite.executor, "student")
    earlier = earlier_seed_values(results_root / suite.name)
    sds = seed_sds(cells, baseline, earlier)
    unit = _unit(suite.executor, short=True)

    def mde(key: Cell) -> str:
        if key[2] == baseline:
            return "baseline"
        base = cells.get((key[0], key[1], baseline))
        return sds[key].mde(min(cells[key], base)) if base else f"- (no {baseline})"

    rows = [[*key, n, epochs[key], f"{n * per_run:,.0f}", sds[key].text(), mde(key),
             *([recipes[key]] if with_recipe else [])] for key, n in sorted(cells.items())]
    lines.append(tabulate(rows, headers=["pair", "regime", "method", "runs", "epochs", unit, "seed sd",
                                         f"MDE vs {baseline}", *(["recipe"] if with_recipe else [])],
                          tablefmt="simple", disable_numparse=True))
    lines += [f"{note}" for note in plan.refused]
    lines += ["", *mde_lines(suite, baseline, sds.values(), results_root / suite.name)]
    deviating = sorted({f"  {key[2]} x {key[0]}: {why}" for key, why in details.items() if why})
    if deviating:
        lines += ["", f"cells that deviate from their reference recipe ({len(deviating)}):", *deviating]
    lines += ["", "teachers:", *teacher_lines(suite, plan)]
    kinds = Counter(spec.label if spec.verifies else "trained" for spec in plan.teachers.values())
    lines += ["", f"teacher jobs: {len(plan.teachers)} (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
              + f"); student runs: {len(plan.runs)}"]
    lines += ["", _executor_line(suite.executor), _gpu_hours(suite.executor, plan)]
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
    packed = f", students packed {executor.runs_per_gpu} per job" if executor.runs_per_gpu > 1 else ""
    if executor.name != "slurm":
        return f"executor: {executor.name}{packed}"
    parts = [f"{k} {getattr(executor, k)}" for k in ("partition", "account", "qos", "constraint")
             if getattr(executor, k)]
    parts += [f"{executor.gpus_per_run} GPU(s), {executor.cpus_per_task} CPU(s) per run",
              f"time limit {executor.timeout_min} min"]
    if executor.teacher:
        parts.append(f"teacher jobs: {executor.teacher}")
    return "executor: slurm, " + ", ".join(parts) + packed


def mde_lines(suite: Suite, baseline: str, sds: Iterable[SeedSd], folder: Path) -> list[str]:
    """What the MDE column means: the test, the formula, the seed count and where the seed sd came from."""
    n = len(suite.seeds)
    sources = Counter(sd.source.split(" (")[0] for sd in sds)
    if not sources:
        return []
    if set(sources) == {"published"}:
        low, high = PUBLISHED_SEED_SD
        where = (f"published, {low}-{high} top-1 points (no earlier results in {folder}): MDE "
                 f"{SeedSd(PUBLISHED_SEED_SD, 'published').mde(n)} for {n} seeds")
    else:
        where = f"from earlier results in {folder}: " + ", ".join(f"{k} for {v} cell(s)"
                                                                   for k, v in sorted(sources.items()))
    return [f"MDE vs {baseline}: the smallest true top-1 difference (points) a paired two-sided t-test "
            f"(alpha {ALPHA}, power {POWER}) detects with the cell's seeds ({n} in this suite):",
            "  MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sqrt(2) * sd / sqrt(n)   (sd: the seed sd of one "
            "method; sqrt(2) * sd: that of a paired difference of independent seeds)",
            f"  seed sd: {where}"]


def _unit(executor: ExecutorSettings, short: bool = False) -> str:
    unit = "GPU" if executor.gpus_per_run or executor.for_kind("teacher").gpus_per_run else "CPU-job"
    return f"{unit}-h" if short else f"{unit}-hours"


def _hours_per_run(executor: ExecutorSettings, kind: str) -> tuple[float, bool]:
    """Device-hours of one ``kind`` run (GPUs x wall hours; a packed student job's are shared by its
    ``runs_per_gpu`` runs, the job taken to last as long as one run alone), and whether that is the time limit's
    upper bound."""
    per_job, bound = _hours_per_job(executor, kind)
    return per_job / (executor.for_kind(kind).runs_per_gpu if kind == "student" else 1), bound


def _hours_per_job(executor: ExecutorSettings, kind: str) -> tuple[float, bool]:
    settings = executor.for_kind(kind)
    per_run = settings.hours_per_run
    bound = per_run is None
    per_run = settings.timeout_min / 60 if per_run is None else per_run
    return max(1, settings.gpus_per_run) * per_run, bound


def _gpu_hours(executor: ExecutorSettings, plan: Plan) -> str:
    """The suite's estimated device-hours: one job per teacher, and per teacher its students in packs of
    ``runs_per_gpu`` (as the SLURM dispatcher groups them), each job counted at one run's hours."""
    (t_per, t_bound), (s_per, s_bound) = _hours_per_job(executor, "teacher"), _hours_per_job(executor, "student")
    size = executor.runs_per_gpu
    by_teacher = Counter(spec.teacher_id for spec in plan.runs.values())
    t_hours, s_hours = len(plan.teachers) * t_per, sum(math.ceil(n / size) for n in by_teacher.values()) * s_per
    how = "upper bound from the time limits (set executor.hours_per_run for an estimate)" if t_bound or s_bound \
        else "from executor.hours_per_run"
    packed = ""
    if size > 1:
        packed = (f"; students packed {size} per job, each job counted as lasting one run's time (a CIFAR-size run "
                  f"leaves most of a modern GPU idle; a packed pilot job's seconds per epoch against an unpacked "
                  f"one's show how true that is on your cards)")
    return (f"estimated {_unit(executor)}: {t_hours + s_hours:,.0f} ({t_hours:,.0f} teachers + {s_hours:,.0f} "
            f"students; {how}{packed})")
