"""The value types a run spec is made of: how a network is trained (:class:`Recipe`, also :data:`TrainConfig`),
where a teacher the suite does not train comes from (:class:`TeacherSource`), how a run is evaluated
(:class:`EvalSettings`), where its per-epoch metrics are sent while it trains (:class:`TrackingSettings`).

Each field declares its own constraints (:func:`kdbench.config.setting`); they are checked when the object is
built from a mapping (:func:`kdbench.config.build_dataclass`), with errors that name the key path. Pure values:
nothing here opens a file or builds a network (a teacher file is checked by :mod:`kdbench.teachers`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from kdbench.config import Settings, above, at_least, one_of, require, rule, setting

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
BATCHNORM_MODES = ("broadcast", "sync", "local")
CHECKPOINT_EVERY_S = 1.0
"""Default least time between two epoch checkpoints of a run (``executor.checkpoint_every_s``). An epoch's
checkpoint is skipped while the last one is younger than this (a phase's last epoch is always saved): epochs of
seconds or more (every GPU workload) are all checkpointed; on epochs of a tenth of a second (a small model on a
small CPU set) writing each was 2-3% of the training time. A kill loses at most this long plus one epoch. An
epoch that improves the best top-1 of a method that keeps ``best.pt`` is always saved too."""
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Recipe(Settings):
    """How a network is trained: epochs, batch, optimizer, learning-rate schedule, divergence bound."""

    check_order: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "optimizer", "schedule", "lr", "weight_decay",
                                              "warmup_epochs", "warmup_hold", "milestones", "diverge_above")

    epochs: int = setting(30, at_least(1))
    batch_size: int = setting(64, at_least(2))
    optimizer: str = setting("sgd", one_of("optimizer", *OPTIMIZERS))
    lr: float = setting(0.05, above(0))
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = setting(5e-4, at_least(0))
    schedule: str = setting("cosine", one_of("schedule", *SCHEDULES))
    milestones: tuple[int, ...] = setting((), rule(
        lambda v, o: all(0 < m < o.epochs for m in v),
        lambda v, o: f"every milestone must be in (0, {o.epochs}), got {list(v)}"))
    lr_decay: float = 0.1
    warmup_epochs: int = setting(0, rule(lambda v, o: 0 <= v < o.epochs, "must be in [0, epochs), got {value}"))
    warmup_hold: bool = setting(False, rule(  # GenDD's CIFAR script's quirk: after the warm-up the lr stays at
        # (W-1)/W of its value until the first milestone (helper code sets lr*e/W for e < W, then nothing until a
        # decay); off by default
        lambda v, o: not v or (o.schedule == "multistep" and o.warmup_epochs >= 1),
        "holds the lr after a warm-up until the first milestone: needs schedule multistep and warmup_epochs >= 1 "
        "(got {obj.schedule}, {obj.warmup_epochs})"))
    min_lr: float = 0.0
    grad_clip: float | None = None
    diverge_above: float = setting(1e4, above(0, got=False))
    batchnorm: str = setting("broadcast", one_of("batchnorm mode", *BATCHNORM_MODES))
    # BatchNorm statistics under data-parallel training (several processes per run): ``broadcast`` copies rank 0's
    # running statistics to every rank at each epoch end (what is saved and evaluated is then what every rank
    # holds), ``sync`` trains with SyncBatchNorm (batch statistics over all ranks, GPUs only), ``local`` keeps
    # each rank's own (the behaviour before this option). No effect in a single process.

    omitted_at_default: ClassVar[tuple[str, ...]] = ("batchnorm",)
    """Fields added after run ids were first computed: a run spec leaves them out while they hold their default,
    so the ids of unchanged suites stay the same (:meth:`kdbench.store.runspec.RunSpec.to_dict`)."""


TrainConfig = Recipe
"""The training configuration of a run (the name the typed run spec uses for :class:`Recipe`)."""


def _needs_checkpoint_value(value: object, source: TeacherSource) -> bool:
    return source.checkpoint is None or value is not None


@dataclass(frozen=True)
class TeacherSource(Settings):
    """A teacher the suite does not train: a ``checkpoint`` file (a kdbench-format state dict, e.g. a teacher
    job's ``weights.pt``; ``sha256`` required and checked before anything starts) or timm's ``pretrained``
    weights from the local cache (offline, never downloaded). Its top-1 on the test split is measured by the
    teacher job and must lie within ``tolerance`` points of ``top1`` (required for checkpoints), else the
    teacher job fails and none of its students start."""

    check_order: ClassVar[tuple[str, ...]] = ("checkpoint", "tolerance")

    checkpoint: str | None = setting(None, rule(lambda v, o: (v is not None) != o.pretrained,
                                                "give exactly one of checkpoint: <path> or pretrained: true",
                                                whole=True))
    sha256: str | None = setting(None, rule(
        lambda v, o: o.checkpoint is None or (v is not None and _SHA256.fullmatch(v) is not None),
        "a checkpoint needs its sha256 (64 hex digits: sha256sum FILE)"))
    pretrained: bool = False
    top1: float | None = setting(None, rule(_needs_checkpoint_value,
                                            "a checkpoint needs the top-1 it is expected to reach"))
    tolerance: float = setting(0.5, at_least(0, got=False))


@dataclass(frozen=True)
class EvalSettings(Settings):
    """Evaluation settings. ``val_fraction`` > 0 holds out that fraction of each class of the training set
    (seeded by ``val_seed``) to select an epoch without looking at the test split (``top1_val``)."""

    batch_size: int = setting(512, at_least(1, got=False))
    val_fraction: float = setting(0.0, rule(lambda v, _: 0.0 <= v < 0.5, "must be in [0, 0.5), got {value}"))
    val_seed: int = 0


TRACKING_BACKENDS = ("none", "tensorboard", "wandb", "mlflow")
"""The live-tracking backends (:mod:`kdbench.tracking` implements each one)."""


@dataclass(frozen=True)
class TrackingSettings(Settings):
    """A suite's ``tracking:`` section (:mod:`kdbench.tracking`): where each run's per-epoch metrics go while it
    trains. ``backend``: none (default), tensorboard, wandb or mlflow. ``project``: the W&B project / MLflow
    experiment (default: the suite's name). ``dir``: where the files go (default: inside each run folder; a shared
    folder gets one subfolder per run for TensorBoard, one W&B folder or MLflow file store for all runs).
    ``mode`` (wandb only): offline (default), online or disabled. ``entity`` (wandb only). ``tracking_uri``
    (mlflow only): a tracking server or database instead of the file store. ``tags``: extra W&B / MLflow tags.
    Part of a run spec, never of its run id, and absent from ``spec.json`` while off."""

    check_order: ClassVar[tuple[str, ...]] = ("backend",)
    ONLY_FOR: ClassVar[dict[str, str]] = {"mode": "wandb", "entity": "wandb", "tracking_uri": "mlflow"}

    backend: str = setting("none", one_of("tracking backend", *TRACKING_BACKENDS))
    project: str | None = None
    dir: str | None = None
    mode: str | None = setting(None, rule(lambda v, _: v in (None, "offline", "online", "disabled"),
                                          "must be offline, online or disabled, got {value!r}"))
    entity: str | None = None
    tracking_uri: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """A backend other than ``none`` is chosen."""
        return self.backend != "none"

    def check(self, key: str) -> None:
        """The declared constraints, then: a backend's own key is set only with that backend."""
        super().check(key)
        for name, backend in self.ONLY_FOR.items():
            require(getattr(self, name) is None or self.backend == backend, f"{key}.{name}",
                    f"applies to backend {backend} only (backend is {self.backend})")

    def to_dict(self) -> dict[str, Any]:
        """Its JSON object in a run spec: the backend and the keys the suite set (None and empty left out)."""
        out: dict[str, Any] = {"backend": self.backend}
        for name in ("project", "dir", "mode", "entity", "tracking_uri"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.tags:
            out["tags"] = list(self.tags)
        return out
