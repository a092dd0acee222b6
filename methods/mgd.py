"""Yang et al., "Masked Generative Distillation" (ECCV 2022, arXiv 2205.01529), as the authors' classification
code (github.com/yzd-v/MGD, ``cls/``) runs it.

The student's last stage map ``f_s`` is aligned to the teacher's width (``A``: a 1x1 conv, only when the widths
differ), randomly masked (``M``: 0 on masked entries, 1 elsewhere), and a generation block
``G = conv3x3 -> ReLU -> conv3x3`` (teacher width in and out) must recover the teacher's full map ``f_t``:

    L_mgd = alpha * sum_{c,h,w} (G(M * A(f_s)) - f_t)^2 / N        L = ce * CE + L_mgd

(``nn.MSELoss(reduction='sum')`` over the whole batch divided by the batch size ``N``). ``A`` and ``G`` train with
the student (the authors' ``base_parameters()``) and are dropped after training: inference is the student alone.

Defaults and where they come from (yzd-v/MGD, commit 2c9da0b):

- ``weight`` (alpha_mgd) 7e-5: ``cls/configs/distillers/mgd/res34_distill_res18_img.py`` and
  ``res50_distill_mv1_img.py`` (``alpha_mgd=0.00007``), also ``MGDLoss.__init__`` in
  ``cls/mmcls/distillation/losses/mgd.py``. The loss is a *sum* over C*H*W, so the weight depends on the map size:
  the authors' CIFAR-100 config (yzd-v/cls_KD ``configs/distillers/cifar100/res34_distill_res18_cifar.py``,
  ResNet-34 -> ResNet-18 at 4x4x512) uses ``alpha_mgd=0.0012``.
- ``mask_ratio`` (lambda_mgd) 0.15: the same two configs (``lambda_mgd=0.15``). The docstring of ``MGDLoss`` says
  "Defaults to 0.5"; the code's default and both configs say 0.15.
- ``mask_mode`` "channel": ``cls/mmcls/distillation/losses/mgd.py`` ``get_dis_loss`` draws ``rand(N, C, 1, 1)`` (C = the
  teacher's width: the mask acts after the alignment) and zeroes entries where ``u < lambda``; the spatial mask
  (``rand(N, 1, H, W)``) is commented out there. **Code vs paper:** the paper masks random *pixels* (spatial
  positions, shared across channels); the detection and segmentation code does so (``det/mmdet/distillation/
  losses/mgd.py``: ``rand(N, 1, H, W)``, zero where ``u > 1 - lambda``), but the released classification code masks
  whole *channels*. The author (yzd-v/MGD issue #17) says the paper's classification runs used the spatial mask and
  that the channel mask is somewhat better for classification. kdbench follows the classification code;
  ``mask_mode="spatial"`` gives the paper's/detection variant (same draw and threshold direction as ``det/``).
- ``stage`` -1 (the last stage): ``cls/mmcls/distillation/distillers/classification_distiller.py`` distils
  ``fea_s[-1], fea_t[-1]`` of the backbones (ResNet ``layer4``, MobileNetV1's last block, after the ReLU).
- ``ce`` 1.0, and no KD term: the same distiller adds the student head's own loss (mmcls ``CrossEntropyLoss``,
  ``loss_weight=1.0``) and nothing else.
- the alignment ``nn.Conv2d(C_s, C_t, 1)`` with bias, only when ``C_s != C_t``; the generation block
  ``Conv2d(C_t, C_t, 3, padding=1) -> ReLU -> Conv2d(C_t, C_t, 3, padding=1)``; both with PyTorch's default
  initialisation (``MGDLoss.__init__``; nothing re-initialises them); the teacher's map is not normalised.

Recipe notes for suites (not hyper-parameters of this class): the authors' configs build on mmcls 0.19's
``resnet18_b32x8_imagenet.py`` / ``imagenet_bs256.py`` (batch 8x32; SGD lr 0.1, momentum 0.9, weight decay 1e-4,
x0.1 at 30/60/90, 100 epochs, as in mmpretrain's ``configs/_base_/schedules/imagenet_bs256.py``); one optimizer
holds the student *and* A and G (``base_parameters()``); ``res50_distill_mv1_img.py`` adds gradient clipping at max
norm 5. Teachers are mmcls's ResNet-34 (73.62) and ResNet-50 (76.55) checkpoints.

kdbench deviations: the official code asserts equal spatial sizes; here, where they differ, the larger map is
average-pooled to the smaller (as :func:`kdbench.methods.feature_utils.same_size` does for AT), so every pair
runs. Vector stages (MLPs) are read as 1x1 maps. The mask is drawn on the feature's device (the official code
draws it on the CPU and copies it), which changes the random stream, not the distribution. No labels needed (CE
is then dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdbench.method import Batch, Method, Needs, ce_term, register_method
from kdbench.methods.feature_utils import as_map, same_size, stage_tap
from kdbench.models import Network, Outputs

MASK_MODES = ("channel", "spatial")


def draw_mask(shape: torch.Size | tuple[int, ...], ratio: float, mode: str = "channel", *,
              rng: torch.Generator | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """MGD's random keep-mask for a (N, C, H, W) map: 0 on masked entries, 1 elsewhere, a fraction ``ratio``
    masked in expectation. ``channel``: shape (N, C, 1, 1), masked where ``u < ratio`` (the classification code);
    ``spatial``: shape (N, 1, H, W), masked where ``u > 1 - ratio`` (the detection/segmentation code).
    ``u ~ U[0, 1)`` from ``rng`` (on its device) or from the global generator of ``device``."""
    n, c, h, w = shape
    if mode == "channel":
        size: tuple[int, ...] = (n, c, 1, 1)
    elif mode == "spatial":
        size = (n, 1, h, w)
    else:
        raise ValueError(f"mask mode must be one of {', '.join(MASK_MODES)}, got '{mode}'")
    u = torch.rand(size, generator=rng, device=rng.device if rng is not None else device)
    masked = u < ratio if mode == "channel" else u > 1 - ratio
    return (~masked).to(device=device, dtype=dtype)


def mgd_loss(student_map: torch.Tensor, teacher_map: torch.Tensor, generation: nn.Module,
             align: nn.Module | None = None, *, mask: torch.Tensor | None = None, mask_ratio: float = 0.15,
             mask_mode: str = "channel", rng: torch.Generator | None = None) -> torch.Tensor:
    """Unweighted MGD loss ``sum (G(M * A(f_s)) - f_t)^2 / N`` for maps of equal spatial size.

    ``align`` (``A``) maps the student's channels to the teacher's (None: they are equal); ``generation`` is ``G``;
    ``mask`` (``M``, broadcastable to the aligned map, 0 = masked) is drawn with :func:`draw_mask` from
    ``mask_ratio``, ``mask_mode`` and ``rng`` when not given. The teacher's map is detached."""
    if student_map.shape[-2:] != teacher_map.shape[-2:]:
        raise ValueError(f"MGD needs maps of equal spatial size, got {tuple(student_map.shape[-2:])} (student) and "
                         f"{tuple(teacher_map.shape[-2:])} (teacher)")
    aligned = student_map if align is None else align(student_map)
    if mask is None:
        mask = draw_mask(aligned.shape, mask_ratio, mask_mode, rng=rng, device=aligned.device, dtype=aligned.dtype)
    generated = generation(aligned * mask)
    return F.mse_loss(generated, teacher_map.detach(), reduction="sum") / student_map.shape[0]


