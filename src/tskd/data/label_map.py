"""Label values and class indices: the ``LabelMap`` and the check of label values.

A label map holds *label values* (the user's ids). Models work on *class indices*
0..C-1. A ``LabelMap`` is the bijection between the two (``values[k]`` is the label value of
class ``k``; ``values[0]`` is 0, background), with the class names and an optional ignore value.
A map is declared by ``data.classes`` in the config or by nnU-Net's ``labels`` in
``dataset.json`` (``tskd.data.declared``); how a set's values become a map when none is
declared is the label policy's rule (``tskd.data.label_policy``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tskd.errors import TskdInputError

MAX_CLASSES = 256  # classes (background included) of any map, declared or not
MAX_LABEL_VALUE = 2**32 - 1  # the largest value a label file written by tskd can hold (uint32)
IGNORE_INDEX = -100  # class index of ignored pixels (torch's CrossEntropyLoss default)


def format_values(values: Sequence[int], limit: int = 8) -> str:
    """Write label values for a one-line message.

    Args:
        values: label values, in the order to show.
        limit: how many to show at most.

    Returns:
        The first ``limit`` values, comma-separated, then ``", ... (N values)"`` when there
        are more.
    """
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
        """Build a map of the given label values (0 added, sorted, duplicates dropped).

        Args:
            values: label values (integers >= 0, in any order).
            names: ``{value: name}``; unnamed classes get "background" (0) or "class N".
            declared: as ``LabelMap.declared``.
            ignore_label: as ``LabelMap.ignore_label``.

        Returns:
            The map.

        Raises:
            TskdInputError: a rule of ``LabelMap`` is broken (too many classes, a value above
                ``MAX_LABEL_VALUE``, the ignore label is a class).
        """
        vals = sorted({0, *(int(v) for v in values)})
        names = names or {}
        named = tuple(str(names.get(v, "background" if v == 0 else f"class {v}")) for v in vals)
        return cls(tuple(vals), named, declared, ignore_label)

    @classmethod
    def identity(cls, num_classes: int, names: Sequence[str] | None = None,
                 ignore_label: int | None = None) -> LabelMap:
        """Build the declared map whose classes 0..num_classes-1 are their own label values.

        Args:
            num_classes: classes, background included, 1..``MAX_CLASSES``.
            names: names in class order; missing ones get defaults (``from_values``).
            ignore_label: as ``LabelMap.ignore_label``.

        Returns:
            The map (``declared`` True).

        Raises:
            TskdInputError: ``num_classes`` is out of range, or the ignore label is a class.
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

        Returns:
            The map; a bundle without ``label_values`` gets the identity map of its classes.

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

        Returns:
            int64 class indices of ``label``'s shape; ignored pixels ``IGNORE_INDEX``.

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
        """Turn class indices back into label values.

        Args:
            indices: class indices, any shape and integer dtype; ``IGNORE_INDEX`` pixels allowed.

        Returns:
            int64 label values of the same shape; ``IGNORE_INDEX`` becomes the ignore label
            (0 without one).

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
