"""The result record (``result.json``) as a typed object: defined here, serialised by :meth:`Record.to_dict` and
read by :meth:`Record.from_dict`, nowhere else.

A record's fixed sections are dataclasses (:class:`Stability`, :class:`Predictors`, :class:`DataFacts`,
:class:`PrecisionFacts`, :class:`Artifacts`); its open-ended ones (metrics, cost, diagnostics, environment, extra
evaluations) are :class:`Values`: a read-only mapping whose well-known entries are attributes
(``record.metrics.top1_last``) and whose method- or split-specific ones are read with :meth:`Values.get`
(``record.metrics.get("top1_many")``). A section a record does not have is ``None`` and is left out when
written, so reading and writing a record gives back the very same JSON object.

``SCHEMA`` is the version written. Reading an older record applies :data:`MIGRATIONS` in order (version ``n`` ->
``n + 1``); a newer one is refused, naming both versions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

SCHEMA = 1
"""Version of ``result.json``. Bump it when a field changes meaning, and add the migration from the old one."""

RunState = Literal["done", "diverged", "failed"]
RUN_STATES: tuple[str, ...] = ("done", "diverged", "failed")
FINISHED_STATES: tuple[str, ...] = ("done", "diverged")  # a failed run is retried when its suite is run again

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""``MIGRATIONS[n]`` turns a schema-``n`` record (a JSON object) into a schema-``n + 1`` one."""


