"""The run's config is the one truth: every tab writes its fields into it as the user changes
them, and every button (a tab's own, Train / Run all stages) runs with it as the tabs show it;
the default view (Advanced collapsed), the Train line (preset, estimate, quality) and the tab
titles. No training runs here: the job is captured where the process would start."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")


def _stack(z: int = 10, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A stack with a bright square per slice, every slice labelled."""
    rng = np.random.default_rng(0)
    img = (rng.random((z, size, size)) * 200).astype(np.uint16)
    lab = np.zeros((z, size, size), np.uint8)
    for k in range(z):
        img[k, 8:20, 8 + k % 4:20 + k % 4] += 1000
        lab[k, 8:20, 8 + k % 4:20 + k % 4] = 1
    return img, lab


@pytest.fixture
def dock(make_napari_viewer):
    """The TS-KD dock on a labelled stack; jobs are captured instead of started."""
    viewer = make_napari_viewer()
    img, lab = _stack()
    viewer.add_image(img, name="scan")
    viewer.add_labels(lab, name="scan labels")
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    main.reset_choices()
    jobs: list = []
    main.context.runner.start = lambda job: jobs.append(job) or job  # type: ignore[method-assign]
    main.jobs = jobs
    return main


def _train(dock, qtbot, jobs: int = 1) -> None:
    """Press Train and wait until the data is written and the job started (a thread writes)."""
    dock.stages["Data"].run_all_button.native.click()
    qtbot.waitUntil(lambda: len(dock.jobs) >= jobs, timeout=30000)


def test_train_runs_with_the_tabs_settings(dock, qtbot) -> None:
    """Teacher tab: 20 steps, 1000 epochs, input size 128; Transfer set: 5 images; Student:
    7 fine-tune epochs; Data: 64 px. The Data tab's Train runs exactly that (before: the
    config's defaults, 30 epochs at 256 px)."""
    from tskd.config import load_config

    teacher, transfer, student = dock.stages["Teacher"], dock.stages["Transfer set"], \
        dock.stages["Student"]
    teacher.max_steps.value, teacher.epochs.value, teacher.input_size.value = 20, 1000, 128
    transfer.n_images.value = 5
    student.finetune_epochs.value = 7
    dock.stages["Data"].image_size.value = 64
    _train(dock, qtbot)
    assert len(dock.jobs) == 1
    job = dock.jobs[0]
    assert job.steps == [{"target": "pipeline"}]
    t = job.config["teacher"]
    assert (t["train"]["max_steps"], t["train"]["epochs"], t["input_size"]) == (20, 1000, 128)
    assert job.config["synth"]["n_images"] == 5
    assert job.config["student"]["train"]["epochs"] == 7
    assert job.config["data"]["image_size"] == 64
    on_disk = load_config(dock.context.paths().config)  # the run folder says the same
    assert (on_disk.teacher.train.max_steps, on_disk.teacher.input_size) == (20, 128)
    assert on_disk.student.train.epochs == 7


def test_each_tab_button_runs_with_every_tabs_settings(dock) -> None:
    """A change in one tab reaches the jobs another tab starts (one config, not one per tab)."""
    assert dock.stages["Data"].use_data()
    teacher, student = dock.stages["Teacher"], dock.stages["Student"]
    student.distill_epochs.value = 3
    student.temperature.value = 4.5
    teacher.lora_rank.value = 8
    teacher.train_button.native.click()
    job = dock.jobs[-1]
    assert job.steps == [{"target": "teacher"}]
    assert job.config["distill"]["train"]["epochs"] == 3
    assert job.config["distill"]["temperature"] == 4.5
    assert job.config["teacher"]["lora"]["rank"] == 8
    assert job.config["teacher"]["lora"]["alpha"] == 8.0  # the default alpha/rank of 1 kept


def test_device_is_one_setting_shown_in_every_tab(dock) -> None:
    teacher, transfer, student = (dock.stages[k] for k in ("Teacher", "Transfer set", "Student"))
    teacher.device.value = "mps"
    assert transfer.device.value == "mps" and student.device.value == "mps"
    student.device.value = "cpu"
    assert teacher.device.value == "cpu"
    cfg = dock.context.config()
    assert cfg.device == "cpu" and cfg.device_of("teacher") == "cpu"


