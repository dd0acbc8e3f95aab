"""``tskd check-data FOLDER``: every file of a labelled set checked before any training.

Modelled on nnU-Net's ``--verify_dataset_integrity``: for each case, the image and label files,
their shapes and dtypes, the label's distinct values, how the label policy reads them
(``tskd.data.label_policy``) and every problem found, not only the first. Nothing is written.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tskd.data import files, folders, label_formats, label_policy, samples
from tskd.data.axes import ImageAxes
from tskd.data.declared import resolve_declared
from tskd.data.decode import read_raw
from tskd.errors import TskdError, TskdInputError

_SHOWN_VALUES = 12


@dataclass
class FileCheck:
    """One case: its files, what was read, how the labels are read, and its problems.

    Attributes:
        case: The case name (file stem).
        image: Its image file(s) relative to the folder, comma-separated; None if none.
        label: Its label file relative to the folder; None if none.
        image_shape, image_dtype: The image as training reads it (standard layout).
        label_shape, label_dtype: The label map as read, and its dtype as stored.
        values: The first 12 distinct label values.
        n_values: How many distinct label values there are.
        how: How the label policy reads the file ("values are classes", ...).
        errors, warnings: One sentence each.
    """

    case: str
    image: str | None = None
    label: str | None = None
    image_shape: list[int] | None = None
    image_dtype: str | None = None
    label_shape: list[int] | None = None
    label_dtype: str | None = None
    values: list[int] = field(default_factory=list)  # the first distinct label values
    n_values: int = 0
    how: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    """The per-case checks, the class map decided for the set, and set-wide messages.

    Attributes:
        folder: The labelled folder checked.
        files: One ``FileCheck`` per case, sorted by name.
        label_values, class_names, ignore_label, classes_declared: The class map decided
            (``LabelMap``); ``label_values`` None when none could be decided.
        notes, warnings, errors: Set-wide sentences.
    """

    folder: str
    files: list[FileCheck]
    label_values: list[int] | None = None
    class_names: list[str] | None = None
    ignore_label: int | None = None
    classes_declared: bool = False
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def n_errors(self) -> int:
        """Errors of the set and of every case."""
        return len(self.errors) + sum(len(f.errors) for f in self.files)

    @property
    def n_warnings(self) -> int:
        """Warnings of the set and of every case."""
        return len(self.warnings) + sum(len(f.warnings) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (``--json``), with ``n_errors`` and ``n_warnings``."""
        return asdict(self) | {"n_errors": self.n_errors, "n_warnings": self.n_warnings}


def _read_label(path: Path, fc: FileCheck) -> np.ndarray | None:
    try:
        label_formats.check_label_file_format(path)
        raw = read_raw(path, palette_indices=True)
        fc.label_dtype = str(np.asarray(raw).dtype)
        label = files.label_from_raw(raw, path)
    except TskdError as exc:
        fc.errors.append(str(exc))
        return None
    fc.label_shape = list(label.shape)
    return label


def _check_finite(path: Path, image: np.ndarray, fc: FileCheck) -> None:
    """NaN/inf pixels of one image file: an error when none is finite, else a warning."""
    problem = files.nonfinite_problem(path, image)
    if problem is not None:
        (fc.errors if problem[1] else fc.warnings).append(problem[0])


def _cases(folder: Path, image_dir: Path, label_dir: Path, nnunet: bool,
           case_problems: dict[str, str]) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    """({case: image files}, {case: label file}); nnU-Net case problems go to ``case_problems``.

    Raises ``TskdInputError`` for files that cannot be paired at all.
    """
    if nnunet:
        cases = folders.nnunet_cases(image_dir, folders.declared_channels(folder), case_problems)
    else:
        cases = {n: [p] for n, p in folders.by_stem(files.list_images(image_dir)).items()}
    return cases, folders.by_stem(files.list_images(label_dir))


def _read_image(paths: list[Path], label: np.ndarray | None, folder: Path,
                fc: FileCheck) -> tuple[np.ndarray | None, ImageAxes | None]:
    """A case's image read as training reads it (metadata, else what fits the label).

    Its warnings and non-finite pixels are recorded in ``fc``.
    """
    fc.image = ", ".join(str(p.relative_to(folder)) for p in paths)
    image, axes = None, None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image, axes = samples.read_case(
                paths, label.shape if label is not None else None, check_finite=False)
        fc.warnings += [str(w.message) for w in caught]
        fc.image_shape, fc.image_dtype = list(image.shape), str(image.dtype)
    except TskdError as exc:
        fc.errors.append(str(exc))
    if image is not None:  # nnU-Net channel files are the merged image's channels
        parts = [image] if len(paths) == 1 else [image[..., i] for i in range(len(paths))]
        for p, part in zip(paths, parts, strict=True):
            _check_finite(p, part, fc)
    return image, axes


def _check_case(name: str, paths: list[Path] | None, label_path: Path | None, folder: Path,
                dirs: tuple[Path, Path], problem: str | None,
                fc: FileCheck) -> np.ndarray | None:
    """Check one case's files into ``fc``; its label's distinct values, if read.

    ``problem`` is the problem of its nnU-Net channel files, if any.
    """
    image_dir, label_dir = dirs
    label = None
    if label_path is not None:
        fc.label = str(label_path.relative_to(folder))
        label = _read_label(label_path, fc)
    if problem is not None:
        fc.errors.append(problem)
    image, axes = None, None
    if paths:
        image, axes = _read_image(paths, label, folder, fc)
    else:
        fc.warnings.append(f"{label_path}: a label without an image of the same name "
                           f"in {image_dir.name}/ (not used)")
    if label_path is None:
        fc.warnings.append(f"no label file for {name} in {label_dir.name}/ (the image is "
                           "not used for training)")
        return None
    if label is None:
        return None
    if image is not None and paths:
        try:
            samples.fit_to_label(image, label, paths[0], label_path, axes)
        except TskdError as exc:
            fc.errors.append(str(exc))
    values = label_policy.distinct_values(label)
    fc.n_values = int(values.size)
    fc.values = [int(v) for v in values[:_SHOWN_VALUES]]
    return values


