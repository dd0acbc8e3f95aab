"""Small numerical helpers for the procedural target tasks (``tskd.data.phantoms.targets``).

Smooth random fields by spectral filtering (constant cost whatever the correlation length),
star-shaped regions from a perturbed radius, and thin curves rasterised through one distance
transform. Everything takes a ``numpy.random.Generator`` so a sample is a pure function of it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx) as float32 (H, W) arrays, in pixels from the top-left pixel.

    Args:
        h: Height in pixels.
        w: Width in pixels.

    Returns:
        ``(yy, xx)``: float32 (H, W) row and column coordinates.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return yy, xx


def noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sigma: float,
    sigma_v: float | None = None,
    angle: float = 0.0,
) -> np.ndarray:
    """Gaussian-correlated noise, zero mean and unit std, float32 (H, W).

    White noise filtered by a Gaussian in Fourier space (transfer function
    ``exp(-2 pi^2 sigma^2 f^2)``, f in cycles per pixel), which costs the same for any sigma
    and keeps large smooth fields cheap.

    Args:
        rng: The only source of randomness.
        shape: (H, W) in pixels.
        sigma: Correlation length in pixels (along ``angle`` when ``sigma_v`` is given).
        sigma_v: Correlation length across ``angle``, making the field anisotropic; None:
            ``sigma`` (isotropic).
        angle: Direction of ``sigma`` in radians, from the x axis.

    Returns:
        float32 (H, W), zero mean and unit standard deviation.
    """
    h, w = shape
    white = rng.standard_normal((h, w)).astype(np.float32)
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    su = sigma
    sv = sigma if sigma_v is None else sigma_v
    c, s = float(np.cos(angle)), float(np.sin(angle))
    fu = fx * c + fy * s
    fv = -fx * s + fy * c
    gain = np.exp(-2.0 * np.pi**2 * ((fu * su) ** 2 + (fv * sv) ** 2))
    out = np.fft.irfft2(spec * gain, s=(h, w)).astype(np.float32)
    out -= out.mean()
    std = out.std()
    return out / std if std > 0 else out


def rotated(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) in a frame centred at (cx, cy) and rotated by ``angle``.

    Args:
        xx: x coordinates in pixels (any shape; ``grid``'s).
        yy: y coordinates in pixels, same shape.
        cx: Centre x in pixels.
        cy: Centre y in pixels.
        angle: Rotation in radians.

    Returns:
        (u, v), arrays of ``xx``'s shape, in pixels.
    """
    dx, dy = xx - float(cx), yy - float(cy)
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return dx * c + dy * s, -dx * s + dy * c


def harmonics(rng: np.random.Generator, kmax: int, amp: float, decay: float = 1.5) -> np.ndarray:
    """Fourier terms (k, amplitude, phase) of a radius perturbation, amplitude ~ k^-decay.

    Args:
        rng: The only source of randomness.
        kmax: Highest harmonic; terms run from k = 2.
        amp: Scale of the amplitudes (a fraction of the radius).
        decay: Exponent of the amplitude's fall-off with k.

    Returns:
        float32 (kmax - 1, 3): rows (k, amplitude, phase in radians).
    """
    k = np.arange(2, kmax + 1, dtype=np.float32)
    mag = amp * k**-decay * rng.standard_normal(k.size)
    phase = rng.uniform(0, 2 * np.pi, k.size)
    return np.stack([k, mag, phase], axis=1).astype(np.float32)


