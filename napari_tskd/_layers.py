"""Turning napari layers into training images and back: slices, stacks, contrast, choices.

Conventions: an Image layer is 2D (H, W), RGB (H, W, 3|4) or a stack (Z, H, W[, 3|4]); a Labels
layer has the image's spatial shape. A stack slice with any label > 0 is one training image.
Images that are not 8-bit are mapped to 8-bit with the layer's contrast limits, so the model trains
on what the user sees (16-bit microscopy and CT included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tskd.data import axes, samples
from tskd.errors import TskdInputError


def unwrap(viewer: Any) -> Any:
    """The real viewer behind napari's ``PublicOnlyProxy`` (None stays None)."""
    return getattr(viewer, "__wrapped__", viewer)


def layers_of(viewer: Any, kind: str) -> list[Any]:
    """Layers of one kind ('image' or 'labels'), in the layer list's order."""
    if viewer is None:
        return []
    import napari.layers

    cls = napari.layers.Image if kind == "image" else napari.layers.Labels
    return [layer for layer in viewer.layers if isinstance(layer, cls)]


def choices(viewer_getter: Any, kind: str, skip_predictions: bool = False) -> Any:
    """A magicgui choices callable listing (name, layer) of one kind.

    Args:
        viewer_getter: Returns the viewer (or None) when the choices are read.
        kind: 'image' or 'labels'.
        skip_predictions: Also leave out the plugin's prediction layers (metadata ``tskd``
            "prediction"), which are never a labelled set as they are.

    Returns:
        The callable; it never lists the plugin's own layers (training previews, synthetic
        images: ``user_layers``).
    """

    def _choices(_widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in user_layers(viewer_getter(), kind)
                if not (skip_predictions and is_prediction(layer))]

    return _choices


def user_layers(viewer: Any, kind: str) -> list[Any]:
    """``layers_of`` without the plugin's own layers (``is_plugin_layer``): what a user may
    train on, segment, correct or be offered by *Suggest*.

    Args:
        viewer: The napari viewer (None: no layers).
        kind: 'image' or 'labels'.
    """
    return [layer for layer in layers_of(viewer, kind) if not is_plugin_layer(layer)]


def is_rgb(layer: Any) -> bool:
    return bool(getattr(layer, "rgb", False))


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape without the colour axis."""
    shape = tuple(int(s) for s in layer.data.shape)
    return shape[:-1] if is_rgb(layer) else shape


def layer_axes(layer: Any) -> Any:
    """How the layer's axes are read (``tskd.data.axes.image_axes``, napari's ``rgb`` flag as the
    metadata: the colour axis is last, every other axis spatial, as napari displays it)."""
    return axes.image_axes(layer.data.shape, rgb=is_rgb(layer), where=f"layer '{layer.name}'")


def stack_is_rgb(stack: np.ndarray) -> bool:
    """Whether a stack (Z, H, W[, C]) shows as colour (``tskd.data.axes.ImageAxes.rgb``)."""
    return axes.image_axes(np.shape(stack), is_stack=True, where="stack").rgb


def is_stack(layer: Any) -> bool:
    """A stack of 2D slices (three spatial axes), read as in training and ``tskd predict``."""
    from tskd.errors import TskdInputError

    try:
        return bool(layer_axes(layer).is_stack)
    except TskdInputError:  # not 2D or 3D: check_layer says so where it matters
        return False


def check_layer(layer: Any, what: str = "image") -> None:
    """Refuse what the plugin cannot train on, with one sentence."""
    if layer is None:
        raise TskdInputError(f"no {what} layer chosen; add or open one first")
    if getattr(layer, "multiscale", False):
        raise TskdInputError(f"layer '{layer.name}' is multiscale; only single-scale is supported")
    n = len(spatial_shape(layer))
    if n not in (2, 3):
        raise TskdInputError(
            f"layer '{layer.name}' has {n} spatial dimensions; expected 2D images or a 3D stack"
        )


def n_slices(layer: Any) -> int:
    return spatial_shape(layer)[0] if is_stack(layer) else 1


def get_slice(layer: Any, index: int = 0) -> np.ndarray:
    """One 2D image (or label map) of a layer: slice ``index`` of a stack, or the whole 2D."""
    return np.asarray(layer.data[index] if is_stack(layer) else layer.data)


def to_uint8(image: np.ndarray, contrast_limits: Any = None) -> np.ndarray:
    """8-bit copy of an image as displayed: non-uint8 data mapped by the contrast limits."""
    if image.dtype == np.uint8:
        return image
    img = image.astype(np.float32)
    if contrast_limits is None:
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    else:
        lo, hi = (float(v) for v in contrast_limits)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.clip((img - lo) * scale, 0, 255).round().astype(np.uint8)


def snapshot(layer: Any) -> Any:
    """What ``training_image`` reads of a layer (data, name, rgb, contrast limits), taken in
    the GUI thread so that a worker thread converts slices without touching the layer."""
    from types import SimpleNamespace

    return SimpleNamespace(data=layer.data, name=layer.name, rgb=is_rgb(layer),
                           contrast_limits=tuple(getattr(layer, "contrast_limits", ()) or ())
                           or None, multiscale=False)


def training_image(layer: Any, index: int = 0) -> np.ndarray:
    """Slice ``index`` of an Image layer as a training image (8-bit, channels kept)."""
    img = get_slice(layer, index)
    if is_rgb(layer) and img.shape[-1] == 4:
        img = img[..., :3]
    return to_uint8(img, getattr(layer, "contrast_limits", None))


def safe_name(text: str) -> str:
    """A file-name-safe version of a layer name."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip())
    return keep.strip("_") or "layer"


