"""Temporary files and folders of the project's writers: their names, owners and leftovers.

A writer (``tskd.atomic``, the checkpoint unit ``tskd.checkpoint``, the ONNX export) first
writes under a temporary name beside its target that holds its process id
(``.<name>.tmp-<pid>-<random>``), then renames. A writer that was killed leaves that name
behind; the next writer of the same target removes it once the process that owns it no longer
runs (``remove_stale_temps``; ``tskd.checkpoint`` does the same for its folders with
``owner_pid`` and ``pid_alive``). Only names of this form are ever removed: a user's file is
never touched. ``fsync_dir`` makes a rename durable.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TMP_MARK = ".tmp-"  # between a target's name and the owner's pid in a temporary name


def fsync_dir(folder: Path) -> None:
    """Make renames inside the directory ``folder`` durable (``fsync`` of the directory).

    A no-op where a directory cannot be opened or synced (Windows, some network file systems):
    the rename itself is still atomic there.

    Args:
        folder: the directory whose entries changed.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """Return a fresh temporary name beside ``path``, owned by this process.

    Args:
        path: the target the temporary file will be renamed to.

    Returns:
        ``path``'s folder / ``.<name>.tmp-<pid>-<8 hex digits>`` (4 random bytes from
        ``secrets``, so two writers in one process never share a name).
    """
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def pid_alive(pid: int) -> bool:
    """Tell whether process ``pid`` runs on this machine; True also when that cannot be told.

    On Windows ``os.kill(pid, 0)`` would end the process, and another user's process cannot be
    probed: both count as running, so their files are left alone.

    Args:
        pid: a process id, as found in a temporary name (``owner_pid``).

    Returns:
        False only when the process is known to be gone (``ProcessLookupError``).
    """
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume it runs
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot tell): leave its files
    return True


def owner_pid(name: str, prefix: str) -> int | None:
    """Read the owner's process id from a temporary name ``<prefix><pid>-<random>``.

    Args:
        name: a file or folder name (no directory part).
        prefix: what precedes the pid, e.g. ``.model.safetensors.tmp-`` or ``ckpt.tmp-``.

    Returns:
        The pid, or None when ``name`` is not a temporary name of that form (a user's file).
    """
    if not name.startswith(prefix):
        return None
    pid, _, rand = name[len(prefix):].partition("-")
    return int(pid) if pid.isdigit() and rand else None


def remove_stale_temps(path: Path) -> None:
    """Remove temporary files (``temp_name``) of ``path`` left by writers that no longer run.

    Files of running writers (``pid_alive``) and every other name are kept; a folder that
    cannot be listed is left as it is.

    Args:
        path: the target file whose leftovers are removed (it need not exist).
    """
    prefix = f".{path.name}{TMP_MARK}"
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        pid = owner_pid(entry.name, prefix)
        if pid is not None and pid != os.getpid() and not pid_alive(pid) and entry.is_file():
            entry.unlink(missing_ok=True)
