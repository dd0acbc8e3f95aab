"""What a run folder owns: the manifest, and the kind of folder a path is.

``<run>/.tskd-manifest.json`` lists every file the run wrote (path relative to the run folder
-> {"size": bytes, "sha256": hex digest}; manifests of earlier versions hold the size alone).
Only listed files whose content is still what tskd wrote are ever removed (``remove_owned``,
for ``--overwrite``); anything else in a run folder (the user's notes, a copied dataset, files
of earlier versions, a listed file the user edited) is kept. Writers wrap their work in
``tracked``: before it starts, the files already present in the outputs it names are noted
("pending"); when it ends (or, after a kill, when the next writer takes the folder), every file
there that is new or changed is recorded. The manifest is replaced atomically. A folder of
other files is never written into (``claim_run_folder``). The file itself (its name, entries,
reading and writing) is ``tskd.pipeline.manifest_file``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tskd.errors import RunFolderError
from tskd.pipeline.manifest_file import (
    BOOKKEEPING_NAMES,
    MANIFEST_NAME,
    content_changed,
    empty_manifest,
    file_entry,
    read_manifest,
    safe_rel,
    write_manifest,
)

FolderKind = Literal["new", "run", "legacy", "foreign"]


def _inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _files_under(root: Path, rels: Iterable[str]) -> Iterator[Path]:
    """Files at or below the given relative paths (files or folders) of ``root``."""
    for rel in rels:
        p = root / rel
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from (f for f in sorted(p.rglob("*")) if f.is_file())


def _rel_of(root: Path, path: str | Path) -> str:
    """``path`` (joined to ``root``, or relative to it) as a manifest entry."""
    path = Path(path)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        pass
    if not path.is_absolute():
        return path.as_posix()
    return path.resolve().relative_to(root.resolve()).as_posix()


def _stat(path: Path) -> list[int]:
    """Size, mtime and inode: a file renamed over changes the inode even within one clock tick."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _same_stat(a: Any, b: list[int]) -> bool:
    """``a`` (a ``_stat`` recorded earlier, by this or an earlier version) equals ``b``."""
    return isinstance(a, list) and len(a) >= 2 and a == b[:len(a)]


def _user_files(root: Path) -> Iterator[Path]:
    """Files of ``root`` (recursively) except the run folder's own bookkeeping files."""
    for p in sorted(root.iterdir()):
        if p.name in BOOKKEEPING_NAMES:
            continue
        if p.is_dir() and not p.is_symlink():
            yield from (f for f in sorted(p.rglob("*")) if not f.is_dir())
        else:
            yield p


def _legacy_stage_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "stage.json").is_file())


def folder_kind(root: str | Path) -> FolderKind:
    """Tell what kind of folder ``root`` is, before tskd writes into it.

    Args:
        root: a would-be run folder.

    Returns:
        ``new``: absent or without files; ``run``: has a manifest; ``legacy``: a run of an
        earlier version (no manifest, but ``*/stage.json``); ``foreign``: files that are not a
        run.

    Raises:
        RunFolderError: ``root`` is a file.
    """
    root = Path(root)
    if not root.exists():
        return "new"
    if not root.is_dir():
        raise RunFolderError(f"run folder {root} is a file; choose a folder")
    if read_manifest(root) is not None:
        return "run"
    if _legacy_stage_folders(root):
        return "legacy"
    if next(_user_files(root), None) is None:
        return "new"
    return "foreign"


def foreign_error(root: Path) -> RunFolderError:
    """Build (not raise) the error for a folder of other files (``folder_kind`` "foreign").

    Args:
        root: the folder.

    Returns:
        A ``RunFolderError`` whose sentence names one of its files, and a ``config.yaml`` tskd
        did not write.
    """
    example = next(_user_files(root), root)
    hint = ""
    if (root / "config.yaml").is_file():
        hint = " (its config.yaml was not written by tskd: keep your own configuration outside " \
               "the run folder)"
    return RunFolderError(
        f"{root} is not empty and is not a tskd run folder (no {MANIFEST_NAME} or stage.json; it "
        f"holds e.g. {example.relative_to(root) if example != root else root}){hint}, and tskd "
        "never writes into or deletes from a folder of other files, so choose a new or empty "
        "run folder."
    )


def claim_run_folder(root: str | Path) -> dict[str, Any]:
    """Make ``root`` a run folder tskd may write into and return its manifest.

    A new folder gets an empty manifest. A run of an earlier version (``legacy``: no manifest,
    ``*/stage.json``) is adopted: the manifest lists ``config.yaml`` and the files of the stage
    folders that hold a ``stage.json``, and nothing else in it is ever removed (its checkpoints,
    cache and reports are kept). Work a killed writer left "pending" is recorded. Call it while
    holding ``run_lock``.

    Args:
        root: the run folder; created when missing.

    Returns:
        The folder's manifest (``read_manifest``).

    Raises:
        RunFolderError: ``root`` holds files that are not a run's, or is a file.
    """
    root = Path(root)
    kind = folder_kind(root)
    if kind == "foreign":
        raise foreign_error(root)
    root.mkdir(parents=True, exist_ok=True)
    if kind == "new":
        manifest = empty_manifest()
        write_manifest(root, manifest)
        return manifest
    if kind == "legacy":
        manifest = empty_manifest() | {"adopted_legacy_run": True}
        owned = [p for d in _legacy_stage_folders(root) for p in sorted(d.rglob("*"))
                 if p.is_file()]
        if (root / "config.yaml").is_file():
            owned.append(root / "config.yaml")
        manifest["files"] = {p.relative_to(root).as_posix(): file_entry(p) for p in owned}
        write_manifest(root, manifest)
        return manifest
    for key in list((read_manifest(root) or {}).get("pending", {})):
        if (str(root.resolve()), key) not in _ACTIVE:  # not one of this process's writers
            _commit(root, key)  # a writer that was killed: what it wrote is the run's
    return read_manifest(root) or empty_manifest()


