"""Student bundles (safetensors + meta.json) round trip, fail clearly, and export to ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tskd
from tskd.config import StudentConfig
from tskd.errors import CheckpointError
from tskd.inference import bundle
from tskd.models.student import Student

SIZE = 32


def _student(depth: int = 2, num_classes: int = 3) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(embed_dim=32, depth=depth, num_heads=2, decoder_channels=16)
    s = Student(cfg, num_classes, SIZE)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so buffers are checked too
        for m in s.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return s.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Student, Path]:
    s = _student()
    folder = tmp_path_factory.mktemp("bundle") / "student"
    meta = {"class_names": ["background", "kidney", "cyst"], "metrics": {"dice": 0.8},
            "num_classes": 99, "seconds": 1.5}
    bundle.save_student(s, folder, meta)
    return s, folder


def test_round_trip_gives_identical_outputs(saved: tuple[Student, Path]):
    s, folder = saved
    assert (folder / "model.safetensors").is_file() and (folder / "meta.json").is_file()
    loaded, meta = bundle.load_student(folder)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(loaded(x), s(x))
    assert not loaded.training
    assert meta["kind"] == "student"
    assert meta["student"]["embed_dim"] == 32 and meta["student"]["depth"] == 2
    assert meta["num_classes"] == 3  # the model's own count wins over a stale meta value
    assert meta["input_size"] == SIZE
    assert meta["class_names"] == ["background", "kidney", "cyst"]
    assert meta["metrics"] == {"dice": 0.8} and meta["seconds"] == 1.5
    assert meta["tskd_version"] == tskd.__version__
    # load_bundle opens a student bundle too, also from a path to a file inside it
    model, meta2 = bundle.load_bundle(folder / "meta.json")
    assert isinstance(model, Student) and meta2 == meta


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_weights_raise_checkpoint_error(saved: tuple[Student, Path], tmp_path: Path):
    folder = _copy(saved[1], tmp_path / "b")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        bundle.load_student(folder)


def test_foreign_and_missing_files_raise_checkpoint_error(
    saved: tuple[Student, Path], tmp_path: Path
):
    folder = _copy(saved[1], tmp_path / "b")
    torch.save({"w": torch.zeros(2)}, folder / "model.safetensors")  # a pickle in disguise
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        bundle.load_student(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        bundle.load_student(folder)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        bundle.load_student(folder)
    (folder / "meta.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="not a tskd model"):
        bundle.load_bundle(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no meta.json"):
        bundle.load_bundle(folder)
    with pytest.raises(CheckpointError, match="not found"):
        bundle.load_bundle(tmp_path / "nowhere")


def test_weights_of_another_architecture_raise(saved: tuple[Student, Path], tmp_path: Path):
    folder = _copy(saved[1], tmp_path / "b")
    other = tmp_path / "deeper"
    bundle.save_student(_student(depth=3), other, {})
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit"):
        bundle.load_student(folder)


def test_load_model_delegates_teachers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tskd.models import lora

    calls = []
    sentinel = torch.nn.Identity()

    def fake_load_teacher(folder):
        calls.append(Path(folder))
        return sentinel

    monkeypatch.setattr(lora, "load_teacher", fake_load_teacher)
    (tmp_path / "meta.json").write_text(json.dumps({
        "kind": "teacher", "num_classes": 2, "input_size": 64, "model_type": "mini",
        "checkpoint": "builtin", "checkpoint_sha256": "0" * 64, "lora": {"rank": 2},
    }))
    model, meta = bundle.load_bundle(tmp_path)
    assert model is sentinel and calls == [tmp_path]
    assert meta["input_size"] == 64 and meta["num_classes"] == 2
    with pytest.raises(CheckpointError, match="not a student"):
        bundle.load_student(tmp_path)


def test_export_onnx_matches_pytorch(saved: tuple[Student, Path], tmp_path: Path):
    import onnxruntime as ort

    s, _ = saved
    path = tmp_path / "student.onnx"
    diff = bundle.export_onnx(s, path, SIZE)
    assert path.is_file() and diff < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch axis is dynamic
        x = np.random.default_rng(batch).random((batch, 3, SIZE, SIZE), dtype=np.float32)
        (out,) = sess.run(None, {"image": x})
        with torch.inference_mode():
            ref = s(torch.from_numpy(x)).numpy()
        assert out.shape == (batch, 3, SIZE, SIZE)
        assert np.abs(out - ref).max() < 1e-4
    assert not s.training  # the caller's model is left as it was


def test_the_default_unet_student_exports_to_onnx(tmp_path: Path) -> None:
    import onnxruntime as ort

    from tskd.config import StudentConfig
    from tskd.models.student import build_student

    torch.manual_seed(0)
    s = build_student(StudentConfig(), 2, 64).eval()  # MONAI's BasicUNet, width 16
    path = tmp_path / "student.onnx"
    assert bundle.export_onnx(s, path, 64) < 1e-4
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})
    with torch.inference_mode():
        assert np.abs(out - s(torch.from_numpy(x)).numpy()).max() < 1e-4
