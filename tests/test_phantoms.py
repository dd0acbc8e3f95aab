"""Procedural tasks and pretraining scenes: shapes, classes, determinism, independence, speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from tskd.data import phantoms
from tskd.data.phantoms.sheet import contact_sheet
from tskd.errors import TskdInputError

TASK_NAMES = ["kidney_us", "skin_lesion", "retina_vessels", "ct_abdomen", "brain_mri"]


def test_task_registry() -> None:
    assert sorted(phantoms.TASKS) == sorted(TASK_NAMES)
    for name, info in phantoms.TASKS.items():
        assert info.name == name
        assert info.class_names[0] == "background"
        assert info.channels in (1, 3)
        assert info.dtype in ("uint8", "uint16")
    assert phantoms.TASKS["ct_abdomen"].num_classes == 5
    assert phantoms.TASKS["brain_mri"].num_classes == 3
    assert phantoms.SLICED_TASKS == ("brain_mri",)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_shapes_dtypes_classes(task: str) -> None:
    info = phantoms.TASKS[task]
    samples = phantoms.generate(task, 4, size=96, seed=3)
    assert len(samples) == 4
    seen: set[int] = set()
    for image, label in samples:
        expected = (96, 96) if info.channels == 1 else (96, 96, 3)
        assert image.shape == expected
        assert image.dtype == np.dtype(info.dtype)
        assert label.shape == (96, 96) and label.dtype == np.int64
        values = set(np.unique(label).tolist())
        assert values <= set(range(info.num_classes))
        assert (label > 0).sum() > 10, "every sample has foreground"
        assert (label == 0).sum() > 96 * 96 // 3, "and mostly background"
        assert image.std() > 5, "the image is not blank"
        seen |= values
    assert seen == set(range(info.num_classes)), "every class occurs"


def test_non_square_and_minimum_size() -> None:
    image, label = phantoms.sample("skin_lesion", 0, size=(64, 100))
    assert image.shape == (64, 100, 3) and label.shape == (64, 100)
    with pytest.raises(TskdInputError):
        phantoms.generate("kidney_us", 1, size=16)
    with pytest.raises(TskdInputError, match="unknown task"):
        phantoms.generate("lung_xray", 1)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_deterministic_and_independent_of_n(task: str) -> None:
    a = phantoms.generate(task, 3, size=64, seed=7)
    b = phantoms.generate(task, 3, size=64, seed=7)
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    # sample i does not depend on n or on where the range starts
    (last,) = phantoms.generate(task, 1, size=64, seed=7, start=2)
    np.testing.assert_array_equal(last[0], a[2][0])
    np.testing.assert_array_equal(phantoms.generate(task, 5, size=64, seed=7)[1][1], a[1][1])
    # another seed or index gives another image
    other = phantoms.generate(task, 1, size=64, seed=8)[0][0]
    assert not np.array_equal(other, a[0][0])
    assert not np.array_equal(a[0][0], a[1][0])


def test_tasks_differ_for_the_same_seed() -> None:
    us = phantoms.sample("kidney_us", 0, 64)[0].astype(float)
    ct = phantoms.sample("ct_abdomen", 0, 64)[0].astype(float)
    assert us.shape == ct.shape and not np.allclose(us, ct)


def test_write_task_folders(tmp_path: Path) -> None:
    import imageio.v3 as iio
    import tifffile

    root = phantoms.write_task_folders("ct_abdomen", tmp_path / "ct", 2, 3, 2, size=64, seed=1)
    train = sorted((root / "train" / "images").iterdir())
    assert [p.suffix for p in train] == [".tif", ".tif"]
    assert len(list((root / "unlabelled" / "images").iterdir())) == 3
    assert not (root / "unlabelled" / "labels").exists()
    assert len(list((root / "test" / "labels").iterdir())) == 2
    img = tifffile.imread(train[0])
    assert img.dtype == np.uint16 and img.shape == (64, 64)
    lab = iio.imread(root / "train" / "labels" / (train[0].stem + ".png"))
    assert lab.dtype == np.uint8 and lab.max() <= 4 and lab.max() > 0
    expected_img, expected_lab = phantoms.sample("ct_abdomen", 0, 64, seed=1)
    np.testing.assert_array_equal(img, expected_img)
    np.testing.assert_array_equal(lab, expected_lab)
    # splits come from disjoint index ranges: no test image equals a training image
    tests = [tifffile.imread(p) for p in sorted((root / "test" / "images").iterdir())]
    assert all(not np.array_equal(t, tifffile.imread(p)) for t in tests for p in train)
    from tskd.data import folders
    from tskd.data.samples import load_labelled

    assert folders.class_names(root / "train") == list(phantoms.TASKS["ct_abdomen"].class_names)
    assert folders.class_names(root / "test")[2] == "kidney"
    assert len(load_labelled(root / "train")) == 2
    meta = json.loads((root / "task.json").read_text())
    assert meta["class_names"][1] == "liver" and meta["counts"]["unlabelled"] == 3

    rgb = phantoms.write_task_folders("skin_lesion", tmp_path / "skin", 1, 0, 1, size=48)
    (png,) = (rgb / "train" / "images").iterdir()
    assert png.suffix == ".png" and iio.imread(png).shape == (48, 48, 3)
    # test images do not depend on how many training images were asked for
    more = phantoms.write_task_folders("skin_lesion", tmp_path / "skin2", 3, 0, 1, size=48)
    (t1,) = (rgb / "test" / "images").iterdir()
    (t2,) = (more / "test" / "images").iterdir()
    np.testing.assert_array_equal(iio.imread(t1), iio.imread(t2))


def test_pretraining_samples() -> None:
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(25):
        image, masks = phantoms.pretraining_sample(rng, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert len(masks) >= 1
        for m in masks:
            assert m.shape == (64, 64) and m.dtype == bool and m.any()
        counts.append(len(masks))
    assert max(counts) > 1, "scenes hold several objects"
    a_img, a_masks = phantoms.pretraining_sample(np.random.default_rng(5), (40, 56))
    b_img, b_masks = phantoms.pretraining_sample(np.random.default_rng(5), (40, 56))
    assert a_img.shape == (40, 56, 3)
    np.testing.assert_array_equal(a_img, b_img)
    assert len(a_masks) == len(b_masks)
    assert all(np.array_equal(x, y) for x, y in zip(a_masks, b_masks))


def test_pretraining_code_is_separate_from_targets() -> None:
    import ast
    import inspect

    from tskd.data.phantoms import pretraining, pretraining_range, pretraining_structures

    for module in (pretraining, pretraining_range, pretraining_structures):
        tree = ast.parse(inspect.getsource(module))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m and m.startswith("tskd") for m in imported), (module, imported)
        relative = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level
                    for a in n.names}
        assert relative <= {"pretraining_range", "pretraining_structures"}, (module, relative)


def test_contact_sheet(tmp_path: Path) -> None:
    import imageio.v3 as iio

    path = contact_sheet("retina_vessels", 3, tmp_path / "sheet.png", size=64)
    sheet = iio.imread(path)
    assert sheet.ndim == 3 and sheet.shape[0] > 50 and sheet.shape[1] > 200


def test_speed() -> None:
    """A 256x256 sample takes well under 50 ms of CPU (bound doubled for shared machines)."""
    rng = np.random.default_rng(0)
    phantoms.pretraining_sample(rng, 256)  # warm caches
    for task in TASK_NAMES:
        phantoms.sample(task, 0, 256)
        t0 = time.process_time()
        phantoms.generate(task, 3, 256, start=10)
        assert (time.process_time() - t0) / 3 < 0.1, task
    t0 = time.process_time()
    for _ in range(5):
        phantoms.pretraining_sample(rng, 256)
    assert (time.process_time() - t0) / 5 < 0.1