def generation_block(channels: int) -> nn.Sequential:
    """MGD's generation block at the teacher's width: conv3x3 -> ReLU -> conv3x3 (PyTorch default init)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, channels, 3, padding=1))


@register_method("mgd")
class MGD(Method):
    """Masked generative distillation: a masked, aligned student stage map generates the teacher's, plus CE."""

    needs = Needs(labels=False, teacher=True)
    description = ("MGD: a conv generator recovers the teacher's last stage map from the randomly masked (aligned) "
                   "student map, sum-MSE / batch, plus CE")
    uses = "one stage tap (the last by default) + a 1x1 align conv and a conv3x3-ReLU-conv3x3 generator"

    def __init__(self, student: Network, teacher: Network | None, *, num_classes: int, weight: float = 7e-5,
                 mask_ratio: float = 0.15, mask_mode: str = "channel", stage: int = -1, ce: float = 1.0) -> None:
        super().__init__(student, teacher, num_classes=num_classes)
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mgd: mask_mode must be one of {', '.join(MASK_MODES)}, got '{mask_mode}'")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mgd: mask_ratio must lie in [0, 1], got {mask_ratio}")
        self.weight, self.mask_ratio, self.mask_mode, self.ce = weight, mask_ratio, mask_mode, ce
        s_tap, t_tap = stage_tap(student, stage, "mgd"), stage_tap(teacher, stage, "mgd")
        s_chs, t_chs = student.tap_info(s_tap)[0], teacher.tap_info(t_tap)[0]
        self.align = nn.Conv2d(s_chs, t_chs, 1) if s_chs != t_chs else None
        self.generation = generation_block(t_chs)
        self.needs = Needs(labels=False, teacher=True, student_taps=(s_tap,), teacher_taps=(t_tap,))

    def losses(self, batch: Batch, s: Outputs, t: Outputs | None) -> dict[str, torch.Tensor]:
        fs, ft = same_size(as_map(s.taps[self.needs.student_taps[0]]), as_map(t.taps[self.needs.teacher_taps[0]]))
        loss = mgd_loss(fs, ft, self.generation, self.align, mask_ratio=self.mask_ratio, mask_mode=self.mask_mode)
        return {"mgd": self.weight * loss, **ce_term(batch, s.logits, self.ce)}
