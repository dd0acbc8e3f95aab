"""Generic instance-segmentation scenes for pretraining the miniature SAM with prompts.

Families of objects -- random shapes (ellipses, rectangles, polygons, stars, blobs), textured
regions (a region whose texture or statistics differ from its surround), curvilinear
structures, rings/annuli and clusters of small objects; with ``scenes="broad"`` also branching
trees, nested and multi-part objects (``pretraining_structures``) -- are painted over a random
background with random fills (``broad``: some with weak, blurred boundaries), then imaged with
random blur, noise (Gaussian, speckle, Poisson), contrast, gamma, inversion (``broad``: an
intensity drift across the field), in colour or gray; ``scenes="broad-hdr"`` compresses 35 %
of the broad scenes into a narrow band of the range, as CT and MR show their tissues
(``pretraining_range``). None of this code is shared with the target tasks in
``tskd.data.phantoms.targets``: the pretrained teacher must not have seen them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

from . import pretraining_range as ranged
from . import pretraining_structures as more

Masks = list[np.ndarray]


def _blend_matrix(n: int, g: int, scale: float) -> np.ndarray:
    """(n, g) Gaussian interpolation weights from a coarse grid of g nodes to n pixels."""
    x = (np.arange(n, dtype=np.float32) + 0.5) / scale + 1.0
    j = np.arange(g, dtype=np.float32)
    m = np.exp(-0.5 * ((x[:, None] - j[None, :]) / 0.8) ** 2)
    return m / m.sum(axis=1, keepdims=True)


def _field(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Smooth random field (H, W) with unit std: coarse white noise, Gaussian-interpolated.

    ``scale`` is the spacing of the coarse grid in pixels (the field's correlation length).
    """
    scale = max(1.0, float(scale))
    if scale < 6:  # fine grain: a small Gaussian blur of white noise is cheaper
        fine = ndimage.gaussian_filter(rng.standard_normal((h, w), np.float32), scale / 2)
        return (fine - fine.mean()) / (fine.std() + 1e-6)
    gh, gw = int(np.ceil(h / scale)) + 3, int(np.ceil(w / scale)) + 3
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    # einsum without BLAS: threaded BLAS on tiny products is very slow on a busy machine
    fine = np.einsum("ij,jk->ik", _blend_matrix(h, gh, scale), coarse, optimize=False)
    fine = np.einsum("ik,lk->il", fine, _blend_matrix(w, gw, scale), optimize=False)
    return (fine - fine.mean()) / (fine.std() + 1e-6)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 1, 3).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray
             ) -> np.ndarray:
    """A random fill (H, W, 3) in about [0, 1]: flat, noisy, stripes, checks or spots."""
    c1, c2 = _colour(rng), _colour(rng)
    kind = rng.choice(["flat", "noisy", "stripes", "checks", "spots", "gradient"],
                      p=[0.25, 0.25, 0.15, 0.1, 0.1, 0.15])
    if kind == "flat":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    if kind == "noisy":
        t = _field(rng, h, w, rng.uniform(1.5, 20))[..., None]
        return c1 + rng.uniform(0.05, 0.3) * t * (c2 - 0.5)
    if kind in ("stripes", "checks"):
        ang = rng.uniform(0, np.pi)
        f = rng.uniform(0.05, 0.5)
        c, s = float(np.cos(ang)) * f, float(np.sin(ang)) * f
        a = np.sin(xx * c + yy * s)
        if kind == "checks":
            a = np.sign(a * np.sin(yy * c - xx * s))
        t = (0.5 + 0.5 * a)[..., None]
        return c1 * t + c2 * (1 - t)
    if kind == "spots":
        t = (_field(rng, h, w, rng.uniform(1.5, 5)) > rng.uniform(0.5, 1.5))[..., None]
        return np.where(t, c2, c1).astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    t = (xx * float(np.cos(ang)) + yy * float(np.sin(ang)))[..., None]
    t = (t - t.min()) / (np.ptp(t) + 1e-6)
    return c1 * t + c2 * (1 - t)


