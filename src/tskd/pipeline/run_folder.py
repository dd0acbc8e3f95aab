"""The run folder: one truth shared by the CLI, the widgets and a resumed run.

Where each stage keeps its files is ``RunPaths``; each stage's record of what its artefact was
made from (``stage.json``, fingerprints) is ``tskd.pipeline.markers``.

Every writer goes through ``writing``: it holds the folder's operating-system lock
(``tskd.pipeline.lock.run_lock``: one writer at a time, freed when its process dies) and records
what it writes in the folder's manifest (``tskd.pipeline.manifest.tracked``); only the files
listed there are ever removed, and a folder of other files is never written into.
``prepare_run_dir`` creates or reuses a run folder for a configuration.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tskd.config import RunConfig, config_text, load_config, save_config, to_dict
from tskd.errors import RunFolderError, TskdWarning
from tskd.pipeline.lock import run_lock  # also what apps/cli.py imports from here
from tskd.pipeline.manifest import (
    claim_run_folder,
    forget,
    owned_files,
    record_files,
    remove_owned,
    tracked,
)
from tskd.pipeline.manifest_file import content_changed


@dataclass(frozen=True)
class RunPaths:
    """Where each stage keeps its files inside the run folder ``root`` (``RunConfig.run_dir``)."""

    root: Path

    @property
    def config(self) -> Path:
        """``config.yaml``: the run's configuration, written by ``prepare_run_dir``."""
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        """``data/``: the run's own labelled set (images/ + labels/) exported by the widgets."""
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
        """``teacher/``: stage 1's artefact, the LoRA-adapted teacher's bundle."""
        return self.root / "teacher"

    @property
    def transfer(self) -> Path:
        """``transfer/``: stage 2's artefact, the transfer set."""
        return self.root / "transfer"

    @property
    def synthetic(self) -> Path:
        """``transfer/synthetic/``: the images the diffusion model synthesised."""
        return self.root / "transfer" / "synthetic"

    @property
    def diffusion(self) -> Path:
        """``transfer/diffusion/``: the trained diffusion model (its EMA weights)."""
        return self.root / "transfer" / "diffusion"

    @property
    def cache(self) -> Path:
        """``cache/``: teacher outputs on the transfer set (``tskd.training.teacher_cache``)."""
        return self.root / "cache"

    @property
    def distilled(self) -> Path:
        """``distilled/``: stage 3's artefact, the distilled student's bundle."""
        return self.root / "distilled"

    @property
    def student(self) -> Path:
        """``student/``: stage 4's artefact, the fine-tuned student's bundle."""
        return self.root / "student"

    @property
    def reports(self) -> Path:
        """``reports/``: ``pipeline.json``, training histories and evaluation reports."""
        return self.root / "reports"

    def checkpoints(self, stage: str) -> Path:
        """Return ``checkpoints/<stage>``, the checkpoint folder of one stage.

        Args:
            stage: the stage's checkpoint name (``tskd.pipeline.registry.Stage.checkpoint``).

        Returns:
            The folder (not created here).
        """
        return self.root / "checkpoints" / stage


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


