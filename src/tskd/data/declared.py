"""The class maps a user declares: the config's ``data.classes`` and nnU-Net's dataset.json.

A declared map is used as given (values with gaps kept, names as written): ``data.classes``
(``declared_from_config``) wins over the ``labels`` of the labelled folder's ``dataset.json``
(``declared_map``, in nnU-Net's v1 or v2 form; a label named ``ignore`` is the ignore value);
``resolve_declared`` applies that order. Without a declaration, the label policy infers the map
from the values the files hold (``tskd.data.label_policy``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tskd.data.label_map import MAX_CLASSES, MAX_LABEL_VALUE, LabelMap
from tskd.errors import TskdInputError


def _int_like(value: Any) -> int | None:
    """An int, or the digits of a string, as a label value; None for anything else (bools)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def declared_from_dataset_labels(labels: Any, where: str) -> tuple[dict[int, str], int | None]:
    """Read the classes and the ignore value of nnU-Net ``labels`` (v1 or v2 form).

    Args:
        labels: v2 ``{"background": 0, "liver": 1}`` or v1 ``{"0": "background", "1":
            "liver"}``; a label named ``"ignore"`` (v2 ``"ignore": 4``, v1 ``"4": "ignore"``) is
            the ignore value, not a class. Anything but a non-empty dict gives ``({}, None)``.
        where: What messages name (the dataset.json).

    Returns:
        ``({value: name}, ignore value or None)``; the first name of a value wins.

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
    """Read the nnU-Net ``dataset.json`` of ``folder``.

    Args:
        folder: The folder that may hold ``dataset.json``.

    Returns:
        Its JSON object as a dict; {} when there is no such file.

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
    """Read the class map declared by nnU-Net's ``dataset.json`` ``labels`` in ``folder``.

    Args:
        folder: The folder holding ``dataset.json``.
        ignore_label: The configured ignore value; wins over the dataset.json ``"ignore"`` label.

    Returns:
        The declared ``LabelMap`` (values with gaps kept as given), or None when there is no
        dataset.json or it declares no class.

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
    """Build the class map the config's ``data.classes`` declares.

    Args:
        classes: A list of names (value = position) or ``{value: name}``; None: no
            declaration.
        ignore_label: The configured ignore value (``data.ignore_label``).
        where: What messages name.

    Returns:
        The declared ``LabelMap``, or None when ``classes`` is None.

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
    """Find the declared map: ``data.classes`` first, else the folder's dataset.json.

    Args:
        folder: The labelled set's folder, or None (then only ``classes`` counts).
        classes: The config's ``data.classes`` (``declared_from_config``), or None.
        ignore_label: The config's ``data.ignore_label``, or None.

    Returns:
        The declared ``LabelMap``, or None when neither declares one.

    Raises:
        TskdInputError: An invalid declaration (``declared_from_config``, ``declared_map``).
    """
    lm = declared_from_config(classes, ignore_label)
    if lm is None and folder is not None:
        lm = declared_map(folder, ignore_label)
    return lm

