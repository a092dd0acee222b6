"""The training loop's per-step record: losses, loss terms and gradient norms kept on the device and read a few
dozen steps at a time (divergence, loss spikes, the grad-norm peak, the terms' sums)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence

import torch

from kdbench import distributed


class SpikeCounter:
    """Counts loss spikes: a step whose loss is above ``factor`` x the median of the previous ``window`` steps."""

    def __init__(self, factor: float = 3.0, window: int = 50, warmup: int = 10) -> None:
        self.factor, self.warmup = factor, warmup
        self.recent: deque[float] = deque(maxlen=window)

    def observe(self, loss: float) -> int:
        """Record one step's loss; 1 when it is a spike, else 0."""
        spike = len(self.recent) >= self.warmup and loss > self.factor * statistics.median(self.recent)
        self.recent.append(loss)
        return int(spike)


def total_grad_norm(grads: list[torch.Tensor], one_group: bool = False) -> torch.Tensor:
    """The 2-norm of all (at least one) gradients together: ``torch.nn.utils.get_total_norm``'s value.
    ``one_group``: the caller knows they share one device and dtype, so torch's grouping by both is skipped (every
    step pays for it: it was half the cost of the norm on a CPU)."""
    if not one_group:
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def one_group(params: list[torch.Tensor]) -> bool:
    """True when ``params`` share one device and dtype (their gradients then do too)."""
    return len({(p.device, p.dtype) for p in params}) <= 1


SYNC_EVERY = 32
"""Training steps between two reads of the step losses and gradient norms on the host. Reading a value of the
device after every step would make a GPU wait for each step; the values are kept on the device and checked in
order every ``SYNC_EVERY`` steps and at the epoch's end, so the divergence decision, the spike count and the
grad-norm peak are those of checking every step (a diverged epoch ends at the sync after its first bad step and
is recorded at that step; the steps taken after it are lost with the run, and an error they raise, such as an
SVD of non-finite features, is reported as that divergence)."""


