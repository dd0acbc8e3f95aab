"""The teacher's outputs on the transfer set: computed once into the cache, then read.

Distillation (``tskd.training.distill``) runs the teacher once per transfer image, in batches on
the training device (half precision on a GPU), before training starts; the student then reads
the outputs from ``tskd.training.teacher_cache`` at every epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tskd.engine import CancelToken, Progress, ProgressCallback
from tskd.errors import Cancelled, TskdInputError
from tskd.training.teacher_cache import TeacherCache

LOGITS = "logits"  # name of the teacher's segmentation output in the cache


def _teacher_autocast(device: torch.device, mixed_precision: str) -> Any:
    """Half precision for the teacher on a GPU unless the user turned mixed precision off."""
    if device.type != "cuda" or mixed_precision == "no":
        return contextlib.nullcontext()
    bf16 = mixed_precision == "bf16" or (
        mixed_precision == "auto" and torch.cuda.is_bf16_supported()
    )
    return torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16)


def device_of(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (the CPU without parameters).

    Args:
        module: Any module.

    Returns:
        The device.
    """
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class TeacherOutputs:
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
        """The teacher's float32 outputs on a batch, on the teacher's device.

        Args:
            batch: (B, 3, S, S) float in [0, 1], S the teacher's input size.

        Returns:
            {layer: (B, C, h, w)} and, with logits, ``LOGITS``: (B, classes, h, w).
        """
        dev = device_of(self.teacher)
        with torch.inference_mode(), _teacher_autocast(dev, self.mixed_precision):
            logits, feats = self.teacher.forward_with_features(batch.to(dev), self.t_layers)
        out = {name: feats[name].float() for name in self.t_layers}
        if self.with_logits:
            out[LOGITS] = logits.float()
        return out

    def teacher_input(self, i: int) -> torch.Tensor:
        """Image ``i`` as the teacher's input.

        Args:
            i: The image's index in the transfer set.

        Returns:
            float32 (3, S, S) in [0, 1].
        """
        from tskd.data.dataset import image_to_tensor

        return image_to_tensor(self.images[i], self.input_size)

    def fill(self, device: torch.device, batch_size: int, num_classes: int,
             progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        """Run the teacher once over every image, in batches on ``device``, into the cache.

        Args:
            device: Where the teacher runs.
            batch_size: Images per forward pass.
            num_classes: The student's classes; the teacher's logits must have as many.
            progress: Gets a "distill-cache" ``Progress`` after each batch, or None.
            cancel: Checked before each batch, or None.

        Raises:
            Cancelled: ``cancel`` was set.
            TskdInputError: The teacher predicts another number of classes.
        """
        teacher, cache, n = self.teacher, self.cache, len(self.images)
        home = device_of(teacher)
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
        """Image ``i``'s outputs again (its cache file vanished).

        Args:
            i: The image's index in the transfer set.

        Returns:
            {output name: tensor without the batch axis}.
        """
        x = self.teacher_input(i)[None]
        self.teacher.eval()
        try:
            out = self.cache.get_or_compute(x, self.compute, keys=[self.keys[i]])
        finally:
            self.teacher.train(self.was_training)
        return {k: v[0] for k, v in out.items()}