def record_files(root: str | Path, paths: Iterable[str | Path]) -> None:
    """Add files (or every file under folders) inside ``root`` to its manifest.

    Args:
        root: the run folder.
        paths: files or folders, absolute or relative to ``root``; missing ones are skipped.
            Each file's size (bytes) and sha256 are recorded.

    Raises:
        ValueError: an absolute path lies outside ``root``.
    """
    root = Path(root)
    manifest = read_manifest(root) or empty_manifest()
    rels = [_rel_of(root, p) for p in paths]
    for f in _files_under(root, rels):
        rel = f.relative_to(root).as_posix()
        manifest["files"][rel] = file_entry(f)
    write_manifest(root, manifest)


def forget(root: str | Path, rels: Iterable[str]) -> None:
    """Drop paths from the manifest of ``root``, leaving the files on disk.

    They are no longer the run's, so no ``remove_owned`` ever removes them.

    Args:
        root: the run folder.
        rels: paths relative to ``root``, as the manifest lists them; unlisted ones are skipped.

    Raises:
        OSError: the manifest cannot be written.
    """
    root = Path(root)
    manifest = read_manifest(root) or empty_manifest()
    for rel in rels:
        manifest["files"].pop(rel, None)
    write_manifest(root, manifest)


def owned_files(root: str | Path) -> set[str]:
    """List the files the run in ``root`` owns.

    Args:
        root: the run folder.

    Returns:
        Paths relative to ``root`` that its manifest lists; empty without a manifest.
    """
    return set((read_manifest(root) or {}).get("files", {}))


_ACTIVE: set[tuple[str, str]] = set()  # (resolved run folder, key) tracked by this process


@contextmanager
def tracked(root: str | Path, key: str, outputs: Iterable[str | Path]) -> Iterator[None]:
    """Record in the manifest of ``root`` every file the body writes under ``outputs``.

    New files, and files that existed but changed, are recorded. Files already there and
    left unchanged stay unlisted (they are not the run's); listed files the body leaves
    unchanged keep their entries (a file the user edited is not claimed again). Runs even when
    the body raises; after a kill, the next ``claim_run_folder`` records what was written.

    Args:
        root: the run folder, already claimed (``claim_run_folder``).
        key: names the writer in the manifest's ``pending`` (e.g. a stage's name).
        outputs: files or folders inside ``root`` (absolute or relative) the body writes.

    Yields:
        None; the body runs inside the context.
    """
    root = Path(root)
    manifest = read_manifest(root) or empty_manifest()
    rels = sorted({_rel_of(root, p) for p in outputs})
    before: dict[str, list[int]] = {}
    owned_before: dict[str, list[int]] = {}
    for f in _files_under(root, rels):
        rel = f.relative_to(root).as_posix()
        (owned_before if rel in manifest["files"] else before)[rel] = _stat(f)
    manifest["pending"][key] = {"outputs": rels, "unowned_before": before,
                                "owned_before": owned_before}
    write_manifest(root, manifest)
    active = (str(root.resolve()), key)
    _ACTIVE.add(active)
    try:
        yield
    finally:
        _ACTIVE.discard(active)
        _commit(root, key)


def _commit(root: Path, key: str) -> None:
    manifest = read_manifest(root) or empty_manifest()
    entry = manifest["pending"].pop(key, None)
    if isinstance(entry, dict):
        before = entry.get("unowned_before") or {}
        owned_before = entry.get("owned_before")
        rels = [r for r in entry.get("outputs", []) if safe_rel(r)]
        for f in _files_under(root, rels):
            rel = f.relative_to(root).as_posix()
            if rel in manifest["files"]:
                untouched = (isinstance(owned_before, dict) and rel in owned_before
                             and _same_stat(owned_before[rel], _stat(f)))
                if not untouched:  # rewritten by the writer
                    manifest["files"][rel] = file_entry(f)
            elif rel not in before or not _same_stat(before[rel], _stat(f)):
                manifest["files"][rel] = file_entry(f)
    manifest["files"] = {r: s for r, s in manifest["files"].items() if (root / r).is_file()}
    write_manifest(root, manifest)


def remove_owned(root: str | Path, under: str | None = None,
                 keep: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
    """Delete the files the manifest of ``root`` lists, then the folders this left empty.

    A listed file whose content differs from what tskd recorded (its size or, where recorded,
    its sha256) was changed by someone else and is kept. Nothing outside ``root`` is ever
    touched; without a manifest nothing is removed.

    Args:
        root: the run folder.
        under: a folder relative to ``root`` (e.g. ``"data"``): only files at or below it go;
            None for all.
        keep: relative paths never removed (e.g. ``("config.yaml",)``).

    Returns:
        ``(removed, kept_changed)``: the paths deleted, and the changed files kept.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if manifest is None:
        return [], []
    keep = set(keep)
    removed: list[Path] = []
    changed: list[Path] = []
    parents: set[Path] = set()
    for rel, recorded in sorted(manifest["files"].items()):
        if rel in keep or (under and rel != under and not rel.startswith(under.rstrip("/") + "/")):
            continue
        path = root / rel
        if not path.is_file() or not _inside(root, path.parent):
            del manifest["files"][rel]
            continue
        if content_changed(path, recorded):
            changed.append(path)
            continue
        path.unlink()
        del manifest["files"][rel]
        removed.append(path)
        parents.add(path.parent)
    for folder in sorted(parents, key=lambda d: len(d.parts), reverse=True):
        while folder != root and _inside(root, folder) and folder.is_dir() and not any(
                folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    write_manifest(root, manifest)
    return removed, changed

