"""Loading a model bundle (student or teacher folder) into a ``tskd.inference.segmenter.Segmenter``.

Called in the GUI thread: torch and timm are imported there, before any worker thread segments,
and after ``_torch_guard.prepare_torch_import`` (importing Triton after napari's OpenGL context
exists crashes on Mesa; see that module).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LoadedModel:
    segmenter: Any  # tskd.inference.segmenter.Segmenter
    meta: dict[str, Any]
    name: str  # e.g. "run1/student": names the prediction layer
    folder: Path
    stamp: tuple[float, ...]  # modification times of the bundle's files when loaded


def bundle_stamp(folder: Path) -> tuple[float, ...]:
    """Modification times of a bundle's files: a retrained model is noticed and reloaded."""
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.stat().st_mtime for p in folder.iterdir() if p.is_file()))


def load(folder: str | Path, device: str = "auto") -> LoadedModel:
    """Load a bundle folder (``meta.json`` + safetensors); raises ``TskdError`` if unusable."""
    from napari_tskd._torch_guard import prepare_torch_import

    prepare_torch_import()
    from tskd.errors import TskdInputError
    from tskd.inference.predict import segmenter_from_bundle

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise TskdInputError(f"no model in {folder} (meta.json missing); train it first")
    from tskd.data.label_map import LabelMap

    segmenter: Any
    segmenter, meta = segmenter_from_bundle(folder, device=device)  # tiles at training scale
    size = segmenter.input_size
    label_map = LabelMap.from_meta(meta)
    if not label_map.is_identity:  # label layers show (and corrections keep) the user's ids
        segmenter = ValueSegmenter(segmenter, label_map.values)
    segmenter.segment(np.zeros((size, size), np.uint8), is_stack=False)  # warm-up, off the clock
    name = f"{folder.parent.name}/{folder.name}"
    return LoadedModel(segmenter, meta, name, folder, bundle_stamp(folder))


class ValueSegmenter:
    """A ``Segmenter`` whose label maps carry the model's label values (meta ``label_values``)
    instead of class indices; everything else (logits, ranking) is the wrapped segmenter's."""

    def __init__(self, segmenter: Any, values: tuple[int, ...]) -> None:
        self._segmenter = segmenter
        self._table = np.asarray(values, dtype=np.int64)

    def segment(self, image: Any, is_stack: bool | None = None,
                contrast_limits: Any = None) -> np.ndarray:
        return self._table[self._segmenter.segment(image, is_stack, contrast_limits)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)


def label_values(meta: dict[str, Any]) -> tuple[int, ...]:
    """The label value of each class of a model (class indices for bundles without a map)."""
    from tskd.data.label_map import LabelMap

    return LabelMap.from_meta(meta).values


def set_inference_threads(training: bool) -> int:
    """Torch threads for segmenting in the viewer's process; returns the number chosen.

    One image through the student is small work: on a CPU that is already busy (a training
    process of ours, or other load) more threads only wait for each other. Measured on two busy
    cores: 0.69 s per image with 2 threads against 13 ms with 1. So: one thread while training
    runs or the load average exceeds the cores, torch's default otherwise.
    """
    import os

    import torch

    global _DEFAULT_THREADS
    if _DEFAULT_THREADS is None:
        _DEFAULT_THREADS = torch.get_num_threads()
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] > cores - 0.5
    except OSError:  # not available on every platform
        busy = False
    threads = 1 if training or busy else _DEFAULT_THREADS
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


_DEFAULT_THREADS: int | None = None


class ModelCache:
    """The last ``size`` models used, per (folder, device), reloaded when their files change.

    Two by default: the student and the teacher, which "suggest next" by disagreement needs
    together; older models are dropped so that memory stays bounded.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._models: dict[tuple[str, str], LoadedModel] = {}

    def get(self, folder: str | Path, device: str = "auto") -> LoadedModel:
        key = (str(Path(folder).resolve()), device)
        cached = self._models.pop(key, None)
        if cached is None or cached.stamp != bundle_stamp(Path(folder)):
            cached = load(folder, device)
        self._models[key] = cached  # most recently used last
        while len(self._models) > self.size:
            del self._models[next(iter(self._models))]
        return cached
