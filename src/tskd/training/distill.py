"""Stage 3: distil a teacher (adapted or un-adapted SAM) into the student on the transfer set.

The student learns the teacher's hidden representations (feature loss through 1x1 projections,
as FitNets' regressors, Romero et al. 2015) and, in task-specific mode, its segmentation outputs
(temperature-scaled KL divergence, Hinton et al. 2015), as the TS-KD paper pretrains its small
ViT on the transfer set (Liang et al., Fig. 1 (d)). The teacher runs once per transfer image,
before training, and its outputs come from ``tskd.training.teacher_cache`` afterwards; the loop
itself is ``tskd.engine.train``.

The teacher follows the model contract: ``forward_with_features(x, layers) -> (logits, feats)``
on (B, 3, S, S) inputs in [0, 1], and ``feature_dims: dict[str, int]``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tskd.config import DistillConfig
from tskd.engine import (
    CancelToken,
    Progress,
    ProgressCallback,
    RunControl,
    TrainResult,
    resolve_device,
    seed_everything,
    train,
)
from tskd.errors import Cancelled, TskdInputError
from tskd.models.student import Student
from tskd.training.kd_losses import channel_norm, kd_output_loss
from tskd.training.teacher_cache import TeacherCache

LOGITS = "logits"  # name of the teacher's segmentation output in the cache


class DistillModel(nn.Module):
    """What the engine trains: the student plus one 1x1 projection per (student, teacher) pair.

    Args:
        student: the student, trained in place.
        pairs: (student layer, teacher layer) names; each gets a 1x1 conv to the teacher width.
        teacher_dims: channels of each teacher layer (the teacher's ``feature_dims``).
        with_logits: also compute the student's logits (task-specific mode).
    """

    def __init__(
        self,
        student: Student,
        pairs: Sequence[tuple[str, str]],
        teacher_dims: dict[str, int],
        with_logits: bool,
    ) -> None:
        super().__init__()
        self.student = student
        self.pairs = list(pairs)
        self.with_logits = with_logits
        self.proj = nn.ModuleDict(
            {
                _proj_name(s, t): nn.Conv2d(student.feature_dims[s], teacher_dims[t], 1)
                for s, t in self.pairs
            }
        )

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """Projected student features keyed by ``_proj_name(pair)``, and logits (or None).

        Args:
            x: float32 (B, 3, S, S) in [0, 1], S the student's input size.

        Returns:
            ``(features, logits)``: (B, C_teacher, h, w) per pair; (B, classes, S, S) or None.
        """
        layers = sorted({s for s, _ in self.pairs})
        if self.with_logits:
            logits, feats = self.student.forward_with_features(x, layers)
        else:  # features only: skip the decoder altogether
            logits, feats = None, self.student.features(x, layers)
        out = {_proj_name(s, t): self.proj[_proj_name(s, t)](feats[s]) for s, t in self.pairs}
        return out, logits


def _proj_name(student_layer: str, teacher_layer: str) -> str:
    return f"{student_layer}_to_{teacher_layer}".replace(".", "_")


class _TransferSet(Dataset):
    """Student-size images with the teacher's cached outputs, flipped together at random."""

    def __init__(
        self,
        images: Sequence[np.ndarray],
        keys: Sequence[str],
        cache: TeacherCache,
        size: int,
        recompute: Any,
    ) -> None:
        self.images, self.keys, self.cache, self.size = images, keys, cache, size
        self.recompute = recompute  # i -> outputs, used only if a cache file vanished

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from tskd.data.dataset import image_to_tensor

        x = image_to_tensor(self.images[i], self.size)
        teacher = self.cache.get(self.keys[i])
        if teacher is None:
            teacher = self.recompute(i)
        # Random horizontal flips of the image and of every teacher map alike (no vertical flips:
        # upside-down ultrasound fans or anatomy never occur). For ViT features an approximation:
        # a flipped image's tokens are not exactly the flipped tokens (positional embeddings and
        # patch contents are not mirror-symmetric), but the teacher's maps stay spatially
        # aligned with the student's input, which is what the losses need.
        dims = [-1] if torch.rand(()) < 0.5 else []
        if dims:
            x = torch.flip(x, dims)
            teacher = {k: torch.flip(v, dims) for k, v in teacher.items()}
        return {"image": x, "teacher": teacher}


class _DistillTask:
    """The ``TrainingTask`` the engine runs: losses between student and cached teacher."""

    name = "distill"

    def __init__(self, model: DistillModel, dataset: _TransferSet, cfg: DistillConfig) -> None:
        self.model = model
        self._dataset = dataset
        self.cfg = cfg
        self.feature_fn = F.mse_loss if cfg.feature_loss == "mse" else F.smooth_l1_loss
        self.pairs = list(model.pairs)
        t_names = [t for _, t in self.pairs]
        self._unique = len(set(t_names)) == len(t_names)

    def _log_name(self, s_name: str, t_name: str) -> str:
        return f"feature_{t_name}" if self._unique else f"feature_{_proj_name(s_name, t_name)}"

    def dataset(self) -> Dataset:
        return self._dataset

    def step(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        target = batch["teacher"]
        feats, logits = model(batch["image"])
        logs: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=batch["image"].device)
        if feats:
            per_layer = []
            for s_name, t_name in self.pairs:
                f, g = feats[_proj_name(s_name, t_name)], target[t_name]
                if f.shape[-2:] != g.shape[-2:]:  # student grid -> teacher grid
                    f = F.interpolate(f.float(), size=g.shape[-2:], mode="bilinear",
                                      align_corners=False)
                lf = self.feature_fn(channel_norm(f), channel_norm(g))
                per_layer.append(lf)
                if len(self.pairs) > 1:
                    logs[self._log_name(s_name, t_name)] = lf
            feature = torch.stack(per_layer).mean()
            logs["feature"] = feature
            loss = loss + cfg.feature_weight * feature
        if logits is not None:
            output = kd_output_loss(logits, target[LOGITS], cfg.temperature)
            logs["output"] = output
            loss = loss + cfg.output_weight * output
        logs["loss"] = loss
        return logs


def _check(
    teacher: nn.Module, images: Sequence[np.ndarray], cfg: DistillConfig, student: Student
) -> tuple[list[tuple[str, str]], bool]:
    if len(images) == 0:
        raise TskdInputError("the transfer set is empty: give unlabelled or labelled images")
    if len(cfg.teacher_layers) != len(cfg.student_layers):
        raise TskdInputError(
            f"distill.teacher_layers {cfg.teacher_layers} and distill.student_layers "
            f"{cfg.student_layers} must list the same number of layers (one pair each)"
        )
    t_dims = getattr(teacher, "feature_dims", {})
    bad_t = [n for n in cfg.teacher_layers if n not in t_dims]
    if bad_t:
        raise TskdInputError(
            f"the teacher has no layer(s) {bad_t}; it offers {sorted(t_dims)}"
        )
    student.check_layers(cfg.student_layers)
    if cfg.feature_loss not in ("mse", "smooth_l1"):
        raise TskdInputError(
            f"distill.feature_loss must be mse or smooth_l1, not {cfg.feature_loss!r}"
        )
    pairs = list(zip(cfg.student_layers, cfg.teacher_layers)) if cfg.feature_weight > 0 else []
    with_logits = not cfg.task_agnostic and cfg.output_weight > 0
    if not pairs and not with_logits:
        raise TskdInputError(
            "nothing to distil: set distill.feature_weight > 0 with layer pairs, or "
            "distill.output_weight > 0 without task_agnostic"
        )
    return pairs, with_logits


def _teacher_autocast(device: torch.device, mixed_precision: str) -> Any:
    """Half precision for the teacher on a GPU unless the user turned mixed precision off."""
    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    bf16 = mixed_precision == "bf16" or (
        mixed_precision == "auto" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _TeacherOutputs:
    """The teacher's outputs on the transfer images: computed once into the cache, then read.

    Args:
        teacher: follows the model contract (module docstring); put in eval mode here, its
            device and training mode restored after each use.
        images: the transfer set.
        cache: where the outputs go, keyed by the teacher's input tensor.
        t_layers: the teacher layers stored.
        with_logits: also store the teacher's logits (as ``LOGITS``).
        input_size: the teacher's input side in pixels.
        mixed_precision: ``train.mixed_precision``, for ``_teacher_autocast``.
    """

    def __init__(self, teacher: nn.Module, images: Sequence[np.ndarray], cache: TeacherCache,
                 t_layers: list[str], with_logits: bool, input_size: int,
                 mixed_precision: str) -> None:
        self.teacher, self.images, self.cache = teacher, images, cache
        self.t_layers, self.with_logits = t_layers, with_logits
        self.input_size, self.mixed_precision = input_size, mixed_precision
        self.keys: list[str] = []  # cache key of each image, filled by ``fill``
        self.was_training = teacher.training
        teacher.eval()

    def compute(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's float32 outputs on a (B, 3, S, S) batch, on the teacher's device."""
        dev = _device_of(self.teacher)
        with torch.inference_mode(), _teacher_autocast(dev, self.mixed_precision):
            logits, feats = self.teacher.forward_with_features(batch.to(dev), self.t_layers)
        out = {name: feats[name].float() for name in self.t_layers}
        if self.with_logits:
            out[LOGITS] = logits.float()
        return out

    def teacher_input(self, i: int) -> torch.Tensor:
        """Image ``i`` as the teacher's float32 (3, S, S) input in [0, 1]."""
        from tskd.data.dataset import image_to_tensor

        return image_to_tensor(self.images[i], self.input_size)

    def fill(self, device: torch.device, batch_size: int, num_classes: int,
             progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        """Run the teacher once over every image, in batches on ``device``, into the cache."""
        teacher, cache, n = self.teacher, self.cache, len(self.images)
        home = _device_of(teacher)
        t0 = time.perf_counter()
        try:
            teacher.to(device)
            for start in range(0, n, batch_size):
                if cancel is not None and cancel.cancelled:
                    raise Cancelled(
                        f"distill: cancelled while caching teacher outputs ({start}/{n} images); "
                        "resume to go on"
                    )
                batch = torch.stack([self.teacher_input(i)
                                     for i in range(start, min(n, start + batch_size))])
                batch_keys = [cache.key(img) for img in batch]
                first = cache.get_or_compute(batch, self.compute, keys=batch_keys)
                if start == 0 and self.with_logits and first[LOGITS].shape[1] != num_classes:
                    raise TskdInputError(
                        f"the teacher predicts {first[LOGITS].shape[1]} classes but the student "
                        f"has {num_classes}; build the student for the teacher's classes"
                    )
                self.keys.extend(batch_keys)
                if progress is not None:
                    progress(self._cache_progress(n, time.perf_counter() - t0))
        finally:
            teacher.to(home)
            teacher.train(self.was_training)

    def _cache_progress(self, n: int, elapsed: float) -> Progress:
        done, cache = len(self.keys), self.cache
        return Progress(
            "distill-cache", done, n, 0, 1, math.nan, elapsed / done * (n - done),
            {"cache_hits": float(cache.hits), "cache_misses": float(cache.misses)},
            f"teacher outputs: {cache.misses} computed, {cache.hits} from cache",
        )

    def recompute(self, i: int) -> dict[str, torch.Tensor]:
        """Image ``i``'s outputs again (its cache file vanished), without the batch axis."""
        x = self.teacher_input(i)[None]
        self.teacher.eval()
        try:
            out = self.cache.get_or_compute(x, self.compute, keys=[self.keys[i]])
        finally:
            self.teacher.train(self.was_training)
        return {k: v[0] for k, v in out.items()}


def distill(
    teacher: nn.Module,
    images: Sequence[np.ndarray],
    cfg: DistillConfig,
    student: Student,
    teacher_input_size: int,
    teacher_id: str,
    cache_dir: str | Path,
    control: RunControl | None = None,
) -> TrainResult:
    """Train ``student`` (in place) to match ``teacher`` on ``images``; returns the history.

    Loss: ``feature_weight`` x the pairs' mean MSE or smooth-L1 of ``channel_norm``-ed maps +
    ``output_weight`` x ``kd_output_loss``. ``task_agnostic``: features only (an un-adapted SAM
    has no task head), the student's decoder frozen then, as nothing would train it.

    Args:
        teacher: follows the model contract (module docstring); returned to its device.
        images: the transfer set, (H, W[, C]) arrays of any dtype (``image_to_tensor``).
        cfg: stage 3's settings (layers, loss, weights, temperature, ``train``).
        student: the ``Student``; ends on its device, in eval mode.
        teacher_input_size: the teacher's input side in pixels.
        teacher_id: the teacher's id in the cache keys (``tskd.models.lora.teacher_id``).
        cache_dir: the ``TeacherCache`` folder.
        control: its ``progress`` gets "distill-cache" ``Progress`` reports while caching,
            then the engine's; its ``cancel`` is checked before each cache batch and each
            training step; the rest (checkpoint folder, resume) goes to ``tskd.engine.train``.
            None: ``RunControl()``.

    Returns:
        The engine's ``TrainResult``; its history logs ``feature`` (mean over layer pairs, and
        ``feature_<layer>`` when several), ``output`` (not when task-agnostic), total ``loss``.

    Raises:
        TskdInputError: no images, bad layers or feature_loss, nothing to distil, other classes.
        Cancelled: cancelled while caching or training (resumable).
        TskdError: from the engine or the cache (``DiskFullError`` for a full disk).
    """
    control = control if control is not None else RunControl()
    pairs, with_logits = _check(teacher, images, cfg, student)
    t_layers = list(dict.fromkeys(t for _, t in pairs))
    cache = TeacherCache(cache_dir, teacher_id, t_layers + ([LOGITS] if with_logits else []))
    device = resolve_device(cfg.train.device)
    outputs = _TeacherOutputs(teacher, images, cache, t_layers, with_logits, teacher_input_size,
                              cfg.train.mixed_precision)
    outputs.fill(device, max(1, cfg.train.batch_size), student.num_classes,
                 control.progress, control.cancel)
    with _student_in_training(student, freeze_decoder=not with_logits):
        seed_everything(cfg.train.seed)  # the projections' random initialisation repeats
        model = DistillModel(student, pairs, teacher.feature_dims, with_logits)
        data = _TransferSet(images, outputs.keys, cache, student.image_size, outputs.recompute)
        return train(_DistillTask(model, data, cfg), cfg.train, control=control)


@contextlib.contextmanager
def _student_in_training(student: Student, freeze_decoder: bool) -> Iterator[None]:
    """Freeze the decoder if asked (nothing would train it); after: trainable, home, eval mode."""
    home = _device_of(student)
    frozen = [p for p in student.decoder_parameters() if p.requires_grad] if freeze_decoder else []
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        student.to(home)
        student.eval()
