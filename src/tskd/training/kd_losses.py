"""The knowledge-distillation losses of stage 3 (``tskd.training.distill``).

Feature maps are compared after ``channel_norm`` (a LayerNorm over channels without affine, so
layers of different scales weigh alike), as FitNets' hint loss compares a regressor's output
with the teacher's layer (Romero et al. 2015); outputs by Hinton et al. 2015's temperature-scaled
soft-target loss, at every pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over channels at each position, no affine: makes layers' scales comparable.

    Args:
        x: a feature map (B, C, H, W), any float dtype.

    Returns:
        float32 (B, C, H, W) with zero mean and unit variance over C at each position.
    """
    x = x.float().permute(0, 2, 3, 1)
    return F.layer_norm(x, x.shape[-1:]).permute(0, 3, 1, 2)


def kd_output_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 per pixel, averaged; teacher resized to student.

    Args:
        student_logits: (B, C, h, w), any float dtype.
        teacher_logits: (B, C, H', W'); resized bilinearly to (h, w) when they differ.
        temperature: T > 0 (``distill.temperature``, default 2.0).

    Returns:
        float32 scalar: KL summed over classes, averaged over images and pixels, times T^2
        (Hinton et al. 2015's soft-target loss at every pixel; T^2 keeps the gradients' scale).
    """
    s = student_logits.float()
    t = teacher_logits.float()
    if t.shape[-2:] != s.shape[-2:]:
        t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
    T = float(temperature)
    kl = F.kl_div(
        F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="none", log_target=True
    )
    return kl.sum(dim=1).mean() * T * T
