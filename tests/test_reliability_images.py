"""Images: one reading of axes everywhere, a pixel budget checked before decoding, and tiling
at the scale the model was trained at (issue 9)."""

from __future__ import annotations

import json
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from tskd.apps.cli import main
from tskd.data import files
from tskd.data.axes import image_axes
from tskd.data.pixel_budget import MAX_PIXELS_ENV, pixel_budget
from tskd.data.samples import load_labelled, load_unlabelled, read_labelled_set
from tskd.errors import TskdInputError, TskdWarning
from tskd.inference.predict import predict_paths, segmenter_from_bundle
from tskd.inference.segmenter import Segmenter

RNG = np.random.default_rng(0)
BOMB_MESSAGE = (
    "decodes to 30000x30000 = 900 M pixels, over the pixel budget of 268 M (2^28); raise it "
    "with --max-pixels / data.max_pixels (or TSKD_MAX_PIXELS) or crop the image"
)


@pytest.fixture(autouse=True)
def _no_env_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)


def _tskd_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TskdWarning)]


class Threshold(nn.Module):
    """Two classes: foreground where the red channel is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 20.0 * (x[:, :1] - 0.5)
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _student_bundle(folder: Path, image_size: int = 32, **meta: Any) -> Path:
    from tskd.config import StudentConfig
    from tskd.inference import bundle
    from tskd.models.student import Student

    torch.manual_seed(0)
    cfg = StudentConfig(embed_dim=32, depth=1, num_heads=2, decoder_channels=8)
    bundle.save_student(Student(cfg, 2, image_size), folder, dict(meta))
    return folder


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny student (input 32 px) trained, says its meta, on 64x64 images."""
    return _student_bundle(tmp_path_factory.mktemp("m") / "student", train_image_shape=[64, 64])


# ---------------------------------------------------------------------------- axes

TWO_CHANNEL = RNG.integers(0, 255, (2, 64, 64), np.uint8)
# how a channel-first 2-channel TIFF reaches users: no axes, tifffile's own 'Q' axis, or axes
# named by tifffile, OME and ImageJ
CHANNEL_FIRST_WRITERS = {
    "no_metadata": {"metadata": None},  # tifffile: generic pages, axes 'IYX'
    "shaped_unknown": {},  # tifffile: axes 'QYX'
    "shaped_cyx": {"metadata": {"axes": "CYX"}},
    "ome_cyx": {"ome": True, "metadata": {"axes": "CYX"}},
    "imagej_cyx": {"imagej": True, "metadata": {"axes": "CYX"}},
}


@pytest.mark.parametrize("writer", list(CHANNEL_FIRST_WRITERS))
def test_channel_first_tiff_is_one_two_channel_image_for_training_and_predict(
    tmp_path: Path, writer: str, capsys: pytest.CaptureFixture, student_dir: Path
) -> None:
    kwargs = CHANNEL_FIRST_WRITERS[writer]
    guessed = writer in ("no_metadata", "shaped_unknown")
    for sub in ("train/images", "train/labels", "unl"):
        (tmp_path / sub).mkdir(parents=True)
    tifffile.imwrite(tmp_path / "train/images/a.tif", TWO_CHANNEL, **kwargs)
    tifffile.imwrite(tmp_path / "unl/a.tif", TWO_CHANNEL, **kwargs)
    label = np.zeros((64, 64), np.uint8)
    label[10:20, 10:30] = 1
    files.write_label(tmp_path / "train/labels/a.png", label)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (sample,) = load_labelled(tmp_path / "train")
        unlabelled = load_unlabelled(tmp_path / "unl")
        image, ax = files.read_image_axes(tmp_path / "unl/a.tif")
        seg = Segmenter(Threshold(), 32, 2, device="cpu")
        (out,) = predict_paths(seg, [tmp_path / "unl/a.tif"], tmp_path / "pred")
    assert files.read_label(out).shape == (64, 64)
    assert sample.image.shape == (64, 64, 2)
    np.testing.assert_array_equal(sample.image[..., 1], TWO_CHANNEL[1])
    assert [(s.name, s.image.shape) for s in unlabelled] == [("a", (64, 64, 2))]
    assert image.shape == (64, 64, 2) and not ax.is_stack and ax.channel_axis == 0
    assert ax.source == ("guess" if guessed else "metadata")
    said = _tskd_warnings(caught)
    if guessed:  # the label confirms the reading; without it the guess is said once per read
        assert len(said) == 3
        assert "unl: 1 image(s) have no axes metadata and were read by their shape: a.tif " \
               "(2, 64, 64) as one 2-channel image (channels first)" in said[0]
        for one in said[1:]:  # read_image_axes, then predict_paths
            assert one.startswith(f"{tmp_path / 'unl/a.tif'}: no axes metadata; read a.tif "
                                  "(2, 64, 64) as one 2-channel image (channels first)")
    else:
        assert said == []

    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # said above already; a new process says it again
        code = main(["predict", str(tmp_path / "unl/a.tif"), "--model", str(student_dir),
                     "-o", str(tmp_path / "cli"), "--device", "cpu"])
    assert code == 0
    assert files.read_label(tmp_path / "cli/a.png").shape == (64, 64)
    err = capsys.readouterr().err
    assert ("as one 2-channel image (channels first)" in err) == guessed


