"""tskd.data.dataset: normalisation to RGB floats, tensors, augmentation alignment and seeding,
splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tskd.data import dataset
from tskd.data.samples import Sample
from tskd.errors import TskdInputError, TskdWarning

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------ to_float_rgb


def test_uint8_is_divided_by_255_and_gray_repeated() -> None:
    out = dataset.to_float_rgb(np.array([[0, 51, 255]], np.uint8))
    assert out.shape == (1, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[0, 0.2, 1]], atol=1e-7)
    assert np.array_equal(out[..., 0], out[..., 2])
    rgb = RNG.integers(0, 255, (4, 5, 3), np.uint8)
    np.testing.assert_allclose(dataset.to_float_rgb(rgb), rgb / 255, atol=1e-6)
    assert dataset.to_float_rgb(np.ones((4, 4, 1), np.uint8)).shape == (4, 4, 3)


def test_16_bit_uses_robust_percentiles() -> None:
    u16 = np.linspace(0, 60000, 1000).astype(np.uint16).reshape(10, 100)
    f = dataset.to_float_rgb(u16)
    assert f.shape == (10, 100, 3) and f.min() == 0 and f.max() == 1
    assert 0.45 < f[5, 0, 0] < 0.55  # the middle of the range stays in the middle
    hot = RNG.integers(1000, 2000, (64, 64)).astype(np.uint16)
    hot[0, 0] = 65535  # one hot pixel must not squash everything else to black
    out = dataset.to_float_rgb(hot)[..., 0]
    assert out[0, 0] == 1 and np.median(out) > 0.4


def test_contrast_limits_override_the_window() -> None:
    u16 = np.array([[0, 30000, 60000]], np.uint16)
    np.testing.assert_allclose(dataset.to_float_rgb(u16, (0, 120000))[..., 0], [[0, 0.25, 0.5]],
                               atol=1e-6)
    u8 = np.array([[10, 20, 30]], np.uint8)
    np.testing.assert_allclose(dataset.to_float_rgb(u8, (10, 30))[..., 1], [[0, 0.5, 1]])
    assert np.all(dataset.to_float_rgb(u8, (20, 20)) == 0)  # an empty window: zeros, no NaN


def test_signed_and_float_images() -> None:
    ct = np.linspace(-1000, 1000, 400).reshape(20, 20).astype(np.int16)  # Hounsfield units
    out = dataset.to_float_rgb(ct)
    assert out.min() == 0 and out.max() == 1 and out[0, 0, 0] == 0
    f = RNG.random((8, 8)).astype(np.float64) * 5
    f[0, 0], f[0, 1], f[0, 2] = np.nan, np.inf, -np.inf
    out = dataset.to_float_rgb(f)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 1 and out[0, 2, 0] == 0
    assert np.all(dataset.to_float_rgb(np.full((8, 8), np.nan)) == 0)


def test_constant_image_gives_zeros() -> None:
    for image in (np.full((4, 4), 7.0), np.full((4, 4), 300, np.uint16)):
        out = dataset.to_float_rgb(image)
        assert np.all(out == 0) and not np.isnan(out).any()


def test_sparse_spots_on_flat_background_stay_visible() -> None:
    image = np.zeros((100, 100), np.uint16)
    image[10, 10] = image[50, 50] = 4000  # under 0.5 % of the pixels: both percentiles are 0
    out = dataset.to_float_rgb(image)[..., 0]
    assert out[10, 10] == 1 and out[0, 0] == 0


def test_channels_two_padded_many_truncated_rgba_silent() -> None:
    two = dataset.to_float_rgb(np.ones((4, 4, 2), np.uint8) * 255)
    assert np.all(two[..., 2] == 0) and np.all(two[..., :2] == 1)
    with pytest.warns(TskdWarning, match="5 channels; using the first 3"):
        five = RNG.random((4, 4, 5))
        np.testing.assert_array_equal(dataset.to_float_rgb(five),
                                      dataset.to_float_rgb(five[..., :3]))
    rgba = RNG.integers(0, 255, (4, 4, 4), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(dataset.to_float_rgb(rgba),
                                      dataset.to_float_rgb(rgba[..., :3]))
    with pytest.raises(TskdInputError, match=r"expected a 2D image .*\(3, 4, 4, 2\)"):
        dataset.to_float_rgb(np.zeros((3, 4, 4, 2)))


def test_multichannel_scans_get_a_window_per_channel() -> None:
    t1 = RNG.integers(0, 100, (32, 32))
    t2 = RNG.integers(0, 10000, (32, 32))
    out = dataset.to_float_rgb(np.stack([t1, t2], axis=-1).astype(np.uint16))
    for c in (0, 1):  # both modalities use the whole range, not just the brighter one
        assert out[..., c].min() == 0 and out[..., c].max() == 1
        assert 0.3 < out[..., c].mean() < 0.7


def test_large_images_window_from_a_subsample() -> None:
    big = RNG.gamma(2.0, 500, (1100, 1000)).astype(np.uint16)
    lo, hi = np.percentile(big, dataset.PERCENTILES)
    exact = np.clip((big.astype(np.float32) - lo) / (hi - lo), 0, 1)
    assert np.abs(dataset.to_float_rgb(big)[..., 0] - exact).max() < 0.01


# ------------------------------------------------------------------ tensors


def test_image_to_tensor_matches_to_float_rgb_then_resize() -> None:
    for image in (RNG.integers(0, 4000, (30, 40), np.uint16),
                  RNG.integers(0, 255, (30, 40, 3), np.uint8),
                  RNG.random((30, 40, 2)).astype(np.float32)):
        t = dataset.image_to_tensor(image, 16)
        assert t.shape == (3, 16, 16) and t.dtype == torch.float32 and t.is_contiguous()
        ref = torch.from_numpy(dataset.to_float_rgb(image)).permute(2, 0, 1)[None]
        ref = F.interpolate(ref, size=(16, 16), mode="bilinear", antialias=True)[0]
        torch.testing.assert_close(t, ref.clamp(0, 1), atol=1e-5, rtol=0)
    same = RNG.integers(0, 255, (8, 8), np.uint8)
    np.testing.assert_array_equal(dataset.image_to_tensor(same, 8)[1].numpy(),
                                  same / np.float32(255))
    assert dataset.image_to_tensor(np.full((8, 8), 1000, np.uint16), 8, (0, 2000)).max() == 0.5


def test_label_to_tensor_is_nearest() -> None:
    label = np.array([[0, 2], [1, 0]])
    up = dataset.label_to_tensor(label, 4)
    assert up.dtype == torch.int64 and up.tolist()[0] == [0, 0, 2, 2] and up[3, 0] == 1
    down = dataset.label_to_tensor(RNG.integers(0, 3, (37, 23)), 8)
    assert down.shape == (8, 8) and set(down.unique().tolist()) <= {0, 1, 2}
    src = np.ones((4, 4), np.int64)
    same = dataset.label_to_tensor(src, 4)
    same[0, 0] = 5
    assert src[0, 0] == 1  # a copy, not a view of the caller's array


# ------------------------------------------------------------------ datasets


def _block_image(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric image and the label that thresholds it: any misalignment shows."""
    yy, xx = np.mgrid[:size, :size]
    img = ((((yy // 8) + (xx // 4) * (yy > 12)) % 2) * 200 + 30).astype(np.uint8)
    img[:4, :6] = 230  # breaks the remaining symmetries
    return img, (img > 128).astype(np.int64)


def _agreement(item: dict[str, torch.Tensor]) -> float:
    """Share of pixels where 'image bright' and 'label 1' agree."""
    x = item["image"][0]
    bright = x > 0.5 * (x.max() + x.min())
    return (bright == (item["label"] == 1)).float().mean().item()


@pytest.mark.parametrize("any_orientation", [False, True])
def test_augmentation_keeps_image_and_label_aligned(any_orientation: bool) -> None:
    img, lab = _block_image()
    ds = dataset.LabelledDataset([Sample("a", img, lab)], 32, augment=True,
                              any_orientation=any_orientation)
    torch.manual_seed(0)
    for _ in range(30):
        item = ds[0]
        assert item["image"].shape == (3, 32, 32) and item["label"].dtype == torch.int64
        assert item["image"].min() >= 0 and item["image"].max() <= 1
        # after flips, rotations, zoom and jitter the bright pixels are still the labelled ones
        # (up to interpolation at block edges); a misaligned flip or crop agrees on about half
        assert _agreement(item) > 0.93


def _dihedral(label: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a square map; index 0 is the identity, 4 the horizontal flip."""
    rots = [label.rot90(k, (-2, -1)) for k in range(4)]
    return rots + [r.flip(-1) for r in rots]


def _orientations(ds: dataset.LabelledDataset, base: torch.Tensor, n: int) -> set[int]:
    """Which dihedral transforms of ``base`` the un-zoomed items of ``ds`` show."""
    seen = set()
    for _ in range(n):
        label = ds[0]["label"]
        seen |= {k for k, t in enumerate(_dihedral(base)) if torch.equal(label, t)}
    return seen


def test_augmentation_changes_geometry_and_intensity() -> None:
    img, lab = _block_image()
    sample = Sample("a", img, lab)
    base = dataset.LabelledDataset([sample], 32)[0]["label"]
    free = dataset.LabelledDataset([sample], 32, augment=True, any_orientation=True)
    torch.manual_seed(1)
    assert len(_orientations(free, base, 120)) >= 6  # flips and 90-degree rotations
    upright = dataset.LabelledDataset([sample], 32, augment=True)
    torch.manual_seed(1)
    # default: horizontal flips only (no upside-down ultrasound fans or anatomy)
    assert _orientations(upright, base, 60) == {0, 4}
    torch.manual_seed(2)
    items = [upright[0] for _ in range(30)]
    assert any(it["label"].sum() != base.sum() for it in items)  # zoomed
    assert len({round(it["image"].mean().item(), 4) for it in items}) > 20  # jitter


def test_augmentation_is_repeatable_under_a_seed() -> None:
    img = RNG.integers(0, 255, (32, 32), np.uint8)
    ds = dataset.LabelledDataset([Sample("a", img, (img > 99).astype(np.int64))], 32, augment=True,
                              any_orientation=True)

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [t for _ in range(5) for t in ds[0].values()]

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_labelled_dataset_precomputes_and_validates() -> None:
    samples = [Sample(f"s{i}", RNG.integers(0, 4000, (20, 30), np.uint16),
                      RNG.integers(0, 3, (20, 30))) for i in range(3)]
    ds = dataset.LabelledDataset(samples, 16)
    assert len(ds) == 3 and ds.names == ["s0", "s1", "s2"]
    item = ds[1]
    assert item["image"] is ds.images[1] and item["label"] is ds.labels[1]  # no per-item work
    assert item["image"].shape == (3, 16, 16) and item["label"].shape == (16, 16)
    with pytest.raises(TskdInputError, match="sample x has no label map"):
        dataset.LabelledDataset([Sample("x", np.zeros((4, 4)))], 8)
    with pytest.raises(TskdInputError, match=r"sample y: image \(4, 4\) and label \(4, 5\)"):
        dataset.LabelledDataset([Sample("y", np.zeros((4, 4)), np.zeros((4, 5), np.int64))], 8)


def test_image_dataset() -> None:
    ds = dataset.ImageDataset([np.zeros((10, 12), np.uint8), np.full((5, 5, 3), 255, np.uint8)], 8)
    assert len(ds) == 2
    item = ds[1]
    assert item["index"] == 1 and item["image"].shape == (3, 8, 8)
    assert torch.all(item["image"] == 1) and torch.all(ds[0]["image"] == 0)


# ------------------------------------------------------------------ classes, splits


def _samples(n: int) -> list[Sample]:
    return [Sample(str(i), np.zeros((2, 2)), np.full((2, 2), i % 3)) for i in range(n)]


def test_num_classes() -> None:
    assert dataset.num_classes(_samples(10)) == 3
    assert dataset.num_classes(_samples(1)) == 2  # background only still means two classes
    with pytest.raises(TskdInputError, match="no labelled image"):
        dataset.num_classes([Sample("u", np.zeros((2, 2)))])


def test_split_is_deterministic_and_a_partition() -> None:
    samples = _samples(10)
    train, val = dataset.split_train_val(samples, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert dataset.split_train_val(samples, 0.2, seed=0) == (train, val)
    assert {s.name for s in train} | {s.name for s in val} == {s.name for s in samples}
    assert not {s.name for s in train} & {s.name for s in val}
    assert [s.name for s in train] == sorted((s.name for s in train), key=int)  # order kept
    others = {tuple(s.name for s in dataset.split_train_val(samples, 0.2, seed=k)[1])
              for k in range(1, 6)}
    assert len(others) > 1  # the seed matters


@pytest.mark.parametrize(
    ("n", "fraction", "n_val"),
    [(3, 0.5, 0), (4, 0.05, 1), (4, 0.9, 3), (10, 0.0, 0), (10, 0.25, 2), (20, 0.2, 4)],
)
def test_split_sizes(n: int, fraction: float, n_val: int) -> None:
    train, val = dataset.split_train_val(_samples(n), fraction, seed=0)
    assert len(val) == n_val and len(train) == n - n_val and train


def test_split_rejects_bad_fraction() -> None:
    for bad in (1.0, -0.1):
        with pytest.raises(TskdInputError, match=r"val_fraction must be in \[0, 1\)"):
            dataset.split_train_val(_samples(5), bad, 0)
