"""The one label policy: what the values of a label map mean, for training, widgets and metrics.

A label map holds *label values* (the user's ids). Models work on *class indices*
0..C-1. A ``LabelMap`` is the bijection between the two (``values[k]`` is the label value of
class ``k``; ``values[0]`` is 0, background), with the class names and an optional ignore value.

How a set of label maps becomes a ``LabelMap`` (``infer_map``):

- A declared map is used as given: ``data.classes`` in the config, else nnU-Net's ``labels`` in
  ``dataset.json`` (a label named ``"ignore"`` there is the ignore value). A value that is not
  declared is an error naming the file.
- Without one, the values seen (background 0 always included) become consecutive classes in
  increasing order; when they have gaps (0, 1, 5) a ``TskdWarning`` prints the map
  ``{0: 0, 1: 1, 5: 2}``. Models store the map (``label_values`` in ``meta.json``) and write
  predictions with the original values.
- Binary masks saved 0/255 are background/foreground per file: in a set whose other files are
  0/1, a file holding only 0 and 255 reads 255 as 1 (with a note); a set of 0/255 files only is
  the binary map (0, 255). A single foreground value 1 or 255 in a file of a binary declared map
  is read as its foreground class the same way.
- One file never changes what another file's values mean. Without a declared map or ignore
  value, a set where 255 is the only foreground of some files (saved 0/255) *and* appears beside
  other foreground values in others (0, 1 and 255 in one file) is refused in one line naming
  both groups of files: 255 cannot be the foreground of one file and a third value (a class, or
  an ignore border) of another. Declare the classes (``data.classes`` or dataset.json
  ``labels``) or set ``data.ignore_label: 255``. ``tskd check-data`` gives each file its error.
- An ignore value is used only when configured (``data.ignore_label`` or the dataset.json
  ``"ignore"`` label, v2 ``"ignore": 255`` or v1 ``"255": "ignore"``); its pixels become
  ``IGNORE_INDEX`` and are left out of losses and metrics. It is ignored in every file: a file
  that holds only background and the ignore value (a 0/255 mask with ``ignore_label: 255``)
  is read as background + ignore, teaches no class, and gets a warning naming it.
- nnU-Net region-based labels (``"kidney": [1, 3]``) are refused: declare plain classes, one
  value per name.
- Refused, with what to do instead: lossy files (JPEG), more than ``MAX_UNDECLARED_VALUES``
  distinct values without a declared map, values above ``MAX_LABEL_VALUE`` and declared maps of
  more than ``MAX_CLASSES`` classes (bounds checked before anything is allocated per class).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tskd.errors import TskdInputError, TskdWarning

MAX_UNDECLARED_VALUES = 64  # distinct values a set may hold without a declared class map
MAX_CLASSES = 256  # classes (background included) of any map, declared or not
MAX_LABEL_VALUE = 2**32 - 1  # the largest value a label file written by tskd can hold (uint32)
IGNORE_INDEX = -100  # class index of ignored pixels (torch's CrossEntropyLoss default)
BINARY_FOREGROUND = (1, 255)  # the foreground values of binary masks (0/1 and 0/255 exports)
LOSSY_SUFFIXES = (".jpg", ".jpeg")
LOSSY_TIFF_COMPRESSIONS = ("JPEG", "OJPEG", "WEBP", "JPEGXL", "JPEGXR", "JPEG2000")

__all__ = [
    "BINARY_FOREGROUND",
    "IGNORE_INDEX",
    "MAX_CLASSES",
    "MAX_LABEL_VALUE",
    "MAX_UNDECLARED_VALUES",
    "LabelMap",
    "MapDecision",
    "check_label_file_format",
    "binary_foreground_value",
    "check_values",
    "declared_map",
    "declared_from_config",
    "infer_map",
    "resolve_map",
]


def _fmt_values(values: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(int(v)) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


@dataclass(frozen=True)
class LabelMap:
    """Label values <-> class indices: class ``k`` is label value ``values[k]``.

    ``values`` is strictly increasing and starts with 0 (background); ``names`` has one entry
    per class; ``declared`` says whether the map came from the user (config or dataset.json)
    rather than from the values seen; ``ignore_label`` is a label value (not a class) whose
    pixels are left out of training and scoring, or None.
    """

    values: tuple[int, ...]
    names: tuple[str, ...]
    declared: bool = False
    ignore_label: int | None = None

    def __post_init__(self) -> None:
        vals = [int(v) for v in self.values]
        if not vals or vals[0] != 0 or any(b <= a for a, b in zip(vals, vals[1:])):
            raise TskdInputError(
                f"a class map needs increasing label values starting with 0 (background), "
                f"got {_fmt_values(vals)}"
            )
        if len(vals) > MAX_CLASSES:
            raise TskdInputError(f"a class map may hold at most {MAX_CLASSES} classes, "
                                 f"got {len(vals)}")
        if vals[-1] > MAX_LABEL_VALUE:
            raise TskdInputError(f"label value {vals[-1]} is above the largest supported "
                                 f"value {MAX_LABEL_VALUE}")
        if len(self.names) != len(vals):
            raise TskdInputError(f"a class map of {len(vals)} values needs {len(vals)} names, "
                                 f"got {len(self.names)}")
        if self.ignore_label is not None and self.ignore_label in vals:
            raise TskdInputError(
                f"the ignore label {self.ignore_label} is also a class; choose a value that is "
                "not a class id"
            )

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_values(
        cls, values: Sequence[int], names: Mapping[int, str] | None = None,
        declared: bool = False, ignore_label: int | None = None,
    ) -> LabelMap:
        """A map of the given label values (0 added, sorted); unnamed classes get defaults."""
        vals = sorted({0, *(int(v) for v in values)})
        names = names or {}
        named = tuple(str(names.get(v, "background" if v == 0 else f"class {v}")) for v in vals)
        return cls(tuple(vals), named, declared, ignore_label)

    @classmethod
    def identity(cls, num_classes: int, names: Sequence[str] | None = None,
                 ignore_label: int | None = None) -> LabelMap:
        """Classes 0..num_classes-1 that are their own label values (declared)."""
        if not 1 <= num_classes <= MAX_CLASSES:
            raise TskdInputError(f"the number of classes must be in 1..{MAX_CLASSES}, "
                                 f"got {num_classes}")
        given = dict(enumerate(names or []))
        return cls.from_values(range(num_classes), given, True, ignore_label)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LabelMap:
        """The map stored in a model's ``meta.json``.

        Reads ``label_values`` (written since the label policy; absent in older bundles, whose
        classes are their own values), ``num_classes``, ``class_names`` and ``ignore_label``.
        Raises ``TskdInputError`` when they disagree.
        """
        n = int(meta.get("num_classes") or 0)
        names = meta.get("class_names")
        names = [str(x) for x in names] if isinstance(names, list) else None
        ignore = meta.get("ignore_label")
        ignore = int(ignore) if isinstance(ignore, int) and not isinstance(ignore, bool) else None
        values = meta.get("label_values")
        if values is None:
            return cls.identity(max(n, 1), names if names and len(names) == n else None, ignore)
        if not isinstance(values, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise TskdInputError("model metadata: label_values must be a list of integers")
        if n and len(values) != n:
            raise TskdInputError(f"model metadata: {len(values)} label_values for {n} classes")
        given = dict(zip(values, names)) if names and len(names) == len(values) else None
        lm = cls.from_values(values, given, bool(meta.get("classes_declared", True)), ignore)
        if list(lm.values) != values:
            raise TskdInputError("model metadata: label_values must increase and start with 0")
        return lm

    # -- properties ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def is_identity(self) -> bool:
        """Whether every class is its own label value (nothing to remap)."""
        return self.values[-1] == len(self.values) - 1

    def describe(self) -> str:
        """The map as ``{value: class, ...}``, e.g. ``{0: 0, 1: 1, 5: 2}``."""
        return "{" + ", ".join(f"{v}: {k}" for k, v in enumerate(self.values)) + "}"

    def to_meta(self) -> dict[str, Any]:
        """The keys a model bundle stores: label_values, class_names, ignore_label,
        classes_declared."""
        return {
            "label_values": [int(v) for v in self.values],
            "class_names": list(self.names),
            "ignore_label": self.ignore_label,
            "classes_declared": self.declared,
        }

    def fingerprint(self) -> Any:
        """What of the map changes training (None for a plain identity map without ignore)."""
        if self.is_identity and self.ignore_label is None:
            return None
        return [list(self.values), self.ignore_label]

    # -- conversions ---------------------------------------------------------------------
    def encode(self, label: np.ndarray, where: str = "label map",
               unknown: str = "error") -> np.ndarray:
        """Label values -> class indices (int64, same shape); ignored pixels -> IGNORE_INDEX.

        A value outside the map raises ``TskdInputError`` naming ``where`` (``unknown="error"``)
        or becomes background 0 (``unknown="background"``, for predictions being scored).
        Works in O(pixels log classes): nothing is allocated per label value.
        """
        arr = np.asarray(label)
        if arr.dtype.kind not in "iub":
            arr = arr.astype(np.int64)
        table = np.asarray(self.values, dtype=np.int64)
        flat = arr.astype(np.int64, copy=False)
        idx = np.searchsorted(table, flat)
        idx_c = np.minimum(idx, len(table) - 1)
        known = table[idx_c] == flat
        out = idx_c.astype(np.int64)
        ignored = (flat == self.ignore_label) if self.ignore_label is not None else None
        bad = ~known if ignored is None else ~known & ~ignored
        if bad.any():
            if unknown == "error":
                extra = np.unique(flat[bad])
                raise TskdInputError(
                    f"{where}: label value(s) {_fmt_values(extra.tolist())} are not among the "
                    f"classes {_fmt_values(list(self.values))}; fix the label map or declare "
                    "its classes (dataset.json 'labels' or data.classes)"
                )
            out[bad] = 0
        if ignored is not None:
            out[ignored] = IGNORE_INDEX
        return out

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> label values (int64); IGNORE_INDEX -> the ignore label (or 0)."""
        idx = np.asarray(indices, dtype=np.int64)
        table = np.asarray(self.values, dtype=np.int64)
        ignored = idx == IGNORE_INDEX
        if (idx[~ignored] < 0).any() or (idx[~ignored] >= len(table)).any():
            raise TskdInputError(f"class indices must be in 0..{len(table) - 1}")
        out = table[np.where(ignored, 0, idx)]
        if ignored.any():
            out[ignored] = self.ignore_label if self.ignore_label is not None else 0
        return out


