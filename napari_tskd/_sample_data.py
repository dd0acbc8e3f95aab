"""File > Open Sample: the procedural tasks as a labelled stack, its labels and an unlabelled
stack (images from ``tskd.data.phantoms``; nothing is downloaded). The unlabelled stack carries
layer metadata ``tskd_sample: "unlabelled"``: the Segment tab preselects it."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_tskd._layers import stack_is_rgb

N_LABELLED = 8
N_UNLABELLED = 8
SIZE = 256


def make_sample(task: str, n_labelled: int = N_LABELLED, n_unlabelled: int = N_UNLABELLED,
                size: int = SIZE) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data: '<task>' image stack + '<task> labels', and '<task> unlabelled' stack."""
    from tskd.data import phantoms

    labelled = phantoms.generate(task, n_labelled, size=size, seed=0)
    unlabelled = phantoms.generate(task, n_unlabelled, size=size, seed=1)
    images = np.stack([img for img, _ in labelled])
    labels = np.stack([lab for _, lab in labelled]).astype(np.uint8)
    rest = np.stack([img for img, _ in unlabelled])
    shown: dict[str, Any] = {"rgb": stack_is_rgb(images)}
    if images.dtype == np.uint16:  # CT stored as HU + 1024: a soft-tissue window
        shown["contrast_limits"] = (1024 - 160, 1024 + 240)
    names = list(phantoms.TASKS[task].class_names)
    return [
        (images, {"name": task, **shown}, "image"),
        (labels, {"name": f"{task} labels", "metadata": {"class_names": names}}, "labels"),
        (rest, {"name": f"{task} unlabelled", "visible": False, **shown,
               "metadata": {"tskd_sample": "unlabelled"}}, "image"),
    ]


def kidney_us() -> list[tuple[Any, dict[str, Any], str]]:
    return make_sample("kidney_us")


def skin_lesion() -> list[tuple[Any, dict[str, Any], str]]:
    return make_sample("skin_lesion")


def retina_vessels() -> list[tuple[Any, dict[str, Any], str]]:
    return make_sample("retina_vessels")


def ct_abdomen() -> list[tuple[Any, dict[str, Any], str]]:
    return make_sample("ct_abdomen")
