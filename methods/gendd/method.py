"""GenDD: Generative Distribution Distillation (Cui et al., arXiv 2507.14503), as its authors' code does it.

KD as conditional generation: a diffusion head learns p(teacher feature | student feature). The student backbone
is trained only through the diffusion loss (it flows back into the condition ``z = LayerNorm(f_s)``). Training
target per image (no gradient): ``target = (1 - smooth) * f_T + smooth * (y @ W_T)`` (Distribution Contraction
with the frozen teacher classifier rows), mixed with one Beta(beta, beta) weight and one permutation per batch
together with z (feature mixup), split into ``D / token_dim`` tokens (Split Tokenization), rows repeated ``mul``
times, the condition dropped to zero with probability ``cond_drop``. Prediction (``predictor.py``): ``num_samples``
samples of every token by the respaced reverse chain with classifier-free guidance, averaged in feature space, then
the frozen teacher head ``W_T f + b_T``. The student's own fc is trained with CE on the detached feature as a probe.
Supervised runs first warm-start the student through ``Linear(F_s -> D)`` (the identity when ``F_s == D``, as the
authors' code does; ``warm_projector: linear`` always uses a Linear) and the frozen teacher head (CE).

This module holds the training side (losses, warm start, optimizer hooks, the record's extras); the prediction
side and the distilled map are in :mod:`kdbench.methods.gendd.predictor`, whose public names are re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, RecordExtras, ReportHints, Stage, StepHooks, register_method
from kdbench.methods.gendd.diffusion import GaussianDiffusion
from kdbench.methods.gendd.flow import RectifiedFlow
from kdbench.methods.gendd.head import DiffusionHead
from kdbench.methods.gendd.numerics import strict_fp32
from kdbench.methods.gendd.predictor import (
    PREDICTORS,
    SAMPLERS,
    GenDDPredictor,
    Sampling,
    apply_linear_map,
    fit_linear_map,
    linear_map_statistics,
    one_step_x0,
    setting_record,
    sweep_name,
)
from kdbench.models import Network, Outputs

__all__ = ["PREDICTORS", "SAMPLERS", "WARM_PROJECTORS", "GenDD", "Sampling", "apply_linear_map", "beta2_at",
           "contract", "feature_mixup", "fit_linear_map", "linear_map_statistics", "one_step_x0",
           "split_tokens", "strict_fp32", "sweep_name", "warm_projector_for"]

WARM_PROJECTORS = ("auto", "linear")


def warm_projector_for(student_dim: int, teacher_dim: int, kind: str = "auto") -> nn.Module:
    """The warm start's projector from the student's feature to the teacher head's input: ``Linear(F_s -> D)``,
    or, with ``auto`` (the authors' code, diff_model.py stage-1), the identity when ``F_s == D``."""
    if kind == "auto" and student_dim == teacher_dim:
        return nn.Identity()
    return nn.Linear(student_dim, teacher_dim)


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


def feature_mixup(z: torch.Tensor, target: torch.Tensor, m: float,
                  perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix condition and target with the same weight and permutation: ``m a + (1 - m) a[perm]``."""
    return m * z + (1 - m) * z[perm], m * target + (1 - m) * target[perm]


def beta2_at(step: int, total: int, beta2_min: float, beta2_max: float = 0.999) -> float:
    """AdamW's beta2 ramped per step on a cosine from ``beta2_min`` (step 0) to ``beta2_max`` (last step)."""
    progress = min(1.0, step / max(1, total - 1))
    return beta2_max - (beta2_max - beta2_min) * 0.5 * (1 + math.cos(math.pi * progress))


@register_method("gendd")
class GenDD(GenDDPredictor, StepHooks, RecordExtras, Method):
    """Generative Distribution Distillation; defaults are the authors' CIFAR-100 settings."""

    needs = Needs(labels=False, teacher=True)
    description = "GenDD: diffusion head samples teacher features given the student's; frozen teacher head"
    uses = "pooled feature, teacher classifier"
    report_hints = ReportHints(
        label="GenDD",
        predictor_settings="sweep_settings", own_predictor_settings="sampler",
        sweep_x="steps", sweep_series=("sampler", "samples", "cfg", "start_step"),
        setting_text="{sampler} K={steps} x{samples} cfg {cfg:g} t{start_step}",
        setting_labels=(("distilled", "linear map of LN(f_s)"),),
        reference=True, parameter_curves=("token_dim", "smooth", "sample_steps"))

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
        self.cond_norm = nn.LayerNorm(student.feature_dim)
        learn_sigma = learn_sigma and objective == "diffusion"  # a velocity head has no variance output
        self.head = DiffusionHead(token_dim, student.feature_dim, self.num_tokens, width, depth, learn_sigma)
        self.diffusion = GaussianDiffusion(diffusion_steps, learn_sigma)
        self.flow = RectifiedFlow(time_scale=float(diffusion_steps)) if objective == "flow" else None
        self._init_prediction(sampler=sampler, sample_steps=sample_steps, start_step=start_step,
                              num_samples=num_samples, cfg=cfg, temperature=temperature, sample_seed=sample_seed,
                              eval_sweep=eval_sweep)
        self.warm_projector = warm_projector_for(student.feature_dim, dim, warm_projector) \
            if warm_start_epochs > 0 else None
        classifier = teacher.classifier
        self.register_buffer("teacher_weight", classifier.weight.detach().clone())
        self.register_buffer("teacher_bias", classifier.bias.detach().clone())
        object.__setattr__(self, "_student_fc", student.classifier)  # trained as a probe, owned by the student
        # norm of the training targets over the current epoch (a buffer: checkpointed, so resumed runs agree)
        self.register_buffer("target_norm_stats", torch.zeros(2, dtype=torch.float64))

    # ------------------------------------------------------------------ training
    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        """The diffusion (or flow) loss of the head on the contracted, mixed, tokenized teacher targets given
        the student's condition, and the probe's CE on the detached feature where there are labels."""
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
        """The target-norm statistics describe one epoch: reset them."""
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

    def _warm_logits(self, s: Outputs) -> torch.Tensor:
        return F.linear(self.warm_projector(s.feature), self.teacher_weight, self.teacher_bias)

    # ------------------------------------------------------------------ record
    def extras(self) -> dict[str, dict[str, Any]]:
        """The head's cost per image, and diagnostics: target and sampled norms, the samplers, the sweep's
        settings and the distilled map's fit."""
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
                            "sweep_settings": {name: setting_record(st) for name, st in self.sweep.items()},
                            **({"distilled_fit": self.distill_fit} if self.distill_fit else {})},
        }
