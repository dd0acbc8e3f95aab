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
    """A model folder's ``meta.json`` that is unreadable or outside its documented schema."""


class RunFolderError(TskdError):
    """An output folder that would overwrite a different run."""


class DiskFullError(TskdError):
    """The disk (or quota) holding an output folder is full; the previous files were kept."""


class Cancelled(TskdError):
    """Training was cancelled by the user; a resumable checkpoint was kept."""


class TskdWarning(UserWarning):
    """Something the user should know (e.g. images converted to another channel count)."""
