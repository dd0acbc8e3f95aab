"""Typed configuration for every stage.

One ``RunConfig`` holds a section per stage; every stage that trains has a ``train:
TrainConfig`` (the engine's settings), and the device is set once per run (``RunConfig.device``)
unless a stage sets its own. ``from_dict`` (``tskd.config_io``, re-exported here with
``to_dict``, ``config_text`` and ``save_config``) rejects unknown keys with a message that
names them, so a typo in a YAML file is caught before hours of training; keys of earlier
versions are read in their new place with one warning (``tskd.config_compat``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from tskd.config_compat import DEVICE_SECTIONS
from tskd.config_compat import SYNTH_EPOCH_STEPS as SYNTH_EPOCH_STEPS  # synth.train's epoch
from tskd.config_io import config_text as config_text
from tskd.config_io import from_dict as from_dict
from tskd.config_io import read_config_mapping
from tskd.config_io import save_config as save_config
from tskd.config_io import to_dict as to_dict
from tskd.errors import TskdInputError


@dataclass
class TrainConfig:
    """Settings of the one training engine (``tskd.engine.train``), shared by every stage.

    Attributes:
        epochs: Passes over the data (stages counted in steps: see ``total_steps``).
        batch_size: Samples per process and forward pass (>= 1, as in ``accelerate``); a step
            sees ``batch_size x processes x grad_accum_steps`` (docs/scaling.md).
        lr: Peak learning rate of AdamW, reached after the warm-up, then cosine decay.
        weight_decay: AdamW's decoupled weight decay.
        warmup_fraction: Share of all steps spent in linear warm-up, in [0, 1).
        seed: Seeds every random stream before the models are built; the engine re-seeds from
            ``seed + epoch`` at each epoch.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; None takes the run's
            (``RunConfig.device``).
        mixed_precision: ``auto`` (bf16 or fp16 on a GPU, none on CPU), ``no``, ``fp16`` or
            ``bf16``.
        grad_clip: Largest gradient norm (L2) before an optimiser step.
        max_steps: Stop after this many optimiser steps (budgets, tests); None for no limit.
        patience: Stop when the validation score (Dice on the validation images, which come
            from the labelled set) has not improved in this many evaluations, and keep the best
            weights (``tskd.stopping.EarlyStopping``; stages with validation images); None:
            every epoch.
        val_every: Evaluate the validation score every this many epochs (with ``patience``).
        max_seconds: Stop after this much wall-clock training time, in seconds
            (``tskd.stopping.TimeLimit``; equal-cost comparisons); None for no limit.
        grad_accum_steps: Forward passes whose gradients add up to one optimiser step (>= 1,
            at most an epoch's batches): a larger global batch in one batch's memory.
    """

    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str | None = None  # auto | cpu | cuda | cuda:N | mps; None: RunConfig.device
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU
    grad_clip: float = 1.0
    max_steps: int | None = None  # stop early after this many optimiser steps (budgets, tests)
    patience: int | None = None  # early stopping on the validation score; None: every epoch
    val_every: int = 1
    max_seconds: float | None = None  # wall-clock budget (equal-cost comparisons)
    grad_accum_steps: int = 1  # forward passes per optimiser step

    def total_steps(self, epoch_steps: int) -> int:
        """Optimiser steps of a stage counted in steps (the diffusion model, pretraining).

        Args:
            epoch_steps: Optimiser steps in one of the stage's epochs (``SYNTH_EPOCH_STEPS``,
                ``PretrainConfig.steps_per_checkpoint``).

        Returns:
            ``epochs * epoch_steps``, at most ``max_steps``.
        """
        steps = self.epochs * epoch_steps
        return steps if self.max_steps is None else min(steps, self.max_steps)

    def set_steps(self, steps: int, epoch_steps: int) -> None:
        """Train exactly ``steps`` optimiser steps (``tskd synthesize --steps``), in place.

        Sets ``epochs = ceil(steps / epoch_steps)``, ``max_steps = steps`` (None if whole epochs).

        Args:
            steps: Optimiser steps to train, at least 1.
            epoch_steps: Optimiser steps in one of the stage's epochs.
        """
        self.epochs = -(-steps // epoch_steps)
        self.max_steps = steps if steps % epoch_steps else None

    def in_steps(self, epoch_steps: int, where: str) -> tuple[TrainConfig, int]:
        """The engine's settings for a stage counted in steps, and its steps per engine epoch.

        Args:
            epoch_steps: Optimiser steps in one of the stage's epochs.
            where: The section's name for messages, e.g. ``synth.train``.

        Returns:
            A copy whose ``epochs`` cover the whole budget (``total_steps``) and whose
            ``max_steps`` is that budget, and the steps per engine epoch (``epoch_steps``, or
            the whole budget if smaller).

        Raises:
            TskdInputError: fewer than one step or a batch size below 1 (naming ``where``).
        """
        total = self.total_steps(epoch_steps)
        if total < 1 or self.batch_size < 1:
            raise TskdInputError(
                f"config: '{where}' must give at least one step (epochs, max_steps) and a "
                f"batch size of at least 1, got {total} step(s) and {self.batch_size}")
        per_epoch = min(epoch_steps, total)
        return replace(self, epochs=-(-total // per_epoch), max_steps=total), per_epoch


@dataclass
class DataConfig:
    """Where the data is and how it is shaped for the models."""

    labelled: str | None = None  # folder with images/+labels/ or the nnU-Net raw layout
    unlabelled: str | None = None  # folder of images without labels (transfer set)
    test: str | None = None  # optional held-out labelled folder for `tskd evaluate`
    image_size: int = 256  # student input size (square)
    val_fraction: float = 0.2  # share of labelled images kept for validation (0 for none)
    split_seed: int = 0  # the train/validation split depends on this seed only
    augment: bool = True
    # the most pixels (Z x H x W, channels not counted) one image file may decode to; checked
    # from the file's header before decoding (2^28 = 268 M; a decompression bomb is refused)
    max_pixels: int = 2**28
    # the class map, used as given: names (value = position, background first) or
    # {value: name}; None: dataset.json 'labels', else the values seen (see tskd.data.label_policy)
    classes: list[str] | dict[int, str] | None = None
    # a label value whose pixels are left out of training and scoring (e.g. 255 borders);
    # None: no value is ignored (unless dataset.json names an 'ignore' label)
    ignore_label: int | None = None


def validation_count(n: int, val_fraction: float) -> int:
    """How many of ``n`` labelled images the train/validation split keeps for validation.

    The one rule behind ``tskd.data.dataset.split_train_val`` and the data widget's summary
    (here, in a module without torch, so the widget can show it at once).

    Args:
        n: Number of labelled images.
        val_fraction: Share kept for validation, in [0, 1) (``DataConfig.val_fraction``).

    Returns:
        ``round(n * val_fraction)``, at least one and at most n - 1 (training is never empty);
        0 with fewer than 4 images or ``val_fraction == 0``.

    Raises:
        TskdInputError: ``val_fraction`` is outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TskdInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if n < 4 or val_fraction == 0:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


