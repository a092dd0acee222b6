"""GenDD: Generative Distribution Distillation (Cui et al., arXiv 2507.14503), as its authors' code does it.

KD as conditional generation: a diffusion head learns p(teacher feature | student feature). The student backbone
is trained only through the diffusion loss (it flows back into the condition ``z = LayerNorm(f_s)``). Training
target per image (no gradient): ``target = (1 - smooth) * f_T + smooth * (y @ W_T)`` (Distribution Contraction
with the frozen teacher classifier rows), mixed with one Beta(beta, beta) weight and one permutation per batch
together with z (feature mixup), split into ``D / token_dim`` tokens (Split Tokenization), rows repeated ``mul``
times, the condition dropped to zero with probability ``cond_drop``. Prediction: ``num_samples`` samples of every
token by the respaced reverse chain with classifier-free guidance, averaged in feature space, then the frozen
teacher head ``W_T f + b_T``. The student's own fc is trained with CE on the detached feature as a probe.
Supervised runs first warm-start the student through ``Linear(F_s -> D)`` (the identity when ``F_s == D``, as the
authors' code does; ``warm_projector: linear`` always uses a Linear) and the frozen teacher head (CE).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdbench import distributed
from kdbench.method import Batch, Method, Needs, Stage, register_method
from kdbench.models import Network, Outputs
from methods.gendd.diffusion import GaussianDiffusion, Schedule, _take
from methods.gendd.flow import RectifiedFlow
from methods.gendd.head import DiffusionHead

SAMPLERS = {"diffusion": ("ddpm", "ddim", "x0"), "flow": ("euler",)}
WARM_PROJECTORS = ("auto", "linear")


def warm_projector_for(student_dim: int, teacher_dim: int, kind: str = "auto") -> nn.Module:
    """The warm start's projector from the student's feature to the teacher head's input: ``Linear(F_s -> D)``,
    or, with ``auto`` (the authors' code, diff_model.py stage-1), the identity when ``F_s == D``."""
    if kind == "auto" and student_dim == teacher_dim:
        return nn.Identity()
    return nn.Linear(student_dim, teacher_dim)
PREDICTORS = ("distilled",)  # variants that are not samplers of the head


def contract(teacher_feature: torch.Tensor, labels: torch.Tensor | None, classifier_weight: torch.Tensor,
             smooth: float) -> torch.Tensor:
    """Distribution Contraction: ``(1 - s) f_T + s (y @ W)``; ``labels`` are class ids or soft/mixed rows.
    The identity when ``s == 0`` or without labels."""
    if labels is None or smooth == 0:
        return teacher_feature
    onehot = F.one_hot(labels, classifier_weight.shape[0]).to(teacher_feature) if labels.dim() == 1 else labels
    return (1 - smooth) * teacher_feature + smooth * (onehot @ classifier_weight)


def split_tokens(feature: torch.Tensor, token_dim: int) -> torch.Tensor:
    """B x D -> (B * T) x token_dim, token i of image b = dims [token_dim * i, token_dim * (i + 1)), row b*T + i."""
    if feature.shape[1] % token_dim:
        raise ValueError(f"feature dimension {feature.shape[1]} is not a multiple of token_dim {token_dim}")
    return feature.reshape(-1, token_dim)


def join_tokens(tokens: torch.Tensor, batch: int) -> torch.Tensor:
    """Inverse of :func:`split_tokens`: (B * T) x token_dim -> B x D."""
    return tokens.reshape(batch, -1)


def feature_mixup(z: torch.Tensor, target: torch.Tensor, m: float,
                  perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix condition and target with the same weight and permutation: ``m a + (1 - m) a[perm]``."""
    return m * z + (1 - m) * z[perm], m * target + (1 - m) * target[perm]


@contextlib.contextmanager
def strict_fp32(device: torch.device) -> Iterator[None]:
    """GenDD's head, diffusion loss and sampler run in strict fp32 whatever the run's precision, as the authors' code
    does everywhere: autocast off, and on CUDA no TF32 matmuls (10-bit mantissa). The sampler's first step divides
    the head's epsilon error by sqrt(alpha_bar(999)) ~ 5e-5, so bf16 rounding (about 3 significant digits) would
    become an error of tens per feature dimension. Callers cast their inputs to float32."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32


def sweep_name(entry: dict) -> str:
    """A readable name for one prediction variant, e.g. ``ddim-16x1-cfg1-t999`` or ``distilled``."""
    if entry.get("sampler") in PREDICTORS:
        return str(entry["sampler"])
    return "-".join(str(part) for part in (
        entry.get("sampler", "ddpm"), f"{entry.get('steps', 'K')}x{entry.get('samples', 1)}",
        f"cfg{entry.get('cfg', 'default')}", f"t{entry.get('start_step', 'default')}"))


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


def beta2_at(step: int, total: int, beta2_min: float, beta2_max: float = 0.999) -> float:
    """AdamW's beta2 ramped per step on a cosine from ``beta2_min`` (step 0) to ``beta2_max`` (last step)."""
    progress = min(1.0, step / max(1, total - 1))
    return beta2_max - (beta2_max - beta2_min) * 0.5 * (1 + math.cos(math.pi * progress))


@register_method("gendd")
class GenDD(Method):
    """Generative Distribution Distillation; defaults are the authors' CIFAR-100 settings."""

    needs = Needs(labels=False, teacher=True)
    description = "GenDD: diffusion head samples teacher features given the student's; frozen teacher head"
    uses = "pooled feature, teacher classifier"
    final_predict_differs = True
    reports_probe = True

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int,
                 token_dim: int = 64, width: int = 1024, depth: int = 3, mul: int = 30, cond_drop: float = 0.2,
                 smooth: float = 0.9, beta: float = 1.0, learn_sigma: bool = True, diffusion_steps: int = 1000,
                 sample_steps: int = 100, sampler: str | None = None, start_step: int = 999, cfg: float = 2.0,
                 temperature: float = 1.0, num_samples: int = 5, val_samples: int = 1,
                 beta2_min: float = 0.95, head_weight_decay: float = 0.0, probe: bool = True,
                 warm_start_epochs: int = 50, warm_start_lr: float = 3e-3,
                 warm_start_weight_decay: float = 5e-2, warm_start_batch_size: int = 0,
                 warm_projector: str = "auto", sample_seed: int = 0,
                 eval_sweep: tuple[dict, ...] = (), objective: str = "diffusion") -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        dim = teacher.feature_dim
        if dim % token_dim:
            raise ValueError(f"teacher feature dimension {dim} is not a multiple of token_dim {token_dim}")
        if objective not in SAMPLERS:
            raise ValueError(f"objective must be 'diffusion' or 'flow', got '{objective}'")
        sampler = sampler or SAMPLERS[objective][0]
        if sampler not in SAMPLERS[objective]:
            raise ValueError(f"sampler '{sampler}' does not sample a {objective} head (known: "
                             f"{', '.join(SAMPLERS[objective])})")
        if warm_projector not in WARM_PROJECTORS:
            raise ValueError(f"warm_projector must be one of {', '.join(WARM_PROJECTORS)}, got '{warm_projector}'")
        if warm_start_batch_size < 0 or warm_start_batch_size == 1:
            raise ValueError(f"warm_start_batch_size must be 0 (the run's batch) or >= 2, got {warm_start_batch_size}")
        if not 0 <= start_step < diffusion_steps:
            raise ValueError(f"start_step must be in [0, {diffusion_steps - 1}], got {start_step}")
        self.objective = objective
        self.hp = dict(token_dim=token_dim, mul=mul, cond_drop=cond_drop, smooth=smooth, beta=beta, cfg=cfg,
                       sampler=sampler, temperature=temperature, num_samples=num_samples, val_samples=val_samples,
                       beta2_min=beta2_min, head_weight_decay=head_weight_decay, probe=probe,
                       warm_start_epochs=warm_start_epochs, warm_start_lr=warm_start_lr,
                       warm_start_weight_decay=warm_start_weight_decay, warm_start_batch_size=warm_start_batch_size)
        self.num_tokens = dim // token_dim
        self.sample_seed = sample_seed
        self.cond_norm = nn.LayerNorm(student.feature_dim)
        learn_sigma = learn_sigma and objective == "diffusion"  # a velocity head has no variance output
        self.head = DiffusionHead(token_dim, student.feature_dim, self.num_tokens, width, depth, learn_sigma)
        self.diffusion = GaussianDiffusion(diffusion_steps, learn_sigma)
        self.flow = RectifiedFlow(time_scale=float(diffusion_steps)) if objective == "flow" else None
        self.sampling = Sampling(sampler, sample_steps, start_step, num_samples, cfg, temperature)
        self.schedule = self.diffusion.sampling_schedule(sample_steps, start_step)
        self._schedules = {(sample_steps, start_step): self.schedule}
        self.sweep = {sweep_name(entry): self._sweep_settings(entry) for entry in eval_sweep}
        self.distilled: tuple[torch.Tensor, torch.Tensor] | None = None  # (weight, bias) once fitted
        self.distill_fit: dict[str, Any] = {}
        self.warm_projector = warm_projector_for(student.feature_dim, dim, warm_projector) \
            if warm_start_epochs > 0 else None
        classifier = teacher.classifier
        self.register_buffer("teacher_weight", classifier.weight.detach().clone())
        self.register_buffer("teacher_bias", classifier.bias.detach().clone())
        object.__setattr__(self, "_student_fc", student.classifier)  # trained as a probe, owned by the student
        # norm of the training targets over the current epoch (a buffer: checkpointed, so resumed runs agree)
        self.register_buffer("target_norm_stats", torch.zeros(2, dtype=torch.float64))
        self._stats = {"sample_norm_sum": 0.0, "sample_rows": 0, "nonfinite_samples": 0}

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        hp = self.hp
        with strict_fp32(s.feature.device):  # the backbones may run in bf16; the head and its loss never do
            z = self.cond_norm(s.feature.float())
            with torch.no_grad():
                target = contract(t.feature.float(), batch.y, self.teacher_weight, hp["smooth"])
                self.target_norm_stats += torch.stack([target.norm(dim=1).sum().double(),
                                                       torch.tensor(float(target.shape[0]), dtype=torch.float64,
                                                                    device=target.device)])
            if hp["beta"] > 0:
                m = float(np.random.beta(hp["beta"], hp["beta"]))
                z, target = feature_mixup(z, target, m, torch.randperm(z.shape[0], device=z.device))
            tokens = split_tokens(target, hp["token_dim"]).repeat(hp["mul"], 1)
            cond = z.repeat_interleave(self.num_tokens, dim=0).repeat(hp["mul"], 1)
            idx = torch.arange(self.num_tokens, device=z.device).repeat(z.shape[0] * hp["mul"])
            keep = (torch.rand(cond.shape[0], device=cond.device) >= hp["cond_drop"]).to(cond.dtype)
            cond = cond * keep[:, None]
            if self.flow is not None:
                loss = self.flow.training_losses(lambda x, tt: self.head(x, tt, cond, idx), tokens)
                terms = {"flow": loss["loss"].mean()}
            else:
                steps = torch.randint(0, self.diffusion.num_steps, (tokens.shape[0],), device=tokens.device)
                loss = self.diffusion.training_losses(lambda x, tt: self.head(x, tt, cond, idx), tokens, steps)
                terms = {"diffusion": loss["loss"].mean()}
        if batch.y is not None and hp["probe"]:
            terms["probe_ce"] = F.cross_entropy(self._student_fc(s.feature.detach()), batch.y)
        return terms

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.target_norm_stats.zero_()

    def param_groups(self, student: Network) -> list[dict[str, Any]]:
        """Backbone, condition LayerNorm and student fc at the recipe's weight decay; the head at its own (0)."""
        head = list(self.head.parameters())
        head_ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if id(p) not in head_ids and p.requires_grad
                and (self.warm_projector is None or all(p is not q for q in self.warm_projector.parameters()))]
        return [{"params": list(student.parameters()) + rest, "name": "student"},
                {"params": head, "name": "diffusion_head", "weight_decay": self.hp["head_weight_decay"]}]

    def before_step(self, optimizer: torch.optim.Optimizer, step: int, total_steps: int) -> None:
        """AdamW's beta2 follows a per-step cosine from ``beta2_min`` to 0.999 (no-op for SGD)."""
        beta2 = beta2_at(step, total_steps, self.hp["beta2_min"])
        for group in optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (group["betas"][0], beta2)

    # ------------------------------------------------------------------ warm start
    def stages(self, recipe: dict[str, Any], labeled: bool = True) -> list[Stage]:
        """The supervised warm start: student -> Linear(F_s -> D) -> frozen teacher head, CE (AdamW, cosine)."""
        if self.warm_projector is None or not labeled:
            return []
        hp = self.hp
        return [Stage(
            name="warm_start", epochs=hp["warm_start_epochs"],
            recipe={"optimizer": "adamw", "lr": hp["warm_start_lr"], "weight_decay": hp["warm_start_weight_decay"],
                    "schedule": "cosine", "warmup_epochs": 0, "milestones": [], "min_lr": 0.0,
                    "warmup_hold": False,
                    **({"batch_size": hp["warm_start_batch_size"]} if hp["warm_start_batch_size"] else {})},
            losses=lambda batch, s, t: {"warm_ce": F.cross_entropy(self._warm_logits(s), batch.y)},
            predict=lambda x, s: self._warm_logits(s),
            param_groups=lambda student: [{"params": list(student.parameters())
                                           + list(self.warm_projector.parameters()), "name": "warm_start"}],
        )]

    def describe_predictor(self, final: bool) -> str:
        """``ddpm 100 steps, 5 samples, cfg 2`` (final) or ``..., 1 sample, ...`` (per-epoch validation)."""
        sampling = self.sampling
        samples = sampling.samples if final else self.hp["val_samples"]
        steps = "1 step" if sampling.kind == "x0" else f"{sampling.steps} steps"
        return f"{sampling.kind} {steps}, {samples} sample{'s' * (samples != 1)}, cfg {sampling.cfg:g}"

    def _warm_logits(self, s: Outputs) -> torch.Tensor:
        return F.linear(self.warm_projector(s.feature), self.teacher_weight, self.teacher_bias)

    # ------------------------------------------------------------------ prediction
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

    def _sweep_settings(self, entry: dict) -> Sampling | str:
        known = {"sampler", "steps", "samples", "cfg", "start_step", "temperature", "items", "ridge"}
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"eval_sweep: unknown key(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
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

    def after_training(self, student: Network, batches: Callable[[], Iterator[tuple[torch.Tensor,
                                                                                       torch.Tensor]]]) -> None:
        """Fit the distilled predictor when the sweep asks for it: ridge regression (float64, with a bias) from
        the condition ``LayerNorm(f_s)`` to the authors' sampler's averaged sample, over the training items."""
        if "distilled" not in self.sweep:
            return
        options = self._distill_options
        # under data-parallel training each rank sees its shard: ``items`` is split among the ranks and the
        # fit's statistics are summed over them, so every rank holds the same map
        items = None if options["items"] is None else -(-options["items"] // distributed.world_size())
        zs, targets, seen = [], [], 0
        student.eval()
        self.eval()
        with torch.no_grad():
            for x, _ in batches():
                if items is not None and seen >= items:
                    break
                z = self.condition(student(x).feature)
                zs.append(z.double())
                targets.append(self.sample_features(z).double())
                seen += len(x)
        z, y = torch.cat(zs), torch.cat(targets)
        if items is not None:
            z, y = z[:items], y[:items]
        self.distilled = fit_linear_map(z, y, options["ridge"], reduce=distributed.sum_across)
        residual = distributed.sum_across(torch.stack([(apply_linear_map(z, self.distilled) - y).square().sum(),
                                                       y.square().sum(), torch.tensor(len(z)).to(y)]))
        self.distill_fit = {"items": int(residual[2]), "ridge": options["ridge"],
                            "relative_residual": float(residual[0].sqrt() / residual[1].sqrt().clamp(min=1e-12))}

    def _distilled_features(self, z: torch.Tensor) -> torch.Tensor:
        if self.distilled is None:
            raise RuntimeError("the distilled predictor is fitted after training (after_training)")
        return apply_linear_map(z, self.distilled)

    def extra_evaluations(self) -> dict[str, Any]:
        """The prediction variants: each setting's prediction from the same trained head (and the distilled map)."""
        def predictor(setting: Sampling | str) -> Any:
            @torch.no_grad()
            def predict(x: torch.Tensor, s: Outputs) -> torch.Tensor:
                z = self.condition(s.feature)
                features = self._distilled_features(z) if setting == "distilled" else self.sample_features(z, setting)
                return self.teacher_logits(features)
            return predict
        return {name: predictor(setting) for name, setting in self.sweep.items()}

    def condition(self, feature: torch.Tensor) -> torch.Tensor:
        """The head's condition ``LayerNorm(f_s)``, in fp32 (the student's feature may come out of bf16 autocast)."""
        with strict_fp32(feature.device):
            return self.cond_norm(feature.float())

    def teacher_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The frozen teacher head ``W f + b`` on sampled teacher-space features, in fp32."""
        with strict_fp32(features.device):
            return F.linear(features.float(), self.teacher_weight, self.teacher_bias)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, s: Outputs, *, final: bool = False) -> torch.Tensor:
        features = self.sample_features(self.condition(s.feature),
                                        num_samples=self.hp["num_samples" if final else "val_samples"])
        if final:
            finite = torch.isfinite(features).all(dim=1)
            self._stats["nonfinite_samples"] += int((~finite).sum())
            self._stats["sample_norm_sum"] += float(features[finite].norm(dim=1).sum())
            self._stats["sample_rows"] += int(finite.sum())
        return self.teacher_logits(features)

    # ------------------------------------------------------------------ record
    def extras(self) -> dict[str, dict[str, Any]]:
        st, hp = self._stats, self.hp
        branches = 1 if hp["cfg"] == 1.0 else 2
        norm_sum, rows = (float(v) for v in self.target_norm_stats)
        target_norm = norm_sum / rows if rows else None
        sample_norm = st["sample_norm_sum"] / st["sample_rows"] if st["sample_rows"] else None
        return {
            "cost": {"head_params": sum(p.numel() for p in self.head.parameters()),
                     "head_rows_per_image_train": self.num_tokens * hp["mul"],
                     "head_rows_per_image_predict": self.num_tokens * self.sampling.steps * branches
                     * hp["num_samples"],
                     "sample_steps": self.sampling.steps},
            "diagnostics": {"target_norm_mean": target_norm, "sampled_norm_mean": sample_norm,
                            "sampled_to_target_norm_ratio": sample_norm / target_norm
                            if sample_norm is not None and target_norm else None,
                            "nonfinite_samples": st["nonfinite_samples"],
                            "first_sampling_timestep": int(self.sampling.start_step),
                            "objective": self.objective,
                            "sampler": {"sampler": self.sampling.kind, "steps": self.sampling.steps,
                                        "samples": self.sampling.samples, "cfg": self.sampling.cfg,
                                        "start_step": self.sampling.start_step},
                            "sweep_settings": {name: _setting_record(st) for name, st in self.sweep.items()},
                            **({"distilled_fit": self.distill_fit} if self.distill_fit else {})},
        }


def _setting_record(setting: Sampling | str) -> dict[str, Any]:
    if isinstance(setting, str):
        return {"sampler": setting}
    return {"sampler": setting.kind, "steps": 1 if setting.kind == "x0" else setting.steps,
            "samples": 1 if setting.kind == "x0" else setting.samples, "cfg": setting.cfg,
            "start_step": setting.start_step}


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
