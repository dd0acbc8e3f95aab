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
from tskd.errors import Cancelled, TskdError, TskdInputError
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

        On several processes (``tskd.distributed``) batch ``j`` is computed by rank
        ``j % processes`` (each writes its own entries: one file per image), every rank keys
        every image, and all wait for each other at the end, so all then read every entry;
        progress comes from the main process.

        Args:
            device: Where the teacher runs (this rank's GPU under ``torchrun``).
            batch_size: Images per forward pass.
            num_classes: The student's classes; the teacher's logits must have as many.
            progress: Gets a "distill-cache" ``Progress`` after each batch, or None.
            cancel: Checked before each batch (on any rank: all stop), or None.

        Raises:
            Cancelled: ``cancel`` was set.
            TskdInputError: The teacher predicts another number of classes.
            TskdError: another rank failed while caching.
        """
        from tskd import distributed as dist

        dist.setup(cpu=device.type == "cpu")
        teacher, n = self.teacher, len(self.images)
        home, t0 = device_of(teacher), time.perf_counter()
        progress = progress if dist.is_main() else None
        error: BaseException | None = None
        try:
            teacher.to(device)
            for j, start in enumerate(range(0, n, batch_size)):
                if dist.any_rank(error is not None or (cancel is not None and cancel.cancelled)):
                    break
                indices = range(start, min(n, start + batch_size))
                if j % dist.world_size() == dist.rank():
                    error = self._fill_batch(indices, num_classes)
                else:
                    self.keys.extend(self.cache.key(self.teacher_input(i)) for i in indices)
                if progress is not None:
                    progress(self._cache_progress(n, time.perf_counter() - t0))
        finally:
            teacher.to(home)
            teacher.train(self.was_training)
        self._raise_any(error, cancel, n)

    def _fill_batch(self, indices: range, num_classes: int) -> BaseException | None:
        """Key one batch, compute what the cache lacks; the error it raised, or None."""
        try:
            batch = torch.stack([self.teacher_input(i) for i in indices])
            batch_keys = [self.cache.key(img) for img in batch]
            first = self.cache.get_or_compute(batch, self.compute, keys=batch_keys)
            if self.with_logits and first[LOGITS].shape[1] != num_classes:
                raise TskdInputError(
                    f"the teacher predicts {first[LOGITS].shape[1]} classes but the student "
                    f"has {num_classes}; build the student for the teacher's classes"
                )
            self.keys.extend(batch_keys)
        except Exception as exc:  # handed to every rank by ``_raise_any``
            return exc
        return None

    def _raise_any(self, error: BaseException | None, cancel: CancelToken | None,
                   n: int) -> None:
        """After the loop, on every rank: the first rank's error, a cancel, or nothing."""
        from tskd import distributed as dist

        errors = dist.gather(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise TskdError(f"another process failed while caching teacher outputs ({failed})")
        if len(self.keys) < n:  # stopped early: a cancel on some rank
            raise Cancelled(
                f"distill: cancelled while caching teacher outputs ({len(self.keys)}/{n} "
                "images); resume to go on"
            )
        dist.barrier()  # every entry is on disk before any rank reads one

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
