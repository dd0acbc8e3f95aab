"""State that survives a restart, and *Use this data* off the event loop.

A run folder opened again (a new viewer, or another folder picked) shows each stage as its
files say: done with its result, stopped with a checkpoint (Resume enabled), or not run; Resume
continues the real teacher's training from its checkpoint's step, not from step 1. *Use this
data* writes in a thread: napari's event loop never stalls for the writing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")


def _write_stage(run: Path, artefact: str, result: dict) -> None:
    (run / artefact).mkdir(parents=True, exist_ok=True)
    (run / artefact / "stage.json").write_text(json.dumps({"fingerprint": "x", "result": result}))


def _write_checkpoint(run: Path, name: str, step: int, epoch: int, epochs: int,
                      old: bool = False) -> None:
    folder = run / "checkpoints" / name / ("ckpt.old" if old else "ckpt")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps(
        {"task": name, "epoch": epoch, "step": step, "config": {"epochs": epochs}}))


def test_a_reopened_run_shows_each_stage_and_offers_resume(make_napari_viewer,
                                                          tskd_gui_env) -> None:
    """Was: after a restart every tab said 'idle' with no results and Resume was disabled."""
    run = tskd_gui_env
    _write_stage(run, "teacher", {"val_dice": 0.8123, "train_loss": 0.604})
    _write_checkpoint(run, "distill", step=7, epoch=2, epochs=30)
    _write_checkpoint(run, "synthesize", step=3, epoch=0, epochs=5, old=True)  # only ckpt.old
    viewer = make_napari_viewer()
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    teacher, student = main.stages["Teacher"].panel, main.stages["Student"].panel
    transfer, data = main.stages["Transfer set"].panel, main.stages["Data"].panel
    assert teacher.status.text() == "Teacher: done (val_dice 0.812, train_loss 0.604)"
    assert not teacher.resume_button.isEnabled()
    assert student.status.text() == (
        "Distillation: stopped at step 7 (epoch 3/30); Resume continues from its checkpoint\n"
        "Student: not run yet")
    assert student.resume_button.isEnabled()
    assert student.disk_steps == [{"target": "distill", "kwargs": {"resume": True}},
                                  {"target": "student", "kwargs": {"resume": True}}]
    assert transfer.resume_button.isEnabled()
    assert transfer.status.text().startswith("Transfer set: stopped at step 3 (epoch 1/5)")
    assert data.resume_button.isEnabled()
    assert data.disk_steps == [{"target": "pipeline", "kwargs": {"resume": True}}]
    assert len(data.status.text().splitlines()) == 4  # every stage of the run


def test_opening_another_run_folder_shows_its_state(make_napari_viewer, tskd_gui_env) -> None:
    other = tskd_gui_env.parent / "run2"
    _write_checkpoint(other, "teacher", step=5, epoch=1, epochs=4)
    viewer = make_napari_viewer()
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    panel = main.stages["Teacher"].panel
    assert panel.status.text() == "Teacher: not run yet" and not panel.resume_button.isEnabled()
    main.context.set_run_dir(other)
    assert panel.status.text().startswith("Teacher: stopped at step 5 (epoch 2/4)")
    assert panel.resume_button.isEnabled()
    main.context.set_run_dir(tskd_gui_env)
    assert not panel.resume_button.isEnabled()  # never another run's checkpoint


def test_an_unreadable_checkpoint_state_offers_no_resume(make_napari_viewer,
                                                        tskd_gui_env) -> None:
    folder = tskd_gui_env / "checkpoints" / "teacher" / "ckpt"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{not json")
    viewer = make_napari_viewer()
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    panel = main.stages["Teacher"].panel
    assert panel.status.text() == "Teacher: not run yet"
    assert not panel.resume_button.isEnabled()


class _Stalls:
    """The longest gap (ms) between ticks of a 10 ms timer."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.stamps = [time.perf_counter()]
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))
        self.timer.start()

    def stop(self) -> float:
        self.timer.stop()
        self.stamps.append(time.perf_counter())
        return max((b - a) * 1000 - 10 for a, b in zip(self.stamps, self.stamps[1:]))


def _slow_export(monkeypatch, seconds: float) -> None:
    import napari_tskd._export as export

    original = export.export_labelled

    def slow(*args, **kwargs):
        time.sleep(seconds)  # a slow disk: what took 1.4-3.4 s in the viewer
        return original(*args, **kwargs)

    monkeypatch.setattr(export, "export_labelled", slow)


def _data_widget(make_napari_viewer):
    from napari_tskd._data_widget import DataWidget

    viewer = make_napari_viewer()
    img = np.zeros((3, 32, 32), np.uint8)
    lab = np.zeros((3, 32, 32), np.uint8)
    lab[0, 4:12, 4:12] = 1
    lab[2, 8:20, 8:20] = 2
    viewer.add_image(img, name="img")
    viewer.add_labels(lab, name="lab")
    w = DataWidget(viewer)
    w.image.value, w.labels.value = viewer.layers["img"], viewer.layers["lab"]
    return w


