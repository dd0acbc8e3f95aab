"""Writing files so that a crash, a kill or a full disk never leaves a half-written artefact.

Every file the project writes goes through this module. Content is first written in full to a
temporary file beside the target (``.<name>.tmp-<pid>-<random>``), flushed to disk (fsync), and
only then renamed over the target in one step (``os.replace``), so the target holds either its
old bytes or the new ones, never a mix. ``write_files`` writes a whole set of files (a model's
weights and its ``meta.json``) the same way: every temporary file is complete before the first
rename, so a full disk leaves all previous files as they were.

Operating-system errors a user can fix become one-line ``TskdError``s naming the folder:

- ``ENOSPC``/``EDQUOT`` (disk or quota full): ``DiskFullError`` "no space left on <folder>, N MB
  needed; ..." where N is the size of what was being written (rounded up to whole MB);
- ``EACCES``/``EPERM``/``EROFS``: "cannot write to <folder> (...)".

Leftover temporary files of a killed writer (same target name, process no longer running) are
removed the next time that target is written (``tskd.temp_files``).

``load_weights_only`` is the one way PyTorch files are read back (checkpoints of the engine and of
SAM): ``torch.load(weights_only=True)``, so nothing in a file can run code.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from tskd.errors import CheckpointError, DiskFullError, TskdError
from tskd.temp_files import fsync_dir, remove_stale_temps, temp_name

# False on a process that is not the main one of a multi-process job (``tskd.distributed``):
# its writes are left to the main process, except its own files (``own_files``)
_WRITER = {"main": True, "own": 0}


def set_writer(main: bool) -> None:
    """Whether this process writes through this module (``tskd.distributed.follow_main``).

    Args:
        main: True (every process's default) to write; False: the writers write nothing.
    """
    _WRITER["main"] = bool(main)


@contextmanager
def own_files() -> Iterator[None]:
    """Write in the body even on a process that is not the writer (its own shard of a cache)."""
    _WRITER["own"] += 1
    try:
        yield
    finally:
        _WRITER["own"] -= 1


def writes_files() -> bool:
    """Whether the writers write here (``set_writer``, ``own_files``); True in one process."""
    return _WRITER["main"] or _WRITER["own"] > 0


_FULL = {errno.ENOSPC} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def megabytes(nbytes: int) -> int:
    """Convert a size to whole megabytes for "N MB needed" messages.

    Args:
        nbytes: a size in bytes, >= 0.

    Returns:
        ``nbytes`` in MB (10**6 bytes), rounded up, at least 1.
    """
    return max(1, math.ceil(nbytes / 1e6))


def user_fixable_error(exc: OSError, folder: str | Path, nbytes: int | None) -> TskdError | None:
    """Build the one-line ``TskdError`` for an OS error a user can fix (returned, not raised).

    Args:
        exc: the operating-system error caught while writing.
        folder: the folder named in the message (where the write went).
        nbytes: size in bytes of what was being written, for the "N MB needed" of a full disk
            (``megabytes``); None when not known (the message then says no amount).

    Returns:
        ``DiskFullError`` for ``ENOSPC``/``EDQUOT``, ``TskdError`` for ``EACCES``/``EPERM``/
        ``EROFS``, None for any other error (the caller re-raises it: no user can fix it).
    """
    if exc.errno in _FULL:
        needed = f", {megabytes(nbytes)} MB needed" if nbytes is not None else ""
        return DiskFullError(
            f"no space left on {folder}{needed}; free some space there (or choose another "
            "folder) and run again, the previous files were kept"
        )
    if exc.errno in _DENIED:
        reason = exc.strerror or "permission denied"
        return TskdError(
            f"cannot write to {folder} ({reason.lower()}); choose a folder you can write to"
        )
    return None


@contextmanager
def disk_errors(folder: str | Path, nbytes: int | None = None) -> Iterator[None]:
    """Turn a full disk or a refused write inside the block into a one-line ``TskdError``.

    For writers that cannot write through this module (e.g. a plotting library saving a figure).

    Args:
        folder: the folder the block writes into, named in the message.
        nbytes: size in bytes of what the block writes, when known (``user_fixable_error``).

    Yields:
        None; other ``OSError``s of the body pass unchanged.

    Raises:
        DiskFullError: the body hit a full disk or quota (``ENOSPC``/``EDQUOT``).
        TskdError: the body's write was refused (``EACCES``/``EPERM``/``EROFS``).
    """
    try:
        yield
    except OSError as exc:
        err = user_fixable_error(exc, folder, nbytes)
        if err is None:
            raise
        raise err from None


def mkdir(folder: str | Path) -> Path:
    """Create ``folder`` and its parents (``mkdir(parents=True, exist_ok=True)``).

    Args:
        folder: the folder to create; an existing folder is fine.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        DiskFullError: the disk or quota is full.
        TskdError: the folder cannot be created there (permission, read-only file system).
    """
    folder = Path(folder)
    with disk_errors(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


# ------------------------------------------------------------------------------ low level
def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to ``fd`` (the one place bytes reach the disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_file(path: Path, data: bytes | memoryview) -> None:
    """Create ``path`` (must not exist), write ``data`` and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ writers
def write_files(files: Mapping[str | Path, bytes]) -> list[Path]:
    """Write several files as one unit: all temporary files in full, then all renames.

    A full disk or refused write raises before any target is touched, so every target keeps
    its old bytes. Missing parent folders are created.

    Args:
        files: {target path: its complete new content}.

    Returns:
        The target paths, in the order given (empty for no files); on a process that does not
        write (``set_writer``), nothing is written.

    Raises:
        DiskFullError: the disk or quota is full; the message names the first target's folder
            and the total size of ``files`` in MB. Other ``OSError``s pass unchanged.
        TskdError: writing there is refused (permission, read-only file system).
    """
    targets = {Path(p): data for p, data in files.items()}
    if not targets or not writes_files():  # another rank of the job writes them
        return list(targets)
    total = sum(len(d) for d in targets.values())
    folder = next(iter(targets)).parent
    temps: dict[Path, Path] = {}
    try:
        for path, data in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path)
            tmp = temp_name(path)
            temps[path] = tmp
            _write_file(tmp, data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
        for parent in {p.parent for p in targets}:
            fsync_dir(parent)
    except OSError as exc:
        err = user_fixable_error(exc, folder, total)
        if err is None:
            raise
        raise err from None
    finally:
        for tmp in temps.values():
            if tmp.exists():
                tmp.unlink(missing_ok=True)
    return list(targets)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring); return ``path``.

    Args:
        path: the target file.
        data: its complete new content.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DiskFullError: the disk or quota is full (the old bytes are kept).
        TskdError: writing there is refused.
    """
    return write_files({Path(path): data})[0]


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with UTF-8 ``text`` atomically; return ``path``.

    Args:
        path: the target file.
        text: its complete new content.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DiskFullError: the disk or quota is full (the old bytes are kept).
        TskdError: writing there is refused.
    """
    return write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any, indent: int | None = 1) -> bytes:
    """Encode ``obj`` as UTF-8 JSON (``json.dumps``), ready for an atomic write.

    Args:
        obj: JSON-able data; objects JSON does not know (paths, numpy integers) are written as
            ``str(obj)``.
        indent: spaces per nesting level; None writes one line.

    Returns:
        The UTF-8 bytes.
    """
    return json.dumps(obj, indent=indent, default=str).encode("utf-8")


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Replace ``path`` with ``obj`` as JSON atomically (``json_bytes``); return ``path``.

    Args:
        path: the target file.
        obj: JSON-able data (unknown objects become ``str(obj)``).
        indent: spaces per nesting level; None for one line.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DiskFullError: the disk or quota is full (the old bytes are kept).
        TskdError: writing there is refused.
    """
    return write_bytes(path, json_bytes(obj, indent))


def encode(writer: Callable[[BinaryIO], Any]) -> bytes:
    """Collect in memory what a library writes into a file object, for an atomic write.

    Args:
        writer: called once with a binary file object (``io.BytesIO``), e.g.
            ``lambda f: np.save(f, a)``.

    Returns:
        Every byte ``writer`` wrote. Its exceptions propagate.
    """
    buf = io.BytesIO()
    writer(buf)
    return buf.getvalue()


def safetensors_bytes(
    tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> bytes:
    """A safetensors file's bytes (``safetensors.torch.save``).

    Args:
        tensors: {name: contiguous CPU ``torch.Tensor``}, any dtype and shape.
        metadata: optional {key: value} strings for the file's header.

    Returns:
        The file's bytes, ready for an atomic write.

    Raises:
        ValueError: a value is not a tensor, or is sparse (from ``safetensors``).
        RuntimeError: tensors share memory (from ``safetensors``).
    """
    from safetensors.torch import save

    return save(dict(tensors), metadata=dict(metadata) if metadata else None)


def save_safetensors(
    path: str | Path, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Replace ``path`` with a safetensors file of ``tensors`` atomically; return ``path``.

    Args:
        path: the target ``.safetensors`` file.
        tensors: {name: contiguous CPU ``torch.Tensor``}.
        metadata: optional {key: value} strings for the file's header.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        DiskFullError: the disk or quota is full (the old bytes are kept).
        TskdError: writing there is refused.
    """
    return write_bytes(path, safetensors_bytes(tensors, metadata))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` as bytes.

    Args:
        obj: what ``torch.save`` accepts (a state dict, a checkpoint dict of tensors).

    Returns:
        The bytes of the PyTorch file, ready for an atomic write.
    """
    import torch

    return encode(lambda f: torch.save(obj, f))


def load_weights_only(path: str | Path, what: str = "checkpoint",
                      data: bytes | None = None) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, with errors a user can act on.

    Nothing in the file is executed: torch's restricted unpickler refuses any Python object
    other than tensors and plain containers.

    Args:
        path: the file; when ``data`` is given it only names the file in messages.
        what: what the file is, for messages (e.g. "checkpoint", "training checkpoint").
        data: the file's bytes already read (and verified) by the caller, or None.

    Returns:
        The loaded object (CPU tensors in plain containers, e.g. a state dict).

    Raises:
        CheckpointError: one sentence naming ``what`` and ``path``, for a file that holds
            other objects (a pickle that would run code, or a whole pickled model), and for
            any file that cannot be read as a PyTorch file (truncated, corrupt, missing).
    """
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols
            source = path if data is None else io.BytesIO(data)
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]{1,80})", str(exc))
        named = f" (it refers to {found.group(1)})" if found else ""
        raise CheckpointError(
            f"{what} {path} holds Python objects other than tensors{named}, and such a file is "
            "not loaded because unpickling it could run code; use a file that holds only "
            "weights, such as an official SAM checkpoint or a .safetensors file"
        ) from None
    except Exception:  # zip/pickle framing errors, EOF: the bytes are not a complete file
        raise CheckpointError(
            f"cannot read {what} {path}: it is truncated, corrupt or not a PyTorch weights file"
        ) from None
