"""The plain U-Net a user would train instead: MONAI's ``BasicUNet`` with the student contract.

The baseline every comparison includes (``StudentConfig.architecture = "unet"``,
``from_scratch: true``): a 2D U-Net (Ronneberger et al. 2015) as MONAI builds it
(``monai.networks.nets.BasicUNet``: features w, w, 2w, 4w, 8w and w with w =
``StudentConfig.unet_width``, 32 by default as in MONAI, instance normalisation, LeakyReLU,
1.98 M parameters for 3 input channels and 2 classes), trained from scratch on the labels with
the student's loss (Dice + cross-entropy), augmentation and schedule, which are nnU-Net's 2D
defaults in spirit.

It is also a student that can be distilled (``from_scratch: false``): its contracting path's
maps are features as the other students' are, "neck" the bottleneck (stride 16, 8w channels:
256 by default, SAM's embedding width) and "down_1" to "down_3" the maps at strides 2, 4 and 8,
so TS-KD hands it the teacher's features and masks like any student.

Input: float (B, 3, S, S) in [0, 1], S a multiple of 16; output: logits (B, num_classes, S, S).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.models.student_base import EncoderDecoderStudent
from tskd.models.student_checks import check_build

STRIDE = 16  # four 2x poolings
ENCODER = ("conv_0", "down_1", "down_2", "down_3", "down_4")  # BasicUNet's contracting path


class UNetBaseline(EncoderDecoderStudent):
    """MONAI ``BasicUNet`` (2D, 3 input channels) with the methods the pipeline calls.

    Features: "neck" (B, 8w, S/16, S/16), "down_k" (B, c_k, S/2^k, S/2^k) for k = 1, 2, 3
    (c = w, 2w, 4w).

    Args:
        cfg: The student settings (``architecture`` is recorded as "unet"; ``unet_width`` sets
            the widths; the ViT and CNN settings are unused).
        num_classes: Output classes, background included (at least 1).
        image_size: S, the square input side in pixels, a multiple of 16.

    Raises:
        TskdInputError: An image size that is not a multiple of 16, no class, or a width
            below 1.
    """

    def __init__(self, cfg: StudentConfig, num_classes: int, image_size: int) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        check_build(image_size, STRIDE, num_classes, "the U-Net")
        self.cfg = dataclasses.replace(cfg, architecture="unet")  # what a bundle records
        self.image_size, self.num_classes = image_size, num_classes
        w = int(cfg.unet_width)
        if w < 1:
            raise TskdInputError(f"the U-Net's width (student.unet_width) must be at least 1, "
                                 f"got {cfg.unet_width}")
        self.net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=num_classes,
                             features=(w, w, 2 * w, 4 * w, 8 * w, w))
        # the contracting path's maps: name -> channels (strides 2, 4, 8 and 16)
        self.feature_dims: dict[str, int] = {"down_1": w, "down_2": 2 * w, "down_3": 4 * w,
                                             "neck": 8 * w}

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The contracting path's maps x0 (stride 1) ... x4 (stride 16), as BasicUNet's."""
        net = self.net
        maps = [net.conv_0((x - 0.5) / 0.5)]
        for down in (net.down_1, net.down_2, net.down_3, net.down_4):
            maps.append(down(maps[-1]))
        return maps

    def _decode(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The expanding path and the classifier, as ``BasicUNet.forward`` runs them."""
        net = self.net
        u = net.upcat_4(maps[4], maps[3])
        u = net.upcat_3(u, maps[2])
        u = net.upcat_2(u, maps[1])
        return net.final_conv(net.upcat_1(u, maps[0]))

    def _named(self, maps: list[torch.Tensor], layers: Sequence[str]) -> dict[str, torch.Tensor]:
        names = ("down_1", "down_2", "down_3", "neck")
        return {n: f for n, f in zip(names, maps[1:]) if n in layers}

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the expanding path and the classifier.

        Returns:
            The parameters, in module order.
        """
        return [p for name, m in self.net.named_children() if name not in ENCODER
                for p in m.parameters()]

    def reset_head(self, num_classes: int) -> None:
        """Replace the final 1x1 convolution for another class count.

        Args:
            num_classes: The new number of classes, background included.
        """
        old = self.net.final_conv
        self.net.final_conv = nn.Conv2d(old.in_channels, num_classes, 1).to(old.weight.device)
        self.num_classes = num_classes

    def param_count(self) -> int:
        """Number of parameters.

        Returns:
            The count.
        """
        return sum(p.numel() for p in self.parameters())
