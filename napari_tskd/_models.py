"""Loading a model bundle (student or teacher folder) into a ``tskd.inference.segmenter.Segmenter``.

Called in the GUI thread: torch and timm are imported there, before any worker thread segments,
and after ``_torch_guard.prepare_torch_import`` (importing Triton after napari's OpenGL context
exists crashes on Mesa; see that module).
"""

from __future__ import annotations

import threading
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


BACKEND_MODULES = ("torch", "safetensors.torch", "timm", "tskd.inference.predict",
                   "tskd.inference.bundle", "tskd.models.student", "tskd.models.lora",
                   "tskd.models.meta_file", "tskd.models.meta_schema", "tskd.models.mini_sam",
                   "segment_anything.modeling")
# monai.metrics (ranking by disagreement) is imported lazily by tskd.inference.dice; imported in a
# worker it held the GIL (and so the event loop) for 0.45-0.94 s, measured
RANKING_MODULES = ("tskd.inference.dice", "monai.metrics")


def import_backend(ranking: bool = False) -> bool:
    """Import the modules that loading and running a model needs, in the calling (GUI) thread.

    Importing timm first in a worker thread crashed napari (see ``_torch_guard``); once these
    are imported, a worker thread may build and run models. Returns True when this call
    imported anything (the one slow call: seconds), False when all were imported already.

    Args:
        ranking: also the modules of "Suggest next slice" (``RANKING_MODULES``).
    """
    import contextlib
    import importlib
    import sys

    from napari_tskd._torch_guard import prepare_torch_import

    wanted = BACKEND_MODULES + (RANKING_MODULES if ranking else ())
    missing = [name for name in wanted if name not in sys.modules]
    if not missing:
        return False
    prepare_torch_import()
    for name in missing:
        with contextlib.suppress(ImportError):  # optional (segment_anything): its loader says
            importlib.import_module(name)
    return True


def check_bundle(folder: str | Path) -> Path:
    """The bundle folder, or ``TskdInputError`` when it holds no ``meta.json`` (a cheap check
    in the GUI thread before a worker loads the model)."""
    from tskd.errors import TskdInputError

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise TskdInputError(f"no model in {folder} (meta.json missing); train it first")
    return folder


def bundle_name(folder: str | Path) -> str:
    """'run1/student': the name of a model (and of its prediction layer) from its folder."""
    folder = Path(folder)
    return f"{folder.parent.name}/{folder.name}"


def load(folder: str | Path, device: str = "auto") -> LoadedModel:
    """Load a bundle folder (``meta.json`` + safetensors); raises ``TskdError`` if unusable."""
    from napari_tskd._torch_guard import prepare_torch_import

    prepare_torch_import()
    from tskd.inference.predict import segmenter_from_bundle

    folder = check_bundle(folder)
    from tskd.data.label_map import LabelMap

    segmenter: Any
    segmenter, meta = segmenter_from_bundle(folder, device=device)  # tiles at training scale
    size = segmenter.input_size
    label_map = LabelMap.from_meta(meta)
    if not label_map.is_identity:  # label layers show (and corrections keep) the user's ids
        segmenter = ValueSegmenter(segmenter, label_map.values)
    segmenter.segment(np.zeros((size, size), np.uint8), is_stack=False)  # warm-up, off the clock
    return LoadedModel(segmenter, meta, bundle_name(folder), folder, bundle_stamp(folder))


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
    together; older models are dropped so that memory stays bounded. ``get`` may be called from
    worker threads (one at a time; call ``import_backend`` in the GUI thread first).
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, folder: str | Path, device: str = "auto") -> LoadedModel:
        """The loaded model of a bundle folder (``load``; raises what it raises).

        Args:
            folder: the bundle folder.
            device: "auto", "cpu", "cuda", "cuda:N" or "mps".
        """
        with self._lock:
            return self._get(folder, device)

    def meta(self, folder: str | Path) -> dict[str, Any]:
        """A bundle's ``meta.json``, parsed but not yet checked against the schema (that builds
        the model to count parameters: the worker's ``get`` does it). Milliseconds: for the GUI
        thread. Raises ``TskdInputError`` when the folder holds no model, ``ModelMetaError``
        for an unreadable file.

        Args:
            folder: the bundle folder.
        """
        from tskd.models.meta_file import read_meta_file

        return read_meta_file(check_bundle(folder) / "meta.json")

    def _get(self, folder: str | Path, device: str) -> LoadedModel:
        key = (str(Path(folder).resolve()), device)
        cached = self._models.pop(key, None)
        if cached is None or cached.stamp != bundle_stamp(Path(folder)):
            cached = load(folder, device)
        self._models[key] = cached  # most recently used last
        while len(self._models) > self.size:
            del self._models[next(iter(self._models))]
        return cached