STACK_WRITERS = {
    "shaped_zyx": {"metadata": {"axes": "ZYX"}},
    "ome_zyx": {"ome": True, "metadata": {"axes": "ZYX"}},
    "imagej_zyx": {"imagej": True, "metadata": {"axes": "ZYX"}},
    "shaped_tyx": {"metadata": {"axes": "TYX"}},  # time points are slices too
}


@pytest.mark.parametrize("writer", list(STACK_WRITERS))
def test_stack_with_axes_metadata_is_slices_for_training_and_predict(
    tmp_path: Path, writer: str
) -> None:
    stack = RNG.integers(0, 255, (2, 64, 64), np.uint8)
    label = np.zeros((2, 64, 64), np.uint8)
    label[:, 5:9, 5:9] = 1
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images/v.tif", stack, **STACK_WRITERS[writer])
    files.write_label(tmp_path / "labels/v.tif", label)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TskdWarning)  # metadata: nothing to guess, nothing said
        samples = load_labelled(tmp_path)
        unlabelled = load_unlabelled(tmp_path / "images")
        seg = Segmenter(Threshold(), 32, 2, device="cpu")
        (out,) = predict_paths(seg, [tmp_path / "images/v.tif"], tmp_path / "pred")
    assert [(s.name, s.image.shape) for s in samples] == [("v_z0000", (64, 64)),
                                                         ("v_z0001", (64, 64))]
    assert [s.name for s in unlabelled] == ["v_z0000", "v_z0001"]
    pred = files.read_label(out)
    assert pred.shape == (2, 64, 64)
    np.testing.assert_array_equal(pred[1], seg.segment(stack[1]))


