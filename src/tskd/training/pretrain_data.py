"""The data of promptable pretraining: procedural scenes, each object with a SAM-style prompt.

Scenes come from ``tskd.data.phantoms.pretraining_sample`` (shapes, textured regions, curves,
rings, clusters; none of the target tasks). Each item draws K objects, larger ones more often,
and for each a prompt as SAM was trained with: a noisy box, 1-3 positive/negative points, or
both (``sample_prompts``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from tskd.errors import TskdInputError

MAX_POINTS = 3  # point prompts per object (unused slots are SAM's "not a point", label -1)


def sample_prompts(
    rng: np.random.Generator, mask: np.ndarray, n_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy box (4,) as x0, y0, x1, y1 and (MAX_POINTS, 2) x/y points with labels.

    The first point is positive (inside the object), the others positive or negative (outside,
    near the object) with even chances; unused slots have label -1. Box corners move by
    N(0, 10 % of the side), at most 20 px, as in SAM's training (Kirillov et al. 2023, Segment
    Anything, App. A). "Near" is the object's bounding box grown by a quarter of its longer
    side (at least 2 px); an object with nothing outside near it takes negatives anywhere.

    Args:
        rng: the generator every draw comes from.
        mask: bool (H, W), the object; at least one pixel (an empty mask raises numpy's
            ``ValueError``).
        n_points: points to draw, 1..``MAX_POINTS``.

    Returns:
        ``(box, points, labels)``: float32 (4,) box corners in pixels, clipped to the image;
        float32 (MAX_POINTS, 2) points as (x, y) pixels; int64 (MAX_POINTS,) labels, 1
        positive, 0 negative, -1 unused (SAM's "not a point").
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    side = np.array([x1 - x0 + 1, y1 - y0 + 1, x1 - x0 + 1, y1 - y0 + 1], np.float64)
    jitter = np.clip(rng.normal(0, 0.1 * side), -20, 20)
    box = np.array([x0, y0, x1, y1], np.float64) + jitter
    box[[0, 2]] = np.clip(np.sort(box[[0, 2]]), 0, w - 1)
    box[[1, 3]] = np.clip(np.sort(box[[1, 3]]), 0, h - 1)

    points = np.zeros((MAX_POINTS, 2), np.float32)
    labels = -np.ones(MAX_POINTS, np.int64)
    margin = max(2, int(0.25 * max(side[0], side[1])))
    near = np.zeros_like(mask)
    near[max(0, y0 - margin) : y1 + margin + 1, max(0, x0 - margin) : x1 + margin + 1] = True
    outside = np.argwhere(near & ~mask)
    if len(outside) == 0:
        outside = np.argwhere(~mask)
    for k in range(n_points):
        negative = k > 0 and len(outside) > 0 and rng.random() < 0.5
        if negative:
            py, px = outside[rng.integers(len(outside))]
        else:
            i = rng.integers(len(xs))
            py, px = ys[i], xs[i]
        points[k] = (px, py)
        labels[k] = 0 if negative else 1
    return box.astype(np.float32), points, labels


class PromptDataset(Dataset):
    """Procedural scenes with K objects each and a prompt per object (one item = one image).

    The scene of an item comes from (seed, a key drawn from torch's global generator, index):
    the engine re-seeds that generator every epoch, so epochs see new scenes, the same run
    repeats exactly, and a resumed run draws what an unbroken one would. Objects are chosen
    with probability ~ sqrt(area), with replacement when a scene has fewer than K; one prompt
    mode is drawn per image. Items: ``{"image": float32 (3, S, S) in [0, 1], "masks": float32
    (K, S, S) of 0/1, "boxes": (K, 4), "points": (K, MAX_POINTS, 2), "labels": (K,
    MAX_POINTS), "mode": 0 box, 1 points, 2 box + points}`` (``sample_prompts``' units).

    Args:
        length: items per epoch.
        size: S, the scenes' side in pixels.
        masks_per_image: K, objects prompted per image.
        seed: the run's seed, part of every scene's seed.
        prompt_modes: chances of box, points, and box + points (normalised to sum 1); default
            ``tskd.training.pretrain.PretrainConfig.prompt_modes``' (0.4, 0.35, 0.25), with
            which the built-in mini SAM was trained (``tskd/assets/mini_sam.json``).
        scenes: the scene families (``tskd.data.phantoms.pretraining.SCENES``).

    Raises:
        TskdInputError: ``prompt_modes`` not three non-negative chances with a positive sum.
    """

    def __init__(
        self, length: int, size: int, masks_per_image: int, seed: int,
        prompt_modes: tuple[float, float, float] = (0.4, 0.35, 0.25), scenes: str = "basic",
    ) -> None:
        self.length, self.size, self.k, self.seed = length, size, masks_per_image, seed
        self.scenes = scenes
        modes = np.asarray(prompt_modes, np.float64)
        if modes.shape != (3,) or modes.min() < 0 or modes.sum() <= 0:
            raise TskdInputError("prompt modes must be three non-negative chances (box, "
                                 "points, box + points)")
        self.modes = modes / modes.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from tskd.data.phantoms import pretraining_sample

        key = int(torch.randint(0, 2**31 - 1, (1,)).item())
        rng = np.random.default_rng([self.seed, key, index])
        image, masks = pretraining_sample(rng, self.size, self.scenes)
        # larger objects more often (p ~ sqrt(area)): clusters would otherwise flood the
        # prompts with dots, while the target tasks are mostly organ-sized objects
        area = np.array([m.sum() for m in masks], np.float64)
        chosen = rng.choice(len(masks), self.k, replace=len(masks) < self.k,
                            p=np.sqrt(area) / np.sqrt(area).sum())
        mode = int(rng.choice(3, p=self.modes))  # 0 box, 1 points, 2 box + points
        boxes, points, labels = [], [], []
        for j in chosen:
            box, pts, lab = sample_prompts(rng, masks[j], int(rng.integers(1, MAX_POINTS + 1)))
            boxes.append(box)
            points.append(pts)
            labels.append(lab)
        # convert in numpy: tiny torch ops pay threading overhead on a busy machine
        return {
            "image": torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0),
            "masks": torch.from_numpy(np.stack([masks[j] for j in chosen]).astype(np.float32)),
            "boxes": torch.from_numpy(np.stack(boxes)),
            "points": torch.from_numpy(np.stack(points)),
            "labels": torch.from_numpy(np.stack(labels)),
            "mode": torch.tensor(mode),
        }
