"""Settings checked before any stage runs, so a bad value costs seconds, not a trained teacher.

``tskd.config.from_dict`` checks types and choices as a file is read; what depends on several
keys or on a model (does the student build at this image size? is this timm backbone a CNN with
the strides the decoder needs?) is checked here, once per stage call, before the run folder is
touched (``tskd.pipeline.context.writes`` calls ``check_settings``).
"""

from __future__ import annotations

import warnings
from typing import Any

from tskd.config import RunConfig, TrainConfig
from tskd.errors import TskdInputError, TskdWarning

TRAINED_SECTIONS = ("teacher", "synth", "distill", "student")


_INT_FIELDS = ("epochs", "batch_size", "seed", "max_steps", "patience", "val_every",
               "grad_accum_steps")  # TrainConfig's int fields (None where optional)


def _check_train(train: TrainConfig, where: str) -> None:
    for name in _INT_FIELDS:  # a config built in code (the GUI) is not read by config_io
        value = getattr(train, name)
        if isinstance(value, bool):  # an int to Python, but no count
            raise TskdInputError(f"config: '{where}.{name}' must be int, got {value!r}")
    if train.patience is not None and (not isinstance(train.patience, int) or train.patience < 1):
        raise TskdInputError(f"config: '{where}.patience' must be 1 or more (evaluations without "
                             f"a gain before stopping), or null for none; got {train.patience}")
    if not isinstance(train.val_every, int) or train.val_every < 1:
        raise TskdInputError(f"config: '{where}.val_every' must be 1 or more (epochs between "
                             f"validation scores); got {train.val_every}")
    if not isinstance(train.grad_accum_steps, int) or train.grad_accum_steps < 1:
        raise TskdInputError(f"config: '{where}.grad_accum_steps' must be 1 or more (forward "
                             f"passes per optimiser step); got {train.grad_accum_steps}")
    if train.max_seconds is not None and not train.max_seconds > 0:
        raise TskdInputError(f"config: '{where}.max_seconds' must be more than 0 (a wall-clock "
                             f"budget in seconds), or null for none; got {train.max_seconds}")


def _check_student(cfg: RunConfig) -> None:
    import torch

    from tskd.models.student import build_student

    s = cfg.student
    if not s.encoder_lr_scale > 0:
        raise TskdInputError(f"config: 'student.encoder_lr_scale' must be more than 0, got "
                             f"{s.encoder_lr_scale}")
    try:
        with torch.device("meta"):  # builds the architecture without allocating it
            model = build_student(s, 2, cfg.data.image_size)
    except TskdInputError as exc:
        raise TskdInputError(f"config: the student ('student.architecture' "
                             f"{s.architecture}) does not fit: {exc} (set 'data.image_size' "
                             "or 'student.backbone')") from None
    _check_batch_norm(cfg, model)


def _check_batch_norm(cfg: RunConfig, model: Any) -> None:
    # BatchNorm in training needs 2 values per channel: a batch of 1 fails at a pooled layer
    import torch

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    trains = ["student"] + ([] if cfg.student.from_scratch else ["distill"])
    for section in trains:
        batch = getattr(cfg, section).train.batch_size
        if isinstance(batch, int) and batch < 2:
            raise TskdInputError(
                f"config: '{section}.train.batch_size' is {batch}, but the CNN student "
                f"('student.backbone' {cfg.student.backbone}) uses BatchNorm and needs at least "
                "2 images per process batch; set it to 2 or more (with fewer processes or "
                "grad_accum_steps to keep the global batch)")


def check_settings(cfg: RunConfig) -> None:
    """Refuse settings no stage can run with; warn about settings that will do nothing.

    Checks every training section's ``patience`` (null or >= 1), ``val_every`` (>= 1) and
    ``max_seconds`` (null or > 0); that the student builds at ``data.image_size`` (its
    backbone exists and has the strides the decoder needs, the size is a multiple of its
    stride); that the U-Net baseline is trained from scratch; ``student.encoder_lr_scale`` > 0.

    Args:
        cfg: The run's configuration.

    Raises:
        TskdInputError: One line naming the key and what would work.

    Warns:
        TskdWarning: ``patience`` is set but ``data.val_fraction`` leaves no validation images,
            so early stopping is off.
    """
    quiet = []
    for section in TRAINED_SECTIONS:
        train = getattr(cfg, section).train
        _check_train(train, f"{section}.train")
        if train.patience is not None and section != "synth":
            quiet.append(section)
    if quiet and cfg.data.val_fraction == 0:
        warnings.warn(f"config: {', '.join(s + '.train.patience' for s in quiet)} set, but "
                      "data.val_fraction is 0: no validation images, so no early stopping",
                      TskdWarning, stacklevel=2)
    _check_student(cfg)