@dataclass
class LoraSettings:
    """LoRA on SAM's attention projections (peft)."""

    # rank 32 (scale alpha / rank = 1): on development draws of the four procedural tasks it
    # adapted the mini teacher better than 4 (SAMed's) or 16 (benchmarks/teacher_adaptation.py)
    rank: int = 32
    alpha: float = 32.0
    dropout: float = 0.0
    # also train the whole mask decoder (SAMed does): more capacity where the task's classes
    # differ from anything SAM segments; the adapter then holds the decoder too (~4 M values)
    train_decoder: bool = False
    # regexes over module names: the encoder's fused qkv and the decoder's attention projections
    # Names or patterns of the safe grammar in ``tskd.lora_targets`` (no nested quantifiers)
    targets: list[str] = field(
        default_factory=lambda: [
            r"image_encoder\.blocks\.\d+\.attn\.qkv",
            r"mask_decoder\.transformer\..*(q_proj|v_proj)",
        ]
    )

    def check(self, where: str = "LoRA settings") -> None:
        """Check the values beyond their types (``from_dict`` calls it after building).

        Args:
            where: The section's name for messages, e.g. ``teacher.lora``.

        Raises:
            TskdInputError: rank is not an integer in 1..1024, alpha not finite and in (0, 1e6),
                dropout not in [0, 1), ``train_decoder`` not a bool, or a target neither a
                name nor a safe pattern (``tskd.lora_targets``).
        """
        from tskd.lora_targets import check_targets

        rank = self.rank
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 1024:
            raise TskdInputError(f"config: '{where}.rank' must be an integer from 1 to 1024, "
                                 f"got {rank!r}")
        for name, value, ok in (
            ("alpha", self.alpha, lambda v: 0 < v < 1e6),
            ("dropout", self.dropout, lambda v: 0 <= v < 1),
        ):
            good = isinstance(value, int | float) and not isinstance(value, bool)
            if not (good and math.isfinite(value) and ok(value)):
                bound = "greater than 0 and below 1e6" if name == "alpha" else "from 0 to below 1"
                raise TskdInputError(f"config: '{where}.{name}' must be a number {bound}, "
                                     f"got {value!r}")
        if not isinstance(self.train_decoder, bool):
            raise TskdInputError(f"config: '{where}.train_decoder' must be true or false, "
                                 f"got {self.train_decoder!r}")
        check_targets(self.targets, f"config: {where}.targets")


