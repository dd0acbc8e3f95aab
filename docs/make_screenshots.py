"""Screenshots for docs/user-guide.md: napari with the TS-KD widget, one per stage, and the
student's segmentation of a stack. Trains a small student from scratch on the sample data first
(about a minute on two CPU cores), so the Student tab shows a real loss curve.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python docs/make_screenshots.py

Settings and the run folder live in a temporary folder: the user's settings are not touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABS = ("Data", "Teacher", "Transfer set", "Student", "Segment", "Loop", "Settings")


def _settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "images")
    parser.add_argument("--steps", type=int, default=200, help="student training steps")
    parser.add_argument("--size", type=int, default=128, help="student input size")
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
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title="napari-tskd")
    app = QApplication.instance()
    viewer.window._qt_window.resize(1400, 950)
    viewer.open_sample("napari-tskd", "kidney_us")
    _dock, main_widget = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    _settle(app, 1.0)

    def shot(name: str, keep_toasts: bool = False) -> None:
        _settle(app)
        if not keep_toasts:  # napari's own start-up notices would cover the canvas
            from napari._qt.dialogs.qt_notification import NapariQtNotification

            for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
                toast.close()
            _settle(app, 0.2)
        viewer.window.screenshot(str(args.out / f"{name}.png"), canvas_only=False)
        print("wrote", args.out / f"{name}.png", flush=True)

    stages = main_widget.stages
    data = stages["Data"]
    data.unlabelled_layers.value = [viewer.layers["kidney_us unlabelled"]]
    data.image_size.value = args.size
    data.update_summary()
    if not data.use_data():
        raise SystemExit("Data: 'Use this data' failed (see the notification)")

    def show_tab(title: str) -> None:
        main_widget.tabs.setCurrentIndex(TABS.index(title))

    show_tab("Data")
    shot("stage_1_data")
    show_tab("Teacher")
    stages["Teacher"].device.value = "cpu"
    stages["Teacher"].apply_preset()
    shot("stage_2_teacher")
    show_tab("Transfer set")
    shot("stage_3_transfer")

    student = stages["Student"]
    show_tab("Student")
    student.from_scratch.value = True
    student.finetune_epochs.value = 1000
    student.finetune_steps.value = args.steps
    student.device.value = "cpu"
    student.finetune_button.native.click()
    job = student.context.runner.wait(900)
    if job is None or job.status != "done":
        raise SystemExit(f"student training failed: {job.message if job else 'not started'}")
    shot("stage_4_student")

    # the student segments the images it has not seen (the hidden unlabelled stack)
    segment = stages["Segment"]
    show_tab("Segment")
    unlabelled = viewer.layers["kidney_us unlabelled"]
    unlabelled.visible = True
    viewer.layers["kidney_us"].visible = False
    viewer.layers["kidney_us labels"].visible = False
    segment.image.value = unlabelled
    viewer.dims.set_point(0, 3)
    layer = segment.segment()
    if layer is None:
        raise SystemExit("Segment failed (see the notification)")
    segment.wait(120)
    shot("stage_5_segment")
    viewer.layers.selection.active = layer
    shot("segment_stack")

    loop = stages["Loop"]
    show_tab("Loop")
    loop.reset_choices()
    loop.image.value = unlabelled
    loop.suggest()
    loop.wait(120)
    shot("stage_6_loop")
    show_tab("Settings")
    shot("settings")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
