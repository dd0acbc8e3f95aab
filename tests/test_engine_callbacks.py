"""The engine's hooks (``tskd.engine.Callback``), the segmentation preview and the DDPM's EMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from ckpt_kill import CFG, build
from test_engine import _SegTask, _Task
from tskd.engine import (
    Callback,
    CancelToken,
    CheckpointExtra,
    Progress,
    RunControl,
    TrainState,
    train,
)
from tskd.errors import Cancelled, TskdError, TskdWarning
from tskd.training.preview import SegmentationPreview


class _Recorder(Callback):
    """Records every hook as (hook, step, epoch, steps_in_epoch)."""

    def __init__(self, log: list[tuple[str, int, int, int]] | None = None) -> None:
        self.log = log if log is not None else []

    def _add(self, hook: str, state: TrainState) -> None:
        self.log.append((hook, state.step, state.epoch, state.steps_in_epoch))

    def on_train_begin(self, state: TrainState) -> None:
        self._add("begin", state)

    def on_step_end(self, state: TrainState) -> None:
        self._add("step", state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._add("epoch", state)

    def on_train_end(self, state: TrainState) -> None:
        self._add("end", state)
        self.model_training_at_end = state.model.training


def test_hooks_run_in_order_with_the_state_of_each_point() -> None:
    log: list[tuple[str, int, int, int]] = []
    recorder = _Recorder(log)
    train(_Task(), CFG, callbacks=[recorder],
          control=RunControl(lambda p: log.append(("progress", p.step, p.epoch, -1))))
    assert log[0] == ("begin", 0, 0, 0)
    assert log[-1] == ("end", 24, 2, 8)
    assert [e for e in log if e[0] == "epoch"] == [("epoch", 8, 0, 8), ("epoch", 16, 1, 8),
                                                   ("epoch", 24, 2, 8)]
    steps = [e for e in log if e[0] == "step"]
    assert [e[1] for e in steps] == list(range(1, 25))
    # each step's hook runs before that step's progress report
    assert log[1:3] == [("step", 1, 0, 1), ("progress", 1, 0, -1)]
    assert recorder.model_training_at_end is False


def test_hooks_do_not_change_training() -> None:
    plain, hooked = _Task(), _Task()
    train(plain, CFG)
    train(hooked, CFG, callbacks=[_Recorder(), _Recorder()])
    assert torch.equal(plain.model.weight, hooked.model.weight)


class _Counter(Callback):
    """Keeps a step count and the losses' sum in the checkpoint."""

    def __init__(self) -> None:
        self.count = torch.zeros(())
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.resumed_with: CheckpointExtra | None | str = "never called"

    def on_step_end(self, state: TrainState) -> None:
        self.count += 1
        self.loss_sum += state.logs["loss"]

    def on_checkpoint(self, state: TrainState) -> CheckpointExtra:
        return ({"counter.count": self.count.clone(), "counter.loss_sum": self.loss_sum.clone()},
                {"counter.step": str(state.step)})

    def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
        self.resumed_with = extra
        assert extra is not None and extra[1]["counter.step"] == str(state.step)
        self.count = extra[0]["counter.count"].clone()
        self.loss_sum = extra[0]["counter.loss_sum"].clone()


def test_callback_state_travels_with_the_checkpoint(tmp_path: Path) -> None:
    reference = _Counter()
    ref_task = build()
    train(ref_task, CFG, callbacks=[reference])
    token, first = CancelToken(), _Counter()

    def stop_at_13(p: Progress) -> None:
        if p.step == 13:
            token.cancel()

    with pytest.raises(Cancelled, match="13/24"):
        train(build(), CFG, control=RunControl(stop_at_13, token, checkpoint_dir=tmp_path),
              callbacks=[first])
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert "extra.safetensors" in manifest["files"]  # verified with the weights
    resumed_task, resumed = build(), _Counter()
    result = train(resumed_task, CFG, control=RunControl(resume=True, checkpoint_dir=tmp_path),
                   callbacks=[resumed])
    assert result.resumed_from_epoch == 1
    assert resumed.resumed_with is not None and resumed.resumed_with != "never called"
    assert resumed.resumed_with[0]["counter.count"].item() == 13
    assert resumed.count.item() == reference.count.item() == 24
    assert torch.equal(resumed.loss_sum, reference.loss_sum)  # the same losses, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(resumed_task.model.state_dict().values(),
                                                 ref_task.model.state_dict().values()))


def test_without_callback_state_no_extra_file_and_resume_gets_none(tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        train(_Task(), CFG, control=RunControl(cancel=token, checkpoint_dir=tmp_path),
              callbacks=[_Recorder()])
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "manifest.json", "optimizer.pt", "state.json", "trainable.safetensors"]

    class _Expects(Callback):
        got: object = "never called"

        def on_resume(self, state: TrainState, extra: CheckpointExtra | None) -> None:
            _Expects.got = extra

    train(_Task(), CFG, control=RunControl(resume=True, checkpoint_dir=tmp_path),
          callbacks=[_Expects()])
    assert _Expects.got is None


def test_two_callbacks_keeping_one_name_are_refused(tmp_path: Path) -> None:
    clash = r"two callbacks keep checkpoint state under \['counter.count', 'counter.loss_sum', "
    with pytest.raises(ValueError, match=clash + r"'counter.step'\]"):
        train(_Task(), CFG, control=RunControl(checkpoint_dir=tmp_path),
              callbacks=[_Counter(), _Counter()])
    assert not (tmp_path / "ckpt").exists()  # nothing half-merged was written