@dataclass
class TeacherConfig:
    """Stage 1: adapt SAM to the task with LoRA, prompt-free, one mask per class.

    ``refine_head``: a full-resolution head beside SAM's decoder (``tskd.models.refine_head``).
    """

    model_type: str = "mini"  # mini | vit_b | vit_l | vit_h
    checkpoint: str | None = None  # official .pth/.safetensors; None with mini = built-in weights
    input_size: int = 256  # SAM runs at this size; the encoder's embeddings are interpolated
    refine_head: bool = True
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, lr=3e-3))
    dice_weight: float = 0.8  # loss = dice_weight * Dice + (1 - dice_weight) * CE, as SAMed
    # Dice over foreground classes (False, as the student's) or over all classes (as SAMed)
    dice_include_background: bool = False
    # recompute encoder blocks in the backward pass: less memory, ~1 more forward of time
    gradient_checkpointing: bool = False


@dataclass
class SynthConfig:
    """Stage 2: a small unconditional DDPM trained on the task's images, sampled with DDIM."""

    enabled: bool = True
    n_images: int = 32
    resolution: int = 64
    base_channels: int = 32
    sample_steps: int = 25  # DDIM steps
    ema_decay: float = 0.995
    # drop a sample whose nearest training image is closer than this (normalised L2 in [0, 2])
    near_copy_threshold: float = 0.1
    # an epoch is SYNTH_EPOCH_STEPS (50) steps: 6 epochs = 300 steps; max_steps stops earlier
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=6, batch_size=16, lr=2e-4, weight_decay=0.0))
    SECTION_DEFAULTS: ClassVar[tuple[str, ...]] = ("train",)  # keys left out: the values above


@dataclass
class DistillConfig:
    """Stage 3: the student learns the teacher's hidden representations and outputs."""

    task_agnostic: bool = False  # match the un-adapted SAM encoder's features only (baseline)
    teacher_layers: list[str] = field(default_factory=lambda: ["neck"])
    student_layers: list[str] = field(default_factory=lambda: ["neck"])
    feature_loss: Literal["mse", "smooth_l1"] = "mse"
    feature_weight: float = 1.0
    output_weight: float = 1.0
    temperature: float = 2.0
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, lr=1e-3))


