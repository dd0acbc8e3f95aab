"""The schema of a model folder's ``meta.json``, checked before anything is built from it.

A model folder is input like any other: it may come from a colleague, a download or a disk that
failed. ``tskd.models.meta_file.read_meta_file`` refuses a ``meta.json`` above its size cap,
text that is not UTF-8 JSON, too deep nesting and anything but a JSON object.
``validate_student_meta`` and ``validate_teacher_meta`` then check every key a loader uses -
type, bounds, consistency, and the parameter count of the model it describes - so that a bad
file ends in one ``ModelMetaError`` (a ``TskdInputError`` and a ``CheckpointError``) naming the
file and the key, never in a ``KeyError``, ``ZeroDivisionError`` or a huge allocation.

Student meta (``kind: "student"``), required keys:
  ``student``      mapping of ``StudentConfig`` (embed_dim, depth, num_heads, patch_size
                   required; other fields take their defaults),
  ``num_classes``  int 1..``MAX_CLASSES``,
  ``input_size``   int ``MIN_SIZE``..``MAX_SIZE``, a multiple of the patch size (old: image_size).
Teacher meta (``kind: "teacher"``), required keys:
  ``model_type``   one of ``tskd.models.sam_checkpoint.MODEL_TYPES``,
  ``checkpoint``   "builtin" or a path (string, no NUL, at most 4096 characters),
  ``checkpoint_sha256``  64 hexadecimal digits,
  ``input_size``   int ``MIN_SIZE``..``MAX_SIZE`` (a multiple of 16 for vit_b/l/h),
  ``num_classes``  int 2..``MAX_CLASSES`` (background included),
  ``lora``         mapping of ``LoraSettings``; targets in the grammar of ``tskd.lora_targets``.
  ``refine_head``  optional bool (absent: false), the teacher has a ``RefineHead``.
Optional keys of both kinds, checked when present:
  ``class_names``  null or a list of ``num_classes`` strings (each at most 256 characters),
  ``label_values`` the user's label value of each class: ``num_classes`` non-negative ints,
                   strictly increasing,
  ``train_image_shape``  [H, W] of the training images, two ints 1..2**16,
  ``tskd_version`` a string.
Any other key (metrics, history, stage results) is kept as it is and not interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tskd.config import LoraSettings, StudentConfig, from_dict
from tskd.errors import CheckpointError, ModelMetaError, TskdInputError
from tskd.models import conv_student, unet
from tskd.models.meta_file import json_type
from tskd.models.mini_sam import MAX_PARAMS, MiniSamConfig, official_config, sam_param_count
from tskd.models.sam_checkpoint import MODEL_TYPES
from tskd.models.student import student_param_count

MAX_CLASSES = 256
MIN_SIZE, MAX_SIZE = 16, 4096
MAX_SHAPE_SIDE = 2**16

# (key, smallest, largest) of the integer architecture settings of a student
_STUDENT_BOUNDS = (
    ("embed_dim", 1, 4096),
    ("depth", 1, 64),
    ("num_heads", 1, 64),
    ("patch_size", 4, 64),
    ("neck_dim", 1, 4096),
    ("decoder_channels", 1, 1024),
)
_STUDENT_REQUIRED = ("embed_dim", "depth", "num_heads", "patch_size")
# the input side must be a multiple of this (0: of the ViT's patch_size)
_STRIDES = {"conv": conv_student.STRIDE, "unet": unet.STRIDE, "vit_tiny": 0}


class _Bad(Exception):
    """One schema violation: the key (dotted path) and what is wrong with it."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(key, problem)
        self.key = key
        self.problem = problem


@dataclass
class StudentMeta:
    """A checked student ``meta.json`` (keys in the module docstring); ``raw``: the parsed file."""

    student: StudentConfig
    num_classes: int
    image_size: int
    class_names: list[str] | None = None
    label_values: list[int] | None = None
    train_image_shape: tuple[int, int] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherMeta:
    """A checked teacher ``meta.json`` (keys in the module docstring); ``raw``: the parsed file."""

    model_type: str
    checkpoint: str
    checkpoint_sha256: str
    input_size: int
    num_classes: int
    lora: LoraSettings
    class_names: list[str] | None = None
    label_values: list[int] | None = None
    train_image_shape: tuple[int, int] | None = None
    refine_head: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _error(path: Path, bad: _Bad) -> ModelMetaError:
    what = f"'{bad.key}' {bad.problem}" if bad.key else bad.problem
    return ModelMetaError(
        f"model description {path} is invalid: {what}; restore the folder's original meta.json "
        "or train the model again"
    )


