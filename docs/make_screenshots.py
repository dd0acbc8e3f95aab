"""The whole TS-KD loop driven through the widgets, with screenshots for docs/user-guide.md.

On the kidney ultrasound sample (File > Open Sample) and the built-in mini SAM teacher, every
stage is run by pressing its widget's button, as a user would: Data, Teacher (LoRA), Transfer set
(diffusion), Distil + fine-tune, Segment the unseen stack, then one round of the loop (suggest
the next slice, correct it, add it, retrain, segment again). A screenshot is taken after each
stage, and the run's figures go to docs/results/gui_loop_kidney_us.json: seconds per stage and
the student's Dice on the unseen stack before and after the correction.

The "correction" is the slice's procedural ground truth painted into the prediction layer with
napari's undoable paint API: a stand-in for an expert's brush, the only scripted part.

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python docs/make_screenshots.py

About 10 minutes on two CPU cores. Settings and the run folder live in a temporary folder: the
user's settings are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
TABS = ("Data", "Teacher", "Transfer set", "Student", "Segment", "Loop", "Settings")
TASK = "kidney_us"


def _settle(app: Any, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def dice_per_slice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    """Foreground Dice of each slice, as the benchmark scores it (``tskd.inference.metrics``)."""
    from tskd.inference.metrics import evaluate

    names = [f"z{z}" for z in range(len(truth))]
    records = evaluate(list(pred), list(truth), names, num_classes=2).records
    return [float(r["dice"]) for r in records]  # one foreground class: one record per slice


def paint_correction(layer: Any, z: int, truth: np.ndarray) -> int:
    """Paint ``truth`` into slice ``z`` of ``layer`` through napari's undoable edit path."""
    changed = 0
    for value in np.unique(truth):
        ys, xs = np.nonzero((truth == value) & (layer.data[z] != value))
        if ys.size:
            layer.data_setitem((np.full(ys.size, z), ys, xs), int(value))
            changed += ys.size
    return changed  # each data_setitem is one undo step and emits the layer's paint event