# ------------------------------------------------------------------------ single files


def check_label_file_format(path: Path) -> None:
    """Refuse label files in lossy formats (JPEG, JPEG-compressed TIFF) before decoding them.

    Raises ``TskdInputError``: lossy compression changes values at mask edges, which turns two
    classes into dozens of grey values.
    """
    suffix = path.suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        raise TskdInputError(
            f"{path}: JPEG is lossy and changes label values at mask edges, so it cannot hold a "
            "label map; save the labels as PNG or TIF instead"
        )
    if suffix in (".tif", ".tiff") and path.is_file():
        compression = _tiff_compression(path)
        if compression in LOSSY_TIFF_COMPRESSIONS:
            raise TskdInputError(
                f"{path}: the TIFF is {compression}-compressed, which is lossy and changes label "
                "values at mask edges; save the labels as PNG or as TIF without compression "
                "(or with lossless compression such as deflate)"
            )


def _tiff_compression(path: Path) -> str | None:
    """The compression name of a TIFF's first page, or None when it cannot be read."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].compression.name)
    except Exception:  # an unreadable file is reported by the reader, with its own message
        return None


def tiff_is_colour(path: Path) -> bool:
    """Whether a TIFF stores colour samples (RGB photometric or several samples per pixel)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return bool(page.samplesperpixel > 1 and page.photometric.name in ("RGB", "YCBCR",
                                                                                "SEPARATED"))
    except Exception:
        return False


