"""A model folder's ``meta.json`` read as untrusted input, before any key is interpreted.

``read_meta_file`` refuses a file above ``MAX_META_BYTES`` before reading it, text that is not
UTF-8 JSON (a byte-order mark is allowed), nesting deeper than Python's parser handles, and
anything but a JSON object, each with one ``ModelMetaError`` naming the file. What the keys
must hold is ``tskd.models.meta_schema``'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tskd.errors import ModelMetaError

MAX_META_BYTES = 1 << 20  # a real meta.json is a few KB (history included)


def json_type(value: Any) -> str:
    """Name a parsed JSON value's type for a message.

    Args:
        value: a value ``json.loads`` returned.

    Returns:
        "object", "list", "string", "number", "boolean" or "null" (else the Python type's name).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


def read_meta_file(path: str | Path) -> dict[str, Any]:
    """Parse a model folder's ``meta.json``, refused unread when over ``MAX_META_BYTES``.

    Args:
        path: the ``meta.json`` file.

    Returns:
        Its JSON object as a dict, not yet validated (``tskd.models.meta_schema``).

    Raises:
        ModelMetaError: A missing, empty, oversized, unreadable, non-UTF-8, invalid, too deeply
            nested or non-object file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelMetaError(f"no {path.name} in {path.parent}: not a tskd model folder")
    size = path.stat().st_size
    if size == 0:
        raise ModelMetaError(f"model metadata {path} is empty; restore the folder's meta.json")
    if size > MAX_META_BYTES:
        raise ModelMetaError(
            f"model description {path} is {size / 2**20:.1f} MB, larger than the "
            f"{MAX_META_BYTES // 2**20} MB a tskd meta.json can be; it was not read"
        )
    try:
        meta = json.loads(path.read_bytes().decode("utf-8-sig"))  # a BOM is harmless
    except RecursionError:
        raise ModelMetaError(
            f"model metadata {path} is nested too deeply to be valid JSON"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise ModelMetaError(f"model metadata {path} is not valid JSON (UTF-8)") from None
    except OSError as exc:
        raise ModelMetaError(f"model metadata {path} cannot be read ({exc.strerror})") from None
    if not isinstance(meta, dict):
        raise ModelMetaError(
            f"{path} is not a tskd model description (kind student/teacher): it holds a JSON "
            f"{json_type(meta)}, not an object"
        )
    return meta
