"""Stage 1: adapt SAM to the task with LoRA, prompt-free, one mask per class.

The loss is MONAI's ``DiceCELoss`` weighted as SAMed (0.8 Dice + 0.2 CE by default), with the
student's Dice: foreground classes only, pooled over the batch (nnU-Net's choice). With the
background in the Dice (``dice_include_background``), a thin target (retinal vessels, 4% of
the pixels) let the mini teacher settle on predicting background everywhere. Training
runs through ``tskd.engine.train``; validation Dice (MONAI, foreground classes, at the teacher's
input size) is measured on the validation samples when there are any.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from tskd.config import TeacherConfig
from tskd.data.label_map import IGNORE_INDEX
from tskd.engine import Callback, ProgressCallback, RunControl, TrainResult, seed_everything
from tskd.engine import train as engine_train
from tskd.inference.dice import validation_dice
from tskd.models.lora import apply_lora, save_teacher
from tskd.models.teacher import SemanticSam, build_sam
from tskd.stopping import early_stopping
from tskd.training.preview import SegmentationPreview


def _dataset(samples: list[Any], size: int, augment: bool) -> Dataset:
    from tskd.data.dataset import LabelledDataset

    return LabelledDataset(samples, size, augment=augment)


class TeacherTask:
    """The engine's view of teacher fine-tuning: model, data and the Dice + CE loss.

    Loss: MONAI ``DiceCELoss`` (softmax, one-hot targets, Dice pooled over the batch),
    ``dice_weight * Dice + (1 - dice_weight) * CE`` as SAMed; ignored pixels
    (``IGNORE_INDEX``) count in neither term.

    Args:
        model: the LoRA-adapted ``SemanticSam``: float (B, 3, S, S) in [0, 1] -> logits
            (B, C, S, S), S = ``cfg.input_size``.
        samples: training ``tskd.data.samples.Sample`` with labels (class indices).
        cfg: stage 1's settings (``input_size``, ``dice_weight``, ``dice_include_background``).
        augment: random horizontal flips, zoom-crops and brightness/contrast jitter
            (``tskd.data.dataset.augment_pair``).
    """

    name = "teacher"

    def __init__(
        self, model: nn.Module, samples: list[Any], cfg: TeacherConfig, augment: bool
    ) -> None:
        from monai.losses import DiceCELoss

        self.model = model
        self.samples = samples
        self.size = cfg.input_size
        self.augment = augment
        self.loss = DiceCELoss(
            include_background=cfg.dice_include_background,
            to_onehot_y=True,
            softmax=True,
            batch=True,
            lambda_dice=cfg.dice_weight,
            lambda_ce=1.0 - cfg.dice_weight,
        )
        # ignored pixels (label IGNORE_INDEX = -100): CrossEntropyLoss skips -100 by default,
        # MONAI's Dice masks them when told
        self.loss.dice.ignore_index = IGNORE_INDEX

    def dataset(self) -> Dataset:
        """The labelled samples at the teacher's input size, augmented as asked.

        Returns:
            A ``LabelledDataset``: items ``{"image": (3, S, S) float, "label": (S, S) int64}``.
        """
        return _dataset(self.samples, self.size, self.augment)

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Dice + CE of one batch.

        Args:
            model: the teacher as the engine runs it.
            batch: "image" float (B, 3, S, S) in [0, 1], "label" int64 (B, S, S).

        Returns:
            ``{"loss": float32 scalar}``.
        """
        logits = model(batch["image"]).float()
        return {"loss": self.loss(logits, batch["label"][:, None].long())}


