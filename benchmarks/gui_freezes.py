"""The longest stall of napari's event loop during *Use this data* and a job's start-up.

A 10 ms QTimer ticks while the action runs; a stall is the gap between two ticks minus 10 ms.
Measured in a fresh viewer with the TS-KD dock on the procedural kidney-ultrasound sample
(File > Open Sample), as a user meets it:

* ``open_dock``: opening the TS-KD dock (the one allowed stall: heavy imports, with a note);
* ``use_data``: *Use this data* (labelled stack and the unlabelled stack) until it reports;
* ``job_start``: a training job from its button until the child's first message, and until its
  first progress report (the start-up wait), with the start-up notes the panel showed.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/gui_freezes.py \
        --json benchmarks/results/gui_freezes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TICK_MS = 10


class StallMeter:
    """Records the gaps between the ticks of a 10 ms timer while it runs."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))

    def __enter__(self) -> StallMeter:
        self.stamps = [time.perf_counter()]
        self.timer.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.timer.stop()
        self.stamps.append(time.perf_counter())

    def max_ms(self) -> float:
        gaps = [(b - a) * 1000 - TICK_MS for a, b in zip(self.stamps, self.stamps[1:])]
        return max([0.0, *gaps])


def _wait(app: Any, predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.002)
    return bool(predicate())


def _click(app: Any, button: Any) -> None:
    """Press a magicgui button from the event loop, as a user's click does."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(0, button.native.click)
    app.processEvents()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import napari
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    tmp = Path(tempfile.mkdtemp())
    (tmp / "cfg").mkdir()
    (tmp / "cfg" / "settings.json").write_text(json.dumps({
        "output_dir": str(tmp / "runs"), "cache_dir": str(tmp / "cache"),
        "run_dir": str(tmp / "runs" / "run1"), "device": "cpu"}))
    import os

    os.environ["NAPARI_TSKD_CONFIG_DIR"] = str(tmp / "cfg")
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.open_sample("napari-tskd", "kidney_us")
    _wait(app, lambda: False, 1.0)
    results: dict[str, Any] = {}

    with StallMeter() as meter:
        t0 = time.perf_counter()
        _dock, main_widget = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
        app.processEvents()
    results["open_dock"] = {"seconds": time.perf_counter() - t0, "max_stall_ms": meter.max_ms()}
    _wait(app, lambda: False, 0.5)

    data = main_widget.stages["Data"]
    data.unlabelled_layers.value = [viewer.layers["kidney_us unlabelled"]]
    start = len(notification_manager.records)
    with StallMeter() as meter:
        t0 = time.perf_counter()
        _click(app, data.use_button)
        ok = _wait(app, lambda: any("ready" in str(n.message) or "error" in str(n.severity).lower()
                                    for n in notification_manager.records[start:]), 120)
    results["use_data"] = {"seconds": time.perf_counter() - t0, "max_stall_ms": meter.max_ms(),
                           "reported": ok}

    runner = main_widget.context.runner
    teacher = main_widget.stages["Teacher"]
    notes: list[str] = []
    panel = teacher.panel
    runner.progress.connect(lambda job, p: notes.append(str(p.get("message") or "")))
    with StallMeter() as meter:
        t0 = time.perf_counter()
        _click(app, teacher.job_buttons()[0])
        _wait(app, lambda: runner.running, 30)
        job = runner.job
        _wait(app, lambda: job is None or job.last_progress is not None or not runner.running, 300)
        first = time.perf_counter() - t0
        _wait(app, lambda: job is None or not runner.running
              or (job.last_progress or {}).get("step", 0) >= 1, 300)
        first_step = time.perf_counter() - t0
        stall_start = meter.max_ms()
        runner.cancel()
        _wait(app, lambda: not runner.running, 60)
    results["job_start"] = {
        "first_message_s": first, "first_step_s": first_step, "max_stall_ms": stall_start,
        "notes": [n for n in dict.fromkeys(notes) if n][:12],
        "status": None if job is None else job.status, "panel": panel.status.text()}
    print(json.dumps(results, indent=1), flush=True)
    viewer.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
