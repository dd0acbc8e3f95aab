"""User files are never overwritten or deleted; one writer per run folder at a time.

Each test states the right outcome: the user's file still has its bytes, the exit code is 2 and
the one error line names the folder, only the files a run recorded are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_setup import TINY_SIZE, tiny_config, write_tiny_sam, write_tiny_task
from tskd.apps.cli import main
from tskd.config import RunConfig, from_dict
from tskd.data import folders, outputs, samples
from tskd.data.files import read_label, write_image, write_label
from tskd.errors import CheckpointError, RunFolderError, TskdInputError, TskdWarning
from tskd.pipeline import context, lock, run_folder
from tskd.pipeline.manifest import (
    _ACTIVE,
    claim_run_folder,
    folder_kind,
    owned_files,
    remove_owned,
    tracked,
)
from tskd.pipeline.manifest_file import (
    LOCK_INFO_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    content_changed,
    read_manifest,
    write_manifest,
)

USER_BYTES = b"my irreplaceable scan notes\n"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny.safetensors")


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tskd.config import StudentConfig
    from tskd.inference import bundle
    from tskd.models.student import Student

    torch.manual_seed(0)
    cfg = StudentConfig(embed_dim=32, depth=2, num_heads=2, decoder_channels=16)
    folder = tmp_path_factory.mktemp("model") / "student"
    bundle.save_student(Student(cfg, 2, 32), folder, {"class_names": ["background", "fg"]})
    return folder


def _scans(folder: Path, n: int = 2) -> dict[Path, bytes]:
    """n small gray PNG scans; returns their bytes by path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(n):
        write_image(folder / f"case_{k}.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    return {p: p.read_bytes() for p in sorted(folder.iterdir())}


def _user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_BYTES)
    return path


def _error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("tskd: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


def _unchanged(files: dict[Path, bytes]) -> bool:
    return all(p.read_bytes() == b for p, b in files.items())


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}


# -- predict, evaluate, export-onnx, make-sample-data -----------------------------------------

@pytest.mark.parametrize("where", ["same", "inside", "parent", "file_folder", "symlink"])
def test_predict_output_that_is_contains_or_is_inside_an_input_is_refused(
        tmp_path: Path, student: Path, capsys: pytest.CaptureFixture, where: str) -> None:
    images = tmp_path / "data" / "images"
    scans = _scans(images)
    inputs = [str(images)]
    out = {"same": images, "inside": images / "pred", "parent": tmp_path / "data",
           "file_folder": images, "symlink": tmp_path / "link"}[where]
    if where == "file_folder":
        inputs = [str(images / "case_0.png")]
    if where == "symlink":
        out.symlink_to(images, target_is_directory=True)
    code = main(["predict", *inputs, "--model", str(student), "-o", str(out)])
    assert code == 2
    line = _error_line(capsys)
    relation = {"same": " is ", "inside": " is inside ", "parent": " contains ",
                "file_folder": " is ", "symlink": " is "}[where]
    assert relation in line and "choose an output folder outside them" in line, line
    assert _unchanged(scans) and sorted(images.iterdir()) == sorted(scans)


def test_predict_a_file_into_a_new_folder_beside_it_is_allowed(tmp_path: Path,
                                                             student: Path) -> None:
    """An input *file* forbids only its own folder: `predict scan.png -o pred` beside it works."""
    images = tmp_path / "data" / "images"
    scans = _scans(images)
    out = images / "pred"
    assert main(["predict", str(images / "case_0.png"), "--model", str(student),
                 "-o", str(out)]) == 0
    assert [p.name for p in out.iterdir()] == ["case_0.png"]
    assert _unchanged(scans)


