"""Two measures of the grid artefact: dots on a regular grid instead of a mask.

A decoder that upsamples with transposed convolutions or a PixelShuffle head gives each
position inside a patch its own weights; until training evens them out, the output repeats with
the patch period and a thresholded mask falls apart into specks on a lattice (Odena et al.
2016, "Deconvolution and checkerboard artifacts"). Two measures find it:

- ``lattice_energy_share``: the share of a logit map's spectral energy (Hann-windowed, so the
  map's edges leak nothing) on the lattice of the patch frequency (multiples of S / period on
  both axes, the constant term left out). A map
  without periodic structure puts about the lattice's share of all frequencies there
  (``(S / period)^2 / S^2``, 0.4 % for period 16); the transposed-convolution ViT student puts
  8-10 % there at initialisation (measured in tests/test_grid_artefact.py).
- ``speck_share``: the share of a mask's foreground pixels in connected components of at most
  ``max_size`` pixels, what the eye sees as scattered dots.
"""

from __future__ import annotations

import numpy as np

SPECK_MAX_PIXELS = 4  # a component this small at 256 px is a dot, not an organ or a vessel


def lattice_energy_share(logits: np.ndarray, period: int) -> float:
    """Share of the spectral energy of a map on the lattice of its patch frequency.

    Args:
        logits: (H, W) float map (e.g. foreground minus background logit), H and W
            multiples of ``period``.
        period: The patch period in pixels (16 for a ViT-Tiny with 16x16 patches).

    Returns:
        A share in [0, 1]; 0 for a constant map.

    Raises:
        ValueError: Not a 2D map, or a side that is not a multiple of ``period``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] % period or z.shape[1] % period:
        raise ValueError(f"need a 2D map with sides that are multiples of {period}, got "
                         f"{z.shape}")
    window = np.outer(np.hanning(z.shape[0]), np.hanning(z.shape[1]))  # no edge leakage
    power = np.abs(np.fft.fft2((z - z.mean()) * window)) ** 2
    total = power.sum()
    if total == 0:
        return 0.0
    rows = np.arange(0, z.shape[0], z.shape[0] // period)
    cols = np.arange(0, z.shape[1], z.shape[1] // period)
    on_lattice = power[np.ix_(rows, cols)].sum() - power[0, 0]
    return float(on_lattice / total)


def speck_share(mask: np.ndarray, max_size: int = SPECK_MAX_PIXELS) -> float:
    """Share of foreground pixels in 8-connected components of at most ``max_size`` pixels.

    Args:
        mask: (H, W) label map; every non-zero pixel is foreground.
        max_size: The largest component, in pixels, that counts as a speck.

    Returns:
        A share in [0, 1]; 0 for an empty mask.
    """
    from scipy import ndimage

    fg = np.asarray(mask) != 0
    n = int(fg.sum())
    if n == 0:
        return 0.0
    labels, count = ndimage.label(fg, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return float(sizes[sizes <= max_size].sum() / n)
