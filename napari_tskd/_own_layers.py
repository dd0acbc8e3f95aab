"""Layers the plugin adds for itself: training previews and synthetic images.

Three rules for every one of them: it lands in its own layer, beside the user's data (never over
it), in sight (the view is fitted once, when the layer is created), and it never takes the
selection from the user's layer (the layer the next brush stroke goes into stays the user's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

PREVIEW_IMAGE = "TS-KD preview image"
PREVIEW_LABELS = "TS-KD preview"
SYNTHETIC = "TS-KD synthetic images"
OWN_KINDS = ("preview", "synthetic")
GAP = 16.0  # world units between the user's data and the plugin's layers


def is_own(layer: Any) -> bool:
    """A layer this module manages (metadata ``tskd`` is "preview" or "synthetic")."""
    return layer.metadata.get("tskd") in OWN_KINDS


@contextlib.contextmanager
def keep_selection(viewer: Any) -> Iterator[None]:
    """Restore the viewer's selected and active layers after the block (adding a layer in
    napari selects it; the user's brush must stay in the user's layer)."""
    selection = viewer.layers.selection
    before, active = list(selection), selection.active
    try:
        yield
    finally:
        alive = [layer for layer in before if layer in viewer.layers]
        selection.clear()
        selection.update(alive)
        if active is not None and active in viewer.layers:
            selection.active = active


def right_of_user_data(viewer: Any) -> float:
    """World x where the plugin's layers start: right of every layer that is not the plugin's."""
    edges = [float(layer.extent.world[1][-1]) for layer in viewer.layers if not is_own(layer)]
    return max(edges, default=0.0) + GAP if edges else 0.0


def _translate(ndim: int, x: float) -> tuple[float, ...]:
    return (0.0,) * (ndim - 1) + (x,)


def put_layer(viewer: Any, kind: str, data: np.ndarray, name: str, tskd: str,
              **kwargs: Any) -> Any:
    """Add or update the plugin's layer ``name`` (metadata ``tskd``) beside the user's data.

    Args:
        viewer: the napari viewer.
        kind: "image" or "labels".
        data: the layer data (for "image" with ``rgb=True``, the last axis is colour).
        name: the layer's name.
        tskd: "preview" or "synthetic" (layer metadata ``tskd``).
        **kwargs: passed to ``viewer.add_image`` / ``add_labels`` for a new layer.

    Returns:
        The layer: updated in place when one of that name and kind exists with the same shape,
        else a new one (an old one of another shape is removed), visible and in sight.
    """
    old = next((ly for ly in viewer.layers if ly.name == name and ly.metadata.get("tskd") == tskd),
               None)
    if old is not None and old.data.shape == data.shape:
        old.data = data
        return old
    with keep_selection(viewer):
        if old is not None:
            viewer.layers.remove(old)
        ndim = data.ndim - (1 if kwargs.get("rgb") else 0)
        x = right_of_user_data(viewer)
        add = viewer.add_image if kind == "image" else viewer.add_labels
        layer = add(data, name=name, translate=_translate(ndim, x), metadata={"tskd": tskd},
                    **kwargs)
        layer.visible = True
        viewer.reset_view()  # once, on creation: the new layer and the user's data in sight
    return layer


def show_preview(viewer: Any, preview: dict[str, Any], stage: str) -> None:
    """A training model's current prediction (``preview["image"]`` RGB uint8 (H, W, 3),
    ``preview["labels"]`` (H, W) ints) as the layers 'TS-KD preview image' and 'TS-KD preview'
    (updated in place while a job runs; the user's layers are never touched)."""
    if viewer is None:
        return
    image, labels = preview["image"], preview["labels"]
    img_layer = next((ly for ly in viewer.layers if ly.name == PREVIEW_IMAGE
                      and ly.metadata.get("tskd") == "preview"), None)
    if img_layer is None or img_layer.data.shape != image.shape:
        # the labels follow the image: both are created at the same place
        for layer in [ly for ly in viewer.layers if ly.metadata.get("tskd") == "preview"]:
            with keep_selection(viewer):
                viewer.layers.remove(layer)
    put_layer(viewer, "image", image, PREVIEW_IMAGE, "preview", rgb=True)
    lab_layer = put_layer(viewer, "labels", labels, PREVIEW_LABELS, "preview")
    lab_layer.metadata["stage"] = stage


def show_synthetic(viewer: Any, stack: np.ndarray, rgb: bool) -> Any:
    """The run's synthetic images, one stack (N, H, W[, 3]), as the layer 'TS-KD synthetic
    images' beside the user's data; returns the layer."""
    return put_layer(viewer, "image", stack, SYNTHETIC, "synthetic", rgb=rgb)
