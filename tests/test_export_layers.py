"""``napari_tskd._export.export_labelled``: layer data written as the run's labelled set.

With declared class names (the Labels layer's ``class_names`` metadata, as every sample has),
the name map once shadowed the label maps, so "Use this data" failed with "8 images but 2
label maps" for a stack of 8 slices and 2 classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from napari_tskd._export import export_labelled


def _pairs(n: int) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16), np.uint8) for _ in range(n)]
    labels = [(im > 127).astype(np.uint8) for im in images]
    return images, labels, [f"slice_{i}" for i in range(n)]


@pytest.mark.parametrize(("class_names", "ignore", "declared"), [
    (["background", "kidney"], None, {"0": "background", "1": "kidney"}),
    ({0: "bg", 1: "lesion"}, 255, {"0": "bg", "1": "lesion", "ignore": 255}),
])
def test_declared_classes_go_to_dataset_json_and_every_pair_is_written(
        tmp_path: Path, class_names: object, ignore: int | None, declared: dict) -> None:
    images, labels, names = _pairs(8)
    data = export_labelled(images, labels, names, tmp_path / "run", class_names, ignore)
    assert len(list((data / "images").iterdir())) == 8
    assert len(list((data / "labels").iterdir())) == 8
    assert json.loads((data / "dataset.json").read_text()) == {"labels": declared}


def test_without_class_names_no_dataset_json_is_left(tmp_path: Path) -> None:
    images, labels, names = _pairs(3)
    export_labelled(images, labels, names, tmp_path / "run", ["bg", "fg"])
    data = export_labelled(images, labels, names, tmp_path / "run")
    assert not (data / "dataset.json").exists()
    assert len(list((data / "labels").iterdir())) == 3
