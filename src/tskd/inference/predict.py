"""Inference: label maps and class probabilities for 2D images, stacks and large images.

Every input goes the same way: ``tskd.data.dataset.to_float_rgb`` (gray, RGB, 16-bit,
multi-channel -> float RGB in [0, 1]), bilinear resize to the model's square input, forward,
bilinear resize of the *logits* back to the input's height and width, then argmax (or
softmax). Stacks (Z, H, W[, C]) run slice by slice in batches. How an array's axes are read
(image, channels, stack) is ``tskd.data.axes.image_axes``'s decision, the same as in training.

Large images run in overlapping tiles; each tile's logits are weighted by a window that is flat
in the middle and falls smoothly (sin^2) across the overlap on sides shared with another tile,
and the weighted sum is normalised, so no seams appear where tiles meet. ``segmenter_from_bundle``
cuts tiles at the size of the images the model was trained on (``train_image_shape`` in the
bundle's ``meta.json``), so each tile is resized by the same factor as the training images were.

All the work after the image is read stays in torch on the model's device, so on a 256x256 image
pre- and post-processing cost about a millisecond next to the model's forward
(benchmarks/inference_speed.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tskd.errors import TskdInputError, TskdWarning

if TYPE_CHECKING:
    from tskd.data.axes import ImageAxes
    from tskd.data.label_map import LabelMap
    from tskd.inference.metrics import EvalReport

ContrastLimits = tuple[float, float] | None
DEFAULT_TILE_SIZE = 1024  # tile side for models that do not record their training image size
MIN_TILE_SIZE = 16  # the smallest tile side: a smaller tile holds too little to segment
# With tiles at the training size, an image up to this factor larger on each side is resized
# whole, as training resized every image whatever its size; only larger ones are tiled.
TILE_ABOVE = 1.5


def array_axes(image: np.ndarray, is_stack: bool | None = None) -> ImageAxes:
    """How ``Segmenter`` reads an array: ``tskd.data.axes.image_axes`` of its shape, ``is_stack`` as
    given. A guess another reading fits as well gives one ``TskdWarning`` naming the shape."""
    from tskd.data import axes

    ax = axes.image_axes(np.shape(image), is_stack=is_stack, where="array")
    if ax.ambiguous:
        warnings.warn(
            f"an array of shape {ax.shape} was read as {ax.describe()} ({ax.reason}); pass "
            "is_stack=True or False to choose", TskdWarning, stacklevel=3,
        )
    return ax


def is_stack_guess(image: np.ndarray, is_stack: bool | None = None) -> bool:
    """Whether ``image`` is read as a stack (``array_axes``; raises ``TskdInputError`` for a
    shape that is neither (H, W[, C]) nor (Z, H, W[, C]) in any order)."""
    return array_axes(image, is_stack).is_stack


def _tile_starts(n: int, tile: int, stride: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, stride)) + [n - tile]
    return sorted(set(starts))


def _ramp(length: int, overlap: int, taper_start: bool, taper_end: bool) -> torch.Tensor:
    """1D window: 1 in the middle, sin^2 from ~0 to 1 over ``overlap`` pixels on tapered ends."""
    w = torch.ones(length)
    k = min(overlap, length // 2)
    if k > 0:
        r = torch.sin(0.5 * math.pi * (torch.arange(k) + 0.5) / k) ** 2
        if taper_start:
            w[:k] = r
        if taper_end:
            w[length - k :] = r.flip(0)
    return w


class Segmenter:
    """Runs a segmentation model (float (B, 3, S, S) in [0, 1] -> logits (B, C, S, S)) on arrays.

    ``tile_size`` is the tile's side in pixels, or its (height, width); an image is tiled when
    a side exceeds ``tile_above`` times the tile's. ``tile_origin`` says where the tile size
    came from, for the one line ``tiling_note`` writes. ``max_pixels`` (default
    ``tskd.data.axes.default_max_pixels()``, 2^28) bounds the pixels of one 2D image before its
    float conversion. Invalid sizes raise ``TskdInputError``, among them tiles under
    ``MIN_TILE_SIZE`` (16) px on a side.
    """

    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        num_classes: int,
        device: str = "auto",
        batch_size: int = 8,
        tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
        tile_overlap: int = 64,
        tile_above: float = 1.0,
        tile_origin: str = "tile_size",
        max_pixels: int | None = None,
    ) -> None:
        from tskd.data import axes
        from tskd.engine import resolve_device

        if input_size < 1 or num_classes < 1 or batch_size < 1:
            raise TskdInputError(
                f"input_size, num_classes and batch_size must be positive, got {input_size}, "
                f"{num_classes}, {batch_size}"
            )
        th, tw = (tile_size, tile_size) if isinstance(tile_size, int | np.integer) else tile_size
        if min(th, tw) < MIN_TILE_SIZE:
            raise TskdInputError(
                f"tiles of {th}x{tw} px ({tile_origin}) are too small to segment: a tile must be "
                f"at least {MIN_TILE_SIZE} px on each side; give a larger tile size "
                f"(--tile-size, e.g. {DEFAULT_TILE_SIZE})"
            )
        if not 0 <= tile_overlap < min(th, tw):
            raise TskdInputError(
                f"tile_overlap ({tile_overlap}) must be in [0, tile_size) (tile_size {tile_size})"
            )
        if not tile_above >= 1.0:
            raise TskdInputError(f"tile_above must be at least 1, got {tile_above}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.tile_shape = (int(th), int(tw))
        self.tile_size = max(self.tile_shape)
        self.tile_overlap = int(tile_overlap)
        self.tile_above = float(tile_above)
        self.tile_origin = tile_origin
        self.max_pixels = axes.default_max_pixels() if max_pixels is None else int(max_pixels)
        axes.check_pixel_budget((1,), self.max_pixels)  # a bad budget fails here, not later

    # -- low level -------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float on device -> logits (B, C, h, w): resize in, model, resize out."""
        h, w = x.shape[-2:]
        s = self.input_size
        if (h, w) != (s, s):
            # as tskd.data.dataset.image_to_tensor does for training, so both see the same pixels
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)
        outs = [self.model(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        logits = outs[0] if len(outs) == 1 else torch.cat(outs)
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise TskdInputError(
                f"the model returned shape {tuple(logits.shape)}, expected (B, "
                f"{self.num_classes}, {s}, {s}); does num_classes match the model?"
            )
        logits = logits.float()
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def _to_tensor(self, image: np.ndarray, contrast_limits: ContrastLimits) -> torch.Tensor:
        """One 2D image (H, W[, C]) -> float (3, H, W) in [0, 1] on the device."""
        from tskd.data.axes import check_pixel_budget
        from tskd.data.dataset import to_float_rgb

        check_pixel_budget(np.shape(image)[:2], self.max_pixels)
        rgb = np.asarray(to_float_rgb(image, contrast_limits), dtype=np.float32)
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)

    @torch.inference_mode()
    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (1, C, H, W) of a large image (3, H, W) from overlapping, blended tiles."""
        _, H, W = x.shape
        th, tw = min(self.tile_shape[0], H), min(self.tile_shape[1], W)
        ys = _tile_starts(H, th, self.tile_shape[0] - self.tile_overlap)
        xs = _tile_starts(W, tw, self.tile_shape[1] - self.tile_overlap)
        boxes = [(y, x0) for y in ys for x0 in xs]
        acc = torch.zeros(self.num_classes, H, W, device=x.device)
        wsum = torch.zeros(1, H, W, device=x.device)
        for i in range(0, len(boxes), self.batch_size):
            chunk = boxes[i : i + self.batch_size]
            tiles = torch.stack([x[:, y : y + th, x0 : x0 + tw] for y, x0 in chunk])
            logits = self._forward(tiles)
            for (y, x0), lg in zip(chunk, logits):
                wy = _ramp(th, self.tile_overlap, y > 0, y + th < H)
                wx = _ramp(tw, self.tile_overlap, x0 > 0, x0 + tw < W)
                win = (wy[:, None] * wx[None, :]).to(x.device)
                acc[:, y : y + th, x0 : x0 + tw] += lg * win
                wsum[:, y : y + th, x0 : x0 + tw] += win
        return (acc / wsum).unsqueeze(0)

    def _is_large(self, h: int, w: int) -> bool:
        th, tw = self.tile_shape
        return h > self.tile_above * th or w > self.tile_above * tw

    def tiling_note(self, height: int, width: int) -> str | None:
        """One line saying how an image of this size is tiled, or None when it is not."""
        if not self._is_large(height, width):
            return None
        th, tw = min(self.tile_shape[0], height), min(self.tile_shape[1], width)
        s = self.input_size
        return (f"{height}x{width} is segmented in {th}x{tw} tiles ({self.tile_origin}), "
                f"each resized to {s}x{s}")

    def iter_logits(
        self, images: Sequence[np.ndarray], contrast_limits: ContrastLimits = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(index of the first image, logits (B, C, H, W))`` over 2D images.

        Consecutive images of one size share a batch; large images run alone, in tiles.
        """
        batch: list[torch.Tensor] = []
        first = 0
        for i, img in enumerate(images):
            x = self._to_tensor(img, contrast_limits)
            if batch and (x.shape != batch[0].shape or len(batch) == self.batch_size):
                yield first, self._forward(torch.stack(batch))
                batch = []
            if self._is_large(*x.shape[-2:]):
                yield i, self._tiled(x)
                continue
            if not batch:
                first = i
            batch.append(x)
        if batch:
            yield first, self._forward(torch.stack(batch))

    # -- public ----------------------------------------------------------------------------

    def _run(
        self,
        image: np.ndarray,
        is_stack: bool | None,
        contrast_limits: ContrastLimits,
        reduce: Callable[[torch.Tensor], torch.Tensor],
    ) -> np.ndarray:
        image = np.asarray(image)
        reduce = torch.inference_mode()(reduce)
        if image.size == 0:
            raise TskdInputError(f"cannot segment an empty array of shape {image.shape}")
        ax = array_axes(image, is_stack)
        image = ax.standard(image)
        if ax.is_stack:
            parts = [reduce(lg).cpu().numpy() for _, lg in self.iter_logits(image, contrast_limits)]
            return np.concatenate(parts)
        ((_, lg),) = list(self.iter_logits([image], contrast_limits))
        return reduce(lg)[0].cpu().numpy()

    def segment(
        self,
        image: np.ndarray,
        is_stack: bool | None = None,
        contrast_limits: ContrastLimits = None,
    ) -> np.ndarray:
        """Label map int64: (H, W) for an image, (Z, H, W) for a stack; 0 is background.

        ``is_stack`` None reads the axes by ``tskd.data.axes.image_axes`` (a channels-first
        (2, H, W) array is one 2-channel image); True or False takes the array as (Z, H, W[, C])
        or (H, W[, C]), channels last. ``contrast_limits`` (low, high) replaces the percentile
        normalisation of non-8-bit images (e.g. napari's limits). Raises ``TskdInputError``
        for an unreadable shape or an image over ``max_pixels``.
        """
        return self._run(image, is_stack, contrast_limits, lambda lg: lg.max(dim=1).indices)

    def segment_probabilities(
        self,
        image: np.ndarray,
        is_stack: bool | None = None,
        contrast_limits: ContrastLimits = None,
    ) -> np.ndarray:
        """Softmax probabilities float32: (C, H, W) for an image, (Z, C, H, W) for a stack."""
        return self._run(image, is_stack, contrast_limits, lambda lg: lg.softmax(dim=1))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel predictive entropy of (B, C, H, W) logits, normalised to [0, 1]."""
    logp = logits.log_softmax(dim=1)
    ent = -(logp.exp() * logp).sum(dim=1).mean(dim=(1, 2))
    return ent / math.log(logits.shape[1]) if logits.shape[1] > 1 else ent


def _disagreement(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """1 - Dice between label maps (B, H, W), averaged over foreground classes.

    A class absent from both maps agrees fully (Dice 1): ``tskd.inference.dice.dice_per_class``.
    """
    from tskd.inference.dice import dice_per_class

    return 1 - dice_per_class(a, b, num_classes).mean(dim=1)


def rank_for_annotation(
    segmenter: Segmenter,
    images: Sequence[np.ndarray] | np.ndarray,
    teacher_segmenter: Segmenter | None = None,
    contrast_limits: ContrastLimits = None,
) -> list[tuple[int, float]]:
    """Rank images (or the slices of a stack) by how much a label would help, most useful first.

    Score: the student's mean predictive entropy (normalised to [0, 1]) or, with a teacher,
    the teacher-student disagreement (1 - Dice of their label maps, mean over classes).
    Returns ``[(index, score), ...]`` sorted by score, highest first.
    """
    if isinstance(images, np.ndarray):
        ax = array_axes(images)
        images = ax.standard(images) if ax.is_stack else [ax.standard(images)]
    images = list(images)
    scores: list[float] = [0.0] * len(images)
    if teacher_segmenter is None:
        for start, lg in segmenter.iter_logits(images, contrast_limits):
            for k, v in enumerate(_entropy(lg).tolist()):
                scores[start + k] = v
    else:
        student = _labels_per_image(segmenter, images, contrast_limits)
        teacher = _labels_per_image(teacher_segmenter, images, contrast_limits)
        n = max(segmenter.num_classes, teacher_segmenter.num_classes)
        for i, (a, b) in enumerate(zip(student, teacher)):
            scores[i] = float(_disagreement(a[None], b[None], n)[0])
    return sorted(enumerate(scores), key=lambda t: (-t[1], t[0]))


def _labels_per_image(
    segmenter: Segmenter, images: Sequence[np.ndarray], contrast_limits: ContrastLimits
) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for _, lg in segmenter.iter_logits(images, contrast_limits):
        out.extend(lg.max(dim=1).indices.cpu())
    return out


def _output_path(out_dir: Path, stem: str, labels: np.ndarray) -> Path:
    png = labels.ndim == 2 and (labels.size == 0 or int(labels.max()) <= 255)
    return out_dir / f"{stem}{'.png' if png else '.tif'}"


def predict_paths(
    segmenter: Segmenter,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    input_folders: Sequence[str | Path] = (),
    log: Callable[[str], None] | None = None,
    label_values: Sequence[int] | None = None,
) -> list[Path]:
    """Segment image files and write their label maps to ``out_dir``, named by the input stem.

    Files are read by ``tskd.data.files.read_image_axes`` (axes metadata first, as training reads
    them) within ``segmenter.max_pixels``. ``label_values[k]`` is the label value written for
    class ``k`` (a model's ``label_values``, see ``tskd.data.label_map.LabelMap.from_meta``), so
    predictions carry the user's original ids (0, 1, 5 or 0/255); None writes class indices.
    2D label maps whose values fit in 8 bits are written as PNG, stacks and larger values as
    TIFF. ``progress(done, total)`` is called after each file; ``log(line)`` gets one line for
    each file that is tiled. Before anything is segmented, ``TskdInputError`` refuses an
    ``out_dir`` that is the folder of an input file or is, contains or is inside one of
    ``input_folders`` (the folders the user named), and, unless ``overwrite``, an ``out_dir``
    that already holds ``<stem>.png`` or ``<stem>.tif`` for an input; with ``overwrite`` the
    files replaced are named in a ``TskdWarning``. A folder named ``<stem>.png`` or
    ``<stem>.tif`` in ``out_dir`` is refused even with ``overwrite``, before anything is
    written.
    """
    import warnings

    from tskd.data import files, outputs
    from tskd.errors import TskdWarning

    paths = [Path(p) for p in inputs]
    stems = [files.stem(p) for p in paths]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise TskdInputError(f"several inputs share the name {dup[0]!r}; outputs would collide")
    table = None
    if label_values is not None:
        table = np.asarray(label_values, dtype=np.int64)
        if table.shape != (segmenter.num_classes,):
            raise TskdInputError(
                f"{len(table)} label values for a model of {segmenter.num_classes} classes; "
                "the model's meta.json label_values do not fit it"
            )
    out = outputs.check_output_folder(out_dir)
    outputs.check_not_input(out, [*input_folders, *paths])
    candidates = [out / f"{stem}{suffix}" for stem in stems for suffix in (".png", ".tif")]
    outputs.check_no_folders(candidates)  # a folder where a file goes: refused in every case
    if not overwrite:
        outputs.check_replace(candidates, False, out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    replaced: list[Path] = []
    for i, (path, stem) in enumerate(zip(paths, stems)):
        image, ax = files.read_image_axes(path, max_pixels=segmenter.max_pixels)
        note = segmenter.tiling_note(*ax.spatial_shape[-2:])
        if note and log is not None:
            log(f"{path.name}: {note}")
        labels = segmenter.segment(image, is_stack=ax.is_stack)
        if table is not None:
            labels = table[labels]
        target = _output_path(out, stem, labels)
        if target.exists():
            replaced.append(target)
        files.write_label(target, labels)
        written.append(target)
        if progress is not None:
            progress(i + 1, len(paths))
    if replaced:
        names = ", ".join(p.name for p in replaced[:10]) + (" ..." if len(replaced) > 10 else "")
        warnings.warn(TskdWarning(f"replaced {len(replaced)} existing file(s) in {out}: {names}"),
                      stacklevel=2)
    return written


def segmenter_from_bundle(
    folder: str | Path,
    device: str = "auto",
    tile_size: int | None = None,
    tile_overlap: int | None = None,
    batch_size: int = 8,
    max_pixels: int | None = None,
) -> tuple[Segmenter, dict[str, Any]]:
    """Load a student or teacher folder into a ``Segmenter``: ``(segmenter, meta)``.

    Tiles: ``tile_size`` None cuts them at the bundle's ``train_image_shape`` (the median size
    of the labelled images it was trained on), so a tile is resized to the model input by the
    same factor as a training image was; images up to ``TILE_ABOVE`` (1.5) times that size are
    resized whole. A bundle without the key (an earlier version) tiles at 1024 px, with a
    ``TskdWarning``. ``tile_overlap`` None is 64 px, at most a quarter of the tile's side.
    Raises ``CheckpointError`` for an unusable bundle, ``TskdInputError`` for tiles under
    ``MIN_TILE_SIZE`` px (a given ``tile_size`` or a tiny ``train_image_shape``).
    """
    from tskd.inference import bundle

    folder = Path(folder)
    model, meta = bundle.load_bundle(folder)
    size = bundle.input_size(meta)
    # checked by the bundle's schema (tskd.models.meta_schema) when it was loaded
    shape = meta.get("train_image_shape")
    trained = (int(shape[0]), int(shape[1])) if shape is not None else None
    kwargs: dict[str, Any] = {}
    if tile_size is not None:
        tile: int | tuple[int, int] = int(tile_size)
        kwargs["tile_origin"] = f"tile size {tile_size}"
    elif trained is not None:
        tile = trained
        kwargs.update(tile_above=TILE_ABOVE, tile_origin=f"the size of the model's training "
                      f"images, {trained[0]}x{trained[1]}")
    else:
        tile = DEFAULT_TILE_SIZE
        kwargs["tile_origin"] = f"{DEFAULT_TILE_SIZE} px, the default"
        warnings.warn(
            f"{folder}: the model does not record the size of the images it was trained on "
            f"(made by an earlier version), so large images are tiled at {DEFAULT_TILE_SIZE} px "
            "as before, whatever the training scale; retrain it, or pass --tile-size",
            TskdWarning, stacklevel=2,
        )
    side = min(tile) if isinstance(tile, tuple) else tile
    overlap = min(64, side // 4) if tile_overlap is None else int(tile_overlap)
    segmenter = Segmenter(model, size, int(meta["num_classes"]), device=device,
                          batch_size=batch_size, tile_size=tile, tile_overlap=overlap,
                          max_pixels=max_pixels, **kwargs)
    return segmenter, meta


def evaluate_folder(
    segmenter: Segmenter, folder: str | Path, label_map: LabelMap | None = None
) -> tuple[EvalReport, float]:
    """Segment every image of a labelled folder and score it: (``EvalReport``, ms per image).

    The one path by which the pipeline, the pretraining check and the benchmarks score a model.
    ``label_map`` is the model's class map (``LabelMap.from_meta(meta)``): the folder's labels
    are read with it (a value the model has no class for raises ``TskdInputError``) and every
    class of the model is scored, reported by label value. Without it, the folder's own map is
    used and must match the model's classes (as for models trained on classes 0..C-1).
    """
    import time

    from tskd.data import axes
    from tskd.data.label_map import LabelMap
    from tskd.data.samples import read_labelled_set
    from tskd.inference import metrics

    with axes.pixel_budget(segmenter.max_pixels):
        samples, lmap = read_labelled_set(folder, label_map=label_map)
    if label_map is None and lmap.is_identity and lmap.num_classes < segmenter.num_classes:
        # a model of classes 0..C-1 on a folder that shows only some of them
        lmap = LabelMap.identity(segmenter.num_classes, None, lmap.ignore_label)
    if lmap.num_classes != segmenter.num_classes:
        raise TskdInputError(
            f"the labels in {folder} are read as {lmap.num_classes} classes "
            f"{lmap.describe()} but the model predicts {segmenter.num_classes}; evaluate with "
            "the model's class map (its meta.json label_values)"
        )
    t0 = time.perf_counter()
    preds = [segmenter.segment(s.image, is_stack=False) for s in samples]
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(samples))
    report = metrics.evaluate(
        [lmap.decode(p) for p in preds], [lmap.decode(s.label) for s in samples],
        [s.name for s in samples], classes=list(lmap.values[1:]),
        class_names=dict(zip(lmap.values, lmap.names)), ignore_label=lmap.ignore_label,
    )
    return report, ms
