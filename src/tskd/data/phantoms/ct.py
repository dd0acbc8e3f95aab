"""The abdominal CT target task: an axial slice in HU + 1024 with four labelled structures.

One of the four target tasks of ``tskd.data.phantoms.targets`` (which lists them all in
``GENERATORS``); kept apart as the only multi-class, uint16 one. ``ct_abdomen(rng, h, w)`` draws
all its randomness from ``rng``, in a fixed order: body and fat, organs, vertebra, scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tskd.data.phantoms.util import grid, harmonics, noise, rotated, star_rho


@dataclass(frozen=True)
class _Body:
    """The body outline: centre and half-axes in pixels, (H, W) bool masks, the contrast phase."""

    cx: float
    cy: float
    ax: float
    ay: float
    body: np.ndarray
    inner: np.ndarray  # inside the subcutaneous fat and the abdominal wall muscle
    contrast: bool  # portal-venous phase: organs brighter

    def at(self, nu: float, nv: float) -> tuple[float, float]:
        """Body-normalised coordinates -> pixels (x, y)."""
        return self.cx + nu * self.ax, self.cy + nv * self.ay


def _organ(
    xx: np.ndarray, yy: np.ndarray, rng: np.random.Generator, centre: tuple[float, float],
    axes: tuple[float, float], angle: float, lump: float,
) -> np.ndarray:
    u, v = rotated(xx, yy, centre[0], centre[1], angle)
    return star_rho(u, v, axes[0], axes[1], harmonics(rng, 6, lump)) < 1.0


def _body(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, s: float,
          hu: np.ndarray) -> _Body:
    """Draw the body, its fat, wall muscle, bowel and gas into ``hu`` (H, W) in place."""
    h, w = hu.shape
    cx, cy = w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.02, 0.06) * h
    ax = rng.uniform(0.36, 0.46) * s
    ay = ax * rng.uniform(0.62, 0.8)
    u, v = rotated(xx, yy, cx, cy, rng.uniform(-0.05, 0.05))
    rho = star_rho(u, v, ax, ay, harmonics(rng, 5, 0.04))
    body = rho < 1.0
    fat_t = rng.uniform(0.04, 0.12)
    mus_t = rng.uniform(0.03, 0.06)
    contrast = rng.random() < 0.6  # portal-venous phase: organs brighter
    fat_hu = rng.uniform(-115, -80)
    hu[body] = fat_hu
    muscle = body & (rho < 1 - fat_t) & (rho > 1 - fat_t - mus_t)
    hu[muscle] = rng.uniform(40, 60)
    inner = rho < 1 - fat_t - mus_t
    # bowel loops and gas in the visceral fat
    bowel = inner & (noise(rng, (h, w), 0.03 * s) > rng.uniform(-0.1, 0.5))
    hu[bowel] = rng.uniform(20, 45) + (30 if contrast else 0)
    gas = bowel & (noise(rng, (h, w), 0.012 * s) > rng.uniform(1.6, 2.3))
    hu[gas] = -900
    return _Body(cx, cy, ax, ay, body, inner, bool(contrast))


def _organs(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, b: _Body, jit: np.ndarray,
            hu: np.ndarray, label: np.ndarray, liver_hu: float) -> None:
    """Draw liver (1), kidneys (2), spleen (3), the aorta and back muscles (0) in place."""
    ax, ay, at, inner = b.ax, b.ay, b.at, b.inner
    liver = inner & _organ(xx, yy, rng, at(-0.45 + jit[0], -0.1 + jit[1]),
                           (rng.uniform(0.35, 0.55) * ax, rng.uniform(0.45, 0.7) * ay),
                           rng.uniform(-0.5, 0.2), 0.08)
    spleen = inner & _organ(xx, yy, rng, at(0.55 + jit[2], 0.25 + jit[3]),
                            (rng.uniform(0.12, 0.22) * ax, rng.uniform(0.22, 0.38) * ay),
                            rng.uniform(-0.9, -0.3), 0.06)
    kidneys = np.zeros(hu.shape, bool)
    for sgn in (-1.0, 1.0):
        kidneys |= _organ(xx, yy, rng, at(sgn * (0.3 + jit[4] / 2), 0.42 + jit[5] / 2),
                          (rng.uniform(0.09, 0.14) * ax, rng.uniform(0.14, 0.2) * ay),
                          sgn * rng.uniform(0.2, 0.7), 0.04)
    kidneys &= inner
    hu[liver] = liver_hu
    label[liver] = 1
    hu[spleen] = liver_hu + rng.uniform(-12, 15)
    label[spleen & ~liver] = 3
    hu[kidneys] = rng.uniform(150, 200) if b.contrast else rng.uniform(25, 40)
    label[kidneys] = 2
    # aorta and psoas/paraspinal muscles are background
    aorta = _organ(xx, yy, rng, at(0.05 + jit[6] / 3, 0.2), (0.045 * ax,) * 2, 0, 0.0)
    hu[aorta] = rng.uniform(150, 250) if b.contrast else rng.uniform(35, 50)
    label[aorta] = 0
    for sgn in (-1.0, 1.0):
        para = b.body & _organ(xx, yy, rng, at(sgn * 0.18, 0.72 + jit[7] / 3),
                               (0.14 * ax, 0.17 * ay), 0, 0.05)
        hu[para] = rng.uniform(40, 60)
        label[para] = 0


def _vertebra(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, s: float, b: _Body,
              jit: np.ndarray, hu: np.ndarray, label: np.ndarray) -> None:
    """Draw the vertebra (4): body with cortical rim, posterior arch and spinous process."""
    vr = rng.uniform(0.09, 0.13) * b.ax
    vcx, vcy = b.at(jit[6] / 4, 0.5 + jit[7] / 3)
    vbody = np.hypot(xx - vcx, (yy - vcy) * 1.1) < vr
    arch = (np.abs(np.hypot(xx - vcx, yy - vcy - 1.4 * vr) - 0.8 * vr) < 0.2 * vr) & (
        yy > vcy + 0.9 * vr)
    spinous = (np.abs(xx - vcx) < 0.18 * vr) & (yy > vcy + 1.6 * vr) & (yy < vcy + 2.6 * vr)
    vert = b.body & (vbody | arch | spinous)
    core = ndimage.binary_erosion(vert, iterations=max(1, int(0.015 * s)))
    hu[vert] = rng.uniform(500, 900)
    hu[core] = rng.uniform(180, 300)
    label[vert] = 4


def ct_abdomen(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial abdominal CT slice: uint16 (H, W) image of HU + 1024, int64 (H, W) label.

    Image values are HU + 1024 clipped to 0..4095; labels 1 liver, 2 kidneys, 3 spleen, 4 vertebra.

    Args:
        rng: The only source of randomness.
        h: Height in pixels.
        w: Width in pixels.

    Returns:
        ``(image, label)``: uint16 (H, W) HU + 1024, int64 (H, W) class indices 0-4.
    """
    s = float(min(h, w))
    yy, xx = grid(h, w)
    hu = np.full((h, w), -1000.0, np.float32)
    label = np.zeros((h, w), np.int64)
    body = _body(rng, xx, yy, s, hu)
    liver_hu = rng.uniform(45, 65) + (rng.uniform(40, 70) if body.contrast else 0)
    jit = rng.uniform(-0.06, 0.06, 8)
    _organs(rng, xx, yy, body, jit, hu, label, liver_hu)
    _vertebra(rng, xx, yy, s, body, jit, hu, label)
    hu = ndimage.gaussian_filter(hu, 0.6 * s / 256)  # partial volume
    noise_hu = rng.uniform(8, 25)
    hu = hu + noise_hu * ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32),
                                                 0.7) * 1.8
    img = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16)
    return img, label