class RecordError(ValueError):
    """A JSON object that is not a record of a schema this kdbench reads."""


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` brought to :data:`SCHEMA` by the registered migrations (unchanged when it already is)."""
    version = raw.get("schema")
    if not isinstance(version, int) or isinstance(version, bool):
        raise RecordError(f"schema {version!r}, expected {SCHEMA}")
    if version > SCHEMA:
        raise RecordError(f"schema {version} is newer than this kdbench reads ({SCHEMA}): upgrade kdbench")
    while version < SCHEMA:
        step = MIGRATIONS.get(version)
        if step is None:
            raise RecordError(f"schema {version}, expected {SCHEMA} (no migration from {version})")
        raw = {**step(dict(raw)), "schema": version + 1}
        version += 1
    return raw


class Values(Mapping[str, Any]):
    """A read-only section of open-ended named values; the names in ``KNOWN`` read as attributes (None when
    absent), any other name through :meth:`get` or ``in``."""

    KNOWN: ClassVar[tuple[str, ...]] = ()

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", dict(values or {}))

    def __getattr__(self, name: str) -> Any:
        if name in type(self).KNOWN:
            return self._values.get(name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (read it with .get({name!r}))")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``result.json``."""
        return dict(self._values)


class Metrics(Values):
    """Accuracies (percent) and epochs: ``top1_last`` / ``top1_best`` (test split at the last / best epoch),
    ``top1_val`` (the epoch chosen on the held-out split), ``top5_*``, per-group ``top1_<group>`` (long-tailed:
    many/medium/few), ``top1_probe_*`` (a method's student-logit probe) and ``*_per_epoch`` (per-epoch values an
    end-of-run evaluation replaced)."""

    KNOWN = ("top1_last", "top1_best", "top5_last", "top5_best", "top1_val", "top5_val", "best_epoch",
             "epochs_completed", "val_selected_epoch", "val_top1_last", "val_top1_best", "top1_many",
             "top1_medium", "top1_few", "top1_probe_last", "top1_probe_best")


class Cost(Values):
    """Parameters, epochs and times: train seconds, seconds per epoch, step ms, inference ms/img at batch 1
    and B (``predict_ms_per_img_b<B>``), FLOPs, peak memory, plus a method's own cost entries."""

    KNOWN = ("params", "extra_params", "teacher_params", "epochs", "extra_epochs", "total_epochs", "train_seconds",
             "seconds_per_epoch", "train_step_ms", "peak_memory_mb", "predict_ms_per_img_b1",
             "student_ms_per_img_b1", "predict_vs_student_b1", "predict_flops_per_img", "student_flops_per_img")


class Environment(Values):
    """Where the run ran: torch, CUDA, device name, CPU model and instruction sets, the math libraries (kernel
    dispatch level, BLAS, oneDNN, cuDNN), GPU model, deterministic algorithms, git commit, host, SLURM job,
    threads, world size."""

    KNOWN = ("torch", "cuda", "device", "device_name", "git_commit", "git_dirty", "hostname", "platform", "python",
             "slurm_job_id", "threads", "world_size", "cpu", "cpu_flags", "cpu_capability", "blas", "onednn",
             "cudnn", "gpu", "deterministic")


class Diagnostics(Values):
    """A method's own diagnostics (free-form, named by the method) and a verified teacher's checks."""

    KNOWN = ("expected_top1", "file_layout", "skipped_entries", "stated_top1")


def _section(cls: type, raw: Any) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise RecordError(f"'{cls.__name__.lower()}' is not a mapping")
    if issubclass(cls, Values):
        return cls(raw)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise RecordError(f"unknown key(s) {', '.join(unknown)} in {cls.__name__}")
    return cls(**raw)


def _plain(section: Any) -> Any:
    if section is None:
        return None
    if isinstance(section, Values):
        return section.to_dict()
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section


@dataclass(frozen=True)
class Stability:
    """How training behaved: the 1-based epoch and phase it diverged at and why, the largest gradient norm,
    the number of loss spikes and of non-finite events (gradients, loss)."""

    diverged_epoch: int | None = None
    diverged_phase: str | None = None
    reason: str | None = None
    grad_norm_max: float | None = None
    loss_spikes: int = 0
    nonfinite_events: int = 0


@dataclass(frozen=True)
class Predictors:
    """What the method's prediction computes at the end of the run and per epoch, and whether they differ."""

    final: str
    per_epoch: str
    final_differs: bool = False


@dataclass(frozen=True)
class DataFacts:
    """What the run trained and was tested on: sizes, whether labels were used, per-class counts, class
    groups (long-tailed regimes), whether the data was synthetic."""

    test_size: int
    labeled: bool = True
    train_size: int | None = None
    val_size: int | None = None
    class_counts: list[int] | None = None
    groups: dict[str, list[int]] | None = None
    synthetic: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """Only the facts the run stated (a verified teacher states test size and labels)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class PrecisionFacts:
    """How tensors were computed: bf16 autocast and the channels-last memory format."""

    amp_bf16: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class Artifacts:
    """Files a run leaves for others: a teacher's weights and their sha256."""

    weights: str | None = None
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The files the run wrote (``{}`` for a student)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


_ORDER = ("schema", "run_id", "spec", "finished_at", "wall_seconds", "state", "error", "traceback", "log_tail", "job",
          "metrics",
          "stability", "diagnostics", "resumes", "extra_evaluations", "predictors", "data", "precision", "cost",
          "artifacts", "env")


@dataclass(frozen=True)
class Record:
    """One run's ``result.json``. ``spec`` is the resolved spec as saved with the run (its JSON object; read it
    typed with :meth:`run_spec`). Sections a record lacks (a failed run has no stability) are None."""

    run_id: str
    spec: dict[str, Any]
    state: str
    schema: int = SCHEMA
    finished_at: str | None = None
    wall_seconds: float | None = None
    error: str | None = None
    traceback: str | None = None
    log_tail: str | None = None  # a job that ended without a record: the end of its log
    job: dict[str, Any] | None = None  # and what the scheduler said about it (id, state, how it ended)
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    stability: Stability | None = None
    diagnostics: Diagnostics | None = None
    resumes: list[dict[str, Any]] | None = None
    extra_evaluations: dict[str, dict[str, Any]] | None = None
    predictors: Predictors | None = None
    data: DataFacts | None = None
    precision: PrecisionFacts | None = None
    cost: Cost = dataclasses.field(default_factory=Cost)
    artifacts: Artifacts | None = None
    env: Environment | None = None
    empty: tuple[str, ...] = dataclasses.field(default=(), repr=False, compare=False)
    # fixed sections the record states as ``{}`` (a verified teacher's stability): None here, ``{}`` when written

    SECTIONS: ClassVar[dict[str, type]] = {
        "metrics": Metrics, "stability": Stability, "diagnostics": Diagnostics, "predictors": Predictors,
        "data": DataFacts, "precision": PrecisionFacts, "cost": Cost, "artifacts": Artifacts, "env": Environment}

    @property
    def finished(self) -> bool:
        """Done or diverged: a final state that is not retried."""
        return self.state in FINISHED_STATES

    @property
    def role(self) -> str | None:
        """``student`` or ``teacher`` (from the spec)."""
        return self.spec.get("role")

    def run_spec(self) -> Any:
        """The spec as a typed :class:`kdbench.store.runspec.RunSpec`."""
        from kdbench.store.runspec import RunSpec

        return RunSpec.from_dict(self.spec)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Record:
        """A record from its JSON object (migrated to :data:`SCHEMA` first). Raises :class:`RecordError`."""
        raw = migrate(dict(raw))
        unknown = sorted(set(raw) - set(_ORDER))
        if unknown:
            raise RecordError(f"unknown key(s) {', '.join(unknown)}")
        if not isinstance(raw.get("run_id"), str):
            raise RecordError("no run_id")
        if not isinstance(raw.get("spec"), Mapping):
            raise RecordError("no spec mapping")
        if raw.get("state") not in RUN_STATES:
            raise RecordError(f"state {raw.get('state')!r} is none of {', '.join(RUN_STATES)}")
        values = {name: raw.get(name) for name in _ORDER if name in raw}
        empty = tuple(name for name, kind in cls.SECTIONS.items()
                      if values.get(name) == {} and not issubclass(kind, Values))
        for name in empty:
            values[name] = None
        for name, kind in cls.SECTIONS.items():
            if values.get(name) is not None:
                try:
                    values[name] = _section(kind, values[name])
                except TypeError as err:
                    raise RecordError(f"'{name}': {err}") from None
        for name in ("metrics", "cost"):
            if values.get(name) is None:
                values.pop(name, None)
        return cls(**values, empty=empty)

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON object, as :func:`kdbench.store.write_record` writes it."""
        out: dict[str, Any] = {}
        for name in _ORDER:
            value = getattr(self, name)
            if value is None:
                if name in self.empty:
                    out[name] = {}
                continue
            out[name] = value.to_dict() if hasattr(value, "to_dict") else _plain(value)
        return out
