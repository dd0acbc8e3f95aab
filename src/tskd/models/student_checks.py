"""The checks every student architecture makes: its size and classes, and each input batch."""

from __future__ import annotations

import torch

from tskd.errors import TskdInputError


def check_build(image_size: int, multiple: int, num_classes: int, what: str) -> None:
    """Refuse a student size or class count the architecture cannot build.

    Args:
        image_size: The square input side in pixels.
        multiple: What the side must be a multiple of (the architecture's coarsest stride).
        num_classes: Output classes, background included.
        what: The architecture's name in messages ("the convolutional student" ...).

    Raises:
        TskdInputError: ``image_size`` is not a multiple of ``multiple``, or no class.
    """
    if image_size % multiple:
        raise TskdInputError(f"image size {image_size} is not a multiple of {multiple}, which "
                             f"{what} needs")
    if num_classes < 1:
        raise TskdInputError(f"{what} needs at least one class, got {num_classes}")


def check_input(x: torch.Tensor, size: int) -> None:
    """Refuse a batch that is not (B, 3, size, size).

    Args:
        x: The batch.
        size: The student's input side in pixels.

    Raises:
        TskdInputError: Another shape.
    """
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != size or x.shape[3] != size:
        raise TskdInputError(
            f"the student expects images of shape (B, 3, {size}, {size}), got {tuple(x.shape)}")
