"""The ``brain_mri`` sample task: axial slices of a real T1 brain template, grey/white matter.

The images are not procedural: they are axial slices of the ICBM 2009a nonlinear symmetric
MNI152 T1 template (1 mm, 197 x 233 x 189 voxels, skull-stripped) with its grey- and
white-matter probability maps, the three ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted``
files that nilearn's wheel ships in ``nilearn/datasets/data/`` (read here with nibabel, offline;
nilearn is not imported). The template is an **average of 152 registered brains**: it is
smoother, less noisy and higher in grey/white contrast than a single scan, and every slice
comes from the same average anatomy, so the task is easier than real MRI segmentation.

Labels: per voxel, the argmax of (background = 1 - GM - WM, GM, WM): 0 background (CSF,
ventricles and outside the brain included: nilearn ships no CSF map), 1 grey matter, 2 white
matter. Axial slices whose brain (GM or WM label) covers less than ``MIN_BRAIN_FRACTION`` of
the slice are dropped (133 of the 189 remain); all slices are cropped to the brain's bounding
box over the kept slices plus ``MARGIN`` voxels, shown with anterior up and the subject's left
on the left.

Splits (``split_slices``): for each seed, ``TEST_BANDS`` bands of ``TEST_BAND`` consecutive
kept slices are drawn as test slices, one in the inferior and one in the superior half; train
and unlabelled slices come from the kept slices at least ``TEST_GAP`` slices from every test
slice, so no training or unlabelled image shows (nearly) the anatomy of a test image. The
split depends on the seed only, never on the counts: training image ``k`` is pool slice ``k``,
unlabelled image ``k`` pool slice ``P - 1 - k`` (the other end of the seed's permutation of
the ``P`` pool slices, 67 to 85 of them), test image ``k`` test slice ``k``. More images than
slices cycle through them again, each time with a new random variation.

Variation (from the sample's own generator, so each seed and index differs): a left-right flip
(p = 0.5), a rotation of up to ``MAX_ROTATION_DEG`` and a zoom of 0.95-1.05 about the centre,
the same warp for image and tissue maps before the argmax; then on the image a gamma of
exp(U(-0.2, 0.2)), a gain of U(0.9, 1.1), a linear bias field of up to +-10 % across the image
and Rician noise (as in magnitude MR images) of sigma U(1, 4) grey levels.

Scaling to uint8: the template's stored intensities are uint8 0..255 (nilearn's loaders divide
by their maximum, 255); the image is ``round(hypot(255 * clip(gain * bias * t ** gamma, 0, 1)
+ n1, n2))`` clipped to 0..255, with ``t`` the warped stored value / 255 and ``n1, n2`` the
noise: no per-slice normalisation, so intensities are comparable across slices.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from tskd.errors import TskdInputError

MISSING_EXTRA = ("the brain_mri task needs nilearn and nibabel: "
                 "pip install 'napari-tskd[brain]'")
FILES = {tissue: f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
         for tissue in ("t1", "gm", "wm")}
MIN_BRAIN_FRACTION = 0.05  # a kept slice's brain pixels / all its pixels (full 233 x 197 slice)
MARGIN = 4  # voxels kept around the brain's bounding box
TEST_GAP = 10  # every test slice is at least this many slices from a train/unlabelled slice
TEST_BANDS = 2  # test slices: this many bands ...
TEST_BAND = 15  # ... of this many consecutive kept slices (30 distinct test slices)
MAX_ROTATION_DEG = 10.0


@dataclass(frozen=True)
class Template:
    """The kept axial slices, cropped, in display orientation (rows anterior to posterior).

    Attributes:
        t1: uint8 (Z, H, W), the stored T1 intensity 0..255.
        gm: uint8 (Z, H, W), grey-matter probability x 255.
        wm: uint8 (Z, H, W), white-matter probability x 255.
        z: int (Z,), each kept slice's axial index in the 189-slice template (increasing).
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    z: np.ndarray


@dataclass(frozen=True)
class Splits:
    """A seed's slices (template axial indices), in the order images take them.

    Attributes:
        test: The test slices (``TEST_BANDS * TEST_BAND`` of them), permuted.
        pool: The train/unlabelled slices, each at least ``TEST_GAP`` from every test slice,
            permuted.
    """

    test: tuple[int, ...]
    pool: tuple[int, ...]