def test_stack_metadata_against_a_2d_label_says_how_the_image_was_read(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images/v.tif", TWO_CHANNEL, metadata={"axes": "ZYX"})
    files.write_label(tmp_path / "labels/v.png", np.ones((64, 64), np.uint8))
    with pytest.raises(TskdInputError) as err:
        load_labelled(tmp_path)
    assert str(err.value) == (
        "v.tif and its label v.png differ in size: image (2, 64, 64) read as a stack of 2 "
        "slices (axes ZYX from the file's metadata), label (64, 64) (height and width must "
        "match)"
    )


def test_a_label_that_contradicts_the_guess_is_followed_and_said(tmp_path: Path) -> None:
    # a 3-slice stack saved without axes: its label (3, H, W) shows it is a stack, but
    # predict (no label) would read it as a 3-channel image; training says so
    stack = RNG.integers(0, 255, (3, 32, 32), np.uint8)
    (tmp_path / "images").mkdir()
    np.save(tmp_path / "images/v.npy", stack)
    label = np.zeros((3, 32, 32), np.uint8)
    label[:, 1:4, 1:4] = 1
    files.write_label(tmp_path / "labels/v.tif", label)
    with pytest.warns(TskdWarning) as caught:
        samples = load_labelled(tmp_path)
    assert [s.image.shape for s in samples] == [(32, 32)] * 3
    (said,) = _tskd_warnings(caught.list)
    assert ("v.npy (3, 32, 32) as a stack of 3 slices to fit its label map, though without a "
            "label map (tskd predict) it reads as one 3-channel image") in said


def test_multi_dimensional_metadata_and_shapes(tmp_path: Path) -> None:
    czyx = RNG.integers(0, 255, (2, 3, 16, 12), np.uint8)
    tifffile.imwrite(tmp_path / "czyx.tif", czyx, metadata={"axes": "CZYX"})
    out = files.read_image(tmp_path / "czyx.tif")
    assert out.shape == (3, 16, 12, 2)
    np.testing.assert_array_equal(out[2, ..., 1], czyx[1, 2])
    tifffile.imwrite(tmp_path / "tzyx.tif", czyx, metadata={"axes": "TZYX"})
    with pytest.raises(TskdInputError) as err:
        files.read_image(tmp_path / "tzyx.tif")
    assert str(err.value) == (
        f"{tmp_path / 'tzyx.tif'}: shape (2, 3, 16, 12) with axes TZYX has 2 stack axes (TZ); "
        "tskd reads 2D images or stacks along one axis, so save one T at a time"
    )
    np.save(tmp_path / "big4d.npy", np.zeros((6, 7, 8, 9), np.uint8))
    with pytest.raises(TskdInputError, match=r"big4d\.npy: cannot tell which axis of shape "
                       r"\(6, 7, 8, 9\) holds the channels"):
        files.read_image(tmp_path / "big4d.npy")
    planar = RNG.integers(0, 255, (3, 8, 6), np.uint8)  # tifffile's default: planar RGB 'SYX'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(tmp_path / "planar.tif", planar)
    image, ax = files.read_image_axes(tmp_path / "planar.tif")
    assert image.shape == (8, 6, 3) and ax.source == "metadata"


@pytest.mark.parametrize(
    ("shape", "kwargs", "standard", "is_stack", "source", "ambiguous"),
    [
        ((64, 64), {}, (64, 64), False, "shape", False),
        ((64, 64, 3), {}, (64, 64, 3), False, "guess", False),
        ((2, 64, 64), {}, (64, 64, 2), False, "guess", True),
        ((4, 64, 64), {}, (64, 64, 4), False, "guess", True),
        ((5, 64, 64), {}, (5, 64, 64), True, "guess", False),
        ((64, 64, 5), {}, (64, 64, 5), True, "guess", False),  # as before: a 64-slice stack
        ((5, 64, 64, 3), {}, (5, 64, 64, 3), True, "guess", False),
        ((5, 2, 64, 64), {}, (5, 64, 64, 2), True, "guess", True),  # ImageJ Z, C, Y, X
        ((2, 5, 64, 64), {}, (5, 64, 64, 2), True, "guess", True),
        ((2, 64, 64), {"axes": "ZYX"}, (2, 64, 64), True, "metadata", False),
        ((2, 64, 64), {"axes": "QYX"}, (64, 64, 2), False, "guess", True),
        ((5, 64, 64, 3), {"axes": "QYXS"}, (5, 64, 64, 3), True, "metadata", False),
        ((2, 64, 64), {"is_stack": True}, (2, 64, 64), True, "caller", False),
        ((64, 64, 5), {"is_stack": False}, (64, 64, 5), False, "caller", False),
        ((2, 64, 64), {"rgb": False}, (2, 64, 64), True, "metadata", False),  # napari layer
        ((64, 64, 3), {"rgb": True}, (64, 64, 3), False, "metadata", False),
        ((4, 64, 64, 3), {"rgb": True}, (4, 64, 64, 3), True, "metadata", False),
        ((3, 64, 64), {"label_shape": (3, 64, 64)}, (3, 64, 64), True, "label", False),
    ],
)
def test_image_axes_readings(shape: tuple[int, ...], kwargs: dict[str, Any],
                             standard: tuple[int, ...], is_stack: bool, source: str,
                             ambiguous: bool) -> None:
    ax = image_axes(shape, **kwargs)
    assert ax.standard(np.zeros(shape, np.uint8)).shape == standard
    assert (ax.is_stack, ax.source, ax.ambiguous) == (is_stack, source, ambiguous)


def test_image_axes_refuses_what_no_reading_fits() -> None:
    with pytest.raises(TskdInputError, match=r"x\.npy: cannot read an array of shape \(10,\)"):
        image_axes((10,), where="x.npy")
    with pytest.raises(TskdInputError, match=r"an image of shape \(2, 2, 3, 8, 8\) is not "
                       "supported"):
        image_axes((2, 2, 3, 8, 8))
    with pytest.raises(TskdInputError, match="as a 2D image"):
        image_axes((2, 8, 9, 3), is_stack=False)
    with pytest.raises(TskdInputError, match=r"layer 'x' has 4 spatial dimensions"):
        image_axes((2, 3, 8, 9), rgb=False, where="layer 'x'")


def test_segmenter_reads_arrays_as_files_are_read() -> None:
    seg = Segmenter(Threshold(), 32, 2, device="cpu")
    with pytest.warns(TskdWarning, match=r"an array of shape \(2, 64, 64\) was read as one "
                      r"2-channel image \(channels first\)"):
        labels = seg.segment(TWO_CHANNEL)
    assert labels.shape == (64, 64)
    np.testing.assert_array_equal(labels, seg.segment(np.moveaxis(TWO_CHANNEL, 0, -1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", TskdWarning)  # the caller decided: nothing to say
        assert seg.segment(TWO_CHANNEL, is_stack=True).shape == (2, 64, 64)


def test_widget_layers_are_read_by_the_same_function() -> None:
    from napari_tskd import _layers

    def layer(shape: tuple[int, ...], rgb: bool) -> SimpleNamespace:
        return SimpleNamespace(data=np.zeros(shape, np.uint8), rgb=rgb, name="scan")

    # napari shows a non-RGB (2, H, W) layer as 2 slices: the widgets segment 2 slices
    assert _layers.is_stack(layer((2, 64, 64), False))
    assert not _layers.is_stack(layer((64, 64, 3), True))
    assert _layers.is_stack(layer((5, 64, 64, 3), True))
    assert not _layers.is_stack(layer((64, 64), False))
    assert not _layers.is_stack(layer((2, 3, 64, 64), False))  # refused by check_layer
    ax = _layers.layer_axes(layer((2, 64, 64), False))
    assert ax.source == "metadata" and ax.reason == "napari layer with rgb=False"


def test_written_tiffs_record_their_axes(tmp_path: Path) -> None:
    cases = {"g.tif": ((9, 7), "YX"), "rgb.tif": ((9, 7, 3), "YXS"),
             "two.tif": ((9, 7, 2), "YXS"), "stack.tif": ((2, 9, 7), "ZYX"),
             "stack_rgb.tif": ((2, 9, 7, 3), "ZYXS")}
    for name, (shape, axes) in cases.items():
        data = RNG.integers(0, 255, shape, np.uint8)
        files.write_image(tmp_path / name, data)
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tif.series[0].axes == axes, name
        with warnings.catch_warnings():
            warnings.simplefilter("error", TskdWarning)
            np.testing.assert_array_equal(files.read_image(tmp_path / name), data)


# ----------------------------------------------------------------------- pixel budget


def _bomb_tiff(path: Path, side: int = 30000) -> Path:
    """A ~1 MB deflate TIFF that decodes to side x side uint8 zeros (tiles encoded once)."""
    tile = 1024
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = zlib.compress(bytes(tile * tile))
    n = ((side + tile - 1) // tile) ** 2
    tifffile.imwrite(path, (encoded for _ in range(n)), shape=(side, side), dtype="uint8",
                     compression="zlib", tile=(tile, tile))
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height gray pixels (header only: no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _npy_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A .npy that declares ``shape`` uint8 (header only: no data)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return path


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to decode pixels fails the test."""
    import imageio.v3 as iio

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", refuse)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", refuse)
    monkeypatch.setattr(iio, "imread", refuse)
    monkeypatch.setattr(np, "load", refuse)


def test_a_deflate_bomb_tiff_is_refused_from_its_header(tmp_path: Path, no_decoding: None
                                                        ) -> None:
    bomb = _bomb_tiff(tmp_path / "images" / "bomb.tif")
    assert bomb.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(TskdInputError) as err:
            files.read_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(err.value) == f"{bomb}: {BOMB_MESSAGE}"
    assert peak < 20_000_000  # the 900 MB were never allocated
    with pytest.raises(TskdInputError, match="bomb.tif: decodes to 30000x30000"):
        load_unlabelled(tmp_path / "images")
    (tmp_path / "labels").mkdir()
    _bomb_tiff(tmp_path / "labels" / "bomb.tif")  # label maps are held to the same budget
    with pytest.raises(TskdInputError, match=r"labels/bomb\.tif: decodes to 30000x30000"):
        load_labelled(tmp_path)


@pytest.mark.parametrize("kind", ["png", "npy"])
def test_png_and_npy_bombs_are_refused_from_their_header(tmp_path: Path, kind: str,
                                                         no_decoding: None) -> None:
    if kind == "png":
        path = _png_header(tmp_path / "bomb.png", 30000, 30000)
    else:
        path = _npy_header(tmp_path / "bomb.npy", (30000, 30000))
    with pytest.raises(TskdInputError) as err:
        files.read_image(path)
    assert str(err.value) == f"{path}: {BOMB_MESSAGE}"


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.npy", "a.tif"])
def test_the_budget_is_exact_and_configurable(tmp_path: Path, name: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = files.write_image(tmp_path / name, RNG.integers(0, 255, (40, 50, 3), np.uint8))
    with pytest.raises(TskdInputError) as err:
        files.read_image(path, max_pixels=1999)
    assert str(err.value) == (
        f"{path}: decodes to 40x50 = 2,000 pixels, over the pixel budget of 1,999; raise it "
        "with --max-pixels / data.max_pixels (or TSKD_MAX_PIXELS) or crop the image")
    assert files.read_image(path, max_pixels=2000).shape == (40, 50, 3)
    with pixel_budget(1024), pytest.raises(TskdInputError, match="budget of 1,024 \\(2\\^10"):
        files.read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    with pytest.raises(TskdInputError, match="over the pixel budget of 1,999"):
        files.read_image(path)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(TskdInputError) as err:
        files.read_image(path)
    assert str(err.value) == ("the pixel budget (environment variable TSKD_MAX_PIXELS) must be "
                              "a positive whole number of pixels, not 'lots'")


def test_stacks_count_every_slice(tmp_path: Path) -> None:
    path = files.write_image(tmp_path / "v.tif", np.zeros((4, 20, 10, 3), np.uint8))
    with pytest.raises(TskdInputError, match=r"decodes to 4x20x10 = 800 pixels, over the "
                       "pixel budget of 799"):
        files.read_image(path, max_pixels=799)
    assert files.read_image(path, max_pixels=800).shape == (4, 20, 10, 3)


def test_segmenter_checks_the_budget_before_float_conversion(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    import tskd.data.dataset

    seg = Segmenter(Threshold(), 32, 2, device="cpu", max_pixels=399)
    monkeypatch.setattr(tskd.data.dataset, "to_float_rgb",
                        lambda *a, **k: pytest.fail("converted before the budget check"))
    with pytest.raises(TskdInputError) as err:
        seg.segment(np.zeros((20, 20), np.uint8))
    assert str(err.value) == (
        "an image of 20x20 = 400 pixels is over the pixel budget of 399; raise it with "
        "--max-pixels / data.max_pixels (or TSKD_MAX_PIXELS) or crop the image")
    with pytest.raises(TskdInputError, match="must be a positive whole number of pixels, not 0"):
        Segmenter(Threshold(), 32, 2, device="cpu", max_pixels=0)


def test_cli_predict_refuses_a_bomb_in_one_line_and_max_pixels_raises_the_budget(
    tmp_path: Path, student_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    bomb = _bomb_tiff(tmp_path / "bomb.tif")
    capsys.readouterr()
    assert main(["predict", str(bomb), "--model", str(student_dir), "-o",
                 str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"tskd: error: {bomb}: {BOMB_MESSAGE}"]
    small = files.write_image(tmp_path / "in" / "s.png", RNG.integers(0, 255, (64, 64), np.uint8))
    assert main(["predict", str(small), "--model", str(student_dir), "-o",
                 str(tmp_path / "out"), "--device", "cpu", "--max-pixels", "4095"]) == 2
    assert "s.png: decodes to 64x64 = 4,096 pixels" in capsys.readouterr().err
    assert main(["predict", str(small), "--model", str(student_dir), "-o",
                 str(tmp_path / "out"), "--device", "cpu", "--max-pixels", "4096"]) == 0
    assert main(["predict", str(small), "--model", str(student_dir), "-o",
                 str(tmp_path / "out2"), "--device", "cpu", "--max-pixels", "0"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "the pixel budget (max_pixels) must be a positive whole number of pixels, not 0")


def test_data_max_pixels_reaches_training_reads(tmp_path: Path) -> None:
    from tskd.config import DataConfig, RunConfig
    from tskd.pipeline.context import load_labelled_data

    assert DataConfig().max_pixels == 2**28
    for i in range(2):
        files.write_image(tmp_path / "images" / f"c{i}.png",
                          RNG.integers(0, 255, (16, 16), np.uint8))
        files.write_label(tmp_path / "labels" / f"c{i}.png", np.eye(16, dtype=np.uint8))
    cfg = RunConfig()
    cfg.data.labelled = str(tmp_path)
    cfg.data.max_pixels = 255
    with pytest.raises(TskdInputError, match=r"c0\.png: decodes to 16x16 = 256 pixels"):
        load_labelled_data(cfg)
    cfg.data.max_pixels = 256
    assert load_labelled_data(cfg).image_shape == (16, 16)


# ------------------------------------------------------------------- trained scale


def test_bundles_record_the_training_image_size(tmp_path: Path) -> None:
    from tiny_setup import tiny_config
    from tskd.config import RunConfig, from_dict
    from tskd.inference import bundle
    from tskd.pipeline import run_folder, stages

    for i, (h, w) in enumerate([(40, 48), (56, 48), (64, 48)]):  # median 56 x 48
        files.write_image(tmp_path / "d/images" / f"c{i}.png",
                          RNG.integers(0, 255, (h, w), np.uint8))
        label = np.zeros((h, w), np.uint8)
        label[4:20, 4:20] = 1
        files.write_label(tmp_path / "d/labels" / f"c{i}.png", label)
    raw = tiny_config(tmp_path / "unused", tmp_path / "unused.safetensors", tmp_path / "run")
    raw["data"] = {"labelled": str(tmp_path / "d"), "image_size": 32, "val_fraction": 0.0}
    raw["student"] |= {"from_scratch": True}
    raw["student"]["train"] |= {"max_steps": 1}
    cfg = from_dict(RunConfig, raw)
    run_folder.prepare_run_dir(cfg)
    stages.stage_finetune_student(cfg)
    meta = bundle.read_bundle_meta(tmp_path / "run" / "student")
    assert meta["train_image_shape"] == [56, 48] and meta["input_size"] == 32
    seg, _ = segmenter_from_bundle(tmp_path / "run" / "student", device="cpu")
    assert seg.tile_shape == (56, 48)


def test_predict_tiles_at_the_training_scale(tmp_path: Path) -> None:
    folder = _student_bundle(tmp_path / "s", image_size=64, train_image_shape=[256, 256])
    seg, _ = segmenter_from_bundle(folder, device="cpu")
    assert seg.tile_shape == (256, 256) and seg.tile_overlap == 64
    assert seg.tiling_note(8000, 8000) == (
        "8000x8000 is segmented in 256x256 tiles (the size of the model's training images, "
        "256x256), each resized to 64x64")
    assert seg.tiling_note(384, 384) is None  # up to 1.5x the training size: resized whole
    assert seg.tiling_note(385, 200) is not None
    # every forward sees 256-px tiles squeezed to 64 px: 1/4, the training scale
    seen: list[tuple[int, ...]] = []
    seg.model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    assert seg.segment(np.zeros((640, 640), np.uint8)).shape == (640, 640)
    # tiles start at 0, 192 and 384 on each axis (256 px, 64 px overlap): 3 x 3 tiles
    assert sum(s[0] for s in seen) == 3 * 3 and {s[1:] for s in seen} == {(3, 64, 64)}
    explicit, _ = segmenter_from_bundle(folder, device="cpu", tile_size=512)
    assert explicit.tile_shape == (512, 512) and "tile size 512" in explicit.tiling_note(
        2000, 2000)


def test_old_bundles_keep_1024_px_tiles_with_a_warning(tmp_path: Path) -> None:
    folder = _student_bundle(tmp_path / "old", image_size=32)
    with pytest.warns(TskdWarning, match="does not record the size of the images it was "
                      "trained on .* tiled at 1024 px"):
        seg, _ = segmenter_from_bundle(folder, device="cpu")
    assert seg.tile_shape == (1024, 1024) and seg.tile_above == 1.0


def test_bad_train_image_shape_is_a_checkpoint_error(tmp_path: Path) -> None:
    from tskd.errors import CheckpointError

    folder = _student_bundle(tmp_path / "bad", image_size=32, train_image_shape=[0, "x"])
    with pytest.raises(CheckpointError, match=r"'train_image_shape' must be \[height, width\]"):
        segmenter_from_bundle(folder, device="cpu")


def test_a_tiled_copy_of_the_training_image_gives_the_tiled_labels(
    tmp_path: Path, student_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    small = RNG.integers(0, 255, (64, 64), np.uint8)
    large = np.tile(small, (4, 4))  # 256 x 256: four training images on each side
    assert segmenter_from_bundle(student_dir, device="cpu")[0].tile_overlap == 16  # 64 / 4
    seg, _ = segmenter_from_bundle(student_dir, device="cpu", tile_overlap=0)
    expected = np.tile(seg.segment(small), (4, 4))
    np.testing.assert_array_equal(seg.segment(large), expected)
    # through the command: one line says how it tiles
    files.write_image(tmp_path / "in" / "large.png", large)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "in"), "--model", str(student_dir), "-o",
                 str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert ("tskd: large.png: 256x256 is segmented in 64x64 tiles (the size of the model's "
            "training images, 64x64), each resized to 32x32") in capsys.readouterr().err
    assert files.read_label(tmp_path / "out" / "large.png").shape == (256, 256)


def test_teacher_bundles_record_the_training_image_size_too(tmp_path: Path) -> None:
    from tiny_setup import tiny_config, write_tiny_sam
    from tskd.config import RunConfig, from_dict
    from tskd.models.lora import read_adapter_meta
    from tskd.pipeline import run_folder, stages

    for i, (h, w) in enumerate([(32, 40), (48, 40)]):  # median 40 x 40
        files.write_image(tmp_path / "d/images" / f"c{i}.png",
                          RNG.integers(0, 255, (h, w), np.uint8))
        label = np.zeros((h, w), np.uint8)
        label[4:20, 4:20] = 1
        files.write_label(tmp_path / "d/labels" / f"c{i}.png", label)
    sam = write_tiny_sam(tmp_path / "sam.safetensors")
    raw = tiny_config(tmp_path / "unused", sam, tmp_path / "run")
    raw["data"] = {"labelled": str(tmp_path / "d"), "image_size": 32, "val_fraction": 0.0}
    raw["teacher"]["train"] |= {"max_steps": 1}
    cfg = from_dict(RunConfig, raw)
    run_folder.prepare_run_dir(cfg)
    stages.stage_teacher(cfg)
    assert read_adapter_meta(tmp_path / "run" / "teacher")["train_image_shape"] == [40, 40]
    seg, _ = segmenter_from_bundle(tmp_path / "run" / "teacher", device="cpu")
    assert seg.tile_shape == (40, 40) and seg.tile_overlap == 10


# ------------------------------------------------------------------ nnU-Net channel files


def _nnunet_set(root: Path, channels: dict[str, int], declared: int = 2) -> Path:
    """Cases with the given number of channel files each; dataset.json names ``declared``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case, n in channels.items():
        for ch in range(n):
            tifffile.imwrite(root / "imagesTr" / f"{case}_{ch:04d}.tif",
                             np.full((16, 16), 100 * (ch + 1), np.uint16))
        label = np.zeros((16, 16), np.uint8)
        label[2:8, 2:8] = 1
        files.write_label(root / "labelsTr" / f"{case}.png", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(i): f"MR{i}" for i in range(declared)},
        "labels": {"background": 0, "tumour": 1}, "file_ending": ".tif"}))
    return root / "imagesTr"


def _missing(images: Path, case: str) -> str:
    return (f"{images}: case {case} has 1 channel file but dataset.json names 2 channels: "
            f"{case}_0001.tif is missing (each case needs {case}_0000 to {case}_0001)")


def test_nnunet_case_without_its_second_channel_is_an_error_for_training(tmp_path: Path) -> None:
    images = _nnunet_set(tmp_path, {"a": 2, "b": 1})
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == _missing(images, "b")
    images = _nnunet_set(tmp_path / "two", {"a": 2, "b": 1, "c": 1})
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path / "two")
    assert str(info.value) == _missing(images, "b") + (
        "; 1 more case(s) have missing or extra channel files (tskd check-data lists them)")


def test_check_data_names_each_case_missing_a_channel_file(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    images = _nnunet_set(tmp_path, {"a": 2, "b": 1, "c": 1})
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "ok    a:" in out and "ERROR b:" in out and "ERROR c:" in out
    assert f"error: {_missing(images, 'b')}" in out and f"error: {_missing(images, 'c')}" in out
    assert "3 case(s), 2 error(s), 0 warning(s)" in out


def test_nnunet_extra_channel_file_and_unlabelled_cases(tmp_path: Path) -> None:
    images = _nnunet_set(tmp_path, {"a": 3})
    with pytest.raises(TskdInputError) as info:
        read_labelled_set(tmp_path)
    assert str(info.value) == (f"{images}: case a has 3 channel files but dataset.json names 2 "
                               "channels: a_0002.tif is beyond them")
    _nnunet_set(tmp_path / "ts", {"a": 2})
    (tmp_path / "ts" / "imagesTs").mkdir()
    tifffile.imwrite(tmp_path / "ts" / "imagesTs" / "t_0000.tif", np.zeros((16, 16), np.uint16))
    with pytest.raises(TskdInputError, match=r"case t has 1 channel file but dataset\.json names "
                                             r"2 channels: t_0001\.tif is missing"):
        load_unlabelled(tmp_path / "ts" / "imagesTs")


# ------------------------------------------------------------------ tiles too small


TINY_TILE = ("are too small to segment: a tile must be at least 16 px on each side; give a "
             "larger tile size (--tile-size, e.g. 1024)")


def test_tiles_under_16_px_are_refused_in_plain_words(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    for side in (1, 15):
        with pytest.raises(TskdInputError) as info:
            Segmenter(Threshold(), 32, 2, device="cpu", tile_size=side, tile_overlap=0)
        assert str(info.value) == f"tiles of {side}x{side} px (tile_size) {TINY_TILE}"
    assert Segmenter(Threshold(), 32, 2, device="cpu", tile_size=16, tile_overlap=0).tile_size == 16
    folder = _student_bundle(tmp_path / "tiny", train_image_shape=[1, 1])
    with pytest.raises(TskdInputError) as info:
        segmenter_from_bundle(folder, device="cpu")
    assert str(info.value) == (f"tiles of 1x1 px (the size of the model's training images, 1x1) "
                               f"{TINY_TILE}")
    files.write_image(tmp_path / "in" / "a.png", RNG.integers(0, 255, (64, 64), np.uint8))
    code = main(["predict", str(tmp_path / "in"), "--model", str(folder), "-o",
                 str(tmp_path / "out"), "--device", "cpu", "--tile-size", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith(f"tiles of 1x1 px (tile size 1) {TINY_TILE}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ non-finite pixels

ALL_NAN = ("all 4096 pixel values are not finite (4096 NaN); the image holds no data and is "
           "read as a blank black image - re-export it with finite values")
SOME_NAN = ("3 of 4096 pixel values are not finite (2 NaN, 1 +inf); NaN and -inf are read as "
            "the lowest intensity (black), +inf as the highest (white)")


def _nan_set(root: Path) -> tuple[Path, Path]:
    """a: all NaN; b: 2 NaN and 1 +inf in a float ramp; c: finite."""
    label = np.zeros((64, 64), np.uint8)
    label[8:24, 8:24] = 1
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    some = ramp.copy()
    some[0, 0] = some[0, 1] = np.nan
    some[0, 2] = np.inf
    paths = []
    for name, image in (("a", np.full((64, 64), np.nan, np.float32)), ("b", some), ("c", ramp)):
        files.write_image(root / "images" / f"{name}.tif", image)
        files.write_label(root / "labels" / f"{name}.png", label)
        paths.append(root / "images" / f"{name}.tif")
    return paths[0], paths[1]


def test_check_data_reports_non_finite_pixels_per_file(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    a, b = _nan_set(tmp_path)
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert "ERROR a:" in out and "warn  b:" in out and "ok    c:" in out
    assert f"error: {a}: {ALL_NAN}" in out and f"warning: {b}: {SOME_NAN}" in out
    assert "3 case(s), 1 error(s), 1 warning(s)" in out


def test_training_and_predict_warn_once_per_file_about_non_finite_pixels(tmp_path: Path) -> None:
    from tskd.data.dataset import to_float_rgb

    a, b = _nan_set(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, _ = read_labelled_set(tmp_path)
    assert [m for m in _tskd_warnings(caught) if "finite" in m] == [f"{a}: {ALL_NAN}",
                                                                    f"{b}: {SOME_NAN}"]
    rgb = {s.name: to_float_rgb(s.image) for s in samples}  # what the message promises
    assert float(rgb["a"].max()) == 0.0
    assert rgb["b"][0, :3, 0].tolist() == [0.0, 0.0, 1.0]
    seg = Segmenter(Threshold(), 32, 2, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = predict_paths(seg, [a, b], tmp_path / "pred")
    assert [m for m in _tskd_warnings(caught) if "finite" in m] == [f"{a}: {ALL_NAN}",
                                                                    f"{b}: {SOME_NAN}"]
    assert [p.name for p in written] == ["a.png", "b.png"]


def test_check_data_names_the_non_finite_nnunet_channel_file(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    images = _nnunet_set(tmp_path, {"a": 2})
    tifffile.imwrite(images / "a_0001.tif", np.full((16, 16), np.nan, np.float32))
    assert main(["check-data", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert (f"error: {images / 'a_0001.tif'}: all 256 pixel values are not finite (256 NaN)"
            in out)
    assert "1 case(s), 1 error(s), 0 warning(s)" in out
