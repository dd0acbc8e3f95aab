"""Augmented views of the transfer set: the image and the teacher's maps stay aligned."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tskd.training.distill import augmented_view

S = 64


def _smooth_image(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(S, S), mode="bicubic",
                      align_corners=False)[0]
    return 0.3 + 0.4 * (x - x.min()) / (x.max() - x.min())  # in [0.3, 0.7]: no clipping


def test_a_full_resolution_map_follows_the_image_exactly() -> None:
    crops = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x = _smooth_image(seed)
        view, teacher = augmented_view(x, {"same": x.clone()})
        t = teacher["same"]
        crops += not torch.allclose(t, x)
        # the image only differs from the teacher's map by the jitter, a linear map
        a = np.polyfit(t.flatten().numpy(), view.flatten().numpy(), 1)
        residual = view.flatten().numpy() - np.polyval(a, t.flatten().numpy())
        assert np.abs(residual).max() < 1e-4 and 0.89 < a[0] < 1.11
    assert 3 <= crops <= 9  # about half of the views are cut from a region


def test_a_coarse_map_is_cut_from_the_same_region() -> None:
    for seed in range(8):
        torch.manual_seed(seed)
        x = _smooth_image(seed)
        coarse = F.avg_pool2d(x[None], 4)[0]  # a teacher map on a 16x16 grid
        torch.manual_seed(seed)
        view, teacher = augmented_view(x, {"coarse": coarse})
        torch.manual_seed(seed)
        plain, _ = augmented_view(x, {"coarse": coarse})  # the same draws: the same view
        assert torch.equal(view, plain)
        expected = F.avg_pool2d(view[None], 4)[0]
        r = np.corrcoef(expected.flatten().numpy(), teacher["coarse"].flatten().numpy())[0, 1]
        # 0.9996 or more; a map left uncut when the image was cut: 0.74-0.975 on these seeds
        assert r > 0.995 and teacher["coarse"].shape == (3, 16, 16)
