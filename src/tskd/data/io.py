"""The names ``tskd.data.io`` held before it was split by concept, importable from here as before.

New code imports each name from its home: ``tskd.data.axes`` (how an array's axes are read,
the pixel budget), ``tskd.data.files`` (reading and writing one image or label file),
``tskd.data.folders`` (which files a data folder holds, nnU-Net cases) and
``tskd.data.samples`` (labelled sets and unlabelled folders as 2D samples). This module only
re-exports them, for ``tskd.pipeline.stages`` and ``tskd.apps.cli``, which still read them as
``io.<name>``; it holds no code of its own.
"""

from tskd.data.axes import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageAxes,
    axes_note,
    check_pixel_budget,
    default_max_pixels,
    image_axes,
    pixel_budget,
)
from tskd.data.files import (
    IMAGE_SUFFIXES,
    label_from_raw,
    list_images,
    nonfinite_problem,
    read_image,
    read_image_axes,
    read_label,
    stem,
    write_image,
    write_label,
)
from tskd.data.folders import DATA_ROLES, class_names, data_files, labelled_files, unlabelled_files
from tskd.data.samples import (
    Sample,
    load_labelled,
    load_unlabelled,
    read_labelled_set,
    slice_name,
)

__all__ = [
    "DATA_ROLES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS_ENV",
    "ImageAxes",
    "Sample",
    "axes_note",
    "check_pixel_budget",
    "class_names",
    "data_files",
    "default_max_pixels",
    "image_axes",
    "label_from_raw",
    "labelled_files",
    "list_images",
    "load_labelled",
    "load_unlabelled",
    "nonfinite_problem",
    "pixel_budget",
    "read_image",
    "read_image_axes",
    "read_label",
    "read_labelled_set",
    "slice_name",
    "stem",
    "unlabelled_files",
    "write_image",
    "write_label",
]
