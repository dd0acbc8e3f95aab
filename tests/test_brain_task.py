"""The brain_mri sample task: real MNI152 slices, its split gap, determinism, CLI, missing extra."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tskd.apps.cli import build_parser, main
from tskd.data import phantoms
from tskd.data.phantoms import brain
from tskd.errors import TskdInputError

MISSING = "the brain_mri task needs nilearn and nibabel: pip install 'napari-tskd[brain]'"
SEEDS = range(12)


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tskd: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _min_gap(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    return int(np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :]).min())


def test_template_slices_without_brain_are_dropped() -> None:
    t = brain.template()
    # 189 axial slices; those with brain on under 5 % of the slice go: 14..146 remain
    assert len(t.z) == 133 and (int(t.z[0]), int(t.z[-1])) == (14, 146)
    assert np.array_equal(t.z, np.arange(14, 147))
    assert t.t1.shape == t.gm.shape == t.wm.shape == (133, 188, 151)
    assert t.t1.dtype == np.uint8


@pytest.mark.parametrize("start", [0, phantoms.INDEX_OFFSETS["unlabelled"],
                                   phantoms.INDEX_OFFSETS["test"]])
def test_shapes_dtypes_and_three_classes(start: int) -> None:
    samples = phantoms.generate("brain_mri", 4, size=64, seed=2, start=start)
    seen: set[int] = set()
    for image, label in samples:
        assert image.shape == (64, 64) and image.dtype == np.uint8
        assert label.shape == (64, 64) and label.dtype == np.int64
        assert set(np.unique(label).tolist()) <= {0, 1, 2}
        assert (label > 0).mean() > 0.03, "every kept slice shows brain"
        # T1 contrast: white matter brighter than grey matter, grey brighter than background
        means = [image[label == c].mean() for c in range(3) if (label == c).any()]
        assert means == sorted(means), means
        seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2}
    image, label = phantoms.sample("brain_mri", 0, size=(48, 80))
    assert image.shape == label.shape == (48, 80)


def test_every_test_slice_is_10_slices_from_every_training_slice() -> None:
    kept = set(brain.template().z.tolist())
    for seed in SEEDS:
        s = brain.split_slices(seed)
        assert len(s.test) == len(set(s.test)) == 30
        assert set(s.test) | set(s.pool) <= kept and not set(s.test) & set(s.pool)
        assert _min_gap(s.test, s.pool) >= brain.TEST_GAP
        assert 67 <= len(s.pool) <= 85
        # the slices images actually use, also past the first round through each list
        used = {split: [brain.slice_of(split, k, seed) for k in range(150)]
                for split in ("train", "unlabelled", "test")}
        assert set(used["test"]) == set(s.test)
        assert _min_gap(used["test"], used["train"] + used["unlabelled"]) >= 10
        # one test band in each half of the brain
        low, high = sorted(s.test)[:15], sorted(s.test)[15:]
        assert np.ptp(low) == np.ptp(high) == 14 and max(low) <= 80 and min(high) >= 80
    # the gap check itself fails on a violation
    assert _min_gap([50, 60], [69, 100]) == 9


def test_splits_distinct_and_independent_of_counts() -> None:
    s = brain.split_slices(0)
    n = len(s.pool)
    train = [brain.slice_of("train", k, 0) for k in range(10)]
    unlabelled = [brain.slice_of("unlabelled", k, 0) for k in range(n - 10)]
    assert not set(train) & set(unlabelled), "the first 10 + (P - 10) pool slices are distinct"
    assert brain.slice_of("train", n, 0) == train[0], "more images than slices cycle"


def test_deterministic_for_a_seed_and_seeds_differ() -> None:
    index = [0, 1, phantoms.INDEX_OFFSETS["test"]]
    a = [phantoms.sample("brain_mri", i, 64, seed=5) for i in index]
    b = [phantoms.sample("brain_mri", i, 64, seed=5) for i in index]
    for (ia, la), (ib, lb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert brain.split_slices(5) == brain.split_slices(5)
    assert sorted(brain.split_slices(5).test) != sorted(brain.split_slices(6).test)
    other = phantoms.sample("brain_mri", 0, 64, seed=6)
    assert not np.array_equal(other[0], a[0][0])
    # the same slice at another index (a second round) gets another variation
    n = len(brain.split_slices(5).pool)
    again = phantoms.sample("brain_mri", n, 64, seed=5)[0]
    assert brain.slice_of("train", n, 5) == brain.slice_of("train", 0, 5)
    assert not np.array_equal(again, a[0][0])


def test_cli_writes_the_folders(tmp_path: Path) -> None:
    import imageio.v3 as iio

    out = tmp_path / "brain"
    args = ["make-sample-data", "brain_mri", str(out), "--train", "3", "--unlabelled", "4",
            "--test", "2", "--size", "64", "--seed", "1"]
    assert main(args) == 0
    names = {split: sorted(p.name for p in (out / split / "images").iterdir())
             for split in ("train", "unlabelled", "test")}
    assert names["train"] == [f"brain_mri_train_{k:04d}.png" for k in range(3)]
    assert len(names["unlabelled"]) == 4 and len(names["test"]) == 2
    assert not (out / "unlabelled" / "labels").exists()
    assert sorted(p.name for p in (out / "test" / "labels").iterdir()) == names["test"]
    dataset = json.loads((out / "train" / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    meta = json.loads((out / "task.json").read_text())
    assert meta["name"] == "brain_mri" and meta["seed"] == 1 and meta["test_gap_slices"] == 10
    slices = meta["slices"]
    assert [len(slices[s]) for s in ("train", "unlabelled", "test")] == [3, 4, 2]
    assert _min_gap(slices["test"], slices["train"] + slices["unlabelled"]) >= 10
    image = iio.imread(out / "test" / "images" / names["test"][1])
    label = iio.imread(out / "test" / "labels" / names["test"][1])
    expected = phantoms.sample("brain_mri", phantoms.INDEX_OFFSETS["test"] + 1, 64, seed=1)
    assert image.dtype == label.dtype == np.uint8
    np.testing.assert_array_equal(image, expected[0])
    np.testing.assert_array_equal(label, expected[1])


def test_help_lists_every_task() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    helps = [a.help for a in sub.choices["make-sample-data"]._actions if a.dest == "task"]
    helps += [a.help for a in sub.choices["demo"]._actions if a.dest == "task"]
    assert len(helps) == 2
    for text in helps:
        assert [t for t in phantoms.TASKS if t not in text] == []


@pytest.mark.parametrize("missing", [("nilearn",), ("nibabel",), ("nilearn", "nibabel")])
def test_missing_extra_is_one_line(missing: tuple[str, ...], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    for name in missing:  # None in sys.modules: ``import name`` fails, find_spec gives None
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "brain"
    assert main(["make-sample-data", "brain_mri", str(out), "--size", "64"]) == 2
    assert _error_line(capsys) == f"tskd: error: {MISSING}"
    assert not out.exists(), "nothing is written"
    with pytest.raises(TskdInputError) as err:
        phantoms.sample("brain_mri", 0, 64)
    assert str(err.value) == MISSING
    with pytest.raises(TskdInputError) as err:
        phantoms.check_available("brain_mri")
    assert str(err.value) == MISSING
    phantoms.check_available("kidney_us")  # no error
    with pytest.raises(TskdInputError, match="unknown task 'lung_xray'"):
        phantoms.check_available("lung_xray")
    # the demo says the same, before it writes any data
    demo_out = tmp_path / "demo"
    assert main(["demo", "--task", "brain_mri", "--budget", "tiny", "--out", str(demo_out)]) == 2
    assert _error_line(capsys) == f"tskd: error: {MISSING}"
    assert not (demo_out / "data").exists() and not (demo_out / "report.md").exists()
    # the other tasks do not need the extra
    assert main(["make-sample-data", "kidney_us", str(tmp_path / "k"), "--train", "1",
                 "--unlabelled", "0", "--test", "0", "--size", "32"]) == 0


def test_template_file_missing_or_damaged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(brain.FILES, "wm", "no_such_template.nii.gz")
    with pytest.raises(TskdInputError, match=r"lacks the MNI152 template file .*"
                                             r"no_such_template\.nii\.gz; reinstall"):
        brain.template()
    monkeypatch.undo()
    bad = {t: tmp_path / f"{t}.nii.gz" for t in ("t1", "gm", "wm")}
    for p in bad.values():
        p.write_bytes(b"not a nifti file")
    monkeypatch.setattr(brain, "template_files", lambda: bad)
    with pytest.raises(TskdInputError, match=r"cannot read the MNI152 template file .*t1\.nii"):
        phantoms.write_task_folders("brain_mri", tmp_path / "out", 1, 0, 0, size=32)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", ["kidney_us", "brain_mri"])
def test_too_small_size_refused_before_writing(task: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    assert main(["make-sample-data", task, str(out), "--size", "16"]) == 2
    assert "at least 32x32 pixels, not 16x16" in _error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("task", ["kidney_us", "brain_mri"])
def test_negative_seed_refused_before_writing(task: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    assert main(["make-sample-data", task, str(out), "--seed", "-1"]) == 2
    assert "the seed must be 0 or more, not -1" in _error_line(capsys)
    assert not out.exists()
    with pytest.raises(TskdInputError, match="the seed must be 0 or more, not -3"):
        phantoms.sample(task, 0, 64, seed=-3)
