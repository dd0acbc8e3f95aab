"""Teacher reports: another teacher's grid beside the built-in one's, and student vs teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench_scripts import load_script as _script


def _write(folder: Path, task: str, seed: int, dice: dict[str, float],
           current: bool = True) -> None:
    report: dict[str, Any] = {"task": task, "seed": seed, "teacher_weights": {"token_grid": 16},
                              "methods": {m: {"dice_mean": d} for m, d in dice.items()}}
    if current:
        report["default_student"] = {"architecture": "unet", "unet_width": 16}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{task}_seed{seed}.json").write_text(json.dumps(report))


def test_teacher_grid_means_pair_each_seed_with_the_builtin_run_of_the_same_draw(
        tmp_path: Path) -> None:
    grid = _script("teacher_grid")
    new, old = tmp_path / "new", tmp_path / "old"
    _write(new, "kidney_us", 0, {"teacher": 0.60, "teacher_random_init": 0.50, "ts_kd": 0.80})
    _write(new, "kidney_us", 1, {"teacher": 0.70, "teacher_random_init": 0.40})
    # seed 0 of the built-in grid written while the CNN was the default: unet16_ts_kd is today's
    _write(old, "kidney_us", 0, {"teacher": 0.55, "unet": 0.65, "unet16_ts_kd": 0.75,
                                 "ts_kd": 0.10}, current=False)
    _write(old, "kidney_us", 1, {"teacher": 0.45, "unet": 0.75, "ts_kd": 0.85})
    _write(old, "kidney_us", 2, {"teacher": 0.99, "unet": 0.99, "ts_kd": 0.99})  # not in new
    (row,) = grid.summarise(new, old)
    assert row["seeds"] == [0, 1] and row["student_seeds"] == [0]
    assert abs(row["teacher"]["mean"] - 0.65) < 1e-9
    assert abs(row["teacher_random_init"]["mean"] - 0.45) < 1e-9
    assert abs(row["builtin_teacher"]["mean"] - 0.50) < 1e-9  # seeds 0, 1 only
    assert abs(row["unet"]["mean"] - 0.70) < 1e-9
    assert row["ts_kd"]["values"] == [0.80]
    assert row["builtin_ts_kd"]["values"] == [0.75]  # seed 0's, read as today's key
    assert row["unet_student_seeds"]["values"] == [0.65]
    table = grid.to_markdown([row])
    assert "| kidney_us | 0, 1 | 0.650 | 0.450 | 0.500 | 0.800 | 0.750 | 0.650 | 0.700 |" in table
    assert "kidney_us: 0" in table


def test_student_vs_teacher_names_the_seeds_of_a_column_that_covers_fewer(
        tmp_path: Path) -> None:
    tvs = _script("teacher_vs_student")
    _write(tmp_path, "skin_lesion", 0, {"teacher": 0.9, "ts_kd": 0.95, "unet": 0.93})
    _write(tmp_path, "skin_lesion", 1, {"teacher": 0.8, "unet": 0.91})
    (row,) = tvs.collect("new", tmp_path)
    assert row["ts_kd"]["seeds"] == [0] and row["teacher"]["seeds"] == [0, 1]
    line = tvs.to_markdown([row]).splitlines()[2]
    assert line.startswith("| new | skin_lesion | 0, 1 | 0.850 | 0.950 (seed 0) | - |")
    assert line.endswith("| 0.920 |")


def test_dev_summary_averages_each_teacher_over_its_dev_seeds_and_leaves_gaps_blank() -> None:
    adaptation = _script("teacher_adaptation")

    def row(ckpt: str, task: str, seed: int, dice: float) -> dict[str, Any]:
        return {"checkpoint": ckpt, "recipe": "lora", "size": 128, "task": task,
                "dev_seed": seed, "dice": dice}

    rows = [row("a", "kidney_us", 100, 0.5), row("a", "kidney_us", 101, 0.7),
            row("a", "skin_lesion", 100, 0.9), row("b", "kidney_us", 101, 0.4)]
    lines = adaptation.summary_table(rows).splitlines()
    assert lines[0] == "| teacher | recipe | size | kidney_us | skin_lesion | mean |"
    assert lines[2] == "| a | lora | 128 | 0.600 | 0.900 | 0.750 |"
    assert lines[3] == "| b | lora | 128 | 0.400 | - | - |"  # no skin_lesion: no mean
    only_101 = adaptation.summary_table(rows, [101]).splitlines()
    assert only_101[2] == "| a | lora | 128 | 0.700 | - | - |"


def test_recipe_options_parse_and_unknown_ones_are_refused() -> None:
    adaptation = _script("teacher_adaptation")
    assert adaptation.parse_recipe("lora:rank=8,cap=270") == ("lora", {"rank": 8.0, "cap": 270.0})
    assert adaptation.parse_recipe("random") == ("random", {})
    with pytest.raises(ValueError, match=r"unknown recipe option\(s\) \['fit'\]"):
        adaptation.parse_recipe("lora:fit=1")


def test_recipe_target_options_select_layers_of_the_mini_sam() -> None:
    """``mlp`` and ``embed`` name layers that exist: neither option is a silent no-op."""
    from tskd.config import LoraSettings
    from tskd.models.lora import lora_modules
    from tskd.models.mini_archs import mini_arch
    from tskd.models.mini_sam import build_mini_sam

    adaptation = _script("teacher_adaptation")
    sam = build_mini_sam(mini_arch("small", 64), 64)
    assert lora_modules(sam, LoraSettings(targets=[adaptation.EMBED_TARGET])) == [
        "image_encoder.patch_embed.proj"]
    mlp = lora_modules(sam, LoraSettings(targets=[adaptation.MLP_TARGET]))
    assert len(mlp) == 2 * len(sam.image_encoder.blocks) and all(".mlp.lin" in n for n in mlp)