def test_use_this_data_writes_without_freezing_the_viewer(make_napari_viewer, qtbot, notes,
                                                         monkeypatch, tskd_gui_env) -> None:
    w = _data_widget(make_napari_viewer)
    _slow_export(monkeypatch, 0.6)
    stalls = _Stalls()
    w.use_button.native.click()
    assert not w.use_button.enabled and not w.run_all_button.enabled  # while it writes
    assert w.summary.value.startswith("writing the data to ")
    qtbot.waitUntil(lambda: any("ready" in m for m in notes.infos()), timeout=20000)
    assert stalls.stop() < 100
    assert sorted(p.name for p in (tskd_gui_env / "data" / "labels").iterdir()) == [
        "img_z0000.tif", "img_z0002.tif"]
    assert w.summary.value.startswith("wrote 2 labelled image(s)")
    assert w.use_button.enabled


def test_use_this_data_refusal_from_the_thread_is_one_notification(
        make_napari_viewer, qtbot, notes, tskd_gui_env) -> None:
    """Labels the policy refuses (checked in the thread): one error, nothing written."""
    w = _data_widget(make_napari_viewer)
    w.labels.value.metadata["class_names"] = ["background", "kidney"]  # declares 0 and 1 only
    w.use_button.native.click()  # the labels hold 2 as well: refused in the writing thread
    qtbot.waitUntil(lambda: bool(notes.errors()), timeout=20000)
    assert len(notes.errors()) == 1, notes.errors()
    assert notes.errors()[0].startswith(
        "labels layer 'lab': label value(s) 2 are not among the declared classes 0, 1;")
    assert not (tskd_gui_env / "data").exists()
    qtbot.waitUntil(lambda: w.use_button.enabled, timeout=5000)


def test_run_all_starts_the_pipeline_once_the_data_is_written(make_napari_viewer, qtbot,
                                                             monkeypatch, tskd_gui_env) -> None:
    w = _data_widget(make_napari_viewer)
    _slow_export(monkeypatch, 0.3)
    started: list[tuple[str, list, bool]] = []
    monkeypatch.setattr(w, "start", lambda label, steps, cfg: started.append(
        (label, steps, (tskd_gui_env / "data" / "labels" / "img_z0002.tif").is_file())))
    stalls = _Stalls()
    w.run_all_button.native.click()
    assert started == []  # not before the data is there
    qtbot.waitUntil(lambda: bool(started), timeout=20000)
    assert stalls.stop() < 100
    assert started == [("Train (all stages)", [{"target": "pipeline"}], True)]


@pytest.fixture
def tiny_sam(tmp_path: Path) -> Path:
    """A random tiny SAM saved like the built-in mini weights."""
    pytest.importorskip("tskd.training.teacher")
    from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
    from tskd.models.mini_sam_files import save_mini_sam

    return save_mini_sam(build_mini_sam(MiniSamConfig.tiny()), MiniSamConfig.tiny(),
                         tmp_path / "tiny.safetensors", half=False)


@pytest.mark.slow
def test_resume_after_a_restart_continues_from_the_checkpoint_step(
        make_napari_viewer, qtbot, tskd_gui_env, tiny_sam) -> None:
    """Was: the viewer closed during training, reopened: Resume disabled, and training again
    started at step 1 although a checkpoint was kept. The real teacher stage, tiny."""
    from napari_tskd._run_state import read_checkpoint

    from tskd.config import save_config
    from tskd.data import phantoms

    viewer = make_napari_viewer()
    pairs = phantoms.generate("kidney_us", 6, size=64, seed=0)
    viewer.add_image(np.stack([p[0] for p in pairs]), name="kidney")
    viewer.add_labels(np.stack([p[1] for p in pairs]).astype(np.uint8), name="kidney labels")
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    assert main.stages["Data"].use_data()
    ctx = main.context
    cfg = ctx.config()
    cfg.teacher.checkpoint, cfg.teacher.input_size = str(tiny_sam), 64
    cfg.teacher.train.epochs, cfg.teacher.train.batch_size = 500, 2
    save_config(cfg, ctx.run_dir / "config.yaml")
    job = main.stages["Teacher"].start("Teacher", [{"target": "teacher"}], ctx.config())
    qtbot.waitUntil(lambda: (job.last_progress or {}).get("step", 0) >= 3, timeout=120000)
    viewer.close()  # napari closed during the job: cancelled with a checkpoint
    qtbot.waitUntil(lambda: not ctx.runner.running, timeout=20000)
    assert job.status == "cancelled", job.message
    kept = read_checkpoint(ctx.run_dir / "checkpoints" / "teacher")
    assert kept is not None and kept["step"] >= 3

    viewer = make_napari_viewer()  # napari started again on the same run folder
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    panel = main.stages["Teacher"].panel
    assert panel.status.text().startswith(f"Teacher: stopped at step {kept['step']} (epoch ")
    assert panel.resume_button.isEnabled()
    steps: list[int] = []
    main.context.runner.progress.connect(
        lambda j, p: steps.append(int(p["step"])) if p.get("stage") == "teacher" else None)
    panel.resume_button.click()
    resumed = main.context.runner.job
    assert resumed is not None and resumed.steps == [{"target": "teacher",
                                                      "kwargs": {"resume": True}}]
    qtbot.waitUntil(lambda: bool(steps), timeout=120000)
    main.context.runner.cancel()
    main.context.runner.wait(30)
    assert steps[0] == kept["step"] + 1  # on from the checkpoint, not from step 1
