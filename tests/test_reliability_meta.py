"""A model folder's meta.json is untrusted input: every malformed variant ends in one clear line.

Each variant of a valid student or teacher ``meta.json`` (missing keys, wrong types, zero,
negative and huge numbers, NaN, strings for numbers, lists for mappings, unknown model types,
non-object JSON, invalid JSON, an empty, a 5 GB or a deeply nested file, bad unicode, unsafe LoRA
target patterns, bad optional keys) must raise ``TskdInputError`` - never another exception -
within a second, before any model is built; valid bundles keep loading.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tskd.config import LoraSettings, StudentConfig
from tskd.errors import CheckpointError, ModelMetaError, TskdInputError
from tskd.inference import bundle
from tskd.models.lora import apply_lora, load_teacher, save_teacher, teacher_id
from tskd.models.meta_schema import validate_student_meta
from tskd.models.mini_sam import (
    MAX_PARAMS,
    MiniSamConfig,
    build_mini_sam,
    count_parameters,
    official_config,
    sam_param_count,
)
from tskd.models.mini_sam_files import json_path, save_mini_sam
from tskd.models.sam_checkpoint import sha256_of
from tskd.models.student import Student, build_student, student_param_count
from tskd.models.teacher import SemanticSam, build_sam

SIZE = 32
TEACHER_SIZE = 64
LORA = LoraSettings(rank=2, alpha=4.0)
SECONDS = 1.0  # every refusal must come this fast (the ReDoS pattern hung for minutes)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = StudentConfig(embed_dim=32, depth=2, num_heads=2, decoder_channels=16)
    folder = tmp_path_factory.mktemp("student") / "student"
    bundle.save_student(Student(cfg, 3, SIZE).eval(), folder,
                        {"class_names": ["background", "kidney", "cyst"]})
    return folder


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    return save_mini_sam(build_mini_sam(MiniSamConfig.tiny()), MiniSamConfig.tiny(), path,
                         half=False)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, base_ckpt: Path) -> Path:
    torch.manual_seed(0)
    model = apply_lora(
        SemanticSam(build_sam("mini", base_ckpt, TEACHER_SIZE), 3), LORA
    )
    folder = tmp_path_factory.mktemp("teacher") / "teacher"
    save_teacher(model, folder, {"lora": LORA, "class_names": ["bg", "a", "b"]})
    return folder


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "meta.json").read_text())


# ----------------------------------------------------------------------------- variants
# A variant is (id, change) where change edits the parsed dict (returning a replacement to
# write as JSON) or returns bytes to write as the whole file.

_DEL = object()


def _set(path: str, value: Any) -> Callable[[dict], Any]:
    def change(meta: dict) -> dict:
        keys = path.split(".")
        node = meta
        for k in keys[:-1]:
            node = node[k]
        if value is _DEL:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
        return meta

    return change


def _raw(data: bytes) -> Callable[[dict], bytes]:
    return lambda _meta: data


_NAN = float("nan")
_INF = float("inf")

COMMON = [  # apply to both kinds (file-level faults, shared keys)
    ("invalid-json", _raw(b"{not json")),
    ("empty-file", _raw(b"")),
    ("truncated-json", _raw(b'{"kind": "student", "num_cl')),
    ("json-list", _raw(b"[1, 2, 3]")),
    ("json-string", _raw(b'"student"')),
    ("json-number", _raw(b"42")),
    ("json-null", _raw(b"null")),
    ("utf16", lambda m: json.dumps(m).encode("utf-16")),
    ("invalid-utf8", _raw(b'{"kind": "student\xff\xfe"}')),
    ("deep-nesting", _raw(b'{"kind": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")),
    ("huge-integer-literal", _raw(b'{"kind": "student", "num_classes": 1' + b"0" * 5000 + b"}")),
    ("kind-missing", _set("kind", _DEL)),
    ("kind-unknown", _set("kind", "studnet")),
    ("kind-number", _set("kind", 5)),
    ("kind-unicode", _set("kind", "stüdent")),
    ("num_classes-missing", _set("num_classes", _DEL)),
    ("num_classes-string", _set("num_classes", "3")),
    ("num_classes-float", _set("num_classes", 3.0)),
    ("num_classes-bool", _set("num_classes", True)),
    ("num_classes-null", _set("num_classes", None)),
    ("num_classes-zero", _set("num_classes", 0)),
    ("num_classes-negative", _set("num_classes", -3)),
    ("num_classes-huge", _set("num_classes", 2**40)),
    ("num_classes-nan", _set("num_classes", _NAN)),
    ("num_classes-inf", _set("num_classes", _INF)),
    ("num_classes-list", _set("num_classes", [3])),
    ("class_names-string", _set("class_names", "background,kidney,cyst")),
    ("class_names-numbers", _set("class_names", [0, 1, 2])),
    ("class_names-too-few", _set("class_names", ["background"])),
    ("class_names-surrogate", _set("class_names", ["a", "b", "\ud800"])),
    ("class_names-dict", _set("class_names", {"0": "background"})),
    ("label_values-decreasing", _set("label_values", [0, 255, 1])),
    ("label_values-negative", _set("label_values", [-1, 0, 1])),
    ("label_values-length", _set("label_values", [0, 1])),
    ("label_values-strings", _set("label_values", ["0", "1", "2"])),
    ("label_values-floats", _set("label_values", [0.0, 1.0, 2.0])),
    ("train_image_shape-zero", _set("train_image_shape", [0, 64])),
    ("train_image_shape-huge", _set("train_image_shape", [70000, 64])),
    ("train_image_shape-one", _set("train_image_shape", [64])),
    ("train_image_shape-string", _set("train_image_shape", "64x64")),
    ("train_image_shape-floats", _set("train_image_shape", [64.0, 64.0])),
    ("tskd_version-number", _set("tskd_version", 1.0)),
]

STUDENT = [
    ("student-missing", _set("student", _DEL)),
    ("student-list", _set("student", [32, 2, 2])),
    ("student-string", _set("student", "vit_tiny")),
    ("student-null", _set("student", None)),
    ("embed_dim-missing", _set("student.embed_dim", _DEL)),
    ("depth-missing", _set("student.depth", _DEL)),
    ("num_heads-missing", _set("student.num_heads", _DEL)),
    ("patch_size-missing", _set("student.patch_size", _DEL)),
    ("num_heads-zero", _set("student.num_heads", 0)),  # was a ZeroDivisionError
    ("num_heads-not-dividing", _set("student.num_heads", 3)),
    ("num_heads-string", _set("student.num_heads", "2")),
    ("embed_dim-zero", _set("student.embed_dim", 0)),
    ("embed_dim-negative", _set("student.embed_dim", -32)),
    ("embed_dim-huge", _set("student.embed_dim", 10**6)),
    ("embed_dim-nan", _set("student.embed_dim", _NAN)),
    ("depth-huge", _set("student.depth", 10**4)),
    ("too-many-parameters", lambda m: _set("student.depth", 64)(
        _set("student.embed_dim", 4096)(_set("student.num_heads", 64)(m)))),
    ("patch_size-zero", _set("student.patch_size", 0)),
    ("patch_size-not-power-of-two", _set("student.patch_size", 12)),
    ("decoder_channels-zero", _set("student.decoder_channels", 0)),
    ("neck_dim-negative", _set("student.neck_dim", -1)),
    ("student-unknown-key", _set("student.bogus", 1)),
    ("student-train-list", _set("student.train", [1, 2])),
    ("student-input_size-missing", _set("input_size", _DEL)),
    ("student-input_size-zero", _set("input_size", 0)),
    ("student-input_size-negative", _set("input_size", -32)),
    ("student-input_size-small", _set("input_size", 8)),
    ("student-input_size-huge", _set("input_size", 10**9)),
    ("student-input_size-not-multiple", _set("input_size", 40)),
    ("student-input_size-string", _set("input_size", "32")),
    ("student-input_size-inf", _set("input_size", _INF)),
]

TEACHER = [
    ("model_type-missing", _set("model_type", _DEL)),
    ("model_type-unknown", _set("model_type", "vit_q")),
    ("model_type-number", _set("model_type", 1)),
    ("model_type-null", _set("model_type", None)),
    ("checkpoint-missing", _set("checkpoint", _DEL)),
    ("checkpoint-empty", _set("checkpoint", "")),
    ("checkpoint-number", _set("checkpoint", 5)),
    ("checkpoint-nul", _set("checkpoint", "base\x00.pth")),
    ("sha256-missing", _set("checkpoint_sha256", _DEL)),
    ("sha256-short", _set("checkpoint_sha256", "abc")),
    ("sha256-not-hex", _set("checkpoint_sha256", "z" * 64)),
    ("input_size-missing", _set("input_size", _DEL)),
    ("input_size-zero", _set("input_size", 0)),
    ("input_size-huge", _set("input_size", 100_000)),
    ("input_size-string", _set("input_size", "64")),
    ("input_size-float", _set("input_size", 63.5)),
    ("input_size-vit_b-not-multiple", lambda m: _set("model_type", "vit_b")(
        _set("input_size", 1000)(m))),
    ("num_classes-one", _set("num_classes", 1)),  # the teacher counts the background too
    ("num_classes-too-many", _set("num_classes", 300)),
    ("lora-missing", _set("lora", _DEL)),
    ("lora-list", _set("lora", [2, 4.0])),
    ("lora-string", _set("lora", "rank=2")),
    ("lora-rank-zero", _set("lora.rank", 0)),
    ("lora-rank-negative", _set("lora.rank", -2)),
    ("lora-rank-huge", _set("lora.rank", 10**9)),
    ("lora-rank-string", _set("lora.rank", "2")),
    ("lora-alpha-nan", _set("lora.alpha", _NAN)),
    ("lora-alpha-inf", _set("lora.alpha", _INF)),
    ("lora-dropout-above-one", _set("lora.dropout", 1.5)),
    ("lora-train_decoder-string", _set("lora.train_decoder", "yes")),
    ("lora-unknown-key", _set("lora.bogus", 1)),
    ("lora-targets-string", _set("lora.targets", "qkv")),
    ("lora-targets-empty", _set("lora.targets", [])),
    ("lora-targets-number", _set("lora.targets", [5])),
    ("lora-targets-redos", _set("lora.targets", ["([a-z_.0-9]+)+!"])),
    ("lora-targets-alternation-star", _set("lora.targets", ["(a|a)*b"])),
    ("lora-targets-backreference", _set("lora.targets", [r"(qkv)\1"])),
    ("lora-targets-lookahead", _set("lora.targets", [r"(?=.*qkv).*"])),
    ("lora-targets-unbalanced", _set("lora.targets", [r"(qkv"])),
    ("lora-targets-too-long", _set("lora.targets", ["q" * 300 + "*"])),
    ("lora-targets-too-many", _set("lora.targets", ["qkv"] * 100)),
]


def _write_variant(folder: Path, change: Callable[[dict], Any]) -> None:
    out = change(_meta(folder))
    data = out if isinstance(out, bytes) else json.dumps(out).encode()
    (folder / "meta.json").write_bytes(data)


def _assert_refused(load: Callable[[], Any], *fragments: str) -> str:
    t0 = time.perf_counter()
    with pytest.raises(TskdInputError) as info:
        load()
    elapsed = time.perf_counter() - t0
    assert elapsed < SECONDS, f"refusal took {elapsed:.2f} s"
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    assert "meta.json" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_variant_generator_covers_at_least_44_cases() -> None:
    ids = [name for name, _ in COMMON + STUDENT + TEACHER]
    assert len(ids) == len(set(ids))
    assert len(COMMON) + len(STUDENT) + len(TEACHER) >= 100
    assert len(COMMON) + len(STUDENT) >= 44 and len(COMMON) + len(TEACHER) >= 44


@pytest.mark.parametrize("name,change", COMMON + STUDENT, ids=[n for n, _ in COMMON + STUDENT])
def test_malformed_student_meta_is_refused_in_one_line(
    name: str, change: Callable[[dict], Any], student_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = _copy(student_dir, tmp_path / "s")
    _write_variant(folder, change)
    # nothing is built from a refused description
    monkeypatch.setattr("tskd.models.student.Student.__init__", _never_built)
    message = _assert_refused(lambda: bundle.load_bundle(folder))
    assert isinstance(_raised(lambda: bundle.load_student(folder)), ModelMetaError)
    if name.endswith("-missing") and "kind" not in name:
        assert "is missing" in message


@pytest.mark.parametrize("name,change", COMMON + TEACHER, ids=[n for n, _ in COMMON + TEACHER])
def test_malformed_teacher_meta_is_refused_in_one_line(
    name: str, change: Callable[[dict], Any], teacher_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = _copy(teacher_dir, tmp_path / "t")
    _write_variant(folder, change)
    monkeypatch.setattr("tskd.models.lora.build_sam", _never_built)
    _assert_refused(lambda: load_teacher(folder))
    _assert_refused(lambda: bundle.load_bundle(folder))
    _assert_refused(lambda: teacher_id(folder))


def _never_built(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("a model was built from a refused description")


def _raised(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the test inspects what was raised
        return exc
    return None


def test_the_key_and_the_file_are_named(student_dir: Path, teacher_dir: Path,
                                        tmp_path: Path) -> None:
    folder = _copy(student_dir, tmp_path / "s")
    _write_variant(folder, _set("student.num_heads", 0))
    message = _assert_refused(lambda: bundle.load_bundle(folder))
    assert message == (
        f"model description {folder / 'meta.json'} is invalid: 'student.num_heads' must be "
        "from 1 to 64, got 0; restore the folder's original meta.json or train the model again"
    )
    t = _copy(teacher_dir, tmp_path / "t")
    _write_variant(t, _set("lora.targets", ["([a-z_.0-9]+)+!"]))
    message = _assert_refused(lambda: load_teacher(t), "nested quantifier",
                              "([a-z_.0-9]+)+!")
    assert message.startswith(
        f"model description {t / 'meta.json'} is invalid: lora.targets[0] '([a-z_.0-9]+)+!' is "
        "not a safe pattern: the group at position 0 is repeated by '+'"
    )


def test_meta_above_one_megabyte_is_refused_unread(student_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _copy(student_dir, tmp_path / "s")
    with (folder / "meta.json").open("r+b") as f:
        f.truncate(5 * 2**30)  # a sparse 5 GB file: reading it used to end in MemoryError
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or b"")
    message = _assert_refused(lambda: bundle.load_bundle(folder), "5120.0 MB", "was not read")
    assert read == []
    assert isinstance(_raised(lambda: bundle.load_bundle(folder)), CheckpointError)
    assert message.endswith("larger than the 1 MB a tskd meta.json can be; it was not read")


def test_cli_prints_one_line_and_exit_2(student_dir: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    from tskd.apps.cli import main

    folder = _copy(student_dir, tmp_path / "s")
    _write_variant(folder, _set("num_classes", "3"))
    image = tmp_path / "img.npy"
    import numpy as np

    np.save(image, np.zeros((SIZE, SIZE), np.uint8))
    out = tmp_path / "out"
    code = main(["predict", str(image), "--model", str(folder), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"tskd: error: model description {folder / 'meta.json'} is invalid: 'num_classes' must "
        "be an integer from 1 to 256, got '3'; restore the folder's original meta.json or train "
        "the model again"
    ]
    assert not out.exists()
    code = main(["export-onnx", "--model", str(folder), "-o", str(tmp_path / "m.onnx")])
    assert code == 2 and not (tmp_path / "m.onnx").exists()


# ----------------------------------------------------------------------------- valid bundles


def test_valid_bundles_still_load_with_documented_optional_keys(
    student_dir: Path, teacher_dir: Path, base_ckpt: Path, tmp_path: Path
) -> None:
    folder = _copy(student_dir, tmp_path / "s")
    reference, _ = bundle.load_student(student_dir)
    extra = {"label_values": [0, 5, 255], "train_image_shape": [480, 640], "metrics": {
        "dice": float("nan")}, "something_new": {"nested": [1, 2]}}
    _write_variant(folder, lambda m: m | extra)
    loaded, meta = bundle.load_bundle(folder)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference(x))
    assert meta["label_values"] == [0, 5, 255] and meta["train_image_shape"] == [480, 640]
    info = validate_student_meta(meta)
    assert info.label_values == [0, 5, 255] and info.train_image_shape == (480, 640)
    # a byte-order mark (Windows editors add one) is accepted
    text = (folder / "meta.json").read_bytes()
    (folder / "meta.json").write_bytes(b"\xef\xbb\xbf" + text)
    assert bundle.load_bundle(folder)[1]["num_classes"] == 3

    t = _copy(teacher_dir, tmp_path / "t")
    _write_variant(t, lambda m: m | {"label_values": [0, 1, 2], "train_image_shape": [64, 64]})
    model = load_teacher(t)
    ref = load_teacher(teacher_dir)
    x = torch.rand(1, 3, TEACHER_SIZE, TEACHER_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    assert bundle.load_bundle(t)[1]["label_values"] == [0, 1, 2]


def test_student_parameter_count_is_computed_exactly_before_building() -> None:
    vit = {"architecture": "vit_tiny"}
    for upsample in ("bilinear", "transposed"):
        for cfg, classes, size in [
            (StudentConfig(**vit, embed_dim=32, depth=2, num_heads=2, decoder_channels=16), 3,
             32),
            (StudentConfig(**vit, embed_dim=48, depth=1, num_heads=3, patch_size=8, neck_dim=32),
             5, 64),
            (StudentConfig(**vit, embed_dim=32, depth=1, num_heads=1, patch_size=4, neck_dim=16,
                           decoder_channels=8), 2, 16),
        ]:
            cfg.upsample = upsample
            built = build_student(cfg, classes, size)
            assert student_param_count(cfg, classes, size) == built.param_count()
    conv = {"architecture": "conv"}
    for cfg, classes in [(StudentConfig(**conv, backbone="resnet10t", neck_dim=32), 3),
                         (StudentConfig(**conv, backbone="mobilenetv3_small_050",
                                        decoder_channels=16), 2)]:
        built = build_student(cfg, classes, 64)
        assert student_param_count(cfg, classes, 64) == built.param_count()
    # the students saved before resize-convolution (and their meta.json) keep their count
    legacy = StudentConfig(architecture="vit_tiny", upsample="transposed")
    assert student_param_count(legacy, 2, 256) == 6_304_632
    assert student_param_count(StudentConfig(architecture="vit_tiny"), 2, 256) == 6_248_000
    assert student_param_count(StudentConfig(**conv), 2, 256) == 4_735_266  # the CNN student
    default = StudentConfig()  # the U-Net student of width 16
    assert student_param_count(default, 2, 256) == build_student(default, 2, 256).param_count()


def test_sam_parameter_count_is_computed_exactly_before_building() -> None:
    for cfg, size, classes in [(MiniSamConfig.tiny(), 64, 0), (MiniSamConfig.tiny(), 128, 0),
                               (MiniSamConfig(depth=2, window_size=0), 64, 0)]:
        assert sam_param_count(cfg, size, classes) == count_parameters(build_mini_sam(cfg, size))
    sam = build_mini_sam(MiniSamConfig.tiny(), 64)
    assert sam_param_count(MiniSamConfig.tiny(), 64, 4) == count_parameters(
        SemanticSam(sam, 4))
    # SAM ViT-H at 1024 px: 641 M parameters (the published 636 M plus nothing built twice)
    assert sam_param_count(official_config("vit_h"), 1024) == 641_090_608
    assert sam_param_count(official_config("vit_h"), 4096) < MAX_PARAMS


# ----------------------------------------------------------------------------- mini SAM JSON


MINI_VARIANTS = [
    ("num_heads-zero", {"num_heads": 0}, "'num_heads'"),
    ("num_heads-not-dividing", {"num_heads": 5}, "'num_heads' 5 does not divide"),
    ("embed_dim-string", {"embed_dim": "32"}, "'embed_dim'"),
    ("decoder_heads-not-dividing", {"decoder_heads": 3}, "'prompt_dim'"),
    ("mask_in_chans-odd", {"mask_in_chans": 6}, "'mask_in_chans'"),
    ("mlp_ratio-nan", {"mlp_ratio": _NAN}, "'mlp_ratio'"),
    ("pixel_std-zero", {"pixel_std": [0, 1, 1]}, "'pixel_std'"),
    ("global-strings", {"global_attn_indexes": ["a"]}, "'global_attn_indexes'"),
    ("too-many-parameters", {"embed_dim": 8192, "depth": 128, "num_heads": 64},
     "billion parameters"),
    ("unknown-key", {"bogus": 1}, "unknown mini SAM config key"),
]


@pytest.mark.parametrize("name,change,fragment", MINI_VARIANTS, ids=[v[0] for v in MINI_VARIANTS])
def test_malformed_mini_sam_json_beside_the_base_is_refused(
    name: str, change: dict, fragment: str, base_ckpt: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "base.safetensors"
    weights.write_bytes(base_ckpt.read_bytes())
    data = json.loads(json_path(base_ckpt).read_text())
    data["config"] |= change
    json_path(weights).write_text(json.dumps(data))
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        build_sam("mini", weights, TEACHER_SIZE)
    assert time.perf_counter() - t0 < SECONDS
    message = str(info.value)
    assert "\n" not in message and str(json_path(weights)) in message and fragment in message


@pytest.mark.parametrize("text", [b"[1]", b"{", b'{"config": [1]}', b"[" * 100_000],
                         ids=["list", "invalid", "config-list", "deep"])
def test_unreadable_mini_sam_json_is_refused(text: bytes, base_ckpt: Path, tmp_path: Path) -> None:
    weights = tmp_path / "base.safetensors"
    weights.write_bytes(base_ckpt.read_bytes())
    json_path(weights).write_bytes(text)
    with pytest.raises(CheckpointError, match=r"mini SAM config .*base\.json is not valid"):
        build_sam("mini", weights, TEACHER_SIZE)


def test_teacher_sha_mismatch_is_checked_after_the_schema(teacher_dir: Path, tmp_path: Path,
                                                          base_ckpt: Path) -> None:
    t = _copy(teacher_dir, tmp_path / "t")
    _write_variant(t, _set("checkpoint_sha256", "0" * 64))
    with pytest.raises(CheckpointError, match="is not the one the teacher"):
        load_teacher(t)
    assert _meta(teacher_dir)["checkpoint_sha256"] == sha256_of(base_ckpt)


@pytest.mark.parametrize("kind", ["fifo", "directory", "dangling-link"])
def test_meta_that_is_not_a_regular_file_is_refused_without_blocking(
    kind: str, student_dir: Path, tmp_path: Path
) -> None:
    import os

    folder = _copy(student_dir, tmp_path / "s")
    meta = folder / "meta.json"
    meta.unlink()
    if kind == "fifo":
        os.mkfifo(meta)  # reading it would wait forever for a writer
    elif kind == "directory":
        meta.mkdir()
    else:
        meta.symlink_to(tmp_path / "nowhere.json")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        bundle.load_bundle(folder)
    assert time.perf_counter() - t0 < SECONDS
    assert str(info.value) == f"no meta.json in {folder}: not a tskd model folder"


def test_mini_sam_json_above_one_megabyte_is_refused_unread(base_ckpt: Path,
                                                            tmp_path: Path) -> None:
    weights = tmp_path / "base.safetensors"
    weights.write_bytes(base_ckpt.read_bytes())
    with json_path(weights).open("wb") as f:
        f.truncate(3 * 2**30)
    with pytest.raises(CheckpointError) as info:
        build_sam("mini", weights, TEACHER_SIZE)
    assert str(info.value) == (
        f"mini SAM config {json_path(weights)} is larger than 1024 KB; it is not a tskd file"
    )


def test_student_bundles_of_earlier_versions_name_the_input_size_image_size(
    student_dir: Path, tmp_path: Path
) -> None:
    """One field, ``input_size``, for every bundle; a student bundle written before (its
    ``image_size``) still opens, and a bad value there is refused naming that key."""
    from tskd.inference.bundle import input_size

    assert "input_size" in bundle.read_bundle_meta(student_dir)
    assert "image_size" not in bundle.read_bundle_meta(student_dir)
    old = _copy(student_dir, tmp_path / "old")
    _write_variant(old, lambda m: {("image_size" if k == "input_size" else k): v
                                   for k, v in m.items()})
    reference, _ = bundle.load_student(student_dir)
    loaded, meta = bundle.load_bundle(old)
    assert input_size(meta) == SIZE and validate_student_meta(meta).image_size == SIZE
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference(x))
    _write_variant(old, lambda m: m | {"image_size": 40})
    with pytest.raises(TskdInputError, match="'image_size'"):
        bundle.load_bundle(old)
