"""Scaling settings: gradient checkpointing, gradient accumulation, and the GPU check script."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tskd.config import RunConfig, TeacherConfig, TrainConfig
from tskd.data.samples import Sample
from tskd.errors import TskdInputError

ROOT = Path(__file__).resolve().parents[1]


def _samples(n: int, size: int = 32) -> list[Sample]:
    """A disc on noise per image: the GPU check's own test images (benchmarks/gpu_check.py)."""
    from bench_scripts import load_script

    return load_script("gpu_check", "gpu_check_samples")._samples(n, size)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> str:
    from tskd.models.mini_sam import MiniSamConfig, build_mini_sam
    from tskd.models.mini_sam_files import save_mini_sam

    torch.manual_seed(0)
    cfg = MiniSamConfig.tiny()
    path = tmp_path_factory.mktemp("sam") / "tiny.safetensors"
    return str(save_mini_sam(build_mini_sam(cfg), cfg, path, half=False))


def _teacher(tiny_sam: str, out: Path, checkpointing: bool = False) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from tskd.training.teacher import finetune_teacher

    train = TrainConfig(epochs=1, batch_size=2, max_steps=2, device="cpu", lr=3e-3)
    cfg = TeacherConfig(model_type="mini", checkpoint=tiny_sam, input_size=32, train=train,
                        gradient_checkpointing=checkpointing)
    torch.set_num_threads(1)
    finetune_teacher(cfg, _samples(4), [], 2, out, augment=False)
    return load_file(str(out / "adapter.safetensors"))


def test_gradient_checkpointing_trains_the_same_teacher(tiny_sam: str, tmp_path: Path) -> None:
    plain = _teacher(tiny_sam, tmp_path / "plain")
    ckpt = _teacher(tiny_sam, tmp_path / "ckpt", checkpointing=True)
    assert plain.keys() == ckpt.keys()
    # the same gradients, recomputed: equal up to float summation order
    assert max(float((plain[k] - ckpt[k]).abs().max()) for k in plain) < 1e-5


def test_checkpointed_block_keeps_its_weights_and_recomputes_in_training() -> None:
    from tskd.training.teacher import checkpoint_blocks

    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())])
    names = list(blocks.state_dict())
    x = torch.randn(3, 4, requires_grad=True)
    expected = blocks[0](x)
    checkpoint_blocks(blocks)
    assert list(blocks.state_dict()) == names  # weights and names unchanged
    calls: list[int] = []
    blocks[0][0].register_forward_hook(lambda *a: calls.append(1))
    out = blocks[0](x)
    out.sum().backward()
    assert torch.equal(out, expected) and len(calls) == 2  # forward, then its recomputation
    with torch.no_grad():
        blocks[0](x)
    assert len(calls) == 3  # no gradient: one plain forward


@pytest.mark.parametrize("value", [0, -1, 1.5])
def test_grad_accum_steps_below_one_is_refused(value: object) -> None:
    from tskd.pipeline.settings_check import check_settings

    cfg = RunConfig()
    cfg.student.train.grad_accum_steps = value  # type: ignore[assignment]
    with pytest.raises(TskdInputError) as err:
        check_settings(cfg)
    assert str(err.value) == ("config: 'student.train.grad_accum_steps' must be 1 or more "
                              f"(forward passes per optimiser step); got {value}")


def test_new_settings_leave_fingerprints_of_earlier_runs_unchanged() -> None:
    from tskd.pipeline.fingerprints import _settings_fp

    cfg = RunConfig()
    before = _settings_fp(cfg.teacher)
    assert "grad_accum_steps" not in before["train"] and "gradient_checkpointing" not in before
    cfg.teacher.gradient_checkpointing = True  # memory only: the same teacher
    assert _settings_fp(cfg.teacher) == before
    cfg.teacher.train.grad_accum_steps = 2  # another global batch: another teacher
    assert _settings_fp(cfg.teacher)["train"]["batch_size"] == 2 * cfg.teacher.train.batch_size
    # the same global batch split otherwise (half the batch, 2 accumulation steps): the same
    cfg.teacher.train.batch_size //= 2
    assert _settings_fp(cfg.teacher) == before


