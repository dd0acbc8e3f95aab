"""Which files a data folder holds: labelled sets, unlabelled folders and nnU-Net cases.

Layouts: ``folder/images`` + ``folder/labels`` matched by file stem, or the nnU-Net raw layout
(``imagesTr/CASE_0000.ext`` channel files, ``labelsTr/CASE.ext``, ``dataset.json``). One rule
for which files a data folder contributes, used by the readers (``tskd.data.samples``) and by
everything that lists a data folder's files (the run's fingerprints, the transfer manifest,
the widgets, ``tskd check-data``): never recursive, never a label folder. ``export_dataset``
writes arrays (napari layers) as such a labelled set.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tskd.data.declared import declared_from_dataset_labels, read_dataset_json
from tskd.data.decode import IMAGE_SUFFIXES
from tskd.data.files import list_images, stem, write_image, write_label
from tskd.data.label_map import MAX_CLASSES
from tskd.errors import TskdInputError

_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_NNUNET_IMAGE_DIRS = ("imagesTr", "imagesTs")


def class_names(folder: str | Path) -> list[str] | None:
    """Class names (index = label value) from an nnU-Net ``dataset.json``, if there is one.

    Reads nnU-Net v2 (``"labels": {"background": 0, "liver": 1}``) and v1
    (``"labels": {"0": "background", "1": "liver"}``); missing values get ``"class N"``.
    The class map itself (values with gaps kept as given) is ``tskd.data.declared.declared_map``.

    Args:
        folder: The folder holding ``dataset.json``.

    Returns:
        One name per label value from 0 to the largest declared (names in value order when a
        value is ``MAX_CLASSES`` or more); None without ``dataset.json`` or ``labels``.

    Raises:
        TskdInputError: ``dataset.json`` is not a valid JSON object, or its ``labels`` are invalid
            (``tskd.data.declared.declared_from_dataset_labels``).
    """
    folder = Path(folder)
    by_value, _ = declared_from_dataset_labels(read_dataset_json(folder).get("labels"),
                                               str(folder / "dataset.json"))
    if not by_value:
        return None
    if max(by_value) >= MAX_CLASSES:  # large ids: names in value order, nothing per value
        return [by_value[v] for v in sorted(by_value)]
    return [by_value.get(i, f"class {i}") for i in range(max(by_value) + 1)]


def declared_channels(folder: Path) -> int | None:
    """Count the channels ``folder``'s dataset.json names (v2 ``channel_names``, v1 ``modality``).

    Args:
        folder: an nnU-Net dataset folder (the parent of ``imagesTr``).

    Returns:
        The count, or None when the file or the key is missing.

    Raises:
        TskdInputError: ``dataset.json`` is not valid JSON or not a JSON object.
    """
    meta = read_dataset_json(folder)
    names = meta.get("channel_names", meta.get("modality"))
    return len(names) if isinstance(names, dict) and names else None


def by_stem(paths: list[Path]) -> dict[str, Path]:
    """Key files by stem (``tskd.data.files.stem``), the key that pairs images and labels.

    Args:
        paths: the files of one folder.

    Returns:
        ``{stem: path}``, in the order of ``paths``.

    Raises:
        TskdInputError: Two files have one stem (a.png, a.tif): which one is meant is ambiguous.
    """
    out: dict[str, Path] = {}
    for p in paths:
        if stem(p) in out:
            raise TskdInputError(
                f"{p.parent}: {out[stem(p)].name} and {p.name} have the same name; keep one"
            )
        out[stem(p)] = p
    return out


def nnunet_cases(
    folder: Path, n_channels: int | None = None, problems: dict[str, str] | None = None
) -> dict[str, list[Path]]:
    """nnU-Net image files grouped by case, each case's channel files in channel order.

    Every case needs the channel files ``CASE_0000`` to ``CASE_{n-1}``: ``n`` is the channel
    count ``dataset.json`` names (``n_channels``), else the case's own files must run from
    ``_0000`` without gaps. A file without a ``_NNNN`` ending is channel 0 of its own case.

    Args:
        folder: An nnU-Net image folder (``imagesTr``, ``imagesTs``).
        n_channels: The channel count ``dataset.json`` names, or None.
        problems: When a dict, each failing case's sentence is put there instead of raised
            (``tskd check-data``), and the case is still returned with the files it has.

    Returns:
        ``{case: [channel file, ...]}``.

    Raises:
        TskdInputError: A missing folder, two files of one stem or of one channel, or (without
            ``problems``) a case with missing or extra channel files: the first such case and
            its files are named, with how many other cases fail.
    """
    channels: dict[str, dict[int, Path]] = {}
    for name, p in by_stem(list_images(folder)).items():
        m = _NNUNET_CHANNEL.match(name)
        case, ch = (m.group("case"), int(m.group("ch"))) if m else (name, 0)
        if ch in channels.setdefault(case, {}):
            raise TskdInputError(f"{folder}: case {case} has two files for channel {ch:04d}")
        channels[case][ch] = p
    found: dict[str, str] = {}
    for case, files in sorted(channels.items()):
        problem = _nnunet_case_problem(folder, case, files, n_channels)
        if problem is not None:
            found[case] = problem
    if found and problems is None:
        first = next(iter(found.values()))
        more = (f"; {len(found) - 1} more case(s) have missing or extra channel files "
                "(tskd check-data lists them)") if len(found) > 1 else ""
        raise TskdInputError(first + more)
    if problems is not None:
        problems.update(found)
    return {case: [files[i] for i in sorted(files)] for case, files in channels.items()}


def _nnunet_case_problem(folder: Path, case: str, files: dict[int, Path],
                         n_channels: int | None) -> str | None:
    """One sentence on a case's missing or extra channel files, or None when they are right."""
    have = sorted(files)
    any_file = files[have[0]]
    ending = any_file.name[len(stem(any_file)):]

    def named(chs: list[int]) -> str:
        return ", ".join(f"{case}_{c:04d}{ending}" for c in chs)

    def count(n: int) -> str:
        return f"{n} channel file" + ("" if n == 1 else "s")

    if n_channels:
        missing = [c for c in range(n_channels) if c not in files]
        extra = [c for c in have if c >= n_channels]
        if missing:
            return (f"{folder}: case {case} has {count(len(files))} but dataset.json names "
                    f"{n_channels} channels: {named(missing)} is missing (each case needs "
                    f"{case}_0000 to {case}_{n_channels - 1:04d})")
        if extra:
            return (f"{folder}: case {case} has {count(len(files))} but dataset.json names "
                    f"{n_channels} channels: {named(extra)} is beyond them")
        return None
    if have != list(range(len(have))):
        missing = [c for c in range(have[-1]) if c not in files]
        return (f"{folder}: case {case} has channel files {have}; expected 0 to "
                f"{len(have) - 1} without gaps ({named(missing)} is missing)")
    return None



