"""GenDD's prediction side: sampling teacher-space features from the trained head, the prediction variants
(other samplers of the same head, the one-step x0 estimate, the distilled linear map) and the fit of that map.

:class:`GenDDPredictor` is the :class:`kdbench.method.CustomPredictor` capability of
:class:`kdbench.methods.gendd.method.GenDD`; the training side (losses, warm start, optimizer hooks) lives in
``method.py``. Prediction: ``num_samples`` samples of every token by the respaced reverse chain with
classifier-free guidance, averaged in feature space, then the frozen teacher head ``W_T f + b_T``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from kdbench import distributed
from kdbench.method import CustomPredictor, Predict, TrainingItems
from kdbench.methods.gendd.diffusion import GaussianDiffusion, Schedule, _take
from kdbench.methods.gendd.flow import RectifiedFlow
from kdbench.methods.gendd.head import DiffusionHead
from kdbench.methods.gendd.numerics import strict_fp32
from kdbench.models import Network, Outputs

SAMPLERS = {"diffusion": ("ddpm", "ddim", "x0"), "flow": ("euler",)}
PREDICTORS = ("distilled",)  # variants that are not samplers of the head
SWEEP_KEYS = frozenset({"sampler", "steps", "samples", "cfg", "start_step", "temperature", "items", "ridge"})


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn from the trained head: ``kind`` (ddpm, ddim, x0: the one-step x0 estimate from the
    start step with zero noise; euler for the flow head), ``steps`` K, ``start_step`` (of the 0..999 chain),
    ``samples`` averaged per image, guidance scale ``cfg``, ``temperature`` (ddpm)."""

    kind: str
    steps: int
    start_step: int
    samples: int
    cfg: float
    temperature: float


def sweep_name(entry: dict) -> str:
    """A readable name for one prediction variant, e.g. ``ddim-16x1-cfg1-t999`` or ``distilled``."""
    if entry.get("sampler") in PREDICTORS:
        return str(entry["sampler"])
    return "-".join(str(part) for part in (
        entry.get("sampler", "ddpm"), f"{entry.get('steps', 'K')}x{entry.get('samples', 1)}",
        f"cfg{entry.get('cfg', 'default')}", f"t{entry.get('start_step', 'default')}"))


def setting_record(setting: Sampling | str) -> dict[str, Any]:
    """One prediction variant's settings as the record keeps them (``diagnostics.sweep_settings``)."""
    if isinstance(setting, str):
        return {"sampler": setting}
    return {"sampler": setting.kind, "steps": 1 if setting.kind == "x0" else setting.steps,
            "samples": 1 if setting.kind == "x0" else setting.samples, "cfg": setting.cfg,
            "start_step": setting.start_step}