def test_gpu_check_runs_tiny_on_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    torch.set_num_threads(1)
    report = gpu_check.main(["--tiny", "--max-batch", "2", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == report
    assert report["device"] == "cpu" and report["model_type"] == "mini"
    stages = {r["stage"]: r for r in report["stages"]}
    assert sorted(stages) == ["distill", "predict", "student", "teacher"]
    assert stages["teacher"]["size"] == 64 and stages["teacher"]["steps"] == 1
    assert stages["teacher"]["largest_batch"] == 2  # the search's limit: all fit on the CPU
    assert stages["student"]["steps"] == 1 and stages["distill"]["steps"] == 1
    assert all(r["peak_gb"] > 0 for r in report["stages"])
    assert stages["predict"]["images_per_s"] > 0 and stages["teacher"]["steps_per_s"] > 0
    # the presets are listed, none measured on a CPU
    assert len(report["presets"]) == 9
    assert {p["verdict"] for p in report["presets"]} == {"not measured"}
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check (") and "| teacher | 64 | 2 |" in md


def test_largest_batch_search_finds_the_limit() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tried: list[int] = []

    def fits(b: int) -> bool:
        tried.append(b)
        return b <= 11

    assert gpu_check.largest_batch(fits, 64) == 11
    assert tried == [1, 2, 4, 8, 16, 12, 10, 11]
    assert gpu_check.largest_batch(lambda b: True, 6) == 6
    assert gpu_check.largest_batch(lambda b: False, 64) == 0


def test_fingerprint_is_that_of_the_global_batch_on_any_number_of_processes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tskd.pipeline.fingerprints import _settings_fp

    one = RunConfig()
    one.student.train.batch_size = 4
    alone = _settings_fp(one.student)
    two = RunConfig()
    two.student.train.batch_size = 2
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it: 2 x 2 = the same 4
    assert _settings_fp(two.student) == alone
    assert _settings_fp(one.student)["train"]["batch_size"] == 8  # 2 x 4: another run


def _gpu_check(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202 - the script's module
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("gpu_check", None)
    import gpu_check

    return gpu_check


def test_gpu_check_tiny_writes_into_a_temporary_folder_and_says_where(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import tempfile

    gpu_check = _gpu_check(monkeypatch)
    results = tmp_path / "results"  # stands for benchmarks/results/
    monkeypatch.setattr(gpu_check, "RESULTS", results)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    torch.set_num_threads(1)
    report = gpu_check.main(["--tiny", "--max-batch", "1"])
    assert not results.exists()  # the GPU results are never replaced by a smoke test
    (written,) = (tmp_path / "tmp").iterdir()
    assert written.name.startswith("gpu_check_tiny_")
    assert json.loads((written / "gpu_check.json").read_text()) == report
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"gpu_check: wrote {written / 'gpu_check.json'} and "
                               f"{written / 'gpu_check.md'} (")
    assert lines[0].endswith(", tiny smoke test)")
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == [
        "teacher 64 px", "distill 64 px", "student 64 px", "predict 64 px"]
    assert "steps/s, peak " in lines[1] and lines[1].endswith("largest batch 1")
    assert "images/s, peak " in lines[4]


def test_gpu_check_without_a_gpu_refuses_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    gpu_check = _gpu_check(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); run it on a "
        "machine with one, or pass --tiny for a CPU smoke test\n")
    assert not (tmp_path / "out").exists()


def test_gpu_check_markdown_has_one_unit_per_column(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _gpu_check(monkeypatch)
    report = {"tiny": False, "model_type": "vit_b", "device_name": "H200", "torch": "2",
              "memory": "torch.cuda.max_memory_allocated",
              "stages": [{"stage": "teacher", "size": 256, "batch_size": 2, "steps": 5,
                          "peak_gb": 3.5, "steps_per_s": 4.2, "largest_batch": 16},
                         {"stage": "distill", "size": 256, "batch_size": 2, "steps": 5,
                          "peak_gb": 1.25, "seconds": 2.0, "steps_per_s": 2.5},
                         {"stage": "predict", "size": 256, "images": 32, "peak_gb": 0.5,
                          "images_per_s": 40.0}],
              "presets": [{"preset": "cpu", "model_type": "mini", "size": 256,
                           "batch_size": 2, "min_free_gb": None, "measured_peak_gb": None,
                           "verdict": "not measured"}]}
    rows = [ln for ln in gpu_check.markdown(report).splitlines() if ln.startswith("| ")]
    assert rows == [
        "| stage | size (px) | batch | speed | peak memory (GB) | largest batch |",
        "| teacher | 256 | 2 | 4.2 steps/s | 3.500 | 16 |",
        "| distill | 256 | 2 | 2.5 steps/s | 1.250 | - |",
        "| predict | 256 | - | 40.0 images/s | 0.500 | - |",
        "| preset | model | size (px) | batch | min free (GB) | measured peak (GB) | verdict |",
        "| cpu | mini | 256 | 2 | - | - | not measured |"]
