"""The one Dice rule of tskd: per image and foreground class.

Training validates and ``tskd evaluate`` scores by it. MONAI's ``compute_dice`` on one-hot
masks, background excluded, ``ignore_empty=False``: a class absent from both maps scores 1, a
class in only one scores 0 (``tskd.inference.metrics``'s ``EMPTY_POLICY``). Used by the
teacher's and the student's validation (``validation_dice``), by ``metrics.evaluate`` and by
the teacher-student disagreement of ``predict.rank_for_annotation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from tskd.errors import TskdInputError


def one_hot_batch(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot encode a batch of label maps in the channel-first layout MONAI expects.

    Args:
        labels: int64 class indices (B, spatial...), each in 0..num_classes-1.
        num_classes: C, the number of channels of the result.

    Returns:
        float32 (B, C, spatial...) of 0 and 1.
    """
    return torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).float()


def dice_per_class(
    pred: torch.Tensor,
    truth: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    reduction: Literal["none", "mean_batch"] = "none",
) -> torch.Tensor:
    """Dice of label maps per image and foreground class: the one Dice rule of tskd.

    Args:
        pred: predicted class indices, int (B, H, W) or (B, Z, H, W).
        truth: true class indices, same shape as ``pred``.
        num_classes: classes including the background (0); at least 2 are scored as if given
            (so a one-class model still has one foreground class).
        ignore_index: truth pixels with this value are left out (background in both maps).
        reduction: ``"none"`` gives (B, K) per image; ``"mean_batch"`` gives (K,), the mean
            over the images of each class (MONAI's names), K = max(num_classes, 2) - 1.

    Returns:
        float32 Dice in [0, 1] on ``pred``'s device. A class absent from both maps scores 1
        and a class in only one scores 0 (MONAI ``compute_dice`` with ``ignore_empty=False``,
        background excluded; ``EMPTY_POLICY``). A value outside 0..num_classes-1 counts as
        background.

    Raises:
        TskdInputError: when the shapes differ.
    """
    from monai.metrics import compute_dice

    if pred.shape != truth.shape:
        raise TskdInputError(
            f"prediction and ground truth differ in shape: {tuple(pred.shape)} vs "
            f"{tuple(truth.shape)}"
        )
    k = max(int(num_classes), 2)
    pred, truth = pred.long(), truth.long().to(pred.device)
    if ignore_index is not None:
        keep = truth != ignore_index
        pred, truth = pred.where(keep, 0), truth.where(keep, 0)
    pred = pred.where((pred >= 0) & (pred < k), 0)
    truth = truth.where((truth >= 0) & (truth < k), 0)
    scores = compute_dice(one_hot_batch(pred, k), one_hot_batch(truth, k),
                          include_background=False, ignore_empty=False).float()
    return scores.mean(0) if reduction == "mean_batch" else scores


@torch.no_grad()
def validation_dice(
    model: torch.nn.Module, samples: Sequence[Any], size: int, num_classes: int,
    batch_size: int = 8,
) -> torch.Tensor:
    """Dice per validation image and foreground class of a segmentation model.

    Args:
        model: maps float (B, 3, size, size) in [0, 1] to logits (B, C, size, size).
        samples: ``tskd.data.samples.Sample`` with labels (class indices; ``label_map.IGNORE_INDEX``
            pixels are left out), resized to ``size`` as in training (``tskd.data.dataset``).
        size: the model's input side in pixels.
        num_classes: classes including the background.
        batch_size: images per forward pass; the result does not depend on it.

    Returns:
        float32 (images, K) on the CPU (``dice_per_class``); the model is left in the
        train/eval mode it had.

    Raises:
        TskdInputError: a sample has no label, or its label and image differ in size
            (``tskd.data.dataset.LabelledDataset``).
    """
    from torch.utils.data import DataLoader

    from tskd.data.dataset import LabelledDataset
    from tskd.data.label_map import IGNORE_INDEX

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(LabelledDataset(list(samples), size, augment=False),
                        batch_size=max(1, batch_size), shuffle=False)
    scores = []
    try:
        for batch in loader:
            pred = model(batch["image"].to(device)).float().argmax(1)
            scores.append(dice_per_class(pred, batch["label"].to(device), num_classes,
                                         ignore_index=IGNORE_INDEX).cpu())
    finally:
        model.train(was_training)
    return torch.cat(scores) if scores else torch.zeros(0, max(num_classes, 2) - 1)