class GenDDPredictor(CustomPredictor):
    """GenDD's predictors: the authors' sampler (``predict``), the sweep of other settings of the same trained
    head and the distilled linear map (``extra_evaluations``, fitted by ``after_training``).

    A mixin of :class:`kdbench.methods.gendd.method.GenDD`: it reads the training side's modules and settings named in
    the annotations below, and owns the sampling state that :meth:`_init_prediction` sets."""

    final_predict_differs: ClassVar[bool] = True
    reports_probe: ClassVar[bool] = True

    # set by the training side (GenDD.__init__) before _init_prediction
    objective: str
    hp: dict[str, Any]  # reads token_dim, num_samples, val_samples
    num_tokens: int
    cond_norm: nn.LayerNorm
    head: DiffusionHead
    diffusion: GaussianDiffusion
    flow: RectifiedFlow | None
    teacher_weight: torch.Tensor
    teacher_bias: torch.Tensor

    def _init_prediction(self, *, sampler: str, sample_steps: int, start_step: int, num_samples: int, cfg: float,
                         temperature: float, sample_seed: int, eval_sweep: tuple[dict, ...]) -> None:
        """The authors' sampler's settings, the respaced schedules, the sweep's variants and the empty fit."""
        self.sample_seed = sample_seed
        self.sampling = Sampling(sampler, sample_steps, start_step, num_samples, cfg, temperature)
        self.schedule = self.diffusion.sampling_schedule(sample_steps, start_step)
        self._schedules = {(sample_steps, start_step): self.schedule}
        self.sweep = {sweep_name(entry): self._sweep_settings(entry) for entry in eval_sweep}
        self.distilled: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, bias) once fitted
        self.distill_fit: dict[str, Any] = {}
        self._stats = {"sample_norm_sum": 0.0, "sample_rows": 0, "nonfinite_samples": 0}

    def describe_predictor(self, final: bool) -> str:
        """``ddpm 100 steps, 5 samples, cfg 2`` (final) or ``..., 1 sample, ...`` (per-epoch validation)."""
        sampling = self.sampling
        samples = sampling.samples if final else self.hp["val_samples"]
        steps = "1 step" if sampling.kind == "x0" else f"{sampling.steps} steps"
        return f"{sampling.kind} {steps}, {samples} sample{'s' * (samples != 1)}, cfg {sampling.cfg:g}"

    def condition(self, feature: torch.Tensor) -> torch.Tensor:
        """The head's condition ``LayerNorm(f_s)``, in fp32 (the student's feature may come out of bf16 autocast)."""
        with strict_fp32(feature.device):
            return self.cond_norm(feature.float())

    def teacher_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen teacher head ``W f + b`` on sampled teacher-space features, in fp32."""
        with strict_fp32(features.device):
            return F.linear(features.float(), self.teacher_weight, self.teacher_bias)

    def sample_features(self, z: torch.Tensor, sampling: Sampling | None = None,
                        num_samples: int | None = None) -> torch.Tensor:
        """``num_samples`` sampled teacher-space features per condition row, averaged: B x D.

        The noise comes from a generator of its own (seeded with ``sample_seed``), so evaluating never moves the
        training RNG: two runs that differ only in how they sample train identically."""
        with strict_fp32(z.device):
            return self._sample_features(z.float(), sampling or self.sampling, num_samples)

    def _sample_features(self, z: torch.Tensor, sampling: Sampling, num_samples: int | None) -> torch.Tensor:
        samples = 1 if sampling.kind == "x0" else (sampling.samples if num_samples is None else num_samples)
        batch = z.shape[0]
        cond = z.repeat_interleave(self.num_tokens, dim=0).repeat(samples, 1)
        idx = torch.arange(self.num_tokens, device=z.device).repeat(batch * samples)
        model = lambda x, t: self.head.forward_with_cfg(x, t, cond, idx, sampling.cfg)
        generator = torch.Generator(device=z.device).manual_seed(self.sample_seed)
        shape = (cond.shape[0], self.hp["token_dim"])
        if sampling.kind == "x0":
            tokens = one_step_x0(self.diffusion, model, torch.zeros(shape, device=z.device, dtype=z.dtype),
                                 sampling.start_step)
        else:
            noise = torch.randn(shape, device=z.device, dtype=z.dtype, generator=generator)
            if sampling.kind == "euler":
                tokens = self.flow.sample(model, noise, sampling.steps,
                                          (sampling.start_step + 1) / self.diffusion.num_steps)
            else:
                key = (sampling.steps, sampling.start_step)
                if key not in self._schedules:  # respacing is Python work: once per setting, not per batch
                    self._schedules[key] = self.diffusion.sampling_schedule(*key)
                schedule = self._schedules[key]
                tokens = self.diffusion.sample(model, noise, schedule, sampling.kind, sampling.temperature,
                                               generator=generator)
        return tokens.reshape(samples, batch, -1).mean(0)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, s: Outputs, *, final: bool = False) -> torch.Tensor:
        """Teacher-head logits of the averaged sampled feature: ``num_samples`` samples at the final evaluation
        (whose sample norms and non-finite rows it counts for the record), ``val_samples`` per epoch."""
        features = self.sample_features(self.condition(s.feature),
                                        num_samples=self.hp["num_samples" if final else "val_samples"])
        if final:
            finite = torch.isfinite(features).all(dim=1)
            self._stats["nonfinite_samples"] += int((~finite).sum())
            self._stats["sample_norm_sum"] += float(features[finite].norm(dim=1).sum())
            self._stats["sample_rows"] += int(finite.sum())
        return self.teacher_logits(features)

    def _sweep_settings(self, entry: dict) -> Sampling | str:
        unknown = set(entry) - SWEEP_KEYS
        if unknown:
            raise ValueError(f"eval_sweep: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(SWEEP_KEYS))})")
        kind = entry.get("sampler", self.sampling.kind)
        if kind in PREDICTORS:
            self._distill_options = {"items": entry.get("items"), "ridge": float(entry.get("ridge", 1e-4))}
            return kind
        if kind not in SAMPLERS[self.objective]:
            raise ValueError(f"eval_sweep: sampler '{kind}' does not sample a {self.objective} head (known: "
                             f"{', '.join(SAMPLERS[self.objective] + PREDICTORS)})")
        start = int(entry.get("start_step", self.sampling.start_step))
        if not 0 <= start < self.diffusion.num_steps:
            raise ValueError(f"eval_sweep: start_step must be in [0, {self.diffusion.num_steps - 1}], got {start}")
        return Sampling(kind, int(entry.get("steps", self.sampling.steps)), start, int(entry.get("samples", 1)),
                        float(entry.get("cfg", self.sampling.cfg)),
                        float(entry.get("temperature", self.sampling.temperature)))

    def extra_evaluations(self) -> dict[str, Predict]:
        """The prediction variants: each setting's prediction from the same trained head (and the distilled map)."""
        def predictor(setting: Sampling | str) -> Predict:
            @torch.no_grad()
            def predict(x: torch.Tensor, s: Outputs) -> torch.Tensor:
                z = self.condition(s.feature)
                features = self._distilled_features(z) if setting == "distilled" else self.sample_features(z, setting)
                return self.teacher_logits(features)
            return predict
        return {name: predictor(setting) for name, setting in self.sweep.items()}

    # ------------------------------------------------------------------ the distilled map
    def after_training(self, student: Network, batches: TrainingItems) -> None:
        """Fit the distilled predictor when the sweep asks for it: ridge regression (float64, with a bias) from
        the condition ``LayerNorm(f_s)`` to the authors' sampler's averaged sample, over the training items
        (the first ``items`` of them when the sweep entry says so).

        Under data-parallel training each rank samples the rows of its share of the items, and the rows of every
        rank are gathered (rank 0's first): every rank fits the same map, on the same rows in the same order, that
        one process fits on the union of the ranks' rows. (An item's sampled target depends on the batch it is
        sampled in, as the noise is drawn per call, so the rows are not bitwise those of a one-process run.)
        ``items`` is split as the data is sharded (rank ``r`` keeps ``len(range(r, items, world))`` rows), so the
        ranks fit on ``items`` rows together: the first ``items`` items of the split when the evaluation batch is
        a multiple of the world size."""
        if "distilled" not in self.sweep:
            return
        options = self._distill_options
        z, y = self._distillation_rows(student, batches, options["items"])
        z, y = distributed.gather_variable_rows(z), distributed.gather_variable_rows(y)
        self.distilled = fit_linear_map(z, y, options["ridge"])
        residual = torch.stack([(apply_linear_map(z, self.distilled) - y).square().sum(), y.square().sum(),
                                torch.tensor(len(z)).to(y)])
        self.distill_fit = {"items": int(residual[2]), "ridge": options["ridge"],
                            "relative_residual": float(residual[0].sqrt() / residual[1].sqrt().clamp(min=1e-12))}

    def _distillation_rows(self, student: Network, batches: TrainingItems,
                           items: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the fit, float64: the conditions and the authors' sampler's averaged samples."""
        mine = None if items is None else len(range(distributed.rank(), items, distributed.world_size()))
        zs, targets, seen = [], [], 0
        student.eval()
        self.eval()
        with torch.no_grad():
            for x, _ in batches():
                if mine is not None and seen >= max(mine, 1):  # one batch at least: it gives the rows' shapes
                    break
                z = self.condition(student(x).feature)
                zs.append(z.double())
                targets.append(self.sample_features(z).double())
                seen += len(x)
        z, y = torch.cat(zs), torch.cat(targets)
        return (z, y) if mine is None else (z[:mine], y[:mine])

    def _distilled_features(self, z: torch.Tensor) -> torch.Tensor:
        if self.distilled is None:
            raise RuntimeError("the distilled predictor is fitted after training (after_training)")
        return apply_linear_map(z, self.distilled)


def one_step_x0(diffusion: GaussianDiffusion, model: Any, x: torch.Tensor, start_step: int) -> torch.Tensor:
    """The head's x0 estimate in one evaluation at ``start_step``: ``sqrt(1/a) x - sqrt(1/a - 1) eps(x, t)``
    with ``a = alpha_bar(start_step)`` (``x`` = zeros: the deterministic one-step prediction)."""
    table: Schedule = diffusion.train_schedule
    t = torch.full((x.shape[0],), start_step, dtype=torch.long, device=x.device)
    eps = model(x, t)[:, : x.shape[1]]
    return _take(table.sqrt_recip_alphas_cumprod, t, x) * x - _take(table.sqrt_recipm1_alphas_cumprod, t, x) * eps


def linear_map_statistics(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The sufficient statistics of a least-squares fit ``y ~ z W + b``: ``A^T [A y]`` with ``A = [1 z]``.

    Sums over rows, so the statistics of shards add up to those of their union (one all-reduce under
    data-parallel training)."""
    design = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
    return design.T @ torch.cat([design, y], dim=1)


def fit_linear_map(z: torch.Tensor, y: torch.Tensor, ridge: float,
                   reduce: Callable[[torch.Tensor], torch.Tensor] = lambda stats: stats,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression ``y ~ z W + b`` in float64 (the bias unpenalised, the penalty ``ridge * n``): returns
    (W, b). ``reduce`` sums the statistics over data shards (e.g. over ranks) before solving."""
    stats = reduce(linear_map_statistics(z.double(), y.double()))
    dim = z.shape[1]
    count, z_sum, y_sum = stats[0, 0], stats[0, 1:dim + 1], stats[0, dim + 1:]
    z_mean, y_mean = z_sum / count, y_sum / count
    gram = stats[1:, 1:dim + 1] - count * torch.outer(z_mean, z_mean)
    cross = stats[1:, dim + 1:] - count * torch.outer(z_mean, y_mean)
    eye = torch.eye(dim, dtype=gram.dtype, device=gram.device)
    weight = torch.linalg.solve(gram + ridge * count * eye, cross)
    return weight, y_mean - z_mean @ weight


def apply_linear_map(z: torch.Tensor, fitted: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``z W + b`` in ``z``'s dtype: one matrix product."""
    weight, bias = fitted
    return torch.addmm(bias.to(z), z, weight.to(z))
