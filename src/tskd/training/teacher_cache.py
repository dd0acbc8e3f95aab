"""Teacher outputs on the transfer set, computed once and kept on disk (fp16 safetensors).

The teacher (SAM) costs 20-100x the student per image, and distillation shows it every transfer
image once per epoch. Its outputs do not change while the teacher and the image do not, so they
are stored one file per image under a key that hashes exactly those: the image as the teacher
sees it (after resizing to the teacher's input size), the teacher's id and the names of the stored
outputs. A new teacher, another input size or other layers give other keys, so stale outputs are
never read; the same run resumed, or another run with the same teacher, reuses them.

Values are stored in fp16 (half the disk and I/O of fp32; the features are normalised before the
loss, so fp16's 3 significant digits are ample), and every read returns the stored fp16 values,
so a freshly computed entry and a cached one give bit-identical training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tskd.errors import TskdError

_FORMAT = b"tskd-teacher-cache-v1"
_FP16_MAX = 65504.0

ComputeFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class TeacherCache:
    """One safetensors file per (image, teacher, outputs); counts ``hits`` and ``misses``.

    ``layers`` names what is stored (e.g. ``["neck", "logits"]``) and is part of every key; the
    entries a ``compute_fn`` returns must include all of them.

    Args:
        cache_dir: the cache folder; created if missing.
        teacher_id: identifies the teacher (``tskd.models.lora.teacher_id``: adapter, base
            checkpoint and input size); part of every key.
        layers: the names of the stored outputs.

    Raises:
        TskdError: ``cache_dir`` cannot be created.
    """

    def __init__(
        self, cache_dir: str | Path, teacher_id: str, layers: Sequence[str] = ()
    ) -> None:
        self.dir = Path(cache_dir)
        self.teacher_id = str(teacher_id)
        self.layers = list(layers)
        self.hits = 0  # images served from disk
        self.misses = 0  # images the teacher had to compute
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TskdError(f"cannot create the teacher cache folder {self.dir}: {exc}") from None

    def key(self, image: torch.Tensor) -> str:
        """Key one teacher-input image: sha256 of it with the teacher id and stored layer names.

        Args:
            image: (C, H, W), uint8 or float (hashed as float32), as the teacher sees it.

        Returns:
            64 hex digits; also the cache file's stem.
        """
        arr = image.detach().cpu().contiguous()
        if arr.is_floating_point():
            arr = arr.float()
        h = hashlib.sha256(_FORMAT)
        parts = (self.teacher_id, "\0".join(self.layers), str(arr.dtype), str(tuple(arr.shape)))
        for part in parts:
            h.update(part.encode())
            h.update(b"\0")
        h.update(arr.numpy().tobytes())
        return h.hexdigest()

    def path(self, key: str) -> Path:
        """Return the cache file of one entry.

        Args:
            key: the entry's key (``TeacherCache.key``: 64 hex digits).

        Returns:
            ``<cache_dir>/<key>.safetensors`` (it need not exist).
        """
        return self.dir / f"{key}.safetensors"

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        """Read the stored outputs for ``key``; counts a hit when found.

        Args:
            key: from ``key``.

        Returns:
            fp16 CPU tensors by name, or None if the file is absent, unreadable (it will be
            rewritten) or lacks one of ``layers``.
        """
        from safetensors.torch import load_file

        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(str(path))
        except Exception:  # truncated or damaged file: treat as absent, it will be rewritten
            return None
        if any(name not in tensors for name in self.layers):
            return None
        self.hits += 1
        return tensors

    def put(self, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Store one image's outputs atomically (temp file + rename).

        Values are clamped to fp16's range (+-65504) and stored as fp16.

        Args:
            key: from ``key``.
            tensors: the image's outputs by name, without the batch axis; all of ``layers``.

        Returns:
            What was stored: fp16 CPU tensors by name, the values ``get`` will return.

        Raises:
            TskdError: an output of ``layers`` is missing.
            DiskFullError: the disk is full (the message names the cache folder).
        """
        from tskd import atomic

        missing = [name for name in self.layers if name not in tensors]
        if missing:
            raise TskdError(f"the teacher did not return the outputs {missing} for the cache")
        stored = {
            name: t.detach().float().clamp(-_FP16_MAX, _FP16_MAX).half().cpu().contiguous()
            for name, t in tensors.items()
        }
        with atomic.own_files():  # each rank of a job writes the entries it computed
            atomic.save_safetensors(self.path(key), stored, {"teacher_id": self.teacher_id})
        return stored

    def get_or_compute(
        self,
        images: torch.Tensor,
        compute_fn: ComputeFn,
        keys: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Outputs for a batch of teacher-input images, read from disk or computed and stored.

        Images found on disk are read; the others go to ``compute_fn`` in one batch and are
        stored, so every returned value is the stored fp16 one.

        Args:
            images: (B, C, H, W) teacher inputs.
            compute_fn: maps (b, C, H, W) images to a dict of tensors with the batch on dim 0.
            keys: the images' keys when already known (skips re-hashing).

        Returns:
            fp16 CPU tensors by name, each (B, ...) in the order of ``images``; ``{}`` for no
            images.

        Raises:
            TskdError: ``compute_fn`` did not return every output of ``layers``.
            DiskFullError: the cache's disk is full.
        """
        if keys is None:
            keys = [self.key(img) for img in images]
        if not keys:
            return {}
        found: dict[int, dict[str, torch.Tensor]] = {}
        for i, k in enumerate(keys):
            entry = self.get(k)
            if entry is not None:
                found[i] = entry
        todo = [i for i in range(len(keys)) if i not in found]
        if todo:
            out = compute_fn(images[todo])
            for j, i in enumerate(todo):
                found[i] = self.put(keys[i], {name: t[j] for name, t in out.items()})
            self.misses += len(todo)
        names = list(found[0])
        return {name: torch.stack([found[i][name] for i in range(len(keys))]) for name in names}
