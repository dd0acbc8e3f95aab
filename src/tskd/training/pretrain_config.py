"""The settings of ``tskd pretrain-mini`` (``tskd.training.pretrain``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from tskd.config import TrainConfig


@dataclass
class PretrainConfig:
    """``tskd pretrain-mini``: promptable pretraining of the built-in mini SAM teacher.

    Its architecture (``MiniSamConfig``) is ``pretrain_mini``'s ``arch``. An epoch of ``train``
    is ``steps_per_checkpoint`` steps: 12 epochs = 1200 steps.
    """

    image_size: int = 256
    masks_per_image: int = 4  # objects (each with its own prompt) decoded per image
    steps_per_checkpoint: int = 100  # the engine checkpoints once per epoch of this many steps
    iou_weight: float = 1.0
    # True: object and background pixels weigh half each in the BCE (left off by default: the
    # plain mean is what the first full pretraining run used)
    balanced_bce: bool = False
    prompt_modes: tuple[float, float, float] = (0.4, 0.35, 0.25)  # box / points / box + points
    # tskd.data.phantoms.pretraining.SCENES; "basic": what the first built-in mini SAM saw;
    # "broad-hdr": "broad" with a share of narrow-band (CT-like) scenes
    scenes: Literal["basic", "broad", "broad-hdr"] = "broad"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=12, batch_size=8, lr=3e-4, weight_decay=0.01))
    SECTION_DEFAULTS: ClassVar[tuple[str, ...]] = ("train",)
