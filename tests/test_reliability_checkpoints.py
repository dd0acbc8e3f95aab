"""Checkpoints are one atomic unit: killed anywhere, a run resumes to the uninterrupted weights.

A training subprocess is killed with SIGKILL at several points (mid-epoch, between and inside
the files of a checkpoint, between the renames of a save); resuming then must give weights
equal, bit for bit, to an uninterrupted run's, leave no temporary folder behind and never load
files of two different saves. The toy runs are forked from the test process (a fresh Python
would spend seconds importing torch for each kill); the stage test starts a fresh ``tskd``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import ckpt_kill
import tskd
from ckpt_kill import CFG, build
from tiny_setup import tiny_config, write_config, write_tiny_sam, write_tiny_task
from tskd.engine import CancelToken, Progress, RunControl, train
from tskd.errors import Cancelled, TskdWarning

TESTS = Path(__file__).parent
pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL (POSIX)")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _env() -> dict[str, str]:
    src = str(Path(tskd.__file__).parents[1])
    return os.environ | {"PYTHONPATH": os.pathsep.join([src, str(TESTS)]),
                         "OMP_NUM_THREADS": "1"}


def _in_child(fn: Callable[[], object]) -> None:
    """Run ``fn`` in a forked child process and assert that SIGKILL ended it."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 3
        try:
            # torch resets its thread pool in a forked child; float sums depend on the thread
            # count, so the child computes with the one thread the reference used
            torch.set_num_threads(1)
            fn()
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def _kill_run(folder: Path, point: str, n: int) -> None:
    _in_child(lambda: ckpt_kill.main([str(folder), point, str(n)]))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    task = build()
    train(task, CFG)
    return {k: v.clone() for k, v in task.model.state_dict().items()}


def _equal(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref)


# (kill point, N, epoch the resumed run continues from: None = from the start)
KILLS = [
    ("step", 3, None),  # before the first checkpoint
    ("step", 13, 1),  # mid-epoch 2
    ("step", 20, 2),  # mid-epoch 3
    ("write", 2, None),  # first save: 2 of its 4 files written, no manifest
    ("write", 6, 1),  # second save: 2 of 4 files in its temporary folder
    ("write", 8, 1),  # second save: complete with its manifest, before any rename
    ("partial", 7, 1),  # second save: half of its state.json written
    ("swap", 2, 1),  # second save: old ckpt moved to ckpt.old, new one not yet in place
    ("swap", 3, 2),  # second save: new ckpt in place, ckpt.old not yet removed
]


@pytest.mark.parametrize(("point", "n", "resumed_from"), KILLS,
                         ids=[f"{p}-{n}" for p, n, _ in KILLS])
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_weights(
    tmp_path: Path, reference: dict[str, torch.Tensor], point: str, n: int,
    resumed_from: int | None,
) -> None:
    folder = tmp_path / "ck"
    _kill_run(folder, point, n)
    task = build()
    result = train(task, CFG, control=RunControl(resume=True, checkpoint_dir=folder))
    assert result.resumed_from_epoch == resumed_from
    assert result.steps == 24
    assert _equal(task.model, reference)
    # finished: the checkpoint and every leftover of the killed save are gone
    assert sorted(p.name for p in folder.iterdir()) == ["history.json"]


