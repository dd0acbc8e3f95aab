"""The four procedural target tasks, each shaped like a medical data set.

Every generator is ``f(rng, h, w) -> (image, label)`` and draws all its randomness from ``rng``,
so a sample is a pure function of its seed. Shapes, sizes, positions and contrasts vary from
sample to sample: a handful of labelled images should teach the task, but not trivially.
Lengths are given as fractions of the image side ``s`` so any size works. The abdominal CT
task lives in ``tskd.data.phantoms.ct``; ``GENERATORS`` here names all four.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tskd.data.phantoms.ct import ct_abdomen
from tskd.data.phantoms.util import (
    grid,
    harmonics,
    noise,
    rasterise_tubes,
    rotated,
    round_to_uint8,
    signed_distance,
    smooth_walk,
    star_rho,
)


# --------------------------------------------------------------------------- kidney ultrasound
@dataclass(frozen=True)
class _Fan:
    """The sector field of view from an apex above the image; lengths in pixels, angles in rad."""

    apex: tuple[float, float]  # (x, y)
    half: float  # half opening angle
    r0: float  # near and far radii from the apex
    r1: float
    r: np.ndarray  # (H, W) distance from the apex
    phi: np.ndarray  # (H, W) angle from the vertical
    mask: np.ndarray  # (H, W) bool: inside the fan
    depth: np.ndarray  # (H, W) in [0, 1] from r0 to r1


def _fan(rng: np.random.Generator, h: int, w: int, xx: np.ndarray, yy: np.ndarray) -> _Fan:
    """Draw the fan's apex, opening angle and radii."""
    apex_x = w / 2 + rng.uniform(-0.04, 0.04) * w
    apex_y = -rng.uniform(0.02, 0.2) * h
    half = np.deg2rad(rng.uniform(28, 42))
    r0 = rng.uniform(0.04, 0.12) * h - apex_y
    r1 = rng.uniform(0.9, 1.05) * h - apex_y
    dx, dy = xx - apex_x, yy - apex_y
    r = np.hypot(dx, dy)
    phi = np.arctan2(dx, dy)
    return _Fan((apex_x, apex_y), half, r0, r1, r, phi,
                (r > r0) & (r < r1) & (np.abs(phi) < half), np.clip((r - r0) / (r1 - r0), 0, 1))


def _tissue(rng: np.random.Generator, h: int, w: int, xx: np.ndarray, yy: np.ndarray,
            s: float) -> np.ndarray:
    """Tissue echogenicity (H, W): smooth variation and a few bright fascia bands."""
    ech = 0.5 + 0.08 * noise(rng, (h, w), 0.06 * s) + 0.05 * noise(rng, (h, w), 0.015 * s)
    for _ in range(rng.integers(1, 4)):
        y0 = rng.uniform(0.1, 0.9) * h
        bend = rng.uniform(-0.4, 0.4)
        line = y0 + bend * (xx - w / 2) ** 2 / w + 0.02 * s * noise(rng, (1, w), 0.1 * s)
        thick = rng.uniform(1, 3) * s / 256
        ech += rng.uniform(0.15, 0.4) * np.exp(-(((yy - line) / thick) ** 2))
    return ech


