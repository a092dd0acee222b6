"""Live tracking: a run's per-epoch metrics sent to TensorBoard, Weights & Biases or MLflow as it trains.

Off by default (``backend: none``). A suite turns it on with a ``tracking:`` section::

    tracking: {backend: tensorboard}                      # event files in each run folder (tensorboard/)
    tracking: {backend: wandb, project: kd-cifar}         # offline W&B runs in each run folder; `wandb sync` later
    tracking: {backend: mlflow, tracking_uri: http://mlflow:5000}   # default: a file store in each run folder

The settings (:class:`~kdbench.spec.TrackingSettings`, in the low typed layer beside the other run-spec values)
are part of the run spec but not of the run id (``kdbench.suite.plan.spec_id`` leaves them out) and
are absent from ``spec.json`` while off, so turning tracking on or off never changes which runs a suite has.

A backend is a :class:`Tracker` registered in :data:`tracker_registry`: ``start(info)``, ``log_epoch(metrics,
step)`` once per epoch (the epoch's ``metrics.jsonl`` line, numbers only), ``finish(summary)`` with the record's
final metrics and state. The runner opens one for rank 0 (:func:`open_tracker`) and wraps it in a
:class:`GuardedTracker`: a tracker that fails (a full disk, a server that went away, a missing package on a node)
logs one warning line and is switched off; the run goes on. The packages are optional extras
(``pip install 'kdbench[track]'``); a suite that names a backend whose package is missing is refused when it is
loaded (:func:`missing_package`), before anything runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from kdbench.config import jsonable
from kdbench.registry import Registry
from kdbench.spec import TRACKING_BACKENDS, TrackingSettings  # noqa: F401 (the tracking API)

EXTRA = "track"
"""The pip extra that installs every backend's package: ``pip install 'kdbench[track]'``."""


class Tracker(Protocol):
    """What a tracking backend does for one run (rank 0 only)."""

    def start(self, info: RunInfo) -> None:
        """Open the run (a writer, a W&B run, an MLflow run) and record its spec."""

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """One epoch's metrics; ``step`` counts the run's epochs over all its phases (1, 2, ...)."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The run ended: its final metrics (numbers) and ``state`` (done, diverged, failed, interrupted)."""


tracker_registry: Registry[type] = Registry("tracking backend")
"""Backend name -> a class built from :class:`TrackingSettings` that implements :class:`Tracker`."""


@dataclass(frozen=True)
class RunInfo:
    """The run a tracker follows: its id and folder, the suite (its results folder's name), a readable name,
    its role and the resolved spec (as ``spec.json`` holds it)."""

    run_id: str
    run_dir: Path
    suite: str
    name: str
    role: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def tags(self) -> dict[str, str]:
        """Short facts to filter runs by in a tracker's UI: suite, role, method label, regime, seed, run id."""
        regime = self.config.get("regime") or {}
        return {"suite": self.suite, "role": self.role, "label": str(self.config.get("label", "")),
                "regime": str(regime.get("label") or regime.get("name", "")),
                "seed": str(self.config.get("seed", "")), "run_id": self.run_id}


def missing_package(settings: TrackingSettings) -> str | None:
    """One line saying which package the chosen backend needs and how to install it, or None when it is
    installed (or tracking is off)."""
    if not settings.enabled:
        return None
    cls = tracker_registry.get(settings.backend)
    package = getattr(cls, "package", None)
    if package is None or _installed(package):
        return None
    return (f"backend {settings.backend} needs the '{cls.requirement}' package, which is not installed: "
            f"pip install 'kdbench[{EXTRA}]' (or pip install '{cls.requirement}')")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def epoch_metrics(line: Mapping[str, Any]) -> dict[str, float]:
    """A ``metrics.jsonl`` line as tracker metrics: its numbers (not ``epoch``), named as in the line, with
    ``<phase>/`` before the names of a method's extra stage (``warm_start/top1``)."""
    phase = line.get("phase", "main")
    prefix = "" if phase == "main" else f"{phase}/"
    return {f"{prefix}{key}": float(value) for key, value in line.items()
            if key != "epoch" and isinstance(value, int | float) and not isinstance(value, bool)}


