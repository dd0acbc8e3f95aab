"""From stored images to model inputs: normalisation, resizing, augmentation, splits, datasets.

Every model takes float RGB in [0, 1] at a square size. ``to_float_rgb`` and ``image_to_tensor``
are the one place that maps 8-bit, 16-bit, float and multi-channel images there, so training and
inference agree. Datasets resize once in their constructor; ``__getitem__`` only augments, which
keeps data loading far below a 27 ms model forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tskd.data.samples import Sample
from tskd.errors import TskdInputError, TskdWarning

ContrastLimits = Sequence[float] | None  # (low, high) intensities, e.g. a napari layer's
# the automatic window: robust to hot pixels; nnU-Net clips CT intensities to the same percentiles
PERCENTILES = (0.5, 99.5)
_PERCENTILE_PIXELS = 2**16  # windows of larger images come from a regular subsample (speed)


# ------------------------------------------------------------------ normalisation


def _select_channels(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 2..3): one channel squeezed, RGBA uint8 loses alpha, extras dropped."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise TskdInputError(f"expected a 2D image (H, W[, C]), got shape {img.shape}")
    if img.ndim == 3 and img.shape[-1] > 3:
        if not (img.shape[-1] == 4 and img.dtype == np.uint8):  # RGBA: alpha is not content
            warnings.warn(f"image has {img.shape[-1]} channels; using the first 3",
                          TskdWarning, stacklevel=4)
        img = img[..., :3]
    return img


def _auto_window(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) at the 0.5/99.5 percentiles; min/max where those coincide."""
    c = 1 if img.ndim == 2 else img.shape[-1]
    step = max(1, int(np.ceil(np.sqrt(img.shape[0] * img.shape[1] / _PERCENTILE_PIXELS))))
    sub = img[::step, ::step].reshape(-1, c).astype(np.float64)
    if img.dtype.kind == "f" and not np.isfinite(sub).all():
        sub[~np.isfinite(sub)] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel: NaN window
            return tuple(np.nanpercentile(sub, PERCENTILES, axis=0))  # type: ignore[return-value]
    lo, hi = np.percentile(sub, PERCENTILES, axis=0)
    flat = hi <= lo
    if flat.any():  # e.g. a few bright spots on a constant background
        full = img.reshape(-1, c)
        lo = np.where(flat, full.min(axis=0), lo)
        hi = np.where(flat, full.max(axis=0), hi)
    return lo, hi


def _to_unit(image: np.ndarray, contrast_limits: ContrastLimits = None) -> np.ndarray:
    """Float32 in [0, 1] with the channel layout of ``_select_channels`` (no RGB yet)."""
    img = _select_channels(image)
    out = img.astype(np.float32)
    if contrast_limits is None and img.dtype in (np.uint8, np.bool_):
        return np.divide(out, 255.0, out=out) if img.dtype == np.uint8 else out
    if contrast_limits is not None:
        lo, hi = np.float64(contrast_limits[0]), np.float64(contrast_limits[1])
    else:
        lo, hi = _auto_window(img)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if out.ndim == 2:
        lo, hi = lo.reshape(()), hi.reshape(())
    span = hi - lo
    scale = np.divide(1.0, span, out=np.zeros_like(span), where=span > 0)  # flat: zeros
    out -= lo.astype(np.float32)
    out *= scale.astype(np.float32)
    if img.dtype.kind == "f":
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def to_float_rgb(image: np.ndarray, contrast_limits: ContrastLimits = None) -> np.ndarray:
    """An image of any dtype as float32 RGB (H, W, 3) in [0, 1]: the one normalisation.

    uint8 is divided by 255; other types are windowed by ``contrast_limits`` or, when none are
    given, per channel by the 0.5 and 99.5 percentiles (``PERCENTILES``: robust to hot pixels;
    channels of a multi-channel scan have their own ranges), from a regular subsample of about
    2^16 pixels for speed. Gray is repeated, two channels get a zero third, more than three keep
    the first three (with a ``TskdWarning``; RGBA uint8 silently drops alpha). A constant image
    gives zeros; NaN and -inf become 0 (black), +inf 1 (white).

    Args:
        image: (H, W) or (H, W, C), any numeric dtype, intensities in the file's units.
        contrast_limits: (low, high) intensities mapped to 0 and 1, one pair for all channels
            (e.g. a napari layer's); None: uint8 / 255, else the percentile window.

    Returns:
        float32 (H, W, 3) in [0, 1].

    Raises:
        TskdInputError: ``image`` is not 2D (H, W[, C]).
    """
    unit = _to_unit(image, contrast_limits)
    if unit.ndim == 2:
        return np.repeat(unit[..., None], 3, axis=-1)
    if unit.shape[-1] == 2:
        return np.concatenate([unit, np.zeros_like(unit[..., :1])], axis=-1)
    return unit


