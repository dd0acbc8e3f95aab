"""Each rule written once: Dice, stack detection, the validation split, slice names, run paths,
a bundle's input size and the segmenter built from it. Every caller gives the same answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tskd.data.label_map import IGNORE_INDEX
from tskd.data.samples import Sample
from tskd.errors import TskdInputError
from tskd.inference import dice, metrics

# ------------------------------------------------------------------ Dice

# One image, 4x4, classes 0..2: class 1 overlaps 2 of (3 predicted + 3 true) pixels -> 4/6;
# class 2 is only predicted -> 0. A second image has no foreground anywhere -> 1 and 1.
PRED = torch.tensor([[[1, 1, 1, 0], [0, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]],
                     [[0] * 4] * 4])
TRUTH = torch.tensor([[[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
                      [[0] * 4] * 4])


def test_dice_per_class_values() -> None:
    d = dice.dice_per_class(PRED, TRUTH, 3)
    assert d.shape == (2, 2) and d.dtype == torch.float32
    assert d.flatten().tolist() == pytest.approx([4 / 6, 0.0, 1.0, 1.0])
    assert dice.dice_per_class(PRED, TRUTH, 3, reduction="mean_batch").tolist() == \
        pytest.approx([(4 / 6 + 1) / 2, 0.5])
    # the truth pixel (1, 0) ignored: class 1 is 2 of (3 + 2) -> 0.8
    truth = TRUTH.clone()
    truth[0, 1, 0] = IGNORE_INDEX
    assert dice.dice_per_class(PRED, truth, 3, ignore_index=IGNORE_INDEX)[0, 0] == \
        pytest.approx(0.8)
    # a value outside the classes is background: class 2 predicted nowhere -> both empty -> 1
    assert dice.dice_per_class(PRED, TRUTH, 2)[0].tolist() == pytest.approx([4 / 6])
    with pytest.raises(TskdInputError, match=r"differ in shape: \(2, 4, 4\) vs \(1, 4, 4\)"):
        dice.dice_per_class(PRED, TRUTH[:1], 3)


def test_evaluate_disagreement_and_validation_share_the_dice() -> None:
    from tskd.inference.predict import _disagreement
    from tskd.training.finetune import validate

    report = metrics.evaluate([p.numpy() for p in PRED], [t.numpy() for t in TRUTH],
                              num_classes=3)
    assert [r["dice"] for r in report.records] == pytest.approx([4 / 6, 0.0, 1.0, 1.0])
    assert _disagreement(PRED, TRUTH, 3).tolist() == pytest.approx([1 - 2 / 6, 0.0])

    class Fixed(nn.Module):  # predicts PRED's first map whatever the image
        num_classes = 3

        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            onehot = nn.functional.one_hot(PRED[0], 3).permute(2, 0, 1).float()
            return onehot[None].repeat(x.shape[0], 1, 1, 1) * 10 + self.w

    samples = [Sample("a", np.zeros((4, 4), np.uint8), TRUTH[0].numpy()),
               Sample("b", np.zeros((4, 4), np.uint8), TRUTH[0].numpy())]
    out = validate(Fixed(), samples, 4)  # type: ignore[arg-type]
    assert out["dice_per_class"] == pytest.approx([4 / 6, 0.0])
    assert out["dice"] == pytest.approx(1 / 3) and out["n_images"] == 2
    assert dice.validation_dice(Fixed(), samples, 4, 3, batch_size=1).flatten().tolist() \
        == pytest.approx([4 / 6, 0.0, 4 / 6, 0.0])


# ------------------------------------------------------------------ colour stacks, split


def test_stack_colour_is_read_by_the_axes_rule(tmp_path) -> None:
    import tifffile
    from napari_tskd._layers import stack_is_rgb

    from tskd.data import axes, files

    assert stack_is_rgb(np.zeros((2, 8, 8, 3), np.uint8)) is True
    assert stack_is_rgb(np.zeros((2, 8, 8, 4), np.uint8)) is True
    assert stack_is_rgb(np.zeros((2, 8, 8), np.uint8)) is False
    assert stack_is_rgb(np.zeros((2, 8, 8, 2), np.uint8)) is False  # two channels: not colour
    assert axes.image_axes((2, 8, 8, 3), is_stack=True).rgb is True
    assert axes.image_axes((8, 8, 2), is_stack=False).rgb is False
    # a tif's photometric follows the same property
    for shape, photometric in (((2, 8, 8, 3), "RGB"), ((2, 8, 8, 2), "MINISBLACK")):
        path = files.write_image(tmp_path / f"s{shape[-1]}.tif", np.zeros(shape, np.uint8))
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].photometric.name == photometric


def test_validation_count_is_the_split_rule() -> None:
    from tskd.config import validation_count
    from tskd.data.dataset import split_train_val

    assert [validation_count(n, 0.2) for n in (0, 3, 4, 10, 13)] == [0, 0, 1, 2, 3]
    assert validation_count(5, 0.9) == 4  # training keeps one image
    assert validation_count(100, 0.0) == 0
    for bad in (1.0, -0.1):
        with pytest.raises(TskdInputError, match=rf"val_fraction must be in \[0, 1\), got {bad}"):
            validation_count(10, bad)
        with pytest.raises(TskdInputError, match=r"val_fraction must be in \[0, 1\)"):
            split_train_val(list(range(10)), bad, 0)


# ------------------------------------------------------------------ slice names


def test_slice_names_agree_between_files_and_layers(tmp_path) -> None:
    from napari.layers import Image, Labels
    from napari_tskd import _layers

    from tskd.data import files
    from tskd.data.samples import load_labelled, load_unlabelled, slice_name

    image = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    label = np.zeros((3, 8, 8), np.uint8)
    label[1, 0, 0] = label[2, 1, 1] = 1
    files.write_image(tmp_path / "images" / "scan.tif", image)
    files.write_label(tmp_path / "labels" / "scan.tif", label)
    from_files = [s.name for s in load_labelled(tmp_path)]
    _, _, from_layers = _layers.labelled_slices(Image(image, name="scan"),
                                                Labels(label, name="scan labels"))
    assert from_files == from_layers == ["scan_z0001", "scan_z0002"]
    _, unl_names = _layers.unlabelled_slices([Image(image, name="scan")])
    assert unl_names == [s.name for s in load_unlabelled(tmp_path / "images")] == [
        "scan_z0000", "scan_z0001", "scan_z0002"]
    assert slice_name("scan", 12345) == "scan_z12345"  # more slices: longer, still unique


# ------------------------------------------------------------------ run-folder paths


def test_widget_files_live_where_run_paths_say(tmp_path) -> None:
    import json

    from napari_tskd._export import (
        add_corrected,
        corrected_names,
        correction_name,
        correction_sources,
        labelled_names,
    )

    from tskd.pipeline.run_folder import RunPaths

    p = RunPaths(tmp_path)
    assert p.unlabelled == tmp_path / "unlabelled"
    assert p.data_images == tmp_path / "data" / "images"
    assert p.data_labels == tmp_path / "data" / "labels"
    assert p.corrections == tmp_path / "data" / "corrections.json"
    # a correction as the previous version wrote it (slice 4 of layer 'scan')
    out = add_corrected(np.zeros((8, 8), np.uint8), np.ones((8, 8), np.int64), "scan_z0004",
                        tmp_path, "scan#z4")
    assert out == p.data_labels / "corrected_scan_z0004.tif"
    assert (p.data_images / "corrected_scan_z0004.tif").is_file()
    assert json.loads(p.corrections.read_text()) == {"scan_z0004": "scan#z4"}
    assert correction_sources(tmp_path) == {"scan_z0004": "scan#z4"}
    assert corrected_names(tmp_path) == labelled_names(tmp_path) == {"scan_z0004"}
    # the same slice again replaces it; the name the loop makes today is the stored one
    from tskd.data.samples import slice_name

    assert correction_name(slice_name("scan", 4), "scan#z4", tmp_path) == ("scan_z0004", True)
    assert correction_name("scan_z0004", "other#z4", tmp_path) == ("scan_z0004_2", False)


# ------------------------------------------------------------------ bundles


def test_one_input_size_field_for_students_and_teachers() -> None:
    from tskd.errors import CheckpointError
    from tskd.inference import bundle

    assert bundle.input_size({"kind": "student", "image_size": 64}) == 64
    assert bundle.input_size({"kind": "teacher", "input_size": 128}) == 128
    with pytest.raises(CheckpointError, match="gives no input size"):
        bundle.input_size({"kind": "student"})


def test_segmenter_from_a_student_bundle(tmp_path) -> None:
    from tskd.config import StudentConfig
    from tskd.inference import bundle
    from tskd.inference.predict import segmenter_from_bundle
    from tskd.models.student import Student

    cfg = StudentConfig(embed_dim=32, depth=1, num_heads=2, patch_size=8, decoder_channels=16)
    bundle.save_student(Student(cfg, 3, 32), tmp_path / "s", {"train_image_shape": [40, 40]})
    seg, meta = segmenter_from_bundle(tmp_path / "s", device="cpu")
    assert (seg.input_size, seg.num_classes, seg.tile_shape) == (32, 3, (40, 40))
    assert bundle.input_size(meta) == 32
    assert seg.segment(np.zeros((40, 40), np.uint8)).shape == (40, 40)


# ------------------------------------------------------------------ base teacher identity


def test_base_teacher_identity_is_one_rule(tmp_path) -> None:
    import shutil
    from types import SimpleNamespace

    from tskd.config import RunConfig
    from tskd.errors import CheckpointError
    from tskd.pipeline import context, fingerprints

    a = tmp_path / "a.pt"
    a.write_bytes(b"weights one")
    b = tmp_path / "moved" / "b.pt"
    b.parent.mkdir()
    shutil.copyfile(a, b)
    c = tmp_path / "c.pt"
    c.write_bytes(b"weights two")
    cfg = RunConfig()
    cfg.distill.task_agnostic = True
    ids, fps = [], []
    for ckpt in (a, b, c):
        cfg.teacher.checkpoint = str(ckpt)
        ids.append(fingerprints.base_teacher_id(cfg))
        ctx = context.StageContext(cfg)
        ctx.memo("data", lambda: SimpleNamespace(fingerprint="data"))  # a given labelled set
        fps.append(fingerprints.of(ctx, "distill"))
    assert ids[0] == ids[1] != ids[2] and len(ids[0]) == 16  # by content, not by path
    assert fps[0] == fps[1] != fps[2]  # the distillation fingerprint follows the same id
    cfg.teacher.checkpoint = None
    assert fingerprints.base_teacher_id(cfg) not in ids  # the packaged mini SAM
    cfg.teacher.checkpoint = str(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        fingerprints.base_teacher_id(cfg)