def star_rho(u: np.ndarray, v: np.ndarray, a: float, b: float, coeffs: np.ndarray) -> np.ndarray:
    """Normalised radius of a star-shaped region: the boundary is where it equals 1.

    An ellipse with semi-axes (a, b) whose radius is modulated by ``coeffs`` from ``harmonics``
    (evaluated on a 1-D table of angles, so the cost does not grow with the number of terms);
    the modulation is floored at 0.2.

    Args:
        u: Coordinates along the first semi-axis in pixels (``rotated``'s).
        v: Coordinates along the second semi-axis, same shape.
        a: First semi-axis in pixels.
        b: Second semi-axis in pixels.
        coeffs: ``harmonics``' rows; empty: a plain ellipse.

    Returns:
        The normalised radius, ``u``'s shape: < 1 inside the region.
    """
    un, vn = u / a, v / b
    r = np.sqrt(un * un + vn * vn)
    if len(coeffs) == 0:
        return r
    theta = np.arctan2(vn, un)
    table_theta = np.linspace(-np.pi, np.pi, _TABLE + 1, dtype=np.float32)
    k, mag, phase = coeffs[:, 0:1], coeffs[:, 1:2], coeffs[:, 2:3]
    mod = 1.0 + (mag * np.cos(k * table_theta[None, :] + phase)).sum(axis=0)
    idx = np.rint((theta + np.pi) * (_TABLE / (2 * np.pi))).astype(np.intp)
    return r / np.maximum(mod, 0.2).astype(np.float32)[idx]


_TABLE = 2048


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's border in pixels: negative inside, positive outside.

    Euclidean distance transforms (``scipy.ndimage.distance_transform_edt``) of the mask and its
    complement; an empty mask gives +inf everywhere.

    Args:
        mask: bool (H, W).

    Returns:
        float32 (H, W).
    """
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    return (outside - inside).astype(np.float32)


def smooth_walk(
    rng: np.random.Generator, n: int, x0: float, y0: float, heading: float, step: float,
    curvature: float, wiggle: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth random curve of ``n`` points: x, y and heading arrays (vectorised).

    Args:
        rng: The only source of randomness.
        n: Number of points.
        x0: Start x in pixels.
        y0: Start y in pixels.
        heading: Start direction in radians, from the x axis.
        step: Distance between points in pixels.
        curvature: A constant turn in radians per pixel.
        wiggle: The standard deviation (radians) of a slowly varying random deviation of the
            heading along the curve.

    Returns:
        (x, y, heading), float arrays of ``n`` values (pixels, pixels, radians).
    """
    drift = np.cumsum(ndimage.gaussian_filter1d(rng.standard_normal(n), sigma=max(1.0, n / 8)))
    drift = drift - drift[0]
    drift *= wiggle / (drift.std() + 1e-8)
    theta = heading + curvature * step * np.arange(n) + drift
    x = x0 + np.cumsum(np.cos(theta)) * step
    y = y0 + np.cumsum(np.sin(theta)) * step
    return x, y, theta


def rasterise_tubes(
    shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tubes around centre-line points: distance to the nearest centre pixel and its radius.

    One Euclidean distance transform with indices serves all curves at once (where two tubes
    meet, the nearer centre line decides).

    Args:
        shape: (H, W) in pixels.
        xs: Centre-line x coordinates in pixels (rounded; points outside are dropped).
        ys: Centre-line y coordinates, same length.
        radii: Tube radius in pixels at each point.

    Returns:
        ``(dist, radius_at_nearest)``, both float32 (H, W); a pixel is inside a tube where
        ``dist <= radius_at_nearest``. No point inside the image: dist is +inf everywhere.
    """
    h, w = shape
    rad = np.zeros((h, w), np.float32)
    xi = np.rint(xs).astype(np.int64)
    yi = np.rint(ys).astype(np.int64)
    keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    if not keep.any():
        return np.full((h, w), np.inf, np.float32), rad
    np.maximum.at(rad, (yi[keep], xi[keep]), radii[keep].astype(np.float32))
    centre = rad > 0
    dist, (iy, ix) = ndimage.distance_transform_edt(~centre, return_indices=True)
    return dist.astype(np.float32), rad[iy, ix]


def round_to_uint8(img: np.ndarray) -> np.ndarray:
    """Round float values to the nearest integer, clip to [0, 255] and cast to uint8.

    Args:
        img: float intensities on the 0-255 scale, any shape.

    Returns:
        uint8 array of the same shape (``np.rint``: halves to even).
    """
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