def _three_channels(t: torch.Tensor) -> torch.Tensor:
    """(C, H, W) with C in 1..3 -> (3, H, W): gray repeated, a zero third channel added."""
    if t.shape[0] == 1:
        return t.expand(3, -1, -1).contiguous()
    if t.shape[0] == 2:
        return torch.cat([t, torch.zeros_like(t[:1])])
    return t.contiguous()


def image_to_tensor(
    image: np.ndarray, size: int, contrast_limits: ContrastLimits = None
) -> torch.Tensor:
    """An image as a (3, size, size) float32 tensor in [0, 1] (bilinear, antialiased).

    Same values as ``to_float_rgb`` followed by resizing (torch ``F.interpolate``), but gray
    images are resized before they are repeated to RGB (a third of the work).

    Args:
        image: (H, W) or (H, W, C), any numeric dtype.
        size: The model's square input side in pixels.
        contrast_limits: As ``to_float_rgb``.

    Returns:
        float32 tensor (3, size, size) in [0, 1].

    Raises:
        TskdInputError: ``image`` is not 2D (H, W[, C]).
    """
    unit = torch.from_numpy(_to_unit(image, contrast_limits))
    t = unit[None] if unit.ndim == 2 else unit.permute(2, 0, 1)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[0].clamp_(0.0, 1.0)
    return _three_channels(t)


def label_to_tensor(label: np.ndarray, size: int) -> torch.Tensor:
    """A label map as a (size, size) int64 tensor (nearest neighbour, so no new values).

    Args:
        label: Class indices (H, W), any integer dtype.
        size: The model's square input side in pixels.

    Returns:
        int64 tensor (size, size) of the same values.
    """
    t = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if t.shape[-2:] == (size, size):
        return t.clone()
    t = F.interpolate(t[None, None].float(), size=(size, size), mode="nearest-exact")
    return t[0, 0].long()


# ------------------------------------------------------------------ sets and splits


def num_classes(samples: Sequence[Sample]) -> int:
    """Classes including background: the largest class index + 1 (at least 2).

    Args:
        samples: Samples whose labels hold class indices (``tskd.data.samples.read_labelled_set``
            maps label values to them); unlabelled samples are skipped.

    Returns:
        The largest class index + 1, at least 2 (background and one class).

    Raises:
        TskdInputError: No sample has a label, or the count would exceed
            ``tskd.data.label_map.MAX_CLASSES`` (checked before anything is allocated per class).
    """
    from tskd.data.label_map import MAX_CLASSES

    labels = [s.label for s in samples if s.label is not None]
    if not labels:
        raise TskdInputError("no labelled image: cannot count classes")
    n = max(2, max(int(lab.max()) for lab in labels) + 1)
    if n > MAX_CLASSES:
        raise TskdInputError(
            f"labels go up to {n - 1}, more than {MAX_CLASSES} classes; read them with "
            "tskd.data.samples.read_labelled_set, which maps label values to consecutive classes"
        )
    return n