@dataclass
class StudentConfig:
    """Stage 4: the student's architecture and its fine-tuning on the labelled images.

    ``architecture``: "unet" (the default: MONAI's ``BasicUNet``, ``tskd.models.unet``, of
    width ``unet_width``; distilled like the others, and from scratch at width 32 the plain
    U-Net baseline), "conv" (``tskd.models.conv_student``: a timm CNN ``backbone`` with a
    U-Net decoder) or "vit_tiny" (``tskd.models.student``: the TS-KD paper's ViT-Tiny, which
    ``embed_dim``, ``depth``, ``num_heads`` and ``patch_size`` describe). The default is the
    student that was more accurate after TS-KD on the benchmark runs' validation images at the
    same speed (benchmarks/student_choice.py, docs/benchmark.md). ``upsample`` is the
    ViT decoder's: "bilinear" (resize-convolution) or "transposed" (the 2x2 transposed
    convolutions and PixelShuffle head of students saved before it existed).
    """

    architecture: Literal["conv", "vit_tiny", "unet"] = "unet"
    backbone: str = "mobilenetv3_large_100"
    upsample: Literal["bilinear", "transposed"] = "bilinear"
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    patch_size: int = 16
    neck_dim: int = 256  # SAM's embedding width: the natural target for feature distillation
    decoder_channels: int = 64
    # BasicUNet's first width (MONAI's default is 32); widths w,w,2w,4w,8w,w. 16: 0.50 M
    # parameters, as fast per image as the CNN student (measured, docs/benchmark.md)
    unet_width: int = 16
    from_scratch: bool = False  # baseline: ignore the distilled weights
    # fine-tuning: the encoder's learning rate is train.lr times this, the decoder's train.lr,
    # so fine-tuning keeps what distillation taught (as layer-wise decay does, Clark et al. 2020)
    encoder_lr_scale: float = 1.0
    dice_weight: float = 0.5
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, lr=5e-4))


@dataclass
class PredictConfig:
    """Stage 5: inference on images, stacks and large images."""

    # tile side in pixels; None: the size of the images the model was trained on (its
    # meta.json's train_image_shape), so tiles keep the training scale; 1024 for older models
    tile_size: int | None = None
    tile_overlap: int | None = None  # None: 64 px, at most a quarter of the tile
    batch_size: int = 8
    device: str | None = None  # None: the run's (``RunConfig.device``)


@dataclass
class RunConfig:
    """The whole pipeline in one file: `tskd run --config FILE`."""

    run_dir: str = "runs/default"
    # every stage's device unless its section sets one: auto | cpu | cuda | cuda:N | mps
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def _device_owner(self, section: str) -> Any:  # the dataclass holding the section's device
        part = getattr(self, section)
        return getattr(part, "train", part)

    def device_of(self, section: str) -> str:
        """The device the stage of ``section`` runs on.

        Args:
            section: One of ``DEVICE_SECTIONS`` (``teacher``, ``synth``, ``distill``,
                ``student``, ``predict``).

        Returns:
            The stage's own device (``<section>.train.device``, ``predict.device``) when set,
            else the run's ``device``.
        """
        return self._device_owner(section).device or self.device

    def set_device(self, device: str) -> None:
        """Run every stage on ``device``, in place: the run's device, no stage keeping its own.

        Args:
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (the CLI's ``--device``,
                a widget's Device).
        """
        self.device = device
        for section in DEVICE_SECTIONS:
            self._device_owner(section).device = None

    def with_devices(self) -> RunConfig:
        """A copy in which every stage's device is set (``device_of``).

        Returns:
            A deep copy: what the stages hand to training and prediction, which read their own
            section only.
        """
        out = copy.deepcopy(self)
        for section in DEVICE_SECTIONS:
            out._device_owner(section).device = self.device_of(section)
        return out


def load_config(path: str | Path) -> RunConfig:
    """Read a ``RunConfig`` from a YAML file; missing sections take their defaults.

    Args:
        path: The YAML file (``tskd run --config``, a run folder's ``config.yaml``).

    Returns:
        The configuration, keys of earlier versions read in their new place.

    Raises:
        TskdInputError: the file is missing, is not valid YAML, holds no mapping at the top
            level, or has an unknown key or a value of the wrong type (named).
    """
    return from_dict(RunConfig, read_config_mapping(path))
