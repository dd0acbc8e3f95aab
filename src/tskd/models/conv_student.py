"""The convolutional student: a timm CNN encoder with a U-Net decoder and a SAM-like neck.

Input: float (B, 3, S, S) in [0, 1], S a multiple of 32; output: logits (B, num_classes, S, S),
the contract of the ViT-Tiny student (``tskd.models.student``), so distillation, fine-tuning,
bundles and prediction take either.

Why a CNN. A ViT-Tiny trained from ten images learns almost nothing (its patch grid and
attention have no locality prior); the TS-KD paper distils into it for that reason. A CNN
encoder with a U-Net decoder keeps the inductive bias of the U-Net a user would otherwise train,
and still takes the teacher's knowledge: EdgeSAM (Zhou et al., 2023) and EfficientViT-SAM
(Zhang et al., 2024) distil SAM's image encoder into such encoders. The encoder is any timm
model with ``features_only`` at strides 16 and 32, randomly initialised, never downloaded.
The default, ``mobilenetv3_large_100`` (MobileNetV3-Large, Howard et al. 2019), was chosen on a
development draw (kidney_us seed 100, never a benchmark seed) among backbones whose student is
no slower than 45 ms per 256x256 image on two CPU threads: trained from scratch on its 10
labels for 300 steps, test Dice of that draw 0.708 (MobileNetV4-Conv-Small 0.679,
EfficientNet-B0 0.645, the ViT-Tiny 0.571; ResNet-18 was slower than the ViT-Tiny). It keeps
timm's BatchNorm, whose running statistics the engine checkpoints; a ResNet gets GroupNorm.

Decoder. The stride-16 features pass through the neck (1x1 convolution to ``neck_dim`` = 256
channels, SAM's image-embedding width, and LayerNorm2d as SAM's neck) and are the distillation
target "neck"; the decoder then climbs from the deepest features to stride 2 (bilinear 2x
upsampling, concatenation with the encoder's features of that scale, two 3x3 convolutions with
GroupNorm and GELU at each step), is upsampled to full resolution and joined there with a
full-resolution stem (one 3x3 convolution of the image), so structures one or two pixels wide
(retinal vessels) are placed per pixel. Upsampling is always bilinear followed by convolution
(resize-convolution, Odena et al. 2016, "Deconvolution and checkerboard artifacts"): transposed
convolutions and PixelShuffle heads paint a regular grid of dots on an untrained or
little-trained model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.models.student_base import EncoderDecoderStudent
from tskd.models.student_checks import check_build

STRIDE = 32  # the deepest encoder stride: the input side must be a multiple of it
NECK_STRIDE = 16  # the features the neck turns into the distillation target
PIXEL_MEAN = PIXEL_STD = (0.5, 0.5, 0.5)  # as the ViT student


def conv_norm_act(cin: int, cout: int) -> nn.Sequential:
    """3x3 convolution (no bias), GroupNorm (up to 8 groups) and GELU.

    Args:
        cin: Input channels.
        cout: Output channels.

    Returns:
        The block; it keeps the spatial size.
    """
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(math.gcd(8, cout), cout),
        nn.GELU(),
    )


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, two 3x3 conv blocks.

    Args:
        cin: Channels of the coarser input.
        skip: Channels of the finer skip features.
        cout: Output channels.
    """

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(conv_norm_act(cin + skip, cout), conv_norm_act(cout, cout))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, cin, h, w) and (B, skip, H, W) -> (B, cout, H, W).

        Args:
            x: The coarser features.
            skip: The finer features whose size the output takes.

        Returns:
            The fused features.
        """
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([x, skip], dim=1))


def _group_norm(channels: int, **kwargs: Any) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups, taking the keywords timm passes (device, dtype)."""
    return nn.GroupNorm(math.gcd(32, channels), channels, **kwargs)