def check_values(arr: np.ndarray, where: str) -> None:
    """Refuse values that are not label ids, before any cast: non-integers, NaN/inf,
    negatives, and values above ``MAX_LABEL_VALUE``. Raises ``TskdInputError``."""
    if arr.size == 0:
        return
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all()
                                      and np.array_equal(arr, np.round(arr))):
        raise TskdInputError(
            f"{where}: label map has non-integer values; labels must be integers "
            "0 (background), 1, 2, ..."
        )
    lo, hi = arr.min(), arr.max()

    def text(v: Any) -> str:
        return str(int(v)) if arr.dtype.kind in "iub" else f"{float(v):.15g}"

    if lo < 0:
        raise TskdInputError(f"{where}: label map has negative values (lowest {text(lo)}); "
                             "labels must be 0 (background), 1, 2, ...")
    if hi > MAX_LABEL_VALUE:
        raise TskdInputError(
            f"{where}: label value {text(hi)} is above {MAX_LABEL_VALUE}, the largest supported "
            "label value; save the classes as 0 (background), 1, 2, ..."
        )


def distinct_values(label: np.ndarray) -> np.ndarray:
    """The sorted distinct values of a label map (int64)."""
    return np.unique(np.asarray(label))


# ------------------------------------------------------------------------ declared maps


