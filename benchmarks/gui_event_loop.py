"""How responsive napari stays while TS-KD trains, and what the plugin costs at start-up.

Measures the event loop's delay with a 10 ms QTimer (delay = interval - 10 ms) while the viewer
is idle, while a training stage runs in a separate process (what the widgets do), and, for
comparison, in a napari thread worker; and napari's start-up time with the plugin disabled,
enabled, and enabled with the TS-KD dock widget opened.

The training load is the student's fine-tuning from scratch (ViT-Tiny at 256x256, batch 4) on
procedural kidney-ultrasound images through ``tskd.pipeline.stages.stage_finetune_student``.

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python benchmarks/gui_event_loop.py \
        --seconds 30 --json benchmarks/results/gui_event_loop.json

``--modes widgets`` instead times what the Segment and Loop tabs and the training previews do
to the event loop (longest delay while each runs, heavy modules imported first, as when the
dock opens): the first *Segment* of a 20-slice stack (model loaded cold), *Segment* again,
*Suggest* by teacher-student disagreement (the "teacher" a second, larger student bundle) and
20 preview updates. Run it on another checkout (``PYTHONPATH=<checkout>``) for before/after.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

TICK_MS = 10


def _make_run(root: Path, size: int, n: int, batch: int) -> Any:
    """A run folder with procedural labelled images and a from-scratch student config."""
    from tskd.config import RunConfig
    from tskd.data import phantoms
    from tskd.data.folders import export_dataset
    from tskd.pipeline.run_folder import prepare_run_dir

    cfg = RunConfig(run_dir=str(root / "run"))
    cfg.data.labelled = str(root / "run" / "data")
    cfg.data.image_size = size
    cfg.data.val_fraction = 0.0
    cfg.student.from_scratch = True
    cfg.student.train.epochs = 100_000
    cfg.student.train.batch_size = batch
    cfg.student.train.device = "cpu"
    cfg.data.augment = False
    prepare_run_dir(cfg)
    pairs = phantoms.generate("kidney_us", n, size=size, seed=0)
    export_dataset([p[0] for p in pairs], [p[1] for p in pairs], cfg.data.labelled)
    return cfg


def _measure(app: Any, seconds: float) -> list[float]:
    """Event-loop delays (ms) of a 10 ms timer over ``seconds``."""
    from qtpy.QtCore import QEventLoop, QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    timer.start()
    loop.exec_()
    timer.stop()
    return [max(0.0, (b - a) * 1000 - TICK_MS) for a, b in zip(stamps, stamps[1:])]


def _stats(delays: list[float]) -> dict[str, float]:
    if not delays:
        return {}
    arr = np.asarray(delays)
    return {
        "ticks": len(delays),
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


def _wait_for(app: Any, predicate: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    return predicate()


def bench_process(app: Any, viewer: Any, cfg: Any, seconds: float) -> dict[str, Any]:
    """Training in a spawned process through the plugin's JobRunner (what the widgets use)."""
    from napari_tskd._jobs import Job, JobRunner

    from tskd.config import to_dict

    runner = JobRunner()
    job = runner.start(Job("bench", [{"target": "student"}], to_dict(cfg)))
    t0 = time.monotonic()
    if not _wait_for(app, lambda: job.last_progress is not None or not runner.running, 600):
        raise RuntimeError("the training process did not report progress")
    if not runner.running:
        raise RuntimeError(f"training ended early: {job.message}")
    startup = time.monotonic() - t0
    step0, t_start = job.last_progress["step"], time.perf_counter()
    delays = _measure(app, seconds)
    steps = job.last_progress["step"] - step0
    elapsed = time.perf_counter() - t_start
    runner.cancel()
    runner.wait(30)
    return {"mode": "process", **_stats(delays), "steps_per_s": steps / elapsed,
            "child_start_s": startup, "cancel_stop_s": job.stop_seconds, "status": job.status}


