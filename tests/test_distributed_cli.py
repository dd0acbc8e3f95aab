"""The ``tskd`` command as one rank of a job: the other ranks write nothing; torchrun end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from tskd import atomic, distributed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rank_1_of_2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as rank 1 of a two-process CLI job (no process group needed here)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    distributed.follow_main()
    yield
    atomic.set_writer(True)
    distributed._FOLLOW["on"] = False


def test_a_rank_that_is_not_main_writes_nothing(tmp_path: Path, rank_1_of_2: None) -> None:
    from tskd.pipeline.lock import run_lock

    assert distributed.following() and not distributed.is_main()
    assert atomic.write_json(tmp_path / "a.json", {"x": 1}) == tmp_path / "a.json"
    atomic.save_safetensors(tmp_path / "b.safetensors", {})
    assert sorted(tmp_path.iterdir()) == []  # the main process writes those
    with atomic.own_files():  # its own shard of the teacher cache
        atomic.write_text(tmp_path / "own.txt", "mine")
    assert (tmp_path / "own.txt").read_text() == "mine"
    with run_lock(tmp_path / "run") as root:  # the main process holds the lock
        assert root == tmp_path / "run" and not root.exists()


def test_one_process_writes_as_before(tmp_path: Path) -> None:
    assert not distributed.following() and distributed.is_main()
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


@pytest.mark.slow
def test_torchrun_two_processes_finetune_student(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_setup import tiny_config, write_config, write_tiny_sam, write_tiny_task

    data = write_tiny_task(tmp_path / "data", n_train=8, n_unlabelled=0, n_test=0)
    cfg = tiny_config(data, write_tiny_sam(tmp_path / "sam.safetensors"), tmp_path / "run")
    cfg["data"].pop("unlabelled")
    cfg["data"].pop("test")
    cfg["student"]["from_scratch"] = True
    config = write_config(tmp_path / "cfg.yaml", cfg)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    from dist_workers import free_port

    done = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                           "-m", "tskd", "finetune-student", "--config", str(config)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)  # exactly one JSON document: rank 0's
    # 8 images, batch 2 per process x 2 processes: 2 steps in the one epoch
    assert result["steps"] == 2 and result["n_train"] == 8
    run = tmp_path / "run"
    assert (run / "student" / "meta.json").is_file()
    assert not (run / ".tskd.lock.json").exists()
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith("ckpt")]
    assert leftovers == []


def test_demo_under_a_launcher_is_refused_in_one_line(rank_1_of_2: None) -> None:
    from tskd.apps import job
    from tskd.errors import TskdError

    ran: list[int] = []
    args = types.SimpleNamespace(command="demo")
    with pytest.raises(TskdError) as err:
        job.run(lambda *a: ran.append(1) or 0, args, None, None, every_rank=False)
    assert str(err.value) == ("tskd demo runs on one process; start it without torchrun or "
                              "accelerate launch")
    assert ran == [] and job.rank_note() == " (rank 1)"


def test_the_ctrl_c_line_names_the_rank_on_other_ranks(rank_1_of_2: None) -> None:
    from tskd.apps.job import stop_note

    assert stop_note() == "\ntskd (rank 1): stopping at the next step (Ctrl-C again to abort now)"


def test_the_ctrl_c_line_of_one_process_is_unchanged() -> None:
    from tskd.apps.job import stop_note

    assert stop_note() == "\ntskd: stopping at the next step (Ctrl-C again to abort now)"
