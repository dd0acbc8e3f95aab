"""More pretraining families: branching trees, nested and multi-part objects, weak boundaries.

Real-image pretraining showed SAM thin branching structures (vessels, roots, neurites), objects
made of parts (a cell and its nucleus, an organ and its inner zones) and boundaries that are
weak, blurred or only a change of texture, in images whose brightness drifts across the field.
These generators add those statistics to ``tskd.data.phantoms.pretraining``; like it, they share
no code with the target tasks (``tests/test_phantoms.py`` checks the imports). A family is
``f(rng, h, w, yy, xx) -> list of bool (H, W) masks``, one per instance (none overlapping), with
``yy``/``xx`` the float32 pixel coordinates of ``np.mgrid``; ``FAMILIES`` names them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Masks = list[np.ndarray]


def _thick_path(
    h: int, w: int, x: np.ndarray, y: np.ndarray, radius: np.ndarray
) -> np.ndarray | None:
    """Bool (H, W): every pixel within ``radius[i]`` of a path point (x[i], y[i]); None if off."""
    xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    if ok.sum() < 3:
        return None
    mask = np.zeros((h, w), bool)
    # group the points by integer radius: one distance transform per width class
    for r in np.unique(np.maximum(np.rint(radius[ok] * 2) / 2, 0.5)):
        sel = ok & (np.maximum(np.rint(radius * 2) / 2, 0.5) == r)
        if not sel.any():
            continue
        pad = int(r) + 2
        x0, x1 = max(0, xi[sel].min() - pad), min(w, xi[sel].max() + pad + 1)
        y0, y1 = max(0, yi[sel].min() - pad), min(h, yi[sel].max() + pad + 1)
        centre = np.ones((y1 - y0, x1 - x0), bool)
        centre[yi[sel] - y0, xi[sel] - x0] = False
        mask[y0:y1, x0:x1] |= ndimage.distance_transform_edt(centre) <= r
    return mask


def _branching(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """A tree of curved branches thinning towards the tips: one instance, none if it left."""
    s = min(h, w)
    scale = max(1.0, s / 256)
    stack = [(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi),
              rng.uniform(1.5, 4.0) * scale, 0)]
    xs, ys, rs = [], [], []
    while stack and len(xs) < 8:
        x, y, heading, radius, depth = stack.pop()
        n = int(rng.uniform(0.15, 0.45) * s / max(depth, 1) ** 0.5 / 0.5)
        bend = ndimage.gaussian_filter1d(rng.standard_normal(n), max(2.0, n / 6))
        theta = heading + np.cumsum(bend) * rng.uniform(0.05, 0.2)
        px = x + np.cumsum(np.cos(theta)) * 0.5
        py = y + np.cumsum(np.sin(theta)) * 0.5
        pr = radius * np.linspace(1.0, rng.uniform(0.55, 0.85), n)
        xs.append(px)
        ys.append(py)
        rs.append(pr)
        if depth < 3 and pr[-1] >= 0.5:
            for k in (1, -1) if rng.random() < 0.8 else (1,):
                split = int(rng.uniform(0.5, 1.0) * (n - 1))
                stack.append((px[split], py[split], theta[split] + k * rng.uniform(0.3, 1.0),
                              pr[split] * rng.uniform(0.6, 0.85), depth + 1))
    mask = _thick_path(h, w, np.concatenate(xs), np.concatenate(ys), np.concatenate(rs))
    return [] if mask is None else [mask]


def _blob(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """An irregular closed shape of radius about ``r`` around the frame's origin."""
    theta = np.arctan2(v, u)
    edge = np.ones_like(theta)
    for k in range(2, 6):
        edge += rng.normal(0, 0.2 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) < r * np.maximum(edge, 0.4)


def _nested(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """An object with 1-3 inner parts (cell and nucleus, organ and inner zones), each an instance.

    The outer instance is the object minus its parts, so the masks do not overlap.
    """
    s = min(h, w)
    r = rng.uniform(0.1, 0.3) * s
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    outer = _blob(rng, xx - cx, yy - cy, r)
    parts: Masks = []
    for _ in range(rng.integers(1, 4)):
        ang, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.45) * r
        px, py = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
        part = _blob(rng, xx - px, yy - py, rng.uniform(0.15, 0.45) * r) & outer
        part &= ~np.any(parts, axis=0) if parts else True
        if part.sum() > 3:
            parts.append(part)
    shell = outer & ~np.any(parts, axis=0) if parts else outer
    return [shell, *parts]


def _multipart(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """A shape cut by 1-2 random lines into touching parts, each an instance (lobes, zones)."""
    s = min(h, w)
    r = rng.uniform(0.12, 0.3) * s
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    whole = _blob(rng, xx - cx, yy - cy, r)
    labels = np.zeros((h, w), np.int64)
    for bit in range(rng.integers(1, 3)):
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(-0.4, 0.4) * r
        side = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang) > off
        labels += side.astype(np.int64) << bit
    return [whole & (labels == k) for k in np.unique(labels[whole])]


def soft_paint(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, fill: np.ndarray
) -> np.ndarray:
    """Paint ``fill`` into ``img`` (both (H, W, 3) float) with a weak or blurred boundary.

    The fill's contrast to what is below is cut to 15-60 % and its edge is blurred over
    0.5-3 px: the object is still all of ``mask``, only its boundary is hard to see.

    Args:
        rng: the generator every draw comes from.
        img: the image painted so far, changed in place.
        mask: bool (H, W), the object.
        fill: (H, W, 3) float, the object's texture.

    Returns:
        ``img``.
    """
    contrast = rng.uniform(0.15, 0.6)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.5, 3.0))[..., None]
    img[:] = img + alpha * contrast * (fill - img)
    return img


def bias_field(rng: np.random.Generator, field: np.ndarray, img: np.ndarray) -> np.ndarray:
    """Multiply ``img`` (H, W, 3) by a smooth intensity drift exp(a * field), a in 0.1-0.6.

    Args:
        rng: the generator every draw comes from.
        field: (H, W) smooth random field of unit std (large correlation length).
        img: the image, float.

    Returns:
        The drifted image (a new array).
    """
    return img * np.exp(rng.uniform(0.1, 0.6) * field)[..., None]


FAMILIES = {"branching": _branching, "nested": _nested, "multipart": _multipart}
