"""Suites: YAML loading (safe), validation into typed objects with errors that name the key, ``key=value``
overrides, ``extends:``, grid expansion into teacher jobs and run specs, and run ids.

A suite file looks like::

    name: smoke
    dataset: {name: digits}
    regimes: [{name: balanced}, {name: longtail, imbalance: 10}, {name: unlabeled}]
    pairs: [{teacher: kdb_cnn_base, student: kdb_cnn_nano}]
    methods: [{name: vanilla}, {name: kd, T: 4}, {name: mse}]
    seeds: [0, 1, 2]
    train: {epochs: 30, optimizer: sgd, lr: 0.05}
    teacher: {seed: 0, train: {epochs: 40}}
    executor: {name: local, workers: 2}

Every problem is reported as one :class:`SuiteError` whose message starts with the key path
(``methods[2].name: unknown method 'kdd' (known: kd, mse, vanilla)``).
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kdbench.data import dataset_parameters, dataset_registry, regime_parameters, regime_registry
from kdbench.method import discover_methods, hyperparameters
from kdbench.reference.apply import CellRecipe, UndeclaredDeviation, apply_reference
from kdbench.reference.recipes import reference_recipes
from kdbench.registry import UnknownNameError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class SuiteError(ValueError):
    """A suite that cannot run. ``key`` is the dotted key path, ``source`` the file it came from."""

    def __init__(self, key: str, message: str, source: str | None = None) -> None:
        self.key, self.message, self.source = key, message, source
        super().__init__(f"{key}: {message}" if key else message)

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{self.source}: {text}" if self.source else text


# --------------------------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Recipe:
    """How a network is trained: epochs, batch, optimizer, learning-rate schedule, divergence bound."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    lr_decay: float = 0.1
    warmup_epochs: int = 0
    warmup_hold: bool = False  # GenDD's CIFAR script's quirk: after the warm-up the lr stays at (W-1)/W of its
    # value until the first milestone (helper code sets lr*e/W for e < W, then nothing until a decay); off by default
    min_lr: float = 0.0
    grad_clip: float | None = None
    diverge_above: float = 1e4

    def check(self, key: str) -> None:
        _require(self.epochs >= 1, f"{key}.epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 2, f"{key}.batch_size", f"must be >= 2, got {self.batch_size}")
        _require(self.optimizer in ("sgd", "adamw"), f"{key}.optimizer",
                 f"unknown optimizer '{self.optimizer}' (known: adamw, sgd)")
        _require(self.schedule in ("cosine", "multistep", "constant"), f"{key}.schedule",
                 f"unknown schedule '{self.schedule}' (known: constant, cosine, multistep)")
        _require(self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, f"{key}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 <= self.warmup_epochs < self.epochs, f"{key}.warmup_epochs",
                 f"must be in [0, epochs), got {self.warmup_epochs}")
        _require(not self.warmup_hold or (self.schedule == "multistep" and self.warmup_epochs >= 1),
                 f"{key}.warmup_hold", "holds the lr after a warm-up until the first milestone: needs schedule "
                 f"multistep and warmup_epochs >= 1 (got {self.schedule}, {self.warmup_epochs})")
        _require(all(0 < m < self.epochs for m in self.milestones), f"{key}.milestones",
                 f"every milestone must be in (0, {self.epochs}), got {list(self.milestones)}")
        _require(self.diverge_above > 0, f"{key}.diverge_above", "must be > 0")


@dataclass(frozen=True)
class TeacherSource:
    """A teacher the suite does not train: a ``checkpoint`` file (a kdbench-format state dict, e.g. a teacher
    job's ``weights.pt``; ``sha256`` required and checked before anything starts) or timm's ``pretrained``
    weights from the local cache (offline, never downloaded). Its top-1 on the test split is measured by the
    teacher job and must lie within ``tolerance`` points of ``top1`` (required for checkpoints), else the
    teacher job fails and none of its students start."""

    checkpoint: str | None = None
    sha256: str | None = None
    pretrained: bool = False
    top1: float | None = None
    tolerance: float = 0.5

    def check(self, key: str) -> None:
        _require((self.checkpoint is not None) != self.pretrained, key,
                 "give exactly one of checkpoint: <path> or pretrained: true")
        _require(self.tolerance >= 0, f"{key}.tolerance", "must be >= 0")
        if self.checkpoint is None:
            return
        _require(self.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", self.sha256 or "") is not None,
                 f"{key}.sha256", "a checkpoint needs its sha256 (64 hex digits: sha256sum FILE)")
        _require(self.top1 is not None, f"{key}.top1", "a checkpoint needs the top-1 it is expected to reach")
        if not CHECK_FILES.get():
            return
        path = Path(self.checkpoint).expanduser()
        _require(path.is_file(), f"{key}.checkpoint", f"teacher checkpoint '{path}' does not exist")
        from kdbench.store import sha256_file

        actual = sha256_file(path)
        _require(actual == self.sha256, f"{key}.sha256",
                 f"'{path}' has sha256 {actual}, not the {self.sha256} the suite expects")


CHECK_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar("kdbench_check_files", default=True)
"""False while validating for ``--dry-run``: data roots and teacher checkpoints are not opened."""


@dataclass(frozen=True)
class TeacherSettings:
    """How the suite gets its teachers: trained (one shared teacher job per teacher spec, with ``seed`` and
    ``train``), or, for the models named in ``sources``, a verified checkpoint or pretrained weights."""

    seed: int = 0
    train: Recipe = Recipe(epochs=40)
    sources: dict[str, Any] = field(default_factory=dict)

    def check(self, key: str) -> None:
        for name, value in self.sources.items():
            build_dataclass(TeacherSource, value, f"{key}.sources.{name}")

    def source(self, model: str) -> TeacherSource | None:
        """Where the teacher ``model`` comes from (None: the suite trains it)."""
        value = self.sources.get(model)
        if value is None:
            return None
        token = CHECK_FILES.set(False)  # validation checked the file; expanding a plan (or a dry run) opens nothing
        try:
            return build_dataclass(TeacherSource, value, f"teacher.sources.{model}")
        finally:
            CHECK_FILES.reset(token)


@dataclass(frozen=True)
class EvalSettings:
    """Evaluation settings. ``val_fraction`` > 0 holds out that fraction of each class of the training set
    (seeded by ``val_seed``) to select an epoch without looking at the test split (``top1_val``)."""

    batch_size: int = 512
    val_fraction: float = 0.0
    val_seed: int = 0

    def check(self, key: str) -> None:
        _require(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _require(0.0 <= self.val_fraction < 0.5, f"{key}.val_fraction", f"must be in [0, 0.5), got {self.val_fraction}")


EXECUTORS = ("debug", "local", "slurm")
SLURM_RESOURCE_KEYS = ("partition", "account", "qos", "constraint", "gpus_per_run", "cpus_per_task", "mem_gb",
                       "timeout_min", "array_parallelism", "max_requeues", "signal_delay_s", "sbatch", "hours_per_run",
                       "processes_per_run")


@dataclass(frozen=True)
class ExecutorSettings:
    """Where runs execute: ``local`` (one process per run, ``workers`` at once), ``debug`` (in-process) or
    ``slurm`` (sbatch job arrays through submitit; teachers first, students depend on their teacher's job).

    The SLURM keys (partition ... sbatch) are the per-suite defaults; ``teacher:`` overrides any of them for
    teacher jobs (e.g. more GPUs, a longer time limit). ``sbatch`` passes extra ``#SBATCH`` options verbatim
    (``{exclusive: true, reservation: kd}``). ``max_requeues`` bounds how often a timed-out or preempted run is
    requeued before it is recorded as failed; ``signal_delay_s`` is how long before its time limit a job is told
    to stop (it then resumes from its last epoch checkpoint in the requeued job). With ``wait: false`` a SLURM
    submission returns at once; ``python -m kdbench status DIR`` collects later. ``max_wait_hours`` bounds how
    long a waiting submission watches the queue (jobs keep running after it gives up watching).
    """

    name: str = "local"
    workers: int = 0
    threads_per_worker: int = 1
    timeout_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_run: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    array_parallelism: int = 256
    max_requeues: int = 3
    signal_delay_s: int = 120
    sbatch: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    wait: bool = True
    max_wait_hours: float = 72.0
    poll_s: float = 5.0
    hours_per_run: float | None = None  # expected wall hours of one run, for --dry-run's GPU-hour estimate
    processes_per_run: int = 0  # data-parallel processes of one run; 0 = one per GPU (gpus_per_run), at least 1
    amp: str = "auto"  # bf16 autocast: auto (on for GPUs), on, off
    channels_last: str = "auto"  # channels-last memory format: auto (on for GPUs), on, off

    def processes(self) -> int:
        """How many data-parallel processes train one run (SLURM tasks, or local processes over gloo)."""
        return self.processes_per_run or max(1, self.gpus_per_run)

    def check(self, key: str) -> None:
        _require(self.name in EXECUTORS, f"{key}.name",
                 f"unknown executor '{self.name}' (known: {', '.join(EXECUTORS)})")
        _require(self.workers >= 0, f"{key}.workers", f"must be >= 0, got {self.workers}")
        _require(self.threads_per_worker >= 1, f"{key}.threads_per_worker", "must be >= 1")
        _require(self.timeout_min >= 1, f"{key}.timeout_min", "must be >= 1")
        _require(self.gpus_per_run >= 0, f"{key}.gpus_per_run", "must be >= 0")
        _require(self.cpus_per_task >= 1, f"{key}.cpus_per_task", "must be >= 1")
        _require(self.mem_gb is None or self.mem_gb > 0, f"{key}.mem_gb", "must be > 0")
        _require(self.array_parallelism >= 1, f"{key}.array_parallelism", "must be >= 1")
        _require(self.max_requeues >= 0, f"{key}.max_requeues", "must be >= 0")
        _require(self.signal_delay_s >= 0, f"{key}.signal_delay_s", "must be >= 0")
        _require(self.max_wait_hours > 0, f"{key}.max_wait_hours", "must be > 0")
        _require(self.poll_s > 0, f"{key}.poll_s", "must be > 0")
        _require(self.processes_per_run >= 0, f"{key}.processes_per_run", "must be >= 0")
        for name in ("amp", "channels_last"):
            _require(getattr(self, name) in ("auto", "on", "off"), f"{key}.{name}",
                     f"must be auto, on or off, got {getattr(self, name)!r}")
        for name in self.teacher:
            _require(name in SLURM_RESOURCE_KEYS, f"{key}.teacher.{name}",
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
        return {**method.given, **(self.params.get(method.label) or {})}

    def reference(self, method: Entry) -> CellRecipe | None:
        """What the method's reference recipe (``recipe:``) sets in this pair's cells, or None without one.
        Raises :class:`UndeclaredDeviation` (turned into a :class:`SuiteError` by :func:`validate`)."""
        if method.reference is None:
            return None
        return apply_reference(method.name, method.reference, self.teacher, self.student,
                               self.explicit_params(method), method.train_overrides, method.deviations)

    def method_params(self, method: Entry, cell: CellRecipe | None = None) -> dict[str, Any]:
        """A method's hyper-parameters in this pair's cells: defaults <- reference recipe <- the method's entry
        <- the pair's overrides (e.g. DKD's beta per pair, as mdistiller sets it)."""
        return {**method.params, **(cell.params if cell else {}), **(self.params.get(method.label) or {})}

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

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


TOP_KEYS = ("name", "description", "extends", "dataset", "regimes", "pairs", "methods", "seeds", "train",
            "teacher", "eval", "executor")


# --------------------------------------------------------------------------------------------- loading


def suites_dir() -> Path:
    """Where suites are found by name: ``$KDBENCH_SUITES`` or the project's ``suites/`` folder."""
    return Path(os.environ.get("KDBENCH_SUITES", PROJECT_ROOT / "suites"))


def list_suites() -> list[str]:
    """Names of the suites in :func:`suites_dir`."""
    return sorted(p.stem for p in suites_dir().glob("*.yaml"))


def find_suite(name_or_path: str, relative_to: Path | None = None) -> Path:
    """A suite file by path (absolute, relative to cwd or to ``relative_to``) or by name in ``suites/``."""
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.append(relative_to / name_or_path)
    candidates += [suites_dir() / name_or_path, suites_dir() / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SuiteError("", f"no suite '{name_or_path}' (not a file; suites in {suites_dir()}: "
                         f"{', '.join(list_suites()) or 'none'})")


MAX_SUITE_BYTES = 1 << 20
"""A suite file larger than this (1 MiB) is refused: suites are a few kilobytes; anything larger is not one."""

MAX_SUITE_DEPTH = 32
"""Deepest nesting of mappings and lists a suite may have (the deepest real suite has 5)."""


class _DuplicateKeyError(Exception):
    def __init__(self, key: str, first: int, second: int) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping, naming the key and both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in first_line:
                raise _DuplicateKeyError(str(key), first_line[key], line)
            if isinstance(key, str | int | float | bool):
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_yaml(text: str, where: str = "") -> Any:
    """Parse YAML text safely (no Python objects), refusing duplicate keys and nesting deeper than
    :data:`MAX_SUITE_DEPTH`; every problem is one :class:`SuiteError`."""
    try:
        depth = 0
        for event in yaml.parse(text, Loader=_SuiteLoader):  # the event parser keeps its own stack: no recursion
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > MAX_SUITE_DEPTH:
                    line = event.start_mark.line + 1
                    raise SuiteError("", f"nested deeper than {MAX_SUITE_DEPTH} levels (line {line}): not a suite",
                                     where)
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        return yaml.load(text, Loader=_SuiteLoader)  # a SafeLoader subclass: no Python objects
    except yaml.YAMLError as err:
        raise SuiteError("", f"not valid YAML: {' '.join(str(err).split())}", where) from None
    except _DuplicateKeyError as err:
        raise SuiteError(err.key, f"given twice, on lines {err.first} and {err.second} (the last would silently "
                                  "win): keep one", where) from None
    except RecursionError:
        raise SuiteError("", "nested too deeply to read: not a suite", where) from None


def parse_suite_text(path: Path) -> Any:
    """A suite file's parsed YAML: refused with one :class:`SuiteError` if it is too large, binary, not UTF-8
    or not valid YAML."""
    try:
        size = path.stat().st_size
        if size > MAX_SUITE_BYTES:
            raise SuiteError("", f"{size} bytes: larger than a suite can be ({MAX_SUITE_BYTES} bytes)", str(path))
        data = path.read_bytes()
    except OSError as err:
        raise SuiteError("", f"cannot be read: {err.strerror or err}", str(path)) from None
    if b"\0" in data:
        offset = data.index(b"\0")
        raise SuiteError("", f"binary data (a NUL byte at offset {offset}): not a YAML suite", str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError("", f"not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})",
                         str(path)) from None
    return safe_yaml(text, str(path))


def read_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Safe-load a suite file and resolve its ``extends:`` chain into one raw mapping."""
    path = path.resolve()
    if path in _seen:
        raise SuiteError("extends", f"circular extends: {' -> '.join(str(p) for p in (*_seen, path))}")
    raw = parse_suite_text(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SuiteError("", "a suite must be a mapping of keys", str(path))
    raw.setdefault("name", path.stem)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SuiteError("extends", "must be a suite name or path", str(path))
    try:
        base = read_raw(find_suite(parent, relative_to=path.parent), (*_seen, path))
    except SuiteError as err:
        raise SuiteError(err.key or "extends", err.message, err.source or str(path)) from None
    base.pop("name", None)
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (recursively); any other value (lists included) replaces the base's; ``null``
    removes the inherited key (its default applies again)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_KEY_PATH = re.compile(r"[^.\[\]]+(\.[^.\[\]]+|\[\d+\])*")


def parse_key_path(key: str) -> list[str | int]:
    """``methods[1].T`` or ``methods.1.T`` -> ``['methods', 1, 'T']``."""
    if not _KEY_PATH.fullmatch(key):
        raise SuiteError(key, "not a key path (write e.g. train.epochs=5 or methods[1].T=2)")
    return [int(index) if index else int(name) if name.isdigit() else name
            for name, index in _TOKEN.findall(key)]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw suite mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SuiteError(item, "an override must look like key.path=value")
        key, text = item.split("=", 1)
        path = parse_key_path(key.strip())
        value = safe_yaml(text, f"override {item}") if text.strip() else None
        node: Any = raw
        for depth, token in enumerate(path[:-1]):
            where = _path_str(path[: depth + 1])
            if isinstance(token, int):
                if not isinstance(node, list) or token >= len(node):
                    raise SuiteError(where, f"no list item {token} to override")
                node = node[token]
            else:
                if not isinstance(node, dict):
                    raise SuiteError(where, "is not a mapping")
                node = node.setdefault(token, {})
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise SuiteError(_path_str(path), f"no list item {last} to override")
        elif not isinstance(node, dict):
            raise SuiteError(_path_str(path[:-1]), "is not a mapping")
        node[last] = value
    return raw


def _path_str(path: list[str | int]) -> str:
    out = ""
    for token in path:
        out += f"[{token}]" if isinstance(token, int) else (f".{token}" if out else token)
    return out


def load_suite(name_or_path: str, overrides: list[str] = (), check_files: bool = True) -> Suite:
    """Find, read, merge, override and validate a suite. Raises :class:`SuiteError` on any problem.

    ``check_files=False`` (``--dry-run``) validates everything but does not open the data root or teacher
    checkpoints."""
    path = find_suite(name_or_path)
    raw = read_raw(path)
    token = CHECK_FILES.set(check_files)
    try:
        return validate(apply_overrides(raw, list(overrides)), source=str(path))
    except SuiteError as err:
        err.source = err.source or str(path)
        raise
    finally:
        CHECK_FILES.reset(token)


# --------------------------------------------------------------------------------------------- validation


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise SuiteError(key, message)


def _refuse_non_finite(node: Any, path: list[str | int]) -> None:
    """No value anywhere in a suite may be .inf or .nan (a job would divide by it, JSON would store null)."""
    if isinstance(node, float) and not math.isfinite(node):
        raise SuiteError(_path_str(path), f"expected a finite number, got {node!r}")
    if isinstance(node, dict):
        for key, value in node.items():
            _refuse_non_finite(value, [*path, str(key)])
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _refuse_non_finite(value, [*path, i])


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the type annotation ``tp`` (ints pass as floats); return it converted."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except SuiteError as err:
                errors.append(err.message)
        raise SuiteError(key, errors[0] if len(errors) == 1 else f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SuiteError(key, f"expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise SuiteError(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SuiteError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # PyYAML (YAML 1.1) reads 5e-4 as a string: accept what is plainly a number
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SuiteError(key, f"expected a number, got {value!r}")
        if not math.isfinite(value):  # .inf and .nan would reach the jobs and be written as null
            raise SuiteError(key, f"expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SuiteError(key, f"expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SuiteError(key, f"expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SuiteError(key, f"expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SuiteError(key, f"expected {_type_name(tp)}, got {value!r}")
    return value


def build_dataclass(cls: type, value: Any, key: str) -> Any:
    """Build a frozen settings dataclass from a mapping; unknown keys name themselves and the known ones."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SuiteError(key, f"expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, item in value.items():
        sub = f"{key}.{name}" if key else str(name)
        if name not in names:
            raise SuiteError(sub, f"unknown key '{name}' (known: {', '.join(sorted(names))})")
        kwargs[name] = coerce(item, hints[name], sub)
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(key)
    return obj


def resolve_params(signature: dict[str, inspect.Parameter], hints: dict[str, Any], given: dict[str, Any],
                   key: str, what: str) -> dict[str, Any]:
    """Check ``given`` keyword parameters against a signature; return all of them with defaults filled in."""
    resolved = {}
    for name, value in given.items():
        if name not in signature:
            known = ", ".join(sorted(signature)) or "none"
            raise SuiteError(f"{key}.{name}", f"unknown parameter '{name}' of {what} (known: {known})")
        resolved[name] = coerce(value, hints.get(name, Any), f"{key}.{name}")
    for name, param in signature.items():
        if name not in resolved:
            if param.default is inspect.Parameter.empty:
                raise SuiteError(f"{key}.{name}", f"required parameter of {what} is missing")
            resolved[name] = param.default
    return _jsonable(resolved)


def _entry(raw: Any, key: str, registry: Any, params_of: Any, reserved: tuple[str, ...] = ("name",)) -> Entry:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise SuiteError(key, "expected a mapping with a 'name'")
    name = raw["name"]
    if not isinstance(name, str):
        raise SuiteError(f"{key}.name", f"expected a string, got {name!r}")
    try:
        cls = registry.get(name)
    except UnknownNameError as err:
        raise SuiteError(f"{key}.name", str(err)) from None
    given = {k: v for k, v in raw.items() if k not in reserved}
    init = cls.__init__
    hints = typing.get_type_hints(init) if init is not object.__init__ else {}
    params = resolve_params(params_of(cls), hints, given, key, f"{registry.kind} '{name}'")
    label = raw.get("label", name)
    if not isinstance(label, str) or not label:
        raise SuiteError(f"{key}.label", f"expected a non-empty string, got {label!r}")
    return Entry(name=name, params=params, label=label, given={k: params[k] for k in given})


def _method_entry(raw: Any, key: str, registry: Any, suite_train: dict[str, Any]) -> Entry:
    """A method entry: its hyper-parameters, an optional ``label``, an optional ``train`` recipe override, an
    optional reference ``recipe`` (a setting of ``kdbench/reference/recipes.csv``) and its ``deviations``."""
    entry = _entry(raw, key, registry, hyperparameters, ("name", "label", "train", "recipe", "deviations"))
    raw = raw if isinstance(raw, dict) else {}
    entry = dataclasses.replace(entry, **_reference_of(raw, key, entry.name))
    own = raw.get("train")
    if own is None:
        return entry
    if not isinstance(own, dict):
        raise SuiteError(f"{key}.train", f"expected a mapping, got {own!r}")
    return dataclasses.replace(entry, train=build_dataclass(Recipe, {**suite_train, **own}, f"{key}.train"),
                               train_overrides=dict(own))


def _reference_of(raw: dict[str, Any], key: str, method: str) -> dict[str, Any]:
    """A method entry's ``recipe`` (checked against the reference table) and ``deviations`` (key -> reason)."""
    setting, deviations = raw.get("recipe"), raw.get("deviations")
    if setting is None:
        _require(deviations is None, f"{key}.deviations", "deviations need a reference recipe (recipe: <setting>)")
        return {}
    known = reference_recipes().settings(method)
    _require(isinstance(setting, str) and setting in known, f"{key}.recipe",
             f"no reference recipe '{setting}' for method '{method}' (known: {', '.join(known) or 'none'})")
    deviations = {} if deviations is None else deviations
    _require(isinstance(deviations, dict), f"{key}.deviations",
             f"expected a mapping of <params.name | train.name>: <reason>, got {deviations!r}")
    for name, reason in deviations.items():
        _require(isinstance(name, str) and name.split(".", 1)[0] in ("params", "train") and "." in name,
                 f"{key}.deviations.{name}", "a deviation key is params.<name> or train.<name>")
        _require(isinstance(reason, str) and reason.strip() != "", f"{key}.deviations.{name}",
                 "give the reason for running another value than the authors' (a non-empty string)")
    return {"reference": setting, "deviations": dict(deviations)}


def _check_references(pairs: list[Pair], methods: tuple[Entry, ...], train: Recipe, registry: Any) -> None:
    """Every cell of a method with a reference recipe follows it, or deviates where the suite declares it;
    every declared deviation applies to some cell; the values the recipe fills in are valid."""
    for i, method in enumerate(methods):
        if method.reference is None:
            continue
        cls = registry.get(method.name)
        used: set[str] = set()
        for j, pair in enumerate(pairs):
            try:
                cell = pair.reference(method)
            except UndeclaredDeviation as err:
                by_pair = err.ref.name in (pair.params.get(method.label) or {})
                key = (f"pairs[{j}].params.{method.label}.{err.ref.name}" if err.ref.kind == "params" and by_pair
                       else f"methods[{i}].{err.ref.name}" if err.ref.kind == "params"
                       else f"methods[{i}].train.{err.ref.name}")
                raise SuiteError(key, f"{pair.teacher} -> {pair.student}: {err}") from None
            used.update(d.key for d in cell.deviations)
            where = f"methods[{i}] (recipe {cell.setting}, {pair.teacher} -> {pair.student})"
            resolve_params(hyperparameters(cls), typing.get_type_hints(cls.__init__),
                           pair.method_params(method, cell), where, f"method '{method.name}'")
            pair.recipe(train, method, cell).check(where + ".train")
        for name in method.deviations:
            _require(name in used, f"methods[{i}].deviations.{name}",
                     f"no cell deviates from the reference value of {name} (recipe {method.name}/{method.reference}):"
                     " remove the declaration")


def _check_instantiable(entry: Entry, registry: Any, key: str) -> None:
    try:
        registry.get(entry.name)(**entry.params)
    except (ValueError, TypeError) as err:
        raise SuiteError(key, str(err)) from None


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise SuiteError(key, "must be a non-empty list" + ("" if key in raw else " (missing)"))
    return value


def validate(raw: dict[str, Any], source: str = "") -> Suite:
    """Turn a raw (merged, overridden) mapping into a :class:`Suite`, or raise one :class:`SuiteError`."""
    from kdbench.models import is_model

    _refuse_non_finite(raw, [])
    for name in raw:
        if name not in TOP_KEYS:
            raise SuiteError(str(name), f"unknown key '{name}' (known: {', '.join(sorted(TOP_KEYS))})")
    suite_name = raw.get("name")
    _require(isinstance(suite_name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", suite_name or "") is not None,
             "name", f"must be a plain name (letters, digits, _ . -), got {suite_name!r}")

    dataset = _entry(raw.get("dataset"), "dataset", dataset_registry, dataset_parameters)
    source_cls = dataset_registry.get(dataset.name)
    _check_instantiable(dataset, dataset_registry, "dataset")
    try:
        if CHECK_FILES.get():
            source_cls(**dataset.params).check()
    except FileNotFoundError as err:
        raise SuiteError("dataset.root" if "root" in dataset.params else "dataset", str(err)) from None

    regimes = tuple(_entry(r, f"regimes[{i}]", regime_registry, regime_parameters, ("name", "label"))
                    for i, r in enumerate(_list(raw, "regimes")))
    for i, regime in enumerate(regimes):
        _check_instantiable(regime, regime_registry, f"regimes[{i}]")
        _require([r.label for r in regimes].index(regime.label) == i, f"regimes[{i}].label",
                 f"'{regime.label}' is used twice; give each {regime.name} regime its own label "
                 f"(e.g. label: {regime.name}_{i})")

    pairs = []
    for i, item in enumerate(_list(raw, "pairs")):
        pair = build_dataclass(Pair, item, f"pairs[{i}]")
        for role in ("teacher", "student"):
            model = getattr(pair, role)
            _require(is_model(model), f"pairs[{i}].{role}", f"unknown model '{model}' (see: kdbench list models)")
        pairs.append(pair)

    methods_registry = discover_methods()
    train = build_dataclass(Recipe, raw.get("train"), "train")
    for i, pair in enumerate(pairs):
        build_dataclass(Recipe, {**dataclasses.asdict(train), **pair.train}, f"pairs[{i}].train")
    methods = tuple(_method_entry(m, f"methods[{i}]", methods_registry, raw.get("train") or {})
                    for i, m in enumerate(_list(raw, "methods")))
    _check_references(pairs, methods, train, methods_registry)
    labels = [m.label for m in methods]
    for i, label in enumerate(labels):
        _require(labels.index(label) == i, f"methods[{i}].label",
                 f"'{label}' is used twice; give each variant its own label")
    for i, pair in enumerate(pairs):
        for label, overrides in pair.params.items():
            key = f"pairs[{i}].params.{label}"
            # a method the suite does not run (e.g. after `extends:` replaced the methods) keeps inert settings
            known = label in labels or label in methods_registry.names()
            _require(known, key, f"no method labelled '{label}' in this suite (labels: {', '.join(labels)})")
            _require(isinstance(overrides, dict), key, f"expected a mapping of hyper-parameters, got {overrides!r}")
            name = methods[labels.index(label)].name if label in labels else label
            given = methods[labels.index(label)].params if label in labels else {}
            cls = methods_registry.get(name)
            resolve_params(hyperparameters(cls), typing.get_type_hints(cls.__init__), {**given, **overrides},
                           key, f"method '{name}'")

    seeds = coerce(_list(raw, "seeds"), list[int], "seeds")
    _require(len(set(seeds)) == len(seeds), "seeds", f"repeated seed in {seeds}")

    suite = Suite(
        name=suite_name,
        description=coerce(raw.get("description", ""), str, "description"),
        dataset=dataset,
        regimes=regimes,
        pairs=tuple(pairs),
        methods=methods,
        seeds=tuple(seeds),
        train=train,
        teacher=build_dataclass(TeacherSettings, raw.get("teacher"), "teacher"),
        eval=build_dataclass(EvalSettings, raw.get("eval"), "eval"),
        executor=build_dataclass(ExecutorSettings, raw.get("executor"), "executor"),
        source=source,
    )
    if not getattr(source_cls, "has_train_labels", True):  # a transfer set: nothing to train a teacher on
        for i, regime in enumerate(regimes):
            _require(not regime_registry.get(regime.name).labeled, f"regimes[{i}].name",
                     f"dataset '{dataset.name}' has no training labels: only the unlabeled regime applies")
        _require(suite.eval.val_fraction == 0, "eval.val_fraction",
                 f"dataset '{dataset.name}' has no training labels to hold a validation split out of")
        for i, pair in enumerate(suite.pairs):
            _require(pair.teacher in suite.teacher.sources, f"pairs[{i}].teacher",
                     f"dataset '{dataset.name}' has no labels to train teacher '{pair.teacher}' on: give it a "
                     f"checkpoint or pretrained weights under teacher.sources")
    teachers = {pair.teacher for pair in suite.pairs}
    for name in suite.teacher.sources:
        _require(name in teachers, f"teacher.sources.{name}",
                 f"'{name}' is not the teacher of any pair (teachers: {', '.join(sorted(teachers))})")
    if CHECK_FILES.get():
        _check_teacher_files(suite, source_cls(**dataset.params).known_shape())
    plan = expand(suite)
    for i, method in enumerate(methods):
        _require(any(spec["label"] == method.label for spec in plan.runs.values()), f"methods[{i}].name",
                 f"method '{method.name}' is refused for every regime: {'; '.join(plan.refused)}")
    _check_method_values(plan, {m.label: i for i, m in enumerate(methods)})
    return suite


def _check_method_values(plan: Plan, index: dict[str, int]) -> None:
    """Build every distinct (method, values, pair) of the plan on the pair's networks, so that any value a job
    would refuse (``T: 0``, an impossible width) is refused now, naming its method entry, before any job starts.
    Built once per distinct combination and process, with no data."""
    for spec in plan.runs.values():
        problem = _method_refusal(spec["method"], json.dumps(spec["method_params"], sort_keys=True),
                                  spec["teacher"], spec["student"])
        if problem:
            raise SuiteError(f"methods[{index[spec['label']]}]",
                             f"method '{spec['method']}' refuses its values on {spec['teacher']} -> "
                             f"{spec['student']}: {problem}")


@functools.lru_cache(maxsize=1024)
def _method_refusal(method: str, params_json: str, teacher: str, student: str) -> str | None:
    """Why ``method`` with these values cannot be built on the pair (its own ``__init__`` checks), or None."""
    cls = discover_methods().get(method)
    student_net, teacher_net = _pair_networks(teacher, student)
    try:
        with torch.random.fork_rng():  # building draws initial weights: leave the caller's RNG as it was
            cls(student_net, teacher_net if cls.needs.teacher else None, num_classes=10, **json.loads(params_json))
    except (ValueError, TypeError, AssertionError) as err:
        return str(err)
    return None


def _check_teacher_files(suite: Suite, shape: tuple[int, int] | None) -> None:
    """Every teacher checkpoint must be a file that fits its architecture (names and shapes, any layout
    :mod:`kdbench.teachers` reads) for this dataset's classes and channels: refused here, before any job."""
    from kdbench.teachers import TeacherFileError

    for name in sorted(suite.teacher.sources):
        source = suite.teacher.source(name)
        if source is None or source.checkpoint is None:
            continue
        try:
            _checked_teacher_file(str(Path(source.checkpoint).expanduser()), source.sha256, name, shape)
        except TeacherFileError as err:
            raise SuiteError(f"teacher.sources.{name}.checkpoint", str(err)) from None


@functools.lru_cache(maxsize=32)
def _checked_teacher_file(path: str, sha256: str | None, arch: str, shape: tuple[int, int] | None) -> str:
    """:func:`kdbench.teachers.check_teacher_file` once per file content, architecture and data shape."""
    from kdbench.teachers import check_teacher_file

    classes, chans = shape if shape is not None else (None, None)
    return check_teacher_file(Path(path), arch, classes, chans).layout


# --------------------------------------------------------------------------------------------- expansion


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple | set) else str(o)))


def spec_id(spec: dict[str, Any]) -> str:
    """Run id: the first 12 hex digits of the SHA-256 of the canonical JSON of the resolved spec."""
    hashed = _jsonable(spec)
    hashed.get("dataset", {}).get("params", {}).pop("root", None)  # where the data sits is not what it is
    hashed.pop("runtime", None)  # how it is computed (bf16, memory format) is recorded, not part of what it is
    hashed.pop("provenance", None)  # where its values come from (reference recipe, deviations): not what it is
    if isinstance(hashed.get("source"), dict):
        hashed["source"].pop("checkpoint", None)  # nor where a checkpoint sits: its sha256 says what it is
    canonical = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass
class Plan:
    """A suite expanded: teacher jobs and student runs by id, and the (method, regime) cells refused."""

    suite: Suite
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def _runtime(suite: Suite) -> dict[str, str]:
    """How a run's tensors are computed (kept in its spec, left out of its id)."""
    return {"amp": suite.executor.amp, "channels_last": suite.executor.channels_last}


def _regime_spec(regime: Entry) -> dict[str, Any]:
    """A regime in a spec: name and parameters, plus its label when the suite gave it one of its own."""
    spec = {"name": regime.name, "params": regime.params}
    if regime.label and regime.label != regime.name:
        spec["label"] = regime.label
    return spec


def teacher_spec(suite: Suite, pair: Pair, regime: Entry) -> dict[str, Any]:
    """The resolved spec of the teacher job a (pair, regime) cell distils from."""
    other = regime_registry.get(regime.name).teacher_regime
    trained_on = regime if other is None else Entry(
        other, resolve_params(regime_parameters(regime_registry.get(other)), {}, {}, "regime", other))
    source = suite.teacher.source(pair.teacher)
    if source is not None:  # verified, not trained: the same teacher for every regime
        return _jsonable({
            "role": "teacher", "model": pair.teacher, "student": None, "teacher": pair.teacher,
            "method": "verify", "label": "checkpoint" if source.checkpoint else "pretrained", "method_params": {},
            "source": dataclasses.asdict(source),
            "dataset": {"name": suite.dataset.name, "params": suite.dataset.params},
            "regime": {"name": "balanced", "params": {}}, "seed": suite.teacher.seed, "epochs": 0,
            "recipe": None, "eval": dataclasses.asdict(suite.eval), "runtime": _runtime(suite)})
    return _jsonable({
        "role": "teacher",
        "model": pair.teacher,
        "student": None,
        "teacher": pair.teacher,
        "method": "vanilla",
        "label": "vanilla",
        "method_params": {},
        "dataset": {"name": suite.dataset.name, "params": suite.dataset.params},
        "regime": _regime_spec(trained_on),
        "seed": suite.teacher.seed,
        "epochs": suite.teacher.train.epochs,
        "recipe": dataclasses.asdict(suite.teacher.train),
        "eval": dataclasses.asdict(suite.eval),
        "runtime": _runtime(suite),
    })


@functools.lru_cache(maxsize=64)
def _pair_networks(teacher: str, student: str) -> tuple[Any, Any]:
    from kdbench.models import create_network

    return (create_network(student, num_classes=10, in_chans=3, img_size=32),
            create_network(teacher, num_classes=10, in_chans=3, img_size=32))


def _pair_problem(cls: type, pair: Pair) -> str | None:
    """Why a method cannot run on a pair (its ``incompatibility`` check on the two architectures), or None.
    Networks are built only for methods that define such a check."""
    from kdbench.method import Method

    if cls.incompatibility.__func__ is Method.incompatibility.__func__:
        return None
    student, teacher = _pair_networks(pair.teacher, pair.student)
    return cls.incompatibility(student, teacher)


def expand(suite: Suite) -> Plan:
    """pairs x regimes x methods x seeds -> run specs; one teacher job per distinct teacher spec."""
    plan = Plan(suite)
    methods_registry = discover_methods()
    for pair in suite.pairs:
        for regime in suite.regimes:
            labeled = regime_registry.get(regime.name).labeled
            t_spec = teacher_spec(suite, pair, regime)
            t_id = spec_id(t_spec)
            for method in suite.methods:
                cls = methods_registry.get(method.name)
                needs = cls.needs
                problem = _pair_problem(cls, pair)
                if problem or (needs.labels and not labeled):
                    where = f"{pair.teacher} -> {pair.student}" if problem else regime.name
                    why = problem or f"method '{method.name}' needs labels"
                    note = f"{method.label} x {where}: refused, {why}"
                    if note not in plan.refused:
                        plan.refused.append(note)
                    continue
                if needs.teacher:
                    plan.teachers[t_id] = t_spec
                cell = pair.reference(method)
                recipe = pair.recipe(suite.train, method, cell)
                for seed in suite.seeds:
                    spec = _jsonable({
                        "role": "student",
                        "model": pair.student,
                        "student": pair.student,
                        "teacher": pair.teacher,
                        "teacher_id": t_id if needs.teacher else None,
                        "method": method.name,
                        "label": method.label,
                        "method_params": pair.method_params(method, cell),
                        "dataset": {"name": suite.dataset.name, "params": suite.dataset.params},
                        "regime": _regime_spec(regime),
                        "seed": seed,
                        "epochs": recipe.epochs,
                        "recipe": dataclasses.asdict(recipe),
                        "eval": dataclasses.asdict(suite.eval),
                        "runtime": _runtime(suite),
                        **({"provenance": cell.provenance()} if cell else {}),
                    })
                    plan.runs[spec_id(spec)] = spec
    return plan
