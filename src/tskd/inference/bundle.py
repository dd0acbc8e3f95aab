"""Model bundles: a folder with weights (safetensors) and ``meta.json``, and ONNX export.

A student bundle holds ``model.safetensors`` and ``meta.json`` with kind "student", the
``StudentConfig`` (under "student"), num_classes, class_names, input_size, the tskd version and
metrics. A teacher folder (kind "teacher") holds a LoRA adapter and is loaded by
``tskd.models.lora.load_teacher``; ``load_bundle`` opens either, so prediction does not care which.
Files are written to a temporary name and renamed, so an interrupted save never leaves a
half-written bundle under the real name.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tskd import atomic
from tskd.errors import CheckpointError, TskdError
from tskd.temp_files import temp_name

WEIGHTS = "model.safetensors"
META = "meta.json"


def save_student(student: nn.Module, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write a student bundle: ``folder/model.safetensors`` and ``folder/meta.json``.

    The student's own config, class count and image size override any given in ``meta``;
    other keys of ``meta`` (class_names, metrics, stage results) are kept. Both files are
    written in full before either replaces its old version (``tskd.atomic.write_files``).

    Args:
        student: the model to save (a ``tskd.models.student.Student``: its ``cfg``,
            ``num_classes`` and ``image_size`` attributes go into the meta (the latter as
            ``input_size``); its state dict,
            moved to the CPU, into the weights).
        folder: the bundle folder; created if missing, existing files replaced.
        meta: further ``meta.json`` entries (JSON-serialisable); ``class_names`` defaults to
            None and ``metrics`` to ``{}``.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        DiskFullError: the disk is full; the previous bundle is left as it was.
        TskdError: the folder cannot be written (permission denied, read-only).
    """
    import tskd

    folder = Path(folder)
    cfg = getattr(student, "cfg", None)
    info = dict(meta)
    info.pop("image_size", None)  # the one name of the input size is "input_size"
    info.update(
        kind="student",
        student=asdict(cfg) if is_dataclass(cfg) else info.get("student"),
        num_classes=int(getattr(student, "num_classes", info.get("num_classes", 0))),
        input_size=int(getattr(student, "image_size", info.get("input_size", 0))),
        tskd_version=tskd.__version__,
    )
    info.setdefault("class_names", None)
    info.setdefault("metrics", {})
    state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    atomic.write_files({
        folder / WEIGHTS: atomic.safetensors_bytes(state, {"format": "pt", "kind": "student"}),
        folder / META: atomic.json_bytes(info),
    })
    return folder


def _param_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (what an exported file roughly needs)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _bundle_dir(folder: str | Path) -> Path:
    """Accept the folder or a file inside it (meta.json, the weights)."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"model folder not found: {folder}")
    return path


def read_bundle_meta(folder: str | Path) -> dict[str, Any]:
    """Read a bundle's ``meta.json`` as a dict, checked against its kind's schema.

    Nothing is built before that check.

    Args:
        folder: the model folder, or a file inside it (``meta.json``, the weights).

    Returns:
        The parsed ``meta.json``; ``meta["kind"]`` is "student" or "teacher".

    Raises:
        CheckpointError: the folder does not exist.
        ModelMetaError: (a ``CheckpointError`` and a ``TskdInputError``) naming the file and
            the key, when ``meta.json`` is missing, larger than 1 MB, not JSON, not of kind
            student/teacher or outside the schema of ``tskd.models.meta_schema``.
    """
    from tskd.models.meta_file import read_meta_file
    from tskd.models.meta_schema import validate_meta

    path = _bundle_dir(folder) / META
    meta = read_meta_file(path)
    validate_meta(meta, path)
    return meta


def load_student(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student from its bundle, on the CPU in eval mode.

    ``meta.json`` is checked first (``tskd.models.meta_schema.validate_student_meta``: types,
    bounds, parameter count), so no model is built from a description outside the schema.

    Args:
        folder: the student's folder, or a file inside it.

    Returns:
        ``(student, meta)``: the ``tskd.models.student.Student`` and its ``meta.json`` as a dict.

    Raises:
        ModelMetaError: ``meta.json`` is missing, unreadable or outside the student schema.
        CheckpointError: the folder does not exist, holds a teacher, or its weights are
            missing, truncated, not safetensors or do not fit the described architecture.
    """
    from safetensors.torch import load_file

    from tskd.models.meta_file import read_meta_file
    from tskd.models.meta_schema import validate_student_meta
    from tskd.models.student import build_student

    folder = _bundle_dir(folder)
    meta = read_meta_file(folder / META)
    if meta.get("kind") == "teacher":
        raise CheckpointError(f"{folder} holds a teacher, not a student")
    info = validate_student_meta(meta, folder / META)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"student weights {weights} are missing")
    student = build_student(info.student, info.num_classes, info.image_size)
    try:
        state = load_file(str(weights))
    except Exception:  # safetensors raises its own error type for truncated/foreign files
        raise CheckpointError(
            f"student weights {weights} are truncated or not a safetensors file"
        ) from None
    try:
        student.load_state_dict(state, strict=True)
    except RuntimeError:
        raise CheckpointError(
            f"student weights {weights} do not fit the architecture described in {META}"
        ) from None
    return student.eval(), meta