def test_a_field_that_cannot_be_used_stops_every_button(dock, notes) -> None:
    dock.stages["Teacher"].lr.value = "fast"
    dock.stages["Data"].run_all_button.native.click()
    dock.stages["Student"].both_button.native.click()
    assert dock.jobs == []
    assert notes.errors()[-2:] == ["learning rate must be a number, got 'fast'"] * 2
    assert not dock.context.run_dir.exists()  # Train wrote no data either
    dock.stages["Teacher"].lr.value = "0.002"
    dock.stages["Student"].distill_button.native.click()
    assert len(dock.jobs) == 1 and dock.jobs[0].config["teacher"]["train"]["lr"] == 0.002


def test_another_run_folder_shows_its_own_config(dock, tmp_path) -> None:
    from tskd.config import RunConfig, save_config

    teacher = dock.stages["Teacher"]
    teacher.epochs.value = 77
    other = tmp_path / "other_run"
    cfg = RunConfig(run_dir=str(other))
    cfg.teacher.train.epochs = 5
    other.mkdir()
    save_config(cfg, other / "config.yaml")
    dock.context.set_run_dir(other)
    assert teacher.epochs.value == 5  # the other run's, not the edit made for the first run
    assert dock.context.config().teacher.train.epochs == 5
    assert not dock.context.edits.edited("teacher.train.epochs")  # shown, not changed


def test_a_new_run_takes_the_preset_for_this_machine(dock, notes, qtbot) -> None:
    """Settings device 'cpu': the CPU preset (built-in mini SAM at 128, batch 4) goes into the
    run's config and the Teacher tab when Train is pressed; a size the user chose is kept."""
    teacher = dock.stages["Teacher"]
    assert teacher.input_size.value == 256
    _train(dock, qtbot)
    assert (teacher.model_type.value, teacher.input_size.value, teacher.batch_size.value) == (
        "mini", 128, 4)
    t = dock.jobs[0].config["teacher"]
    assert (t["model_type"], t["input_size"], t["train"]["batch_size"]) == ("mini", 128, 4)
    assert "preset for this machine: CPU: built-in mini SAM at 128" in notes.infos()[-1]


def test_the_preset_never_replaces_what_the_user_chose(dock, qtbot) -> None:
    teacher = dock.stages["Teacher"]
    teacher.input_size.value = 192
    _train(dock, qtbot)
    assert dock.jobs[0].config["teacher"]["input_size"] == 192 and teacher.input_size.value == 192


def test_advanced_settings_are_collapsed_by_default(dock) -> None:
    hidden = {
        "Teacher": ["lora_rank", "lora_targets", "lr", "batch_size"],
        "Student": ["temperature", "feature_weight", "output_weight", "dice_weight", "mode"],
        "Transfer set": ["near_copy", "sample_steps", "resolution"],
    }
    for tab, names in hidden.items():
        widget = dock.stages[tab]
        assert not widget.advanced.collapsible.isExpanded()
        assert {w.name for w in widget.advanced} == {getattr(widget, n).name for n in names}
        assert not any(getattr(widget, n) in list(widget.form) for n in names)
    assert dock.stages["Teacher"].train_button in list(dock.stages["Teacher"].actions)


def test_train_line_shows_a_time_estimate_from_the_tabs_settings(dock) -> None:
    data, teacher = dock.stages["Data"], dock.stages["Teacher"]
    assert data.run_all_button.text == "Train"
    # 10 labelled slices, validation share 0.2: 8 train; settings device cpu, so a new run
    # takes the CPU preset (mini SAM at 128 px, batch 4). teacher: 30 epochs x 2 batches x 4
    # images x 0.3 s x (128/256)^2 = 18 s; transfer set: (300 x 16 + 32 x 25) x 0.02 = 112 s;
    # distillation: 20 x 10 x 4 x 0.6 = 480 s; fine-tuning: 40 x 2 x 4 x 0.5 = 160 s
    assert data.plan.estimate.value == (
        "Preset for this machine: CPU: built-in mini SAM at 128 (its native size). "
        "Estimate: about 13 min on the CPU (teacher under 1 min, distillation about 8 min, "
        "fine-tuning about 3 min, transfer set about 2 min; rough)")
    teacher.input_size.value = 192  # the user's choice: no preset; 72 s x (192/256)^2 = 40.5 s
    assert data.plan.estimate.value == (
        "Estimate: about 13 min on the CPU (teacher under 1 min, distillation about 8 min, "
        "fine-tuning about 3 min, transfer set about 2 min; rough)")
    teacher.epochs.value = 300  # 300 x 2 x 4 x 0.3 x 0.5625 = 405 s; 1157 s in all
    assert data.plan.estimate.value.startswith(
        "Estimate: about 19 min on the CPU (teacher about 7 min,")