def summary_numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a run's summary (its final metrics and a few costs), for trackers that store numbers."""
    return {key: float(value) for key, value in summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"recipe": {"lr": 0.1}}`` -> ``{"recipe.lr": "0.1"}`` (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(jsonable(value))
    return out


class NoTracker:
    """The default: tracks nothing."""

    def start(self, info: RunInfo) -> None:
        """Nothing."""

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Nothing."""

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Nothing."""


tracker_registry.add("none", NoTracker)


@tracker_registry.register("tensorboard")
class TensorBoardTracker:
    """Event files for TensorBoard (``torch.utils.tensorboard``): ``<run folder>/tensorboard/``, or
    ``<dir>/<run id>/`` with ``dir``; one scalar per metric, flushed every epoch (``tensorboard --logdir
    results/<suite>`` shows the runs live); the spec as text; the final metrics as ``final/<name>``."""

    package = "tensorboard"
    requirement = "tensorboard"

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings, self.writer, self.step = settings, None, 0

    def start(self, info: RunInfo) -> None:
        """Open the event-file writer and record the spec (a resumed run adds an event file to the folder)."""
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(self.settings.dir) / info.run_id if self.settings.dir else info.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(folder))
        self.where = f"TensorBoard event files in {folder}"
        self.writer.add_text("spec", "```\n" + json.dumps(info.config, indent=2, sort_keys=True) + "\n```")
        self.writer.add_text("run", ", ".join(f"{k} {v}" for k, v in info.tags.items()))

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """One scalar per metric at ``step``, flushed."""
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()
        self.step = step

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The final metrics as ``final/<name>`` and the state as text; the writer is closed."""
        for name, value in summary_numbers(summary).items():
            self.writer.add_scalar(f"final/{name}", value, self.step)
        self.writer.add_text("state", str(summary.get("state")), self.step)
        self.writer.close()


@tracker_registry.register("wandb")
class WandbTracker:
    """A Weights & Biases run, offline by default (``mode``), under ``<run folder>/wandb/`` (or ``<dir>/wandb/``):
    upload it later with ``wandb sync``. Project: ``project`` or the suite's name; group: the suite; job type: the
    role; config: the spec; summary: the final metrics and state."""

    package = "wandb"
    requirement = "wandb"

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings, self.run = settings, None

    def start(self, info: RunInfo) -> None:
        """Start (or, resumed, continue) the W&B run whose id is the run id."""
        import wandb

        folder = Path(self.settings.dir) if self.settings.dir else info.run_dir
        folder.mkdir(parents=True, exist_ok=True)
        tags = [f"{k}:{v}" for k, v in info.tags.items() if k in ("role", "label", "regime")]
        # the run id is the W&B id: a run resumed after a requeue or a kill continues its W&B run
        self.run = wandb.init(project=self.settings.project or info.suite, entity=self.settings.entity,
                              id=info.run_id, resume="allow",
                              group=info.suite, job_type=info.role, name=info.name, config=info.config,
                              tags=[*tags, *self.settings.tags], dir=str(folder),
                              mode=self.settings.mode or "offline",
                              settings=wandb.Settings(console="off", disable_git=True, save_code=False, quiet=True))
        self.where = (f"W&B run {self.run.id} ({self.settings.mode or 'offline'}) in {Path(self.run.dir).parent}"
                      + ("; upload it with `wandb sync`" if (self.settings.mode or "offline") == "offline" else ""))

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """The epoch's metrics at ``step``."""
        self.run.log(dict(metrics), step=step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The final metrics and state in the run's summary; the run ends (exit code 1 unless done or diverged)."""
        self.run.summary.update({**summary_numbers(summary), "state": str(summary.get("state"))})
        self.run.finish(exit_code=0 if summary.get("state") in ("done", "diverged") else 1)


@tracker_registry.register("mlflow")
class MlflowTracker:
    """An MLflow run in the experiment ``project`` (default: the suite's name), in a file store at ``<run
    folder>/mlruns`` (or ``dir``) unless ``tracking_uri`` names a server or database (``mlflow ui
    --backend-store-uri <folder>`` shows a file store). Params: the spec, flattened; metrics per epoch; the final
    metrics as ``final/<name>``; the state as the run's status and a tag.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is true:
    kdbench sets it (if unset) for the file store it chooses, as the lightest store to read and copy around."""

    package = "mlflow"
    requirement = "mlflow-skinny"
    STATUS: ClassVar[dict[str, str]] = {"done": "FINISHED", "diverged": "FINISHED", "failed": "FAILED",
                                        "interrupted": "KILLED"}

    def __init__(self, settings: TrackingSettings) -> None:
        self.settings, self.client, self.run_id, self.step = settings, None, None, 0

    def start(self, info: RunInfo) -> None:
        """Open the store, then create the run, or continue the one tagged with this run id (a resumed run)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.settings.tracking_uri
        if uri is None:
            folder = Path(self.settings.dir) if self.settings.dir else info.run_dir / "mlruns"
            uri = str(folder.resolve())
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self._experiment(self.settings.project or info.suite)
        tags = {**info.tags, **{tag: "" for tag in self.settings.tags}}
        earlier = self.client.search_runs([experiment], filter_string=f"tags.run_id = '{info.run_id}'",
                                          max_results=1)
        if earlier:  # resumed after a requeue or a kill: the same MLflow run goes on
            self.run_id = earlier[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment, run_name=info.name, tags=tags).info.run_id
            params = [Param(key, value[:6000]) for key, value in sorted(_flat(info.config).items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.where = f"MLflow run {self.run_id} in {uri}"

    def _experiment(self, name: str) -> str:
        """The id of the experiment ``name``, created if needed (another run may create it at the same time)."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """The epoch's metrics at ``step``, in one batch."""
        self._log(metrics, step)
        self.step = step

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The final metrics as ``final/<name>``, the state as a tag and as the run's status."""
        state = str(summary.get("state"))
        self._log({f"final/{k}": v for k, v in summary_numbers(summary).items()}, self.step)
        self.client.set_tag(self.run_id, "state", state)
        self.client.set_terminated(self.run_id, self.STATUS.get(state, "FAILED"))


class GuardedTracker:
    """A backend whose failures never reach the run: the first exception of any call logs one warning line and
    switches the tracker off (later calls do nothing). :meth:`close` finishes it as ``interrupted`` unless
    :meth:`finish` ran."""

    def __init__(self, backend: Tracker | None, name: str, log: Callable[[str], None]) -> None:
        self.backend, self.name, self.log, self.finished = backend, name, log, False

    @property
    def active(self) -> bool:
        """Still tracking (started without a failure)."""
        return self.backend is not None

    def _guard(self, what: str, call: Callable[[], None]) -> None:
        if self.backend is None:
            return
        try:
            call()
        except Exception as err:  # a tracker must never fail a run
            self.backend = None
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            self.log(f"warning: tracking ({self.name}) switched off, {what} failed: {reason}; the run goes on")

    def start(self, info: RunInfo) -> None:
        """Start the backend (a failure switches it off) and say where it writes (its ``where``, if it has one)."""
        self._guard("start", lambda: self.backend.start(info))
        where = getattr(self.backend, "where", None)
        if where:
            self.log(f"tracking: {where}")

    def log_epoch(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one epoch's metrics (a failure switches it off)."""
        self._guard(f"logging step {step}", lambda: self.backend.log_epoch(metrics, step))

    def epoch_line(self, line: Mapping[str, Any], step: int) -> None:
        """The loop's per-epoch callback: a ``metrics.jsonl`` line and the run's epoch count so far."""
        self.log_epoch(epoch_metrics(line), step)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Finish the backend with the run's summary (a failure is logged, never raised); once."""
        if not self.finished:
            self.finished = True
            self._guard("finish", lambda: self.backend.finish(summary))

    def close(self) -> None:
        """Finish as ``interrupted`` if :meth:`finish` did not run (the process is stopping)."""
        self.finish({"state": "interrupted"})


def open_tracker(settings: TrackingSettings | None, info: RunInfo, log: Callable[[str], None]) -> GuardedTracker:
    """The started tracker of a run (a no-op one when tracking is off); never raises."""
    if settings is None or not settings.enabled:
        return GuardedTracker(None, "none", log)
    try:
        backend = tracker_registry.get(settings.backend)(settings)
    except Exception as err:
        guarded = GuardedTracker(None, settings.backend, log)
        log(f"warning: tracking ({settings.backend}) not started: {type(err).__name__}: {err}; the run goes on")
        return guarded
    guarded = GuardedTracker(backend, settings.backend, log)
    guarded.start(info)
    return guarded
