"""The typed suite: :class:`Suite` and its parts (:class:`Entry`, :class:`Pair`, :class:`TeacherSettings`,
:class:`ExecutorSettings`), each field's constraints declared with it (:func:`kdbench.config.setting`).

Pure values: building them checks types and values, never opens a file or builds a network (those checks are the
loader's, :mod:`kdbench.suite.load`, through :mod:`kdbench.teachers` and :mod:`kdbench.pairing`). The run-spec
values a suite is made of (:class:`~kdbench.spec.Recipe`, :class:`~kdbench.spec.TeacherSource`,
:class:`~kdbench.spec.EvalSettings`) live in :mod:`kdbench.spec`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from kdbench.config import (
    ConfigError,
    Settings,
    above,
    at_least,
    build_dataclass,
    coerce,
    jsonable,
    one_of,
    require,
    rule,
    setting,
)
from kdbench.reference.apply import CellRecipe, apply_reference
from kdbench.spec import CHECKPOINT_EVERY_S, EvalSettings, Recipe, TeacherSource, TrackingSettings
from kdbench.suite.tune import TuneSettings

SuiteError = ConfigError
"""A suite that cannot run: ``key`` is the dotted key path, ``source`` the file it came from. The one error class
of :mod:`kdbench.config` (so an error raised while building any typed part of a suite is a ``SuiteError``)."""

TOP_KEYS = ("name", "description", "extends", "dataset", "regimes", "pairs", "methods", "seeds", "train",
            "teacher", "eval", "executor", "tune", "tracking")
"""The keys a suite file may have."""

EXECUTORS = ("debug", "local", "slurm")
SLURM_RESOURCE_KEYS = ("partition", "account", "qos", "constraint", "gpus_per_run", "cpus_per_task", "mem_gb",
                       "timeout_min", "array_parallelism", "max_requeues", "signal_delay_s", "sbatch", "hours_per_run",
                       "processes_per_run", "runs_per_gpu")
"""The executor keys a suite's ``executor.teacher`` may override for teacher jobs."""


_TEACHER_TRAIN = Recipe(epochs=40)


@dataclass(frozen=True)
class TeacherSettings(Settings):
    """How the suite gets its teachers: trained (one shared teacher job per teacher spec, with ``seed`` and
    ``train``), or, for the models named in ``sources``, a verified checkpoint or pretrained weights."""

    seed: int = 0
    train: Recipe = _TEACHER_TRAIN
    sources: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        """Every source is a valid :class:`~kdbench.spec.TeacherSource` (its file is not opened here)."""
        super().check(key)
        for name, value in self.sources.items():
            build_dataclass(TeacherSource, value, f"{key}.sources.{name}")

    def source(self, model: str) -> TeacherSource | None:
        """Where the teacher ``model`` comes from (None: the suite trains it)."""
        value = self.sources.get(model)
        return None if value is None else build_dataclass(TeacherSource, value, f"teacher.sources.{model}")


_SWITCH = rule(lambda v, _: v in ("auto", "on", "off"), "must be auto, on or off, got {value!r}")