def template_files() -> dict[str, Path]:
    """The three template files inside the installed nilearn, without importing nilearn.

    Raises:
        TskdInputError: nilearn or nibabel is not installed (``MISSING_EXTRA``), or this
            nilearn lacks one of the files.
    """
    try:
        import nibabel  # noqa: F401
        spec = importlib.util.find_spec("nilearn")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TskdInputError(MISSING_EXTRA)
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    files = {tissue: data / name for tissue, name in FILES.items()}
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        raise TskdInputError(
            f"the installed nilearn lacks the MNI152 template file {missing[0]}; reinstall it "
            "with pip install --force-reinstall 'nilearn>=0.10'."
        )
    return files


def template() -> Template:
    """The kept, cropped slices (read once per process; ``template_files`` checked every call).

    Raises:
        TskdInputError: As ``template_files``, or a template file nibabel cannot read.
    """
    files = template_files()
    return _load(tuple(str(files[t]) for t in ("t1", "gm", "wm")))


@functools.lru_cache(maxsize=1)
def _load(paths: tuple[str, str, str]) -> Template:
    import nibabel

    vols = []
    for path in paths:
        try:
            vol = np.asarray(nibabel.load(path).dataobj)
        except Exception as exc:  # nibabel raises many types for a damaged file
            raise TskdInputError(
                f"cannot read the MNI152 template file {path} ({exc}); reinstall nilearn with "
                "pip install --force-reinstall 'nilearn>=0.10'."
            ) from exc
        # (x: left->right, y: posterior->anterior, z: inferior->superior) -> (z, rows, cols)
        # with rows anterior -> posterior and columns the subject's left -> right
        vols.append(np.ascontiguousarray(np.clip(vol, 0, 255).astype(np.uint8)
                                         .transpose(2, 1, 0)[:, ::-1, :]))
    t1, gm, wm = vols
    g, w = gm.astype(np.float32), wm.astype(np.float32)
    brain = (g > 255 - g - w) | (w > 255 - g - w)  # argmax is GM or WM
    keep = np.flatnonzero(brain.mean(axis=(1, 2)) >= MIN_BRAIN_FRACTION)
    rows = np.flatnonzero(brain[keep].any(axis=(0, 2)))
    cols = np.flatnonzero(brain[keep].any(axis=(0, 1)))
    r0, r1 = max(rows[0] - MARGIN, 0), min(rows[-1] + MARGIN + 1, t1.shape[1])
    c0, c1 = max(cols[0] - MARGIN, 0), min(cols[-1] + MARGIN + 1, t1.shape[2])
    crop = (keep, slice(r0, r1), slice(c0, c1))
    return Template(np.ascontiguousarray(t1[crop]), np.ascontiguousarray(gm[crop]),
                    np.ascontiguousarray(wm[crop]), keep)


@functools.lru_cache(maxsize=64)
def split_slices(seed: int) -> Splits:
    """The seed's test and train/unlabelled slices (see the module docstring).

    Test: ``TEST_BANDS`` bands of ``TEST_BAND`` consecutive kept slices, one placed uniformly at
    random in each of ``TEST_BANDS`` equal parts of the kept slices (inferior to superior);
    pool: every kept slice at least ``TEST_GAP`` from each test slice.

    Args:
        seed: The task's seed (0 or more).

    Returns:
        The test slices and the pool of train/unlabelled slices (template axial indices).

    Raises:
        TskdInputError: As ``template``.
    """
    z = template().z
    rng = np.random.default_rng([zlib.crc32(b"brain_mri/splits"), int(seed)])
    # one band in each of TEST_BANDS equal parts of the kept slices, so test and pool both span
    # the brain from the cerebellum to the vertex
    parts = np.array_split(np.arange(len(z)), TEST_BANDS)
    starts = [int(p[0] + rng.integers(len(p) - TEST_BAND + 1)) for p in parts]
    test = np.concatenate([z[s:s + TEST_BAND] for s in starts])
    distance = np.abs(z[:, None] - test[None, :]).min(axis=1)
    pool = z[distance >= TEST_GAP]
    return Splits(tuple(int(v) for v in rng.permutation(test)),
                  tuple(int(v) for v in rng.permutation(pool)))


