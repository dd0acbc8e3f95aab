"""From stored images to model inputs: normalisation, resizing, augmentation, splits, datasets.

Every model takes float RGB in [0, 1] at a square size. ``to_float_rgb`` is the one place that
maps 8-bit, 16-bit, float and multi-channel images there, so training and inference agree.
Datasets resize once in their constructor; ``__getitem__`` only augments, which keeps data
loading far below a 27 ms model forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tskd.errors import TskdInputError, TskdWarning
from tskd.io import Sample


def to_float_rgb(
    image: np.ndarray, contrast_limits: Sequence[float] | None = None
) -> np.ndarray:
    """(H, W[, C]) of any dtype -> float32 (H, W, 3) in [0, 1].

    uint8 is divided by 255; other types are windowed by ``contrast_limits`` or, when none are
    given, by the 0.5 and 99.5 percentiles (robust to hot pixels). Gray is repeated, two
    channels are padded with zeros, more than three keep the first three (with a warning).
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise TskdInputError(f"expected a 2D image (H, W[, C]), got shape {img.shape}")
    if img.ndim == 3 and img.shape[-1] > 3:
        if img.shape[-1] == 4 and img.dtype == np.uint8:
            img = img[..., :3]  # RGBA: drop alpha silently, that is what a viewer shows
        else:
            warnings.warn(f"image has {img.shape[-1]} channels; using the first 3",
                          TskdWarning, stacklevel=2)
            img = img[..., :3]
    if contrast_limits is not None:
        lo, hi = float(contrast_limits[0]), float(contrast_limits[1])
        out = (img.astype(np.float32) - lo) / max(hi - lo, 1e-12)
    elif img.dtype == np.uint8:
        out = img.astype(np.float32) / 255.0
    elif img.dtype == bool:
        out = img.astype(np.float32)
    else:
        f = img.astype(np.float32)
        lo, hi = np.percentile(f, (0.5, 99.5))
        if hi <= lo:
            lo, hi = float(f.min()), float(f.max())
        out = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0).astype(np.float32)
    if out.ndim == 2:
        return np.repeat(out[..., None], 3, axis=-1)
    if out.shape[-1] == 2:
        return np.concatenate([out, np.zeros_like(out[..., :1])], axis=-1)
    return out


def image_to_tensor(
    image: np.ndarray, size: int, contrast_limits: Sequence[float] | None = None
) -> torch.Tensor:
    """An image as a (3, size, size) float tensor in [0, 1] (bilinear, antialiased)."""
    t = torch.from_numpy(to_float_rgb(image, contrast_limits)).permute(2, 0, 1)[None]
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
    return t[0].clamp_(0, 1).contiguous()


def label_to_tensor(label: np.ndarray, size: int) -> torch.Tensor:
    """A label map as a (size, size) int64 tensor (nearest neighbour)."""
    t = torch.from_numpy(np.asarray(label, dtype=np.int64))[None, None].float()
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="nearest-exact")
    return t[0, 0].long()


def num_classes(samples: Sequence[Sample]) -> int:
    """Classes including background: the largest label value + 1 (at least 2)."""
    labels = [s.label for s in samples if s.label is not None]
    if not labels:
        raise TskdInputError("no labelled image")
    return max(2, int(max(int(lab.max()) for lab in labels)) + 1)


def split_train_val(
    samples: Sequence[Sample], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """A deterministic split; train is never empty and fewer than 4 samples keep none back."""
    if not 0.0 <= val_fraction < 1.0:
        raise TskdInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(samples)
    n_val = 0 if n < 4 or val_fraction == 0 else max(1, round(n * val_fraction))
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def _random_crop_box(size: int, min_scale: float = 0.75) -> tuple[int, int, int]:
    """A square crop (top, left, side) covering at least ``min_scale`` of the side."""
    side = int(size * (min_scale + (1 - min_scale) * torch.rand(()).item()))
    top = int(torch.randint(0, size - side + 1, ()).item())
    left = int(torch.randint(0, size - side + 1, ()).item())
    return top, left, side


def augment_pair(
    image: torch.Tensor, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, zoom-crop and intensity jitter applied identically to image and label.

    Horizontal flips only: vertical flips and rotations would turn ultrasound fans and
    anatomical layouts into images a scanner never makes. Uses torch's global RNG, which the
    engine seeds per epoch.
    """
    size = image.shape[-1]
    if torch.rand(()) < 0.5:
        image, label = image.flip(-1), label.flip(-1)
    if torch.rand(()) < 0.5:
        top, left, side = _random_crop_box(size)
        image = F.interpolate(image[None, :, top:top + side, left:left + side], size=(size, size),
                              mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None, top:top + side, left:left + side].float(),
                              size=(size, size), mode="nearest-exact")[0, 0].long()
    gain = 1.0 + 0.2 * (torch.rand(()) - 0.5)
    bias = 0.1 * (torch.rand(()) - 0.5)
    image = ((image - 0.5) * gain + 0.5 + bias).clamp(0, 1)
    return image, label


class LabelledDataset(Dataset):
    """Labelled samples as ``{"image": (3, S, S) float, "label": (S, S) int64}``."""

    def __init__(self, samples: Sequence[Sample], size: int, augment: bool = False) -> None:
        if any(s.label is None for s in samples):
            raise TskdInputError("LabelledDataset got a sample without a label")
        self.names = [s.name for s in samples]
        self.images = [image_to_tensor(s.image, size) for s in samples]
        self.labels = [label_to_tensor(s.label, size) for s in samples]  # type: ignore[arg-type]
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image, label = self.images[i], self.labels[i]
        if self.augment:
            image, label = augment_pair(image, label)
        return {"image": image, "label": label}


class ImageDataset(Dataset):
    """Unlabelled images as ``{"image": (3, S, S) float, "index": int}``."""

    def __init__(self, images: Sequence[np.ndarray], size: int) -> None:
        self.images = [image_to_tensor(im, size) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor | int]:
        return {"image": self.images[i], "index": i}