@dataclass(frozen=True)
class ExecutorSettings(Settings):
    """Where runs execute: ``local`` (one process per run, ``workers`` at once), ``debug`` (in-process) or
    ``slurm`` (sbatch job arrays through submitit; teachers first, students depend on their teacher's job).

    The SLURM keys (partition ... sbatch) are the per-suite defaults; ``teacher:`` overrides any of them for
    teacher jobs (e.g. more GPUs, a longer time limit). ``sbatch`` passes extra ``#SBATCH`` options verbatim
    (``{exclusive: true, reservation: kd}``). ``max_requeues`` bounds how often a timed-out or preempted run is
    requeued before it is recorded as failed; ``signal_delay_s`` is how long before its time limit a job is told
    to stop (it then resumes from its last checkpoint in the requeued job). With ``wait: false`` a SLURM
    submission returns at once; ``python -m kdbench status DIR`` collects later. ``max_wait_hours`` bounds how
    long a waiting submission watches the queue (jobs keep running after it gives up watching).
    ``runs_per_gpu: N`` packs N runs into one job that trains them side by side, one process each, on the job's
    device(s) (locally and on SLURM; ``workers`` then counts jobs); every packed run is the run it would be alone.
    """

    name: str = setting("local", one_of("executor", *EXECUTORS))
    workers: int = setting(0, at_least(0))
    threads_per_worker: int = setting(1, at_least(1, got=False))
    timeout_min: int = setting(60, at_least(1, got=False))
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_run: int = setting(0, at_least(0, got=False))
    cpus_per_task: int = setting(1, at_least(1, got=False))
    mem_gb: float | None = setting(None, above(0, got=False, optional=True))
    array_parallelism: int = setting(256, at_least(1, got=False))
    max_requeues: int = setting(3, at_least(0, got=False))
    signal_delay_s: int = setting(120, at_least(0, got=False))
    sbatch: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    wait: bool = True
    max_wait_hours: float = setting(72.0, above(0, got=False))
    poll_s: float = setting(5.0, above(0, got=False))
    hours_per_run: float | None = None  # expected wall hours of one run, for --dry-run's GPU-hour estimate
    processes_per_run: int = setting(0, at_least(0, got=False))  # data-parallel processes of one run; 0 = one per
    # GPU (gpus_per_run), at least 1
    amp: str = setting("auto", _SWITCH)  # bf16 autocast: auto (on for GPUs), on, off
    channels_last: str = setting("auto", _SWITCH)  # channels-last memory format: auto (on for GPUs), on, off
    runs_per_gpu: int = setting(1, at_least(1, got=False))  # runs packed into one job, one process each, sharing
    # its device(s) (a CIFAR run uses a fraction of a modern GPU); needs one process per run
    deterministic: bool = False  # torch.use_deterministic_algorithms + cudnn.deterministic (GPU runs repeat
    # bit for bit at some speed cost; CPU runs of one seed and world size are identical already); recorded in env
    checkpoint_every_s: float = setting(CHECKPOINT_EVERY_S, at_least(0))  # least seconds between two epoch
    # checkpoints of a run (a phase's last epoch is always saved); 0: every epoch

    def processes(self) -> int:
        """How many data-parallel processes train one run (SLURM tasks, or local processes over gloo)."""
        return self.processes_per_run or max(1, self.gpus_per_run)

    def check(self, key: str) -> None:
        """The declared constraints, then the teacher overrides: known keys, and valid once applied."""
        super().check(key)
        require(self.runs_per_gpu == 1 or self.processes() == 1, f"{key}.runs_per_gpu",
                f"packs {self.runs_per_gpu} runs into one job, one process each, but each run trains in "
                f"{self.processes()} data-parallel processes (gpus_per_run / processes_per_run): use one or the other")
        for name in self.teacher:
            require(name in SLURM_RESOURCE_KEYS, f"{key}.teacher.{name}",
                    f"unknown key '{name}' (teacher jobs may override: {', '.join(SLURM_RESOURCE_KEYS)})")
        if self.teacher:
            self.for_kind("teacher").check(key)

    def for_kind(self, kind: str) -> ExecutorSettings:
        """The settings a ``teacher`` or ``student`` job is submitted with (teacher overrides applied)."""
        if kind != "teacher" or not self.teacher:
            return self
        overrides = {name: coerce(value, typing.get_type_hints(ExecutorSettings)[name], f"executor.teacher.{name}")
                     for name, value in self.teacher.items()}
        return dataclasses.replace(self, teacher={}, **overrides)


