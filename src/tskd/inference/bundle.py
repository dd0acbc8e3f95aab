"""Model bundles: a folder with weights (safetensors) and ``meta.json``, and ONNX export.

A student bundle holds ``model.safetensors`` and ``meta.json`` with kind "student", the
``StudentConfig`` (under "student"), num_classes, class_names, image_size, the tskd version and
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

WEIGHTS = "model.safetensors"
META = "meta.json"


def save_student(student: nn.Module, folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/meta.json``; returns the folder.

    The student's own config, class count and image size override any given in ``meta``;
    other keys of ``meta`` (class_names, metrics, stage results) are kept. Both files are
    written in full before either replaces its old version (``tskd.atomic.write_files``); a
    full disk raises ``DiskFullError`` and leaves the previous bundle as it was.
    """
    import tskd

    folder = Path(folder)
    cfg = getattr(student, "cfg", None)
    info = dict(meta)
    info.update(
        kind="student",
        student=asdict(cfg) if is_dataclass(cfg) else info.get("student"),
        num_classes=int(getattr(student, "num_classes", info.get("num_classes", 0))),
        image_size=int(getattr(student, "image_size", info.get("image_size", 0))),
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
    """A bundle's ``meta.json`` as a dict, checked against its kind's schema.

    Raises ``ModelMetaError`` (a ``CheckpointError`` and a ``TskdInputError``) naming the file
    and the key when it is missing, larger than 1 MB, not JSON, not of kind student/teacher or
    outside the schema of ``tskd.models.meta_schema``; nothing is built before that check.
    """
    from tskd.models.meta_schema import read_meta_file, validate_meta

    path = _bundle_dir(folder) / META
    meta = read_meta_file(path)
    validate_meta(meta, path)
    return meta


def load_student(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student from its bundle: ``(Student in eval mode, meta)``.

    ``meta.json`` is checked first (``tskd.models.meta_schema.validate_student_meta``: types,
    bounds, parameter count); raises ``CheckpointError`` (``ModelMetaError`` for the description)
    when the folder holds no usable student.
    """
    from safetensors.torch import load_file

    from tskd.models.meta_schema import read_meta_file, validate_student_meta
    from tskd.models.student import Student

    folder = _bundle_dir(folder)
    meta = read_meta_file(folder / META)
    if meta.get("kind") == "teacher":
        raise CheckpointError(f"{folder} holds a teacher, not a student")
    info = validate_student_meta(meta, folder / META)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"student weights {weights} are missing")
    student = Student(info.student, info.num_classes, info.image_size)
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
    """The side in pixels of the square images a bundle's model takes (S in (B, 3, S, S)).

    The one reader of that field: a student's meta calls it ``image_size``, a teacher's
    ``input_size`` (both as written by every version, so existing bundles open). Raises
    ``CheckpointError`` when the meta has neither (``read_bundle_meta`` refuses such a bundle
    first).
    """
    size = meta.get("image_size") or meta.get("input_size")
    if size is None:
        raise CheckpointError("the model's meta.json gives no input size (image_size for a "
                              "student, input_size for a teacher)")
    return int(size)


def load_bundle(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Open a student bundle or an adapted-teacher folder: ``(model in eval mode, meta)``.

    Student meta has "num_classes" and "image_size"; teacher meta "num_classes" and
    "input_size". Both models map (B, 3, S, S) in [0, 1] to logits (B, C, S, S).
    """
    folder = _bundle_dir(folder)
    meta = read_bundle_meta(folder)
    if meta["kind"] == "student":
        return load_student(folder)
    from tskd.models import lora

    return lora.load_teacher(folder).eval(), meta


def export_onnx(model: nn.Module, path: str | Path, input_size: int, opset: int = 17) -> float:
    """Export ``model`` to ONNX with a dynamic batch axis and check it with onnxruntime.

    Returns the largest absolute difference between onnxruntime's and PyTorch's logits on a
    random batch (of another size than the traced one, which also checks the dynamic batch);
    raises ``TskdError`` when it exceeds 1e-3. Uses the TorchScript exporter, which needs no
    extra packages (the dynamo exporter needs onnxscript).
    """
    import onnxruntime as ort

    path = Path(path)
    atomic.mkdir(path.parent)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model = model.eval().cpu()
    gen = torch.Generator().manual_seed(0)
    dummy = torch.rand(2, 3, input_size, input_size, generator=gen)
    check = torch.rand(3, 3, input_size, input_size, generator=gen)
    tmp = atomic.temp_name(path)
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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": check.numpy()})
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
