"""High-dynamic-range pretraining scenes: objects in a narrow band of the displayed range.

In CT, and often in MR, the structures to segment differ by about 1 % of the intensity range
that an automatic window (0.5 / 99.5 percentiles, ``tskd.data.dataset``) spans: air at the dark
end and bone or contrast agent at the bright end take the rest of it. The other pretraining
scenes paint objects in colours drawn over the whole range, so an encoder pretrained on them
alone learns edges of high contrast. ``narrow_band`` turns an imaged scene into that statistic:
the scene is compressed into a band 5-25 % of the range wide, the field of view outside a
smooth outline goes dark, and a few small dense objects go bright (each a new instance). Like
the other pretraining modules it shares no code with the target tasks (``tests/test_phantoms.py``
checks the imports).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Masks = list[np.ndarray]

# band width as a fraction of the displayed range: 5 % is 13 grey levels of the uint8 scenes
BAND = (0.05, 0.25)


def _outline(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Bool (H, W): a large smooth closed outline (a field of view) covering 40-85 % of it."""
    h, w = yy.shape
    cx, cy = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    ax, ay = w * rng.uniform(0.35, 0.5), h * rng.uniform(0.3, 0.5)
    theta = np.arctan2((yy - cy) / ay, (xx - cx) / ax)
    edge = np.ones_like(theta)
    for k in range(2, 6):
        edge += rng.normal(0, 0.12 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot((xx - cx) / ax, (yy - cy) / ay) < edge


def _dense_objects(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray,
                   inside: np.ndarray) -> Masks:
    """1-4 small ellipses (2-8 % of the side) within ``inside``: calcifications, bone, contrast."""
    h, w = yy.shape
    s = min(h, w)
    out: Masks = []
    for _ in range(rng.integers(1, 5)):
        r = rng.uniform(0.02, 0.08) * s
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        ang = rng.uniform(0, np.pi)
        c, si = float(np.cos(ang)), float(np.sin(ang))
        u, v = (xx - cx) * c + (yy - cy) * si, (yy - cy) * c - (xx - cx) * si
        m = ((u / r) ** 2 + (v / (r * rng.uniform(0.5, 1.0))) ** 2 < 1) & inside
        if m.any():
            out.append(m)
    return out


def narrow_band(rng: np.random.Generator, img: np.ndarray, masks: Masks, yy: np.ndarray,
                xx: np.ndarray) -> tuple[np.ndarray, Masks]:
    """Compress an imaged scene into a narrow intensity band, with dark and bright extremes.

    Gray (CT and MR are), the scene's 1-99 % percentiles are mapped onto a band of width
    ``BAND`` (5-25 % of the range) centred at 0.3-0.7. Then two extremes, each drawn
    independently with chance 0.6 (so 36 % of these scenes have both and 16 % neither): outside
    a smooth outline the image goes to 0-0.05 (air) and objects' masks are cut to the outline
    (the outline itself becomes an instance that contains, so overlaps, the objects inside
    it); 1-4 small objects inside go to 0.85-1 (dense tissue), each a new instance occluding
    what is below, the outline included. Last, Gaussian noise of 0.1-1 % of the
    range dithers the band against the uint8 quantisation of the scenes.

    Args:
        rng: The only source of randomness.
        img: float (H, W, 3) imaged scene, about [0, 1].
        masks: bool (H, W) instance masks of the scene (visible parts).
        yy: float32 (H, W) row coordinates of ``np.mgrid``.
        xx: float32 (H, W) column coordinates.

    Returns:
        ``(image, masks)``: float32 (H, W, 3) in [0, 1]; the instance masks, possibly fewer
        (an object left outside the outline is dropped) or more (outline, dense objects).
    """
    gray = img.mean(axis=-1)
    lo, hi = np.percentile(gray, (1, 99))
    width = float(np.exp(rng.uniform(np.log(BAND[0]), np.log(BAND[1]))))
    centre = rng.uniform(0.3, 0.7)
    out = centre + ((gray - lo) / max(hi - lo, 1e-3) - 0.5) * width
    masks = list(masks)
    if rng.random() < 0.6:
        inside = _outline(rng, yy, xx)
        out = np.where(inside, out, rng.uniform(0, 0.05))
        masks = [m & inside for m in masks] + [inside]
    else:
        inside = np.ones_like(gray, bool)
    if rng.random() < 0.6:
        for m in _dense_objects(rng, yy, xx, inside):
            out = np.where(m, rng.uniform(0.85, 1.0), out)
            masks = [old & ~m for old in masks] + [m]
    out = ndimage.gaussian_filter(out, rng.uniform(0.3, 0.8))  # partial volume at the edges
    out = out + rng.uniform(0.001, 0.01) * rng.standard_normal(out.shape).astype(np.float32)
    out = np.clip(out, 0, 1).astype(np.float32)
    return np.repeat(out[..., None], 3, axis=-1), [m for m in masks if m.any()]