def bench_thread(app: Any, viewer: Any, cfg: Any, seconds: float) -> dict[str, Any]:
    """The same stage in a napari thread worker (heavy imports done in the main thread first)."""
    from napari.qt.threading import thread_worker

    import tskd.models.student  # noqa: F401
    import tskd.training.finetune  # noqa: F401  (main thread: the timm-import trap)
    from tskd.engine import CancelToken
    from tskd.errors import Cancelled
    from tskd.pipeline import stages

    state: dict[str, Any] = {"step": None}
    cancel = CancelToken()

    def progress(p: Any) -> None:
        state["step"] = p.step

    @thread_worker
    def train() -> None:
        with contextlib.suppress(Cancelled):
            stages.stage_finetune_student(cfg, progress=progress, cancel=cancel)

    worker = train()
    done = {"flag": False}
    worker.finished.connect(lambda: done.update(flag=True))
    worker.start()
    if not _wait_for(app, lambda: state["step"] is not None, 600):
        raise RuntimeError("the training thread did not report progress")
    step0, t_start = state["step"], time.perf_counter()
    delays = _measure(app, seconds)
    steps = state["step"] - step0
    elapsed = time.perf_counter() - t_start
    cancel.cancel()
    _wait_for(app, lambda: done["flag"], 60)
    return {"mode": "thread", **_stats(delays), "steps_per_s": steps / elapsed}


STARTUP = """
import time
t0 = time.perf_counter()
import sys
MODE = sys.argv[1]
if MODE == "disabled":
    from npe2 import PluginManager
    pm = PluginManager.instance()
    pm.discover()
    pm.disable("napari-tskd")
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
if MODE == "widget":
    viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
QApplication.processEvents()
t1 = time.perf_counter()
from npe2 import PluginManager
enabled = PluginManager.instance().is_disabled("napari-tskd") is False
print(f"{t1 - t0:.4f} {enabled} {'torch' in sys.modules}")
viewer.close()
"""


def bench_startup(runs: int) -> dict[str, Any]:
    """Seconds from interpreter start to a shown viewer, median over ``runs`` fresh processes
    per variant; variants are interleaved so a busy machine biases none of them."""
    modes = ("disabled", "enabled", "widget")
    times: dict[str, list[float]] = {m: [] for m in modes}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    info: dict[str, dict[str, bool]] = {}
    for _ in range(runs):
        for mode in modes:
            w0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", textwrap.dedent(STARTUP), mode],
                                 capture_output=True, text=True, timeout=300)
            walls[mode].append(time.perf_counter() - w0)
            if res.returncode != 0:
                raise RuntimeError(res.stderr[-2000:])
            t, enabled, torch_loaded = res.stdout.split()[-3:]
            times[mode].append(float(t))
            info[mode] = {"plugin_enabled": enabled == "True",
                          "torch_imported": torch_loaded == "True"}
    return {
        mode: {"median_s": statistics.median(times[mode]), "runs_s": times[mode],
               "process_wall_median_s": statistics.median(walls[mode]), **info[mode]}
        for mode in modes
    }


def _longest_gap(app: Any, action: Any, done: Any, timeout: float = 300.0) -> dict[str, float]:
    """Run ``action()`` and process events until ``done()``: the longest event-loop delay of a
    10 ms timer (ms) and the wall time (s)."""
    from qtpy.QtCore import QTimer

    stamps: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
    timer.start()
    _wait_for(app, lambda: len(stamps) > 5, 5)
    t0 = time.perf_counter()
    action()
    stamps.append(time.perf_counter())  # the action itself blocks the loop: counted
    ok = _wait_for(app, done, timeout)
    wall = time.perf_counter() - t0
    timer.stop()
    gaps = [max(0.0, (b - a) * 1000 - TICK_MS) for a, b in zip(stamps, stamps[1:])]
    return {"max_delay_ms": round(max(gaps), 1), "wall_s": round(wall, 2), "finished": bool(ok)}


def _bundles(run: Path, size: int) -> None:
    """A run folder with an (untrained) default student and a larger ViT student as 'teacher'."""
    from tskd.config import RunConfig, StudentConfig, save_config
    from tskd.inference import bundle
    from tskd.models.student import build_student

    meta = {"class_names": ["background", "kidney"], "train_image_shape": [size, size]}
    bundle.save_student(build_student(StudentConfig(), 2, 256), run / "student", meta)
    big = StudentConfig(architecture="vit_tiny")
    bundle.save_student(build_student(big, 2, 256), run / "teacher", meta)
    cfg = RunConfig(run_dir=str(run))
    cfg.data.labelled = str(run / "data")
    save_config(cfg, run / "config.yaml")