# ------------------------------------------------------------------ the segmentation preview
def _previews(task: _SegTask, interval_s: float, epochs: int = 3) -> list[Progress]:
    reports: list[Progress] = []
    cfg = CFG.__class__(epochs=epochs, batch_size=2, lr=0.1, device="cpu")
    train(task, cfg, control=RunControl(progress=reports.append),
          callbacks=[SegmentationPreview(reports.append, interval_s=interval_s)])
    return [r for r in reports if r.preview is not None]


def test_preview_every_epoch_at_interval_zero_and_only_the_last_at_a_long_one() -> None:
    every = _previews(_SegTask(), interval_s=0.0)
    assert [(p.epoch, p.step, p.eta_s) for p in every] == [(0, 2, 0.0), (1, 4, 0.0), (2, 6, 0.0)]
    last_only = _previews(_SegTask(), interval_s=3600.0)
    assert [(p.epoch, p.step) for p in last_only] == [(2, 6)]


class _EvalFails(nn.Conv2d):
    """Trains normally; fails in eval mode, where a preview runs it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            raise RuntimeError("no eval")
        return super().forward(x)


def test_a_failing_preview_sends_nothing_and_training_goes_on() -> None:
    task, reference = _SegTask(), _SegTask()
    for t in (task, reference):
        torch.manual_seed(0)
        t.model = _EvalFails(3, 2, 1)
    assert _previews(task, interval_s=0.0) == []
    train(reference, CFG.__class__(epochs=3, batch_size=2, lr=0.1, device="cpu"))
    assert torch.equal(task.model.weight, reference.model.weight)


def test_preview_on_a_set_without_prepared_images_is_refused() -> None:
    task = _Task()
    before = task.model.weight.clone()
    with pytest.raises(TypeError, match="SegmentationPreview needs a LabelledDataset, not _Data"):
        train(task, CFG, callbacks=[SegmentationPreview(lambda p: None)])
    assert torch.equal(task.model.weight, before)  # refused before the first step


# ------------------------------------------------------------------ the diffusion model's EMA
def _ema_setup(decay: float = 0.5):
    from diffusers.training_utils import EMAModel

    from tskd.training.diffusion import EmaCallback

    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    ema = EMAModel(model.parameters(), decay=decay, foreach=True)
    callback = EmaCallback(ema, model, "fp-a", Path("ck"))
    state = TrainState("synthesize-train", model, None, torch.device("cpu"), 10, 1)  # type: ignore[arg-type]
    return model, ema, callback, state


def _saved(model: nn.Module, value: float, **meta: str) -> CheckpointExtra:
    return {n: torch.full_like(p, value) for n, p in model.named_parameters()}, meta


def test_ema_resume_loads_the_saved_average_without_folding_again() -> None:
    model, ema, callback, state = _ema_setup()
    state.step = 5
    callback.on_resume(state, _saved(model, 3.0, step="5", optimization_step="5", data="fp-a"))
    assert ema.optimization_step == 5
    assert all(torch.equal(s, torch.full_like(s, 3.0)) for s in ema.shadow_params)
    extra = callback.on_checkpoint(state)
    assert extra[1] == {"step": "5", "optimization_step": "5", "data": "fp-a"}


def test_ema_of_the_earlier_layout_folds_the_resumed_weights_once() -> None:
    """The earlier layout saved the EMA one optimiser step behind, under 'calls'."""
    model, ema, callback, state = _ema_setup()
    state.step = 5
    callback.on_resume(state, _saved(model, 3.0, calls="5", optimization_step="4", data="fp-a"))
    assert ema.optimization_step == 5
    decay = ema.get_decay(5)
    for s, p in zip(ema.shadow_params, model.parameters()):
        assert torch.allclose(s, decay * 3.0 + (1 - decay) * p.detach())


def test_ema_without_matching_state_restarts_from_the_resumed_weights() -> None:
    model, ema, callback, state = _ema_setup()
    state.step = 5
    with pytest.warns(TskdWarning, match="no matching EMA state in ck"):
        callback.on_resume(state, _saved(model, 3.0, step="4", optimization_step="4"))
    assert ema.optimization_step == 1  # restarted: a copy of the resumed weights
    assert all(torch.equal(s, p) for s, p in zip(ema.shadow_params, model.parameters()))
    # its next checkpoint resumes as it is: no second fold of the same weights
    state.step = 8
    extra = callback.on_checkpoint(state)
    again_model, again, again_cb, again_state = _ema_setup()
    again_state.step = 8
    again_cb.on_resume(again_state, extra)
    assert again.optimization_step == 1


def test_ema_of_other_images_is_refused() -> None:
    model, _, callback, state = _ema_setup()
    state.step = 5
    with pytest.raises(TskdError, match="checkpoint in ck was trained on other images"):
        callback.on_resume(state, _saved(model, 3.0, step="5", optimization_step="5",
                                         data="fp-b"))


def test_student_fine_tuning_sends_previews_only_with_progress_and_trains_alike() -> None:
    from test_finetune import S, _samples, _student, _tiny
    from tskd.training.finetune import finetune_student

    cfg = _tiny(epochs=2)
    reports: list[Progress] = []
    watched, unwatched = _student(2, cfg), _student(2, cfg)
    finetune_student(watched, _samples(4), [], cfg, S, RunControl(progress=reports.append))
    finetune_student(unwatched, _samples(4), [], cfg, S)
    previews = [(r.stage, r.epoch, r.preview["labels"].shape) for r in reports
                if r.preview is not None]
    assert previews[-1] == ("finetune-student", 1, (S, S))  # the last epoch's, always
    assert all(torch.equal(a, b) for a, b in zip(watched.state_dict().values(),
                                                 unwatched.state_dict().values()))
