"""The ``Segmenter``: label maps and class probabilities for 2D images, stacks and large images.

Every input goes the same way: ``tskd.data.dataset.to_float_rgb`` (gray, RGB, 16-bit,
multi-channel -> float RGB in [0, 1]), bilinear resize to the model's square input, forward,
bilinear resize of the *logits* back to the input's height and width, then argmax (or
softmax). Stacks (Z, H, W[, C]) run slice by slice in batches. How an array's axes are read
(image, channels, stack) is ``tskd.data.axes.image_axes``'s decision, the same as in training.

Large images run in overlapping tiles; each tile's logits are weighted by a window that is flat
in the middle and falls smoothly (sin^2) across the overlap on sides shared with another tile,
and the weighted sum is normalised, so no seams appear where tiles meet.
``tskd.inference.predict.segmenter_from_bundle`` cuts tiles at the size of the images the model
was trained on (``train_image_shape`` in the bundle's ``meta.json``), so each tile is resized by
the same factor as the training images were.

All the work after the image is read stays in torch on the model's device, so on a 256x256 image
pre- and post-processing cost about a millisecond next to the model's forward
(benchmarks/inference_speed.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tskd.errors import TskdInputError, TskdWarning

if TYPE_CHECKING:
    from tskd.data.axes import ImageAxes

ContrastLimits = tuple[float, float] | None
DEFAULT_TILE_SIZE = 1024  # tile side for models that do not record their training image size
MIN_TILE_SIZE = 16  # the smallest tile side: a smaller tile holds too little to segment
# With tiles at the training size, an image up to this factor larger on each side is resized
# whole, as training resized every image whatever its size; only larger ones are tiled.
TILE_ABOVE = 1.5


def array_axes(image: np.ndarray, is_stack: bool | None = None) -> ImageAxes:
    """Read an array's axes as ``Segmenter`` does: ``tskd.data.axes.image_axes`` of its shape.

    A guess another reading fits as well gives one ``TskdWarning`` naming the shape.

    Args:
        image: an image (H, W[, C]) or stack (Z, H, W[, C]), channels first or last, any dtype.
        is_stack: True or False fixes the reading; None lets ``image_axes`` decide.

    Returns:
        The ``tskd.data.axes.ImageAxes``: whether it is a stack, and ``standard(image)`` to
        put the array in the (H, W[, C]) or (Z, H, W[, C]) layout.

    Raises:
        TskdInputError: a shape that is neither (H, W[, C]) nor (Z, H, W[, C]) in any order.
    """
    from tskd.data import axes

    ax = axes.image_axes(np.shape(image), is_stack=is_stack, where="array")
    if ax.ambiguous:
        warnings.warn(
            f"an array of shape {ax.shape} was read as {ax.describe()} ({ax.reason}); pass "
            "is_stack=True or False to choose", TskdWarning, stacklevel=3,
        )
    return ax


def is_stack_guess(image: np.ndarray, is_stack: bool | None = None) -> bool:
    """Tell whether ``image`` is read as a stack.

    Args:
        image: as for ``array_axes``.
        is_stack: as for ``array_axes``.

    Returns:
        True for a stack (Z, H, W[, C]), False for one image (``array_axes``).

    Raises:
        TskdInputError: a shape that is neither (H, W[, C]) nor (Z, H, W[, C]) in any order.
    """
    return array_axes(image, is_stack).is_stack


def _tile_starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride)) + [n - tile]
    return sorted(set(starts))


def _ramp(length: int, overlap: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    """1D window: 1 in the middle, sin^2 from ~0 to 1 over ``overlap`` pixels on tapered ends.

    sin^2(pi/2 x), x in (0, 1), is the rising half of a Hann window; ``Segmenter._tiled``
    normalises the weighted sum, so the weights need not add up to 1.
    """
    w = torch.ones(length)
    k = min(overlap, length // 2)
    if k > 0:
        r = torch.sin(0.5 * math.pi * (torch.arange(k) + 0.5) / k) ** 2
        if taper_start:
            w[:k] = r
        if taper_end:
            w[length - k :] = r.flip(0)
    return w


class Segmenter:
    """Runs a segmentation model (float (B, 3, S, S) in [0, 1] -> logits (B, C, S, S)) on arrays.

    The model is put in eval mode and moved to ``device``.

    Args:
        model: the segmentation model (``tskd.inference.bundle.load_bundle``).
        input_size: S, the model's square input side in pixels.
        num_classes: C, the model's output channels (background included).
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (``tskd.engine.resolve_device``).
        batch_size: images, slices or tiles per forward pass.
        tile_size: the tile's side in pixels, or its (height, width); default
            ``DEFAULT_TILE_SIZE`` (1024), for models that do not record their training size.
        tile_overlap: pixels shared by neighbouring tiles, in [0, tile side).
        tile_above: an image is tiled when a side exceeds ``tile_above`` times the tile's
            (at least 1; ``segmenter_from_bundle`` gives ``TILE_ABOVE``, 1.5).
        tile_origin: where the tile size came from, for the one line ``tiling_note`` writes.
        max_pixels: bounds the pixels of one 2D image before its float conversion; default
            ``tskd.data.pixel_budget.default_max_pixels()`` (2^28).

    Raises:
        TskdInputError: invalid sizes, among them tiles under ``MIN_TILE_SIZE`` (16) px on a
            side, or an invalid pixel budget.
        TskdError: an unavailable device.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        num_classes: int,
        device: str = "auto",
        batch_size: int = 8,
        tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
        tile_overlap: int = 64,
        tile_above: float = 1.0,
        tile_origin: str = "tile_size",
        max_pixels: int | None = None,
    ) -> None:
        from tskd.data.pixel_budget import check_pixel_budget, default_max_pixels
        from tskd.engine import resolve_device

        if input_size < 1 or num_classes < 1 or batch_size < 1:
            raise TskdInputError(
                f"input_size, num_classes and batch_size must be positive, got {input_size}, "
                f"{num_classes}, {batch_size}"
            )
        th, tw = (tile_size, tile_size) if isinstance(tile_size, int | np.integer) else tile_size
        if min(th, tw) < MIN_TILE_SIZE:
            raise TskdInputError(
                f"tiles of {th}x{tw} px ({tile_origin}) are too small to segment: a tile must be "
                f"at least {MIN_TILE_SIZE} px on each side; give a larger tile size "
                f"(--tile-size, e.g. {DEFAULT_TILE_SIZE})"
            )
        if not 0 <= tile_overlap < min(th, tw):
            raise TskdInputError(
                f"tile_overlap ({tile_overlap}) must be in [0, tile_size) (tile_size {tile_size})"
            )
        if not tile_above >= 1.0:
            raise TskdInputError(f"tile_above must be at least 1, got {tile_above}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.tile_shape = (int(th), int(tw))
        self.tile_size = max(self.tile_shape)
        self.tile_overlap = int(tile_overlap)
        self.tile_above = float(tile_above)
        self.tile_origin = tile_origin
        self.max_pixels = default_max_pixels() if max_pixels is None else int(max_pixels)
        check_pixel_budget((1,), self.max_pixels)  # a bad budget fails here, not later

    # -- low level -------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float on device -> logits (B, C, h, w): resize in, model, resize out."""
        h, w = x.shape[-2:]
        s = self.input_size
        if (h, w) != (s, s):
            # as tskd.data.dataset.image_to_tensor does for training, so both see the same pixels
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)
        outs = [self.model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        logits = outs[0] if len(outs) == 1 else torch.cat(outs)
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise TskdInputError(
                f"the model returned shape {tuple(logits.shape)}, expected (B, "
                f"{self.num_classes}, {s}, {s}); does num_classes match the model?"
            )
        logits = logits.float()
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def _to_tensor(self, image: np.ndarray, contrast_limits: ContrastLimits) -> torch.Tensor:
        """One 2D image (H, W[, C]) -> float (3, H, W) in [0, 1] on the device."""
        from tskd.data.dataset import to_float_rgb
        from tskd.data.pixel_budget import check_pixel_budget

        check_pixel_budget(np.shape(image)[:2], self.max_pixels)
        rgb = np.asarray(to_float_rgb(image, contrast_limits), dtype=np.float32)
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)

    @torch.inference_mode()
    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (1, C, H, W) of a large image (3, H, W) from overlapping, blended tiles."""
        _, H, W = x.shape
        th, tw = min(self.tile_shape[0], H), min(self.tile_shape[1], W)
        ys = _tile_starts(H, th, self.tile_shape[0] - self.tile_overlap)
        xs = _tile_starts(W, tw, self.tile_shape[1] - self.tile_overlap)
        boxes = [(y, x0) for y in ys for x0 in xs]
        acc = torch.zeros(self.num_classes, H, W, device=x.device)
        wsum = torch.zeros(1, H, W, device=x.device)
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i : i + self.batch_size]
            tiles = torch.stack([x[:, y : y + th, x0 : x0 + tw] for y, x0 in chunk])
            logits = self._forward(tiles)
            for (y, x0), lg in zip(chunk, logits):
                wy = _ramp(th, self.tile_overlap, y > 0, y + th < H)
                wx = _ramp(tw, self.tile_overlap, x0 > 0, x0 + tw < W)
                win = (wy[:, None] * wx[None, :]).to(x.device)
                acc[:, y : y + th, x0 : x0 + tw] += lg * win
                wsum[:, y : y + th, x0 : x0 + tw] += win
        return (acc / wsum).unsqueeze(0)

    def _is_large(self, h: int, w: int) -> bool:
        th, tw = self.tile_shape
        return h > self.tile_above * th or w > self.tile_above * tw

    def tiling_note(self, height: int, width: int) -> str | None:
        """Say in one line how an image of this size is tiled.

        Args:
            height: the image's height in pixels.
            width: the image's width in pixels.

        Returns:
            E.g. "3000x4000 is segmented in 512x512 tiles (...), each resized to 256x256", or
            None when the image is resized whole.
        """
        if not self._is_large(height, width):
            return None
        th, tw = min(self.tile_shape[0], height), min(self.tile_shape[1], width)
        s = self.input_size
        return (f"{height}x{width} is segmented in {th}x{tw} tiles ({self.tile_origin}), "
                f"each resized to {s}x{s}")

    def iter_logits(
        self, images: Sequence[np.ndarray], contrast_limits: ContrastLimits = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Run the model over 2D images, batch by batch.

        Consecutive images of one size share a batch; large images run alone, in tiles.

        Args:
            images: 2D images (H, W[, C]), any dtype (``to_float_rgb``).
            contrast_limits: (low, high) intensity window for non-8-bit images; None: the
                per-channel 0.5/99.5 percentiles.

        Yields:
            ``(index of the batch's first image, logits)``: float32 (B, C, H, W) on the
            device, at the images' own height and width.

        Raises:
            TskdInputError: an image over ``max_pixels``.
        """
        batch: list[torch.Tensor] = []
        first = 0
        for i, img in enumerate(images):
            x = self._to_tensor(img, contrast_limits)
            if batch and (x.shape != batch[0].shape or len(batch) == self.batch_size):
                yield first, self._forward(torch.stack(batch))
                batch = []
            if self._is_large(*x.shape[-2:]):
                yield i, self._tiled(x)
                continue
            if not batch:
                first = i
            batch.append(x)
        if batch:
            yield first, self._forward(torch.stack(batch))

    # -- public ----------------------------------------------------------------------------

    def _run(
        self,
        image: np.ndarray,
        is_stack: bool | None,
        contrast_limits: ContrastLimits,
        reduce: Callable[[torch.Tensor], torch.Tensor],
    ) -> np.ndarray:
        image = np.asarray(image)
        reduce = torch.inference_mode()(reduce)
        if image.size == 0:
            raise TskdInputError(f"cannot segment an empty array of shape {image.shape}")
        ax = array_axes(image, is_stack)
        image = ax.standard(image)
        if ax.is_stack:
            parts = [reduce(lg).cpu().numpy() for _, lg in self.iter_logits(image, contrast_limits)]
            return np.concatenate(parts)
        ((_, lg),) = list(self.iter_logits([image], contrast_limits))
        return reduce(lg)[0].cpu().numpy()

    def segment(
        self,
        image: np.ndarray,
        is_stack: bool | None = None,
        contrast_limits: ContrastLimits = None,
    ) -> np.ndarray:
        """Segment an image or a stack into a label map of its own height and width.

        Args:
            image: (H, W[, C]) or (Z, H, W[, C]), any dtype.
            is_stack: None reads the axes by ``tskd.data.axes.image_axes`` (a channels-first
                (2, H, W) array is one 2-channel image); True or False takes the array as
                (Z, H, W[, C]) or (H, W[, C]), channels last.
            contrast_limits: (low, high) replaces the percentile normalisation of non-8-bit
                images (e.g. napari's limits).

        Returns:
            int64 class indices, (H, W) for an image, (Z, H, W) for a stack; 0 is background.

        Raises:
            TskdInputError: an empty array, an unreadable shape or an image over
                ``max_pixels``.
        """
        return self._run(image, is_stack, contrast_limits, lambda lg: lg.max(dim=1).indices)

    def segment_probabilities(
        self,
        image: np.ndarray,
        is_stack: bool | None = None,
        contrast_limits: ContrastLimits = None,
    ) -> np.ndarray:
        """Class probabilities (softmax of the logits) of an image or a stack.

        Args:
            image: as for ``segment``.
            is_stack: as for ``segment``.
            contrast_limits: as for ``segment``.

        Returns:
            float32 in [0, 1] summing to 1 over C: (C, H, W) for an image, (Z, C, H, W) for a
            stack.

        Raises:
            TskdInputError: as for ``segment``.
        """
        return self._run(image, is_stack, contrast_limits, lambda lg: lg.softmax(dim=1))
