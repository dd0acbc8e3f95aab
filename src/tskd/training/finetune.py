"""Stage 4: fine-tune the (distilled or fresh) student on the labelled images.

Loss: MONAI ``DiceCELoss``, ``dice_weight * Dice + (1 - dice_weight) * CE``. Dice is over the
foreground classes and pooled over the batch ("batch Dice", as nnU-Net does for 2D), so an image
without foreground does not produce a noisy 0-or-1 term of its own. Validation: mean Dice over
foreground classes with MONAI's ``DiceMetric`` at the student's input size; an image where
ground truth and prediction are both empty for a class scores 1 for it (the project's policy).
Pixels labelled ``tskd.data.label_map.IGNORE_INDEX`` (a configured ``data.ignore_label``) are
left out of both loss terms and of validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tskd import engine
from tskd.config import StudentConfig
from tskd.data.label_map import IGNORE_INDEX
from tskd.engine import Callback, ProgressCallback, RunControl, TrainResult
from tskd.errors import TskdInputError
from tskd.models.student import AnyStudent
from tskd.stopping import early_stopping
from tskd.training.preview import SegmentationPreview


class _StudentForEngine(nn.Module):
    """Holds the student so the engine's wrappers (device, autocast) never patch the student."""

    def __init__(self, student: AnyStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class _SegTask:
    """The ``TrainingTask``: Dice + CE on labelled images."""

    name = "finetune-student"

    def __init__(self, student: AnyStudent, dataset: Dataset, dice_weight: float,
                 encoder_lr_scale: float = 1.0) -> None:
        from monai.losses import DiceCELoss

        if not 0.0 <= dice_weight <= 1.0:
            raise TskdInputError(f"student.dice_weight must be in [0, 1], got {dice_weight}")
        self.model = _StudentForEngine(student)
        self._dataset = dataset
        self.loss = DiceCELoss(
            include_background=False,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=dice_weight,
            lambda_ce=1.0 - dice_weight,
        )
        # ignored pixels (label IGNORE_INDEX = -100) count in neither term: CrossEntropyLoss
        # skips -100 by default, MONAI's Dice masks them when told
        self.loss.dice.ignore_index = IGNORE_INDEX

        decoder = {id(p) for p in student.decoder_parameters()}
        self._scales = {id(p): encoder_lr_scale for p in student.parameters()
                        if id(p) not in decoder}

    def dataset(self) -> Dataset:
        return self._dataset

    def lr_scales(self) -> dict[int, float]:
        return self._scales

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = model(batch["image"]).float()
        target = batch["label"][:, None]
        dice = self.loss.dice(logits, target)
        ce = self.loss.ce(logits, target)
        loss = self.loss.lambda_dice * dice + self.loss.lambda_ce * ce
        return {"loss": loss, "dice_loss": dice, "ce": ce}


def validate(
    student: AnyStudent, samples: Sequence[Any], image_size: int, batch_size: int = 8
) -> dict[str, Any]:
    """Mean validation Dice (foreground classes) of ``student`` on labelled ``samples``.

    Dice per image and class by the one rule, ``tskd.inference.dice.validation_dice`` (MONAI
    ``compute_dice``; a class empty in both maps scores 1).

    Args:
        student: the model to score; left in the train/eval mode it had.
        samples: ``tskd.data.samples.Sample`` with labels (class indices).
        image_size: the student's input side in pixels; images are resized to it.
        batch_size: images per forward pass; the result does not depend on it.

    Returns:
        ``{"dice": mean over classes, "dice_per_class": per class, mean over images,
        "n_images": int}``, Dice in [0, 1]; ``{}`` without samples.

    Raises:
        TskdInputError: a sample without a label, or whose label and image differ in size.
    """
    from tskd.inference.dice import validation_dice

    if not samples:
        return {}
    scores = validation_dice(student, samples, image_size, student.num_classes, batch_size)
    per_class = scores.mean(0)
    return {
        "dice": float(per_class.mean()),
        "dice_per_class": [float(v) for v in per_class],
        "n_images": int(scores.shape[0]),
    }


def finetune_student(
    student: AnyStudent,
    train: Sequence[Any],
    val: Sequence[Any],
    cfg: StudentConfig,
    image_size: int,
    control: RunControl | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Fine-tune ``student`` in place on ``train`` (``tskd.data.samples.Sample`` with labels).

    Loss: the module docstring's (MONAI ``DiceCELoss``), with augmentation. A student with too
    few outputs (task-agnostic) gets a new head, seeded with ``cfg.train.seed``. The encoder
    learns at ``cfg.encoder_lr_scale`` times the decoder's rate; with ``val`` and
    ``cfg.train.patience``, training stops at the validation Dice's plateau and ends with the
    best weights (``EarlyStopping``).

    Args:
        student: the student (``tskd.models.student.build_student``); ends on its device,
            in eval mode.
        train: training samples, labels holding class indices (``IGNORE_INDEX`` left out).
        val: validation samples, scored by ``validate`` after training; may be empty.
        cfg: stage 4's settings (``dice_weight``, ``encoder_lr_scale``, ``train``).
        image_size: the student's input side in pixels; must equal ``student.image_size``.
        control: progress reports (the engine's, and live previews:
            ``SegmentationPreview``), cancel, checkpoint folder and resume, handed to
            ``tskd.engine.train``; None: ``RunControl()``.

    Returns:
        ``(result, metrics)``: the engine's ``TrainResult`` (``loss``, ``dice_loss``, ``ce``)
        and ``validate``'s metrics (``{}`` without validation images).

    Raises:
        TskdInputError: ``encoder_lr_scale`` <= 0, no training samples, a sample without a
            label, another image size than the student's, too many classes, or
            ``dice_weight`` outside [0, 1].
        Cancelled: ``control.cancel`` was set (a checkpoint is written first).
        TskdError: from the engine (``tskd.engine.train``).
    """
    from tskd.data.dataset import LabelledDataset

    _prepare_student(student, train, val, image_size, cfg)
    home = next(student.parameters()).device
    task = _SegTask(student, LabelledDataset(list(train), image_size, augment=True),
                    cfg.dice_weight, cfg.encoder_lr_scale)
    progress = control.progress if control is not None else None
    callbacks = _callbacks(student, val, cfg, image_size, progress)
    try:
        result = engine.train(task, cfg.train, control=control, callbacks=callbacks)
        metrics = validate(student, val, image_size, cfg.train.batch_size)
    finally:
        student.to(home)
        student.eval()
    return result, metrics


def _callbacks(student: AnyStudent, val: Sequence[Any], cfg: StudentConfig, image_size: int,
               progress: ProgressCallback | None) -> list[Callback]:
    """The live preview (with a progress callback) and early stopping (with validation)."""
    callbacks: list[Callback] = [SegmentationPreview(progress)] if progress is not None else []
    return callbacks + early_stopping(
        cfg.train, bool(val), lambda _: validate(student, val, image_size,
                                                 cfg.train.batch_size)["dice"])


def _prepare_student(student: AnyStudent, train: Sequence[Any], val: Sequence[Any],
                     image_size: int, cfg: StudentConfig) -> None:
    """Check ``finetune_student``'s inputs; seed, give a new head if needed, make all trainable.

    Raises:
        TskdInputError: ``encoder_lr_scale`` <= 0, no training samples, a sample without a
            label, or another image size than the student's.
    """
    from tskd.data.dataset import num_classes

    if not cfg.encoder_lr_scale > 0:
        raise TskdInputError(f"student.encoder_lr_scale must be > 0, got {cfg.encoder_lr_scale}")
    if not train:
        raise TskdInputError("no labelled images to fine-tune the student on")
    if any(s.label is None for s in train) or any(s.label is None for s in val):
        raise TskdInputError("every image used to fine-tune or validate the student needs a label")
    if image_size != student.image_size:
        raise TskdInputError(
            f"the student was built for {student.image_size}x{student.image_size} images, "
            f"not {image_size}"
        )
    needed = num_classes(list(train) + list(val))
    engine.seed_everything(cfg.train.seed)  # a new head's random initialisation repeats
    if student.num_classes < needed:
        student.reset_head(needed)
    for p in student.parameters():
        p.requires_grad_(True)
