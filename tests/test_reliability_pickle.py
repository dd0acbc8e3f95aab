"""The malicious-pickle probe: a file whose unpickling runs code is refused on every route.

The payload creates a marker folder when unpickled (``os.mkdir``). A control test proves it
does so when loaded unsafely; every route a user can hand tskd a file by - SAM checkpoints of
every suffix and pickle format, model folders, teacher adapters and bases, resume checkpoints,
diffusion models, the teacher cache, ``.npy`` images, the CLI commands - must refuse it with
one line and leave no marker.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tiny_setup import TINY_SIZE, write_tiny_sam, write_tiny_task
from tskd.apps.cli import main
from tskd.atomic import load_weights_only
from tskd.config import LoraSettings, StudentConfig
from tskd.data.files import read_image
from tskd.errors import TskdError
from tskd.inference import bundle
from tskd.models.lora import apply_lora, load_teacher, save_teacher
from tskd.models.mini_sam import MiniSamConfig
from tskd.models.mini_sam_files import json_path
from tskd.models.sam_checkpoint import read_state_dict, sha256_of
from tskd.models.student import Student
from tskd.models.teacher import SemanticSam, build_sam

GLOBAL = f"{os.mkdir.__module__}.mkdir"  # posix.mkdir on Linux and macOS


class _Payload:
    """Unpickling calls ``os.mkdir(marker)``: code execution, harmless and observable."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.marker,))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "CODE_RAN"
    yield path
    assert not path.exists(), "the pickle's code ran"


def _evil_state(marker: Path) -> dict[str, Any]:
    """Shaped like a SAM state dict, with the payload among its tensors."""
    return {"image_encoder.pos_embed": _Payload(marker),
            "image_encoder.patch_embed.proj.weight": torch.zeros(1)}


def _evil_pth(path: Path, marker: Path, legacy: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_evil_state(marker), path, _use_new_zipfile_serialization=not legacy)
    return path


