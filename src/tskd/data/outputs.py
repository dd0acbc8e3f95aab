"""Where tskd may write: never into the folders it reads, never over a file without a flag.

The rules every command that writes user-chosen outputs follows (``predict``, ``evaluate``,
``export-onnx``, ``make-sample-data``, the demo):

- an output folder that is, contains or lies inside a folder the command reads (a folder given
  as input, or the folder of an input file) is refused (``check_not_input``), symlinks resolved;
- an existing file the command would write is replaced only when the caller passes
  ``overwrite`` (the CLI's ``--overwrite``), and then the replaced files are named in a
  ``TskdWarning`` (``check_replace``).

Every refusal is a ``TskdInputError`` whose one sentence names the folder and what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

from tskd.errors import TskdInputError, TskdWarning


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def _input_folders(inputs: Iterable[str | Path],
                   as_folders: bool = False) -> list[tuple[Path, Path]]:
    """(given path, resolved folder): a folder itself, or the folder of a file."""
    out = []
    for p in inputs:
        real = _real(p)
        out.append((Path(p), real if as_folders or real.is_dir() else real.parent))
    return out


def check_not_input(
    output: str | Path,
    inputs: Iterable[str | Path],
    what: str = "output folder",
    allow_parent: bool = False,
    as_folders: bool = False,
    input_what: str = "input folder",
) -> None:
    """Refuse ``output`` when it is, contains or is inside a folder of ``inputs``.

    For an input folder, all three relations are refused; for an input file, only an output
    folder that is the file's own folder (where an output of the same name would replace a
    sibling input), so ``tskd predict scan.tif -o pred`` beside the scan is allowed. Paths are
    compared with symlinks resolved.

    Args:
        output: The output folder (or file) the command would write.
        inputs: Files or folders the command reads.
        what: What ``output`` is called in the message.
        allow_parent: Allow an output folder that merely contains an input folder (for outputs
            whose file names cannot meet the inputs, e.g. ``metrics.json``).
        as_folders: Take every input as a folder, whether it exists yet or not (a config's
            data folders).
        input_what: What an input folder is called in the message (e.g. "unlabelled data
            folder").

    Raises:
        TskdInputError: ``output`` is, contains or is inside an input folder; the message names
            both.
    """
    out = _real(output)
    for given, folder in _input_folders(inputs, as_folders):
        is_folder = as_folders or _real(given).is_dir()
        if out == folder:
            relation = "is"
        elif not is_folder:
            continue
        elif out.is_relative_to(folder):
            relation = "is inside"
        elif not allow_parent and folder.is_relative_to(out):
            relation = "contains"
        else:
            continue
        source = f"the {input_what} {given}" if is_folder else \
            f"the folder of the input {given} ({folder})"
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise TskdInputError(
            f"the {what} {output} {relation} {source}; tskd never writes where it reads its "
            f"inputs, so choose {article} {what} outside them."
        )


def check_output_folder(output: str | Path) -> Path:
    """Check that an output folder is not a file.

    Args:
        output: the output folder the user chose; it need not exist yet.

    Returns:
        ``output`` as a ``Path`` (nothing is created).

    Raises:
        TskdInputError: ``output`` exists and is not a folder.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise TskdInputError(f"the output folder {out} is a file; choose a folder.")
    return out


def _names(paths: Sequence[Path], n: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def check_no_folders(targets: Iterable[str | Path]) -> None:
    """Refuse when a folder stands where tskd would write one of the files ``targets``.

    No flag replaces a folder. Call it before anything is written, with or without
    ``--overwrite``.

    Args:
        targets: the files tskd is about to write.

    Raises:
        TskdInputError: A target is a folder (or a link to one); the first is named.
    """
    folders = [Path(t) for t in targets if Path(t).is_dir()]
    if folders:
        raise TskdInputError(
            f"{folders[0]} is a folder where tskd would write a file; move it or choose another "
            "output (--overwrite replaces files, never folders)."
        )


def check_replace(targets: Iterable[str | Path], overwrite: bool, where: str | Path,
                  flag: str | None = "--overwrite") -> list[Path]:
    """The targets that already exist; refuses to replace them unless ``overwrite``.

    With ``overwrite``, one ``TskdWarning`` names the files that will be replaced.

    Args:
        targets: The files the command would write.
        overwrite: Whether existing files may be replaced (the CLI's ``--overwrite``).
        where: The output folder the message names.
        flag: The flag named as the way to allow it; None when the caller has no such flag.

    Returns:
        The existing targets (files or links).

    Raises:
        TskdInputError: Existing targets without ``overwrite`` (the first five are named), or a
            target that is a folder, in any case (``check_no_folders``).
    """
    existing = [Path(t) for t in targets if Path(t).exists() or Path(t).is_symlink()]
    check_no_folders(existing)
    if existing and not overwrite:
        how = f", or pass {flag} to replace them" if flag else \
            " (tskd did not write them, so it does not replace them)"
        raise TskdInputError(
            f"{where} already holds {len(existing)} file(s) this would replace "
            f"({_names(existing)}); choose a new or empty output{how}."
        )
    if existing:
        warnings.warn(TskdWarning(f"replacing {len(existing)} existing file(s) in {where}: "
                                  f"{_names(existing)}"), stacklevel=2)
    return existing


def check_task_folder(task: str, root: str | Path, n_train: int, n_unlabelled: int,
                      n_test: int, overwrite: bool = False, flag: str | None = "--overwrite",
                      owned: Iterable[str | Path] = ()) -> None:
    """Check ``root`` before ``tskd.data.phantoms.write_task_folders`` writes a task there.

    Refuses to replace files without ``overwrite``, and refuses (even with it) image/label
    folders holding other files, which would silently join the task's data.

    Args:
        task: The task name (``tskd.data.phantoms.TASKS``).
        root: The output folder.
        n_train: Labelled training images, as ``write_task_folders`` gets them.
        n_unlabelled: Unlabelled images.
        n_test: Labelled test images.
        overwrite: Whether existing task files may be replaced.
        flag: As ``check_replace``.
        owned: Files written earlier by the caller, which removes them itself: they count as
            neither.

    Raises:
        TskdInputError: ``root`` is a file, an unknown task, a split folder holding other files,
            or files to replace without ``overwrite``.
    """
    from tskd.data import phantoms

    root = check_output_folder(root)
    mine = {_real(p) for p in owned}
    targets = [t for t in phantoms.task_files(task, root, n_train, n_unlabelled, n_test)
               if _real(t) not in mine]
    wanted = {_real(t) for t in targets} | mine
    for split in ("train", "unlabelled", "test"):
        for sub in ("images", "labels"):
            folder = root / split / sub
            if not folder.is_dir():
                continue
            others = [p for p in sorted(folder.iterdir()) if _real(p) not in wanted]
            if others:
                raise TskdInputError(
                    f"{folder} already holds files this task would not write ({_names(others, 3)}"
                    "), which would be mixed into its data; choose a new or empty folder."
                )
    check_replace(targets, overwrite, root, flag)
