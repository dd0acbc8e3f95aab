"""Inference: label maps and class probabilities for 2D images, stacks and large images.

Every input goes the same way: ``tskd.data.to_float_rgb`` (gray, RGB, 16-bit, multi-channel ->
float RGB in [0, 1]), bilinear resize to the model's square input, forward, bilinear resize of
the *logits* back to the input's height and width, then argmax (or softmax). Stacks (Z, H, W[, C])
run slice by slice in batches. Images larger than ``tile_size`` on either side run in
overlapping tiles; each tile's logits are weighted by a window that is flat in the middle and
falls smoothly (sin^2) across the overlap on sides shared with another tile, and the weighted sum
is normalised, so no seams appear where tiles meet.

All the work after the image is read stays in torch on the model's device, so on a 256x256 image
pre- and post-processing cost about a millisecond next to the model's forward
(benchmarks/inference_speed.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tskd.errors import TskdInputError

if TYPE_CHECKING:
    from tskd.label_policy import LabelMap
    from tskd.metrics import EvalReport

ContrastLimits = tuple[float, float] | None


def is_stack_guess(image: np.ndarray, is_stack: bool | None = None) -> bool:
    """Whether ``image`` is a stack: 4D always, 3D unless its last axis (<= 4) is channels."""
    nd = np.ndim(image)
    if is_stack is None:
        if nd == 2:
            return False
        if nd == 4:
            return True
        if nd == 3:
            return np.shape(image)[-1] > 4
    elif is_stack and nd in (3, 4):
        return True
    elif not is_stack and nd in (2, 3):
        return False
    kind = {None: "an image or a stack", True: "a stack", False: "a 2D image"}[is_stack]
    raise TskdInputError(
        f"cannot read an array of shape {np.shape(image)} as {kind}; expected (H, W[, C]) "
        "or (Z, H, W[, C])"
    )


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
    """Runs a segmentation model (float (B, 3, S, S) in [0, 1] -> logits (B, C, S, S)) on arrays."""

    def __init__(
        self,
        model: nn.Module,
        input_size: int,
        num_classes: int,
        device: str = "auto",
        batch_size: int = 8,
        tile_size: int = 1024,
        tile_overlap: int = 64,
    ) -> None:
        from tskd.engine import resolve_device

        if input_size < 1 or num_classes < 1 or batch_size < 1:
            raise TskdInputError(
                f"input_size, num_classes and batch_size must be positive, got {input_size}, "
                f"{num_classes}, {batch_size}"
            )
        if tile_size < 2 or not 0 <= tile_overlap < tile_size:
            raise TskdInputError(
                f"tile_overlap ({tile_overlap}) must be in [0, tile_size) (tile_size {tile_size})"
            )
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.input_size = int(input_size)
        self.num_classes = int(num_classes)
        self.batch_size = int(batch_size)
        self.tile_size = int(tile_size)
        self.tile_overlap = int(tile_overlap)

    # -- low level -------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float on device -> logits (B, C, h, w): resize in, model, resize out."""
        h, w = x.shape[-2:]
        s = self.input_size
        if (h, w) != (s, s):
            # as tskd.data.image_to_tensor does for training, so both see the same pixels
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
        from tskd.data import to_float_rgb

        rgb = np.asarray(to_float_rgb(image, contrast_limits), dtype=np.float32)
        return torch.from_numpy(rgb).to(self.device).permute(2, 0, 1)

    @torch.inference_mode()
    def _tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (1, C, H, W) of a large image (3, H, W) from overlapping, blended tiles."""
        _, H, W = x.shape
        th, tw = min(self.tile_size, H), min(self.tile_size, W)
        stride = self.tile_size - self.tile_overlap
        ys, xs = _tile_starts(H, th, stride), _tile_starts(W, tw, stride)
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
        return max(h, w) > self.tile_size

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
        if is_stack_guess(image, is_stack):
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

        ``is_stack`` None guesses (see ``is_stack_guess``); ``contrast_limits`` (low, high)
        replaces the percentile normalisation of non-8-bit images (e.g. napari's limits).
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

    A class absent from both maps agrees fully (Dice 1), as in ``tskd.metrics``.
    """
    dices = []
    for c in range(1, max(num_classes, 2)):
        pa, pb = a == c, b == c
        inter = (pa & pb).sum(dim=(1, 2)).float()
        total = (pa.sum(dim=(1, 2)) + pb.sum(dim=(1, 2))).float()
        dices.append(torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)))
    return 1 - torch.stack(dices).mean(dim=0)


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
    if isinstance(images, np.ndarray) and not is_stack_guess(images):
        images = [images]
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
    label_values: Sequence[int] | None = None,
) -> list[Path]:
    """Segment image files and write their label maps to ``out_dir``, named by the input stem.

    ``label_values[k]`` is the label value written for class ``k`` (a model's
    ``label_values``, see ``tskd.label_policy.LabelMap.from_meta``), so predictions carry the
    user's original ids (0, 1, 5 or 0/255); None writes class indices. 2D label maps whose
    values fit in 8 bits are written as PNG, stacks and larger values as TIFF.
    ``progress(done, total)`` is called after each file.
    """
    from tskd import io

    out = Path(out_dir)
    paths = [Path(p) for p in inputs]
    stems = [io.stem(p) for p in paths]
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
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, (path, stem) in enumerate(zip(paths, stems)):
        labels = segmenter.segment(io.read_image(path))
        if table is not None:
            labels = table[labels]
        target = _output_path(out, stem, labels)
        io.write_label(target, labels)
        written.append(target)
        if progress is not None:
            progress(i + 1, len(paths))
    return written



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

    from tskd import io, metrics
    from tskd.label_policy import LabelMap

    samples, lmap = io.read_labelled_set(folder, label_map=label_map)
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
