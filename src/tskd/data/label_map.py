"""Label values and class indices: the ``LabelMap``, and the class maps a user declares.

A label map holds *label values* (the user's ids). Models work on *class indices*
0..C-1. A ``LabelMap`` is the bijection between the two (``values[k]`` is the label value of
class ``k``; ``values[0]`` is 0, background), with the class names and an optional ignore value.
A map is declared by ``data.classes`` in the config (``declared_from_config``) or by nnU-Net's
``labels`` in ``dataset.json`` (``declared_map``); how a set's values become a map when none is
declared is the label policy's rule (``tskd.data.label_policy``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tskd.errors import TskdInputError

MAX_CLASSES = 256  # classes (background included) of any map, declared or not
MAX_LABEL_VALUE = 2**32 - 1  # the largest value a label file written by tskd can hold (uint32)
IGNORE_INDEX = -100  # class index of ignored pixels (torch's CrossEntropyLoss default)


def format_values(values: Sequence[int], limit: int = 8) -> str:
    """Label values for one line: the first ``limit`` of them, then how many there are."""
    shown = ", ".join(str(int(v)) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


@dataclass(frozen=True)
class LabelMap:
    """Label values <-> class indices: class ``k`` is label value ``values[k]``.

    Construction raises ``TskdInputError`` for a map that breaks a rule below.

    Attributes:
        values: Label values, strictly increasing, starting with 0 (background); at most
            ``MAX_CLASSES`` of them, none above ``MAX_LABEL_VALUE``.
        names: One class name per value.
        declared: Whether the map came from the user (config or dataset.json) rather than
            from the values seen.
        ignore_label: A label value (not a class) whose pixels are left out of training and
            scoring, or None; it must not be a class.
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
                f"got {format_values(vals)}"
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

    @classmethod
    def from_values(
        cls, values: Sequence[int], names: Mapping[int, str] | None = None,
        declared: bool = False, ignore_label: int | None = None,
    ) -> LabelMap:
        """A map of the given label values (0 added, sorted, duplicates dropped).

        ``names`` maps values to names (unnamed classes get "background" or "class N");
        ``declared`` and ``ignore_label`` as in ``LabelMap``, whose ``TskdInputError`` it raises.
        """
        vals = sorted({0, *(int(v) for v in values)})
        names = names or {}
        named = tuple(str(names.get(v, "background" if v == 0 else f"class {v}")) for v in vals)
        return cls(tuple(vals), named, declared, ignore_label)

    @classmethod
    def identity(cls, num_classes: int, names: Sequence[str] | None = None,
                 ignore_label: int | None = None) -> LabelMap:
        """Classes 0..num_classes-1 that are their own label values (declared).

        ``num_classes`` (background included) is 1..``MAX_CLASSES``; ``names`` in class order
        (missing ones get defaults); ``ignore_label`` as in ``LabelMap``. Raises
        ``TskdInputError`` when ``num_classes`` is out of range.
        """
        if not 1 <= num_classes <= MAX_CLASSES:
            raise TskdInputError(f"the number of classes must be in 1..{MAX_CLASSES}, "
                                 f"got {num_classes}")
        given = dict(enumerate(names or []))
        return cls.from_values(range(num_classes), given, True, ignore_label)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LabelMap:
        """The map stored in a model's ``meta.json``.

        Args:
            meta: The parsed ``meta.json``: reads ``label_values`` (written since the label
                policy; absent in older bundles, whose classes are their own values),
                ``num_classes``, ``class_names``, ``ignore_label`` and ``classes_declared``.

        Raises:
            TskdInputError: ``label_values`` is not increasing integers from 0, or disagrees.
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

    @property
    def num_classes(self) -> int:
        """Classes, background included."""
        return len(self.values)

    @property
    def is_identity(self) -> bool:
        """Whether every class is its own label value (nothing to remap)."""
        return self.values[-1] == len(self.values) - 1

    def describe(self) -> str:
        """The map as ``{value: class, ...}``, e.g. ``{0: 0, 1: 1, 5: 2}``."""
        return "{" + ", ".join(f"{v}: {k}" for k, v in enumerate(self.values)) + "}"

    def to_meta(self) -> dict[str, Any]:
        """Its ``meta.json`` keys: label_values, class_names, ignore_label, classes_declared."""
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

    def encode(self, label: np.ndarray, where: str = "label map",
               unknown: str = "error") -> np.ndarray:
        """Label values -> class indices (int64, same shape); ignored pixels -> IGNORE_INDEX.

        Works in O(pixels log classes): nothing is allocated per label value.

        Args:
            label: Label values, any shape, integer (or integral float) dtype.
            where: What the message names (a file).
            unknown: A value outside the map raises ("error") or becomes 0 ("background",
                for predictions being scored).

        Raises:
            TskdInputError: A value outside the map with ``unknown="error"``.
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
                    f"{where}: label value(s) {format_values(extra.tolist())} are not among the "
                    f"classes {format_values(list(self.values))}; fix the label map or declare "
                    "its classes (dataset.json 'labels' or data.classes)"
                )
            out[bad] = 0
        if ignored is not None:
            out[ignored] = IGNORE_INDEX
        return out

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """Class indices -> label values (int64, same shape); IGNORE_INDEX -> ignore label or 0.

        Raises:
            TskdInputError: An index outside 0..num_classes-1 (other than ``IGNORE_INDEX``).
        """
        idx = np.asarray(indices, dtype=np.int64)
        table = np.asarray(self.values, dtype=np.int64)
        ignored = idx == IGNORE_INDEX
        if (idx[~ignored] < 0).any() or (idx[~ignored] >= len(table)).any():
            raise TskdInputError(f"class indices must be in 0..{len(table) - 1}")
        out = table[np.where(ignored, 0, idx)]
        if ignored.any():
            out[ignored] = self.ignore_label if self.ignore_label is not None else 0
        return out