def test_predict_into_a_ground_truth_folder_needs_overwrite(tmp_path: Path, student: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "data" / "images"
    _scans(images)
    labels = tmp_path / "data" / "labels"
    gt = {}
    for k in range(2):  # ground truth saved as tif: the prediction would be case_k.png
        write_label(labels / f"case_{k}.tif", np.ones((40, 40), np.uint8))
        gt[labels / f"case_{k}.tif"] = (labels / f"case_{k}.tif").read_bytes()
    assert main(["predict", str(images), "--model", str(student), "-o", str(labels)]) == 2
    line = _error_line(capsys)
    assert "already holds 2 file(s)" in line and "--overwrite" in line and "case_0.tif" in line
    assert _unchanged(gt) and len(list(labels.iterdir())) == 2
    # with --overwrite the run goes on and names what it replaces (here: nothing of the tifs)
    assert main(["predict", str(images), "--model", str(student), "-o", str(labels),
                 "--overwrite"]) == 0
    assert _unchanged(gt)
    assert sorted(p.name for p in labels.iterdir()) == ["case_0.png", "case_0.tif", "case_1.png",
                                                        "case_1.tif"]
    capsys.readouterr()
    assert main(["predict", str(images), "--model", str(student), "-o", str(labels),
                 "--overwrite"]) == 0
    assert "tskd: warning: replaced 2 existing file(s)" in capsys.readouterr().err


class _Ones:
    """Stands in for a Segmenter: every pixel class 1, never tiles."""

    max_pixels = None

    def tiling_note(self, height: int, width: int) -> str | None:
        return None

    def segment(self, image: np.ndarray, is_stack: bool | None = None) -> np.ndarray:
        return np.ones(image.shape[:2], np.int64)


def test_predict_paths_backend_refuses_and_names_replacements(tmp_path: Path) -> None:
    from tskd.inference.predict import predict_paths

    images = tmp_path / "images"
    scans = _scans(images)
    with pytest.raises(TskdInputError, match="is the folder of the input"):
        predict_paths(_Ones(), list(scans), images)  # the widgets' and scripts' path too
    out = tmp_path / "pred"
    mine = _user_file(out / "case_1.png")
    with pytest.raises(TskdInputError, match="already holds 1 file"):
        predict_paths(_Ones(), list(scans), out)
    assert mine.read_bytes() == USER_BYTES and not (out / "case_0.png").exists()
    with pytest.warns(TskdWarning, match=r"replaced 1 existing file\(s\) in .*: case_1.png"):
        written = predict_paths(_Ones(), list(scans), out, overwrite=True)
    assert [p.name for p in written] == ["case_0.png", "case_1.png"]
    assert _unchanged(scans)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TskdInputError, match="is a file"):
        predict_paths(_Ones(), list(scans), tmp_path / "afile")