def test_a_second_kill_after_resuming_still_ends_bit_identical(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    folder = tmp_path / "ck"
    _kill_run(folder, "step", 11)

    def resume_then_die() -> None:
        def p(x: Progress) -> None:
            if x.step == 21:
                os.kill(os.getpid(), signal.SIGKILL)

        train(build(), CFG, control=RunControl(p, resume=True, checkpoint_dir=folder))

    _in_child(resume_then_die)
    task = build()
    resume = RunControl(resume=True, checkpoint_dir=folder)
    assert train(task, CFG, control=resume).resumed_from_epoch == 2
    assert _equal(task.model, reference)


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    folder = tmp_path / "ck"
    _kill_run(folder, "swap", 3)  # both ckpt (epoch 2) and ckpt.old (epoch 1) are on disk
    params = folder / "ckpt" / "trainable.safetensors"
    data = bytearray(params.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the newest checkpoint's weights
    params.write_bytes(bytes(data))
    task = build()
    with pytest.warns(TskdWarning, match=r"discarding the checkpoint in .*ckpt: "
                                         r"trainable.safetensors does not match its sha256"):
        result = train(task, CFG, control=RunControl(resume=True, checkpoint_dir=folder))
    assert result.resumed_from_epoch == 1  # the older, intact checkpoint
    assert _equal(task.model, reference)


def test_a_checkpoint_mixed_from_two_saves_is_never_loaded(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    """state.json of epoch 2 beside the weights of epoch 1: the manifest catches the mix."""
    folder = tmp_path / "ck"
    _kill_run(folder, "swap", 3)
    (folder / "ckpt" / "state.json").write_bytes((folder / "ckpt.old" / "state.json").read_bytes())
    (folder / "ckpt.old").rename(tmp_path / "old-away")  # no fallback: start from scratch
    task = build()
    with pytest.warns(TskdWarning, match="state.json does not match its sha256"):
        result = train(task, CFG, control=RunControl(resume=True, checkpoint_dir=folder))
    assert result.resumed_from_epoch is None
    assert _equal(task.model, reference)


def test_leftovers_of_the_earlier_layout_never_block_a_run(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    """The issue's "Directory not empty: checkpoints/student/tmp" and unverifiable loose files."""
    folder = tmp_path / "ck"
    (folder / "tmp").mkdir(parents=True)
    for name in ("trainable.safetensors", "optimizer.pt"):
        (folder / "tmp" / name).write_bytes(b"half-written")
        (folder / name).write_bytes(b"old layout")
    (folder / "state.json").write_text(json.dumps({"epoch": 2}))
    (folder / "notes.txt").write_text("a user's file")  # not the project's: must stay
    task = build()
    with pytest.warns(TskdWarning, match="without a manifest and cannot be verified"):
        result = train(task, CFG, control=RunControl(resume=True, checkpoint_dir=folder))
    assert result.resumed_from_epoch is None
    assert _equal(task.model, reference)
    assert sorted(p.name for p in folder.iterdir()) == ["history.json", "notes.txt"]
    assert (folder / "notes.txt").read_text() == "a user's file"


def test_temp_folder_of_a_running_writer_is_left_alone(tmp_path: Path) -> None:
    """Only temporary folders of processes that no longer run are removed."""
    folder = tmp_path / "ck"
    folder.mkdir()
    alive = folder / f"ckpt.tmp-{os.getppid()}-abcd1234"  # our parent process: running
    alive.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = folder / f"ckpt.tmp-{dead}-abcd1234"
    stale.mkdir()
    train(build(), CFG, control=RunControl(checkpoint_dir=folder))
    assert alive.is_dir() and not stale.exists()


def test_cancel_mid_epoch_with_random_steps_resumes_bit_identical(
    tmp_path: Path, reference: dict[str, torch.Tensor]
) -> None:
    """Dropout draws inside each step: the random streams are saved with a mid-epoch checkpoint."""
    token = CancelToken()

    def stop(p: Progress) -> None:
        if p.step == 13:
            token.cancel()

    with pytest.raises(Cancelled):
        train(build(), CFG, control=RunControl(stop, token, checkpoint_dir=tmp_path))
    torch.rand(3)  # the resumed process's streams are anywhere
    task = build()
    result = train(task, CFG, control=RunControl(resume=True, checkpoint_dir=tmp_path))
    assert result.resumed_from_epoch == 1
    assert _equal(task.model, reference)


# ------------------------------------------------------------------ a real stage, via the CLI
_KILL_CLI = """
import dataclasses, os, signal, sys
from tskd import engine
stop = int(sys.argv[1])
orig = engine.train
def train(task, cfg, *, control=None, **kw):
    control = control or engine.RunControl()
    def p(x):
        if x.step == stop:
            os.kill(os.getpid(), signal.SIGKILL)
        if control.progress is not None:
            control.progress(x)
    return orig(task, cfg, control=dataclasses.replace(control, progress=p), **kw)
engine.train = train
from tskd.apps.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny_ck")
    data = write_tiny_task(root / "data")
    sam = write_tiny_sam(root / "sam.safetensors")
    return {"root": root, "data": data, "sam": sam}


def _student_config(tiny: dict, run: str) -> Path:
    cfg = tiny_config(tiny["data"], tiny["sam"], tiny["root"] / run)
    cfg["student"]["train"] |= {"epochs": 3}
    cfg["data"]["test"] = None
    return write_config(tiny["root"] / f"{run}.yaml", cfg)


def test_student_stage_killed_mid_epoch_resumes_to_identical_weights(tiny: dict) -> None:
    from safetensors.torch import load_file

    from tskd.apps.cli import main

    args = ["finetune-student", "--from-scratch", "--device", "cpu"]
    assert main([*args, "--config", str(_student_config(tiny, "full"))]) == 0
    config = _student_config(tiny, "cut")
    proc = subprocess.run([sys.executable, "-c", _KILL_CLI, "3", *args, "--config", str(config)],
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ck = tiny["root"] / "cut" / "checkpoints" / "student"
    assert (ck / "ckpt" / "manifest.json").is_file()  # epoch 1's checkpoint (2 steps an epoch)
    assert main([*args, "--config", str(config), "--resume"]) == 0
    a = load_file(str(tiny["root"] / "full" / "student" / "model.safetensors"))
    b = load_file(str(tiny["root"] / "cut" / "student" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in ck.iterdir()) == ["history.json", "inputs.json"]
