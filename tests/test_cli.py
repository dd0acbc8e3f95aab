"""The `tskd` command: its subcommands, and one clear line with exit code 2 for each bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_setup import TINY_SIZE, write_tiny_sam, write_tiny_task
from tskd.apps.cli import main
from tskd.data import files

SUBCOMMANDS = ("finetune-teacher", "synthesize", "distill", "finetune-student", "predict",
               "evaluate", "check-data", "run", "export-onnx", "pretrain-mini", "make-sample-data",
               "demo")


@pytest.fixture(scope="module")
def sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny.safetensors")


def _teacher(args: list[str], sam: Path, run: Path) -> list[str]:
    return ["finetune-teacher", "--run-dir", str(run), "--model-type", "mini", "--checkpoint",
            str(sam), "--input-size", str(TINY_SIZE), "--epochs", "1", "--device", "cpu", *args]


def _one_error_line(capsys: pytest.CaptureFixture, *fragments: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tskd: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    for f in fragments:
        assert f in errors[0], errors[0]


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "tskd", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in SUBCOMMANDS:
        assert cmd in out


def test_missing_data_folder(tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(_teacher(["--data", str(tmp_path / "nope")], sam, tmp_path / "run"))
    assert code == 2
    _one_error_line(capsys, "not found", "nope")


def test_unreadable_image(tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    victim = next((data / "train" / "images").iterdir())
    victim.write_bytes(b"\x89PNG broken")
    assert main(_teacher(["--data", str(data / "train")], sam, tmp_path / "run")) == 2
    _one_error_line(capsys, victim.name, "cannot read")


def test_image_and_label_of_different_sizes(tmp_path: Path, sam: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    label = next((data / "train" / "labels").iterdir())
    files.write_label(label, np.zeros((10, 12), np.uint8))
    assert main(_teacher(["--data", str(data / "train")], sam, tmp_path / "run")) == 2
    _one_error_line(capsys, "differ in size")


def test_label_with_non_integer_values(tmp_path: Path, sam: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    label = next((data / "train" / "labels").iterdir())
    label.unlink()
    np.save(label.with_suffix(".npy"), np.full((TINY_SIZE, TINY_SIZE), 0.5, np.float32))
    assert main(_teacher(["--data", str(data / "train")], sam, tmp_path / "run")) == 2
    _one_error_line(capsys, "non-integer")


def test_no_labelled_image(tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    for f in (data / "train" / "labels").iterdir():
        f.unlink()
    assert main(_teacher(["--data", str(data / "train")], sam, tmp_path / "run")) == 2
    _one_error_line(capsys, "no labelled image")


def test_checkpoint_not_sam_or_truncated(tmp_path: Path, sam: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, foreign)
    args = _teacher(["--data", str(data / "train")], foreign, tmp_path / "run")
    assert main(args) == 2
    _one_error_line(capsys, "not a Segment Anything checkpoint")

    official = tmp_path / "sam_tiny.pth"
    from safetensors.torch import load_file

    torch.save(load_file(str(sam)), official)  # official key format, pickled like Meta's files
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    assert main(_teacher(["--data", str(data / "train")], truncated, tmp_path / "run")) == 2
    _one_error_line(capsys, "truncated")


def test_checkpoint_of_another_model_type(tmp_path: Path, sam: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    args = _teacher(["--data", str(data / "train")], sam, tmp_path / "run")
    args[args.index("mini")] = "vit_b"
    assert main(args) == 2
    _one_error_line(capsys, "vit_b was asked for")


def test_output_folder_of_a_different_run(tmp_path: Path, sam: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    a = write_tiny_task(tmp_path / "a", 2, 0, 0)
    b = write_tiny_task(tmp_path / "b", 2, 0, 0)
    run = tmp_path / "run"
    assert main(_teacher(["--data", str(a / "train")], sam, run)) == 0
    capsys.readouterr()
    assert main(_teacher(["--data", str(b / "train")], sam, run)) == 2
    _one_error_line(capsys, "different run", "--overwrite")
    assert (run / "teacher" / "adapter.safetensors").is_file()  # nothing lost
    assert main(_teacher(["--data", str(b / "train"), "--overwrite"], sam, run)) == 0


def test_mixed_channel_counts_warn_and_train(tmp_path: Path, sam: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 3, 0, 0)
    first = sorted((data / "train" / "images").iterdir())[0]
    gray = files.read_image(first)
    files.write_image(first, np.repeat(gray[..., None], 3, axis=-1))
    assert main(_teacher(["--data", str(data / "train")], sam, tmp_path / "run")) == 0
    err = capsys.readouterr().err
    assert "tskd: warning:" in err and "converted 1 image" in err


def test_bad_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("teacher:\n  lora:\n    rnak: 4\n")
    assert main(["run", "--config", str(cfg)]) == 2
    _one_error_line(capsys, "teacher.lora.rnak")


def test_progress_bar_restarts_for_each_model_of_one_stage(capsys) -> None:
    """The demo fine-tunes three students in a row: each gets its own bar (and its own rate)."""
    from tskd.apps.cli import _TqdmProgress
    from tskd.engine import Progress

    bars = _TqdmProgress()
    seen = []
    for step in (1, 2, 3, 1, 2):
        bars(Progress("finetune-student", step, 3, 0, 1, 0.5, None))
        seen.append(bars._bar)
    bars.close()
    assert seen[0] is seen[1] is seen[2]
    assert seen[3] is not seen[2] and seen[3] is seen[4]
    assert capsys.readouterr().err.count("finetune-student") >= 2


def test_a_second_ctrl_c_aborts_in_one_line_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tskd.apps import cli

    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt  # what the Ctrl-C handler raises the second time

    monkeypatch.setitem(cli.COMMANDS, "check-data", interrupted)
    assert main(["check-data", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == ("tskd: aborted (a training goes on with --resume from its last "
                           "complete checkpoint, if it wrote one)")
