"""Training on several processes (gloo on the CPU, started as ``torchrun`` starts them).

Tolerances, and why: with the same global batch, one and two processes see the same images in
each optimiser step with the same augmentations (``tskd.distributed.SeededItems``); what
differs is the order of float additions (the gradient is the mean of two half-batch means,
averaged by an all-reduce, instead of one mean over the whole batch), about 1e-7 relative per
step. After 24 Adam steps the weights of the least-squares toy agree to 1e-6 (measured 3e-8).
The fine-tuning stage with cross-entropy only agrees to 1e-4 (measured 3.3e-6: its convolutions
and attention sum over other batch shapes). The Dice term is pooled over each process's batch
(as nnU-Net and MONAI do under DDP), so with ``dice_weight > 0`` the result is another,
equally valid one, not the same (docs/scaling.md). With the same number of processes a
resumed run is bit-identical.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from dist_workers import launch, train_linear
from tskd.distributed import ShardedBatches

TOL = 1e-6  # least-squares toy, 24 steps: see the module docstring


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    """The toy trained uninterrupted: on 1 process (batch 4) and on 2 (batch 2 each)."""
    root = tmp_path_factory.mktemp("ref")
    return {"one": launch(1, "linear", root / "one", batch_size=4),
            "two": launch(2, "linear", root / "two", batch_size=2)}


@pytest.fixture(scope="module")
def cancelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """A two-process run (batch 2 each) cancelled on rank 0 at step 13: its checkpoint."""
    root = tmp_path_factory.mktemp("cancelled")
    ranks = launch(2, "linear", root / "run", batch_size=2, ckpt=str(root / "ckpt"), cancel_at=13)
    return root / "ckpt", ranks


def _copy(cancelled: tuple[Path, list], tmp_path: Path) -> Path:
    return Path(shutil.copytree(cancelled[0], tmp_path / "ckpt"))


def test_each_rank_gets_its_share_of_the_same_global_batches() -> None:
    def batches(n: int, b: int, ranks: int, rank: int) -> list[list[int]]:
        g = torch.Generator()
        g.manual_seed(7)
        return list(ShardedBatches(n, b, g, ranks, rank))

    one = batches(10, 4, 1, 0)
    r0, r1 = batches(10, 2, 2, 0), batches(10, 2, 2, 1)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one  # 2 x 2 is 1 x 4, step by step
    assert len(one) == 2 and sorted(sum(one, [])) != list(range(10))  # the last 2 dropped
    # one process: the order a shuffled DataLoader with this generator gives
    g = torch.Generator()
    g.manual_seed(7)
    assert sum(batches(10, 4, 1, 0), []) == torch.randperm(10, generator=g).tolist()[:8]
    # fewer images than a global batch: every rank still gets a full share (filled up)
    small = [batches(3, 4, 2, r) for r in (0, 1)]
    assert [len(s) for s in small] == [1, 1] and [len(s[0]) for s in small] == [2, 2]
    assert sorted(set(small[0][0] + small[1][0])) == [0, 1, 2]


def test_two_processes_train_as_one_with_the_same_global_batch(reference: dict) -> None:
    one, two = reference["one"][0], reference["two"]
    assert "error" not in one and all("error" not in r for r in two)
    assert one["world"] == 1 and [r["world"] for r in two] == [2, 2]
    assert one["steps"] == two[0]["steps"] == two[1]["steps"] == 24  # 32 images / 4, 3 epochs
    assert _max_diff(two[0]["weights"], two[1]["weights"]) == 0.0  # gradients synchronised
    assert _max_diff(one["weights"], two[0]["weights"]) < TOL
    # the logged loss is the global batch's on every rank
    for a, b in zip(one["history"], two[1]["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_fine_tuning_stage_on_two_processes_matches_one(tmp_path: Path) -> None:
    # cross-entropy only: the loss is a mean over pixels, so it splits exactly (docstring)
    one = launch(1, "finetune", tmp_path / "one", batch_size=4, dice_weight=0.0)[0]
    two = launch(2, "finetune", tmp_path / "two", batch_size=2, dice_weight=0.0)
    assert one is not None and "error" not in one, one
    assert all(r is not None and "error" not in r for r in two), two
    assert one["steps"] == two[0]["steps"] == 4  # 8 images, global batch 4, 2 epochs
    assert _max_diff(two[0]["weights"], two[1]["weights"]) == 0.0
    assert _max_diff(one["weights"], two[0]["weights"]) < 1e-4


def test_only_rank_0_writes_and_reports_and_its_cancel_stops_both(
        tmp_path: Path, reference: dict, cancelled: tuple[Path, list]) -> None:
    r0, r1 = cancelled[1]
    # rank 0's token alone was set; both stopped before step 14, with the same message
    message = "Cancelled: linear: cancelled at step 13/24; resume to go on"
    assert r0["error"] == r1["error"] == message
    assert r0["reports"] == list(range(1, 14)) and r1["reports"] == []
    assert r0["saves"] == [0, 0] and r1["saves"] == []  # epoch 1's end, then the cancel
    ckpt = _copy(cancelled, tmp_path)
    assert sorted(p.name for p in ckpt.iterdir()) == ["ckpt"]
    # resumed on the same two processes: bit-identical with the uninterrupted two-process run
    again = launch(2, "linear", tmp_path / "again", batch_size=2, ckpt=str(ckpt), resume=True)
    assert [r["resumed"] for r in again] == [1, 1] and again[0]["steps"] == 24
    assert _max_diff(again[0]["weights"], reference["two"][0]["weights"]) == 0.0
    assert again[1]["reports"] == [] and again[1]["saves"] == []
    assert sorted(p.name for p in ckpt.iterdir()) == ["history.json"]


def test_a_stop_decided_on_rank_0_stops_every_rank(tmp_path: Path) -> None:
    r0, r1 = launch(2, "linear", tmp_path, batch_size=2, stop_at=5)
    assert r0["steps"] == r1["steps"] == 5
    assert r0["stopped"] == r1["stopped"] == "asked by rank 0"


def test_killed_two_process_run_resumes_on_one_process(tmp_path: Path, reference: dict) -> None:
    ckpt = tmp_path / "ckpt"
    r0, _ = launch(2, "linear", tmp_path / "run", batch_size=2, ckpt=str(ckpt), kill_at=13)
    assert r0 is None  # rank 0 was killed at step 13 (SIGKILL), mid-epoch 2
    assert (ckpt / "ckpt" / "manifest.json").is_file()  # epoch 1's checkpoint (step 8)
    # one process with batch 4: the same global batch; resumes at epoch 1 and finishes
    resumed = train_linear(tmp_path, batch_size=4, ckpt=str(ckpt), resume=True)
    assert "error" not in resumed, resumed
    assert resumed["resumed"] == 1 and resumed["steps"] == 24 and resumed["reports"][0] == 9
    assert _max_diff(resumed["weights"], reference["one"][0]["weights"]) < TOL


def test_mid_epoch_checkpoint_of_two_processes_resumes_on_one(
        tmp_path: Path, reference: dict, cancelled: tuple[Path, list]) -> None:
    resumed = train_linear(tmp_path, batch_size=4, ckpt=str(_copy(cancelled, tmp_path)),
                           resume=True)
    assert resumed["reports"][0] == 14 and resumed["steps"] == 24
    assert _max_diff(resumed["weights"], reference["one"][0]["weights"]) < TOL


def test_resume_with_another_global_batch_is_refused(tmp_path: Path,
                                                     cancelled: tuple[Path, list]) -> None:
    # one process with batch 2 is a global batch of 2, not the checkpoint's 4
    ckpt = _copy(cancelled, tmp_path)
    resumed = train_linear(tmp_path, batch_size=2, ckpt=str(ckpt), resume=True)
    assert resumed["error"].startswith("TskdError: cannot resume: the checkpoint in ")
    assert "it has 4 images per step, this run 2" in resumed["error"]
    assert (ckpt / "ckpt" / "manifest.json").is_file()  # kept for a resume that fits


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path) -> None:
    # batch 2 x 2 accumulated steps = batch 4: the same images per step, the same mean
    big = train_linear(tmp_path, batch_size=4)
    acc = train_linear(tmp_path, batch_size=2, accum=2)
    assert acc["steps"] == big["steps"] == 24
    assert _max_diff(acc["weights"], big["weights"]) < TOL


def test_one_process_resumes_with_accumulation_giving_the_same_global_batch(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    first = train_linear(tmp_path, batch_size=4, ckpt=str(ckpt), cancel_at=5)
    assert first["error"].startswith("Cancelled: linear: cancelled at step 5/24")
    refused = train_linear(tmp_path, batch_size=2, ckpt=str(ckpt), resume=True)
    assert "it has 4 images per step, this run 2" in refused["error"]
    resumed = train_linear(tmp_path, batch_size=2, accum=2, ckpt=str(ckpt), resume=True)
    assert resumed["reports"][0] == 6 and resumed["steps"] == 24
    whole = train_linear(tmp_path, batch_size=4)
    assert _max_diff(resumed["weights"], whole["weights"]) < TOL


def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    r0, r1 = launch(2, "linear", tmp_path, batch_size=2, nan_on_rank=1)
    message = "TskdError: linear: the loss became nan at step 2; lower the learning rate"
    assert r0["error"] == r1["error"] == message  # rank 0's loss was finite: no rank hangs
