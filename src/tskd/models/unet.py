"""The plain U-Net a user would train instead: MONAI's ``BasicUNet`` with the student contract.

The baseline every comparison includes (``StudentConfig.architecture = "unet"``): a 2D U-Net
(Ronneberger et al. 2015) as MONAI builds it (``monai.networks.nets.BasicUNet``: features 32,
32, 64, 128, 256 and 32, instance normalisation, LeakyReLU, 1.98 M parameters for 3 input
channels and 2 classes), trained from scratch on the labels with the student's loss (Dice +
cross-entropy), augmentation and schedule, which are nnU-Net's 2D defaults in spirit. It has no
features to distil: it exists to show what the labels alone give.

Input: float (B, 3, S, S) in [0, 1], S a multiple of 16; output: logits (B, num_classes, S, S).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from tskd.config import StudentConfig
from tskd.errors import TskdInputError
from tskd.models.student_checks import check_build, check_input

STRIDE = 16  # four 2x poolings
ENCODER = ("conv_0", "down_1", "down_2", "down_3", "down_4")  # BasicUNet's contracting path


class UNetBaseline(nn.Module):
    """MONAI ``BasicUNet`` (2D, 3 input channels) with the methods the pipeline calls.

    Args:
        cfg: The student settings (``architecture`` is recorded as "unet"; the rest unused).
        num_classes: Output classes, background included (at least 1).
        image_size: S, the square input side in pixels, a multiple of 16.

    Raises:
        TskdInputError: An image size that is not a multiple of 16, or no class.
    """

    def __init__(self, cfg: StudentConfig, num_classes: int, image_size: int) -> None:
        super().__init__()
        from monai.networks.nets import BasicUNet

        check_build(image_size, STRIDE, num_classes, "the U-Net")
        self.cfg = dataclasses.replace(cfg, architecture="unet")  # what a bundle records
        self.image_size, self.num_classes = image_size, num_classes
        self.net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=num_classes)
        self.feature_dims: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, S, S) for images (B, 3, S, S), float RGB in [0, 1].

        Args:
            x: The images.

        Returns:
            The logits.

        Raises:
            TskdInputError: ``x`` is not (B, 3, S, S).
        """
        check_input(x, self.image_size)
        return self.net((x - 0.5) / 0.5)

    def check_layers(self, layers: Sequence[str]) -> None:
        """Refuse every feature name: the baseline is trained from scratch, never distilled.

        Args:
            layers: Requested feature names.

        Raises:
            TskdInputError: Any name given.
        """
        if layers:
            raise TskdInputError("the U-Net baseline has no features to distil; train it from "
                                 "scratch (student.from_scratch: true)")

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