def rankings_after(context: Any, stack: Any, truth: np.ndarray) -> dict[str, Any]:
    """Teacher and student Dice per slice, and both rankings of all slices (final models)."""
    from tskd.inference.predict import rank_for_annotation

    images = list(np.asarray(stack.data))
    student = context.models.get(context.paths().student, "cpu").segmenter
    teacher = context.models.get(context.paths().teacher, "cpu").segmenter

    def scores(seg: Any) -> list[float]:
        return dice_per_slice(np.stack([seg.segment(im, is_stack=False) for im in images]),
                              truth)

    return {
        "final_teacher_dice": scores(teacher),
        "final_student_dice": scores(student),
        "final_rank_by_uncertainty": [i for i, _ in rank_for_annotation(student, images)],
        "final_rank_by_disagreement": [i for i, _ in rank_for_annotation(student, images,
                                                                         teacher)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    parser.add_argument("--report", type=Path,
                        default=HERE / "results" / "gui_loop_kidney_us.json")
    parser.add_argument("--size", type=int, default=128, help="student input size")
    parser.add_argument("--teacher-steps", type=int, default=90)
    parser.add_argument("--synthetic", type=int, default=12, help="synthetic images")
    parser.add_argument("--diffusion-steps", type=int, default=120)
    parser.add_argument("--distil-steps", type=int, default=120)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--retrain-steps", type=int, default=40)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tskd-screens-"))
    os.environ["NAPARI_TSKD_CONFIG_DIR"] = str(tmp / "config")
    (tmp / "config").mkdir()
    settings = {"output_dir": str(tmp / "runs"), "run_dir": str(tmp / "runs" / "kidney"),
                "device": "cpu"}
    (tmp / "config" / "settings.json").write_text(json.dumps(settings))
    args.out.mkdir(parents=True, exist_ok=True)

    import warnings

    # napari's own start-up warnings would cover the canvas as notifications
    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message=".*System theme detection.*")
    import napari
    from napari_tskd._sample_data import N_UNLABELLED, SIZE
    from qtpy.QtWidgets import QApplication

    from tskd.data import phantoms

    viewer = napari.Viewer(show=True, title="napari-tskd")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1500, 980)
    viewer.open_sample("napari-tskd", TASK)
    _dock, main_widget = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    _settle(app, 1.0)
    report: dict[str, Any] = {"task": TASK, "teacher": "built-in mini SAM",
                              "settings": vars(args) | {"out": None, "report": None},
                              "seconds": {}}

    def shot(name: str) -> None:
        _settle(app)
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # napari's start-up notices would cover the canvas
        _settle(app, 0.2)
        viewer.window.screenshot(str(args.out / f"{name}.png"), canvas_only=False)
        print("wrote", args.out / f"{name}.png", flush=True)

    def show_tab(title: str) -> None:
        main_widget.tabs.setCurrentIndex(TABS.index(title))

    def press(name: str, widget: Any, button: Any, timeout: float = 1200) -> Any:
        t0 = time.perf_counter()
        button.native.click()
        job = widget.context.runner.wait(timeout)
        if job is None or job.status != "done":
            raise SystemExit(f"{name} failed: {job.message if job else 'not started'}")
        report["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {report['seconds'][name]} s", flush=True)
        return job

    stages = main_widget.stages
    unseen = viewer.layers[f"{TASK} unlabelled"]
    truth = np.stack([lab for _, lab in phantoms.generate(TASK, N_UNLABELLED, size=SIZE,
                                                          seed=1)])

    # 1 Data: the labelled stack + labels, the unlabelled stack for the transfer set
    data = stages["Data"]
    data.unlabelled_layers.value = [unseen]
    data.image_size.value = args.size
    data.update_summary()
    if not data.use_data():
        raise SystemExit("Data: 'Use this data' failed (see the notification)")
    show_tab("Data")
    shot("stage_1_data")

    # 2 Teacher: the machine preset (on CPU: the built-in mini SAM), LoRA-adapted
    teacher = stages["Teacher"]
    show_tab("Teacher")
    teacher.device.value = "cpu"
    teacher.apply_preset()
    teacher.epochs.value, teacher.max_steps.value = 1000, args.teacher_steps
    press("teacher", teacher, teacher.train_button)
    report["teacher_model"] = teacher.model_type.value
    shot("stage_2_teacher")

    # 3 Transfer set: diffusion model, synthetic images shown as a stack
    transfer = stages["Transfer set"]
    show_tab("Transfer set")
    transfer.n_images.value = args.synthetic
    transfer.train_steps.value = args.diffusion_steps
    transfer.resolution.value, transfer.sample_steps.value = 32, 25
    transfer.device.value = "cpu"
    press("transfer set", transfer, transfer.run_button)
    report["transfer"] = transfer.result.value
    for layer in viewer.layers:
        layer.visible = layer.metadata.get("tskd") == "synthetic"
    viewer.reset_view()  # the synthetic images are smaller than the sample's
    shot("stage_3_transfer")
    for layer in viewer.layers:
        layer.visible = layer.metadata.get("tskd") != "synthetic" and layer is not unseen
    viewer.reset_view()

    # 4 Student: task-specific distillation, then fine-tuning on the labels
    student = stages["Student"]
    show_tab("Student")
    student.distill_epochs.value, student.distill_steps.value = 1000, args.distil_steps
    student.finetune_epochs.value, student.finetune_steps.value = 1000, args.finetune_steps
    student.device.value = "cpu"
    press("distil + fine-tune", student, student.both_button)
    shot("stage_4_student")

    # 5 Segment the stack no stage has seen with labels
    segment = stages["Segment"]
    show_tab("Segment")
    unseen.visible = True
    for name in (TASK, f"{TASK} labels"):
        viewer.layers[name].visible = False
    segment.image.value = unseen
    viewer.dims.set_point(0, 3)
    t0 = time.perf_counter()
    layer = segment.segment()
    if layer is None or not segment.wait(300):
        raise SystemExit("Segment failed (see the notification)")
    report["seconds"]["segment stack"] = round(time.perf_counter() - t0, 2)
    report["segment_status"] = segment.status.value
    before = dice_per_slice(np.asarray(layer.data), truth)
    report["dice_unseen_before"] = before
    shot("stage_5_segment")
    viewer.layers.selection.active = layer
    viewer.dims.set_point(0, 5)  # another slice of the stack, segmented in the background
    shot("segment_stack")
    viewer.dims.set_point(0, 3)

    # 6 Loop: suggest -> correct -> add -> retrain -> segment again -> suggest
    loop = stages["Loop"]
    show_tab("Loop")
    loop.reset_choices()
    loop.image.value = unseen
    loop.suggest()
    if not loop.wait(300) or loop.suggestion is None:
        raise SystemExit("Suggest failed (see the notification)")
    z = loop.suggestion[1]
    report["suggested_first"] = {"slice": z, "score": loop.suggestion[2],
                                 "dice_there": before[z]}
    report["corrected_pixels"] = paint_correction(layer, z, truth[z])
    if loop.add_slice() is None:
        raise SystemExit("Add slice failed (see the notification)")
    loop.epochs.value, loop.max_steps.value = 1000, args.retrain_steps
    loop.device.value = "cpu"
    press("retrain", loop, loop.retrain_button)
    show_tab("Segment")
    layer = segment.segment()
    if layer is None or not segment.wait(300):
        raise SystemExit("Segment after retraining failed")
    after = dice_per_slice(np.asarray(layer.data), truth)
    others = [i for i in range(len(truth)) if i != z]
    report["dice_unseen_after"] = after
    report["dice_other_slices"] = {
        "before": float(np.mean([before[i] for i in others])),
        "after": float(np.mean([after[i] for i in others])),
    }
    show_tab("Loop")
    loop.rank_by.value = "teacher-student disagreement"
    loop.suggest()
    if not loop.wait(300) or loop.suggestion is None:
        raise SystemExit("Second suggest failed")
    report["suggested_next_by_disagreement"] = {"slice": loop.suggestion[1],
                                                "score": loop.suggestion[2]}
    report |= rankings_after(stages["Loop"].context, unseen, truth)
    shot("stage_6_loop")
    show_tab("Settings")
    shot("settings")
    viewer.close()

    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
