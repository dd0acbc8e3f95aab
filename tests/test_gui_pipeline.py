"""End to end through the widgets with the real backend and tiny models: data from layers,
teacher (cancelled, then resumed), transfer set, distil + fine-tune, segment a stack, correct,
add, retrain, suggest; the import trap in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("tskd_gui_env")
for _module in ("tskd.data.samples", "tskd.data.dataset", "tskd.data.phantoms",
                "tskd.training.finetune", "tskd.training.distill", "tskd.training.synthesize",
                "tskd.training.teacher", "tskd.inference.predict", "tskd.inference.bundle"):
    pytest.importorskip(_module)

SIZE = 64
TINY_STUDENT = {"architecture": "vit_tiny", "embed_dim": 32, "depth": 2, "num_heads": 2,
                "decoder_channels": 16}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random tiny SAM saved like the built-in mini weights (the pipeline takes its path)."""
    from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
    from tskd.models.mini_sam_files import save_mini_sam

    path = tmp_path_factory.mktemp("sam") / "tiny.safetensors"
    return save_mini_sam(build_mini_sam(MiniSamConfig.tiny()), MiniSamConfig.tiny(), path,
                         half=False)


def _viewer_with_task(make_napari_viewer):
    from tskd.data import phantoms

    viewer = make_napari_viewer()
    pairs = phantoms.generate("kidney_us", 6, size=SIZE, seed=0)
    img = np.stack([p[0] for p in pairs])
    lab = np.stack([p[1] for p in pairs]).astype(np.uint8)
    lab[4:] = 0  # slices 4 and 5 unlabelled: to segment, correct and add
    viewer.add_image(img, name="kidney")
    viewer.add_labels(lab, name="kidney labels")
    return viewer


def _tiny_config(main, tiny_ckpt: Path) -> None:
    """Shrink the student in the run's config.yaml (the widgets keep what they do not show)."""
    from tskd.config import save_config

    ctx = main.context
    cfg = ctx.config()
    for key, value in TINY_STUDENT.items():
        setattr(cfg.student, key, value)
    cfg.teacher.checkpoint = str(tiny_ckpt)
    cfg.teacher.input_size = SIZE
    cfg.distill.train.batch_size = cfg.student.train.batch_size = 2
    cfg.synth.train.batch_size = 2
    save_config(cfg, ctx.run_dir / "config.yaml")


def _run(widget, press, timeout=240):
    import time

    t0 = time.perf_counter()
    press()
    job = widget.context.runner.wait(timeout)
    print(f"{job.label if job else '?'}: {time.perf_counter() - t0:.1f} s")
    assert job is not None, "no job started (see the notifications)"
    assert job.status == "done", job.message
    return job


