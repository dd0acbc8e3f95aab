"""The run folder: one truth shared by the CLI, the widgets and a resumed run.

Each stage writes its artefact into a sub-folder together with ``stage.json``, a fingerprint of
everything the artefact depends on (its config section, the upstream fingerprints, the input
files). A stage whose fingerprint matches is skipped; one whose inputs changed runs again.

Every writer holds the folder's operating-system lock (``run_lock``: one writer at a time, freed
when its process dies) and records what it writes in ``.tskd-manifest.json`` (``tracked``); only
the files listed there are ever removed (``remove_owned``), and a folder of other files is never
written into (``claim_run_folder``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tskd import atomic
from tskd.config import RunConfig, config_text, load_config, save_config, to_dict
from tskd.errors import RunFolderError, TskdWarning


@dataclass(frozen=True)
class RunPaths:
    """Where each stage keeps its files inside a run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def data_images(self) -> Path:
        """``data/images``: the images of the run's own labelled set (widget exports)."""
        return self.data / "images"

    @property
    def data_labels(self) -> Path:
        """``data/labels``: their label maps (file stems pair them with the images)."""
        return self.data / "labels"

    @property
    def corrections(self) -> Path:
        """``data/corrections.json``: {correction name: layer and slice it came from}."""
        return self.data / "corrections.json"

    @property
    def unlabelled(self) -> Path:
        """``unlabelled/``: unlabelled images the widgets export from Image layers."""
        return self.root / "unlabelled"

    @property
    def teacher(self) -> Path:
        return self.root / "teacher"

    @property
    def transfer(self) -> Path:
        return self.root / "transfer"

    @property
    def synthetic(self) -> Path:
        return self.root / "transfer" / "synthetic"

    @property
    def diffusion(self) -> Path:
        return self.root / "transfer" / "diffusion"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def distilled(self) -> Path:
        return self.root / "distilled"

    @property
    def student(self) -> Path:
        return self.root / "student"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def checkpoints(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (config sections, upstream fingerprints, file hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def files_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of file names and contents: a changed or added image re-runs dependent stages."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def stage_done(folder: Path, fp: str) -> bool:
    """True when ``folder`` holds a finished stage made from the same inputs."""
    marker = folder / "stage.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fp
    except json.JSONDecodeError:
        return False


def mark_started(folder: Path) -> None:
    """Withdraw the stage's ``stage.json`` before it rewrites its artefact.

    A stage killed after writing new weights but before ``mark_done`` must not leave the old
    marker beside them: going back to the old inputs would then skip the stage and keep the
    new weights. With the marker gone the stage simply runs again.
    """
    (folder / "stage.json").unlink(missing_ok=True)


def checkpoint_inputs(folder: Path, fp: str, resume: bool) -> Path:
    """The checkpoint folder of a stage whose inputs have fingerprint ``fp``.

    The fingerprint is recorded beside the checkpoint (``inputs.json``); ``resume`` refuses
    (``RunFolderError``) a checkpoint recorded for other inputs (other labelled data, another
    teacher or other settings), which would otherwise continue training on what the user no
    longer asks for. Returns ``folder``.
    """
    record = folder / "inputs.json"
    if resume and any(folder.glob("ckpt*")) and record.is_file():
        try:
            recorded = json.loads(record.read_text()).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != fp:
            raise RunFolderError(
                f"cannot resume: the checkpoint in {folder} was made from other inputs (data, "
                "teacher or settings changed since); run again without --resume to start over"
            )
    atomic.write_json(record, {"fingerprint": fp})
    return folder


def mark_done(folder: Path, fp: str, result: dict[str, Any]) -> None:
    """Record that the stage in ``folder`` finished, with its fingerprint and result."""
    atomic.write_json(folder / "stage.json", {"fingerprint": fp, "result": result})


def read_result(folder: Path) -> dict[str, Any]:
    """The result a finished stage recorded (empty if none)."""
    marker = folder / "stage.json"
    if not marker.is_file():
        return {}
    return json.loads(marker.read_text()).get("result", {})


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that define *which* run a folder holds.

    Budgets, devices and seeds may change between calls on the same run (continue, resume,
    retrain); the data and the model choices may not.
    """
    d = to_dict(cfg)
    return {
        "data": {k: d["data"][k] for k in ("labelled", "image_size")},
        "teacher": {k: d["teacher"][k] for k in ("model_type", "checkpoint")},
    }


# -- what a run owns: the manifest -------------------------------------------------------------
#
# ``<run>/.tskd-manifest.json`` lists every file the run wrote (path relative to the run folder
# -> {"size": bytes, "sha256": hex digest}; manifests of earlier versions hold
# the size alone). Only listed files whose content is still what tskd wrote are ever removed
# (``--overwrite``); anything else in a run folder (the user's notes, a copied dataset, files of
# earlier versions, a listed file the user edited) is kept. Writers wrap
# their work in ``tracked``: before it starts, the files already present in the outputs it names
# are noted ("pending"); when it ends (or, after a kill, when the next writer takes the folder),
# every file there that is new or changed is recorded. The manifest is replaced atomically.

MANIFEST_NAME = ".tskd-manifest.json"
LOCK_NAME = ".tskd.lock"
LOCK_INFO_NAME = ".tskd.lock.json"
_MANIFEST_FORMAT = "tskd-run-manifest"
_INTERNAL = frozenset({MANIFEST_NAME, MANIFEST_NAME + ".tmp", LOCK_NAME, LOCK_INFO_NAME})

FolderKind = Literal["new", "run", "legacy", "foreign"]


def _empty_manifest() -> dict[str, Any]:
    return {"format": _MANIFEST_FORMAT, "version": 2, "files": {}, "pending": {}}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _entry(path: Path) -> dict[str, Any]:
    """The manifest entry of a file tskd wrote: its size in bytes and its sha256."""
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def _content_changed(path: Path, entry: Any) -> bool:
    """Whether ``path`` no longer holds what tskd wrote: another size, or (when the entry has
    one; earlier versions recorded the size alone) another sha256."""
    size = entry.get("size") if isinstance(entry, dict) else entry
    if not isinstance(size, int) or path.stat().st_size != size:
        return True
    sha = entry.get("sha256") if isinstance(entry, dict) else None
    return isinstance(sha, str) and _sha256(path) != sha


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    """The manifest of ``root`` as a dict (``files``: relative path -> entry, ``{"size",
    "sha256"}`` or, from earlier versions, the size in bytes; ``pending``), or None
    when there is none or it cannot be read (then the folder is judged without it)."""
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
    data["files"] = {r: s for r, s in data["files"].items() if _safe_rel(r)}
    return data


def _write_manifest(root: Path, data: dict[str, Any]) -> None:
    tmp = root / (MANIFEST_NAME + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, root / MANIFEST_NAME)


def _safe_rel(rel: Any) -> bool:
    """A manifest entry names a path inside the run folder (no absolute path, no '..')."""
    if not isinstance(rel, str) or not rel:
        return False
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and p.parts[0] not in _INTERNAL


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
    """Size, mtime and inode: an atomic rewrite (a new file renamed over) changes the inode
    even within one tick of the clock."""
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _same_stat(a: Any, b: list[int]) -> bool:
    """``a`` (a ``_stat`` recorded earlier, by this or an earlier version) equals ``b``."""
    return isinstance(a, list) and len(a) >= 2 and a == b[:len(a)]


def _user_files(root: Path) -> Iterator[Path]:
    """Files of ``root`` (recursively) except the run folder's own bookkeeping files."""
    for p in sorted(root.iterdir()):
        if p.name in _INTERNAL:
            continue
        if p.is_dir() and not p.is_symlink():
            yield from (f for f in sorted(p.rglob("*")) if not f.is_dir())
        else:
            yield p


def _legacy_stage_folders(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / "stage.json").is_file())


def folder_kind(root: str | Path) -> FolderKind:
    """What ``root`` is: ``new`` (absent or without files), ``run`` (has a manifest),
    ``legacy`` (a run of an earlier version: no manifest, but ``*/stage.json``) or ``foreign``
    (files that are not a run). Raises ``RunFolderError`` when ``root`` is a file."""
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


def _foreign_error(root: Path) -> RunFolderError:
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
    cache and reports are kept). Work a killed writer left "pending" is recorded. Raises
    ``RunFolderError`` for a folder of other files. Call it while holding ``run_lock``.
    """
    root = Path(root)
    kind = folder_kind(root)
    if kind == "foreign":
        raise _foreign_error(root)
    root.mkdir(parents=True, exist_ok=True)
    if kind == "new":
        manifest = _empty_manifest()
        _write_manifest(root, manifest)
        return manifest
    if kind == "legacy":
        manifest = _empty_manifest() | {"adopted_legacy_run": True}
        owned = [p for d in _legacy_stage_folders(root) for p in sorted(d.rglob("*"))
                 if p.is_file()]
        if (root / "config.yaml").is_file():
            owned.append(root / "config.yaml")
        manifest["files"] = {p.relative_to(root).as_posix(): _entry(p) for p in owned}
        _write_manifest(root, manifest)
        return manifest
    for key in list((read_manifest(root) or {}).get("pending", {})):
        if (str(root.resolve()), key) not in _ACTIVE:  # not one of this process's writers
            _commit(root, key)  # a writer that was killed: what it wrote is the run's
    return read_manifest(root) or _empty_manifest()


def record_files(root: str | Path, paths: Iterable[str | Path]) -> None:
    """Add files (or every file under folders) inside ``root`` to its manifest, with size and
    sha256."""
    root = Path(root)
    manifest = read_manifest(root) or _empty_manifest()
    rels = [_rel_of(root, p) for p in paths]
    for f in _files_under(root, rels):
        rel = f.relative_to(root).as_posix()
        manifest["files"][rel] = _entry(f)
    _write_manifest(root, manifest)


def owned_files(root: str | Path) -> set[str]:
    """Relative paths of the files the manifest of ``root`` lists (empty without a manifest)."""
    return set((read_manifest(root) or {}).get("files", {}))


_ACTIVE: set[tuple[str, str]] = set()  # (resolved run folder, key) tracked by this process


@contextmanager
def tracked(root: str | Path, key: str, outputs: Iterable[str | Path]) -> Iterator[None]:
    """Record in the manifest every file the body writes under ``outputs`` (files or folders
    inside ``root``): new files, and files that existed but changed. Files already there and
    left unchanged stay unlisted (they are not the run's); listed files the body leaves
    unchanged keep their entries (a file the user edited is not claimed again). Runs even when
    the body raises."""
    root = Path(root)
    manifest = read_manifest(root) or _empty_manifest()
    rels = sorted({_rel_of(root, p) for p in outputs})
    before: dict[str, list[int]] = {}
    owned_before: dict[str, list[int]] = {}
    for f in _files_under(root, rels):
        rel = f.relative_to(root).as_posix()
        (owned_before if rel in manifest["files"] else before)[rel] = _stat(f)
    manifest["pending"][key] = {"outputs": rels, "unowned_before": before,
                                "owned_before": owned_before}
    _write_manifest(root, manifest)
    active = (str(root.resolve()), key)
    _ACTIVE.add(active)
    try:
        yield
    finally:
        _ACTIVE.discard(active)
        _commit(root, key)


def _commit(root: Path, key: str) -> None:
    manifest = read_manifest(root) or _empty_manifest()
    entry = manifest["pending"].pop(key, None)
    if isinstance(entry, dict):
        before = entry.get("unowned_before") or {}
        owned_before = entry.get("owned_before")
        rels = [r for r in entry.get("outputs", []) if _safe_rel(r)]
        for f in _files_under(root, rels):
            rel = f.relative_to(root).as_posix()
            if rel in manifest["files"]:
                untouched = (isinstance(owned_before, dict) and rel in owned_before
                             and _same_stat(owned_before[rel], _stat(f)))
                if not untouched:  # rewritten by the writer
                    manifest["files"][rel] = _entry(f)
            elif rel not in before or not _same_stat(before[rel], _stat(f)):
                manifest["files"][rel] = _entry(f)
    manifest["files"] = {r: s for r, s in manifest["files"].items() if (root / r).is_file()}
    _write_manifest(root, manifest)


def remove_owned(root: str | Path, under: str | None = None,
                 keep: Iterable[str] = ()) -> tuple[list[Path], list[Path]]:
    """Delete the files the manifest of ``root`` lists (only those ``under`` a relative folder,
    when given; never those in ``keep``), then the folders that this left empty.

    A listed file whose content differs from what tskd recorded (its size or, where recorded,
    its sha256) was changed by someone else and is kept. Returns ``(removed, kept_changed)``.
    Nothing outside ``root`` is ever touched.
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
        if _content_changed(path, recorded):
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
    _write_manifest(root, manifest)
    return removed, changed


# -- one writer at a time: the lock -----------------------------------------------------------

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
    process dies, however it dies. Re-entrant within one process. ``root/.tskd.lock.json`` names
    the holder (pid, host, command, start time) while it is held. Raises ``RunFolderError``
    naming the holder when another process holds it, and for a folder of other files (nothing is
    created in it then) unless ``allow_foreign`` (the demo's output folder, which may hold other
    files next to its runs).
    """
    from filelock import FileLock, Timeout

    root = Path(root)
    key = str(root.resolve())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield root
        finally:
            held[1] -= 1
        return
    if not allow_foreign and folder_kind(root) == "foreign":
        raise _foreign_error(root)
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


@contextmanager
def writing(root: str | Path, key: str, outputs: Iterable[str | Path],
            what: str = "") -> Iterator[Path]:
    """Lock ``root``, make it a run folder (``claim_run_folder``) and record what the body
    writes under ``outputs`` (``tracked``): what every writer of a run folder goes through."""
    with run_lock(root, what or key):
        claim_run_folder(root)
        with tracked(root, key, outputs):
            yield Path(root)


def check_run_dir_inputs(cfg: RunConfig) -> None:
    """Refuse a run folder that is, contains or lies inside a data folder of ``cfg``.

    The data folders are ``data.labelled``, ``data.unlabelled`` and ``data.test`` (existing or
    not). A run folder inside an input folder would have its own outputs (the transfer set's
    synthetic images) read as data by the next run; one that is or contains it would mix the
    run's files with the user's. Data kept in the run folder's own ``data/`` or
    ``unlabelled/`` (``RunPaths.data``, ``RunPaths.unlabelled``: the widgets export the
    labelled set and the unlabelled layers there; tskd's stages never write there) is
    allowed. Call it before anything is created in the run folder. Raises ``RunFolderError``
    naming both folders.
    """
    from tskd.data import outputs
    from tskd.errors import TskdInputError

    root = Path(cfg.run_dir)
    real = root.expanduser().resolve()
    own = [RunPaths(real).data, RunPaths(real).unlabelled]  # the widgets' exports
    for role, folder in (("labelled", cfg.data.labelled), ("unlabelled", cfg.data.unlabelled),
                         ("test", cfg.data.test)):
        if not folder:
            continue
        data = Path(folder).expanduser().resolve()
        if any(data == d or data.is_relative_to(d) for d in own):
            continue
        try:
            outputs.check_not_input(root, [folder], what="run folder", as_folders=True,
                                    input_what=f"{role} data folder (data.{role})")
        except TskdInputError as exc:
            raise RunFolderError(str(exc)) from None


def prepare_run_dir(cfg: RunConfig, overwrite: bool = False) -> Path:
    """Create (or reuse) ``cfg.run_dir`` and write ``config.yaml``, holding the folder's lock.

    Reuses a folder holding the same run (same data and teacher); refuses one holding a
    different run unless ``overwrite``, which then removes only the files that run's manifest
    lists (``remove_owned``; a run of an earlier version: only its stage folders with a
    ``stage.json`` and its ``config.yaml``) and warns (``TskdWarning``) how many it removed and
    which changed files it kept. A ``config.yaml`` edited since tskd wrote it (its sha256
    differs from the manifest's), unless it already reads exactly as ``cfg`` would be written,
    is kept as ``config.edited-<YYYYmmdd-HHMMSS>.yaml``, no longer
    tskd's, with a one-line ``TskdWarning`` naming it, before the new one is written. A folder
    of other files, or a ``config.yaml`` tskd did not write, is refused even with
    ``overwrite``; so is a run folder that is, contains or lies inside a data folder of ``cfg``
    (``check_run_dir_inputs``). Raises ``RunFolderError``.
    """
    check_run_dir_inputs(cfg)
    root = Path(cfg.run_dir)
    paths = RunPaths(root)
    with run_lock(root, "prepare run folder"):
        manifest = claim_run_folder(root)
        if paths.config.is_file():
            if "config.yaml" not in manifest["files"]:
                raise RunFolderError(
                    f"{paths.config} was not written by tskd, so it is not replaced; move it out "
                    "of the run folder (keep your own configuration elsewhere) or choose another "
                    "run folder."
                )
            edited = _content_changed(paths.config, manifest["files"]["config.yaml"]) and \
                paths.config.read_bytes() != config_text(cfg).encode()  # else nothing is lost
            old = _try_load(paths.config)
            if old is None or (_comparable(old) != _comparable(cfg) and _has_results(root)):
                if not overwrite:
                    what = "cannot be read" if old is None else "belongs to a different run " \
                        "(other data or teacher)"
                    if edited:
                        what += " (it was edited since tskd wrote it)"
                    raise RunFolderError(
                        f"{paths.config} {what}; choose another run folder, or pass --overwrite "
                        "to remove the files that run wrote (files tskd did not write are kept)."
                    )
                removed, changed = remove_owned(root, keep=("config.yaml",))
                note = f"replacing the run in {root}: removed {len(removed)} file(s) it wrote"
                if changed:
                    note += (f"; kept {len(changed)} changed since tskd wrote them: "
                             + ", ".join(str(p.relative_to(root)) for p in changed[:5]))
                warnings.warn(TskdWarning(note), stacklevel=2)
            if edited:
                kept = _keep_edited_config(root)
                warnings.warn(TskdWarning(
                    f"{paths.config} was edited since tskd wrote it: kept your version as {kept} "
                    "and wrote the run's configuration to config.yaml"), stacklevel=2)
        save_config(cfg, paths.config)
        record_files(root, [paths.config])
    return root


def _keep_edited_config(root: Path) -> Path:
    """Rename the user's edited ``root/config.yaml`` to ``config.edited-<YYYYmmdd-HHMMSS>.yaml``
    (``-2``, ``-3``... when that name is taken; never replacing a file) and drop it from the
    manifest, so no ``--overwrite`` ever removes it. Returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = root / f"config.edited-{stamp}.yaml"
    k = 1
    while target.exists() or target.is_symlink():
        k += 1
        target = root / f"config.edited-{stamp}-{k}.yaml"
    try:
        os.link(root / "config.yaml", target)  # fails rather than replace a file
        (root / "config.yaml").unlink()
    except OSError:  # a file system without hard links: the name was checked to be free
        if target.exists():
            raise
        os.rename(root / "config.yaml", target)
    manifest = read_manifest(root) or _empty_manifest()
    manifest["files"].pop("config.yaml", None)
    _write_manifest(root, manifest)
    return target


def _has_results(root: Path) -> bool:
    """Whether the run holds results ``--overwrite`` could remove (a bare config.yaml, or the
    inputs record a stage writes before its first checkpoint, is none)."""
    return any(f != "config.yaml" and not (f.startswith("checkpoints/")
                                           and f.endswith("/inputs.json"))
               for f in owned_files(root))


def _try_load(path: Path) -> RunConfig | None:
    try:
        return load_config(path)
    except Exception:
        return None

