"""Early stopping at a validation plateau and the time budget (``tskd.stopping``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from test_engine import _Task
from tskd.config import TrainConfig
from tskd.engine import CancelToken, RunControl, train
from tskd.errors import Cancelled
from tskd.stopping import EarlyStopping, TimeLimit

CFG = TrainConfig(epochs=10, batch_size=4, lr=0.05, device="cpu")  # 8 steps per epoch


class _Scripted:
    """A score that follows a script (one value per evaluation) and records the weights seen."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)
        self.weights: list[torch.Tensor] = []

    def __call__(self, model: torch.nn.Module) -> float:
        self.weights.append(model.weight.detach().clone())
        torch.rand(3)  # a draw from the global stream, which must not reach training
        return self.values[len(self.weights) - 1]


def test_stops_after_patience_and_ends_with_the_best_weights() -> None:
    score = _Scripted([0.1, 0.5, 0.4, 0.45, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9])
    stop = EarlyStopping(score, patience=3)
    task = _Task()
    result = train(task, CFG, callbacks=[stop])
    # best at epoch 1 (0.5); epochs 2, 3, 4 bring no gain -> stops after epoch 4 (40 steps)
    assert result.steps == 40 and len(result.history) == 5
    assert stop.best == 0.5 and stop.best_epoch == 1
    assert [h["val_score"] for h in result.history] == [0.1, 0.5, 0.4, 0.45, 0.3]
    assert torch.equal(task.model.weight, score.weights[1])  # the best weights are back


def test_min_delta_and_min_epochs() -> None:
    score = _Scripted([0.5, 0.5005, 0.5008, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])
    stop = EarlyStopping(score, patience=2, min_delta=1e-3, min_epochs=6)
    result = train(_Task(), CFG, callbacks=[stop])
    # gains under 1e-3 do not count, but min_epochs keeps it going until epoch 5; best 0.6 at 3
    assert stop.best == 0.6 and stop.best_epoch == 3 and len(result.history) == 6


def test_every_evaluates_only_some_epochs_and_the_last() -> None:
    score = _Scripted([0.1, 0.2, 0.3, 0.4, 0.5])
    stop = EarlyStopping(score, patience=5, every=3)
    train(_Task(), CFG, callbacks=[stop])
    assert [e for e, _ in stop.scores] == [2, 5, 8, 9]


def test_scoring_does_not_change_training_draws() -> None:
    plain, scored = _Task(), _Task()
    train(plain, TrainConfig(epochs=3, batch_size=4, lr=0.05, device="cpu"))
    stop = EarlyStopping(_Scripted([0.1, 0.2, 0.3]), patience=5)  # improves: last weights kept
    train(scored, TrainConfig(epochs=3, batch_size=4, lr=0.05, device="cpu"), callbacks=[stop])
    assert torch.equal(plain.model.weight, scored.model.weight)


def test_a_resumed_run_stops_where_an_unbroken_one_does(tmp_path: Path) -> None:
    values = [0.1, 0.5, 0.4, 0.45, 0.3, 0.9, 0.9, 0.9, 0.9, 0.9]
    unbroken = _Task()
    train(unbroken, CFG, callbacks=[EarlyStopping(_Scripted(values), patience=3)])

    cancel = CancelToken()
    first = EarlyStopping(_Scripted(values), patience=3)

    def cancel_after_epoch_2(p):  # noqa: ANN001 - a progress callback
        if p.step == 26:
            cancel.cancel()

    with pytest.raises(Cancelled):
        train(_Task(), CFG, callbacks=[first], control=RunControl(
            checkpoint_dir=tmp_path, cancel=cancel, progress=cancel_after_epoch_2))
    resumed_task = _Task()
    score = _Scripted(values[3:])  # the scores still to come (epochs 3..)
    second = EarlyStopping(score, patience=3)
    result = train(resumed_task, CFG, callbacks=[second],
                   control=RunControl(checkpoint_dir=tmp_path, resume=True))
    assert second.best == 0.5 and second.best_epoch == 1 and result.steps == 40
    assert torch.equal(resumed_task.model.weight, unbroken.model.weight)


def test_a_stopped_run_stays_stopped_on_resume(tmp_path: Path) -> None:
    stop = EarlyStopping(_Scripted([0.5, 0.1, 0.1, 0.1] + [0.9] * 6), patience=1)
    train(_Task(), CFG, callbacks=[stop],
          control=RunControl(checkpoint_dir=tmp_path, keep_checkpoint=True))
    again = EarlyStopping(_Scripted([0.9] * 10), patience=1)
    result = train(_Task(), CFG, callbacks=[again],
                   control=RunControl(checkpoint_dir=tmp_path, resume=True))
    assert result.steps == 16  # stopped after epoch 1 the first time; no step taken now


def test_time_limit_stops_after_the_step_that_crosses_it() -> None:
    result = train(_Task(), CFG, callbacks=[TimeLimit(0.0)])
    assert result.steps == 1 and len(result.history) == 1


class _SlowTask(_Task):
    """The toy task whose every step moves a fake ``time.perf_counter`` by one second."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        self.clock[0] += 1.0
        return super().step(model, batch)


def test_a_run_stopped_by_its_time_budget_is_scored_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    score = _Scripted([0.1, 0.2, 0.3])
    stop = EarlyStopping(score, patience=5, every=3)
    cfg = TrainConfig(epochs=10, batch_size=4, lr=0.05, device="cpu", max_seconds=30.0)
    task = _SlowTask(clock)
    result = train(task, cfg, callbacks=[stop])
    # scored after epoch 2 (every 3) and after epoch 3, in which the clock stopped it (step 30):
    # those 6 steps are not thrown away for the weights of epoch 2
    assert result.steps == 30 and result.stopped == "time budget of 30 s reached"
    assert [e for e, _ in stop.scores] == [2, 3] and stop.best_epoch == 3
    assert torch.equal(task.model.weight, score.weights[1])  # the weights of step 30 are kept


def test_bad_patience_is_refused() -> None:
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(lambda m: 0.0, patience=0)
