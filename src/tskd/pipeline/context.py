"""What every stage of a run shares: the stage context and the labelled set.

A ``StageContext`` holds one run's configuration, run folder, progress callback, cancel token
and ``resume`` flag (training gets them as a ``RunControl``: ``StageContext.control``), and
reads and hashes the labelled set once, on first use (``StageContext.data``), for all the
stages ``run_pipeline`` passes it to. ``StageContext.begin`` is the common start of a stage
(skip a finished one, withdraw its marker, seed), the ``StageRun`` it returns the common end
(mark done, drop the checkpoint) and the timer, so a stage function holds only what is
particular to it. ``writes`` wraps a stage function in its run folder's lock and manifest.

Nothing here imports torch at import time: the stage registry, which the widgets read, uses it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tskd.config import RunConfig
from tskd.errors import TskdInputError
from tskd.pipeline import markers
from tskd.pipeline.batches import stage_batches
from tskd.pipeline.markers import checkpoint_inputs, fingerprint, mark_done, stage_done
from tskd.pipeline.run_folder import RunPaths, check_run_dir_inputs, writing
from tskd.pipeline.settings_check import check_settings

if TYPE_CHECKING:
    from tskd.engine import CancelToken, ProgressCallback, RunControl

__all__ = ["LabelledData", "StageContext", "StageRun", "data_files", "load_labelled_data",
           "median_image_shape", "writes"]

StageFunction = Callable[..., dict[str, Any]]


@dataclass
class LabelledData:
    """The labelled set, split, with what the models need to know about it.

    Attributes:
        train: training samples (``tskd.data.samples.Sample``: ``image`` (H, W) or
            (H, W, C) as read, ``label`` (H, W) int64 class indices 0..C-1, ignored pixels
            ``tskd.data.label_map.IGNORE_INDEX``).
        val: validation samples, split off by ``data.val_fraction`` and ``data.split_seed``
            (``tskd.data.dataset.split_train_val``); may be empty.
        num_classes: classes including the background (C).
        class_names: one name per class, background first.
        fingerprint: 16 hex digits over the files' contents, the split and the label map.
        image_shape: median (height, width) in pixels of the labelled 2D images before
            resizing: the scale the models learn at, recorded in the bundles as
            ``train_image_shape`` so prediction tiles at it.
        label_map: ``tskd.data.label_map.LabelMap``: label values <-> class indices.
    """

    train: list[Any]
    val: list[Any]
    num_classes: int
    class_names: list[str]
    fingerprint: str
    image_shape: tuple[int, int] = (0, 0)
    label_map: Any = None


def median_image_shape(samples: list[Any]) -> tuple[int, int]:
    """Compute the median image size of a set of samples.

    Args:
        samples: ``tskd.data.samples.Sample`` objects; only ``image.shape[:2]`` is read.

    Returns:
        Median (height, width) in pixels over the samples, each rounded to a whole pixel.

    Raises:
        TskdInputError: ``samples`` is empty.
    """
    if not samples:
        raise TskdInputError("no labelled image: cannot tell the training image size")
    hw = np.array([s.image.shape[:2] for s in samples], dtype=np.float64)
    h, w = np.median(hw, axis=0)
    return int(round(h)), int(round(w))


def data_files(folder: str | Path | None, role: str) -> list[Path]:
    """List the files a data folder contributes, exactly as its reader reads them.

    The pipeline's name for ``tskd.data.folders.data_files`` (never recursive, never label
    files as images), imported when called so this module does not load the readers.

    Args:
        folder: the data folder; None or empty for none.
        role: ``"labelled"``, ``"unlabelled"`` or ``"test"``.

    Returns:
        The files (images, and label files for the labelled roles); empty for no folder.

    Raises:
        TskdInputError: the folder is missing or malformed.
        ValueError: ``role`` is none of the three.
    """
    from tskd.data.folders import data_files

    return data_files(folder, role)


def load_labelled_data(cfg: RunConfig) -> LabelledData:
    """Read, split and fingerprint the labelled set named in ``cfg.data.labelled``.

    Labels go through the one label policy (``tskd.data.label_policy``): ``data.classes`` or
    the dataset.json declare the classes, else the values seen do; ``data.ignore_label``
    pixels are left out. Samples hold class indices; ``label_map`` turns them back into label
    values. Files are held to ``data.max_pixels`` (``tskd.data.pixel_budget.pixel_budget``).

    Args:
        cfg: the run configuration; ``cfg.data`` (``labelled``, ``classes``,
            ``ignore_label``, ``max_pixels``, ``val_fraction``, ``split_seed``) is read.

    Returns:
        The split set with its class map, median image shape and fingerprint (16 hex digits
        over the files' names and contents, ``val_fraction``, ``split_seed`` and, for a
        non-identity label map, the map).

    Raises:
        TskdInputError: no labelled folder is given, or a file in it cannot be used (the
            readers name the file).
    """
    from tskd.data import dataset
    from tskd.data.folders import data_files
    from tskd.data.pixel_budget import pixel_budget
    from tskd.data.samples import read_labelled_set

    if not cfg.data.labelled:
        raise TskdInputError("no labelled data given (data.labelled / --data)")
    with pixel_budget(cfg.data.max_pixels):
        samples, label_map = read_labelled_set(
            cfg.data.labelled, classes=cfg.data.classes, ignore_label=cfg.data.ignore_label
        )
    train, val = dataset.split_train_val(samples, cfg.data.val_fraction, cfg.data.split_seed)
    parts: list[Any] = [
        markers.files_fingerprint(data_files(cfg.data.labelled, "labelled")),
        cfg.data.val_fraction,
        cfg.data.split_seed,
    ]
    if label_map.fingerprint() is not None:  # identity maps keep the fingerprints they had
        parts.append(label_map.fingerprint())
    return LabelledData(train, val, label_map.num_classes, list(label_map.names),
                        fingerprint(*parts), median_image_shape(samples), label_map)


@dataclass
class StageRun:
    """One stage in progress (from ``StageContext.begin``): where it writes and since when.

    Attributes:
        folder: the stage's artefact folder (``run/teacher``, ``run/transfer``, ...).
        fingerprint: 16 hex digits over everything the artefact depends on.
        checkpoints: the stage's checkpoint folder (``run/checkpoints/<stage>``), or None.
        resume: continue from the checkpoint in ``checkpoints``.
        done: the recorded result, with ``"skipped": True``, when the stage was already done
            with this fingerprint; None when it runs.
        started: ``time.perf_counter()`` at the start, seconds.
        batches: how the global batches it depends on are split (``pipeline.batches``).
    """

    folder: Path
    fingerprint: str
    checkpoints: Path | None
    resume: bool
    done: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    batches: dict[str, list[int]] | None = None

    def checkpoint_dir(self) -> Path:
        """Return the checkpoint folder, with this run's fingerprint recorded in it.

        Returns:
            ``checkpoints``, holding ``inputs.json`` with ``fingerprint``
            (``tskd.pipeline.markers.checkpoint_inputs``).

        Raises:
            RunFolderError: ``resume`` and the checkpoint was made from other inputs
                (``tskd.pipeline.markers.checkpoint_inputs``).
            DiskFullError: the disk is full while ``inputs.json`` is written.
            ValueError: the stage keeps no checkpoint (``checkpoints`` is None): a bug.
        """
        if self.checkpoints is None:
            raise ValueError(f"the stage writing {self.folder} keeps no checkpoint")
        return checkpoint_inputs(self.checkpoints, self.fingerprint, self.resume, self.batches)

    def seconds(self) -> float:
        """Return the wall-clock seconds since the stage started (``time.perf_counter``)."""
        return time.perf_counter() - self.started

    def finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Mark the stage done, then drop its checkpoint.

        The artefact is on disk by now, so a crash before this point keeps both the artefact
        and the checkpoint, and a rerun resumes or skips.

        Args:
            result: the stage's JSON-able result (metrics, counts); ``seconds`` (the stage's
                wall time, ``seconds()``) is added unless present.

        Returns:
            The result as recorded in the folder's ``stage.json``.

        Raises:
            DiskFullError: the disk is full while ``stage.json`` is written (the stage stays
                not done).
        """
        from tskd.engine import clear_checkpoint

        if "seconds" not in result:
            result = result | {"seconds": self.seconds()}
        mark_done(self.folder, self.fingerprint, result)
        if self.checkpoints is not None:
            clear_checkpoint(self.checkpoints)
        return result