def _evil_raw(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(_evil_state(marker), f, protocol=2)
    return path


def _one_sentence(message: str) -> None:
    assert "\n" not in message and message == message.strip()
    assert "weights_only" not in message  # never advise loading it unsafely
    assert message[-1].isalnum() or message[-1] in ")'", message


def _refused(fn: Callable[[], Any]) -> str:
    with pytest.raises(TskdError) as info:
        fn()
    _one_sentence(str(info.value))
    return str(info.value)


def _cli_refused(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith("tskd: warning:")]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("tskd: error: "), err
    _one_sentence(err[0])
    return err[0]


def _refusal(path: Path, what: str = "checkpoint") -> str:
    return (
        f"{what} {path} holds Python objects other than tensors (it refers to {GLOBAL}), and "
        "such a file is not loaded because unpickling it could run code; use a file that holds "
        "only weights, such as an official SAM checkpoint or a .safetensors file"
    )


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = StudentConfig(embed_dim=32, depth=2, num_heads=2, decoder_channels=16)
    folder = tmp_path_factory.mktemp("student") / "student"
    return bundle.save_student(Student(cfg, 2, TINY_SIZE), folder, {})


@pytest.fixture(scope="module")
def base_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny.safetensors")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, base_sam: Path) -> Path:
    torch.manual_seed(0)
    lora = LoraSettings(rank=2)
    model = apply_lora(
        SemanticSam(build_sam("mini", base_sam, TINY_SIZE), 2), lora)
    return save_teacher(model, tmp_path_factory.mktemp("t") / "teacher", {"lora": lora})


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


# ----------------------------------------------------------------------------- control


def test_control_the_payload_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "CODE_RAN"
    path = _evil_pth(tmp_path / "evil.pth", marker)
    torch.load(path, weights_only=False)  # what the probe guards against
    assert marker.is_dir()
    marker.rmdir()
    with _evil_raw(tmp_path / "evil.pkl", marker).open("rb") as f:
        pickle.load(f)
    assert marker.is_dir()


# ----------------------------------------------------------------------------- routes


@pytest.mark.parametrize("name,legacy", [("evil.pth", False), ("evil.pt", False),
                                         ("evil.bin", False), ("legacy.pth", True)])
def test_route_sam_checkpoint_files(name: str, legacy: bool, tmp_path: Path,
                                    marker: Path) -> None:
    """Routes 1-4: .pth, .pt and other suffixes, zip and legacy torch.save formats."""
    path = _evil_pth(tmp_path / name, marker, legacy)
    assert _refused(lambda: read_state_dict(path)) == _refusal(path)


def test_route_raw_pickle(tmp_path: Path, marker: Path) -> None:
    """Route 5: a bare pickle stream (not a torch.save file)."""
    path = _evil_raw(tmp_path / "evil.pth", marker)
    message = _refused(lambda: load_weights_only(path))
    assert message.startswith(f"checkpoint {path} holds Python objects other than tensors")


def test_route_pickle_named_safetensors(tmp_path: Path, marker: Path) -> None:
    """Route 6: a pickle under a .safetensors name is never unpickled."""
    path = _evil_pth(tmp_path / "evil.safetensors", marker)
    assert _refused(lambda: read_state_dict(path)) == (
        f"cannot read checkpoint {path}: it is truncated, corrupt or not a safetensors file"
    )


@pytest.mark.parametrize("model_type", ["vit_b", "mini"])
def test_route_build_sam(model_type: str, tmp_path: Path, marker: Path) -> None:
    """Routes 7-8: the teacher's base checkpoint, official type and mini with its JSON."""
    path = _evil_pth(tmp_path / "sam.pth", marker)
    json_path(path).write_text(json.dumps({"config": MiniSamConfig.tiny().to_dict()}))
    assert _refused(lambda: build_sam(model_type, path, TINY_SIZE)) == _refusal(path)


def test_route_student_bundle(student_dir: Path, tmp_path: Path, marker: Path) -> None:
    """Routes 9-10: a student folder whose weights file is a pickle."""
    folder = _copy(student_dir, tmp_path / "s")
    _evil_pth(folder / "model.safetensors", marker)
    expected = (f"student weights {folder / 'model.safetensors'} are truncated or not a "
                "safetensors file")
    assert _refused(lambda: bundle.load_student(folder)) == expected
    assert _refused(lambda: bundle.load_bundle(folder)) == expected


def test_route_teacher_adapter(teacher_dir: Path, tmp_path: Path, marker: Path) -> None:
    """Route 11: a teacher folder whose adapter is a pickle."""
    folder = _copy(teacher_dir, tmp_path / "t")
    _evil_pth(folder / "adapter.safetensors", marker)
    assert _refused(lambda: load_teacher(folder)) == (
        f"teacher adapter {folder / 'adapter.safetensors'} is corrupt"
    )


def test_route_teacher_base_named_in_meta(teacher_dir: Path, tmp_path: Path,
                                          marker: Path) -> None:
    """Route 12: meta.json names a pickle as the base checkpoint, with its true sha256."""
    folder = _copy(teacher_dir, tmp_path / "t")
    evil = _evil_pth(tmp_path / "base.pth", marker)
    meta = json.loads((folder / "meta.json").read_text())
    meta |= {"checkpoint": str(evil), "checkpoint_sha256": sha256_of(evil)}
    (folder / "meta.json").write_text(json.dumps(meta))
    assert _refused(lambda: load_teacher(folder)) == _refusal(evil)


def test_route_npy_image(tmp_path: Path, marker: Path) -> None:
    """Route 13: an object .npy (a pickle inside) as an image; np.load refuses pickles."""
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    assert _refused(lambda: read_image(path)) == (
        f"cannot read {path}: the file is corrupt or not a valid .npy image"
    )


def test_route_resume_checkpoint(tmp_path: Path, marker: Path) -> None:
    """Route 14: --resume with a sealed training checkpoint whose optimizer state is a pickle.

    The manifest's sha256 matches (whoever wrote the pickle also wrote the manifest), so the
    refusal must come from the weights-only reader, not from the integrity check.
    """
    import hashlib
    import io as bytes_io

    from tskd.atomic import json_bytes, safetensors_bytes
    from tskd.checkpoint import Checkpoint

    ckpt = Checkpoint(tmp_path / "checkpoints")
    buf = bytes_io.BytesIO()
    torch.save({"optimizer": _Payload(marker)}, buf)
    files = {ckpt.PARAMS: safetensors_bytes({"w": torch.zeros(1)}), ckpt.OPTIM: buf.getvalue(),
             ckpt.STATE: b"{}"}
    manifest = {"format": 1, "files": {n: {"sha256": hashlib.sha256(d).hexdigest(),
                                           "bytes": len(d)} for n, d in files.items()}}
    ckpt.current.mkdir(parents=True)
    for name, data in {**files, ckpt.MANIFEST: json_bytes(manifest)}.items():
        (ckpt.current / name).write_bytes(data)
    verified = ckpt.read()
    assert verified is not None and set(verified) >= set(files)
    assert _refused(lambda: ckpt.load(verified, torch.nn.Linear(1, 1), None, None)) == _refusal(
        ckpt.current / ckpt.OPTIM, "training checkpoint")


def test_route_diffusion_model(tmp_path: Path, marker: Path) -> None:
    """Route 15: a diffusion-model folder whose UNet weights are a pickle."""
    from tskd.models import diffusion

    folder = tmp_path / "synth"
    folder.mkdir()
    _evil_pth(folder / "unet.safetensors", marker)
    (folder / "unet_config.json").write_text(json.dumps({
        "sample_size": 16, "in_channels": 1, "out_channels": 1, "layers_per_block": 1,
        "block_out_channels": [8, 8], "norm_num_groups": 4,
        "down_block_types": ["DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D"]}))
    message = _refused(lambda: diffusion.load_diffusion_model(folder))
    assert message.startswith(f"{folder / 'unet.safetensors'} is not a diffusion model saved")


def test_route_teacher_cache_entry(tmp_path: Path, marker: Path) -> None:
    """Route 16: a teacher-cache entry replaced by a pickle is treated as absent (recomputed)."""
    from tskd.training.teacher_cache import TeacherCache

    cache = TeacherCache(tmp_path / "cache", "teacher-id", ["neck"])
    key = cache.key(torch.zeros(1, 3, 8, 8))
    cache.dir.mkdir(parents=True, exist_ok=True)
    _evil_pth(cache.path(key), marker)
    assert cache.get(key) is None


# ----------------------------------------------------------------------------- CLI routes


def test_route_cli_predict_and_export(student_dir: Path, tmp_path: Path, marker: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    """Routes 17-19: `tskd predict` with a pickled .npy input or model; `tskd export-onnx`."""
    evil_npy = tmp_path / "evil.npy"
    np.save(evil_npy, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    line = _cli_refused(capsys, ["predict", str(evil_npy), "--model", str(student_dir),
                                 "-o", str(tmp_path / "out")])
    assert line == (
        f"tskd: error: cannot read {evil_npy}: the file is corrupt or not a valid .npy image"
    )
    folder = _copy(student_dir, tmp_path / "s")
    _evil_pth(folder / "model.safetensors", marker)
    good = tmp_path / "img.npy"
    np.save(good, np.zeros((TINY_SIZE, TINY_SIZE), np.uint8))
    for argv in (["predict", str(good), "--model", str(folder), "-o", str(tmp_path / "out")],
                 ["export-onnx", "--model", str(folder), "-o", str(tmp_path / "m.onnx")]):
        assert "are truncated or not a safetensors file" in _cli_refused(capsys, argv)
    assert not (tmp_path / "m.onnx").exists()


def test_route_cli_evaluate(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    """Route 20: `tskd evaluate` with a pickled .npy among the predictions."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    np.save(pred / "a.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.save(gt / "a.npy", np.zeros((8, 8), np.uint8))
    line = _cli_refused(capsys, ["evaluate", "--pred", str(pred), "--gt", str(gt), "-o",
                                 str(tmp_path / "report")])
    assert "a.npy" in line


def test_route_cli_finetune_teacher(tmp_path: Path, marker: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    """Route 21: `tskd finetune-teacher --checkpoint evil.pth`."""
    data = write_tiny_task(tmp_path / "data", 2, 0, 0)
    evil = _evil_pth(tmp_path / "sam_vit_b.pth", marker)
    line = _cli_refused(capsys, [
        "finetune-teacher", "--run-dir", str(tmp_path / "run"), "--data", str(data / "train"),
        "--model-type", "vit_b", "--checkpoint", str(evil), "--input-size", "64",
        "--epochs", "1", "--device", "cpu"])
    assert line == f"tskd: error: {_refusal(evil)}"


def test_route_cli_demo(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    """Route 22: `tskd demo --teacher vit_b --checkpoint evil.pth`."""
    evil = _evil_pth(tmp_path / "sam_vit_b.pth", marker)
    line = _cli_refused(capsys, [
        "demo", "--teacher", "vit_b", "--checkpoint", str(evil), "--budget", "tiny",
        "--labels", "2", "--teacher-size", "64", "--out", str(tmp_path / "demo"),
        "--device", "cpu"])
    assert "holds Python objects other than tensors" in line and "sam_vit_b.pth" in line