def split_train_val(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """A deterministic split into ``(train, val)`` that keeps the samples' order within each part.

    Args:
        samples: The labelled samples.
        val_fraction: Share for validation, in [0, 1) (``DataConfig.val_fraction``): validation
            gets ``tskd.config.validation_count(n, val_fraction)`` samples, ``round(n *
            val_fraction)``, at least one, at most n - 1 (train is never empty); with fewer than
            4 samples, or ``val_fraction == 0``, none.
        seed: Seeds the permutation (numpy ``default_rng``) that chooses them.

    Returns:
        ``(train, val)``, each in the order of ``samples``.

    Raises:
        TskdInputError: ``val_fraction`` is outside [0, 1).
    """
    from tskd.config import validation_count

    n = len(samples)
    n_val = validation_count(n, val_fraction)
    val_idx = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


# ------------------------------------------------------------------ augmentation


def _random_crop_box(size: int, min_scale: float = 0.75) -> tuple[int, int, int]:
    """A square crop (top, left, side) covering at least ``min_scale`` of the side."""
    side = int(size * (min_scale + (1 - min_scale) * torch.rand(()).item()))
    side = max(1, min(size, side))
    top = int(torch.randint(0, size - side + 1, ()).item())
    left = int(torch.randint(0, size - side + 1, ()).item())
    return top, left, side


def _zoom(image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of 75-100 % of the side, resized back (image bilinear, label nearest)."""
    size = image.shape[-1]
    top, left, side = _random_crop_box(size)
    crop = (slice(top, top + side), slice(left, left + side))
    image = F.interpolate(image[None, :, crop[0], crop[1]], size=(size, size), mode="bilinear",
                          align_corners=False)[0]
    label = F.interpolate(label[None, None, crop[0], crop[1]].float(), size=(size, size),
                          mode="nearest-exact")[0, 0].long()
    return image, label


def augment_pair(
    image: torch.Tensor, label: torch.Tensor, any_orientation: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips, zoom-crop and brightness/contrast jitter, identical for image and label.

    Each with probability 0.5: a horizontal flip, and a crop of 75-100 % of the side resized
    back (image bilinear, label nearest); always contrast x0.9-1.1 and brightness +-0.05 around
    0.5, clipped to [0, 1]. Draws from torch's global RNG, which the engine seeds, so runs repeat.

    Args:
        image: (3, S, S) float in [0, 1].
        label: (S, S) int64 class indices.
        any_orientation: Add vertical flips and 90-degree rotations, for images without an up
            (microscopy, dermoscopy). Off by default: vertical flips and rotations turn
            ultrasound fans and anatomical layouts into images a scanner never makes.

    Returns:
        The augmented ``(image, label)``, same shapes and dtypes, contiguous.
    """
    if torch.rand(()) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    if any_orientation:
        if torch.rand(()) < 0.5:
            image, label = image.flip(-2), label.flip(-2)
        k = int(torch.randint(0, 4, ()).item())
        if k:
            image, label = image.rot90(k, (-2, -1)), label.rot90(k, (-2, -1))
    if torch.rand(()) < 0.5:
        image, label = _zoom(image, label)
    gain = 1.0 + 0.2 * (torch.rand(()) - 0.5)  # contrast x0.9-1.1
    bias = 0.1 * (torch.rand(()) - 0.5)  # brightness +-0.05
    image = ((image - 0.5) * gain + 0.5 + bias).clamp(0.0, 1.0)
    return image.contiguous(), label.contiguous()


# ------------------------------------------------------------------ datasets


class LabelledDataset(Dataset):
    """Labelled samples as ``{"image": (3, S, S) float32 in [0, 1], "label": (S, S) int64}``.

    Images and labels are normalised and resized once, here; items only augment.

    Args:
        samples: Labelled samples (labels as class indices).
        size: S, the model's square input side in pixels.
        augment: Apply ``augment_pair`` to every item.
        any_orientation: Passed to ``augment_pair``.

    Raises:
        TskdInputError: A sample without a label, or whose image and label differ in size.
    """

    def __init__(
        self, samples: Sequence[Sample], size: int, augment: bool = False,
        any_orientation: bool = False,
    ) -> None:
        for s in samples:
            if s.label is None:
                raise TskdInputError(f"sample {s.name} has no label map")
            if s.label.shape != s.image.shape[:2]:
                raise TskdInputError(f"sample {s.name}: image {s.image.shape} and label "
                                     f"{s.label.shape} differ in size")
        self.names = [s.name for s in samples]
        self.images = [image_to_tensor(s.image, size) for s in samples]
        self.labels = [label_to_tensor(s.label, size) for s in samples]  # type: ignore[arg-type]
        self.augment = augment
        self.any_orientation = any_orientation

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = self.images[i], self.labels[i]
        if self.augment:
            image, label = augment_pair(image, label, self.any_orientation)
        return {"image": image, "label": label}


class ImageDataset(Dataset):
    """Unlabelled images as ``{"image": (3, S, S) float32 in [0, 1], "index": int}``.

    Args:
        images: (H, W[, C]) images of any dtype, normalised and resized once, here.
        size: S, the model's square input side in pixels.
    """

    def __init__(self, images: Sequence[np.ndarray], size: int) -> None:
        self.images = [image_to_tensor(im, size) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"image": self.images[i], "index": i}
