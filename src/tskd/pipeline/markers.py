"""A stage's record in the run folder: its fingerprint, ``stage.json`` and checkpoint inputs.

Each stage writes its artefact into a sub-folder together with ``stage.json``: the fingerprint
of everything the artefact depends on (its config section, the upstream fingerprints, the
input files; ``fingerprint``, ``files_fingerprint``) and the stage's result. A stage whose
recorded fingerprint matches is skipped (``stage_done``); one whose inputs changed runs again.
The marker is withdrawn before a stage rewrites its artefact (``mark_started``) and written
after (``mark_done``), and a stage's checkpoint records the fingerprint it was made from
(``checkpoint_inputs``), so a resume never continues another run's training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tskd import atomic
from tskd.errors import RunFolderError

MARKER = "stage.json"


def fingerprint(*parts: Any) -> str:
    """Hash JSON-able ``parts`` (config sections, fingerprints, file hashes) to 16 hex digits.

    The sha256 of their JSON with sorted keys, unknown objects as ``str(obj)``: equal parts
    give equal fingerprints in every process and run.

    Args:
        *parts: what the artefact depends on, in a fixed order (dicts, strings, numbers).

    Returns:
        The first 16 hex digits of the sha256.
    """
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash the files' names and contents (in any order) to 16 hex digits (sha256).

    A changed or added image re-runs dependent stages.

    Args:
        paths: the files; their order does not matter (they are sorted by path).

    Returns:
        The first 16 hex digits of the sha256 over each file's name and content hash.

    Raises:
        OSError: a file cannot be read.
    """
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def stage_done(folder: Path, fp: str) -> bool:
    """Tell whether the stage of ``folder`` finished from the inputs ``fp``.

    Args:
        folder: the stage's artefact folder (``RunPaths.teacher``, ...).
        fp: the fingerprint of the stage's inputs now (16 hex digits).

    Returns:
        Whether ``folder/stage.json`` records ``fp``; False when it is missing or not JSON.
    """
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False


def mark_started(folder: Path) -> None:
    """Withdraw the stage's ``folder/stage.json`` (if any) before it rewrites its artefact.

    A stage killed after writing new weights but before ``mark_done`` must not leave the old
    marker beside them: going back to the old inputs would then skip the stage and keep the
    new weights. With the marker gone the stage simply runs again.

    Args:
        folder: the stage's artefact folder; a missing marker is fine.
    """
    (folder / MARKER).unlink(missing_ok=True)


def checkpoint_inputs(folder: Path, fp: str, resume: bool,
                      batches: dict[str, list[int]] | None = None) -> Path:
    """Record ``fp`` beside a stage's checkpoint (``inputs.json``) and return ``folder``.

    ``resume`` refuses a checkpoint recorded for other inputs (other labelled data, another
    teacher or other settings), which would otherwise continue training on what the user no
    longer asks for.

    Args:
        folder: the stage's checkpoint folder (``RunPaths.checkpoints``).
        fp: the fingerprint of the stage's inputs (16 hex digits).
        resume: the run continues from the checkpoint.
        batches: how each stage's global batch is split in this job
            (``tskd.pipeline.batches.stage_batches``), recorded so a refusal names the one
            that changed; None records none.

    Returns:
        ``folder``, holding ``inputs.json`` with ``fp`` (and ``batches``).

    Raises:
        RunFolderError: ``resume``, the folder holds a checkpoint (``ckpt*``) and its
            ``inputs.json`` records another fingerprint (or cannot be read); the message
            names the stage whose global batch changed when that is the difference.
        DiskFullError: the disk is full while ``inputs.json`` is written.
    """
    record = folder / "inputs.json"
    if resume and any(folder.glob("ckpt*")) and record.is_file():
        try:
            saved = json.loads(record.read_text())
            recorded, then = saved.get("fingerprint"), saved.get("batches")
        except (OSError, ValueError, AttributeError):
            recorded, then = None, None
        if recorded != fp:
            from tskd.pipeline.batches import batch_difference

            changed = batch_difference(then, batches or {})
            if changed is not None:
                raise RunFolderError(
                    f"cannot resume the checkpoint in {folder}: {changed}; every stage's global "
                    "batch (batch_size x grad_accum_steps x processes) must stay the same, so "
                    "scale that stage's batch_size or grad_accum_steps, or run again without "
                    "--resume to start over")
            raise RunFolderError(
                f"cannot resume: the checkpoint in {folder} was made from other inputs (data, "
                "teacher or settings changed since); run again without --resume to start over"
            )
    atomic.write_json(record, {"fingerprint": fp} | ({"batches": batches} if batches else {}))
    return folder


def mark_done(folder: Path, fp: str, result: dict[str, Any]) -> None:
    """Record in ``folder/stage.json`` that the stage finished from inputs ``fp``.

    Args:
        folder: the stage's artefact folder, its artefact already written.
        fp: the fingerprint of the stage's inputs (16 hex digits).
        result: the stage's JSON-able result (metrics, counts, ``seconds``).

    Raises:
        DiskFullError: the disk is full (the stage stays not done).
    """
    atomic.write_json(folder / MARKER, {"fingerprint": fp, "result": result})


def read_result(folder: Path) -> dict[str, Any]:
    """Read the result a finished stage recorded in ``folder/stage.json``.

    Args:
        folder: the stage's artefact folder.

    Returns:
        The recorded result; {} when there is no ``stage.json``.

    Raises:
        ValueError: ``stage.json`` is not JSON (``stage_done`` is False for such a folder, so
            the pipeline reads only markers it has checked).
    """
    marker = folder / MARKER
    if not marker.is_file():
        return {}
    return json.loads(marker.read_text()).get("result", {})
