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

from tskd.errors import TskdError, TskdInputError

_SHOWN_VALUES = 12


@dataclass
class FileCheck:
    """One case: its files, what was read, how the labels are read, and its problems."""

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
    """The per-case checks, the class map decided for the set, and set-wide messages."""

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
        return len(self.errors) + sum(len(f.errors) for f in self.files)

    @property
    def n_warnings(self) -> int:
        return len(self.warnings) + sum(len(f.warnings) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"n_errors": self.n_errors, "n_warnings": self.n_warnings}


def _read_label(path: Path, fc: FileCheck) -> np.ndarray | None:
    from tskd.data import io, label_policy

    try:
        label_policy.check_label_file_format(path)
        raw = io._read_raw(path, palette_indices=True)
        fc.label_dtype = str(np.asarray(raw).dtype)
        label = io.label_from_raw(raw, path)
    except TskdError as exc:
        fc.errors.append(str(exc))
        return None
    fc.label_shape = list(label.shape)
    return label


def _check_finite(path: Path, image: np.ndarray, fc: FileCheck) -> None:
    """NaN/inf pixels of one image file: an error when none is finite, else a warning."""
    from tskd.data import io

    problem = io.nonfinite_problem(path, image)
    if problem is not None:
        (fc.errors if problem[1] else fc.warnings).append(problem[0])


def check_folder(
    folder: str | Path, classes: Any = None, ignore_label: int | None = None
) -> CheckReport:
    """Check a labelled folder (images/+labels/ or nnU-Net raw) file by file.

    ``classes`` and ``ignore_label`` are the config's ``data.classes`` and
    ``data.ignore_label``. Problems of files are collected in the report, never raised; a
    folder that is not a labelled set at all raises ``TskdInputError``.
    """
    from tskd.data import io, label_policy

    folder = Path(folder)
    if not folder.is_dir():
        raise TskdInputError(f"labelled data folder not found: {folder}")
    image_dir, label_dir, nnunet = io._labelled_dirs(folder)
    report = CheckReport(str(folder), [])
    case_problems: dict[str, str] = {}
    try:
        if nnunet:
            cases = io._nnunet_cases(image_dir, io._declared_channels(folder), case_problems)
        else:
            cases = {n: [p] for n, p in io._by_stem(io.list_images(image_dir)).items()}
        labels = io._by_stem(io.list_images(label_dir))
    except TskdInputError as exc:
        report.errors.append(str(exc))
        return report
    if not cases:
        report.errors.append(str(io._no_images_error(image_dir)))
    read: list[tuple[FileCheck, np.ndarray]] = []
    for name in sorted(set(cases) | set(labels)):
        fc = FileCheck(name)
        report.files.append(fc)
        paths = cases.get(name)
        label = None
        if name in labels:
            fc.label = str(labels[name].relative_to(folder))
            label = _read_label(labels[name], fc)
        image, axes = None, None
        if name in case_problems:
            fc.errors.append(case_problems[name])
        if paths:
            fc.image = ", ".join(str(p.relative_to(folder)) for p in paths)
            try:  # axes read as training reads them: metadata, else what fits the label
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image, axes = io._read_case(
                        paths, label.shape if label is not None else None, check_finite=False)
                fc.warnings += [str(w.message) for w in caught]
                fc.image_shape, fc.image_dtype = list(image.shape), str(image.dtype)
            except TskdError as exc:
                fc.errors.append(str(exc))
            if image is not None:  # nnU-Net channel files are the merged image's channels
                parts = [image] if len(paths) == 1 else [image[..., i] for i in range(len(paths))]
                for p, part in zip(paths, parts, strict=True):
                    _check_finite(p, part, fc)
        else:
            fc.warnings.append(f"{labels[name]}: a label without an image of the same name "
                               f"in {image_dir.name}/ (not used)")
        if name not in labels:
            fc.warnings.append(f"no label file for {name} in {label_dir.name}/ (the image is "
                               "not used for training)")
            continue
        if label is None:
            continue
        if image is not None and paths:
            try:
                io._fit_to_label(image, label, paths[0], labels[name], axes)
            except TskdError as exc:
                fc.errors.append(str(exc))
        values = label_policy.distinct_values(label)
        fc.n_values = int(values.size)
        fc.values = [int(v) for v in values[:_SHOWN_VALUES]]
        read.append((fc, values))
    try:
        declared = label_policy.resolve_declared(folder, classes, ignore_label)
    except TskdInputError as exc:
        report.errors.append(str(exc))
        return report
    decision = label_policy.infer_map(
        [(str(labels[fc.case]), values) for fc, values in read], declared, ignore_label,
        where=str(label_dir),
    )
    by_path = {str(labels[fc.case]): fc for fc, _ in read}
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
    for fc, values in read:
        if fc.how and not fc.errors and values.size == 1 and int(values[0]) == 0:
            fc.warnings.append(f"{labels[fc.case]}: background only (no class)")
    report.notes += decision.notes
    report.warnings += [w for w in decision.warnings if w not in decision.summarised]
    lm = decision.label_map
    if lm is not None:
        report.label_values = [int(v) for v in lm.values]
        report.class_names = list(lm.names)
        report.ignore_label = lm.ignore_label
        report.classes_declared = lm.declared
    return report


def format_report(report: CheckReport) -> str:
    """The report as text: one block per case, then the class map and the counts."""
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
    return json.dumps(report.to_dict(), indent=1)