def check_folder(
    folder: str | Path, classes: Any = None, ignore_label: int | None = None
) -> CheckReport:
    """Check a labelled folder (images/+labels/ or nnU-Net raw) file by file; nothing is written.

    Args:
        folder: The labelled set.
        classes: The config's ``data.classes``, or None.
        ignore_label: The config's ``data.ignore_label``, or None.

    Returns:
        The report: problems of files (and of the class declaration) are collected in it,
        never raised.

    Raises:
        TskdInputError: ``folder`` does not exist or is not a labelled set at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    image_dir, label_dir, nnunet = folders.labelled_dirs(folder)
    report = CheckReport(str(folder), [])
    case_problems: dict[str, str] = {}
    try:
        cases, labels = _cases(folder, image_dir, label_dir, nnunet, case_problems)
    except TskdInputError as exc:
        report.errors.append(str(exc))
        return report
    if not cases:
        report.errors.append(str(folders.no_images_error(image_dir)))
    read: list[tuple[FileCheck, np.ndarray]] = []
    for name in sorted(set(cases) | set(labels)):
        fc = FileCheck(name)
        report.files.append(fc)
        values = _check_case(name, cases.get(name), labels.get(name), folder,
                             (image_dir, label_dir), case_problems.get(name), fc)
        if values is not None:
            read.append((fc, values))
    try:
        declared = resolve_declared(folder, classes, ignore_label)
    except TskdInputError as exc:
        report.errors.append(str(exc))
        return report
    decision = label_policy.infer_map(
        [(str(labels[fc.case]), values) for fc, values in read], declared, ignore_label,
        where=str(label_dir),
    )
    _report_decision(report, decision, {str(labels[fc.case]): fc for fc, _ in read})
    for fc, values in read:
        if fc.how and not fc.errors and values.size == 1 and int(values[0]) == 0:
            fc.warnings.append(f"{labels[fc.case]}: background only (no class)")
    return report


def _report_decision(report: CheckReport, decision: label_policy.MapDecision,
                     by_path: dict[str, FileCheck]) -> None:
    """The label policy's decision for the set, each message given to its file."""
    for err in [e for e in decision.errors if e not in decision.summarised]:
        target = next((fc for p, fc in by_path.items()
                       if err.startswith((p + ":", p + " "))), None)
        (target.errors if target is not None else report.errors).append(err)
    for path, how in decision.how.items():
        by_path[path].how = how
    for path, errs in decision.file_errors.items():
        by_path[path].errors += errs
    for path, warns in decision.file_warnings.items():
        by_path[path].warnings += warns
    report.notes += decision.notes
    report.warnings += [w for w in decision.warnings if w not in decision.summarised]
    lm = decision.label_map
    if lm is not None:
        report.label_values = [int(v) for v in lm.values]
        report.class_names = list(lm.names)
        report.ignore_label = lm.ignore_label
        report.classes_declared = lm.declared


def format_report(report: CheckReport) -> str:
    """Write the report as text for ``tskd check-data``.

    Args:
        report: the report of ``check_folder``.

    Returns:
        One line per case (ok/warn/ERROR) and its messages, the set-wide errors, warnings and
        notes, the class map decided (only when there is no error at all), then the totals.
    """
    lines = [f"check-data {report.folder}"]
    for fc in report.files:
        status = "ERROR" if fc.errors else "warn " if fc.warnings else "ok   "
        parts = []
        if fc.image:
            parts.append(f"image {fc.image} {tuple(fc.image_shape or ())} {fc.image_dtype}")
        if fc.label:
            shown = ", ".join(map(str, fc.values))
            more = f", ... ({fc.n_values} values)" if fc.n_values > len(fc.values) else ""
            shape = tuple(fc.label_shape) if fc.label_shape else "?"
            parts.append(f"label {fc.label} {shape} {fc.label_dtype or '?'} "
                         f"values [{shown}{more}]")
        if fc.how:
            parts.append(f"read: {fc.how}")
        lines.append(f"{status} {fc.case}: " + "; ".join(parts))
        lines += [f"      error: {e}" for e in fc.errors]
        lines += [f"      warning: {w}" for w in fc.warnings]
    lines += [f"error: {e}" for e in report.errors]
    lines += [f"warning: {w}" for w in report.warnings]
    lines += [f"note: {n}" for n in report.notes]
    if report.label_values is not None and not report.n_errors:
        names = report.class_names or []
        mapping = ", ".join(f"{v} -> class {k} ({n})"
                            for k, (v, n) in enumerate(zip(report.label_values, names)))
        source = "declared" if report.classes_declared else "from the values seen"
        lines.append(f"classes ({source}): {len(report.label_values)}: {mapping}")
        if report.ignore_label is not None:
            lines.append(f"ignored label value: {report.ignore_label}")
    lines.append(f"{len(report.files)} case(s), {report.n_errors} error(s), "
                 f"{report.n_warnings} warning(s)")
    return "\n".join(lines)


def report_json(report: CheckReport) -> str:
    """Write the report as JSON for ``tskd check-data --json``.

    Args:
        report: the report of ``check_folder``.

    Returns:
        ``CheckReport.to_dict()`` as JSON, indented one space per level.
    """
    return json.dumps(report.to_dict(), indent=1)
