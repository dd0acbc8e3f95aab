"""One writer at a time: the operating-system lock of a run folder.

Every writer holds the folder's lock (``run_lock``: one writer at a time, freed when its process
dies, however it dies); ``.tskd.lock.json`` names the holder while it is held, so a second
writer is refused with a sentence naming the process that holds the folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tskd.errors import RunFolderError
from tskd.pipeline.manifest import folder_kind, foreign_error
from tskd.pipeline.manifest_file import LOCK_INFO_NAME, LOCK_NAME

_HELD: dict[str, list[Any]] = {}  # resolved run folder -> [FileLock, depth] held by this process


def _holder(root: Path) -> str:
    try:
        info = json.loads((root / LOCK_INFO_NAME).read_text())
        return (f"process {info['pid']} on {info['host']}, started {info['started']}: "
                f"{info['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said which yet"


@contextmanager
def run_lock(root: str | Path, what: str = "", allow_foreign: bool = False) -> Iterator[Path]:
    """Hold the operating-system lock of run folder ``root`` (``root/.tskd.lock``) for the body.

    The lock (``filelock``, an ``flock`` on Unix) is released when the body ends or when the
    process dies, however it dies. Re-entrant within one process; the other ranks of a
    multi-process job leave it to the main one. ``root/.tskd.lock.json`` names the holder
    (pid, host, command, start time) while held. A missing folder is created; a held lock is
    refused at once (timeout 0).

    Args:
        root: the run folder.
        what: what the holder does (e.g. "stage teacher"), recorded in the lock file.
        allow_foreign: accept a folder holding other files (the demo's output folder).

    Yields:
        ``root`` as a ``Path``, while the lock is held.

    Raises:
        RunFolderError: another process holds the lock (named), or ``root`` is a file or
            (unless ``allow_foreign``) holds files not a run's (nothing is created then).
    """
    from filelock import FileLock, Timeout

    from tskd.distributed import following
    root = Path(root)
    key = str(root.resolve())
    held = _HELD.get(key) or ([None, 0] if following() else None)  # main holds it for a job
    if held is not None:
        held[1] += 1
        try:
            yield root
        finally:
            held[1] -= 1
        return
    if not allow_foreign and folder_kind(root) == "foreign":
        raise foreign_error(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunFolderError(
            f"run folder {root} is in use by another tskd process ({_holder(root)}); wait for "
            "it to finish or stop it, then try again."
        ) from None
    _HELD[key] = [lock, 1]
    info = root / LOCK_INFO_NAME
    try:
        info.write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300] if sys.argv
            else "python",
            "what": what, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }))
        yield root
    finally:
        _HELD.pop(key, None)
        info.unlink(missing_ok=True)
        lock.release()

