"""A full disk (or quota) while writing any artefact: one line, and the previous files are kept.

The machine cannot mount a small file system for a test, so the lowest-level write of
``tskd.atomic`` (the one place bytes reach the disk) is replaced by one that writes half of the
data and then fails with ``ENOSPC``/``EDQUOT``, as a full disk does.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from tskd import atomic
from tskd.errors import DiskFullError, TskdError

_real_write_file = atomic._write_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fill_disk(monkeypatch: pytest.MonkeyPatch, under: Path | None = None,
              code: int = errno.ENOSPC) -> None:
    """From now on, writing a file (below ``under``, or anywhere) fails half-way with ``code``."""

    def full(path: Path, data: bytes) -> None:
        if under is not None and under not in Path(path).parents:
            return _real_write_file(path, data)
        _real_write_file(path, bytes(data)[: len(data) // 2])
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(atomic, "_write_file", full)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def full_message(folder: Path, mb: int | None = None) -> str:
    n = r"\d+" if mb is None else str(mb)
    where = re.escape(str(folder))
    return rf"^no space left on {where}, {n} MB needed; .*previous files were kept$"


# --------------------------------------------------------------------------- the helper
def test_full_disk_keeps_the_old_bytes_and_says_how_much_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out" / "weights.bin"
    target.parent.mkdir()
    target.write_bytes(b"old weights")
    fill_disk(monkeypatch)
    with pytest.raises(DiskFullError, match=full_message(target.parent, 2)):
        atomic.write_bytes(target, b"x" * 1_500_000)  # 1.5 MB -> "2 MB needed"
    assert target.read_bytes() == b"old weights"
    assert [p.name for p in target.parent.iterdir()] == ["weights.bin"]  # no temp file left


def test_quota_exceeded_is_a_full_disk_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    fill_disk(monkeypatch, code=errno.EDQUOT)
    with pytest.raises(DiskFullError, match=full_message(tmp_path, 1)):
        atomic.write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_refused_write_is_one_line_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    fill_disk(monkeypatch, code=code)
    with pytest.raises(TskdError, match=rf"^cannot write to {re.escape(str(tmp_path))} \(.+\); "
                                        "choose a folder you can write to$"):
        atomic.write_text(tmp_path / "a.json", "{}")


def test_other_os_errors_are_not_disguised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    fill_disk(monkeypatch, code=errno.EIO)  # a failing disk is not the user's to fix
    with pytest.raises(OSError) as info:
        atomic.write_text(tmp_path / "a.json", "{}")
    assert not isinstance(info.value, TskdError) and info.value.errno == errno.EIO


def test_a_set_of_files_is_replaced_all_or_nothing(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    atomic.write_files({tmp_path / "a": b"old a", tmp_path / "b": b"old b"})
    calls = {"n": 0}

    def second_fails(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        _real_write_file(path, data)

    monkeypatch.setattr(atomic, "_write_file", second_fails)
    with pytest.raises(DiskFullError):
        atomic.write_files({tmp_path / "a": b"new a", tmp_path / "b": b"new b"})
    assert snapshot(tmp_path) == {"a": b"old a", "b": b"old b"}  # a was not replaced alone


def test_temp_files_of_a_killed_writer_are_removed_on_the_next_write(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".meta.json.tmp-{dead}-0badf00d"
    stale.write_text("half")
    other = tmp_path / ".meta.json.backup"  # not a temporary name: never touched
    other.write_text("user")
    atomic.write_text(tmp_path / "meta.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".meta.json.backup", "meta.json"]


# ------------------------------------------------------------------------ every writer
def _student(version: int) -> torch.nn.Module:
    from tskd.config import StudentConfig
    from tskd.models.student import Student

    torch.manual_seed(version)
    return Student(StudentConfig(embed_dim=32, depth=1, num_heads=2, decoder_channels=8), 2, 32)


def _write_student(folder: Path, version: int) -> None:
    from tskd.inference import bundle

    bundle.save_student(_student(version), folder, {"version": version})


def _write_teacher(folder: Path, version: int) -> None:
    from tiny_setup import write_tiny_sam
    from tskd.config import LoraSettings
    from tskd.models.lora import apply_lora, save_teacher
    from tskd.models.teacher import SemanticSam, build_sam

    sam_path = folder.parent / "sam" / "tiny_sam.safetensors"
    if not sam_path.is_file():
        write_tiny_sam(sam_path)
    torch.manual_seed(version)
    model = apply_lora(
        SemanticSam(build_sam("mini", sam_path, 64), 2), LoraSettings(rank=2))
    save_teacher(model, folder, {"lora": LoraSettings(rank=2), "version": version})


def _write_diffusion(folder: Path, version: int) -> None:
    from tskd.models.diffusion import build_train_scheduler, build_unet, save_model

    torch.manual_seed(version)
    save_model(build_unet(16, 1, 8), build_train_scheduler(), folder, {"version": version})


def _write_mini_sam(folder: Path, version: int) -> None:
    from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
    from tskd.models.mini_sam_files import save_mini_sam

    torch.manual_seed(version)
    cfg = MiniSamConfig.tiny()
    save_mini_sam(build_mini_sam(cfg), cfg, folder / "mini_sam.safetensors",
                  extra={"version": version})


def _write_metrics(folder: Path, version: int) -> None:
    from tskd.inference import metrics

    gt = np.zeros((8, 8), np.uint8)
    gt[2:5, 2:5] = 1
    pred = np.roll(gt, version, axis=0)
    metrics.write_report(metrics.evaluate([pred], [gt], ["a"], 2), folder)


def _write_prediction(folder: Path, version: int) -> None:
    from tskd.data import files

    files.write_label(folder / "case.png", np.full((8, 8), version, np.uint8))
    files.write_label(folder / "stack.tif", np.full((2, 8, 8), version, np.uint8))
    files.write_image(folder / "image.npy", np.full((8, 8), version, np.float32))


def _write_run_files(folder: Path, version: int) -> None:
    from tskd.atomic import write_json
    from tskd.config import RunConfig, save_config
    from tskd.pipeline.markers import mark_done

    save_config(RunConfig(run_dir=f"run{version}"), folder / "config.yaml")
    write_json(folder / "reports" / "pipeline.json", {"version": version})
    mark_done(folder / "student", f"fp{version}", {"version": version})


def _write_cache(folder: Path, version: int) -> None:
    from tskd.training.teacher_cache import TeacherCache

    cache = TeacherCache(folder, "teacher", ["neck"])
    cache.put("k" * 64, {"neck": torch.full((4, 2, 2), float(version))})


WRITERS: dict[str, Callable[[Path, int], None]] = {
    "student bundle": _write_student,
    "teacher adapter": _write_teacher,
    "diffusion model": _write_diffusion,
    "mini SAM weights": _write_mini_sam,
    "metrics report": _write_metrics,
    "predicted label maps": _write_prediction,
    "config, reports, stage.json": _write_run_files,
    "teacher cache entry": _write_cache,
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_artefact_writer_keeps_the_previous_files_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    folder = tmp_path / "artefact"
    WRITERS[name](folder, 1)
    before = snapshot(folder)
    assert before
    fill_disk(monkeypatch, under=folder)
    with pytest.raises(DiskFullError, match=r"^no space left on .*artefact.*, \d+ MB needed; "):
        WRITERS[name](folder, 2)
    assert snapshot(folder) == before  # every file has its old bytes; no temp file is left


def test_transfer_set_images_are_kept_when_the_disk_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tskd.config import SynthConfig
    from tskd.training import synthesize

    images = [np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1)) for _ in range(3)]
    cfg = SynthConfig(resolution=16, base_channels=8, sample_steps=2, n_images=3,
                      near_copy_threshold=0.0)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.device = 2, 2, "cpu"
    out = tmp_path / "transfer" / "synthetic"
    synthesize.synthesize(images, cfg, out)
    before = snapshot(out)
    assert len([n for n in before if n.endswith(".png")]) == 3
    cfg.train.seed = 1
    fill_disk(monkeypatch, under=out)
    with pytest.raises(DiskFullError, match=full_message(out)):
        synthesize.synthesize(images, cfg, out)
    assert snapshot(out) == before


def test_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckpt_kill import CFG, build
    from tskd.engine import Progress, RunControl, train

    reference = build()
    train(reference, CFG)
    folder = tmp_path / "ck"

    def disk_fills_after_epoch_1(p: Progress) -> None:
        if p.step == 9:  # epoch 1's checkpoint is on disk; epoch 2's will not fit
            fill_disk(monkeypatch, under=folder)

    with pytest.raises(DiskFullError, match=full_message(folder)):
        train(build(), CFG, control=RunControl(disk_fills_after_epoch_1, checkpoint_dir=folder))
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt"]  # no half-written save left
    monkeypatch.setattr(atomic, "_write_file", _real_write_file)  # space was freed
    task = build()
    resume = RunControl(resume=True, checkpoint_dir=folder)
    assert train(task, CFG, control=resume).resumed_from_epoch == 1
    ref = reference.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in task.model.state_dict().items())


def test_onnx_export_on_a_full_disk_is_one_line(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.inference import bundle

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(args[2]))

    monkeypatch.setattr(torch.onnx, "export", full)
    old = tmp_path / "model.onnx"
    old.write_bytes(b"old model")
    with pytest.raises(DiskFullError, match=full_message(tmp_path)):
        bundle.export_onnx(_student(0), old, 32)
    assert old.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# ------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tiny_setup import write_tiny_sam, write_tiny_task

    root = tmp_path_factory.mktemp("tiny_disk")
    return {"root": root, "data": write_tiny_task(root / "data"),
            "sam": write_tiny_sam(root / "sam.safetensors")}


def test_cli_stage_on_a_full_disk_exits_2_with_one_line_and_keeps_the_student(
    tiny: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tiny_setup import tiny_config, write_config
    from tskd.apps.cli import main

    cfg = tiny_config(tiny["data"], tiny["sam"], tiny["root"] / "run")
    cfg["data"]["test"] = None
    config = write_config(tiny["root"] / "run.yaml", cfg)
    args = ["finetune-student", "--from-scratch", "--config", str(config)]
    assert main(args) == 0
    student = tiny["root"] / "run" / "student"
    before = snapshot(student)
    assert {"model.safetensors", "meta.json", "stage.json"} <= set(before)
    capsys.readouterr()
    fill_disk(monkeypatch, under=student)
    assert main([*args, "--epochs", "2"]) == 2  # other settings: the stage runs again
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after the progress bar
    needed = atomic.megabytes(len(before["model.safetensors"]) + len(before["meta.json"]))
    assert re.fullmatch(rf"tskd: error: {full_message(student, needed)[1:-1]}", err), err
    assert "Traceback" not in stderr
    after = snapshot(student)  # the previous student kept; its stage.json withdrawn when the
    assert after == {k: v for k, v in before.items() if k != "stage.json"}  # new one started


def test_cli_full_disk_outside_the_atomic_writer_is_one_line_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from tskd.apps.cli import main
    from tskd.data import phantoms

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "d" / "x.png"))

    monkeypatch.setattr(phantoms, "write_task_folders", full)
    assert main(["make-sample-data", "kidney_us", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"tskd: error: no space left on {tmp_path / 'd'}; free some space there (or "
                   "choose another folder) and run again, the previous files were kept")
