"""Sample tasks shaped like medical data sets, and pretraining data for the mini SAM.

Five target tasks (``TASKS``, the one list of tasks): four procedural ones (kidney ultrasound,
dermoscopy skin lesions, fundus retinal vessels, a multi-organ abdominal CT slice) and one of
real anatomy, ``brain_mri``: axial slices of the MNI152 T1 template (an average of 152 brains,
smoother than a single scan) with grey and white matter (``tskd.data.phantoms.brain``; needs
the optional ``[brain]`` extra, nilearn and nibabel). Sample ``i`` of a task is a pure function of
``(task, seed, i)``, so ``generate(task, n, seed=s, start=k)`` returns the same images whatever
``n`` is, and disjoint index ranges never share a sample. ``write_task_folders`` lays a task out
as train / unlabelled / test folders from fixed, disjoint index ranges.

``pretraining_sample`` (from ``tskd.data.phantoms.pretraining``) draws generic instance-segmentation
scenes (shapes, textured regions, curves, rings, clusters) with code that shares nothing with
the target generators, so a teacher pretrained on them has never seen a target task.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tskd.data.phantoms.pretraining import pretraining_sample
from tskd.data.phantoms.targets import GENERATORS
from tskd.errors import TskdInputError

__all__ = [
    "INDEX_OFFSETS",
    "SLICED_TASKS",
    "TASKS",
    "TaskInfo",
    "check_available",
    "generate",
    "pretraining_sample",
    "sample",
    "write_task_folders",
]


@dataclass(frozen=True)
class TaskInfo:
    """What a procedural task looks like on disk and in memory.

    Attributes:
        name: The task's key in ``TASKS``.
        description: What the images show, in words.
        class_names: Index = label value; background first.
        channels: 1 (gray, (H, W)) or 3 (RGB, (H, W, 3)).
        dtype: The numpy dtype name of the image: uint8, or uint16 (CT in HU + 1024).
    """

    name: str
    description: str
    class_names: tuple[str, ...]  # index = label value; background first
    channels: int  # 1 (gray, (H, W)) or 3 (RGB, (H, W, 3))
    dtype: str  # numpy dtype name of the image: uint8 or uint16

    @property
    def num_classes(self) -> int:
        """Classes including the background."""
        return len(self.class_names)


TASKS: dict[str, TaskInfo] = {
    "kidney_us": TaskInfo(
        "kidney_us",
        "B-mode kidney ultrasound: speckle, sector field of view, hypoechoic kidney with a bright "
        "capsule and echogenic sinus, acoustic shadows, depth attenuation",
        ("background", "kidney"), 1, "uint8",
    ),
    "skin_lesion": TaskInfo(
        "skin_lesion",
        "Dermoscopy: skin texture and tone, pigmented lesion with an irregular border and "
        "colour variegation, hairs, vignetting",
        ("background", "lesion"), 3, "uint8",
    ),
    "retina_vessels": TaskInfo(
        "retina_vessels",
        "Colour fundus photograph: circular field of view, illumination gradient, optic disc, "
        "macula, branching vessel tree 1-4 px wide (thin structures: HD95 matters)",
        ("background", "vessel"), 3, "uint8",
    ),
    "ct_abdomen": TaskInfo(
        "ct_abdomen",
        "Axial abdominal CT slice in HU + 1024 (uint16): body with fat and muscle layers, bowel, "
        "liver, two kidneys, spleen, vertebra; contrast phase varies",
        ("background", "liver", "kidney", "spleen", "vertebra"), 1, "uint16",
    ),
    "brain_mri": TaskInfo(
        "brain_mri",
        "Axial T1-weighted brain MRI slice of the MNI152 2009 template, skull-stripped: an "
        "average of 152 real brains, so smoother and less noisy than a single scan; grey and "
        "white matter from the template's tissue probability maps (CSF is background); test "
        "slices at least 10 slices from every training slice (needs nilearn and nibabel)",
        ("background", "grey_matter", "white_matter"), 1, "uint8",
    ),
}
# tasks cut from a real volume (``tskd.data.phantoms.brain``): a sample's split follows from its
# index (``INDEX_OFFSETS``) and the seed draws which slices each split may use
SLICED_TASKS = ("brain_mri",)

# first sample index of each split in ``write_task_folders``: a split's images never depend on
# the size of another split, so test sets stay the same when the number of labels changes
INDEX_OFFSETS = {"train": 0, "unlabelled": 1_000_000, "test": 2_000_000}


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise TskdInputError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def check_available(task: str) -> None:
    """Refuse, before anything is written, a task that cannot be generated here.

    Args:
        task: A key of ``TASKS``.

    Raises:
        TskdInputError: An unknown task, or ``brain_mri`` without nilearn and nibabel (or with
            a damaged template file).
    """
    _check_task(task)
    if task in SLICED_TASKS:
        from tskd.data.phantoms.brain import template

        template()


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int | np.integer) else size
    if h < 32 or w < 32:
        raise TskdInputError(f"phantom images must be at least 32x32 pixels, not {h}x{w}")
    return int(h), int(w)


def _check_seed(seed: int) -> None:
    if int(seed) < 0:  # numpy's seed sequences take non-negative integers only
        raise TskdInputError(f"the seed must be 0 or more, not {seed}; pass a non-negative "
                             "--seed.")


def _rng(task: str, seed: int, index: int) -> np.random.Generator:
    """The generator of one sample: from (task, seed, index) only."""
    _check_seed(seed)
    return np.random.default_rng([zlib.crc32(task.encode()), int(seed), int(index)])


def sample(
    task: str, index: int, size: int | tuple[int, int] = 256, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of ``task``: a pure function of ``(task, seed, index)``.

    Args:
        task: A key of ``TASKS``.
        index: The sample's index (any non-negative integer).
        size: Side, or (H, W), in pixels; at least 32.
        seed: Selects another draw of the whole task (0 or more).

    Returns:
        ``(image, label)``: the image as ``TASKS[task]`` says (uint8 (H, W) / (H, W, 3) or
        uint16 (H, W)), the label int64 (H, W) with values 0..num_classes-1.

    Raises:
        TskdInputError: An unknown task, a size under 32 pixels, a negative seed, or
            ``brain_mri`` without nilearn and nibabel installed.
    """
    _check_task(task)
    h, w = _shape(size)
    if task in SLICED_TASKS:
        from tskd.data.phantoms.brain import brain_sample

        split = max((s for s in INDEX_OFFSETS if index >= INDEX_OFFSETS[s]),
                    key=INDEX_OFFSETS.__getitem__)
        return brain_sample(split, index - INDEX_OFFSETS[split], h, w, seed,
                            _rng(task, seed, index))
    image, label = GENERATORS[task](_rng(task, seed, index), h, w)
    return image, label