def test_full_loop_through_the_widgets(make_napari_viewer, tiny_ckpt, tskd_gui_env, notes,
                                       qtbot) -> None:
    viewer = _viewer_with_task(make_napari_viewer)
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    run = tskd_gui_env
    data = main.stages["Data"]
    data.image_size.value = SIZE
    data.val_fraction.value = 0.25
    assert data.use_data()
    _tiny_config(main, tiny_ckpt)

    teacher = main.stages["Teacher"]
    teacher.load_from_run()
    assert teacher.checkpoint.value == tiny_ckpt and teacher.input_size.value == SIZE
    # cancel a real stage (< 2 s, resumable checkpoint), then Resume runs it to the end
    teacher.epochs.value, teacher.max_steps.value, teacher.batch_size.value = 1000, 30, 2
    teacher.device.value = "cpu"
    runner = teacher.context.runner
    teacher.train_button.native.click()
    job = runner.job
    qtbot.waitUntil(lambda: job.last_progress is not None and job.last_progress["step"] >= 2,
                    timeout=120000)
    teacher.panel.cancel_button.click()
    runner.wait(30)
    assert job.status == "cancelled" and job.stop_seconds < 2.0, (job.status, job.stop_seconds)
    assert (run / "checkpoints" / "teacher" / "ckpt" / "state.json").is_file()
    assert not (run / "teacher" / "meta.json").is_file()
    stopped_at = job.last_progress["step"]
    seen = []
    runner.progress.connect(lambda _job, p: seen.append(p["step"]))
    _run(teacher, teacher.panel.resume_button.click)
    assert seen[0] > stopped_at and seen[-1] == 30  # continued, not restarted
    assert (run / "teacher" / "meta.json").is_file()
    assert teacher.panel.bar.value() == teacher.panel.bar.maximum()

    transfer = main.stages["Transfer set"]
    transfer.n_images.value, transfer.train_steps.value = 3, 2
    transfer.resolution.value, transfer.sample_steps.value = 32, 2
    transfer.device.value = "cpu"
    _run(transfer, transfer.run_button.native.click)
    assert "kept" in transfer.result.value and "near-copies" in transfer.result.value
    synthetic = [ly for ly in viewer.layers if ly.metadata.get("tskd") == "synthetic"]
    assert len(synthetic) <= 1  # a layer exactly when the backend kept images

    student = main.stages["Student"]
    student.distill_epochs.value, student.distill_steps.value = 1, 2
    student.finetune_epochs.value, student.finetune_steps.value = 1, 2
    student.device.value = "cpu"
    job = _run(student, student.both_button.native.click)  # the button's wiring included
    assert set(job.results) == {"distill", "student"}
    preview = viewer.layers["TS-KD preview"]  # sent by the training process, live
    assert preview.metadata["stage"] == "finetune-student" and preview.data.shape == (SIZE, SIZE)
    assert (run / "student" / "meta.json").is_file()

    segment = main.stages["Segment"]
    segment.device.value = "cpu"
    segment.image.value = viewer.layers["kidney"]
    viewer.dims.set_point(0, 4)
    pred = segment.segment()
    assert pred is not None and pred.metadata["tskd"] == "prediction"
    assert segment.wait(60) and segment.session.done == set(range(6))
    assert viewer.layers["kidney labels"].data[4:].max() == 0  # the user's layer is untouched

    loop = main.stages["Loop"]
    loop.reset_choices()
    assert loop.labels.value is pred
    pred.data[4] = 0
    pred.data[4, 20:40, 20:40] = 1  # the "correction"
    loop.image.value = viewer.layers["kidney"]
    assert loop.add_slice().name == "corrected_kidney_z0004.tif"
    loop.max_steps.value, loop.epochs.value = 2, 1
    loop.device.value = "cpu"
    job = _run(loop, loop.retrain_button.native.click)
    assert job.results["student"]["init"] == "last"
    loop.suggest()
    assert loop.wait(60) and loop.suggestion is not None
    layer, z, _score = loop.suggestion
    assert z == 5 and viewer.dims.current_step[0] == z  # slices 0-3 labelled, 4 corrected
    loop.rank_by.value = "teacher-student disagreement"
    loop.suggestion = None
    loop.suggest()
    assert loop.wait(60) and loop.suggestion is not None
    assert loop.suggestion[1] == 5 and 0.0 <= loop.suggestion[2] <= 1.0
    assert not notes.errors()


def test_background_segmentation_in_fresh_interpreter(tmp_path) -> None:
    """The import trap, in a fresh napari process: the first timm import (-> torchvision ->
    torch._dynamo -> triton) after napari's OpenGL context exists segfaulted on Mesa llvmpipe
    (two LLVMs in one process), whatever the thread; then the stack is segmented in a worker."""
    from tskd.config import StudentConfig
    from tskd.inference import bundle
    from tskd.models.student import Student

    cfg = StudentConfig(**TINY_STUDENT)
    bundle.save_student(Student(cfg, 2, SIZE), tmp_path / "student",
                        {"class_names": ["background", "kidney"]})
    script = textwrap.dedent(f"""
        import sys, threading
        import numpy as np
        import napari
        from napari_tskd._segment_widget import SegmentWidget
        assert "timm" not in sys.modules and "torch" not in sys.modules
        viewer = napari.Viewer(show=False)
        viewer.add_image(np.random.default_rng(0).random((5, {SIZE}, {SIZE})), name="stack")
        w = SegmentWidget(viewer)
        w.source.value = "folder"
        w.folder.value = {str(tmp_path / "student")!r}
        w.device.value = "cpu"
        layer = w.segment()
        assert layer is not None, "segment failed"
        assert "timm" in sys.modules  # imported here, in the main thread
        from napari_tskd._torch_guard import llvm_loaded
        assert (sys.modules.get("triton", "absent") is None) == llvm_loaded()
        assert w.wait(60) and w.session.done == set(range(5)), w.session.done
        viewer.close()
        print("OK")
    """)
    env_run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=240)
    assert env_run.returncode == 0, env_run.stderr[-3000:]
    assert env_run.stdout.strip().endswith("OK")