class StepLog:
    """The per-step losses, loss terms and gradient norms of one epoch, kept on the device and read ``SYNC_EVERY``
    steps at a time: whether a step diverged (first bad step wins), loss spikes, the grad-norm peak, non-finite
    norms and the sums of the terms and of the loss. Work that needs no per-step value is done once per read:
    stacking and summing the terms, taking the norms of held gradients (:meth:`add`), and (unless clipping needs
    each step's norm at once) reducing each step's per-parameter norms to its total, for all the pending steps in
    one stack and one reduction."""

    def __init__(self, spikes: SpikeCounter, bound: float, hold: int = 0) -> None:
        self.spikes_seen, self.bound = spikes, bound  # the phase's spike counter; the loss bound of divergence
        self.hold = hold  # steps whose gradients may be kept until their norms are taken together
        self.losses: list[torch.Tensor] = []
        self.terms: list[Sequence[torch.Tensor]] = []
        self.norms: list[torch.Tensor | list[torch.Tensor]] = []
        self.held: list[list[torch.Tensor]] = []
        self.checked = 0
        self.grad_norm_max = 0.0
        self.spikes = self.nonfinite_grads = 0
        self.term_sums: torch.Tensor | None = None  # per term, over the steps read so far (rank-local)
        self.loss_sum: torch.Tensor | None = None

    def add(self, loss: torch.Tensor, terms: Sequence[torch.Tensor],
            norm: torch.Tensor | list[torch.Tensor] | None = None, grads: list[torch.Tensor] | None = None) -> None:
        """One step's (detached, float32) loss, its terms (scalars, in the method's order; the same number every
        step), and either its gradient ``norm`` (the total, or the per-parameter norms it is the 2-norm of) or,
        when the log holds gradients (``hold`` > 0), the step's ``grads`` themselves: their norms are taken when
        ``hold`` steps are held or the log is read, for all of them together. The caller must not
        change held gradients in place (the loop gives fresh ones every step: ``zero_grad(set_to_none=True)``)."""
        self.losses.append(loss)
        self.terms.append(terms)
        if grads is None:
            self._take_held_norms()  # keeps the norms in step order
            self.norms.append(norm if norm is not None else torch.zeros((), device=loss.device))
            return
        self.held.append(grads)
        if len(self.held) >= self.hold:
            self._take_held_norms()

    def _take_held_norms(self) -> None:
        """The total gradient norm of each held step, for all of them at once; the gradients are let go. Where
        every held step has a gradient of the same shape at each position (the same parameters), each position's
        gradients are stacked over the steps and reduced per step (a few ops per parameter instead of one per
        gradient: 4x faster for a small CPU model); otherwise each gradient's norm is taken."""
        if not self.held:
            return
        columns = list(zip(*self.held, strict=False))
        if len({len(grads) for grads in self.held}) == 1 and all(len({g.shape for g in c}) == 1 for c in columns):
            steps = len(self.held)
            per_position = [torch.linalg.vector_norm(torch.stack(c).reshape(steps, -1), dim=1) for c in columns]
            self.norms.append(torch.linalg.vector_norm(torch.stack(per_position), dim=0))
        else:
            flat = torch._foreach_norm([g for grads in self.held for g in grads])
            start = 0
            for grads in self.held:
                self.norms.append(list(flat[start:start + len(grads)]))
                start += len(grads)
        self.held = []

    def _step_norms(self) -> list[float]:
        """The pending steps' total gradient norms, in order. An entry of ``norms`` is one step's total (0-d),
        one step's per-parameter norms (a list), or the totals of consecutive held steps (1-d)."""
        if all(isinstance(n, list) for n in self.norms) and len({len(n) for n in self.norms}) == 1:
            per_parameter = torch.stack([v for n in self.norms for v in n]).view(len(self.norms), -1)
            return torch.linalg.vector_norm(per_parameter, dim=1).tolist()
        return torch.cat([n.reshape(-1) if isinstance(n, torch.Tensor)
                          else torch.linalg.vector_norm(torch.stack(n)).reshape(1) for n in self.norms]).tolist()

    def check(self) -> str | None:
        """Read the pending steps in order; the reason of the first diverged one, else None."""
        if not self.losses:
            return None
        self._take_held_norms()
        stacked = torch.stack(self.losses)
        losses = distributed.sum_across(stacked.double()) / distributed.world_size()
        for step, (value, norm) in enumerate(zip(losses.tolist(), self._step_norms(), strict=True),
                                             start=self.checked + 1):
            if not math.isfinite(value):
                return f"non-finite loss {value} at step {step}"
            if value > self.bound:
                return f"loss {value:.4g} at step {step} above the bound {self.bound:g}"
            if math.isfinite(norm):
                self.grad_norm_max = max(self.grad_norm_max, norm)
            else:
                self.nonfinite_grads += 1
            self.spikes += self.spikes_seen.observe(value)
        per_step = torch.stack([term for step in self.terms for term in step]).view(len(self.terms), -1)
        terms, loss = per_step.sum(dim=0), stacked.sum()
        self.term_sums = terms if self.term_sums is None else self.term_sums + terms
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.checked += len(self.losses)
        self.losses, self.terms, self.norms = [], [], []
        return None


HOLD_BYTES = 32 << 20
"""At most this many bytes of gradients are kept for norms taken later (:class:`StepLog`): 9 steps of a CIFAR
ResNet-56, 6 of a resnet8x4, ``SYNC_EVERY`` of the small CPU models, none of an ImageNet ResNet-18 (its norms are
taken every step)."""


def leaves_gradients_alone(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` only reads the parameters' gradients (so held ones keep their values). AdamW
    does (its decay is applied to the weights; ``maximize`` negates a copy). torch's SGD does unless a group has
    Nesterov momentum, no weight decay and no ``maximize``: its multi-tensor path (the default on GPUs) then adds
    the momentum buffers into the gradients themselves. Any other optimizer: not known, so no."""
    if isinstance(optimizer, torch.optim.AdamW):
        return True
    if type(optimizer) is torch.optim.SGD:
        return not any(g.get("nesterov") and not g.get("weight_decay") and not g.get("maximize")
                       for g in optimizer.param_groups)
    return False


def steps_to_hold(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], one_group: bool,
                  clip: float | None, hooks: bool) -> int:
    """How many steps' gradients the step log may hold before taking their norms: none where the norm is needed at
    once (clipping), where several devices or dtypes mix, or where the optimizer or a method's step ``hooks`` could
    change gradients in place after the log got them; else as many as ``HOLD_BYTES`` allows, at most
    ``SYNC_EVERY``."""
    if clip or not one_group or hooks or not params or not leaves_gradients_alone(optimizer):
        return 0
    grad_bytes = sum(p.numel() * p.element_size() for p in params)
    return min(SYNC_EVERY, HOLD_BYTES // max(1, grad_bytes))
