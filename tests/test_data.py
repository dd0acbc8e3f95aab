"""Normalisation to RGB floats, tensors, augmentation alignment, splits."""

import numpy as np
import pytest
import torch

from tskd import data
from tskd.errors import TskdInputError, TskdWarning
from tskd.io import Sample


def test_to_float_rgb_kinds() -> None:
    u8 = np.array([[0, 255]], np.uint8)
    assert np.allclose(data.to_float_rgb(u8)[..., 0], [[0, 1]])
    u16 = np.linspace(0, 60000, 1000).astype(np.uint16).reshape(10, 100)
    f = data.to_float_rgb(u16)
    assert f.shape == (10, 100, 3) and f.min() == 0 and f.max() == 1
    limited = data.to_float_rgb(u16, contrast_limits=(0, 120000))
    assert limited.max() == pytest.approx(0.5, abs=1e-3)
    two = data.to_float_rgb(np.ones((4, 4, 2), np.uint8) * 255)
    assert np.all(two[..., 2] == 0) and np.all(two[..., :2] == 1)
    with pytest.warns(TskdWarning, match="5 channels"):
        assert data.to_float_rgb(np.zeros((4, 4, 5), np.uint16)).shape == (4, 4, 3)
    const = data.to_float_rgb(np.full((4, 4), 7.0))
    assert np.all(const == 0) and not np.isnan(const).any()


def test_tensors_and_sizes() -> None:
    t = data.image_to_tensor(np.zeros((30, 40), np.uint8), 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    lab = data.label_to_tensor(np.array([[0, 2], [1, 0]]), 4)
    assert lab.dtype == torch.int64 and set(lab.unique().tolist()) == {0, 1, 2}


def test_augmentation_keeps_image_and_label_aligned() -> None:
    yy, xx = np.mgrid[:32, :32]
    img = (((yy // 8) + (xx // 4) * (yy > 12)) % 2).astype(np.uint8) * 255  # asymmetric blocks
    ds = data.LabelledDataset([Sample("a", img, (img > 0).astype(np.int64))], 32, augment=True)
    torch.manual_seed(0)
    for _ in range(20):
        item = ds[0]
        # after flips, zoom and jitter the bright pixels are still the labelled ones (up to
        # interpolation at block edges); a misaligned flip or crop would agree on about half
        bright = item["image"][0] > 0.5 * (item["image"][0].max() + item["image"][0].min())
        assert (bright == (item["label"] == 1)).float().mean() > 0.93


def test_augmentation_is_repeatable_under_a_seed() -> None:
    img = np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)
    ds = data.LabelledDataset([Sample("a", img, np.zeros((32, 32), np.int64))], 32, augment=True)
    torch.manual_seed(3)
    a = ds[0]["image"]
    torch.manual_seed(3)
    assert torch.equal(a, ds[0]["image"])


def test_split_and_classes() -> None:
    samples = [Sample(str(i), np.zeros((2, 2)), np.full((2, 2), i % 3)) for i in range(10)]
    train, val = data.split_train_val(samples, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert data.split_train_val(samples, 0.2, seed=0) == (train, val)
    assert data.split_train_val(samples[:3], 0.5, seed=0)[1] == []
    assert data.num_classes(samples) == 3
    with pytest.raises(TskdInputError):
        data.split_train_val(samples, 1.0, 0)