def slice_of(split: str, k: int, seed: int) -> int:
    """The template axial index of image ``k`` of ``split``.

    Args:
        split: "train", "unlabelled" or "test".
        k: The image's index in its split (past the last slice, the slices come round again).
        seed: The task's seed.

    Returns:
        The axial slice index in the template.
    """
    s = split_slices(seed)
    if split == "test":
        return s.test[k % len(s.test)]
    n = len(s.pool)
    return s.pool[k % n] if split == "train" else s.pool[n - 1 - k % n]


def slices_record(seed: int, counts: dict[str, int]) -> dict[str, object]:
    """What ``task.json`` records of a brain task: the source and each image's slice.

    Checks the extra and the template first, every call (``split_slices`` is cached), so
    ``write_task_folders`` can call it before writing anything.

    Args:
        seed: The task's seed.
        counts: {split: number of images}.

    Returns:
        ``source``, ``test_gap_slices`` and ``slices`` ({split: slice of each image}).

    Raises:
        TskdInputError: As ``template``.
    """
    template()
    return {
        "source": "MNI152 ICBM 2009a nonlinear symmetric T1 template with GM/WM probability "
                  "maps, as shipped in nilearn/datasets/data",
        "test_gap_slices": TEST_GAP,
        "slices": {split: [slice_of(split, k, seed) for k in range(n)]
                   for split, n in counts.items()},
    }


def brain_sample(split: str, k: int, h: int, w: int, seed: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image ``k`` of ``split`` for ``seed``, varied by ``rng`` (the sample's own generator).

    Args:
        split: "train", "unlabelled" or "test".
        k: The image's index in its split.
        h: Output height in pixels.
        w: Output width in pixels.
        seed: The task's seed (chooses the slice).
        rng: The sample's generator (flip, rotation, zoom, intensity, noise).

    Returns:
        ``(image, label)``: uint8 (h, w) T1 image (scaled as the module docstring says) and
        int64 (h, w) labels 0 background, 1 grey matter, 2 white matter.

    Raises:
        TskdInputError: As ``template``.
    """
    t = template()
    i = int(np.searchsorted(t.z, slice_of(split, k, seed)))
    maps = np.stack([t.t1[i], t.gm[i], t.wm[i]]).astype(np.float32) / 255
    t1, gm, wm = _warp(maps, h, w, rng)
    label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0).astype(np.int64)
    return _intensity(t1, rng), label


def _warp(maps: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(C, H0, W0) float maps -> (C, h, w): fitted whole into (h, w), flipped, rotated, zoomed."""
    flip = rng.random() < 0.5
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    zoom = rng.uniform(0.95, 1.05)
    h0, w0 = maps.shape[1:]
    step = max(h0 / h, w0 / w) / zoom  # input pixels per output pixel
    if step > 1:  # smooth before shrinking, as skimage's anti-aliasing: sigma (step - 1) / 2
        maps = ndimage.gaussian_filter(maps, sigma=(0, (step - 1) / 2, (step - 1) / 2))
    cos, sin = np.cos(angle), np.sin(angle)
    matrix = step * np.array([[cos, -sin], [sin, cos]])
    offset = np.array([(h0 - 1) / 2, (w0 - 1) / 2]) - matrix @ np.array([(h - 1) / 2, (w - 1) / 2])
    out = np.stack([ndimage.affine_transform(m, matrix, offset, output_shape=(h, w), order=1,
                                             mode="constant", cval=0.0) for m in maps])
    return out[:, :, ::-1] if flip else out


def _intensity(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Float T1 in 0..1 -> uint8 with gamma, gain, a linear bias field and Rician noise."""
    gamma = np.exp(rng.uniform(-0.2, 0.2))
    gain = rng.uniform(0.9, 1.1)
    phi, amp = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.1)
    sigma = rng.uniform(1, 4)
    h, w = t1.shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    bias = 1 + amp * (np.cos(phi) * xx + np.sin(phi) * yy)
    value = 255 * np.clip(gain * bias * np.clip(t1, 0, 1) ** gamma, 0, 1)
    noisy = np.hypot(value + rng.normal(0, sigma, t1.shape), rng.normal(0, sigma, t1.shape))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
