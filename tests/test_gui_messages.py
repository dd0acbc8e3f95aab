"""Messages in the viewer use viewer words: the backend's command-line advice ("pass
--overwrite", "run finetune-teacher first", "set student.from_scratch") becomes the tab, button
or checkbox to use, in notifications and in the job panel's status line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tskd"
# command-line-only code: its messages never reach the viewer
CLI_ONLY = ("apps/", "training/pretrain",  # pretrain*.py: no widget pretrains
            "data/phantoms/", "__main__.py", "data/check.py")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")
SUBCOMMAND = re.compile(r"\b(?:finetune-teacher|check-data|pretrain-mini|tskd (?:run|predict|"
                        r"distill|synthesize|finetune-student|evaluate))\b")
TERMINAL = re.compile(r"in a terminal with `[^`]*`")  # named after the viewer's own way


def _text(node: ast.AST) -> str:
    """The message a raise or warn builds, with {} where a value goes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return _text(node.left) + _text(node.right)
    return "{}"


def backend_messages() -> list[tuple[str, str]]:
    """(where, message) of every raise and warning with a literal message in src/tskd."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(CLI_ONLY):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            call = node.exc if isinstance(node, ast.Raise) else node
            if not isinstance(call, ast.Call) or not call.args:
                continue
            name = getattr(call.func, "attr", getattr(call.func, "id", ""))
            if isinstance(node, ast.Raise) or name in ("warn", "TskdWarning"):
                found.append((f"{rel}:{node.lineno}", _text(call.args[0])))
    return found


def _cli_words(message: str) -> list[str]:
    from napari_tskd._words import FIELDS

    message = TERMINAL.sub("", message)
    keys = [k for k in FIELDS if re.search(rf"\b{re.escape(k)}\b", message)]
    return FLAG.findall(message) + SUBCOMMAND.findall(message) + keys


def test_no_backend_message_reaches_the_viewer_in_command_line_words() -> None:
    from napari_tskd._words import viewer_words

    messages = backend_messages()
    assert len(messages) > 100  # the scan sees the backend's messages
    with_cli = [(w, m) for w, m in messages if _cli_words(m)]
    assert len(with_cli) >= 15  # what the table is for
    left = [(w, viewer_words(m), _cli_words(viewer_words(m))) for w, m in with_cli
            if _cli_words(viewer_words(m))]
    assert left == []


@pytest.mark.parametrize(("backend", "viewer"), [
    ("run/config.yaml belongs to a different run (other data or teacher); choose another run "
     "folder, or pass --overwrite to remove the files that run wrote (files tskd did not write "
     "are kept).",
     "run/config.yaml belongs to a different run (other data or teacher); choose another run "
     "folder, or tick 'replace a different run in this folder' in the Data tab to remove the "
     "files that run wrote (files tskd did not write are kept)."),
    ("no adapted teacher in run/teacher; run finetune-teacher first",
     "no adapted teacher in run/teacher; train the teacher first (Teacher tab > Train teacher)"),
    ("no distilled student in run/distilled; run distill first or set student.from_scratch",
     "no distilled student in run/distilled; distil first (Student tab > Distil), or tick "
     "'from scratch' in the Student tab"),
    ("no labelled data given (data.labelled / --data)",
     "no labelled data given: choose the labelled layers or folder in the Data tab and press "
     "'Use this data'"),
    ("cannot resume: the checkpoint in run/checkpoints/teacher was made from other inputs (data, "
     "teacher or settings changed since); run again without --resume to start over",
     "cannot resume: the checkpoint in run/checkpoints/teacher was made from other inputs (data, "
     "teacher or settings changed since); press the stage's Train button (not Resume) to start "
     "over"),
    ("a.tif: decodes to 5 x 5 = 25 pixels, over the pixel budget of 16 (2^4); raise it with "
     "--max-pixels / data.max_pixels (or TSKD_MAX_PIXELS) or crop the image",
     "a.tif: decodes to 5 x 5 = 25 pixels, over the pixel budget of 16 (2^4); raise it by "
     "setting the environment variable TSKD_MAX_PIXELS before starting napari or crop the "
     "image"),
    ("student.dice_weight must be in [0, 1], got 2",
     "'Dice weight' (Student tab > Advanced) must be in [0, 1], got 2"),
    ("learning rate must be a number, got 'fast'", "learning rate must be a number, got 'fast'"),
])
def test_viewer_words(backend: str, viewer: str) -> None:
    from napari_tskd._words import viewer_words

    assert viewer_words(backend) == viewer


def _viewer_with_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    img = (rng.random((6, 32, 32)) * 200).astype(np.uint16)
    lab = np.zeros((6, 32, 32), np.uint8)
    img[:, 8:20, 8:20] += 1000
    lab[:, 8:20, 8:20] = 1
    viewer.add_image(img, name="scan")
    viewer.add_labels(lab, name="scan labels")
    _dock, main = viewer.window.add_plugin_dock_widget("napari-tskd", "TS-KD")
    main.reset_choices()
    return main


@pytest.mark.usefixtures("tskd_gui_env")
def test_another_runs_folder_names_the_checkbox(make_napari_viewer, notes) -> None:
    """Use this data on a folder holding another run with results (other image size): the
    refusal names the Data tab's checkbox, not --overwrite; ticking it replaces the run."""
    from tskd.pipeline.manifest import record_files

    main = _viewer_with_labels(make_napari_viewer)
    data = main.stages["Data"]
    assert data.use_data()
    result = main.context.paths().teacher / "meta.json"  # as if the teacher had been trained
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    record_files(main.context.run_dir, [result])
    data.image_size.value = 128
    assert not data.use_data()
    message = notes.errors()[-1]
    assert "belongs to a different run" in message
    assert "tick 'replace a different run in this folder' in the Data tab" in message
    assert "--overwrite" not in message
    data.overwrite.value = True
    assert data.use_data()
    assert not result.exists()  # the run's own result, removed by the replacement


@pytest.mark.usefixtures("tskd_gui_env")
def test_a_failed_job_says_which_button_to_press(make_napari_viewer, notes) -> None:
    """Distil with no teacher trained: the training process's TskdError reaches the
    notification and the Student tab's status line in viewer words."""
    main = _viewer_with_labels(make_napari_viewer)
    assert main.stages["Data"].use_data()
    student = main.stages["Student"]
    student.distill_button.native.click()
    job = main.context.runner.wait(120)
    assert job is not None and job.status == "error"
    assert "run finetune-teacher first" in job.message  # the backend's words ...
    expected = "train the teacher first (Teacher tab > Train teacher)"
    assert notes.errors()[-1].endswith(expected)  # ... the viewer's
    # the status line: how the job ended, then the run folder's state of each stage
    assert student.panel.status.text().splitlines()[0].endswith(expected)


@pytest.mark.usefixtures("tskd_gui_env")
def test_a_train_button_on_another_runs_folder_names_the_checkbox(make_napari_viewer,
                                                                  notes) -> None:
    """Train teacher after changing Student input size in a run with results: refused before
    any process starts, naming the Data tab's checkbox by its text."""
    from tskd.pipeline.manifest import record_files

    main = _viewer_with_labels(make_napari_viewer)
    assert main.stages["Data"].use_data()
    result = main.context.paths().teacher / "meta.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}")
    record_files(main.context.run_dir, [result])
    main.stages["Data"].image_size.value = 128
    main.stages["Teacher"].train_button.native.click()
    assert not main.context.runner.running
    message = notes.errors()[-1]
    assert "differ from this run's" in message
    assert message.endswith("tick 'replace a different run in this folder' in the Data tab")
    assert result.is_file()  # nothing removed
