"""The longest stall of napari's event loop during *Use this data* and a job's start-up.

A 10 ms QTimer ticks while the action runs; a stall is the gap between two ticks minus 10 ms.
Measured in a fresh viewer with the TS-KD dock on the procedural kidney-ultrasound sample
(File > Open Sample), as a user meets it:

* ``open_dock``: opening the TS-KD dock (the one allowed stall: heavy imports, with a note);
* ``use_data``: *Use this data* (labelled stack and the unlabelled stack) until it reports;
* ``job_start``: a training job from its button until the child's first message, and until its
  first progress report (the start-up wait), with the start-up notes the panel showed;
* ``child_first_message_s``: in a script shaped like ``python -m napari``, seconds from
  starting a job to the child's first message, with the child re-importing the main script
  (as multiprocessing's spawn does by default) and without (what the plugin does).

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


NAPARI_LIKE = """
import sys
from napari.__main__ import main  # what the child re-runs when napari runs as `python -m napari`
if __name__ == "__main__":
    import contextlib, time
    from qtpy.QtWidgets import QApplication
    app = QApplication.instance() or QApplication([])
    import napari_tskd._jobs as jobs
    if sys.argv[1] == "reimport":  # as before: spawn re-imports the main script in the child
        jobs.clean_main = contextlib.nullcontext
    from tskd.config import RunConfig, to_dict
    times = []
    for _ in range(3):
        runner = jobs.JobRunner()
        t0 = time.perf_counter()
        job = runner.start(jobs.Job("x", [{"target": "no_such_stage"}],
                                    to_dict(RunConfig(run_dir=sys.argv[2]))))
        while job.note == "starting Python ...":
            app.processEvents()
            time.sleep(0.005)
        times.append(time.perf_counter() - t0)
        runner.wait(60)
    print(" ".join(f"{t:.3f}" for t in times))
"""


def bench_child_start(tmp: Path) -> dict[str, Any]:
    """Seconds from starting a job to the child's first message, in a script shaped like
    ``python -m napari``, with the child re-importing the main script (before) and not (now)."""
    import os
    import subprocess

    script = tmp / "napari_like.py"
    script.write_text(NAPARI_LIKE)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    out: dict[str, Any] = {}
    for mode in ("reimport", "clean"):
        res = subprocess.run([sys.executable, str(script), mode, str(tmp / "run_x")], env=env,
                             capture_output=True, text=True, timeout=600)
        out[mode] = [float(x) for x in res.stdout.split()[-3:]] if res.returncode == 0 else (
            res.stderr[-500:])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    import napari
    from napari.utils.notifications import notification_manager, show_info
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

    # napari's first notification toast builds its widgets (about 0.4 s here, napari's own
    # cost, whoever notifies first); measured apart so the figures below are the plugin's
    with StallMeter() as meter:
        t0 = time.perf_counter()
        show_info("TS-KD benchmark: first notification")
        _wait(app, lambda: False, 1.0)
    results["first_toast"] = {"max_stall_ms": meter.max_ms()}

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
    if hasattr(runner, "note"):  # the child's start-up notes (absent before they existed)
        runner.note.connect(lambda job, text: notes.append(f"{time.perf_counter() - t0:.1f} s "
                                                           f"{text}"))
    preview_ms: list[float] = []  # the preview layers' update, timed apart (see the report)
    show = panel.on_preview

    def timed_preview(*a: Any) -> None:
        t = time.perf_counter()
        show(*a)
        preview_ms.append((time.perf_counter() - t) * 1000)

    panel.on_preview = timed_preview
    t0 = time.perf_counter()
    with StallMeter() as meter:
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
        "notes": notes[:12], "preview_update_ms": preview_ms,
        "status": None if job is None else job.status, "panel": panel.status.text()}
    viewer.close()
    results["child_first_message_s"] = bench_child_start(tmp)
    print(json.dumps(results, indent=1), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