def test_quality_lines_name_the_validation_dice_or_say_why_there_is_none() -> None:
    from napari_tskd._forms import NO_VALIDATION, quality_text, stage_quality

    assert stage_quality("teacher", {"val_dice": 0.8123, "train_loss": 0.6}) == (
        "teacher: validation Dice 0.812")
    assert stage_quality("teacher", {"val_dice": None}) == f"teacher: {NO_VALIDATION}"
    assert stage_quality("student", {"val": {"dice": 0.5, "n_images": 2}}) == (
        "student: validation Dice 0.500 on 2 image(s)")
    assert stage_quality("student", {"val": {}}) == f"student: {NO_VALIDATION}"
    assert stage_quality("distill", {"steps": 3}) is None
    pipeline = {"pipeline": {"teacher": {"val_dice": 0.7}, "synthesize": {"n_kept": 3},
                             "distill": {}, "student": {"val": {"dice": 0.65, "n_images": 3}}}}
    assert quality_text(pipeline) == (
        "teacher: validation Dice 0.700; student: validation Dice 0.650 on 3 image(s)")
    assert "trainable_params" not in quality_text({"teacher": {"trainable_params": 9.36e5}})


def test_finished_jobs_show_quality_not_losses(dock) -> None:
    from napari_tskd._forms import NO_VALIDATION
    from napari_tskd._jobs import Job

    teacher, data = dock.stages["Teacher"], dock.stages["Data"]
    job = Job("Teacher", [], {}, owner=teacher, status="done",
              results={"teacher": {"train_loss": 0.604, "trainable_params": 9.36e5,
                                   "val_dice": None}})
    teacher.on_job_finished(job)
    assert teacher.result.value == f"teacher: {NO_VALIDATION}"
    job = Job("Train", [], {}, owner=data, status="done",
              results={"pipeline": {"teacher": {"val_dice": 0.9},
                                    "student": {"val": {"dice": 0.8, "n_images": 2}}}})
    dock.context.runner.finished.emit(job)
    assert data.plan.quality.value == ("Quality reached: teacher: validation Dice 0.900; "
                                       "student: validation Dice 0.800 on 2 image(s)")


def test_every_tab_title_is_shown_whole(dock, qtbot) -> None:
    from qtpy.QtCore import Qt

    dock.resize(300, 600)  # narrower than napari's default dock
    dock.show()
    qtbot.waitExposed(dock)
    bar = dock.tabs.tabBar()
    assert bar.elideMode() == Qt.TextElideMode.ElideNone and bar.usesScrollButtons()
    metrics = bar.fontMetrics()
    for i in range(bar.count()):
        text = bar.tabText(i)
        assert bar.tabRect(i).width() >= metrics.horizontalAdvance(text), text
    assert [bar.tabText(i) for i in range(bar.count())] == [
        "Data", "Teacher", "Transfer set", "Student", "Segment", "Loop", "Settings"]


def test_settings_cannot_change_under_a_running_job(dock) -> None:
    """While a job runs, the tabs' training settings are held, so the progress line's totals
    and the form always agree; they are editable again when it ends."""
    from napari_tskd._jobs import Job

    teacher, student = dock.stages["Teacher"], dock.stages["Student"]
    job = Job("Train", [], {}, owner=dock.stages["Data"])
    dock.context.runner.started.emit(job)
    assert not teacher.epochs.enabled and not student.finetune_epochs.enabled
    assert not teacher.lora_targets.enabled  # Advanced too
    job.status = "done"
    dock.context.runner.finished.emit(job)
    assert teacher.epochs.enabled and student.finetune_epochs.enabled