def generate(
    task: str, n: int, size: int | tuple[int, int] = 256, seed: int = 0, start: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Samples ``start .. start + n - 1`` of ``task`` as (image, label) pairs (see ``sample``).

    The same whatever ``n`` is: disjoint index ranges never share a sample. Images are uint8
    (H, W) / (H, W, 3) or uint16 (H, W) (see ``TASKS[task]``); labels int64 (H, W).

    Args:
        task: A key of ``TASKS``.
        n: How many samples.
        size: Side, or (H, W), in pixels; at least 32.
        seed: Selects another draw of the whole task (0 or more).
        start: The first index.

    Returns:
        ``n`` (image, label) pairs, in index order.

    Raises:
        TskdInputError: ``n``, ``start`` or ``seed`` is negative, an unknown task, or a size
            under 32.
    """
    if n < 0 or start < 0:
        raise TskdInputError(f"n and start must be >= 0, got n={n}, start={start}")
    return [sample(task, start + i, size, seed) for i in range(n)]


def task_files(task: str, root: str | Path, n_train: int, n_unlabelled: int,
               n_test: int) -> list[Path]:
    """Every file ``write_task_folders`` writes for these counts (to check before writing).

    Args:
        task: A key of ``TASKS``.
        root: The output folder.
        n_train: Labelled training images.
        n_unlabelled: Unlabelled images.
        n_test: Labelled test images.

    Returns:
        ``task.json``, then per split its ``dataset.json`` (not for ``unlabelled``), image
        and label files.

    Raises:
        TskdInputError: An unknown task.
    """
    _check_task(task)
    root = Path(root)
    suffix = ".tif" if TASKS[task].dtype == "uint16" else ".png"
    files = [root / "task.json"]
    for split, n in (("train", n_train), ("unlabelled", n_unlabelled), ("test", n_test)):
        if split != "unlabelled":
            files.append(root / split / "dataset.json")
        for k in range(max(0, n)):
            stem = f"{task}_{split}_{k:04d}"
            files.append(root / split / "images" / f"{stem}{suffix}")
            if split != "unlabelled":
                files.append(root / split / "labels" / f"{stem}.png")
    return files


def write_task_folders(
    task: str,
    root: str | Path,
    n_train: int,
    n_unlabelled: int,
    n_test: int,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write a task as train/{images,labels}, unlabelled/images and test/{images,labels} in root.

    Images as PNG (uint8) or TIF (uint16), labels as uint8 PNG with the same stem; each split
    comes from its own range of sample indices (``INDEX_OFFSETS``). train/ and test/ get a
    ``dataset.json`` with nnU-Net style ``labels`` (name -> value) that ``folders.class_names``
    reads; ``root/task.json`` records the task, seed and sizes (for ``brain_mri`` also
    ``source``, ``test_gap_slices`` and ``slices``: each image's axial template slice, per
    split). Every file is written atomically; nothing is checked here
    (``tskd.data.outputs.check_task_folder`` does that).

    Args:
        task: A key of ``TASKS``.
        root: The output folder.
        n_train: Labelled training images, 0..999999.
        n_unlabelled: Unlabelled images, 0..999999.
        n_test: Labelled test images, 0..999999.
        size: Image side in pixels (at least 32).
        seed: Selects another draw of the whole task (0 or more).

    Returns:
        ``root``.

    Raises:
        TskdInputError: An unknown task, a count out of range, a size under 32, a negative
            seed, or ``brain_mri`` without nilearn and nibabel (before anything is written).
        DiskFullError: The disk is full.
    """
    from tskd import atomic

    _check_task(task)
    info = TASKS[task]
    counts = {"train": n_train, "unlabelled": n_unlabelled, "test": n_test}
    extra = _preflight(task, counts, size, seed)
    root = Path(root)
    suffix = ".tif" if info.dtype == "uint16" else ".png"
    for split, n in counts.items():
        _write_split(task, root / split, split, n, size, seed, suffix)
        if split != "unlabelled":
            labels = {name: i for i, name in enumerate(info.class_names)}
            channels = {"0": "gray"} if info.channels == 1 else {"0": "R", "1": "G", "2": "B"}
            dataset = {"name": task, "description": info.description, "labels": labels,
                       "channel_names": channels, "numTraining": n, "file_ending": suffix}
            atomic.write_json(root / split / "dataset.json", dataset)
    meta = asdict(info) | {"seed": seed, "size": size, "counts": counts,
                           "index_offsets": INDEX_OFFSETS} | extra
    atomic.write_json(root / "task.json", meta)
    return root


def _preflight(task: str, counts: dict[str, int], size: int, seed: int) -> dict[str, object]:
    """Refuse bad counts, sizes or a missing extra before anything is written.

    Returns:
        The keys ``task.json`` adds for this task (``brain.slices_record`` for sliced tasks).
    """
    for split, n in counts.items():
        if not 0 <= n < 1_000_000:
            raise TskdInputError(f"number of {split} images must be in 0..999999, got {n}")
    _shape(size)
    _check_seed(seed)
    if task in SLICED_TASKS:  # reads the volume, or says what to install
        from tskd.data.phantoms.brain import slices_record

        return slices_record(seed, counts)
    return {}


def _write_split(task: str, folder: Path, split: str, n: int, size: int, seed: int,
                 suffix: str) -> None:
    """Write ``n`` samples of one split as ``folder``/images (and /labels unless unlabelled)."""
    import imageio.v3 as iio
    import tifffile

    from tskd import atomic

    img_dir = folder / "images"
    atomic.mkdir(img_dir)
    lab_dir = folder / "labels"
    if split != "unlabelled":
        atomic.mkdir(lab_dir)
    for k, (image, label) in enumerate(generate(task, n, size, seed, start=INDEX_OFFSETS[split])):
        stem = f"{task}_{split}_{k:04d}"
        if suffix == ".tif":
            data = atomic.encode(lambda f, im=image: tifffile.imwrite(f, im))
        else:
            data = iio.imwrite("<bytes>", image, extension=suffix)
        files = {img_dir / f"{stem}{suffix}": data}
        if split != "unlabelled":
            files[lab_dir / f"{stem}.png"] = iio.imwrite(
                "<bytes>", label.astype(np.uint8), extension=".png")
        atomic.write_files(files)