def unique_names(texts: Sequence[str]) -> tuple[list[str], str]:
    """File-name-safe names for ``texts`` (``safe_name``), kept unique, in order.

    Names that meet after sanitising (``case 1``, ``case.1`` and ``case_1`` are all ``case_1``),
    also when they differ only in case (one file on macOS and Windows), get ``_2``, ``_3``, ...
    in order of appearance. Returns ``(names, note)``: ``note`` is "" or one sentence naming
    every name involved in a collision and the file name it got.
    """
    safe = [safe_name(t) for t in texts]
    counts: dict[str, int] = {}
    for name in safe:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    taken: set[str] = set()
    names: list[str] = []
    for name in safe:
        chosen, k = name, 2
        while chosen.lower() in taken:
            chosen, k = f"{name}_{k}", k + 1
        taken.add(chosen.lower())
        names.append(chosen)
    involved = [i for i, (a, b) in enumerate(zip(safe, names))
                if a != b or counts[a.lower()] > 1]
    note = ""
    if involved:
        pairs = ", ".join(f"{texts[i]!r} -> {names[i]}" for i in involved)
        note = f"some names become the same file name, so they were kept apart: {pairs}"
    return names, note


def labelled_slices(
    image_layer: Any, labels_layer: Any
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Training pairs from an Image + Labels layer: every (slice) with any label > 0."""
    check_layer(image_layer, "image")
    check_layer(labels_layer, "labels")
    if spatial_shape(image_layer) != spatial_shape(labels_layer):
        raise TskdInputError(
            f"image layer '{image_layer.name}' {spatial_shape(image_layer)} and labels layer "
            f"'{labels_layer.name}' {spatial_shape(labels_layer)} differ in shape"
        )
    images, labels, names = [], [], []
    base = safe_name(image_layer.name)
    for z in range(n_slices(labels_layer)):
        label = get_slice(labels_layer, z)
        if not label.any():
            continue
        if label.min() < 0:
            raise TskdInputError(f"labels layer '{labels_layer.name}' holds negative labels")
        images.append(training_image(image_layer, z))
        labels.append(label.astype(np.int64))
        names.append(samples.slice_name(base, z) if is_stack(image_layer) else base)
    if not images:
        raise TskdInputError(f"labels layer '{labels_layer.name}' holds no labels (all zero)")
    return images, labels, names


def labelled_summary(image_layer: Any, labels_layer: Any) -> tuple[int, list[int]]:
    """(number of labelled slices, classes found) without converting any image."""
    data = np.asarray(labels_layer.data)
    if is_stack(labels_layer):
        flat = data.reshape(data.shape[0], -1)
        n = int(np.count_nonzero(flat.any(axis=1)))
    else:
        n = int(data.any())
    classes = [int(c) for c in np.unique(data) if c > 0]
    return n, classes


def unlabelled_slices(layers: list[Any]) -> tuple[list[np.ndarray], list[str]]:
    """Every slice of the given Image layers as 8-bit images, with names."""
    images, names = [], []
    for layer in layers:
        check_layer(layer, "image")
        base = safe_name(layer.name)
        for z in range(n_slices(layer)):
            images.append(training_image(layer, z))
            names.append(samples.slice_name(base, z) if is_stack(layer) else base)
    return images, names


def current_index(viewer: Any, layer: Any) -> int:
    """The stack slice of ``layer`` the viewer displays (0 for a 2D layer)."""
    if not is_stack(layer):
        return 0
    z = layer.world_to_data(viewer.dims.point)[0]
    return int(np.clip(round(float(z)), 0, n_slices(layer) - 1))


def jump_to(viewer: Any, layer: Any, index: int) -> None:
    """Move the viewer to slice ``index`` of a stack layer."""
    if not is_stack(layer):
        return
    axis = viewer.dims.ndim - layer.ndim
    world = layer.data_to_world([index] + [0] * (layer.ndim - 1))[0]
    viewer.dims.set_point(axis, world)


# -- provenance: which image a prediction layer was made from -----------------------------------
PLUGIN_KINDS = ("preview", "synthetic")  # napari_tskd._own_layers.OWN_KINDS


def is_plugin_layer(layer: Any) -> bool:
    """A layer the plugin shows for itself (training preview, synthetic images): never a
    choice in a tab nor a *Suggest* candidate."""
    return getattr(layer, "metadata", {}).get("tskd") in PLUGIN_KINDS


def is_prediction(layer: Any) -> bool:
    """A labels layer the plugin predicted (metadata ``tskd`` "prediction")."""
    return getattr(layer, "metadata", {}).get("tskd") == "prediction"


def fingerprint(layer: Any) -> str:
    """A short identity of an Image layer's pixels (16 hex digits).

    The hash covers the data's shape and dtype and up to three slices (first, middle, last),
    each subsampled to at most 256 values a side, so it takes about a millisecond on any layer.
    It changes when the layer's data is replaced, not when its name or contrast changes.
    """
    import hashlib

    data = layer.data
    h = hashlib.blake2b(digest_size=8)
    h.update(repr((tuple(int(s) for s in data.shape), str(data.dtype))).encode())
    n = n_slices(layer)
    for z in sorted({0, n // 2, n - 1}):
        img = get_slice(layer, z)
        step = max(1, -(-max(img.shape[:2]) // 256))
        h.update(np.ascontiguousarray(img[::step, ::step]).tobytes())
    return h.hexdigest()


def provenance(image: Any) -> dict[str, Any]:
    """Metadata a prediction layer keeps about its Image layer: name, shape and identity."""
    return {"image": image.name, "image_shape": list(spatial_shape(image)),
            "image_id": fingerprint(image)}


def recorded_source(labels: Any) -> str | None:
    """Name of the Image layer a labels layer was segmented from (None: not recorded)."""
    meta = getattr(labels, "metadata", {}) or {}
    return meta.get("image") if meta.get("image_id") else None


def source_layer(viewer: Any, labels: Any) -> Any:
    """The open Image layer a prediction layer was made from: by its recorded identity (also
    after a rename), or None when nothing was recorded or no open layer has those pixels."""
    meta = getattr(labels, "metadata", {}) or {}
    wanted = meta.get("image_id")
    if not wanted:
        return None
    images = layers_of(viewer, "image")
    ordered = [ly for ly in images if ly.name == meta.get("image")] + images
    for layer in ordered:
        if list(spatial_shape(layer)) == list(meta.get("image_shape", [])) and \
                fingerprint(layer) == wanted:
            return layer
    return None


def named_owner(labels: Any, images: Sequence[Any]) -> Any:
    """The Image layer a labels layer is named after ('<image> labels', as File > Open Sample
    and most readers name them), among ``images``; None when no name matches."""
    for suffix in (" labels", "_labels", " Labels"):
        if labels.name.endswith(suffix):
            base = labels.name[: -len(suffix)]
            return next((ly for ly in images if ly.name == base), None)
    return None


def check_pair(image: Any, labels: Any, button: str, images: Sequence[Any] = ()) -> None:
    """Refuse an (Image, Labels) pair that is not one training pair, naming the layers.

    Args:
        image: the Image layer.
        labels: the Labels layer painted on it.
        button: the button's text, for the message.
        images: the open Image layers; a labels layer without recorded provenance that is
            named after another of them (``named_owner``, same shape) is refused.

    Raises:
        TskdInputError: no layer chosen, a shape mismatch, a labels layer that records
            (``provenance``) another image than ``image`` or an image whose pixels changed, or
            one named after another image layer.
    """
    check_layer(image, "image")
    check_layer(labels, "labels")
    if is_plugin_layer(labels) or is_plugin_layer(image):
        raise TskdInputError(
            f"'{labels.name if is_plugin_layer(labels) else image.name}' is the plugin's own "
            "layer (training preview or synthetic images), "
            f"not your data; choose your own layers before pressing '{button}'")
    a, b = spatial_shape(image), spatial_shape(labels)
    if a != b:
        raise TskdInputError(
            f"image layer '{image.name}' {a} and labels layer '{labels.name}' {b} differ in "
            f"shape; choose the labels painted on '{image.name}' before pressing '{button}'")
    source = recorded_source(labels)
    if source is None:
        owner = named_owner(labels, images or [])
        if owner is not None and owner is not image and spatial_shape(owner) == a:
            raise TskdInputError(
                f"labels layer '{labels.name}' is named after image layer '{owner.name}', not "
                f"'{image.name}'; choose '{owner.name}' as Image layer (or rename the labels "
                f"layer) before pressing '{button}'")
        return
    if fingerprint(image) == labels.metadata["image_id"]:
        return
    if image.name == source or not any(ly.name == source for ly in images):
        # the recorded image is not open under its name: renamed, and its pixels changed
        raise TskdInputError(
            f"image layer '{image.name}' has changed since labels layer '{labels.name}' was "
            f"segmented from it; press 'Segment' again and correct the new prediction before "
            f"pressing '{button}'")
    raise TskdInputError(
        f"labels layer '{labels.name}' was segmented from image layer '{source}', not from "
        f"'{image.name}'; choose '{source}' as Image layer before pressing '{button}'")
