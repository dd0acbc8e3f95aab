"""The warm-up + cosine schedule and fitting it to a time budget (``tskd.schedule``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from test_engine import _Task
from test_stopping import _Scripted
from tskd.config import RunConfig, TrainConfig
from tskd.engine import CancelToken, Progress, RunControl, train
from tskd.errors import Cancelled
from tskd.schedule import CosineSchedule
from tskd.stopping import EarlyStopping

# 8 steps per epoch, 80 in all; warm-up 4 steps (5 %)
CFG = TrainConfig(epochs=10, batch_size=4, lr=0.05, device="cpu")


class _Clock:
    """A fake ``time.perf_counter`` that only a training step moves, by ``step_s`` seconds."""

    def __init__(self, step_s: float) -> None:
        self.now, self.step_s = 1000.0, step_s

    def __call__(self) -> float:
        return self.now


class _SlowTask(_Task):
    """The toy task whose every step takes ``clock.step_s`` seconds of the fake clock."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        self.clock.now += self.clock.step_s
        return super().step(model, batch)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock(1.0)
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


def _capped(seconds: float, fit: bool) -> TrainConfig:
    return TrainConfig(epochs=10, batch_size=4, lr=0.05, device="cpu", max_seconds=seconds,
                       fit_to_time=fit)


def test_cosine_warms_up_linearly_then_falls_to_zero_at_total() -> None:
    s = CosineSchedule(total=24, warmup=4)
    assert [s(k) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0 and s(14) == pytest.approx(0.5) and s(24) == 0.0 and s(30) == 0.0
    s.total = 14  # a fitted schedule reaches 0 earlier
    assert s(9) == pytest.approx(0.5) and s(14) == 0.0


def test_a_budget_too_short_for_the_plan_ends_the_schedule_where_it_fits(clock: _Clock) -> None:
    reports: list[Progress] = []
    result = train(_SlowTask(clock), _capped(30.0, fit=True),
                   control=RunControl(progress=reports.append))
    # steps of 1 s: timed from the end of step 1 to step 6 (warm-up 4 < 5 probe steps); 24 s
    # are left, of which 0.9 plan 21 more steps: 27 in all, at clock 27 s < 30 s
    assert result.steps == 27 and result.stopped is None
    assert reports[-1].step == reports[-1].total == 27
    assert [r.total for r in reports[:6]] == [80] * 5 + [27]


def test_without_the_fit_the_clock_cuts_the_planned_schedule(clock: _Clock) -> None:
    result = train(_SlowTask(clock), _capped(30.0, fit=False))
    assert result.steps == 30 and result.stopped == "time budget of 30 s reached"


def test_a_run_that_fits_its_budget_is_unchanged_bit_for_bit(clock: _Clock) -> None:
    free, capped = _SlowTask(clock), _SlowTask(clock)
    train(free, CFG)
    result = train(capped, _capped(1000.0, fit=True))
    assert result.steps == 80 and torch.equal(free.model.weight, capped.model.weight)


def test_a_run_resumed_after_the_fit_keeps_its_steps_and_weights(
    clock: _Clock, tmp_path: Path
) -> None:
    unbroken = _SlowTask(clock)
    train(unbroken, _capped(30.0, fit=True))
    cancel = CancelToken()

    def cancel_at_step_10(p: Progress) -> None:
        if p.step == 10:
            cancel.cancel()

    with pytest.raises(Cancelled):
        train(_SlowTask(clock), _capped(30.0, fit=True), control=RunControl(
            progress=cancel_at_step_10, cancel=cancel, checkpoint_dir=tmp_path))
    clock.step_s = 0.1  # the resumed run is faster: it keeps the fitted plan all the same
    resumed = _SlowTask(clock)
    result = train(resumed, _capped(30.0, fit=True),
                   control=RunControl(checkpoint_dir=tmp_path, resume=True))
    assert result.steps == 27
    assert torch.equal(resumed.model.weight, unbroken.model.weight)


def test_a_run_stopped_by_its_time_budget_is_scored_at_its_end(clock: _Clock) -> None:
    stop = EarlyStopping(_Scripted([0.1, 0.2, 0.3]), patience=5, every=3)
    result = train(_SlowTask(clock), _capped(30.0, fit=False), callbacks=[stop])
    # evaluated after epoch 2 (every 3) and after epoch 3, where the clock stopped it (step 30)
    assert result.steps == 30 and [e for e, _ in stop.scores] == [2, 3]
    assert stop.best == 0.2 and stop.best_epoch == 3


def test_the_fit_is_a_training_setting_of_the_fingerprint() -> None:
    from tskd.pipeline.fingerprints import _settings_fp

    cfg = RunConfig()
    assert "fit_to_time" not in _settings_fp(cfg.teacher)["train"]  # earlier runs' values
    cfg.teacher.train.fit_to_time = True
    assert _settings_fp(cfg.teacher)["train"]["fit_to_time"] is True
