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
