"""A light high-resolution head beside SAM's mask decoder, so the teacher can draw thin structures.

SAM's decoder predicts masks at four times its token grid: 64x64 for a 256-pixel input with
16-pixel patches, i.e. one logit per 4x4 pixels. A vessel one or two pixels wide cannot be drawn
on that grid (``benchmarks/results/resolution_ceiling.json``: the best Dice a 64x64 grid can reach
on the retina task is 0.511). ``RefineHead`` adds a residual correction at full input resolution,
computed from the decoder's upscaled features, its class logits and the image itself (the pixel
path a U-Net decoder has); its last layer starts at zero, so an untrained head leaves SAM's
output as it was, and official checkpoints, which have no such head, train it during adaptation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# channels of the head's convolutions; measured on development draws (benchmarks/teacher_refine.py)
DEFAULT_WIDTH = 32


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, GroupNorm (batch-size independent, as batches are small), GELU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(min(8, cout), cout),
        nn.GELU(),
    )


class RefineHead(nn.Module):
    """Full-resolution mask logits: SAM's low-resolution logits plus a learned correction.

    Shapes: image (B, 3, S, S) float in [0, 1]; decoder features (B, F, s, s) and low logits
    (B, M, s, s) for M masks (classes, or SAM's mask outputs) with s = S / 4 ** k, k >= 0 (SAM's
    ``output_upscaling`` output, 4x the token grid); returns (B, M, S, S). The head is
    class-agnostic: each mask is corrected with the same weights, from the image, the
    features, its own logits and the strongest other mask's (what it competes with under a
    softmax), so a head pretrained on prompted masks serves any number of classes. The
    correction is computed at S / 2, then at S with the image's full-resolution features; its
    last 1x1 convolution is zero-initialised, so a new head returns the bilinearly upsampled
    low logits unchanged.

    Args:
        feature_channels: F, channels of the decoder's upscaled features (SAM: prompt_dim / 8).
        width: channels of the head's convolutions at S / 2 (half as many at S).
    """

    def __init__(self, feature_channels: int, width: int = DEFAULT_WIDTH) -> None:
        super().__init__()
        half = max(width // 2, 8)
        self.full = _conv(3, half)  # image features at S
        self.down = _conv(half, half, stride=2)  # ... and at S / 2
        # per mask: the shared features, its own logits and the strongest other mask's logits
        self.mid = nn.Sequential(_conv(half + feature_channels + 2, width), _conv(width, width))
        self.fuse = _conv(width + half, half)
        self.out = nn.Conv2d(half, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self, image: torch.Tensor, features: torch.Tensor, low_logits: torch.Tensor
    ) -> torch.Tensor:
        """Upsample ``low_logits`` to the image's size and add the learned correction.

        Args:
            image: (B, 3, S, S) float in [0, 1], S even.
            features: (B, F, s, s), the decoder's upscaled features.
            low_logits: (B, M, s, s), the decoder's mask logits.

        Returns:
            Mask logits (B, M, S, S), in the dtype of ``low_logits``.
        """
        b, m = low_logits.shape[:2]
        size = tuple(image.shape[-2:])
        half_size = (size[0] // 2, size[1] // 2)
        full = self.full(image.to(low_logits.dtype) * 2.0 - 1.0)
        half = self.down(full)
        feats = F.interpolate(features, size=half_size, mode="bilinear", align_corners=False)
        low_half = F.interpolate(low_logits, size=half_size, mode="bilinear", align_corners=False)
        shared = torch.cat([half, feats], dim=1)  # (B, half + F, S/2, S/2), the same per mask
        own = low_half.unsqueeze(2)
        ctx = torch.cat([
            shared.unsqueeze(1).expand(-1, m, -1, -1, -1), own, _strongest_other(low_half)
        ], dim=2).flatten(0, 1)
        mid = F.interpolate(self.mid(ctx), size=size, mode="bilinear", align_corners=False)
        full_m = full.unsqueeze(1).expand(-1, m, -1, -1, -1).flatten(0, 1)
        delta = self.out(self.fuse(torch.cat([mid, full_m], dim=1))).reshape(b, m, *size)
        base = F.interpolate(low_logits, size=size, mode="bilinear", align_corners=False)
        return base + delta


def _strongest_other(logits: torch.Tensor) -> torch.Tensor:
    """(B, M, 1, H, W): for each mask, the largest logit of the other masks (0 when M is 1).

    What a mask competes with under a softmax over classes; a per-mask head needs it to move a
    boundary between two classes.
    """
    b, m, h, w = logits.shape
    if m == 1:
        return torch.zeros_like(logits).unsqueeze(2)
    top = logits.topk(2, dim=1)
    first, second = top.values[:, :1], top.values[:, 1:2]
    is_top = torch.arange(m, device=logits.device).view(1, m, 1, 1) == top.indices[:, :1]
    return torch.where(is_top, second, first).unsqueeze(2)


def refine_param_count(feature_channels: int, width: int) -> int:
    """Parameters of ``RefineHead(feature_channels, width)``, from the settings alone.

    Args:
        feature_channels: F, as ``RefineHead``.
        width: as ``RefineHead``; 0 counts no head.

    Returns:
        The number of scalar parameters (0 for ``width`` 0).
    """
    if width <= 0:
        return 0
    half = max(width // 2, 8)

    def conv(cin: int, cout: int) -> int:  # 3x3 without bias + GroupNorm's scale and shift
        return 9 * cin * cout + 2 * cout

    return (conv(3, half) + conv(half, half) + conv(half + feature_channels + 2, width)
            + conv(width, width) + conv(width + half, half) + half + 1)