def check_values(arr: np.ndarray, where: str) -> None:
    """Refuse values that are not label ids, before any cast or allocation per value.

    Args:
        arr: A label map's values, any shape and numeric dtype.
        where: What the message names (a file).

    Raises:
        TskdInputError: Non-integers, NaN/inf, negatives, or values above ``MAX_LABEL_VALUE``.
    """
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


def _int_like(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def declared_from_dataset_labels(labels: Any, where: str) -> tuple[dict[int, str], int | None]:
    """``({value: name}, ignore value or None)`` from nnU-Net ``labels`` (v1 or v2 form).

    Args:
        labels: v2 ``{"background": 0, "liver": 1}`` or v1 ``{"0": "background", "1":
            "liver"}``; a label named ``"ignore"`` (v2 ``"ignore": 4``, v1 ``"4": "ignore"``) is
            the ignore value, not a class. Anything but a non-empty dict gives ``({}, None)``.
        where: What messages name (the dataset.json).

    Raises:
        TskdInputError: Values that are not label ids, more than ``MAX_CLASSES`` classes, and
            nnU-Net region lists (``"kidney": [1, 3]``), which are not supported.
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
    """The nnU-Net ``dataset.json`` of ``folder`` as a dict, or {} when there is none.

    Raises:
        TskdInputError: The file is not valid JSON or does not hold a JSON object.
    """
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
    """The class map declared by nnU-Net's ``dataset.json`` ``labels`` in ``folder``, or None.

    Args:
        folder: The folder holding ``dataset.json``.
        ignore_label: The configured ignore value; wins over the dataset.json ``"ignore"`` label.

    Raises:
        TskdInputError: An invalid dataset.json (``declared_from_dataset_labels``).
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
    """The class map of ``data.classes``, or None when ``classes`` is None.

    Args:
        classes: A list of names (value = position) or ``{value: name}``.
        ignore_label: The configured ignore value (``data.ignore_label``).
        where: What messages name.

    Raises:
        TskdInputError: An empty or malformed declaration, names that are not non-empty
            strings, values that are not label ids, or more than ``MAX_CLASSES`` classes.
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
    """The declared map: ``data.classes`` first, else the folder's dataset.json, else None.

    ``classes`` and ``ignore_label`` are the config's ``data.classes`` and ``data.ignore_label``;
    ``folder`` (the labelled set) may be None. Raises ``TskdInputError`` for an invalid
    declaration (``declared_from_config``, ``declared_map``).
    """
    lm = declared_from_config(classes, ignore_label)
    if lm is None and folder is not None:
        lm = declared_map(folder, ignore_label)
    return lm

