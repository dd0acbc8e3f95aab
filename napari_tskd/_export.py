"""Writing the labelled and unlabelled sets of a run from layers or folders.

The run folder keeps its own copy of the labelled set (``run/data``): users' folders are only
read, corrections from the annotate-train loop go next to that copy, and ``data.labelled`` never
changes path (the run folder's identity). Files are rewritten only when their content changed, so
the stages' input fingerprints stay stable and finished stages are not redone for nothing.
"""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import numpy as np

from tskd.pipeline.run_folder import RunPaths

CORRECTED_PREFIX = "corrected_"  # files added by the loop; kept when the data is exported again


def sync_folder(src: Path, dst: Path, keep_prefix: str | None = CORRECTED_PREFIX) -> int:
    """Make ``dst`` hold ``src``'s files (changed ones replaced, stale ones removed).

    Files starting with ``keep_prefix`` in ``dst`` are kept. Returns the number of files written.
    """
    dst.mkdir(parents=True, exist_ok=True)
    written = 0
    names = set()
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        names.add(f.name)
        target = dst / f.name
        if not (target.is_file() and filecmp.cmp(f, target, shallow=False)):
            shutil.copyfile(f, target)
            written += 1
    for f in dst.iterdir():
        if f.is_file() and f.name not in names and not (keep_prefix and
                                                         f.name.startswith(keep_prefix)):
            f.unlink()
    return written


def export_labelled(
    images: list[np.ndarray], labels: list[np.ndarray], names: list[str], run_dir: Path,
    class_names: list[str] | dict[int, str] | None = None,
    ignore_label: int | None = None,
) -> Path:
    """Write a labelled set into ``run_dir/data`` through the backend's ``export_dataset``.

    ``class_names`` (a list, background first, index = label value; or ``{value: name}``)
    and ``ignore_label`` go into ``data/dataset.json`` in nnU-Net's form, where
    ``tskd.data.label_policy`` reads them as the declared class map (used as given).
    """
    from tskd.data.folders import export_dataset
    data = RunPaths(run_dir).data
    data.mkdir(parents=True, exist_ok=True)
    meta = data / "dataset.json"
    if class_names:
        by_value = (dict(class_names) if isinstance(class_names, dict)
                    else dict(enumerate(class_names)))
        declared: dict[str, str | int] = {str(v): str(n) for v, n in sorted(by_value.items())}
        if ignore_label is not None:
            declared["ignore"] = int(ignore_label)
        meta.write_text(json.dumps({"labels": declared}, indent=1))
    else:
        meta.unlink(missing_ok=True)
    tmp = run_dir / ".export_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_dataset(images, labels, tmp, names)
        for sub in ("images", "labels"):
            sync_folder(tmp / sub, data / sub)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return data


def labelled_set_differs(images: list[np.ndarray], labels: list[np.ndarray], names: list[str],
                         run_dir: Path) -> bool:
    """Whether writing this labelled set would change ``run_dir/data`` (corrections aside).

    The set is written to a temporary folder in ``run_dir`` (removed again) and compared file by
    file with ``data/images`` and ``data/labels``; files the *Add* button wrote
    (``CORRECTED_PREFIX``) are not compared, as writing keeps them.

    Args:
        images: The images, as ``export_labelled`` takes them.
        labels: Their labels.
        names: Their file names (without suffix).
        run_dir: The run folder.

    Returns:
        True when a file would be added, changed or removed; False for the same set.
    """
    from tskd.data.folders import export_dataset

    data = RunPaths(run_dir).data
    tmp = run_dir / ".export_check"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        export_dataset(images, labels, tmp, names)
        for sub in ("images", "labels"):
            new = {f.name: f for f in (tmp / sub).iterdir() if f.is_file()}
            old = {f.name: f for f in (data / sub).iterdir() if f.is_file()
                   and not f.name.startswith(CORRECTED_PREFIX)} if (data / sub).is_dir() else {}
            if set(new) != set(old) or not all(
                    filecmp.cmp(new[n], old[n], shallow=False) for n in new):
                return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return False


def export_unlabelled(
    images: list[np.ndarray], names: list[str], folder: Path, extra_files: list[Path] = ()
) -> Path:
    """Write unlabelled images (from Image layers) as tif files, plus copies of ``extra_files``,
    into ``folder`` (which then holds exactly these)."""
    from tskd.data import files

    tmp = folder.parent / (folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, image in zip(names, images, strict=True):
            files.write_image(tmp / f"{name}.tif", image)
        for i, path in enumerate(extra_files):
            shutil.copyfile(path, tmp / f"folder_{i:05d}_{path.name}")
        sync_folder(tmp, folder, keep_prefix=None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def correction_sources(run_dir: Path) -> dict[str, str]:
    """{correction name (no prefix): source layer name and slice} of the run's corrections, as
    ``add_corrected`` recorded them in ``RunPaths.corrections``."""
    try:
        sources = json.loads(RunPaths(run_dir).corrections.read_text())
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}


def correction_name(name: str, source: str, run_dir: Path) -> tuple[str, bool]:
    """The file name (without prefix) for a correction of ``source`` (layer name and slice),
    and whether it replaces an earlier correction of that same source.

    ``name`` is the file-name-safe form of the layer name; two layers whose names sanitise
    alike (``case 1``, ``case.1``) get distinct names (``case_1``, ``case_1_2``) instead of
    one correction silently replacing the other's.
    """
    sources = correction_sources(run_dir)
    taken = corrected_names(run_dir)
    candidate, k = name, 1
    while candidate in taken:
        if sources.get(candidate, source) == source:  # the same slice of the same layer
            return candidate, True
        k += 1
        candidate = f"{name}_{k}"
    return candidate, False


def add_corrected(image: np.ndarray, label: np.ndarray, name: str, run_dir: Path,
                  source: str | None = None) -> Path:
    """Add one corrected (image, label map) to the run's labelled set; returns the label path.

    ``source`` (layer name and slice) is recorded in ``RunPaths.corrections`` so a later
    correction of another layer never takes this one's name (see ``correction_name``).
    """
    from tskd import atomic
    from tskd.data import files
    paths = RunPaths(run_dir)
    paths.data_images.mkdir(parents=True, exist_ok=True)
    paths.data_labels.mkdir(parents=True, exist_ok=True)
    stem = CORRECTED_PREFIX + name
    files.write_image(paths.data_images / f"{stem}.tif", image)
    files.write_label(paths.data_labels / f"{stem}.tif", label.astype(np.int64))
    if source is not None:
        sources = correction_sources(run_dir) | {name: source}
        atomic.write_json(paths.corrections, sources)
    return paths.data_labels / f"{stem}.tif"


def corrected_names(run_dir: Path) -> set[str]:
    """Names (without prefix and suffix) of the corrections already in the run's labelled set."""
    folder = RunPaths(run_dir).data_labels
    if not folder.is_dir():
        return set()
    return {p.stem[len(CORRECTED_PREFIX):] for p in folder.iterdir()
            if p.name.startswith(CORRECTED_PREFIX)}


def labelled_names(run_dir: Path) -> set[str]:
    """Names of every image in the run's labelled set, corrections without their prefix."""
    folder = RunPaths(run_dir).data_labels
    if not folder.is_dir():
        return set()
    return {p.stem.removeprefix(CORRECTED_PREFIX) for p in folder.iterdir() if p.is_file()}