@dataclass
class StageContext:
    """One run of one or more stages: configuration, folder, reporting, shared inputs.

    What it reads and hashes is kept for the context's life, so ``cfg`` must not change while
    the context is in use (make a new context for a changed configuration).

    Attributes:
        cfg: the run configuration.
        progress: called with ``tskd.engine.Progress`` reports; None reports nothing.
        cancel: checked every training step; a cancelled stage raises ``Cancelled``.
        resume: continue training stages from their checkpoints.
    """

    cfg: RunConfig
    progress: ProgressCallback | None = None
    cancel: CancelToken | None = None
    resume: bool = False
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, run: RunConfig | StageContext, progress: ProgressCallback | None = None,
           cancel: CancelToken | None = None, resume: bool = False) -> StageContext:
        """Make the context a stage function works with.

        Args:
            run: a configuration (a new context is made) or a context (the new one shares its
                labelled set and fingerprints: nothing is read or hashed twice).
            progress: progress callback; None keeps the context's own (none for a new one).
            cancel: cancel token; None keeps the context's own (none for a new one).
            resume: resume from checkpoints; True if given here or set in ``run``.

        Returns:
            The context.
        """
        if isinstance(run, StageContext):
            return replace(run,  # the same _memo: nothing is read or hashed twice
                           progress=run.progress if progress is None else progress,
                           cancel=run.cancel if cancel is None else cancel,
                           resume=resume or run.resume)
        return cls(run, progress, cancel, resume)

    def control(self, step: StageRun, keep_checkpoint: bool = True) -> RunControl:
        """This context's progress, cancel and resume, with ``step.checkpoint_dir()``.

        Args:
            step: the stage in progress (``begin``).
            keep_checkpoint: leave the checkpoint for ``StageRun.finish`` to clear.

        Returns:
            The ``RunControl`` a training stage hands on to ``tskd.engine.train``.

        Raises:
            RunFolderError: ``resume`` and the checkpoint was made from other inputs.
            DiskFullError: the disk is full while the checkpoint's ``inputs.json`` is written.
        """
        from tskd.engine import RunControl

        return RunControl(self.progress, self.cancel, self.resume, step.checkpoint_dir(),
                          keep_checkpoint)

    @property
    def paths(self) -> RunPaths:
        """Where each stage keeps its files inside the run folder ``cfg.run_dir``."""
        return RunPaths(Path(self.cfg.run_dir))

    @property
    def data(self) -> LabelledData:
        """The labelled set, read and hashed on first use only (``load_labelled_data``).

        Raises:
            TskdInputError: on first use, when no labelled folder is given or a file in it
                cannot be used.
        """
        return self.memo("data", lambda: load_labelled_data(self.cfg))

    def section(self, name: str) -> Any:
        """The config section ``name`` with its device set, its own or else the run's.

        Args:
            name: ``teacher``, ``synth``, ``distill``, ``student`` or ``predict``.

        Returns:
            The section of ``RunConfig.with_devices``, a copy made once per context: what a
            stage hands to training, which reads its own section only.
        """
        return getattr(self.memo("devices", self.cfg.with_devices), name)

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Return ``compute()``, computed once per context under ``key``.

        Args:
            key: ``"data"`` for the labelled set, ``"devices"`` for the config with every
                stage's device set (``section``), ``"fingerprint:<stage>"`` for a stage's
                fingerprint (some hash files or checkpoints, and later stages ask for earlier
                stages' fingerprints).
            compute: called on the first request for ``key`` only.

        Returns:
            The stored value (errors of ``compute`` propagate and nothing is stored).
        """
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def begin(self, folder: Path, fp: str, seed: int | None, checkpoints: Path | None = None,
              redo: bool = False) -> StageRun:
        """Start a stage that writes ``folder``: skip it, or withdraw its marker and seed.

        When ``folder`` holds a finished stage of fingerprint ``fp`` and ``redo`` is False, the
        returned run's ``done`` is the recorded result with ``"skipped": True`` and nothing
        else happens. Otherwise the stage's ``stage.json`` is withdrawn before anything is
        rewritten (``mark_started``) and every generator is seeded with ``seed`` (before any
        model is built: repeatable runs).

        Args:
            folder: the stage's artefact folder.
            fp: the stage's fingerprint (``tskd.pipeline.fingerprints.of``), 16 hex digits.
            seed: seed for Python, NumPy and torch (``tskd.engine.seed_everything``); None
                leaves the generators as they are.
            checkpoints: the stage's checkpoint folder, or None for a stage without one.
            redo: run even when the stage is done with this fingerprint.

        Returns:
            The ``StageRun``; its ``done`` is set when the stage was skipped.
        """
        run = StageRun(folder, fp, checkpoints, self.resume,
                       batches=stage_batches(self.cfg, checkpoints.name) if checkpoints else None)
        if not redo and stage_done(folder, fp):
            run.done = markers.read_result(folder) | {"skipped": True}
            return run
        markers.mark_started(folder)
        if seed is not None:
            from tskd.engine import seed_everything

            seed_everything(seed)
        return run


def writes(key: str, outputs: Callable[[RunPaths], list[Path]]) -> Callable[[Any], Any]:
    """Make a stage function run holding its run folder's lock (a decorator factory).

    The wrapped stage records what it writes under ``outputs`` in the folder's manifest
    (``tskd.pipeline.run_folder.writing``). A run folder that is, contains or lies inside a
    data folder of the config is refused first (``check_run_dir_inputs``), then settings no
    stage can run with (``check_settings``). The wrapper keeps ``outputs`` as its attribute
    ``outputs`` (the registry's folders are checked against it).

    Args:
        key: The stage's name in the manifest (``Stage.name``, or ``evaluate``, ``pipeline``).
        outputs: The files and folders the stage writes, from the run folder's ``RunPaths``.

    Returns:
        The decorator; the stage it wraps takes a ``RunConfig`` or ``StageContext`` first and
        raises, besides its own errors, ``RunFolderError`` when the run folder is, holds or
        lies inside a data folder, is locked by another writer or holds files not a run's.
        In a multi-process job every rank runs the stage (``tskd.distributed.as_rank``).
    """

    def decorate(fn: StageFunction) -> StageFunction:
        @functools.wraps(fn)
        def wrapper(run: RunConfig | StageContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
            from tskd.distributed import as_rank  # every rank of a job runs the stage

            cfg = run.cfg if isinstance(run, StageContext) else run
            check_run_dir_inputs(cfg)  # before anything is created in the run folder
            check_settings(cfg)
            with writing(Path(cfg.run_dir), key, outputs(RunPaths(Path(cfg.run_dir))),
                         what=f"stage {key}"):
                return as_rank(lambda: fn(run, *args, **kwargs), key, key != "evaluate")

        wrapper.outputs = outputs  # type: ignore[attr-defined]
        return wrapper

    return decorate
