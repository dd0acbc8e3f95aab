"""A run folder's manifest file: its name, its format and its entries, read and written.

``<run>/.tskd-manifest.json`` lists every file the run wrote (path relative to the run folder
-> ``{"size": bytes, "sha256": hex digest}``; manifests of earlier versions hold the size
alone) and the writers in progress (``pending``). It is read as untrusted input (entries naming a
path outside the run folder or a bookkeeping file are dropped) and replaced atomically. What a
run folder owns and how writers record their files is ``tskd.pipeline.manifest``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = ".tskd-manifest.json"
LOCK_NAME = ".tskd.lock"  # the run lock's files (tskd.pipeline.lock), never listed
LOCK_INFO_NAME = ".tskd.lock.json"
_MANIFEST_FORMAT = "tskd-run-manifest"
# the run folder's own files: never listed, never a user's file
BOOKKEEPING_NAMES = frozenset({MANIFEST_NAME, MANIFEST_NAME + ".tmp", LOCK_NAME, LOCK_INFO_NAME})


def empty_manifest() -> dict[str, Any]:
    """Return a new manifest that lists no file and no writer in progress."""
    return {"format": _MANIFEST_FORMAT, "version": 2, "files": {}, "pending": {}}


def _sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """Describe a file tskd wrote, as the manifest records it.

    Args:
        path: an existing file.

    Returns:
        ``{"size": bytes, "sha256": 64 hex digits}``.

    Raises:
        OSError: the file cannot be read.
    """
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def content_changed(path: Path, entry: Any) -> bool:
    """Tell whether ``path`` no longer holds what its manifest ``entry`` says.

    Args:
        path: an existing file.
        entry: its manifest entry: ``{"size": bytes, "sha256": hex}`` or, from earlier
            versions, the size alone.

    Returns:
        True for another size or another sha256 (when recorded), and for an entry without a
        size; False when the file is as tskd wrote it.
    """
    size = entry.get("size") if isinstance(entry, dict) else entry
    if not isinstance(size, int) or path.stat().st_size != size:
        return True
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    return isinstance(sha, str) and _sha256(path) != sha


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """Read the manifest of a run folder.

    Args:
        root: the run folder.

    Returns:
        ``{"files": {relative path: entry}, "pending": {writer: state}, ...}``: entries as
        ``file_entry`` (or, from earlier versions, the size in bytes); entries naming a path
        outside ``root`` or a bookkeeping file are dropped. None when there is no manifest or
        it cannot be read (the folder is then judged without it).
    """
    path = Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (not isinstance(data, dict) or data.get("format") != _MANIFEST_FORMAT
            or not isinstance(data.get("files"), dict)):
        return None
    if not isinstance(data.get("pending"), dict):
        data["pending"] = {}
    data["files"] = {r: s for r, s in data["files"].items() if safe_rel(r)}
    return data


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    """Replace the manifest of ``root`` atomically (temporary file, fsync, rename).

    Args:
        root: the run folder (it exists).
        data: the whole manifest (``read_manifest``'s form).

    Raises:
        OSError: the manifest cannot be written.
    """
    tmp = root / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MANIFEST_NAME)


def safe_rel(rel: Any) -> bool:
    """Tell whether a manifest entry names a path inside the run folder.

    Args:
        rel: an entry's key, as read from the file (any JSON value).

    Returns:
        False for a non-string, an empty, absolute or ``..`` path, or a bookkeeping file.
    """
    if not isinstance(rel, str) or not rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts[0] not in BOOKKEEPING_NAMES


