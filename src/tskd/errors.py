"""Errors the backend raises for problems a user can fix (bad input, bad paths, bad checkpoints).

The CLI turns any ``TskdError`` into a one-line message and exit code 2; the napari widgets
turn it into a notification. Anything else is a bug and keeps its traceback.
"""


class TskdError(Exception):
    """A problem the user can fix; its message is one sentence that says what and where."""


class TskdInputError(TskdError):
    """Bad input data: missing/unreadable files, mismatched sizes, invalid label maps."""


class CheckpointError(TskdError):
    """A model file that is not what it should be (not SAM, truncated, wrong model type)."""


class ModelMetaError(CheckpointError, TskdInputError):
    """A model folder's ``meta.json`` that is missing, unreadable or outside its schema.

    Both a ``CheckpointError`` and a ``TskdInputError``, so callers that catch either see it
    (``tskd.models.meta_schema`` raises it).
    """


class RunFolderError(TskdError):
    """A run folder that cannot be used as asked.

    It would overwrite a different run, holds files that are not a run's, is held by another
    tskd process (``tskd.pipeline.lock``), lies inside a data folder, or holds a checkpoint made
    from other inputs than a resumed run's (``tskd.pipeline.run_folder``).
    """


class DiskFullError(TskdError):
    """The disk (or quota) holding an output folder is full; the previous files were kept.

    Raised by the writers of ``tskd.atomic``; the message names the folder and the megabytes
    the write needed.
    """


class Cancelled(TskdError):
    """Training was cancelled by the user; a resumable checkpoint was kept.

    Raised by the training loops (``tskd.engine``, the teacher cache of
    ``tskd.training.distill``) when the run's ``CancelToken`` is set.
    """


class TskdWarning(UserWarning):
    """Something the user should know (e.g. images converted to another channel count)."""