def _int_like(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def declared_from_dataset_labels(labels: Any, where: str) -> tuple[dict[int, str], int | None]:
    """``{value: name}`` and the ignore value from nnU-Net ``labels`` (v1 or v2 form).

    v2 ``{"background": 0, "liver": 1}``, v1 ``{"0": "background", "1": "liver"}``; a label
    named ``"ignore"`` (v2 ``"ignore": 4``, v1 ``"4": "ignore"``) is the ignore value, not a
    class. Raises ``TskdInputError`` for values that are not label ids and for nnU-Net region
    lists (``"kidney": [1, 3]``), which are not supported.
    """
    if not isinstance(labels, dict) or not labels:
        return {}, None
    by_value: dict[int, str] = {}
    ignore: int | None = None
    for key, value in labels.items():
        if isinstance(value, list | tuple):
            raise TskdInputError(
                f"{where}: label {str(key)!r} is the region {list(value)} (nnU-Net region-based "
                "training), which is not supported; declare plain classes, one label value per "
                f"name (e.g. {json.dumps({str(key): 1})})"
            )
        v2, v1 = _int_like(value), _int_like(key)
        if v2 is not None:
            if str(key).strip().lower() == "ignore":
                ignore = v2
            else:
                by_value.setdefault(v2, str(key))
        elif v1 is not None:
            if str(value).strip().lower() == "ignore":  # nnU-Net v1: {"255": "ignore"}
                ignore = v1
            else:
                by_value.setdefault(v1, str(value))
    bad = [v for v in by_value if v < 0 or v > MAX_LABEL_VALUE]
    if bad:
        raise TskdInputError(f"{where}: label value {bad[0]} is not a label id (0 to "
                             f"{MAX_LABEL_VALUE})")
    if len(by_value) > MAX_CLASSES:
        raise TskdInputError(f"{where} declares {len(by_value)} classes; at most {MAX_CLASSES} "
                             "are supported")
    return by_value, ignore


def read_dataset_json(folder: Path) -> dict[str, Any]:
    """The nnU-Net ``dataset.json`` of a folder, or {} when there is none."""
    path = folder / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise TskdInputError(f"{path} is not valid JSON") from None
    if not isinstance(meta, dict):
        raise TskdInputError(f"{path} must hold a JSON object")
    return meta


def declared_map(folder: str | Path, ignore_label: int | None = None) -> LabelMap | None:
    """The class map declared by nnU-Net's ``dataset.json`` ``labels`` in ``folder``, if any.

    ``ignore_label`` (configured) wins over the dataset.json ``"ignore"`` label. Raises
    ``TskdInputError`` for an invalid dataset.json.
    """
    folder = Path(folder)
    meta = read_dataset_json(folder)
    by_value, ignore = declared_from_dataset_labels(meta.get("labels"), str(folder /
                                                                             "dataset.json"))
    if not by_value:
        return None
    return LabelMap.from_values(list(by_value), by_value, True,
                                ignore_label if ignore_label is not None else ignore)


def declared_from_config(classes: Any, ignore_label: int | None = None,
                         where: str = "config data.classes") -> LabelMap | None:
    """The class map of ``data.classes``: a list of names (value = position) or ``{value: name}``.

    Raises ``TskdInputError`` for names that are not strings, values that are not label ids, or
    more than ``MAX_CLASSES`` classes.
    """
    if classes is None:
        return None
    if isinstance(classes, list | tuple):
        items = list(enumerate(classes))
    elif isinstance(classes, Mapping):
        items = list(classes.items())
    else:
        raise TskdInputError(f"{where} must be a list of class names or a mapping "
                             f"{{value: name}}, got {classes!r}")
    if not items:
        raise TskdInputError(f"{where} is empty; list the class names, background first")
    if len(items) > MAX_CLASSES:
        raise TskdInputError(f"{where} declares {len(items)} classes; at most {MAX_CLASSES} "
                             "are supported")
    by_value: dict[int, str] = {}
    for key, name in items:
        value = _int_like(key)
        if value is None or not 0 <= value <= MAX_LABEL_VALUE:
            raise TskdInputError(f"{where}: {key!r} is not a label value (0 to "
                                 f"{MAX_LABEL_VALUE})")
        if not isinstance(name, str) or not name.strip():
            raise TskdInputError(f"{where}: the name of class {value} must be a non-empty text")
        by_value[value] = name
    return LabelMap.from_values(list(by_value), by_value, True, ignore_label)


def resolve_declared(folder: str | Path | None, classes: Any = None,
                     ignore_label: int | None = None) -> LabelMap | None:
    """The declared map: ``data.classes`` first, else the folder's dataset.json, else None."""
    lm = declared_from_config(classes, ignore_label)
    if lm is None and folder is not None:
        lm = declared_map(folder, ignore_label)
    return lm


# ------------------------------------------------------------------------ inference


@dataclass
class MapDecision:
    """The outcome of the policy on a set of label maps.

    ``label_map``: the map (None when ``errors``); ``how``: per file, how it is read;
    ``binary_files``: files whose foreground value is read as the binary map's foreground;
    ``notes``/``warnings``: sentences for the user; ``errors``: one sentence per problem.
    ``file_errors``/``file_warnings``: per file, the share of a set-wide error or warning that
    concerns it, for ``tskd check-data``'s per-file report; the set-wide sentences, in
    ``errors``/``warnings`` for training, are also listed in ``summarised``.
    """

    label_map: LabelMap | None
    how: dict[str, str] = field(default_factory=dict)
    binary_files: dict[str, int] = field(default_factory=dict)  # file -> value read as class 1
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    file_errors: dict[str, list[str]] = field(default_factory=dict)
    file_warnings: dict[str, list[str]] = field(default_factory=dict)
    summarised: list[str] = field(default_factory=list)

    def raise_first(self) -> None:
        if self.errors:
            raise TskdInputError(self.errors[0])

    def emit(self, stacklevel: int = 3) -> None:
        """Show notes and warnings as ``TskdWarning`` (the CLI prints them as one line each)."""
        for text in [*self.warnings, *self.notes]:
            warnings.warn(text, TskdWarning, stacklevel=stacklevel)


def binary_foreground_value(
    vals: set[int], lm_values: Sequence[int], ignore: int | None
) -> int | None:
    """The single foreground value (1 or 255) of a binary file that is not a class, if any."""
    fg = vals - {0} - ({ignore} if ignore is not None else set())
    if len(fg) == 1:
        (v,) = fg
        if v in BINARY_FOREGROUND and v not in lm_values:
            return v
    return None


def infer_map(
    files: Sequence[tuple[str, np.ndarray]],
    declared: LabelMap | None = None,
    ignore_label: int | None = None,
    where: str = "label maps",
) -> MapDecision:
    """Decide the class map of a set of label maps from their distinct values.

    ``files`` is ``[(name, distinct values), ...]`` (``distinct_values`` of each map);
    ``declared`` a declared map or None; ``ignore_label`` a configured ignore value (a declared
    map's own ignore value is used when this is None). Never raises for the data: problems are
    collected in ``errors`` (one sentence each, naming the file).
    """
    ignore = ignore_label if ignore_label is not None else (
        declared.ignore_label if declared is not None else None)
    if declared is not None and declared.ignore_label != ignore:
        declared = LabelMap(declared.values, declared.names, True, ignore)
    dec = MapDecision(None)
    sets = {name: {int(v) for v in vals.tolist()} for name, vals in files}
    if ignore is not None:
        _ignore_only_files(dec, sets, ignore, where)
    if declared is not None:
        allowed = set(declared.values) | ({ignore} if ignore is not None else set())
        for name, vals in sets.items():
            extra = vals - allowed
            if not extra:
                dec.how[name] = "as declared"
                continue
            v = (binary_foreground_value(vals, declared.values, ignore)
                 if declared.num_classes == 2 else None)
            if v is not None:
                dec.binary_files[name] = v
                dec.how[name] = f"binary mask: {v} read as {declared.values[1]} " \
                                f"({declared.names[1]})"
                continue
            dec.errors.append(
                f"{name}: label value(s) {_fmt_values(sorted(extra))} are not among the declared "
                f"classes {_fmt_values(list(declared.values))}; fix the label map or the class "
                "list (dataset.json 'labels' or data.classes)"
            )
        if dec.binary_files:
            dec.notes.append(_binary_note(where, dec.binary_files, declared.values[1]))
        if not dec.errors:
            dec.label_map = declared
        return dec

    ign = {ignore} if ignore is not None else set()
    for name, vals in sets.items():
        n = len(vals - ign)
        if n > MAX_UNDECLARED_VALUES:
            dec.errors.append(_too_many(name, n))
    b255 = [n for n, v in sets.items() if (v - ign) - {0} == {255}]
    beside = {n: sorted((v - ign) - {0, 255}) for n, v in sets.items()
              if 255 in v - ign and (v - ign) - {0, 255}}
    if b255 and beside:  # 255: the foreground of some files, a third value of others
        _conflict_255(dec, b255, beside, where)
        return dec
    others: set[int] = set()
    for name, vals in sets.items():
        if name not in b255:
            others |= vals - ign - {0}
    union = others | ({255} if b255 else set())
    if b255 and others and others <= {1}:  # 0/1 files and 0/255 files: binary per file
        for name in b255:
            dec.binary_files[name] = 255
        union = {1}
        dec.notes.append(_binary_note(where, dec.binary_files, 1))
    if len(union) + 1 > MAX_UNDECLARED_VALUES and not dec.errors:
        dec.errors.append(_too_many(where, len(union) + 1))
    if dec.errors:
        return dec
    lm = LabelMap.from_values(sorted(union), None, False, ignore)
    for name, vals in sets.items():
        if name in dec.binary_files:
            dec.how[name] = "binary mask: 255 read as 1 (foreground)"
        elif vals - ign - {0} == {255} and lm.values == (0, 255):
            dec.how[name] = "binary mask 0/255: background/foreground"
        elif lm.is_identity:
            dec.how[name] = "values are classes"
        else:
            dec.how[name] = "values remapped to classes " + lm.describe()
    if lm.values == (0, 255):
        dec.notes.append(f"{where}: label maps hold only 0 and 255; reading them as "
                         "background/foreground")
    elif not lm.is_identity:
        dec.warnings.append(
            f"{where}: class ids {_fmt_values(list(lm.values), 16)} have gaps; they are read "
            f"as {lm.num_classes} consecutive classes {lm.describe()} (label value: class), the "
            "map is stored with the model and predictions are written with the original values "
            "(declare the classes in dataset.json 'labels' or data.classes if this is not meant)"
        )
    dec.label_map = lm
    return dec


def _short(names: Sequence[str], limit: int = 3) -> str:
    """File names (not paths), the first ``limit`` of them, for one line."""
    shown = [Path(n).name for n in sorted(names)[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


_DECLARE_255 = ("declare the classes (data.classes or dataset.json 'labels') or set "
                "data.ignore_label: 255")


def _conflict_255(dec: MapDecision, b255: Sequence[str], beside: Mapping[str, list[int]],
                  where: str) -> None:
    """255 is the only foreground of ``b255`` (saved 0/255) and a value beside others in
    ``beside``: refused, one set-wide line and one line per file."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, vals in beside.items():
        groups.setdefault(tuple(vals), []).append(name)
    besides = "; ".join(f"beside {_fmt_values(vals)} in {_short(names)}"
                        for vals, names in sorted(groups.items()))
    dec.errors.append(
        f"{where}: 255 is the foreground of {_short(b255)} (saved 0/255) but a value "
        f"{besides}; {_DECLARE_255}"
    )
    dec.summarised.append(dec.errors[-1])
    for name in b255:
        dec.file_errors.setdefault(name, []).append(
            f"{name}: 255 is this file's only foreground value (saved 0/255), but "
            f"{_short(list(beside))} hold(s) 255 beside other values; {_DECLARE_255}"
        )
    for name, vals in beside.items():
        dec.file_errors.setdefault(name, []).append(
            f"{name}: 255 is a value beside {_fmt_values(vals)} here, but the only foreground "
            f"of {_short(b255)} (saved 0/255); {_DECLARE_255}"
        )


def _ignore_only_files(dec: MapDecision, sets: Mapping[str, set[int]], ignore: int,
                       where: str) -> None:
    """Warn about files that hold only background and the ignore value: they teach no class."""
    names = [n for n, v in sets.items() if ignore in v and not v - {0, ignore}]
    if not names:
        return
    dec.warnings.append(
        f"{where}: {len(names)} label map(s) ({_short(names)}) hold only background 0 and the "
        f"ignore value {ignore}, so they are read as background + ignored pixels and teach no "
        f"class (a mask saved 0/{ignore} loses its foreground when {ignore} is the ignore "
        "value)"
    )
    dec.summarised.append(dec.warnings[-1])
    for name in names:
        dec.file_warnings.setdefault(name, []).append(
            f"{name}: only background 0 and the ignore value {ignore}; read as background + "
            "ignored pixels, it teaches no class"
        )


def _binary_note(where: str, files: Mapping[str, int], target: int) -> str:
    names = sorted(files)
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return (f"{where}: {len(names)} binary label map(s) ({shown}) use another foreground "
            f"value than the others; reading it as class value {target} (foreground)")


def _too_many(where: str, n: int) -> str:
    return (
        f"{where} holds {n} distinct label values, more than {MAX_UNDECLARED_VALUES} without a "
        "declared class map; labels must be class ids 0, 1, 2, ... - if the masks were saved as "
        "JPEG or resized with smoothing, re-export them as PNG or TIF without interpolation, and "
        "if there are that many classes, declare them (dataset.json 'labels' or data.classes)"
    )


def resolve_map(
    files: Sequence[tuple[str, np.ndarray]],
    folder: str | Path | None = None,
    classes: Any = None,
    ignore_label: int | None = None,
    label_map: LabelMap | None = None,
    where: str = "label maps",
) -> MapDecision:
    """``infer_map`` with the declared map looked up: ``label_map`` (a model's), else
    ``classes`` (config), else ``folder``'s dataset.json. Raises only for an invalid
    declaration (config or dataset.json)."""
    declared = label_map or resolve_declared(folder, classes, ignore_label)
    return infer_map(files, declared, ignore_label, where)


def encode_file(label: np.ndarray, name: str, decision: MapDecision) -> np.ndarray:
    """One label map as class indices under a decided map (its binary foreground applied)."""
    lm = decision.label_map
    if lm is None:
        decision.raise_first()
        raise TskdInputError(f"{name}: no class map was decided")
    v = decision.binary_files.get(name)
    if v is not None:
        label = np.where(np.asarray(label) == v, lm.values[1], label)
    return lm.encode(label, name)
