"""Live previews of segmentation training (teacher and student stages), as an engine callback.

``SegmentationPreview`` sends the model's label map for the first prepared training image of a
``LabelledDataset`` through the stage's progress callback, at most every
``PREVIEW_INTERVAL_S`` seconds and after the last epoch; the plugin shows it as two layers of its
own. It reads the prepared, un-augmented image tensor and runs the model in eval mode without
gradients, so it draws no random number and changes no weight or statistic: a run with
previews trains exactly like one without (``tests/test_engine.py`` checks it).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from tskd.engine import Callback, Progress, ProgressCallback, TrainState

PREVIEW_INTERVAL_S = 5.0  # seconds between two previews at least; a forward pass costs little


def preview_prediction(model: nn.Module, image: torch.Tensor, device: torch.device
                       ) -> dict[str, Any] | None:
    """The model's label map for one prepared image, or None if its output is not a logit map.

    Args:
        model: a segmenter mapping (1, 3, S, S) float images to (1, C, S, S) logits; left in
            the training mode it had.
        image: (3, S, S) float32 in [0, 1], as ``tskd.data.LabelledDataset.images`` holds it.
        device: where ``model`` is.

    Returns:
        ``{"image": (S, S, 3) uint8 RGB, "labels": (S, S) uint8 class indices}``, or None when
        the forward fails or gives anything but a (1, C, S, S) tensor (a preview must never stop
        training).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(image[None].to(device))
    except (TypeError, ValueError, RuntimeError):
        return None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != 1:
        return None
    labels = out[0].argmax(0).to("cpu", torch.uint8).numpy()
    rgb = (image.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {"image": rgb, "labels": labels}


class SegmentationPreview(Callback):
    """Reports ``Progress.preview`` at epoch ends: at most every ``interval_s``, and after the last.

    The last epoch's preview is sent whenever that epoch took a step in this run.

    Args:
        progress: the stage's progress callback; previews go there as extra ``Progress``
            reports (same step as the step's own report, ETA 0).
        interval_s: least seconds between two previews; default ``PREVIEW_INTERVAL_S`` (5 s).

    Raises:
        TypeError: (at the start of training) the task's dataset is not a
            ``tskd.data.LabelledDataset``, the only kind whose prepared images it can read.
    """

    def __init__(self, progress: ProgressCallback,
                 interval_s: float = PREVIEW_INTERVAL_S) -> None:
        self.progress = progress
        self.interval_s = interval_s
        self._image: torch.Tensor | None = None
        self._last = 0.0

    def on_train_begin(self, state: TrainState) -> None:
        """Take the first prepared training image; the interval starts now.

        Args:
            state: the run; ``state.dataset`` must be a ``LabelledDataset``.

        Raises:
            TypeError: ``state.dataset`` is another kind of dataset.
        """
        from tskd.data.dataset import LabelledDataset

        if not isinstance(state.dataset, LabelledDataset):
            raise TypeError(f"{state.stage}: SegmentationPreview needs a LabelledDataset, not "
                            f"{type(state.dataset).__name__}")
        self._image = state.dataset.images[0] if state.dataset.images else None
        self._last = time.perf_counter()

    def on_epoch_end(self, state: TrainState) -> None:
        """Send a preview if the interval has passed or this was the last epoch.

        Nothing is sent for an epoch this run took no step in, or when the model's output is
        not a logit map (``preview_prediction``).

        Args:
            state: the run at the end of an epoch; its model, device, step and losses are read.
        """
        if self._image is None or not state.steps_in_epoch:
            return
        if not (state.last_epoch or time.perf_counter() - self._last >= self.interval_s):
            return
        preview = preview_prediction(state.model, self._image, state.device)
        if preview is None:
            return
        self._last = time.perf_counter()
        self.progress(Progress(state.stage, state.step, state.total, state.epoch, state.epochs,
                               state.logs["loss"], 0.0, state.logs, preview=preview))
