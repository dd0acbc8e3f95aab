"""Inference on every input kind, tiles without seams, stacks in batches, ranking.

Speed is measured by benchmarks/inference_speed.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tskd.errors import TskdInputError
from tskd.inference.predict import predict_paths, rank_for_annotation
from tskd.inference.segmenter import Segmenter, is_stack_guess


class Counting(nn.Module):
    """Wraps a model and records the batch size of every forward call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return self.inner(x)


def conv_model(num_classes: int = 3, k: int = 3) -> nn.Module:
    """Fully convolutional, hence translation-equivariant (away from its zero padding)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, k, padding=k // 2), nn.ReLU(), nn.Conv2d(8, num_classes, 1)
    )


class Threshold(nn.Module):
    """Two classes: foreground where the red channel is above ``t``."""

    def __init__(self, t: float = 0.5) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 20.0 * (x[:, :1] - self.t)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _float_rgb(image: np.ndarray) -> torch.Tensor:
    from tskd.data.dataset import to_float_rgb

    return torch.from_numpy(np.ascontiguousarray(to_float_rgb(image))).permute(2, 0, 1)[None]


RNG = np.random.default_rng(0)
KINDS = {
    "gray_uint8": (RNG.integers(0, 256, (50, 70), dtype=np.uint8), None, (50, 70)),
    "rgb": (RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8), None, (50, 70)),
    "uint16": (RNG.integers(0, 65536, (50, 70), dtype=np.uint16), None, (50, 70)),
    "five_channel": (RNG.random((50, 70, 5)).astype(np.float32), False, (50, 70)),
    "stack": (RNG.integers(0, 256, (5, 40, 30), dtype=np.uint8), None, (5, 40, 30)),
    "stack_rgb": (RNG.integers(0, 256, (3, 40, 30, 3), dtype=np.uint8), None, (3, 40, 30)),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # >3 channels: first 3 used, with a warning
@pytest.mark.parametrize("kind", list(KINDS))
def test_output_shape_and_dtype_for_each_input_kind(kind: str):
    image, is_stack, shape = KINDS[kind]
    seg = Segmenter(conv_model(), 32, 3, device="cpu")
    labels = seg.segment(image, is_stack=is_stack)
    assert labels.shape == shape and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() < 3
    probs = seg.segment_probabilities(image, is_stack=is_stack)
    c_axis = 1 if len(shape) == 3 else 0
    assert probs.shape == shape[:c_axis] + (3,) + shape[c_axis:]
    assert np.allclose(probs.sum(axis=c_axis), 1, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=c_axis), labels)


def test_large_image_runs_in_tiles():
    image = RNG.integers(0, 256, (1500, 1300), dtype=np.uint8)
    model = Counting(conv_model())
    seg = Segmenter(model, 32, 3, device="cpu")  # default tile_size 1024, overlap 64
    labels = seg.segment(image)
    assert labels.shape == (1500, 1300) and labels.dtype == np.int64
    assert model.batches == [4]  # 2 x 2 tiles of 1024 px, in one batch


def test_stack_runs_in_batches_and_matches_slices():
    stack = RNG.integers(0, 256, (5, 40, 30), dtype=np.uint8)
    model = Counting(conv_model())
    seg = Segmenter(model, 32, 3, device="cpu", batch_size=2)
    labels = seg.segment(stack)
    assert model.batches == [2, 2, 1]
    for z in range(5):
        assert np.array_equal(labels[z], seg.segment(stack[z]))


def test_logits_are_resized_back_to_the_input():
    image = np.zeros((100, 120), np.uint8)
    image[:, :60] = 255
    labels = Segmenter(Threshold(), 32, 2, device="cpu").segment(image)
    assert (labels[:, :56] == 1).all() and (labels[:, 64:] == 0).all()


def test_contrast_limits_are_used_for_16_bit_images():
    image = np.full((40, 40), 1000, np.uint16)
    image[:, :20] = 3000
    seg = Segmenter(Threshold(), 32, 2, device="cpu")
    wide = seg.segment(image, contrast_limits=(0, 4000))  # 0.25 and 0.75
    assert (wide[:, :16] == 1).all() and (wide[:, 24:] == 0).all()
    narrow = seg.segment(image, contrast_limits=(0, 1500))  # 0.67 and 1.0
    assert (narrow == 1).all()


def test_tiles_match_untiled_for_a_translation_equivariant_model():
    # tiles as large as the model input, so nothing is resized: away from tile edges each tile
    # sees exactly what the whole image does, and tile edges carry almost no weight
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (150, 130, 3), dtype=np.uint8)
    model = conv_model()
    with torch.inference_mode():
        ref = model(_float_rgb(image)).softmax(dim=1)[0].numpy()
    counted = Counting(model)
    seg = Segmenter(counted, 48, 3, device="cpu", tile_size=48, tile_overlap=16)
    probs = seg.segment_probabilities(image)
    assert sum(counted.batches) == 5 * 4  # rows 0,32,64,96,102 x cols 0,32,64,82
    assert np.abs(probs - ref).max() < 2e-3
    assert (seg.segment(image) == ref.argmax(axis=0)).mean() > 0.999


def test_constant_image_has_no_seams():
    model = conv_model(k=1)  # pointwise: a constant image must give constant output
    seg = Segmenter(model, 32, 3, device="cpu", tile_size=64, tile_overlap=16)
    image = np.full((300, 260), 77, np.uint8)
    probs = seg.segment_probabilities(image)
    assert np.ptp(probs, axis=(1, 2)).max() < 1e-5
    assert len(np.unique(seg.segment(image))) == 1


def test_is_stack_guess():
    assert not is_stack_guess(np.zeros((8, 9)))
    assert not is_stack_guess(np.zeros((8, 9, 3)))
    assert not is_stack_guess(np.zeros((8, 9, 4)))
    assert is_stack_guess(np.zeros((5, 8, 9)))
    assert is_stack_guess(np.zeros((2, 8, 9, 3)))
    assert not is_stack_guess(np.zeros((8, 9, 5)), is_stack=False)
    with pytest.raises(TskdInputError, match="as a 2D image"):
        is_stack_guess(np.zeros((2, 8, 9, 3)), is_stack=False)
    with pytest.raises(TskdInputError):
        Segmenter(conv_model(), 32, 3, device="cpu").segment(np.zeros(10))


def test_wrong_class_count_is_reported():
    seg = Segmenter(conv_model(num_classes=3), 32, 4, device="cpu")
    with pytest.raises(TskdInputError, match="num_classes"):
        seg.segment(np.zeros((20, 20), np.uint8))


def test_rank_by_entropy_puts_ambiguous_images_first():
    seg = Segmenter(Threshold(), 32, 2, device="cpu")
    clear = np.zeros((20, 20), np.uint8)
    ambiguous = np.full((20, 20), 128, np.uint8)  # red 0.502: logits ~0, entropy ~1
    half = clear.copy()
    half[:, :10] = 255
    ranking = rank_for_annotation(seg, [clear, ambiguous, half])
    assert [i for i, _ in ranking][0] == 1
    assert ranking[0][1] > 0.99 and ranking[-1][1] < 0.01
    # a stack ranks its slices
    ranking = rank_for_annotation(seg, np.stack([clear, clear, ambiguous, half, clear, clear]))
    assert ranking[0][0] == 2 and len(ranking) == 6


def test_rank_by_teacher_student_disagreement():
    student = Segmenter(Threshold(0.5), 32, 2, device="cpu")
    teacher = Segmenter(Threshold(0.25), 32, 2, device="cpu")
    dark = np.zeros((20, 20), np.uint8)
    grey = dark.copy()
    grey[:, :10] = 100  # 0.39: foreground for the teacher only -> Dice 0
    bright = dark.copy()
    bright[:, :10] = 255  # both agree
    ranking = rank_for_annotation(student, [dark, grey, bright], teacher_segmenter=teacher)
    assert ranking[0] == (1, pytest.approx(1.0))
    assert [s for _, s in ranking[1:]] == [pytest.approx(0.0), pytest.approx(0.0)]


def test_predict_paths_writes_png_and_tif(tmp_path: Path):
    from tskd.data import files

    src = tmp_path / "in"
    src.mkdir()
    img = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    stack = RNG.integers(0, 256, (3, 30, 20), dtype=np.uint8)
    files.write_image(src / "slice.png", img)
    files.write_image(src / "vol.tif", stack)
    seg = Segmenter(conv_model(), 32, 3, device="cpu")
    seen = []
    out = predict_paths(seg, [src / "slice.png", src / "vol.tif"], tmp_path / "out",
                        progress=lambda d, t: seen.append((d, t)))
    assert [p.name for p in out] == ["slice.png", "vol.tif"]
    assert np.array_equal(files.read_label(out[0]), seg.segment(img))
    # the tif records its axes (ZYX), so the file is a stack; the bare array is ambiguous
    assert np.array_equal(files.read_label(out[1]), seg.segment(stack, is_stack=True))
    assert seen == [(1, 2), (2, 2)]
    files.write_image(src / "slice.tif", img)
    with pytest.raises(TskdInputError, match="slice"):
        predict_paths(seg, [src / "slice.png", src / "slice.tif"], tmp_path / "out2")