def _frame(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ang: float
           ) -> tuple[np.ndarray, np.ndarray]:
    c, s = float(np.cos(ang)), float(np.sin(ang))
    cx, cy = float(cx), float(cy)
    return (xx - cx) * c + (yy - cy) * s, (yy - cy) * c - (xx - cx) * s


def _shape(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """One random shape: ellipse, rectangle, polygon, star or blob."""
    s = min(h, w)
    r = rng.uniform(0.05, 0.3) * s
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    u, v = _frame(xx, yy, cx, cy, rng.uniform(0, np.pi))
    ratio = rng.uniform(0.35, 1.0)
    kind = rng.choice(["ellipse", "rectangle", "polygon", "star", "blob"])
    if kind == "ellipse":
        return [(u / r) ** 2 + (v / (r * ratio)) ** 2 < 1]
    if kind == "rectangle":
        return [(np.abs(u) < r) & (np.abs(v) < r * ratio)]
    if kind == "polygon":
        k = rng.integers(3, 10)
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = r * rng.uniform(0.4, 1.0, k)
        pts = np.stack([cy + rad * np.sin(ang), cx + rad * np.cos(ang)], axis=1)
        return [polygon2mask((h, w), pts)]
    theta = np.arctan2(v, u)
    dist = np.hypot(u, v)
    if kind == "star":
        k = rng.integers(4, 9)
        inner = rng.uniform(0.35, 0.7)
        edge = r * (inner + (1 - inner) * (0.5 + 0.5 * np.cos(k * theta)) ** 2)
        return [dist < edge]
    edge = np.ones_like(theta)
    for k in range(2, 7):
        edge += rng.normal(0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return [dist < r * np.maximum(edge, 0.3)]


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def _region(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """A large irregular region (one connected piece of a thresholded field)."""
    s = min(h, w)
    f = _field(rng, h, w, rng.uniform(0.08, 0.2) * s)
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    bias = 1.5 - np.hypot(xx - cx, yy - cy) / (rng.uniform(0.15, 0.35) * s)
    return [_largest(f + bias > rng.uniform(0.5, 1.2))]


def _curves(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """1-3 smooth curves of 1-7 px width, each an instance."""
    s = min(h, w)
    out = []
    for _ in range(rng.integers(1, 4)):
        n = int(rng.uniform(0.3, 1.2) * s / 0.5)
        heading = rng.uniform(0, 2 * np.pi)
        bend = ndimage.gaussian_filter1d(rng.standard_normal(n), n / rng.uniform(3, 10))
        theta = heading + np.cumsum(bend) * rng.uniform(0.05, 0.3)
        theta = theta + rng.normal(0, 0.01) * np.arange(n)
        x = rng.uniform(0, w) + np.cumsum(np.cos(theta)) * 0.5
        y = rng.uniform(0, h) + np.cumsum(np.sin(theta)) * 0.5
        radius = rng.uniform(0.5, 3.5) * max(1.0, s / 256)
        xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        if ok.sum() < 4:
            continue
        pad = int(radius) + 2  # distance transform only in the curve's bounding box
        x0, x1 = max(0, xi[ok].min() - pad), min(w, xi[ok].max() + pad + 1)
        y0, y1 = max(0, yi[ok].min() - pad), min(h, yi[ok].max() + pad + 1)
        centre = np.ones((y1 - y0, x1 - x0), bool)
        centre[yi[ok] - y0, xi[ok] - x0] = False
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = ndimage.distance_transform_edt(centre) <= radius
        out.append(mask)
    return out


def _ring(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """An elliptic annulus; sometimes its inside as a second object."""
    s = min(h, w)
    r = rng.uniform(0.08, 0.3) * s
    u, v = _frame(xx, yy, rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h,
                  rng.uniform(0, np.pi))
    rho = np.sqrt((u / r) ** 2 + (v / (r * rng.uniform(0.6, 1.0))) ** 2)
    inner = rng.uniform(0.45, 0.85)
    ring = (rho < 1) & (rho >= inner)
    return [ring, rho < inner] if rng.random() < 0.35 else [ring]


def _cluster(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray) -> Masks:
    """3-15 small blobs around a centre, each an instance (cells, nodules, dots)."""
    s = min(h, w)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    spread = rng.uniform(0.06, 0.25) * s
    size = rng.uniform(0.015, 0.05) * s
    out: Masks = []
    taken = np.zeros((h, w), bool)
    for _ in range(rng.integers(3, 16)):
        px, py = cx + rng.normal(0, spread), cy + rng.normal(0, spread)
        r = max(1.5, size * rng.uniform(0.6, 1.4))
        y0, y1 = max(0, int(py - r - 1)), min(h, int(py + r + 2))
        x0, x1 = max(0, int(px - r - 1)), min(w, int(px + r + 2))
        if y0 >= y1 or x0 >= x1:
            continue
        u, v = _frame(xx[y0:y1, x0:x1], yy[y0:y1, x0:x1], px, py, rng.uniform(0, np.pi))
        blob = (u / r) ** 2 + (v / (r * rng.uniform(0.6, 1.0))) ** 2 < 1
        if (blob & taken[y0:y1, x0:x1]).any():
            continue
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = blob
        taken |= mask
        out.append(mask)
    return out


FAMILIES: dict[str, Callable[..., Masks]] = {
    "shape": _shape,
    "region": _region,
    "curves": _curves,
    "ring": _ring,
    "cluster": _cluster,
}
_WEIGHTS = np.array([0.35, 0.15, 0.17, 0.15, 0.18])
# "basic": the families the built-in mini SAM of tskd 0.1 was pretrained on; "broad" adds
# branching trees, nested and multi-part objects, weak boundaries and intensity drift
# "broad-hdr" adds the narrow-band scenes of ``pretraining_range``
SCENES = ("basic", "broad", "broad-hdr")
HDR_CHANCE = 0.35  # share of "broad-hdr" scenes compressed into a narrow band
BROAD_FAMILIES: dict[str, Callable[..., Masks]] = {**FAMILIES, **more.FAMILIES}
_BROAD_WEIGHTS = np.array([0.2, 0.1, 0.12, 0.08, 0.12, 0.14, 0.14, 0.1])


def _background(rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray
                ) -> np.ndarray:
    base = _texture(rng, h, w, yy, xx)
    shade = 1 + rng.uniform(0, 0.3) * _field(rng, h, w, rng.uniform(0.2, 0.6) * min(h, w))
    return base * shade[..., None]


def _imaging(rng: np.random.Generator, img: np.ndarray, broad: bool = False) -> np.ndarray:
    """Blur, noise, contrast, gamma, inversion and gray conversion of a float image.

    ``broad`` first multiplies half of the images by a smooth intensity drift.
    """
    if broad and rng.random() < 0.5:
        h, w = img.shape[:2]
        img = more.bias_field(rng, _field(rng, h, w, rng.uniform(0.3, 0.8) * min(h, w)), img)
    if rng.random() < 0.4:
        img = ndimage.gaussian_filter(img, (rng.uniform(0.4, 2.0),) * 2 + (0,))
    img = np.clip(img, 0, 1)
    kind = rng.choice(["none", "gaussian", "speckle", "poisson"], p=[0.2, 0.35, 0.25, 0.2])
    if kind == "gaussian":
        img = img + rng.uniform(0.01, 0.12) * rng.standard_normal(img.shape, np.float32)
    elif kind == "speckle":
        speck = rng.rayleigh(1.0, img.shape[:2]).astype(np.float32) ** rng.uniform(0.3, 1.0)
        img = img * (speck / speck.mean())[..., None]
    elif kind == "poisson":
        peak = rng.uniform(15, 150)  # shot noise, Gaussian approximation of Poisson
        img = img + np.sqrt(img / peak) * rng.standard_normal(img.shape, np.float32)
    img = np.clip(img, 0, 1) ** rng.uniform(0.6, 1.6)
    mean = img.mean()
    img = (img - mean) * rng.uniform(0.5, 1.4) + mean
    if rng.random() < 0.2:
        img = 1 - img
    if rng.random() < 0.4:
        mix = rng.dirichlet(np.ones(3))
        gray = img[..., 0] * mix[0] + img[..., 1] * mix[1] + img[..., 2] * mix[2]
        img = np.repeat(gray[..., None].astype(np.float32), 3, axis=-1)
    return img


def pretraining_sample(
    rng: np.random.Generator, size: int | tuple[int, int] = 256, scenes: str = "basic"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A random scene: (image uint8 (H, W, 3), list of bool (H, W) instance masks, >= 1).

    One to four times (``broad``: one to six), the objects of a family drawn from ``FAMILIES``
    (``broad``: ``BROAD_FAMILIES``) are painted; later occlude earlier ones (masks hold the
    visible part; none overlap but a narrow-band scene's outline, ``pretraining_range``);
    objects left with fewer than a few pixels (6 at 256 px, scaled with the area, at least 4)
    are dropped; a scene left empty gets a central ellipse.

    Args:
        rng: The only source of randomness: a scene is a pure function of it.
        size: Side, or (H, W), in pixels.
        scenes: ``"basic"`` (the built-in mini SAM's first pretraining), ``"broad"`` or
            ``"broad-hdr"`` (``broad``, and ``HDR_CHANCE`` of the scenes in a narrow band).

    Returns:
        ``(image, masks)``: uint8 (H, W, 3); one bool (H, W) mask per object, at least one.

    Raises:
        ValueError: ``scenes`` is not one of ``SCENES`` (a caller's mistake).
    """
    if scenes not in SCENES:
        raise ValueError(f"scenes must be one of {SCENES}, got {scenes!r}")
    broad = scenes != "basic"
    families, weights = (BROAD_FAMILIES, _BROAD_WEIGHTS) if broad else (FAMILIES, _WEIGHTS)
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    h, w = int(h), int(w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _background(rng, h, w, yy, xx)
    masks: Masks = []
    min_area = max(4, int(6 * (min(h, w) / 256) ** 2))
    for _ in range(rng.integers(1, 7 if broad else 5)):
        family = rng.choice(list(families), p=weights)
        new = [m for m in families[family](rng, h, w, yy, xx) if m.any()]
        if not new:
            continue
        fill = _texture(rng, h, w, yy, xx)
        if rng.random() < 0.3:  # same texture, other mean: only the statistics differ
            fill = fill * rng.uniform(0.6, 1.4)
        soft = broad and family not in ("cluster", "branching") and rng.random() < 0.3
        for m in new:
            jitter = rng.uniform(0.85, 1.15) if family in ("cluster", "multipart") else 1.0
            if soft:
                more.soft_paint(rng, img, m, fill * jitter)
            else:
                img[m] = fill[m] * jitter
            masks = [old & ~m for old in masks]
            masks.append(m)
    masks = [m for m in masks if m.sum() >= min_area]
    if not masks:  # always at least one object: a central ellipse
        m = ((xx - w / 2) / (0.2 * w)) ** 2 + ((yy - h / 2) / (0.15 * h)) ** 2 < 1
        img[m] = _colour(rng)
        masks = [m]
    img = _imaging(rng, img, broad)
    if scenes == "broad-hdr" and rng.random() < HDR_CHANCE:
        img, ranged_masks = ranged.narrow_band(rng, img, masks, yy, xx)
        masks = [m for m in ranged_masks if m.sum() >= min_area] or ranged_masks[-1:]
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), masks
