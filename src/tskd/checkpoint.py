"""A stage's resumable training state, written and read as one crash-safe, verified unit.

``tskd.engine.train`` writes a ``Checkpoint`` at every epoch end and on cancel and reads it
back on resume. It holds only trainable parameters and running statistics (safetensors), the
optimiser, scheduler and random-stream states (``torch.save``, read back with
``weights_only=True`` through ``tskd.atomic.load_weights_only``), a JSON of where training
stood, state a callback keeps beside the model (``CheckpointExtra``, e.g. the diffusion model's
EMA) and a manifest with the sha256 of each file, written last. The unit is written in full
beside the current one and swapped in by renames (see ``Checkpoint``), so a kill or a full disk
at any instant leaves a complete checkpoint, and files of two saves are never loaded together.

``rng_state`` and ``set_rng_state`` capture and restore every global random stream a training
step may draw from, so a checkpoint written mid-epoch resumes with the draws an uninterrupted
run would have made.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tskd import atomic
from tskd.errors import CheckpointError, TskdError, TskdWarning
from tskd.temp_files import fsync_dir, owner_pid, pid_alive

CheckpointExtra = tuple[dict[str, torch.Tensor], dict[str, str]]
"""State a callback keeps in the checkpoint: tensors by name, and string metadata."""

_BUFFER = "buffer::"  # prefix of a running statistic's name in ``trainable.safetensors``


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters training updates.

    Args:
        model: any module.

    Returns:
        ``model``'s parameters with ``requires_grad=True``, by their ``named_parameters`` name.
    """
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point and counter buffers that training may update (BatchNorm statistics)."""
    return {n: b for n, b in model.named_buffers() if "running_" in n or "num_batches" in n}


def rng_state() -> dict[str, Any]:
    """Every global random stream a training step may draw from, as they are now.

    Returns:
        ``{"torch": ByteTensor, "numpy": (name, int64 keys tensor, pos, has_gauss, gauss),
        "python": random.getstate()}`` and ``"cuda"`` (one ByteTensor per GPU) once CUDA is
        initialised; only tensors, strings and numbers, so ``torch.load(weights_only=True)``
        reads it back.
    """
    import random

    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global random streams ``rng_state`` captured.

    Args:
        state: what ``rng_state`` returned (possibly after a save and a load); its ``"cuda"``
            entry is ignored when no CUDA GPU is available.
    """
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _extra_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (8-byte header length, JSON header)."""
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return dict(header.get("__metadata__") or {})


class Checkpoint:
    """The resumable state of a stage in ``folder``, written and read as one unit.

    Layout: ``folder/ckpt/`` holds ``trainable.safetensors`` (trainable parameters and running
    statistics), ``optimizer.pt`` (optimiser, scheduler and random-stream states; read back with
    ``weights_only=True``), ``state.json`` (where training stood), ``extra.safetensors`` (state a
    task keeps beside the model, e.g. an EMA; optional) and ``manifest.json`` (sha256 and size of
    each of those files), written last. A save writes a new ``ckpt.tmp-<pid>-<random>/`` in full
    (fsync'ed), renames the current ``ckpt`` to ``ckpt.old``, the new one to ``ckpt``, and only
    then removes ``ckpt.old``; so at any instant ``ckpt`` or ``ckpt.old`` is complete, and a
    reader never sees files of two saves. ``read`` verifies the manifest and falls back from
    ``ckpt`` to ``ckpt.old``; a checkpoint that does not verify is discarded with a warning.
    Leftovers of a killed save (``ckpt.tmp-*`` of a process that no longer runs, and the ``tmp/``
    folder and loose files of the earlier layout) are removed by the next save, read or clear.

    Args:
        folder: the stage's checkpoint folder (``run/checkpoints/<stage>/``); created by the
            first save. Files in it that are not the checkpoint's (``history.json``) are left
            alone.
    """

    CURRENT = "ckpt"
    OLD = "ckpt.old"
    TMP_PREFIX = "ckpt.tmp-"
    MANIFEST = "manifest.json"
    PARAMS = "trainable.safetensors"
    OPTIM = "optimizer.pt"
    STATE = "state.json"
    EXTRA = "extra.safetensors"
    _REQUIRED = (PARAMS, OPTIM, STATE)
    _LEGACY = (PARAMS, OPTIM, STATE)  # the earlier layout: loose files + a "tmp" folder

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.current = folder / self.CURRENT
        self.old = folder / self.OLD

    # -- housekeeping
    def _remove_leftovers(self) -> None:
        """Remove what killed saves left (only the project's own names, never other files)."""
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            pid = owner_pid(entry.name, self.TMP_PREFIX)
            if pid is not None and entry.is_dir() and (
                    pid == os.getpid() or not pid_alive(pid)):
                shutil.rmtree(entry, ignore_errors=True)
        legacy_tmp = self.folder / "tmp"
        if legacy_tmp.is_dir() and all(p.name in self._LEGACY for p in legacy_tmp.iterdir()):
            shutil.rmtree(legacy_tmp, ignore_errors=True)

    def _remove_legacy_files(self) -> None:
        for name in self._LEGACY:
            (self.folder / name).unlink(missing_ok=True)

    # -- writing
    def save(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict,
             rng: dict[str, Any] | None = None, extra: CheckpointExtra | None = None) -> None:
        """Write a new checkpoint as one unit (see the class docstring).

        Args:
            model: the unwrapped model; its trainable parameters (as float32) and running
                statistics are saved.
            optimizer: a ``torch.optim`` optimiser (its ``state_dict`` is saved).
            scheduler: a ``torch.optim.lr_scheduler`` scheduler (its ``state_dict`` is saved).
            state: where training stood, JSON-serialisable (``state.json``).
            rng: the random streams to restore on resume (``rng_state``); None saves none.
            extra: callbacks' state (``extra.safetensors``); None writes no such file.

        Raises:
            DiskFullError: "no space left on <folder>, N MB needed"; the previous checkpoint is
                kept as it was.
            TskdError: the folder is not writable; the previous checkpoint is kept as it was.
        """
        self._write(self._encode(model, optimizer, scheduler, state, rng, extra))

    def _encode(self, model: nn.Module, optimizer: Any, scheduler: Any, state: dict,
                rng: dict[str, Any] | None, extra: CheckpointExtra | None) -> dict[str, bytes]:
        """The checkpoint's files (name -> bytes), the manifest last."""
        tensors = {n: p.detach().float().cpu().contiguous()
                   for n, p in trainable_parameters(model).items()}
        # running statistics (e.g. BatchNorm) change during training too: keep them for resume
        tensors |= {_BUFFER + n: b.detach().cpu().contiguous() for n, b in _buffers(model).items()}
        optim = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        if rng is not None:
            optim["rng"] = rng
        files = {
            self.PARAMS: atomic.safetensors_bytes(tensors),
            self.OPTIM: atomic.torch_bytes(optim),
            self.STATE: atomic.json_bytes(state),
        }
        if extra is not None:
            ex_tensors, ex_meta = extra
            files[self.EXTRA] = atomic.safetensors_bytes(
                {k: v.detach().cpu().contiguous() for k, v in ex_tensors.items()}, ex_meta
            )
        manifest = {
            "format": 1,
            "files": {n: {"sha256": hashlib.sha256(d).hexdigest(), "bytes": len(d)}
                      for n, d in files.items()},
        }
        # written last: its presence seals the rest
        files[self.MANIFEST] = atomic.json_bytes(manifest)
        return files

    def _write(self, files: dict[str, bytes]) -> None:
        """Write ``files`` into a fresh folder, then swap it in (see the class docstring)."""
        total = sum(len(d) for d in files.values())
        tmp = self.folder / f"{self.TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._remove_leftovers()
            tmp.mkdir()
            for name, data in files.items():
                atomic._write_file(tmp / name, data)
            fsync_dir(tmp)
            if self.current.is_dir():
                if self.old.is_dir():  # left by a save killed after its swap: outdated
                    shutil.rmtree(self.old)
                os.replace(self.current, self.old)
            os.replace(tmp, self.current)
            fsync_dir(self.folder)
        except OSError as exc:
            err = atomic.user_fixable_error(exc, self.folder, total)
            if err is None:
                raise
            raise err from None
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.old, ignore_errors=True)
        self._remove_legacy_files()

    # -- reading
    def _verified(self, folder: Path) -> tuple[dict[str, bytes] | None, str]:
        """The files of the checkpoint in ``folder`` if its manifest verifies, else a reason."""
        try:
            manifest = json.loads((folder / self.MANIFEST).read_bytes())
            listed = manifest["files"]
            if not isinstance(listed, dict):
                raise TypeError
        except FileNotFoundError:
            return None, "it has no manifest (the save was interrupted)"
        except (OSError, ValueError, KeyError, TypeError):
            return None, "its manifest is unreadable"
        missing = [n for n in self._REQUIRED if n not in listed]
        if missing:
            return None, f"its manifest lacks {', '.join(missing)}"
        files: dict[str, bytes] = {}
        for name, entry in listed.items():
            if "/" in name or "\\" in name or name.startswith("."):
                return None, f"its manifest names an unexpected file {name!r}"
            try:
                data = (folder / name).read_bytes()
            except OSError:
                return None, f"{name} is missing"
            if not isinstance(entry, dict) or hashlib.sha256(data).hexdigest() != entry.get(
                    "sha256"):
                return None, f"{name} does not match its sha256 in the manifest"
            files[name] = data
        return files, ""

    def read(self) -> dict[str, bytes] | None:
        """The newest checkpoint that verifies.

        A checkpoint that does not verify is skipped with a ``TskdWarning`` naming why; files
        of the earlier layout (no manifest) cannot be verified and are skipped the same way.
        Leftovers of killed saves are removed first.

        Returns:
            The checkpoint's files (name -> bytes), from ``ckpt/`` or else ``ckpt.old/``; None
            when neither verifies (or there is no checkpoint).
        """
        self._remove_leftovers()
        for folder in (self.current, self.old):
            if not folder.is_dir():
                continue
            files, why = self._verified(folder)
            if files is not None:
                return files
            warnings.warn(
                f"discarding the checkpoint in {folder}: {why}; resuming from an older one or "
                "from the start", TskdWarning, stacklevel=3,
            )
        if any((self.folder / n).is_file() for n in self._LEGACY):
            warnings.warn(
                f"the checkpoint in {self.folder} was written by an earlier version without a "
                "manifest and cannot be verified; training starts from the beginning",
                TskdWarning, stacklevel=3,
            )
        return None

    def _decode(self, files: dict[str, bytes]
                ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict, CheckpointExtra | None]:
        """Parse verified files: ``(tensors, optimiser file's dict, state, extra or None)``."""
        from safetensors.torch import load as load_safetensors

        try:
            tensors = load_safetensors(files[self.PARAMS])
            optim = atomic.load_weights_only(self.current / self.OPTIM, "training checkpoint",
                                             data=files[self.OPTIM])
            state = json.loads(files[self.STATE])
            extra = None
            if self.EXTRA in files:
                data = files[self.EXTRA]
                extra = (load_safetensors(data), _extra_metadata(data))
        except CheckpointError:  # already one sentence naming the file
            raise
        except Exception as exc:  # verified bytes that still do not parse: a foreign writer
            raise TskdError(
                f"cannot resume: checkpoint in {self.current} is damaged ({exc}); start again "
                "without resume"
            ) from None
        return tensors, optim, state, extra

    def extra_metadata(self) -> dict[str, str] | None:
        """The string metadata callbacks kept in the newest checkpoint that verifies (``read``).

        Returns:
            That metadata ({}: no callback state); None when there is no checkpoint.

        Raises:
            TskdError: the verified extra file's header does not parse.
        """
        if (files := self.read()) is None:
            return None
        try:
            return _extra_metadata(files[self.EXTRA]) if self.EXTRA in files else {}
        except ValueError as exc:  # verified bytes that do not parse: a foreign writer
            raise TskdError(f"cannot resume: checkpoint in {self.current} is damaged ({exc}); "
                            "start again without resume") from None

    def load(self, files: dict[str, bytes], model: nn.Module, optimizer: Any, scheduler: Any
             ) -> tuple[dict, dict[str, Any] | None, CheckpointExtra | None]:
        """Restore a verified checkpoint into the model, optimiser and scheduler.

        Args:
            files: what ``read`` returned.
            model: the unwrapped model, with the trainable parameters the checkpoint was saved
                from; they and its running statistics are overwritten in place.
            optimizer: the optimiser to restore (``load_state_dict``).
            scheduler: the scheduler to restore (``load_state_dict``).

        Returns:
            ``(state, rng, extra)``: the saved ``state.json``, the random streams saved with it
            (for ``set_rng_state``) or None, and the callbacks' state or None.

        Raises:
            CheckpointError: ``optimizer.pt`` holds objects other than tensors and plain data.
            TskdError: the files do not parse, or the checkpoint's trainable parameters are not
                the model's (another model or configuration).
        """
        tensors, optim, state, extra = self._decode(files)
        params = trainable_parameters(model)
        buffers = {n[len(_BUFFER):]: t for n, t in tensors.items() if n.startswith(_BUFFER)}
        tensors = {n: t for n, t in tensors.items() if not n.startswith(_BUFFER)}
        if set(tensors) != set(params):
            raise TskdError(
                f"cannot resume: checkpoint in {self.folder} belongs to a different model or "
                "configuration (its trainable parameters differ)"
            )
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(tensors[n].to(p.dtype))
            for n, b in _buffers(model).items():
                if n in buffers:
                    b.copy_(buffers[n].to(b.dtype))
        optimizer.load_state_dict(optim["optimizer"])
        scheduler.load_state_dict(optim["scheduler"])
        return state, optim.get("rng"), extra

    def clear(self) -> None:
        """Remove every checkpoint file (training finished); other files stay."""
        for folder in (self.current, self.old):
            shutil.rmtree(folder, ignore_errors=True)
        self._remove_leftovers()
        self._remove_legacy_files()


def clear_checkpoint(checkpoint_dir: str | Path) -> None:
    """Remove a stage's checkpoint once its artefact is written.

    See ``tskd.engine.train``'s ``keep_checkpoint``. Only the checkpoint's own folders and
    leftovers go; other files in the folder (``history.json``) stay. A missing folder is no
    error.

    Args:
        checkpoint_dir: the folder given to ``train`` as ``checkpoint_dir``.
    """
    folder = Path(checkpoint_dir)
    if folder.is_dir():
        Checkpoint(folder).clear()
