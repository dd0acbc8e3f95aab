"""A training job and the dock's lifetime: widgets opened while a job runs (no AttributeError),
a closed dock that leaves the job running and re-attaches when opened again, the viewer closing
that cancels the job with a checkpoint, the child's start-up notes, and a user script without
``if __name__ == "__main__":`` that must not run twice. Fake stages keep these fast."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")

WIDGETS = ["TS-KD", "1 Data", "2 Teacher", "3 Transfer set", "4 Distil and fine-tune student",
           "5 Segment", "6 Annotate-train loop", "Settings"]


class _P:  # the fields of tskd.engine.Progress, without importing torch in the child
    def __init__(self, step: int, total: int, loss: float) -> None:
        self.stage, self.step, self.total, self.loss = "fake", step, total, loss
        self.epoch, self.epochs, self.eta_s, self.logs, self.message = 0, 1, None, {}, ""


def fake_train(cfg, progress=None, cancel=None, resume=False, steps=100000, delay=0.01):
    """Reports steps until cancelled; on cancel writes ``cancel_checkpoint.txt`` (as the
    engine writes its checkpoint) into the run folder."""
    from tskd.errors import Cancelled

    for step in range(steps):
        if cancel is not None and cancel.cancelled:
            Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.run_dir) / "cancel_checkpoint.txt").write_text(str(step))
            raise Cancelled(f"fake: cancelled at step {step}; resume to go on")
        time.sleep(delay)
        progress(_P(step + 1, steps, 1.0 / (step + 1)))
    return {"steps": steps}


def _start(widget, **kwargs):
    """Start a fake job as ``widget``'s own (what its Train button does)."""
    cfg = widget.context.config()
    job = widget.start("fake", [{"target": f"{__name__}:fake_train", "kwargs": kwargs}], cfg)
    assert job is not None
    return job


def _viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="img")
    viewer.add_labels(np.zeros((3, 16, 16), np.uint8), name="lab")
    return viewer


def test_widgets_open_while_a_job_runs_and_a_reopened_dock_reattaches(
        make_napari_viewer, qtbot, notes) -> None:
    """Was: AttributeError 'TeacherWidget' object has no attribute 'train_button' on opening,
    again when the job ended; the reopened dock could not cancel the job."""
    viewer = _viewer(make_napari_viewer)
    dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    teacher = main.stages["Teacher"]
    job = _start(teacher, delay=0.005)
    runner = main.context.runner
    qtbot.waitUntil(lambda: len(job.history) >= 3, timeout=60000)
    viewer.window.remove_dock_widget(dock)  # the dock's close button does this
    qtbot.wait(100)
    assert runner.running and runner.job is job  # closing the dock leaves the job running
    opened = {}
    for name in WIDGETS:  # every widget, while the job runs: none raises
        opened[name] = viewer.window.add_plugin_dock_widget("napari-tskd", name)[1]
    again = opened["TS-KD"].stages["Teacher"]
    panel = again.panel
    assert panel.cancel_button.isEnabled() and not panel.resume_button.isEnabled()
    assert all(not b.enabled for b in again.job_buttons())
    qtbot.waitUntil(lambda: "fake: step" in panel.status.text(), timeout=10000)
    assert len(panel.plot.points) >= 3  # the curve so far, not only what came after reopening
    assert opened["2 Teacher"].panel.cancel_button.isEnabled()  # same kind of widget
    assert not opened["1 Data"].panel.cancel_button.isEnabled()  # another's job: busy only
    assert "busy: 'fake' runs" in opened["1 Data"].panel.status.text()
    panel.cancel_button.click()
    runner.wait(20)
    assert job.status == "cancelled"
    qtbot.wait(50)
    assert all(b.enabled for b in again.job_buttons())  # the job's end reached the new widget
    assert panel.resume_button.isEnabled()
    assert notes.errors() == []


def test_closing_the_viewer_cancels_the_job_with_a_checkpoint(make_napari_viewer, qtbot,
                                                             tskd_gui_env) -> None:
    viewer = _viewer(make_napari_viewer)
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    runner = main.context.runner
    job = _start(main.stages["Teacher"])
    qtbot.waitUntil(lambda: job.last_progress is not None, timeout=60000)
    viewer.close()
    qtbot.waitUntil(lambda: not runner.running, timeout=15000)
    assert job.status == "cancelled"
    assert "viewer closed" in job.message and "Resume" in job.message
    # cancelled, not killed: the child wrote its checkpoint (on a loaded machine it may then
    # outlive the grace period and be terminated, which loses nothing)
    assert (tskd_gui_env / "cancel_checkpoint.txt").is_file()


def test_the_start_up_wait_says_what_the_child_does(make_napari_viewer, qtbot) -> None:
    """Was: 6-20 s of 'starting the training process ...' with no more word."""
    viewer = _viewer(make_napari_viewer)
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    teacher = main.stages["Teacher"]
    seen: list[str] = []
    main.context.runner.note.connect(lambda job, text: seen.append(text))
    shown: list[str] = []
    main.context.runner.note.connect(lambda job, text: shown.append(teacher.panel.status.text()))
    job = _start(teacher)
    assert teacher.panel.status.text() == "fake: starting Python ..."
    qtbot.waitUntil(lambda: job.last_progress is not None, timeout=60000)
    main.context.runner.cancel()
    main.context.runner.wait(20)
    assert seen == ["importing torch ...", "importing the tskd backend ...",
                    f"loading data and model for {__name__}:fake_train ..."]
    assert shown == [f"fake: {text}" for text in seen]


SCRIPT = """
import sys
from pathlib import Path
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
with open(HERE / "runs.txt", "a") as f:  # top-level code: runs again if the child imports it
    f.write("run\\n")
from qtpy.QtWidgets import QApplication
app = QApplication.instance() or QApplication([])
from napari_tskd._jobs import Job, JobRunner
from tskd.config import RunConfig, to_dict
runner = JobRunner()
job = runner.start(Job("script", [{"target": "user_stage:quick"}],
                       to_dict(RunConfig(run_dir=str(HERE / "run")))))
runner.wait(120)
print("STATUS", job.status, job.message)
"""

STAGE = """
def quick(cfg, progress=None, cancel=None):
    return {"ok": 1}
"""


@pytest.mark.parametrize("how", ["path", "module"])
def test_a_user_script_without_a_main_guard_runs_once(tmp_path: Path, how: str) -> None:
    """Was: the spawned training process re-ran the user's script (a second viewer opened and
    the first waited forever); as ``python script.py`` and as ``python -m script``."""
    (tmp_path / "userscript.py").write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "user_stage.py").write_text(textwrap.dedent(STAGE))
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root), str(tmp_path)])}
    args = ["userscript.py"] if how == "path" else ["-m", "userscript"]
    res = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240)
    assert "STATUS done" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]
    assert (tmp_path / "runs.txt").read_text() == "run\n"  # once: the child did not re-run it