def labelled_dirs(folder: Path) -> tuple[Path, Path, bool]:
    """Find the image and label folders of a labelled set.

    ``imagesTr/`` + ``labelsTr/`` (nnU-Net) wins over ``images/`` + ``labels/``.

    Args:
        folder: the labelled set's folder.

    Returns:
        ``(image folder, label folder, is nnU-Net)``.

    Raises:
        TskdInputError: ``folder`` has ``imagesTr/`` without ``labelsTr/``, or neither layout.
    """
    if (folder / "imagesTr").is_dir():
        if not (folder / "labelsTr").is_dir():
            raise TskdInputError(f"{folder} has imagesTr/ but no labelsTr/ folder")
        return folder / "imagesTr", folder / "labelsTr", True
    if (folder / "images").is_dir() and (folder / "labels").is_dir():
        return folder / "images", folder / "labels", False
    raise TskdInputError(
        f"{folder} must hold images/ and labels/ (or nnU-Net imagesTr/ and labelsTr/)"
    )


# The files of a data folder: the one rule of the module docstring (never recursive, never a
# label folder), for the readers (tskd.data.samples) and everything that lists the files.


def unlabelled_cases(folder: str | Path) -> tuple[Path, dict[str, list[Path]]]:
    """Group the images of an unlabelled folder by case.

    The images directly in ``folder``, else those of its ``images/``, ``imagesTr/`` or
    ``imagesTs/`` sub-folder (the first that exists); in ``imagesTr``/``imagesTs`` a case's
    channel files are grouped (``nnunet_cases``), elsewhere each file is a case of its stem.
    Never recursive; label folders are never read.

    Args:
        folder: the unlabelled data folder.

    Returns:
        ``(image folder, {case: channel files})``: the folder the images were found in.

    Raises:
        TskdInputError: ``folder`` does not exist, or its files cannot be grouped (two files of
            one stem, nnU-Net channel files missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"unlabelled data folder not found: {folder}")
    if not list_images(folder):
        for sub in ("images", *_NNUNET_IMAGE_DIRS):
            if (folder / sub).is_dir():
                folder = folder / sub
                break
    if folder.name in _NNUNET_IMAGE_DIRS:
        cases = nnunet_cases(folder, declared_channels(folder.parent))
    else:
        cases = {name: [p] for name, p in by_stem(list_images(folder)).items()}
    return folder, cases


def labelled_cases(
    folder: Path,
) -> tuple[Path, Path, dict[str, list[Path]], dict[str, Path]]:
    """Group the files of a labelled set by case.

    Args:
        folder: holds images/+labels/ or nnU-Net imagesTr/+labelsTr/; never read recursively.

    Returns:
        ``(image folder, label folder, {case: channel files}, {case: label file})``; cases
        without a label, and labels without a case, are included on their side only.

    Raises:
        TskdInputError: ``folder`` does not exist or is not a labelled set (``labelled_dirs``),
            or its files cannot be grouped (``by_stem``, ``nnunet_cases``).
    """
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    image_dir, label_dir, nnunet = labelled_dirs(folder)
    if nnunet:
        cases = nnunet_cases(image_dir, declared_channels(folder))
    else:
        cases = {name: [p] for name, p in by_stem(list_images(image_dir)).items()}
    return image_dir, label_dir, cases, by_stem(list_images(label_dir))


def unlabelled_files(folder: str | Path) -> list[Path]:
    """List the image files ``load_unlabelled`` reads from ``folder``.

    The images directly in ``folder``, else those of its ``images/``, ``imagesTr/`` or
    ``imagesTs/`` sub-folder; never files in other sub-folders (a dataset's ``labels/``, a run
    folder's outputs).

    Args:
        folder: the unlabelled data folder.

    Returns:
        Every channel file of every case, sorted by path.

    Raises:
        TskdInputError: As ``unlabelled_cases`` (e.g. a missing folder).
    """
    _, cases = unlabelled_cases(folder)
    return sorted(p for paths in cases.values() for p in paths)


def labelled_files(folder: str | Path) -> list[Path]:
    """List the files ``read_labelled_set`` reads from ``folder``.

    Images without a label and labels without an image are not read, so they are not listed.

    Args:
        folder: the labelled set's folder.

    Returns:
        Every image (all channel files of a case) that has a label file, and those label
        files, sorted by path.

    Raises:
        TskdInputError: As ``labelled_cases`` (e.g. a folder that is not a labelled set).
    """
    _, _, cases, labels = labelled_cases(Path(folder))
    files = [p for name, paths in cases.items() if name in labels for p in paths]
    files += [labels[name] for name in cases if name in labels]
    return sorted(files)


DATA_ROLES = ("labelled", "unlabelled", "test")


def data_files(folder: str | Path | None, role: str) -> list[Path]:
    """The files a data folder of ``role`` contributes, as its reader reads them, sorted.

    Args:
        folder: The data folder; None or empty gives an empty list.
        role: ``labelled`` and ``test`` (read by ``read_labelled_set``: ``labelled_files``) or
            ``unlabelled`` (read by ``load_unlabelled``: ``unlabelled_files``).

    Returns:
        The files, sorted by path.

    Raises:
        TskdInputError: A missing or malformed folder.
        ValueError: ``role`` is not one of ``DATA_ROLES`` (a caller's mistake).
    """
    if role not in DATA_ROLES:
        raise ValueError(f"unknown data role {role!r}; one of {DATA_ROLES}")
    if not folder:
        return []
    return unlabelled_files(folder) if role == "unlabelled" else labelled_files(folder)


def no_images_error(folder: Path) -> TskdInputError:
    """Build the error (returned, not raised) for a folder without usable images.

    Args:
        folder: the folder that holds no file of ``IMAGE_SUFFIXES``.

    Returns:
        A ``TskdInputError`` naming the types of the unsupported files in ``folder`` if any
        (``.bmp``, ``.nii.gz``) and the supported ones.
    """
    def kind(p: Path) -> str:  # .bmp, or .nii.gz for compressed files
        n = 2 if p.suffix.lower() in (".gz", ".bz2", ".xz", ".zip") else 1
        return "".join(p.suffixes[-n:]) or p.name

    others = sorted({kind(p) for p in folder.iterdir()
                     if p.is_file() and not p.name.startswith(".")})
    if others:
        return TskdInputError(
            f"no image found in {folder}: files of type {', '.join(others)} are not supported "
            f"(use {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return TskdInputError(f"no image found in {folder}")


def export_dataset(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    folder: str | Path,
    names: list[str] | None = None,
) -> Path:
    """Write images and label maps as ``folder/images`` + ``folder/labels`` (tif).

    This is how data that lives in napari layers becomes a labelled set the stages can read.

    Args:
        images: One array per image, (H, W) or (H, W, C), any dtype the tif writer takes.
        labels: One label map per image, (H, W) integer label values.
        folder: The folder to write into (created when missing).
        names: File names without suffix, one per image; None: ``image_0000``, ...

    Returns:
        ``folder``.

    Raises:
        TskdInputError: no image, not one label map per image, or an array the tif writer
            cannot hold (``write_image``, ``write_label``).
        DiskFullError: the disk is full.
    """
    if len(images) != len(labels):
        raise TskdInputError(f"{len(images)} images but {len(labels)} label maps")
    if not images:
        raise TskdInputError("no labelled image to export")
    folder = Path(folder)
    names = names or [f"image_{i:04d}" for i in range(len(images))]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for name, image, label in zip(names, images, labels, strict=True):
        write_image(folder / "images" / f"{name}.tif", image)
        write_label(folder / "labels" / f"{name}.tif", label)
    return folder