@dataclass(frozen=True)
class Entry:
    """A named component with its resolved parameters (a dataset, a regime or a method)."""

    name: str
    params: dict[str, Any]
    label: str = ""
    train: Recipe | None = None  # a method's own recipe (the suite's train settings, overridden key by key)
    train_overrides: dict[str, Any] = field(default_factory=dict)  # the keys the method's ``train:`` sets
    given: dict[str, Any] = field(default_factory=dict)  # the parameters the suite sets explicitly (coerced)
    reference: str | None = None  # a method's ``recipe:``: the authors' setting its values come from
    deviations: dict[str, str] = field(default_factory=dict)  # reference key -> why the suite runs another value
    compose: tuple[Entry, ...] = ()  # a method's ``with:``: the methods added to it (kdbench.compose)

    @property
    def names(self) -> tuple[str, ...]:
        """The method names the entry trains: its own, then the added ones (``with:``)."""
        return (self.name, *(part.name for part in self.compose))


@dataclass(frozen=True)
class Pair:
    """A teacher -> student pair of model names; ``train`` overrides the suite's student recipe for this pair
    (e.g. lr 0.01 for MobileNetV2/ShuffleNet students in the CIFAR protocol); a method's own ``train`` wins."""

    teacher: str
    student: str
    train: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # method label -> hyper-parameters for this pair

    def explicit_params(self, method: Entry) -> dict[str, Any]:
        """The hyper-parameters the suite sets for a method in this pair's cells (entry and pair overrides)."""
        return {**method.given, **self.overrides(method)}

    def reference(self, method: Entry) -> CellRecipe | None:
        """What the method's reference recipe (``recipe:``) sets in this pair's cells, or None without one.
        Raises :class:`~kdbench.reference.apply.UndeclaredDeviation` (turned into a :class:`SuiteError` by
        :func:`kdbench.suite.validate`)."""
        if method.reference is None:
            return None
        return apply_reference(method.name, method.reference, self.teacher, self.student,
                               self.explicit_params(method), method.train_overrides, method.deviations)

    def overrides(self, method: Entry) -> dict[str, Any]:
        """The pair's values for a method entry (``params.<label>``). A composition (``with:``) first takes those
        the pair gives its primary method by name (``params.ab`` for ``ab+kd``), then its own label's."""
        inherited = (self.params.get(method.name) or {}) if method.compose else {}
        return {**inherited, **(self.params.get(method.label) or {})}

    def method_params(self, method: Entry, cell: CellRecipe | None = None) -> dict[str, Any]:
        """A method's hyper-parameters in this pair's cells: defaults <- reference recipe <- the method's entry
        <- the pair's overrides (e.g. DKD's beta per pair, as mdistiller sets it; :meth:`overrides`)."""
        return {**method.params, **(cell.params if cell else {}), **self.overrides(method)}

    def recipe(self, suite_train: Recipe, method: Entry, cell: CellRecipe | None = None) -> Recipe:
        """The student recipe of a (pair, method) cell: suite train <- pair train <- reference recipe <- method
        train."""
        merged = {**dataclasses.asdict(suite_train), **self.train, **(cell.train if cell else {}),
                  **method.train_overrides}
        return build_dataclass(Recipe, merged, "train")


@dataclass(frozen=True)
class Suite:
    """A validated suite."""

    name: str
    description: str
    dataset: Entry
    regimes: tuple[Entry, ...]
    pairs: tuple[Pair, ...]
    methods: tuple[Entry, ...]
    seeds: tuple[int, ...]
    train: Recipe
    teacher: TeacherSettings
    eval: EvalSettings
    executor: ExecutorSettings
    source: str = ""
    tune: TuneSettings = field(default_factory=TuneSettings)  # equal-budget tuning (kdbench.suite.tune); off by default
    tracking: TrackingSettings = field(default_factory=TrackingSettings)  # live tracking (kdbench.tracking); off

    def to_dict(self) -> dict[str, Any]:
        """The suite as plain JSON values (as a submission's manifest stores it)."""
        return jsonable(dataclasses.asdict(self))