def _encoder(backbone: str) -> nn.Module:
    """A timm ``features_only`` encoder, GroupNorm for ResNets (see the module docstring)."""
    import timm

    kwargs = {"norm_layer": _group_norm} if backbone.startswith("resnet") else {}
    try:
        return timm.create_model(backbone, pretrained=False, features_only=True, **kwargs)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise TskdInputError(f"student.backbone {backbone!r} is not a timm CNN that can give "
                             f"features at several scales ({exc})") from None


class ConvStudent(EncoderDecoderStudent):
    """CNN encoder + U-Net decoder with the student contract; see the module docstring.

    Features: "neck" (B, neck_dim, S/16, S/16) and "stage{i}", the encoder's i-th map.

    Args:
        cfg: The architecture (``StudentConfig``: backbone, neck_dim, decoder_channels).
        num_classes: Output classes, background included (at least 1).
        image_size: S, the square input side in pixels, a multiple of 32.

    Raises:
        TskdInputError: An image size that is not a multiple of 32, no class, or a backbone
            timm cannot build with features at strides 16 and 32.
    """

    def __init__(self, cfg: StudentConfig, num_classes: int, image_size: int) -> None:
        super().__init__()
        from timm.layers import LayerNorm2d

        check_build(image_size, STRIDE, num_classes, "the convolutional student")
        self.cfg = dataclasses.replace(cfg, architecture="conv")  # what a bundle records
        self.image_size, self.num_classes = image_size, num_classes
        self.encoder = _encoder(cfg.backbone)
        chans = list(self.encoder.feature_info.channels())
        strides = list(self.encoder.feature_info.reduction())
        if NECK_STRIDE not in strides or strides[-1] != STRIDE:
            raise TskdInputError(f"student.backbone {cfg.backbone!r} gives features at strides "
                                 f"{strides}; the student needs 16 and 32")
        self._neck_index = strides.index(NECK_STRIDE)
        self.neck = nn.Sequential(nn.Conv2d(chans[self._neck_index], cfg.neck_dim, 1, bias=False),
                                  LayerNorm2d(cfg.neck_dim))
        chans[self._neck_index] = cfg.neck_dim
        widths = [max(16, cfg.decoder_channels * 2 >> k) for k in range(len(chans) - 1)]
        blocks, cin = [], chans[-1]
        for skip, cout in zip(chans[-2::-1], widths):
            blocks.append(UpBlock(cin, skip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        full = max(8, cfg.decoder_channels // 4)
        self.stem = conv_norm_act(3, full)
        self.final = UpBlock(cin, full, full)
        self.head = nn.Conv2d(full, num_classes, 1)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.feature_dims: dict[str, int] = {"neck": cfg.neck_dim}
        self.feature_dims |= {f"stage{i}": c for i, c in enumerate(chans) if i != self._neck_index}

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        xn = (x - self.pixel_mean) / self.pixel_std
        feats = list(self.encoder(xn))
        feats[self._neck_index] = self.neck(feats[self._neck_index])
        return xn, feats

    def _named(self, state: tuple[torch.Tensor, list[torch.Tensor]],
               layers: Sequence[str]) -> dict[str, torch.Tensor]:
        feats = state[1]
        names = [("neck" if i == self._neck_index else f"stage{i}") for i in range(len(feats))]
        return {n: f for n, f in zip(names, feats) if n in layers}

    def _decode(self, state: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        xn, feats = state
        y = feats[-1]
        for block, skip in zip(self.decoder, feats[-2::-1]):
            y = block(y, skip)
        return self.head(self.final(y, self.stem(xn)))

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters that only the segmentation output uses (decoder, stem, final, head).

        Returns:
            The parameters, in module order.
        """
        mods = (self.decoder, self.stem, self.final, self.head)
        return [p for m in mods for p in m.parameters()]

    def reset_head(self, num_classes: int) -> None:
        """Replace the 1x1 classifier for another class count (e.g. a task-agnostic student).

        Args:
            num_classes: The new number of classes, background included.
        """
        old = self.head
        self.head = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        self.num_classes = num_classes

    def param_count(self) -> int:
        """Number of parameters (all of them, trainable or not).

        Returns:
            The count.
        """
        return sum(p.numel() for p in self.parameters())
