"""The one label policy: what the values of a label map mean, for training, widgets and metrics.

A label map holds *label values* (the user's ids); models work on *class indices* 0..C-1, and a
``LabelMap`` (``tskd.data.label_map``) is the bijection between the two. This module holds the
rules: how the values of a set become a ``LabelMap`` (which label file formats are refused is
``tskd.data.label_formats``; the maps a user declares, ``tskd.data.declared``).

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
- Refused, with what to do instead: lossy files (JPEG, ``label_formats``), more than
  ``MAX_UNDECLARED_VALUES`` distinct values without a declared map, values above
  ``MAX_LABEL_VALUE`` and declared maps of more than ``MAX_CLASSES`` classes (bounds checked
  before anything is allocated per class).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# LabelMap is imported here for MapDecision; pipeline/stages.py and apps/cli.py import it from here
from tskd.data.declared import resolve_declared
from tskd.data.label_map import LabelMap, format_values
from tskd.errors import TskdInputError, TskdWarning

MAX_UNDECLARED_VALUES = 64  # distinct values a set may hold without a declared class map
BINARY_FOREGROUND = (1, 255)  # the foreground values of binary masks (0/1 and 0/255 exports)

__all__ = [
    "BINARY_FOREGROUND",
    "MAX_UNDECLARED_VALUES",
    "MapDecision",
    "binary_foreground_value",
    "distinct_values",
    "encode_file",
    "infer_map",
    "resolve_map",
]


def distinct_values(label: np.ndarray) -> np.ndarray:
    """List the distinct values of a label map, what ``infer_map`` reads of each file.

    Args:
        label: a label map of any shape and integer dtype.

    Returns:
        The sorted distinct values, 1D, in the map's dtype (``np.unique``).
    """
    return np.unique(np.asarray(label))


@dataclass
class MapDecision:
    """The outcome of the policy on a set of label maps.

    Attributes:
        label_map: The map; None when there are ``errors``.
        how: Per file, how it is read.
        binary_files: Files whose foreground value is read as the binary map's foreground.
        notes, warnings: Sentences for the user.
        errors: One sentence per problem.
        file_errors, file_warnings: Per file, the share of a set-wide error or warning that
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
        """Raise ``TskdInputError`` with the first of ``errors``, if any."""
        if self.errors:
            raise TskdInputError(self.errors[0])

    def emit(self, stacklevel: int = 3) -> None:
        """Show warnings, then notes, as ``TskdWarning`` (the CLI prints one line each).

        Args:
            stacklevel: ``warnings.warn``'s; 3 names the caller of the function that emits.
        """
        for text in [*self.warnings, *self.notes]:
            warnings.warn(text, TskdWarning, stacklevel=stacklevel)


def binary_foreground_value(
    vals: set[int], lm_values: Sequence[int], ignore: int | None
) -> int | None:
    """Find the one foreground value of a binary mask that the map does not hold as a class.

    Args:
        vals: the file's distinct values.
        lm_values: the map's label values.
        ignore: the ignore value, or None.

    Returns:
        1 or 255 (``BINARY_FOREGROUND``) when it is the file's only value besides 0 and the
        ignore value and not a class of the map (it is then read as the map's foreground
        class); None otherwise.
    """
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

    Never raises for the data: problems are collected in ``errors`` (one sentence each, naming
    the file); the rules are the module docstring's.

    Args:
        files: ``[(name, distinct values), ...]`` (``distinct_values`` of each map).
        declared: A declared map or None.
        ignore_label: A configured ignore value (when None, a declared map's own is used).
        where: What set-wide sentences name (the label folder).

    Returns:
        The decision: the map (None when there are ``errors``), how each file is read, and
        the notes, warnings and errors for the user.
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
        _read_as_declared(dec, sets, declared, ignore, where)
    else:
        _infer_from_values(dec, sets, ignore, where)
    return dec


def _read_as_declared(dec: MapDecision, sets: Mapping[str, set[int]], declared: LabelMap,
                      ignore: int | None, where: str) -> None:
    """Each file's values against a declared map: as declared, binary foreground, or an error."""
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
            f"{name}: label value(s) {format_values(sorted(extra))} are not among the declared "
            f"classes {format_values(list(declared.values))}; fix the label map or the class "
            "list (dataset.json 'labels' or data.classes)"
        )
    if dec.binary_files:
        dec.notes.append(_binary_note(where, dec.binary_files, declared.values[1]))
    if not dec.errors:
        dec.label_map = declared