def input_size(meta: dict[str, Any]) -> int:
    """Give the side in pixels of the square images a bundle's model takes.

    The one reader of that field: every bundle calls it ``input_size``; student bundles of
    earlier versions called it ``image_size``, which is read too, so they still open.

    Args:
        meta: a bundle's ``meta.json`` as read by ``read_bundle_meta`` or ``load_bundle``.

    Returns:
        S in the model's input (B, 3, S, S), in pixels.

    Raises:
        CheckpointError: the meta has neither key (``read_bundle_meta`` refuses such a bundle
            first).
    """
    size = meta.get("input_size") or meta.get("image_size")
    if size is None:
        raise CheckpointError("the model's meta.json gives no input size (input_size)")
    return int(size)


def load_bundle(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Open a student bundle or an adapted-teacher folder, so prediction need not ask which.

    Both kinds of meta have "num_classes" and "input_size" (student bundles of earlier
    versions: "image_size"; ``input_size`` reads either).

    Args:
        folder: the model folder, or a file inside it.

    Returns:
        ``(model, meta)``: the model in eval mode, mapping float32 (B, 3, S, S) in [0, 1] to
        logits (B, C, S, S); its ``meta.json`` as a dict.

    Raises:
        ModelMetaError: ``meta.json`` is missing, unreadable or outside its kind's schema.
        CheckpointError: the folder does not exist, or its weights or adapter are missing,
            damaged or do not fit (``load_student``, ``tskd.models.lora.load_teacher``).
    """
    folder = _bundle_dir(folder)
    meta = read_bundle_meta(folder)
    if meta["kind"] == "student":
        return load_student(folder)
    from tskd.models import lora

    return lora.load_teacher(folder).eval(), meta


def export_onnx(model: nn.Module, path: str | Path, input_size: int, opset: int = 17) -> float:
    """Export ``model`` to ONNX with a dynamic batch axis and check it with onnxruntime.

    Uses the TorchScript exporter, which needs no extra packages (the dynamo exporter needs
    onnxscript). The model is traced on the CPU in eval mode and moved back to its device and
    mode afterwards; the file is written under a temporary name and renamed.

    Args:
        model: maps float32 (B, 3, S, S) in [0, 1] to logits (B, C, S, S).
        path: the ``.onnx`` file to write; its folder is created.
        input_size: S, the model's input side in pixels (``input_size(meta)``).
        opset: the ONNX operator-set version given to ``torch.onnx.export``.

    Returns:
        The largest absolute difference between onnxruntime's and PyTorch's logits on a
        random batch of 3 (another size than the traced batch of 2, which also checks the
        dynamic batch axis).

    Raises:
        TskdError: onnxruntime's output differs in shape, or by more than 1e-3 (the check's
            tolerance); or the folder cannot be written.
        DiskFullError: the disk is full.
    """
    path = Path(path)
    atomic.mkdir(path.parent)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model = model.eval().cpu()
    gen = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 3, input_size, input_size, generator=gen)
    check = torch.rand(3, 3, input_size, input_size, generator=gen)
    tmp = temp_name(path)
    try:
        with warnings.catch_warnings(), atomic.disk_errors(path.parent, _param_bytes(model)):
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, path)
        with torch.inference_mode():
            expected = model(check).numpy()
    finally:
        tmp.unlink(missing_ok=True)
        model.to(device).train(was_training)
    return _check_onnx(path, check, expected)


def _check_onnx(path: Path, batch: torch.Tensor, expected: np.ndarray) -> float:
    """The largest absolute difference of onnxruntime's logits on ``batch`` from ``expected``.

    Raises:
        TskdError: the shapes differ, or the difference is over 1e-3.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": batch.numpy()})
    if got.shape != expected.shape:
        raise TskdError(
            f"ONNX model {path} returns shape {got.shape}, PyTorch {expected.shape}"
        )
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= 1e-3:
        raise TskdError(
            f"ONNX model {path} differs from PyTorch by {diff:.2e} (> 1e-3); do not use it"
        )
    return diff