def bench_widgets(app: Any, viewer: Any, root: Path, size: int) -> dict[str, Any]:
    """The Segment/Loop tabs and preview updates: the longest event-loop delay of each."""
    import timm  # noqa: F401  (main thread, before any worker: the import trap)
    try:  # what the dock imports once when it opens (this checkout's list, if it has one)
        from napari_tskd._models import import_backend

        import_backend(ranking=True)
    except ImportError:
        import monai.metrics  # noqa: F401
    from napari_tskd._loop_widget import LoopWidget
    from napari_tskd._segment_widget import SegmentWidget
    from napari_tskd._student_widget import StudentWidget

    import tskd.inference.predict  # noqa: F401
    import tskd.models.student  # noqa: F401
    from tskd.data import phantoms

    run = root / "widgets_run"
    _bundles(run, size)
    stack = np.stack([img for img, _ in phantoms.generate("kidney_us", 20, size=size, seed=1)])
    image = viewer.add_image(stack, name="unlabelled")
    seg, loop = SegmentWidget(viewer), LoopWidget(viewer)
    seg.context.settings.run_dir = str(run)  # not saved: the user's settings stay
    seg.image.value = image
    seg.device.value = loop.device.value = "cpu"
    out: dict[str, Any] = {"stack": list(stack.shape)}
    out["idle_3s"] = _stats(_measure(app, 3.0))  # the machine's own noise, for reference

    def seg_done() -> bool:
        s = seg.session
        return s is not None and s.worker is None and not s.pending and (
            s.done or not seg.status.value.endswith("..."))

    out["segment_first"] = _longest_gap(app, seg.segment, seg_done)
    out["segment_status"] = seg.status.value
    seg.context.models._models.clear()  # as after Retrain: the model is loaded again
    out["segment_again"] = _longest_gap(app, seg.segment, seg_done)
    loop.reset_choices()
    loop.image.value = image
    loop.rank_by.value = "teacher-student disagreement"
    out["suggest_disagreement"] = _longest_gap(app, loop.suggest,
                                              lambda: loop.suggestion is not None)
    student = StudentWidget(viewer)
    rng = np.random.default_rng(0)

    def preview(step: int = 0) -> None:
        img = rng.integers(0, 255, (size, size, 3), np.uint8)
        student.show_preview({"image": img, "labels": (img[..., 0] > 127 + step)
                              .astype(np.uint8)}, "finetune-student")

    def updates() -> None:
        for step in range(1, 20):
            preview(step)
            app.processEvents()  # each update drawn, as when they arrive seconds apart

    out["preview_first"] = _longest_gap(app, preview, lambda: True)  # creates the two layers
    out["preview_19_updates"] = _longest_gap(app, updates, lambda: True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement per mode")
    parser.add_argument("--modes", default="idle,process,thread")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--startup-runs", type=int, default=3, help="0 skips start-up timing")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"tick_ms": TICK_MS, "seconds": args.seconds,
                               "image_size": args.size, "batch_size": args.batch}
    if args.startup_runs:
        results["startup"] = bench_startup(args.startup_runs)
        print(json.dumps(results["startup"], indent=1), flush=True)

    import napari
    from napari_tskd._torch_guard import prepare_torch_import
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    prepare_torch_import()  # as the widgets do, before this process imports torch
    app = QApplication.instance()
    viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    _measure(app, 2.0)  # let the first paints and deferred start-up work pass
    with tempfile.TemporaryDirectory() as tmp:
        modes = args.modes.split(",")
        cfg = (_make_run(Path(tmp), args.size, 8, args.batch)
               if set(modes) - {"idle", "widgets"} else None)
        viewer.add_image(np.zeros((8, args.size, args.size), np.uint8), name="stack")
        results["modes"] = []
        for mode in modes:
            if mode == "idle":
                res = {"mode": "idle", **_stats(_measure(app, min(args.seconds, 10.0)))}
            elif mode == "process":
                res = bench_process(app, viewer, cfg, args.seconds)
            elif mode == "thread":
                res = bench_thread(app, viewer, cfg, args.seconds)
            elif mode == "widgets":
                res = {"mode": "widgets", **bench_widgets(app, viewer, Path(tmp), args.size)}
            else:
                raise SystemExit(f"unknown mode {mode}")
            results["modes"].append(res)
            print(json.dumps(res), flush=True)
    viewer.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