def _infer_from_values(dec: MapDecision, sets: Mapping[str, set[int]], ignore: int | None,
                       where: str) -> None:
    """The map of the values seen: consecutive classes, 0/255 masks read per file."""
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
        return
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
        return
    dec.label_map = LabelMap.from_values(sorted(union), None, False, ignore)
    _explain_inferred(dec, sets, ign, where)


def _explain_inferred(dec: MapDecision, sets: Mapping[str, set[int]], ign: set[int],
                      where: str) -> None:
    """How each file is read under the inferred map, and a note or warning on the map."""
    lm = dec.label_map
    assert lm is not None
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
            f"{where}: class ids {format_values(list(lm.values), 16)} have gaps; they are read "
            f"as {lm.num_classes} consecutive classes {lm.describe()} (label value: class), the "
            "map is stored with the model and predictions are written with the original values "
            "(declare the classes in dataset.json 'labels' or data.classes if this is not meant)"
        )


def _short(names: Sequence[str], limit: int = 3) -> str:
    """File names (not paths), the first ``limit`` of them, for one line."""
    shown = [Path(n).name for n in sorted(names)[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


_DECLARE_255 = ("declare the classes (data.classes or dataset.json 'labels') or set "
                "data.ignore_label: 255")


def _conflict_255(dec: MapDecision, b255: Sequence[str], beside: Mapping[str, list[int]],
                  where: str) -> None:
    """255 is the only foreground of ``b255`` but a value of ``beside``: one error, one per file."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for name, vals in beside.items():
        groups.setdefault(tuple(vals), []).append(name)
    besides = "; ".join(f"beside {format_values(vals)} in {_short(names)}"
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
            f"{name}: 255 is a value beside {format_values(vals)} here, but the only foreground "
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
    """Decide the class map of a set (``infer_map``) with the declared map looked up.

    Args:
        files: ``[(name, distinct values), ...]``, as ``infer_map``.
        folder: The labelled folder whose dataset.json may declare the classes, or None.
        classes: The config's ``data.classes``, or None.
        ignore_label: The config's ``data.ignore_label``, or None.
        label_map: A model's map (``LabelMap.from_meta``); it wins over every other
            declaration, then ``classes``, then ``folder``'s dataset.json.
        where: What set-wide sentences name.

    Returns:
        ``infer_map``'s decision.

    Raises:
        TskdInputError: Only for an invalid declaration (config or dataset.json).
    """
    declared = label_map or resolve_declared(folder, classes, ignore_label)
    return infer_map(files, declared, ignore_label, where)


def encode_file(label: np.ndarray, name: str, decision: MapDecision) -> np.ndarray:
    """Encode one label map as class indices under a decided map.

    The file's binary foreground (``decision.binary_files[name]``) is applied first.

    Args:
        label: the label map's values, any shape and integer dtype.
        name: the file's name, as in the ``files`` the decision was made from.
        decision: ``infer_map``'s or ``resolve_map``'s decision.

    Returns:
        int64 class indices of the same shape, ignored pixels ``IGNORE_INDEX``.

    Raises:
        TskdInputError: The decision has no map (its first error), or a value is not a class.
    """
    lm = decision.label_map
    if lm is None:
        decision.raise_first()
        raise TskdInputError(f"{name}: no class map was decided")
    v = decision.binary_files.get(name)
    if v is not None:
        label = np.where(np.asarray(label) == v, lm.values[1], label)
    return lm.encode(label, name)
