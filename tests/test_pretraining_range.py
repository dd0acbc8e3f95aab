"""Narrow-band (CT-like) pretraining scenes: the band, the extremes, the masks, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tskd.data.phantoms import pretraining, pretraining_range, pretraining_sample


def _scene(size: int = 96) -> tuple[np.ndarray, list[np.ndarray], np.ndarray, np.ndarray]:
    """A float scene with two high-contrast objects (0.1 and 0.9 on a 0.5 background)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    a = (xx - 30) ** 2 + (yy - 30) ** 2 < 15 ** 2
    b = (xx - 65) ** 2 + (yy - 60) ** 2 < 12 ** 2
    img = np.full((size, size, 3), 0.5, np.float32)
    img[a], img[b] = 0.1, 0.9
    return img, [a, b], yy, xx


@pytest.mark.parametrize("seed", range(12))
def test_narrow_band_compresses_the_scene_between_extremes(seed: int) -> None:
    img, masks, yy, xx = _scene()
    out, new = pretraining_range.narrow_band(np.random.default_rng(seed), img, masks, yy, xx)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray
    assert all(m.dtype == bool and m.shape == img.shape[:2] and m.any() for m in new)
    # the objects' visible pixels away from their edges: the scene's contrast of 0.8 between
    # them, the whole of its 1-99 % range, is compressed to the band's width
    interior = [m & (np.hypot(*np.gradient(m.astype(float))) == 0) for m in new[:2]]
    assert all(i.sum() > 20 for i in interior)  # the objects lie inside every outline drawn
    gap = abs(float(np.median(out[interior[1], 0]) - np.median(out[interior[0], 0])))
    assert 0.8 * pretraining_range.BAND[0] <= gap <= pretraining_range.BAND[1] + 0.02, gap


def test_narrow_band_adds_dark_outside_and_bright_dense_instances() -> None:
    """Across seeds both extremes appear, each as it is documented; only the outline overlaps
    other masks (it contains them), and a dense object overlaps none."""
    dark = bright = 0
    for seed in range(40):
        img, masks, yy, xx = _scene()
        out, new = pretraining_range.narrow_band(np.random.default_rng(seed), img, masks, yy, xx)
        stack = np.stack(new).astype(int)
        added = new[2:]  # the outline (if any), then dense objects occluding the rest
        assert len(new) >= 2
        outline = [m for m in added if m.sum() > 0.3 * m.size]
        if outline:
            dark += 1
            corner = ~outline[0] & ~np.roll(outline[0], 3, 0) & ~np.roll(outline[0], -3, 0)
            assert np.median(out[corner, 0]) <= 0.06
        dense = [m for m in added if m.sum() <= 0.3 * m.size]
        for m in dense:
            core = m & (np.hypot(*np.gradient(m.astype(float))) == 0)
            if core.sum() > 4:
                assert np.median(out[core, 0]) >= 0.8
                bright += 1
        if dense:  # a dense object occludes: only the outline may overlap the others
            assert (stack[:2].sum(0) + sum(m.astype(int) for m in dense)).max() <= 1
    assert dark >= 10 and bright >= 10, (dark, bright)


def test_broad_hdr_scenes_are_reproducible_and_broad_is_unchanged() -> None:
    a = pretraining_sample(np.random.default_rng(3), 64, "broad-hdr")
    b = pretraining_sample(np.random.default_rng(3), 64, "broad-hdr")
    np.testing.assert_array_equal(a[0], b[0])
    assert all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
    # "broad" draws exactly what it drew before "broad-hdr" existed (the recorded pretraining
    # command of the 16x16 teacher depends on it): the digest of six scenes, measured then
    digest = hashlib.sha256()
    rng = np.random.default_rng(11)
    for _ in range(6):
        img, masks = pretraining_sample(rng, 64, "broad")
        digest.update(img.tobytes())
        for m in masks:
            digest.update(m.tobytes())
    assert digest.hexdigest()[:16] == "7dd96e422e89b731"


def test_a_third_of_broad_hdr_scenes_are_narrow_band() -> None:
    rng = np.random.default_rng(0)
    narrow = 0
    for _ in range(60):
        img, masks = pretraining_sample(rng, 48, "broad-hdr")
        assert masks and all(m.any() for m in masks)
        gray = np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
        narrow += gray and np.ptp(np.percentile(img[..., 0], (25, 75))) < 0.25 * 255
    # HDR_CHANCE of 60, plus broad scenes that are gray and flat by chance
    assert pretraining.HDR_CHANCE * 60 * 0.6 <= narrow <= 60 * 0.7, narrow


def test_unknown_scenes_are_refused() -> None:
    with pytest.raises(ValueError, match="broad-hdr"):
        pretraining_sample(np.random.default_rng(0), 32, "hdr")