# ------------------------------------------------------------------------------- value checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(data: dict[str, Any], key: str, lo: int, hi: int, where: str = "") -> int:
    name = f"{where}{key}"
    if key not in data:
        raise _Bad(name, "is missing")
    value = data[key]
    if not _is_int(value):
        raise _Bad(name, f"must be an integer from {lo} to {hi}, got {_show(value)}")
    if not lo <= value <= hi:
        raise _Bad(name, f"must be from {lo} to {hi}, got {value}")
    return value


def _str(data: dict[str, Any], key: str, max_len: int = 4096) -> str:
    if key not in data:
        raise _Bad(key, "is missing")
    value = data[key]
    if not isinstance(value, str) or not value:
        raise _Bad(key, f"must be a non-empty string, got {_show(value)}")
    if len(value) > max_len or "\x00" in value or not _utf8(value):
        raise _Bad(key, f"must be at most {max_len} printable characters")
    return value


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800" escapes
        return False
    return True


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    if key not in data:
        raise _Bad(key, "is missing")
    value = data[key]
    if not isinstance(value, dict):
        raise _Bad(key, f"must be a mapping, got a JSON {json_type(value)}")
    return value


def _optional(meta: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """The optional keys shared by both kinds (see the module docstring), checked."""
    out: dict[str, Any] = {}
    names = meta.get("class_names")
    if names is not None:
        if not isinstance(names, list) or len(names) != num_classes:
            raise _Bad("class_names", f"must be null or a list of {num_classes} names")
        for i, name in enumerate(names):
            if not isinstance(name, str) or len(name) > 256 or not _utf8(name):
                raise _Bad(f"class_names[{i}]", f"must be a name of at most 256 characters, "
                           f"got {_show(name)}")
        out["class_names"] = list(names)
    values = meta.get("label_values")
    if values is not None:
        if not isinstance(values, list) or len(values) != num_classes:
            raise _Bad("label_values", f"must be a list of {num_classes} label values")
        if not all(_is_int(v) and 0 <= v < 2**63 for v in values):
            raise _Bad("label_values", "must hold non-negative integers")
        if any(a >= b for a, b in zip(values, values[1:])):
            raise _Bad("label_values", "must be strictly increasing")
        out["label_values"] = list(values)
    shape = meta.get("train_image_shape")
    if shape is not None:
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(_is_int(v) and 1 <= v <= MAX_SHAPE_SIDE for v in shape)
        ):
            raise _Bad("train_image_shape", f"must be [height, width], two integers from 1 to "
                       f"{MAX_SHAPE_SIDE}, got {_show(shape)}")
        out["train_image_shape"] = (shape[0], shape[1])
    version = meta.get("tskd_version")
    if version is not None and not isinstance(version, str):
        raise _Bad("tskd_version", f"must be a string, got {_show(version)}")
    return out


def _kind(meta: dict[str, Any], kind: str) -> None:
    if meta.get("kind") != kind:
        raise _Bad("kind", f"must be \"{kind}\", got {_show(meta.get('kind'))}")


# ------------------------------------------------------------------------------- student


def _student_config(data: dict[str, Any]) -> StudentConfig:
    for key in _STUDENT_REQUIRED:
        if key not in data:
            raise _Bad(f"student.{key}", "is missing")
    for key, lo, hi in _STUDENT_BOUNDS:
        if key in data:
            _int(data, key, lo, hi, "student.")
    # students saved before these keys existed: the ViT-Tiny with its transposed convolutions
    data = {"architecture": "vit_tiny", "upsample": "transposed"} | dict(data)
    try:
        cfg = from_dict(StudentConfig, data, "student")
    except TskdInputError as exc:
        raise _Bad("", str(exc).removeprefix("config: ")) from None
    if cfg.architecture not in _STRIDES:
        raise _Bad("student.architecture", f"must be conv, vit_tiny or unet, got "
                   f"{_show(cfg.architecture)}")
    p = cfg.patch_size
    if p & (p - 1):
        raise _Bad("student.patch_size", f"must be a power of two, got {p}")
    if cfg.embed_dim % cfg.num_heads:
        raise _Bad("student.num_heads", f"{cfg.num_heads} does not divide embed_dim "
                   f"{cfg.embed_dim}")
    return cfg