@contextmanager
def writing(root: str | Path, key: str, outputs: Iterable[str | Path],
            what: str = "") -> Iterator[Path]:
    """Lock ``root``, claim it (``claim_run_folder``) and record what the body writes (``tracked``).

    What every writer of a run folder goes through.

    Args:
        root: the run folder (created when missing).
        key: names the writer in the manifest (a stage's name, ``"config"``, ``"share"``).
        outputs: the files or folders inside ``root`` the body writes.
        what: recorded in the lock file for messages to other writers; ``key`` when empty.

    Yields:
        ``root`` as a ``Path``, locked and claimed for the body.

    Raises:
        RunFolderError: another process holds ``root``, or it holds files that are not a run's.
    """
    from tskd import distributed

    if distributed.following():  # a job's other rank: the main process claims and records
        yield Path(root)
        return
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
    allowed. Call it before anything is created in the run folder.

    Args:
        cfg: the run's configuration (``run_dir`` and the ``data`` folders).

    Raises:
        RunFolderError: naming both folders.
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
    (``check_run_dir_inputs``).

    Args:
        cfg: the run's configuration, written as ``config.yaml``.
        overwrite: replace a different run's files (only those it owns).

    Returns:
        The run folder, ``Path(cfg.run_dir)``.

    Raises:
        RunFolderError: for each refusal above, and when another process holds the folder.
    """
    from tskd import distributed

    check_run_dir_inputs(cfg)
    root = Path(cfg.run_dir)
    paths = RunPaths(root)

    if not distributed.following():  # a job's other ranks wait for the main process
        with run_lock(root, "prepare run folder"):
            manifest = claim_run_folder(root)
            if paths.config.is_file():
                _replace_config(cfg, root, manifest, overwrite)
            save_config(cfg, paths.config)
            record_files(root, [paths.config])
    if distributed.in_job():
        distributed.broadcast(None)
    return root


def _replace_config(cfg: RunConfig, root: Path, manifest: dict[str, Any],
                    overwrite: bool) -> None:
    """Make way for ``cfg``'s ``config.yaml`` in a folder that holds one (``prepare_run_dir``).

    Refuse one tskd did not write, and another run's unless ``overwrite``; keep an edited one.
    Warnings name ``prepare_run_dir``'s caller.
    """
    config = RunPaths(root).config
    if "config.yaml" not in manifest["files"]:
        raise RunFolderError(
            f"{config} was not written by tskd, so it is not replaced; move it out "
            "of the run folder (keep your own configuration elsewhere) or choose another "
            "run folder."
        )
    edited = content_changed(config, manifest["files"]["config.yaml"]) and \
        config.read_bytes() != config_text(cfg).encode()  # else nothing is lost
    old = _try_load(config)
    if old is None or (_comparable(old) != _comparable(cfg) and _has_results(root)):
        if not overwrite:
            what = "cannot be read" if old is None else "belongs to a different run " \
                "(other data or teacher)"
            if edited:
                what += " (it was edited since tskd wrote it)"
            raise RunFolderError(
                f"{config} {what}; choose another run folder, or pass --overwrite "
                "to remove the files that run wrote (files tskd did not write are kept)."
            )
        removed, changed = remove_owned(root, keep=("config.yaml",))
        note = f"replacing the run in {root}: removed {len(removed)} file(s) it wrote"
        if changed:
            note += (f"; kept {len(changed)} changed since tskd wrote them: "
                     + ", ".join(str(p.relative_to(root)) for p in changed[:5]))
        warnings.warn(TskdWarning(note), stacklevel=3)
    if edited:
        kept = _keep_edited_config(root)
        warnings.warn(TskdWarning(
            f"{config} was edited since tskd wrote it: kept your version as {kept} "
            "and wrote the run's configuration to config.yaml"), stacklevel=3)


def _keep_edited_config(root: Path) -> Path:
    """Keep the user's edited ``root/config.yaml`` under a new name and return that path.

    The name is ``config.edited-<YYYYmmdd-HHMMSS>.yaml`` (``-2``, ``-3``... when that name
    is taken; never replacing a file); the file is dropped from the manifest, so no
    ``--overwrite`` ever removes it.
    """
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
    forget(root, ["config.yaml"])
    return target


def _has_results(root: Path) -> bool:
    """Tell whether the run holds results ``--overwrite`` could remove.

    A bare config.yaml, or the inputs record a stage writes before its first checkpoint, is
    none.
    """
    return any(f != "config.yaml" and not (f.startswith("checkpoints/")
                                           and f.endswith("/inputs.json"))
               for f in owned_files(root))


def _try_load(path: Path) -> RunConfig | None:
    try:
        return load_config(path)
    except Exception:
        return None