def finetune_teacher(
    cfg: TeacherConfig, train: list[Any], val: list[Any], num_classes: int, out_dir: str | Path,
    control: RunControl | None = None, class_names: list[str] | None = None, augment: bool = True,
    train_image_shape: list[int] | None = None, label_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune SAM with LoRA on labelled samples; write ``out_dir``; return the metrics.

    Randomness is seeded from ``cfg.train.seed`` before the class heads and LoRA matrices are
    initialised, so two runs with the same seed give the same adapter (on the CPU, bit for bit).

    Args:
        cfg: stage 1's settings: the SAM (``model_type``, ``checkpoint``, ``input_size``),
            ``lora``, the loss weights and ``train``.
        train: training ``tskd.data.samples.Sample``; labels are class indices
            (``tskd.data.label_map.IGNORE_INDEX`` pixels are left out of the loss and
            validation).
        val: validation samples, scored after training (``validation_dice``); may be empty.
        num_classes: classes including the background; one mask per class.
        out_dir: the teacher folder written (``adapter.safetensors``, ``meta.json``).
        control: progress reports (the engine's, and live previews), cancel, checkpoint
            folder and resume, handed to ``tskd.engine.train``; None: ``RunControl()``.
        class_names: names by class index, stored in the meta.
        augment: augment the training images (``tskd.data.dataset.augment_pair``).
        train_image_shape: [H, W] in pixels, the median size of the labelled images; stored
            in the meta so prediction tiles large images at the training scale.
        label_meta: ``LabelMap.to_meta()`` (label_values, class_names, ignore_label), stored in
            the teacher's meta.json.

    Returns:
        The training record (``_metrics``): ``train_loss``, ``steps``, ``train_seconds``,
        ``trainable_params``, ``total_params``, ``val_dice`` (mean over foreground classes, in
        [0, 1], or None without validation samples) and ``val_dice_per_class``.

    Raises:
        CheckpointError: an unknown model type or an unusable SAM checkpoint (``build_sam``).
        TskdInputError: bad LoRA settings or samples (missing or mismatched labels).
        Cancelled: ``control.cancel`` was set (a checkpoint is written first).
        TskdError: LoRA targets that match no layer; from the engine (device, non-finite loss,
            a checkpoint of other settings); ``DiskFullError`` for a full disk.
    """
    seed_everything(cfg.train.seed)
    sam = build_sam(cfg.model_type, cfg.checkpoint, cfg.input_size)
    model = apply_lora(SemanticSam(sam, num_classes, cfg.refine_head), cfg.lora)
    task = TeacherTask(model, train, cfg, augment)
    progress = control.progress if control is not None else None
    if cfg.gradient_checkpointing:
        checkpoint_blocks(model.base.image_encoder.blocks)
    result = engine_train(
        task, cfg.train, control=control,
        callbacks=_callbacks(model, val, cfg, num_classes, progress),
    )
    model = task.model
    metrics = _metrics(model, result, val, cfg.input_size, num_classes)
    meta = _teacher_meta(cfg, metrics, result, class_names, label_meta, train_image_shape)
    save_teacher(model, out_dir, meta)
    return metrics


def checkpoint_blocks(blocks: nn.ModuleList) -> None:
    """Gradient checkpointing for the image encoder's blocks (``teacher.gradient_checkpointing``).

    While training with gradients, each block keeps only its input and recomputes its
    activations in the backward pass (``torch.utils.checkpoint``, non-reentrant, random
    streams preserved), so the encoder's activation memory is that of about one block for
    roughly one more forward pass of time; the gradients are the same. Inference is unchanged.
    Only each block's ``forward`` is replaced: its weights, names and hooks stay.

    Args:
        blocks: the ViT blocks (``SemanticSam.base.image_encoder.blocks``), changed in place.
    """
    import functools

    from torch.utils.checkpoint import checkpoint

    def run(block: nn.Module, forward: Any, x: torch.Tensor) -> torch.Tensor:
        if block.training and torch.is_grad_enabled():
            return checkpoint(forward, x, use_reentrant=False)
        return forward(x)

    for block in blocks:
        block.forward = functools.partial(run, block, block.forward)


def _callbacks(model: nn.Module, val: list[Any], cfg: TeacherConfig, num_classes: int,
               progress: ProgressCallback | None) -> list[Callback]:
    """The live preview (with a progress callback) and early stopping (with validation)."""
    callbacks: list[Callback] = [SegmentationPreview(progress)] if progress is not None else []
    return callbacks + early_stopping(
        cfg.train, bool(val),
        lambda m: float(validation_dice(m, val, cfg.input_size, num_classes, 4).mean()))


def _teacher_meta(cfg: TeacherConfig, metrics: dict[str, Any], result: TrainResult,
                  class_names: list[str] | None, label_meta: dict[str, Any] | None,
                  train_image_shape: list[int] | None) -> dict[str, Any]:
    """The teacher's meta.json entries besides what ``save_teacher`` adds itself."""
    meta = {
        "lora": cfg.lora,
        "class_names": class_names,
        **(label_meta or {}),
        "metrics": metrics,
        "dice_weight": cfg.dice_weight,
        "dice_include_background": cfg.dice_include_background,
        "train": asdict(cfg.train),
        "history": result.history,
    }
    if train_image_shape is not None:
        meta["train_image_shape"] = [int(v) for v in train_image_shape]
    return meta


def _metrics(model: nn.Module, result: TrainResult, val: list[Any], input_size: int,
             num_classes: int) -> dict[str, Any]:
    """The teacher's training record: last loss, steps, time, parameter counts and Dice.

    With validation samples, the Dice per foreground class and its mean (``validation_dice``).
    """
    metrics: dict[str, Any] = {
        "train_loss": result.history[-1]["loss"] if result.history else None,
        "steps": result.steps,
        "stopped": result.stopped,
        "train_seconds": result.seconds,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "val_dice": None,
    }
    if val:
        scores = validation_dice(model, val, input_size, num_classes, batch_size=4)
        per_class = [float(v) for v in scores.mean(0)]
        metrics["val_dice_per_class"] = per_class
        metrics["val_dice"] = sum(per_class) / len(per_class)
    return metrics