def validate_student_meta(meta: Any, path: str | Path = "meta.json") -> StudentMeta:
    """Check a parsed student ``meta.json`` (schema in the module docstring) and return it typed.

    Args:
        meta: The parsed ``meta.json`` (any JSON value).
        path: The file named in messages.

    Returns:
        The typed ``StudentMeta`` (config, classes, input size and the optional keys).

    Raises:
        ModelMetaError: Naming ``path`` and the first bad key, also when the student it
            describes would have more than ``tskd.models.mini_sam.MAX_PARAMS`` parameters.
    """
    path = Path(path)
    try:
        if not isinstance(meta, dict):
            raise _Bad("<top level>", "must be a JSON object")
        _kind(meta, "student")
        cfg = _student_config(_mapping(meta, "student"))
        num_classes = _int(meta, "num_classes", 1, MAX_CLASSES)
        key = "input_size" if "input_size" in meta or "image_size" not in meta else "image_size"
        image_size = _int(meta, key, MIN_SIZE, MAX_SIZE)
        step = _STRIDES[cfg.architecture] or cfg.patch_size
        if image_size % step:
            raise _Bad(key, f"{image_size} is not a multiple of {step}, which the "
                       f"{cfg.architecture} student needs")
        n = student_param_count(cfg, num_classes, image_size)
        if n > MAX_PARAMS:
            raise _Bad("student", f"describes a model of {n / 1e9:.1f} billion parameters, more "
                       f"than the {MAX_PARAMS / 1e9:.0f} billion allowed")
        extra = _optional(meta, num_classes)
    except _Bad as bad:
        raise _error(path, bad) from None
    return StudentMeta(cfg, num_classes, image_size, raw=meta, **extra)


# ------------------------------------------------------------------------------- teacher


def validate_teacher_meta(meta: Any, path: str | Path = "meta.json") -> TeacherMeta:
    """Check a parsed teacher ``meta.json`` (schema in the module docstring) and return it typed.

    For vit_b/l/h the model's parameter count at ``input_size`` is checked here; a mini base's
    architecture comes from the JSON beside its weights and is checked when that is read
    (``MiniSamConfig.validate``).

    Args:
        meta: The parsed ``meta.json`` (any JSON value).
        path: The file named in messages.

    Returns:
        The typed ``TeacherMeta`` (base model, checkpoint and its sha256, input size,
        classes, LoRA settings and the optional keys).

    Raises:
        ModelMetaError: Naming ``path`` and the first bad key.
    """
    path = Path(path)
    try:
        if not isinstance(meta, dict):
            raise _Bad("<top level>", "must be a JSON object")
        _kind(meta, "teacher")
        if "model_type" not in meta:
            raise _Bad("model_type", "is missing")
        model_type = meta["model_type"]
        if model_type not in MODEL_TYPES:
            raise _Bad("model_type", f"must be one of {', '.join(MODEL_TYPES)}, "
                       f"got {_show(model_type)}")
        checkpoint = _str(meta, "checkpoint")
        sha = _str(meta, "checkpoint_sha256", 64)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise _Bad("checkpoint_sha256", "must be 64 lower-case hexadecimal digits")
        input_size = _int(meta, "input_size", MIN_SIZE, MAX_SIZE)
        num_classes = _int(meta, "num_classes", 2, MAX_CLASSES)
        if model_type != "mini":
            base: MiniSamConfig = official_config(model_type)
            if input_size % base.patch_size:
                raise _Bad("input_size", f"{input_size} is not a multiple of {model_type}'s "
                           f"patch size {base.patch_size}")
            n = sam_param_count(base, input_size, num_classes)
            if n > MAX_PARAMS:
                raise _Bad("input_size", f"{input_size} makes a {model_type} of "
                           f"{n / 1e9:.1f} billion parameters, more than the "
                           f"{MAX_PARAMS / 1e9:.0f} billion allowed")
        lora_data = _mapping(meta, "lora")
        try:
            lora = from_dict(LoraSettings, dict(lora_data), "lora")
        except (TskdInputError, CheckpointError) as exc:
            raise _Bad("", str(exc).removeprefix("config: ")) from None
        extra = _optional(meta, num_classes)
        refine = meta.get("refine_head", False)
        if not isinstance(refine, bool):
            raise _Bad("refine_head", f"must be true or false, got {_show(refine)}")
        extra["refine_head"] = refine
    except _Bad as bad:
        raise _error(path, bad) from None
    return TeacherMeta(
        model_type, checkpoint, sha, input_size, num_classes, lora, raw=meta, **extra
    )


def validate_meta(meta: Any, path: str | Path = "meta.json") -> StudentMeta | TeacherMeta:
    """Validate a parsed ``meta.json`` by its ``kind``: a student's or a teacher's schema.

    Args:
        meta: the parsed file (``tskd.models.meta_file.read_meta_file``).
        path: the file, named in messages.

    Returns:
        ``validate_student_meta``'s or ``validate_teacher_meta``'s result.

    Raises:
        ModelMetaError: as those functions, or ``kind`` is neither "student" nor "teacher".
    """
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind == "teacher":
        return validate_teacher_meta(meta, path)
    if kind == "student":
        return validate_student_meta(meta, path)
    raise ModelMetaError(f"{path} is not a tskd model description (kind student/teacher)")