def _kidney(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, s: float, fan: _Fan,
            ech: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bent, slightly lumpy kidney placed inside the fan: (mask, echogenicity with it drawn)."""
    h, w = ech.shape
    r0, r1, half = fan.r0, fan.r1, fan.half
    a = rng.uniform(0.13, 0.26) * s
    b = a * rng.uniform(0.42, 0.65)
    rc = r0 + rng.uniform(0.3, 0.7) * (r1 - r0)
    pc = rng.uniform(-0.55, 0.55) * half
    cx, cy = fan.apex[0] + rc * np.sin(pc), fan.apex[1] + rc * np.cos(pc)
    u, v = rotated(xx, yy, cx, cy, rng.uniform(-np.pi / 2, np.pi / 2))
    bend = rng.uniform(0.0, 0.4)
    vb = v + bend * b * (u / a) ** 2
    rho = star_rho(u, vb, a, b, harmonics(rng, 6, 0.06))
    kidney = rho < 1.0
    tissue_level = float(np.mean(ech[kidney])) if kidney.any() else 0.5
    cortex = tissue_level * rng.uniform(0.25, 0.6)
    inside = np.where(kidney, cortex + 0.04 * noise(rng, (h, w), 0.03 * s), ech)
    # renal sinus: brighter centre, offset toward the hilum (the concave side)
    if rng.random() < 0.75:
        sinus = star_rho(u, vb + 0.25 * b, a * rng.uniform(0.5, 0.7), b * rng.uniform(0.3, 0.5),
                         harmonics(rng, 8, 0.15, 1.0)) < 1.0
        inside = np.where(sinus & kidney, tissue_level * rng.uniform(0.8, 1.4), inside)
    # capsule: a bright rim, partly broken
    sd = signed_distance(kidney)
    rim_w = rng.uniform(0.8, 2.2) * s / 256
    rim = np.exp(-((sd / rim_w) ** 2)) * np.clip(0.7 + 0.5 * noise(rng, (h, w), 0.05 * s), 0, 1)
    return kidney, inside + rng.uniform(0.3, 0.9) * rim


def _shadows(rng: np.random.Generator, s: float, fan: _Fan, ech: np.ndarray) -> np.ndarray:
    """Acoustic shadows behind strong reflectors (bowel gas, ribs) darken ``ech`` (H, W)."""
    r, phi, r0, r1, half = fan.r, fan.phi, fan.r0, fan.r1, fan.half
    for _ in range(rng.choice(3, p=[0.4, 0.4, 0.2])):
        ps, rs = rng.uniform(-0.9, 0.9) * half, r0 + rng.uniform(0.05, 0.6) * (r1 - r0)
        width = rng.uniform(0.03, 0.12)
        across = np.clip(1.0 - np.abs(phi - ps) / width, 0, 1) ** 0.5
        behind = np.clip((r - rs) / (0.02 * s), 0, 1)
        ech = ech * (1.0 - rng.uniform(0.5, 0.85) * across * behind)
        ech = ech + rng.uniform(0.4, 0.9) * across * np.exp(-(((r - rs) / (0.012 * s)) ** 2))
    return ech


def _b_mode(rng: np.random.Generator, s: float, fan: _Fan, ech: np.ndarray) -> np.ndarray:
    """Float (H, W) B-mode image of echogenicity ``ech``: attenuation, speckle, log compression."""
    h, w = ech.shape
    ech = ech * np.exp(-rng.uniform(0.3, 1.4) * fan.depth)  # depth attenuation, partial TGC
    # speckle: magnitude of a correlated complex Gaussian field (Rayleigh envelope)
    sig = (rng.uniform(0.5, 0.8) * s / 256, rng.uniform(0.9, 1.6) * s / 256)  # axial, lateral
    re = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sig)
    im = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), sig)
    env = np.sqrt(re * re + im * im)
    env /= env.mean() + 1e-8
    comp = np.log1p(rng.uniform(1, 4) * np.maximum(ech, 0) * env)  # log compression
    top = float(np.percentile(comp[fan.mask], 99)) if fan.mask.any() else 1.0
    img = comp / (top + 1e-8) * rng.uniform(180, 235) + rng.normal(0, 3, (h, w))
    return img * fan.mask


def kidney_us(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """B-mode ultrasound of a kidney: uint8 (H, W) image, int64 (H, W) label 1 = kidney.

    Args:
        rng: The only source of randomness.
        h: Height in pixels.
        w: Width in pixels.

    Returns:
        ``(image, label)``: uint8 (H, W); int64 (H, W), 1 = kidney.
    """
    s = float(min(h, w))
    yy, xx = grid(h, w)
    fan = _fan(rng, h, w, xx, yy)
    ech = _tissue(rng, h, w, xx, yy, s)
    kidney, ech = _kidney(rng, xx, yy, s, fan, ech)
    ech = _shadows(rng, s, fan, ech)
    img = _b_mode(rng, s, fan, ech)
    label = (kidney & fan.mask).astype(np.int64)
    return round_to_uint8(img), label


# --------------------------------------------------------------------------- skin lesion
def _hairs(rng: np.random.Generator, h: int, w: int, s: float) -> np.ndarray:
    """Soft map (H, W) in [0, 1] of dark thin hairs crossing the image."""
    n = int(rng.choice([0, 0, 1, 2, 3, 5, 8, 12]))
    if n == 0:
        return np.zeros((h, w), np.float32)
    xs, ys = [], []
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * (w, h)
        p2 = rng.uniform(-0.1, 1.1, 2) * (w, h)
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.25 * s, 2)
        length = np.linalg.norm(p2 - p0) + np.linalg.norm(p1 - p0)
        t = np.linspace(0, 1, int(length * 2) + 2)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        xs.append(pts[:, 0])
        ys.append(pts[:, 1])
    x = np.rint(np.concatenate(xs)).astype(np.int64)
    y = np.rint(np.concatenate(ys)).astype(np.int64)
    keep = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    acc = np.zeros((h, w), np.float32)
    acc[y[keep], x[keep]] = 1.0
    width = rng.uniform(0.5, 1.1) * s / 256
    soft = ndimage.gaussian_filter(acc, width)
    return np.clip(soft / (soft.max() + 1e-8) * 1.6, 0, 1)


def skin_lesion(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Dermoscopy of a pigmented lesion: uint8 (H, W, 3) image, int64 (H, W) label 1 = lesion.

    Args:
        rng: The only source of randomness.
        h: Height in pixels.
        w: Width in pixels.

    Returns:
        ``(image, label)``: uint8 (H, W, 3); int64 (H, W), 1 = lesion.
    """
    s = float(min(h, w))
    yy, xx = grid(h, w)
    tone = rng.uniform(0, 1)
    base = ((1 - tone) * np.array([236, 196, 178]) + tone * np.array([186, 128, 98])).astype(
        np.float32)
    skin = base[None, None, :] * (
        1
        + 0.04 * noise(rng, (h, w), 0.12 * s)[..., None]
        + 0.015 * noise(rng, (h, w), 0.008 * s, 0.03 * s, rng.uniform(0, np.pi))[..., None]
    )
    skin[..., 0] += 12 * np.clip(noise(rng, (h, w), 0.08 * s), 0, None)  # redness

    # lesion: ellipse with a fractal-ish, domain-warped border
    cx = w / 2 + rng.uniform(-0.12, 0.12) * s
    cy = h / 2 + rng.uniform(-0.12, 0.12) * s
    radius = rng.uniform(0.14, 0.33) * s
    u, v = rotated(xx, yy, cx, cy, rng.uniform(0, np.pi))
    rho = star_rho(u, v, radius, radius * rng.uniform(0.6, 1.0),
                   harmonics(rng, 28, rng.uniform(0.08, 0.25), 1.2))
    rho = rho + rng.uniform(0.03, 0.12) * noise(rng, (h, w), 0.03 * s)
    lesion = rho < 1.0
    darkness = rng.uniform(0.1, 0.85)
    light = np.array([176, 118, 84], np.float32) * (1.1 - 0.4 * darkness)
    dark = np.array([96, 56, 40], np.float32) * (1.1 - 0.5 * darkness)
    mix = np.clip(0.5 + 0.6 * noise(rng, (h, w), 0.05 * s) + 0.4 * (1 - rho), 0, 1)[..., None]
    col = light * (1 - mix) + dark * mix
    if rng.random() < 0.4:  # blue-white veil in part of the lesion
        veil = np.clip(noise(rng, (h, w), 0.06 * s) - 0.5, 0, 1)[..., None]
        col = col * (1 - veil) + np.array([110, 115, 140]) * veil
    if rng.random() < 0.5:  # dark globules
        dots = noise(rng, (h, w), 0.006 * s) > rng.uniform(1.8, 2.4)
        col = np.where(dots[..., None], col * 0.55, col)
    col = col * (1 + 0.05 * noise(rng, (h, w), 0.01 * s)[..., None])
    soft = rng.uniform(0.02, 0.18)
    alpha = np.clip((1.0 - rho) / soft + 0.5, 0, 1)[..., None]
    img = skin * (1 - alpha) + col * alpha

    hair = _hairs(rng, h, w, s)[..., None]
    img = img * (1 - 0.85 * hair) + np.array([40, 28, 20]) * 0.85 * hair
    # lighting: colour cast, vignetting, sometimes the dark ring of the dermatoscope
    img = img * rng.uniform(0.9, 1.08, 3).astype(np.float32)
    rr = np.hypot(xx - w / 2, yy - h / 2) / (0.5 * np.hypot(h, w))
    img = img * (1 - rng.uniform(0.1, 0.45) * rr**2)[..., None]
    if rng.random() < 0.35:
        ring = np.clip((rr - rng.uniform(0.72, 0.9)) / 0.04, 0, 1)
        img = img * (1 - ring)[..., None]
    img = img + rng.normal(0, rng.uniform(1.5, 5), img.shape).astype(np.float32)
    return round_to_uint8(img), lesion.astype(np.int64)


# --------------------------------------------------------------------------- retina vessels
def _vessel_tree(
    rng: np.random.Generator, h: int, w: int, s: float, disc: tuple[float, float], side: float,
    fov: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre-line points (x, y) and radii of a branching vessel tree grown from the disc."""
    fcx, fcy, fr = fov
    step = 0.6
    scale = s / 256
    # (heading relative to 'temporal = -x', curvature sign, start width) of the main trunks
    trunks = [(-np.pi / 2 - 0.35, -1, 4.0), (np.pi / 2 + 0.35, 1, 4.0),
              (-np.pi / 2 + 0.5, 1, 3.0), (np.pi / 2 - 0.5, -1, 3.0)]
    for _ in range(rng.integers(0, 3)):
        trunks.append((rng.uniform(-np.pi, np.pi), rng.choice([-1, 1]), 2.2))
    pending = []
    for heading, turn, width in trunks:
        if side < 0:  # mirror the x axis: the macula is on the other side
            heading, turn = np.pi - heading, -turn
        pending.append((disc[0], disc[1], heading + rng.normal(0, 0.12),
                        width * rng.uniform(0.85, 1.1), turn * rng.uniform(0.8, 1.7) / s,
                        rng.uniform(0.7, 1.0) * s, 0))
    xs, ys, rs = [], [], []
    while pending:
        x0, y0, heading, width, curv, length, level = pending.pop()
        n = max(4, int(length / step))
        x, y, theta = smooth_walk(rng, n, x0, y0, heading, step, curv, rng.uniform(0.1, 0.35))
        outside = np.hypot(x - fcx, y - fcy) > fr
        if outside.any():
            n = int(np.argmax(outside))
            x, y, theta = x[:n], y[:n], theta[:n]
        if n < 3:
            continue
        t = np.arange(n) / n
        wid = np.maximum(1.0, width * (1 - 0.55 * t))
        xs.append(x)
        ys.append(y)
        rs.append(np.maximum(0.5, wid * scale / 2))
        if width <= 1.5 or level >= 3:
            continue
        n_child = rng.poisson(n * step / (0.14 * s)) + 1
        for i in rng.integers(int(0.1 * n), n, n_child):
            cw = max(1.0, wid[i] * rng.uniform(0.5, 0.8))
            ang = theta[i] + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
            pending.append((x[i], y[i], ang, cw, rng.normal(0, 2.0) / s,
                            (n - i) * step * rng.uniform(0.4, 0.9), level + 1))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)


def retina_vessels(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Colour fundus photograph: uint8 (H, W, 3) image, int64 (H, W) label 1 = vessel.

    Args:
        rng: The only source of randomness.
        h: Height in pixels.
        w: Width in pixels.

    Returns:
        ``(image, label)``: uint8 (H, W, 3); int64 (H, W), 1 = vessel.
    """
    s = float(min(h, w))
    yy, xx = grid(h, w)
    fcx, fcy = w / 2 + rng.uniform(-0.02, 0.02) * s, h / 2 + rng.uniform(-0.02, 0.02) * s
    fr = rng.uniform(0.43, 0.49) * s
    rr = np.hypot(xx - fcx, yy - fcy)
    fov = rr < fr
    base = np.array([rng.uniform(170, 230), rng.uniform(65, 110), rng.uniform(20, 50)])
    light = 1 - rng.uniform(0.25, 0.55) * (rr / fr) ** 2
    light = light + rng.uniform(-0.15, 0.15) * (xx - fcx) / fr + rng.uniform(-0.1, 0.1) * (
        yy - fcy) / fr
    tex = 1 + 0.02 * noise(rng, (h, w), 0.006 * s) + 0.05 * noise(rng, (h, w), 0.12 * s)
    img = base[None, None, :] * (light * tex)[..., None]

    side = float(rng.choice([-1.0, 1.0]))  # optic disc right (+1) or left (-1) of the centre
    dcx = fcx + side * rng.uniform(0.45, 0.62) * fr
    dcy = fcy + rng.uniform(-0.1, 0.1) * fr
    drad = rng.uniform(0.055, 0.085) * s
    dd = np.hypot(xx - dcx, yy - dcy) / drad
    disc = np.clip(1.3 - dd, 0, 1) ** 0.7
    img = img + (np.array([60, 95, 70]) * rng.uniform(0.6, 1.2) * disc[..., None])
    cup = np.exp(-((dd / rng.uniform(0.3, 0.55)) ** 2))
    img = img + np.array([25, 40, 40]) * cup[..., None]
    mcx = fcx - side * rng.uniform(0.0, 0.1) * fr
    mcy = fcy + rng.uniform(-0.06, 0.06) * fr
    macula = np.exp(-((np.hypot(xx - mcx, yy - mcy) / (0.09 * s)) ** 2))
    img = img * (1 - rng.uniform(0.15, 0.35) * macula)[..., None]

    vx, vy, vr = _vessel_tree(rng, h, w, s, (dcx, dcy), side, (fcx, fcy, fr))
    dist, rad = rasterise_tubes((h, w), vx, vy, vr)
    vessel = (dist <= rad) & fov
    profile = np.clip(rad + 0.5 - dist, 0, 1) * np.exp(-0.5 * (dist / (rad + 0.5)) ** 2)
    strength = rng.uniform(0.35, 0.6) * np.clip(0.45 + rad / (2.5 * s / 256), 0, 1)
    darken = (strength * profile)[..., None] * np.array([0.45, 0.85, 0.8])
    img = img * (1 - darken)
    img = ndimage.gaussian_filter(img, (rng.uniform(0.3, 0.8),) * 2 + (0,))
    img = img + rng.normal(0, rng.uniform(1.5, 4.0), img.shape)
    edge = np.clip((fr - rr) / (0.015 * s), 0, 1)
    img = img * edge[..., None]
    return round_to_uint8(img), vessel.astype(np.int64)


GENERATORS = {
    "kidney_us": kidney_us,
    "skin_lesion": skin_lesion,
    "retina_vessels": retina_vessels,
    "ct_abdomen": ct_abdomen,
}
