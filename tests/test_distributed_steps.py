"""Stages counted in optimiser steps train the steps asked on any number of processes.

``synth.train.max_steps`` and ``pretrain-mini --steps`` count optimiser steps of the global batch
(``batch_size x processes x grad_accum_steps``): two processes, or accumulation, must not train
a fraction of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_workers import launch


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (1, 2)])
def test_diffusion_model_trains_the_steps_asked(tmp_path: Path, world: int, accum: int) -> None:
    ranks = launch(world, "ddpm", tmp_path, steps=4, batch_size=2, accum=accum)
    assert [r["steps"] if r else None for r in ranks] == [4] * world, ranks


@pytest.mark.parametrize(("world", "accum"), [(2, 1), (1, 2)])
def test_pretraining_trains_the_steps_asked(tmp_path: Path, world: int, accum: int) -> None:
    ranks = launch(world, "pretrain", tmp_path, steps=6, batch_size=2, accum=accum)
    assert [r["steps"] if r else None for r in ranks] == [6] * world, ranks


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(("n", "steps"), [(6, 6), (10, 6), (7, 6), (5, 3)])
def test_accumulation_uses_every_micro_batch_as_the_larger_batch_does(
        tmp_path: Path, n: int, steps: int) -> None:
    from dist_workers import train_linear

    # 6 images: 3 micro-batches of 2 make 2 steps (2 + 1 micro-batches), as batch 4 does (4 + 2);
    # 10: two whole steps of 4 (the last 2 dropped, as batch 4 drops them); 7: 4 + 3;
    # 5: one step of 2 + 3 (no micro-batch of 1), as batch 4 takes all 5 at once
    acc = train_linear(tmp_path, batch_size=2, accum=2, n=n)
    big = train_linear(tmp_path, batch_size=4, n=n)
    assert acc["steps"] == big["steps"] == steps  # 3 epochs
    assert _max_diff(acc["weights"], big["weights"]) < 1e-6


def test_accumulation_on_two_processes_equals_the_larger_batch(tmp_path: Path) -> None:
    # 6 images, 2 processes: 1 x 2 x 2 accumulated = 2 x 2; the last step filled up on both
    acc = launch(2, "linear", tmp_path / "acc", batch_size=1, accum=2, n=6)
    big = launch(2, "linear", tmp_path / "big", batch_size=2, n=6)
    assert [r["steps"] for r in acc] == [r["steps"] for r in big] == [6, 6]
    assert _max_diff(acc[0]["weights"], big[0]["weights"]) < 1e-6


def test_accumulation_over_an_epoch_warns_in_one_line(tmp_path: Path) -> None:
    from dist_workers import train_linear

    with pytest.warns(UserWarning) as caught:
        out = train_linear(tmp_path, batch_size=2, accum=5, n=6)
    assert out["steps"] == 3  # one step of the 3 micro-batches per epoch
    assert [str(w.message) for w in caught if "grad_accum" in str(w.message)] == [
        "linear: grad_accum_steps 5 is more than the 3 batch(es) of an epoch; each epoch is "
        "one optimiser step of 3"]


def test_one_process_never_makes_a_micro_batch_of_one_image() -> None:
    import torch

    from tskd.distributed import ShardedBatches

    def sizes(n: int, batch: int, accum: int = 1) -> list[int]:
        return [len(b) for b in ShardedBatches(n, batch, torch.Generator().manual_seed(0),
                                               accum=accum)]

    # a BatchNorm student fails on a batch of 1: a last single image joins the batch before
    assert sizes(5, 4) == [5] and sizes(3, 2) == [3] and sizes(7, 2, accum=2) == [2, 2, 3]
    assert sizes(6, 4) == [4, 2] and sizes(10, 4) == [4, 4] and sizes(1, 4) == [1]
    for n, batch, accum in [(5, 4, 1), (7, 2, 2), (9, 2, 3)]:
        assert sorted(sum(ShardedBatches(n, batch, torch.Generator().manual_seed(0),
                                         accum=accum), [])) == list(range(n))