def test_evaluate_output_rules(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = tmp_path / "gt"
    pred = tmp_path / "pred"
    for folder in (gt, pred):
        write_label(folder / "a.png", np.eye(8, dtype=np.uint8))
    base = ["evaluate", "--pred", str(pred), "--gt", str(gt)]
    before = _digest(gt)
    assert main([*base, "-o", str(gt)]) == 2
    assert "is the input folder" in _error_line(capsys) and _digest(gt) == before
    out = tmp_path / "metrics"
    mine = _user_file(out / "metrics.json")
    assert main([*base, "-o", str(out)]) == 2
    assert "--overwrite" in _error_line(capsys) and mine.read_bytes() == USER_BYTES
    assert main([*base, "-o", str(out), "--overwrite"]) == 0
    assert json.loads(mine.read_text())["summary"]
    assert main([*base, "-o", str(tmp_path)]) == 0  # a folder above the inputs is fine here


def test_export_onnx_never_replaces_without_overwrite(tmp_path: Path, student: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    weights = student / "model.safetensors"
    before = weights.read_bytes()
    assert main(["export-onnx", "--model", str(student), "-o", str(weights)]) == 2
    assert "is the input folder" in _error_line(capsys)
    assert weights.read_bytes() == before
    target = _user_file(tmp_path / "student.onnx")
    assert main(["export-onnx", "--model", str(student), "-o", str(target)]) == 2
    line = _error_line(capsys)
    assert "already holds 1 file(s)" in line and "--overwrite" in line
    assert target.read_bytes() == USER_BYTES


def test_export_onnx_into_the_model_folder_is_refused(student: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    before = _digest(student)
    assert main(["export-onnx", "--model", str(student), "-o", str(student / "x.onnx")]) == 2
    assert "is the input folder" in _error_line(capsys)
    assert _digest(student) == before


def test_make_sample_data_never_replaces_or_mixes_user_files(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["make-sample-data", "kidney_us", str(tmp_path / "s"), "--train", "2",
            "--unlabelled", "1", "--test", "1", "--size", "32"]
    mine = _user_file(tmp_path / "s" / "train" / "images" / "my_scan.png")
    for extra in ([], ["--overwrite"]):  # other files in an image folder: refused even so
        assert main(args + extra) == 2
        line = _error_line(capsys)
        assert "my_scan.png" in line and "mixed into its data" in line
        assert "--overwrite" not in line
    assert mine.read_bytes() == USER_BYTES and len(list(mine.parent.iterdir())) == 1
    mine.unlink()
    notes = _user_file(tmp_path / "s" / "notes.txt")  # beside the splits: never touched
    assert main(args) == 0
    assert main(args) == 2
    assert "--overwrite" in _error_line(capsys)
    assert main(args + ["--overwrite"]) == 0
    assert "replacing" in capsys.readouterr().err
    assert notes.read_bytes() == USER_BYTES


# -- run folders: manifest, legacy runs, foreign folders --------------------------------------

def _foreign_run_folder(root: Path) -> dict[Path, bytes]:
    files = {
        root / "config.yaml": b"run_dir: somewhere\n# my own experiment notes\n",
        root / "reports" / "results.csv": USER_BYTES,
        root / "cache" / "features.npy": USER_BYTES,
        root / "student" / "model.safetensors": USER_BYTES,
    }
    for p, b in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)
    return files


def test_overwrite_on_a_folder_that_is_not_a_run_deletes_nothing(
        tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    root = tmp_path / "theirs"
    files = _foreign_run_folder(root)
    for extra in ([], ["--overwrite"]):
        code = main(["finetune-teacher", "--run-dir", str(root), "--data", str(data / "train"),
                     "--model-type", "mini", "--checkpoint", str(sam), "--input-size",
                     str(TINY_SIZE), "--epochs", "1", "--device", "cpu", *extra])
        assert code == 2
        line = _error_line(capsys)
        assert "is not a tskd run folder" in line and "config.yaml was not written by tskd" in line
        assert "--overwrite" not in line  # it would not help: nothing suggests it
    assert _unchanged(files)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(root).as_posix() for p in files)  # not even a lock file added
    cfg = from_dict(RunConfig, {"run_dir": str(root)})
    with pytest.raises(RunFolderError, match="not a tskd run folder"):
        run_folder.prepare_run_dir(cfg, overwrite=True)
    with pytest.raises(RunFolderError, match="not a tskd run folder"):
        from tskd.pipeline import stages

        stages.stage_teacher(cfg)  # the widgets' training process goes through here
    assert _unchanged(files)


def test_overwrite_removes_only_what_the_run_recorded(tmp_path: Path, sam: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    a = write_tiny_task(tmp_path / "a", 2, 0, 0)
    b = write_tiny_task(tmp_path / "b", 2, 0, 0)
    run = tmp_path / "run"

    def teacher(data: Path, *extra: str) -> int:
        return main(["finetune-teacher", "--run-dir", str(run), "--data", str(data / "train"),
                     "--model-type", "mini", "--checkpoint", str(sam), "--input-size",
                     str(TINY_SIZE), "--epochs", "1", "--device", "cpu", *extra])

    assert teacher(a) == 0
    owned = owned_files(run)
    assert {"config.yaml", "teacher/stage.json", "teacher/adapter.safetensors"} <= owned
    assert any(f.startswith("checkpoints/teacher/") for f in owned)
    mine = [_user_file(run / "reports" / "my_notes.txt"), _user_file(run / "teacher" / "mine.md"),
            _user_file(run / "notes.txt")]
    capsys.readouterr()
    assert teacher(b) == 2
    line = _error_line(capsys)
    assert "different run" in line and "--overwrite" in line
    assert teacher(b, "--overwrite") == 0
    assert "tskd: warning: replacing the run" in capsys.readouterr().err
    assert all(p.read_bytes() == USER_BYTES for p in mine)
    assert (run / "teacher" / "adapter.safetensors").is_file()  # the new run's teacher


def test_legacy_run_folder_only_stage_folders_are_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "old"
    a = from_dict(RunConfig, {"run_dir": str(root), "data": {"labelled": "x"}})
    root.mkdir()
    (root / "config.yaml").write_text(  # an earlier version's run: no manifest
        __import__("yaml").safe_dump({"data": {"labelled": "x"}}))
    for stage in ("teacher", "student"):
        (root / stage).mkdir()
        (root / stage / "stage.json").write_text('{"fingerprint": "f"}')
        (root / stage / "model.safetensors").write_bytes(b"weights")
    kept = [_user_file(root / "cache" / "f.npy"), _user_file(root / "reports" / "r.json"),
            _user_file(root / "checkpoints" / "teacher" / "last.pt"),
            _user_file(root / "unlabelled" / "x.png")]
    assert folder_kind(root) == "legacy"
    run_folder.prepare_run_dir(a)  # same run: adopted, nothing removed
    assert (root / "teacher" / "model.safetensors").is_file()
    b = from_dict(RunConfig, {"run_dir": str(root), "data": {"labelled": "y"}})
    with pytest.raises(RunFolderError, match="different run"):
        run_folder.prepare_run_dir(b)
    with pytest.warns(TskdWarning, match=r"removed 4 file\(s\)"):
        run_folder.prepare_run_dir(b, overwrite=True)
    assert not (root / "teacher").exists() and not (root / "student").exists()
    assert all(p.read_bytes() == USER_BYTES for p in kept)


def test_a_killed_writer_leaves_files_the_next_one_records(tmp_path: Path) -> None:
    root = tmp_path / "run"
    claim_run_folder(root)
    _user_file(root / "reports" / "before.txt")
    ctx = tracked(root, "teacher", [root / "reports", root / "checkpoints"])
    ctx.__enter__()  # the process dies inside: the context never exits
    (root / "checkpoints" / "teacher").mkdir(parents=True)
    (root / "checkpoints" / "teacher" / "epoch_1").write_bytes(b"ckpt")
    assert "teacher" in read_manifest(root)["pending"]
    _ACTIVE.clear()  # what the kill does: no live writer in any process
    claim_run_folder(root)  # the next writer
    manifest = read_manifest(root)
    assert manifest["pending"] == {}
    assert set(manifest["files"]) == {"checkpoints/teacher/epoch_1"}  # not the user's file
    removed, changed = remove_owned(root)
    assert removed == [root / "checkpoints" / "teacher" / "epoch_1"] and changed == []
    assert not (root / "checkpoints").exists()  # emptied folders it created go too
    assert (root / "reports" / "before.txt").read_bytes() == USER_BYTES


def test_a_recorded_file_changed_by_the_user_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "run"
    claim_run_folder(root)
    with tracked(root, "x", [root / "reports"]):
        (root / "reports").mkdir()
        (root / "reports" / "r.md").write_text("tskd wrote this")
    (root / "reports" / "r.md").write_text("the user edited this report afterwards")
    removed, changed = remove_owned(root)
    assert removed == [] and changed == [root / "reports" / "r.md"]
    assert (root / "reports" / "r.md").read_text() == "the user edited this report afterwards"


def test_manifest_entries_outside_the_run_folder_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "run"
    claim_run_folder(root)
    victim = _user_file(tmp_path / "victim.txt")
    manifest = read_manifest(root)
    manifest["files"] = {"../victim.txt": len(USER_BYTES), str(victim): len(USER_BYTES)}
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert remove_owned(root) == ([], [])
    assert victim.read_bytes() == USER_BYTES


# -- the lock --------------------------------------------------------------------------------

def _hold_lock(root: Path) -> subprocess.Popen:
    script = textwrap.dedent(f"""
        import sys, time
        from tskd.pipeline.lock import run_lock
        with run_lock({str(root)!r}, "test holder"):
            print("held", flush=True)
            time.sleep(120)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_with_the_holder_then_proceeds(
        tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_tiny_task(tmp_path / "d", 2, 1, 1)
    cfg = tiny_config(data, sam, tmp_path / "run")
    (tmp_path / "run.yaml").write_text(__import__("yaml").safe_dump(cfg))
    holder = _hold_lock(tmp_path / "run")
    try:
        assert main(["run", "--config", str(tmp_path / "run.yaml")]) == 2
        line = _error_line(capsys)
        assert f"process {holder.pid} on " in line and "in use by another tskd process" in line
        assert main(["finetune-teacher", "--config", str(tmp_path / "run.yaml")]) == 2
        assert f"process {holder.pid}" in _error_line(capsys)
        from tskd.pipeline import stages

        with pytest.raises(RunFolderError, match=f"process {holder.pid}"):
            stages.stage_distill(from_dict(RunConfig, cfg))  # the widgets' job process
        assert not (tmp_path / "run" / "config.yaml").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["finetune-teacher", "--config", str(tmp_path / "run.yaml")]) == 0
    assert (tmp_path / "run" / "teacher" / "adapter.safetensors").is_file()
    assert not (tmp_path / "run" / LOCK_INFO_NAME).exists()


def test_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with lock.run_lock(tmp_path / "r", "outer"):
        with lock.run_lock(tmp_path / "r", "inner"):
            info = json.loads((tmp_path / "r" / LOCK_INFO_NAME).read_text())
            assert info["pid"] == os.getpid() and info["what"] == "outer"
        assert (tmp_path / "r" / LOCK_INFO_NAME).is_file()
    assert not (tmp_path / "r" / LOCK_INFO_NAME).exists()


# -- demo ------------------------------------------------------------------------------------

def test_demo_stopping_on_a_missing_checkpoint_deletes_nothing(tmp_path: Path) -> None:
    from tskd.apps import demo

    out = tmp_path / "DIR"
    mine = _user_file(out / "data" / "my_folder" / "scan.tif")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        demo.run_demo(budget="tiny", teacher="vit_b", checkpoint=str(tmp_path / "nope.pth"),
                      out=out, device="cpu")
    with pytest.raises(CheckpointError, match="needs its checkpoint file"):
        demo.run_demo(budget="tiny", teacher="vit_b", out=out, device="cpu")
    assert mine.read_bytes() == USER_BYTES
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "data", "data/my_folder", "data/my_folder/scan.tif"]


def test_demo_refuses_user_files_where_it_would_write(tmp_path: Path) -> None:
    from tskd.apps import demo

    out = tmp_path / "DIR"
    scan = _user_file(out / "data" / "train" / "images" / "my_scan.png")
    with pytest.raises(TskdInputError, match="my_scan.png.*mixed into its data"):
        demo.run_demo(budget="tiny", out=out, device="cpu")
    scan.unlink()
    report = _user_file(out / "report.md")
    with pytest.raises(TskdInputError, match="report.md was not written by tskd demo"):
        demo.run_demo(budget="tiny", out=out, device="cpu")
    assert report.read_bytes() == USER_BYTES


def test_tiny_demo_keeps_the_users_files_also_when_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.apps import demo, demo_report

    sam = write_tiny_sam(tmp_path / "sam" / "tiny.safetensors")

    def tiny_demo_config(data_root: Path, run_dir: Path, budget: demo.Budget, seed: int,
                         teacher: str = "mini", checkpoint: str | None = None,
                         device: str = "auto", teacher_size: int | None = None,
                         counts: tuple[int, int] | None = None) -> RunConfig:
        cfg = from_dict(RunConfig, tiny_config(data_root, sam, run_dir))
        cfg.data.test = None
        return cfg

    monkeypatch.setattr(demo, "demo_config", tiny_demo_config)
    monkeypatch.setattr(demo_report, "ms_per_image", lambda *a, **k: 1.0)
    out = tmp_path / "DIR"
    mine = [_user_file(out / "data" / "my_folder" / "scan.tif"), _user_file(out / "notes.txt")]
    demo.run_demo(n_labels=2, budget="tiny", out=out, device="cpu")
    assert (out / "report.json").is_file() and (out / "data" / "train" / "images").is_dir()
    n_train = len(list((out / "data" / "train" / "images").iterdir()))
    demo.run_demo(n_labels=1, seed=1, budget="tiny", out=out, device="cpu")  # again, fewer labels
    assert all(p.read_bytes() == USER_BYTES for p in mine)
    assert n_train == 2 and len(list((out / "data" / "train" / "images").iterdir())) == 1
    assert json.loads((out / "report.json").read_text())["n_labels"] == 1


# -- pretrain-mini ---------------------------------------------------------------------------

def test_pretrain_mini_default_output_is_a_user_folder_not_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from tskd.models.mini_sam import ASSETS, MiniSamConfig
    from tskd.training import pretrain
    from tskd.training.pretrain_config import PretrainConfig

    before = _digest(ASSETS)
    monkeypatch.setenv(pretrain.DATA_DIR_ENV, str(tmp_path / "userdata"))
    assert pretrain.default_output_dir() == tmp_path / "userdata" / "pretrain-mini"
    cfg = PretrainConfig(masks_per_image=1, image_size=64)
    cfg.train.batch_size, cfg.train.device = 2, "cpu"
    cfg.train.set_steps(2, cfg.steps_per_checkpoint)
    tiny = MiniSamConfig.tiny()
    info = pretrain.pretrain_mini(cfg, pretrain.default_output_dir(), arch=tiny)
    assert Path(info["weights"]) == tmp_path / "userdata" / "pretrain-mini" / "mini_sam.safetensors"
    with pytest.raises(TskdInputError, match="already holds 2 file"):
        pretrain.pretrain_mini(cfg, pretrain.default_output_dir(), arch=tiny)
    with pytest.raises(TskdInputError, match="--replace-packaged-weights"):
        pretrain.pretrain_mini(cfg, ASSETS, arch=tiny)
    assert main(["pretrain-mini", "--out", str(ASSETS), "--steps", "1"]) == 2
    assert "built-in teacher weights" in _error_line(capsys)
    assert _digest(ASSETS) == before


# -- the data widget's names -----------------------------------------------------------------

def test_unique_names_keep_every_pair() -> None:
    pytest.importorskip("napari")
    from napari_tskd._layers import unique_names

    names, note = unique_names(["case 1", "case.1", "case_1", "Case_1", "ok"])
    assert names == ["case_1", "case_1_2", "case_1_3", "Case_1_4", "ok"]
    assert note.startswith("some names become the same file name")
    assert "'case.1' -> case_1_2" in note and "'ok'" not in note
    assert unique_names(["a", "b"]) == (["a", "b"], "")
    # a generated suffix never takes a real name
    assert unique_names(["x 2", "x", "x"])[0] == ["x_2", "x", "x_3"]


def test_checks_are_silent_when_nothing_is_replaced(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert outputs.check_replace([tmp_path / "new.png"], False, tmp_path) == []
        (tmp_path / "in").mkdir()
        outputs.check_not_input(tmp_path / "out", [tmp_path / "in"])


def test_timing_of_lock_refusal_is_immediate(tmp_path: Path) -> None:
    holder = _hold_lock(tmp_path / "run")
    try:
        t0 = time.perf_counter()
        with pytest.raises(RunFolderError), lock.run_lock(tmp_path / "run"):
            pass
        assert time.perf_counter() - t0 < 2.0  # refused at once, never waits
    finally:
        holder.kill()
        holder.wait()


def test_data_widget_keeps_pairs_whose_names_collide(make_napari_viewer, tskd_gui_env,
                                                     notes) -> None:
    pytest.importorskip("napari")
    from napari_tskd._data_widget import DataWidget

    folder = tskd_gui_env.parent / "user_data"
    for k, name in enumerate(["case 1", "case.1", "case_1"]):
        image = np.full((16, 16), 40 * (k + 1), np.uint8)
        label = np.zeros((16, 16), np.uint8)
        label[2:2 + 3 * (k + 1), 2:8] = 1
        write_image(folder / "images" / f"{name}.png", image)
        write_label(folder / "labels" / f"{name}.png", label)
    viewer = make_napari_viewer()
    w = DataWidget(viewer)
    w.source.value = "folder"
    w.labelled_folder.value = str(folder)
    assert w.use_data()
    labels = tskd_gui_env / "data" / "labels"
    assert sorted(p.stem for p in labels.iterdir()) == ["case_1", "case_1_2", "case_1_3"]
    sums = sorted(int(read_label(p).sum()) for p in labels.iterdir())
    assert sums == [18, 36, 54]  # three distinct pairs, none lost
    warned = [m for s, m in notes.all() if s.lower() == "warning"]
    assert len(warned) == 1 and "kept apart" in warned[0]
    assert "'case 1' -> case_1, 'case.1' -> case_1_2, 'case_1' -> case_1_3" in warned[0]
    assert not notes.errors()


def test_a_whole_run_records_every_file_it_writes(tmp_path: Path, sam: Path) -> None:
    from tskd.pipeline import registry

    data = write_tiny_task(tmp_path / "d", 2, 1, 1)
    cfg = from_dict(RunConfig, tiny_config(data, sam, tmp_path / "run"))
    registry.run_pipeline(cfg)
    root = tmp_path / "run"
    written = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    internal = {MANIFEST_NAME, LOCK_NAME}
    assert owned_files(root) == written - internal
    assert "reports/pipeline.json" in written and "student/model.safetensors" in written
    assert read_manifest(root)["pending"] == {}


# -- data folders: one way to list them; a run folder never lies in one ------------------------

def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_dataset_folder_as_unlabelled_gives_its_images_not_its_labels(
        tmp_path: Path, sam: Path) -> None:
    """`data.unlabelled` = a labelled set (images/ + labels/): the transfer set lists its
    images and never a label map as an image; the fingerprint lists what the loader reads."""
    from tskd.pipeline import fingerprints, stages

    data = write_tiny_task(tmp_path / "d", 2, 0, 3)
    raw = tiny_config(data, sam, tmp_path / "run")
    raw["data"]["unlabelled"] = str(data / "test")
    raw["synth"]["enabled"] = False
    cfg = from_dict(RunConfig, raw)
    stages.stage_synthesize(cfg)
    manifest = json.loads((tmp_path / "run" / "transfer" / "manifest.json").read_text())
    images = [str(data / "test" / "images" / f"kidney_us_test_{k:04d}.png") for k in range(3)]
    assert manifest["unlabelled"] == images
    assert [str(p) for p in folders.data_files(data / "test", "unlabelled")] == images
    assert len(samples.load_unlabelled(data / "test")) == 3  # the loader reads the same three
    before = fingerprints.synth_fp(cfg, "x")
    (data / "test" / "labels" / "kidney_us_test_0000.png").write_bytes(b"edited label")
    assert fingerprints.synth_fp(cfg, "x") == before  # a label file is not a transfer image


def test_data_folders_are_never_read_recursively(tmp_path: Path, sam: Path) -> None:
    """Images in other sub-folders (an old run, notes) are not data of any role; a changed
    label file still changes the labelled fingerprint (it is read)."""

    data = write_tiny_task(tmp_path / "d", 2, 2, 0)
    unl = data / "unlabelled" / "images"
    stray = [unl / "old_run" / "transfer" / "synthetic" / "s_0000.png",
             data / "train" / "notes" / "sketch.png", data / "train" / "images" / "x" / "y.png"]
    for p in stray:
        write_image(p, np.zeros((8, 8), np.uint8))
    unl_files = folders.data_files(data / "unlabelled", "unlabelled")
    assert [p.name for p in unl_files] == ["kidney_us_unlabelled_0000.png",
                                           "kidney_us_unlabelled_0001.png"]
    lab_files = folders.data_files(data / "train", "labelled")
    assert [p.relative_to(data / "train").as_posix() for p in lab_files] == [
        "images/kidney_us_train_0000.png", "images/kidney_us_train_0001.png",
        "labels/kidney_us_train_0000.png", "labels/kidney_us_train_0001.png"]
    assert folders.data_files(data / "train", "test") == lab_files
    cfg = from_dict(RunConfig, tiny_config(data, sam, tmp_path / "run"))
    fp = context.load_labelled_data(cfg).fingerprint
    write_image(data / "train" / "notes" / "sketch2.png", np.ones((8, 8), np.uint8))
    assert context.load_labelled_data(cfg).fingerprint == fp
    label = data / "train" / "labels" / "kidney_us_train_0001.png"
    lab = read_label(label)
    lab[0, 0] = 1
    write_label(label, lab)
    assert context.load_labelled_data(cfg).fingerprint != fp


@pytest.mark.parametrize("where", ["inside_unlabelled", "is_labelled", "contains_test"])
@pytest.mark.parametrize("command", ["run", "synthesize"])
def test_a_run_folder_in_a_data_folder_is_refused(
        tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture, where: str,
        command: str) -> None:
    import shutil

    data = write_tiny_task(tmp_path / "d", 2, 2, 1)
    held_out = tmp_path / "project" / "held_out"  # a test set kept in the project folder
    shutil.copytree(data / "test", held_out)
    run, data_folder, relation, role = {
        "inside_unlabelled": (data / "unlabelled" / "run", data / "unlabelled", "is inside",
                              "unlabelled"),
        "is_labelled": (data / "train", data / "train", "is", "labelled"),
        "contains_test": (tmp_path / "project", held_out, "contains", "test"),
    }[where]
    before = _tree(tmp_path)
    cfg = tiny_config(data, sam, run)
    cfg["data"]["test"] = str(held_out)
    config = tmp_path.parent / f"{tmp_path.name}.yaml"
    config.write_text(__import__("yaml").safe_dump(cfg))
    assert main([command, "--config", str(config)]) == 2
    line = _error_line(capsys)
    assert f"the run folder {run} {relation} the {role} data folder (data.{role}) " \
           f"{data_folder};" in line, line
    assert "choose a run folder outside them" in line
    assert _tree(tmp_path) == before  # nothing written inside the data: not even a lock file
    from tskd.pipeline import stages

    with pytest.raises(RunFolderError, match=f"{relation} the {role} data folder"):
        stages.stage_synthesize(from_dict(RunConfig, cfg))  # the widgets' training process
    with pytest.raises(RunFolderError, match=f"{relation} the {role} data folder"):
        run_folder.prepare_run_dir(from_dict(RunConfig, cfg))
    assert _tree(tmp_path) == before


def test_data_kept_in_the_run_folders_own_data_folders_is_allowed(tmp_path: Path) -> None:
    """The widgets export a run's data to run/data and run/unlabelled: that is allowed."""
    run = tmp_path / "run"
    write_tiny_task(tmp_path / "d", 2, 1, 0)
    cfg = from_dict(RunConfig, {"run_dir": str(run), "data": {
        "labelled": str(run / "data"), "unlabelled": str(run / "unlabelled")}})
    assert run_folder.prepare_run_dir(cfg) == run
    assert (run / "config.yaml").is_file()


# -- a run folder's config.yaml the user edited; content, not size, decides ----------------------

def _tiny_run_config(tmp_path: Path, sam: Path) -> tuple[dict, Path]:
    data = write_tiny_task(tmp_path / "d", 2, 0, 0)
    raw = tiny_config(data, sam, tmp_path / "run")
    raw["data"]["unlabelled"] = raw["data"]["test"] = None
    raw["student"]["from_scratch"] = True  # one short stage
    config = tmp_path / "c.yaml"
    config.write_text(__import__("yaml").safe_dump(raw))
    return raw, config


@pytest.mark.parametrize("edit", ["value", "comment"])
def test_an_edited_run_config_is_kept_under_another_name(
        tmp_path: Path, sam: Path, capsys: pytest.CaptureFixture, edit: str) -> None:
    _, config = _tiny_run_config(tmp_path, sam)
    run = tmp_path / "run"
    assert main(["run", "--config", str(config)]) == 0
    written = (run / "config.yaml").read_text()
    entry = read_manifest(run)["files"]["config.yaml"]
    assert entry == {"size": len(written.encode()),
                     "sha256": hashlib.sha256(written.encode()).hexdigest()}
    mine = written.replace("lr: 0.001", "lr: 0.002") if edit == "value" else \
        "# my notes on this run\n" + written
    assert mine != written
    (run / "config.yaml").write_text(mine)
    capsys.readouterr()
    assert main(["run", "--config", str(config)]) == 0
    err = capsys.readouterr().err
    kept = sorted(run.glob("config.edited-*.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == mine
    assert len(kept[0].stem) == len("config.edited-20250101-120000")
    warned = [line for line in err.splitlines() if "was edited since tskd wrote it" in line]
    assert len(warned) == 1 and warned[0].startswith("tskd: warning:") and str(kept[0]) in warned[0]
    assert (run / "config.yaml").read_text() == written  # the run's own configuration again
    assert kept[0].name not in owned_files(run)
    removed, _ = remove_owned(run)  # what --overwrite could remove: never the user's
    assert kept[0].read_text() == mine and kept[0] not in removed


def test_an_edited_config_of_a_different_run_is_refused_then_kept(
        tmp_path: Path, sam: Path) -> None:
    raw, _ = _tiny_run_config(tmp_path, sam)
    cfg = from_dict(RunConfig, raw)
    run = tmp_path / "run"
    run_folder.prepare_run_dir(cfg)
    with run_folder.writing(run, "student", [run / "student"]):
        _user_file(run / "student" / "model.safetensors")  # a result of that run
    mine = "# edited\n" + (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(mine)
    other = from_dict(RunConfig, raw | {"data": raw["data"] | {"labelled": str(tmp_path / "b")}})
    with pytest.raises(RunFolderError, match=r"different run .*\(it was edited since tskd"):
        run_folder.prepare_run_dir(other)
    assert (run / "config.yaml").read_text() == mine  # refused: nothing changed
    with pytest.warns(TskdWarning) as record:
        run_folder.prepare_run_dir(other, overwrite=True)
    messages = [str(w.message) for w in record]
    kept = sorted(run.glob("config.edited-*.yaml"))
    assert len(kept) == 1 and kept[0].read_text() == mine
    assert any(str(kept[0]) in m for m in messages)
    assert not (run / "student" / "model.safetensors").exists()  # the old run's result went


def test_overwrite_keeps_a_recorded_file_whose_content_changed_at_the_same_size(
        tmp_path: Path) -> None:
    root = tmp_path / "run"
    claim_run_folder(root)
    with tracked(root, "x", [root / "reports"]):
        (root / "reports").mkdir()
        (root / "reports" / "r.md").write_text("tskd wrote this")
        (root / "reports" / "s.md").write_text("tskd wrote that")
    (root / "reports" / "r.md").write_text("user wrote this")  # same size, other bytes
    with tracked(root, "x", [root / "reports"]):
        pass  # a writer that leaves the file alone does not claim the user's edit
    removed, changed = remove_owned(root)
    assert removed == [root / "reports" / "s.md"] and changed == [root / "reports" / "r.md"]
    assert (root / "reports" / "r.md").read_text() == "user wrote this"


def test_a_manifest_of_sizes_only_still_works(tmp_path: Path) -> None:
    """Manifests written by the previous version hold sizes only: still read, size compared."""
    root = tmp_path / "run"
    claim_run_folder(root)
    (root / "a.txt").write_text("aaa")
    (root / "b.txt").write_text("bbbb")
    manifest = read_manifest(root)
    manifest["files"] = {"a.txt": 3, "b.txt": 3}
    write_manifest(root, manifest)
    assert folder_kind(root) == "run"
    removed, changed = remove_owned(root)
    assert removed == [root / "a.txt"] and changed == [root / "b.txt"]


# -- a folder where a file would go: refused with or without --overwrite ----------------------

@pytest.mark.parametrize("command", ["predict", "evaluate", "export-onnx", "make-sample-data",
                                     "pretrain-mini"])
@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_a_folder_where_an_output_file_goes_is_refused_even_with_overwrite(
        tmp_path: Path, student: Path, capsys: pytest.CaptureFixture, command: str,
        flag: list[str]) -> None:
    out = tmp_path / "out"
    images = tmp_path / "images"
    _scans(images)
    gt = tmp_path / "gt"
    write_label(gt / "case_0.png", np.eye(8, dtype=np.uint8))
    args, blocked = {
        "predict": (["predict", "--model", str(student), str(images), "-o", str(out)],
                    out / "case_0.png"),
        "evaluate": (["evaluate", "--pred", str(gt), "--gt", str(gt), "-o", str(out)],
                     out / "metrics.json"),
        "export-onnx": (["export-onnx", "--model", str(student), "-o", str(out / "m.onnx")],
                        out / "m.onnx"),
        "make-sample-data": (["make-sample-data", "kidney_us", str(out), "--train", "1",
                              "--unlabelled", "0", "--test", "0", "--size", "32"],
                             out / "task.json"),
        "pretrain-mini": (["pretrain-mini", "--out", str(out), "--steps", "1"],
                          out / "mini_sam.safetensors"),
    }[command]
    mine = _user_file(blocked / "inside.txt")  # the user's folder, with a file in it
    assert main([*args, *flag]) == 2
    line = _error_line(capsys)
    assert f"{blocked} is a folder where tskd would write a file" in line, line
    assert mine.read_bytes() == USER_BYTES
    assert _tree(out) == [blocked.name, f"{blocked.name}/inside.txt"]  # nothing written


def test_an_edited_config_that_is_the_new_config_is_not_copied(tmp_path: Path,
                                                                sam: Path) -> None:
    """`tskd run --config run/config.yaml` after editing a value there: the file already reads
    as the configuration the run writes, so nothing is lost and no copy is made."""
    from tskd.config import load_config, save_config

    raw, _ = _tiny_run_config(tmp_path, sam)
    run = tmp_path / "run"
    run_folder.prepare_run_dir(from_dict(RunConfig, raw))
    cfg = load_config(run / "config.yaml")
    cfg.student.train.lr = 0.002
    save_config(cfg, run / "config.yaml")  # the user's edit, in tskd's own format
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.prepare_run_dir(load_config(run / "config.yaml"))
    assert list(run.glob("config.edited-*")) == []
    assert load_config(run / "config.yaml").student.train.lr == 0.002
    assert not content_changed(
        run / "config.yaml", read_manifest(run)["files"]["config.yaml"])
