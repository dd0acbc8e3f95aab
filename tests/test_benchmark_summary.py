"""The benchmark's summary: means over seeds, the per-seed comparisons and the goals table."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bench_scripts import load_script as _script


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _script("run_benchmark")


def _report(seed: int, dice: dict[str, float]) -> dict[str, Any]:
    return {"task": "kidney_us", "seed": seed, "n_labels": 10,
            "default_student": {"architecture": "unet", "unet_width": 16}, "methods": {
        m: {"dice_mean": d, "hd95_mean": 10.0, "seconds": 100.0, "params": 1e6,
            "ms_per_image": 20.0, "speck_share": 0.002 if m == "unet" else 0.0}
        for m, d in dice.items()}}


def test_goals_are_mean_gaps_over_seeds_and_dashes_where_a_method_is_missing(
        bench: ModuleType) -> None:
    reports = [
        _report(0, {"unet": 0.70, "teacher": 0.60, "scratch": 0.50, "task_agnostic_kd": 0.65,
                    "ts_kd": 0.72}),
        _report(1, {"unet": 0.80, "teacher": 0.70, "scratch": 0.60, "task_agnostic_kd": 0.75,
                    "ts_kd": 0.76}),
    ]
    summary = bench.aggregate(reports)
    assert summary["kidney_us"]["ts_kd"]["dice"]["mean"] == pytest.approx(0.74)
    assert summary["kidney_us"]["unet"]["speck_share"]["values"] == [0.002, 0.002]
    row = [line for line in bench.goals(summary) if line.startswith("| kidney_us")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    # task, seeds, teacher - U-Net, then the default student's TS-KD minus U-Net / scratch /
    # task-agnostic
    assert cells[:6] == ["kidney_us", "2", "-0.100", "-0.010", "+0.190", "+0.040"]
    assert cells[6:12] == ["-"] * 6  # no CNN or ViT-Tiny student in these reports
    assert cells[12] == "0.20"  # the largest speck share, in percent
    text = bench.to_markdown(summary)
    assert "at least as good on 1 of 2 seeds (0.720 / 0.700, 0.760 / 0.800)" in text


def test_student_choice_reads_validation_dice_only_and_averages_complete_runs(
        tmp_path: Path) -> None:
    import json

    choice = _script("student_choice")
    # {run: ({method folder: validation Dice}, written with the U-Net default?)}; the run of
    # the CNN default holds the CNN in ts_kd/ and the U-Net student in unet16_ts_kd/
    val = {"a_seed0": ({"ts_kd": 0.8, "cnn_ts_kd": 0.6, "vit_ts_kd": 0.5}, True),
           "a_seed1": ({"ts_kd": 0.7, "unet16_ts_kd": 0.6, "vit_ts_kd": 0.4}, False),
           "b_seed0": ({"cnn_ts_kd": 0.9, "vit_ts_kd": 0.1}, True)}  # no U-Net: not in the mean
    for run, (dice, current) in val.items():
        methods = {}
        for m, d in dice.items():
            (tmp_path / run / m / "student").mkdir(parents=True)
            (tmp_path / run / m / "student" / "meta.json").write_text(
                json.dumps({"val": {"dice": d, "n_images": 2}}))
            # the test Dice is never read: a choice made on it would differ
            methods[m] = {"ms_per_image": 20.0, "dice_mean": 1.0 - d}
        report = {"methods": methods} | ({"default_student": {}} if current else {})
        (tmp_path / run / "report.json").write_text(json.dumps(report))
    result = choice.compare([tmp_path])
    assert result["n_runs"] == 2
    assert result["mean"] == pytest.approx({"ts_kd": 0.7, "cnn_ts_kd": 0.65, "vit_ts_kd": 0.45})
    assert result["runs"][f"{tmp_path.name}/a_seed1"] == pytest.approx(
        {"ts_kd": 0.6, "cnn_ts_kd": 0.7, "vit_ts_kd": 0.4})
    assert result["runs"][f"{tmp_path.name}/b_seed0"] == {"cnn_ts_kd": 0.9, "vit_ts_kd": 0.1}
    assert "**0.700**" in choice.to_markdown(result)


def test_reports_of_the_cnn_default_are_read_with_todays_keys(bench: ModuleType) -> None:
    from tskd.apps.demo_report import as_current

    old = {"task": "kidney_us", "seed": 0, "methods": {  # written while the CNN was the default
        "ts_kd": {"dice_mean": 0.65}, "scratch": {"dice_mean": 0.59},
        "unet16_ts_kd": {"dice_mean": 0.80}, "unet16_scratch": {"dice_mean": 0.69},
        "vit_ts_kd": {"dice_mean": 0.69}, "unet": {"dice_mean": 0.67}}}
    now = as_current(old)
    assert {k: v["dice_mean"] for k, v in now["methods"].items()} == {
        "cnn_ts_kd": 0.65, "cnn_scratch": 0.59, "ts_kd": 0.80, "scratch": 0.69,
        "vit_ts_kd": 0.69, "unet": 0.67}
    assert "unet16_ts_kd" in old["methods"]  # the report read is left as it was
    assert as_current(now) is now


def test_stage_log_says_which_stage_its_time_cap_ended_and_reads_old_keys(
        tmp_path: Path) -> None:
    import json

    log = _script("stage_log")
    run = tmp_path / "kidney_us_seed0"
    stages = {
        "teacher": {"steps": 250, "seconds": 64.0, "val_dice": 0.63,
                    "stopped": "validation score 0.633 (epoch 25) not improved in 4 evaluations"},
        "distill": {"steps": 132, "seconds": 121.0, "stopped": "time budget of 120 s reached",
                    "final_losses": {"val_score": 0.6}},
        "student": {"steps": 45, "seconds": 122.0, "val": {"dice": 0.85},
                    "stopped": "time budget of 120 s reached"},
    }
    for method, pipeline in {"ts_kd": stages,
                             "unet16_ts_kd": {"teacher": stages["teacher"] | {"skipped": True},
                                              "student": stages["student"]}}.items():
        (run / method / "reports").mkdir(parents=True)
        (run / method / "reports" / "pipeline.json").write_text(json.dumps(pipeline))
    (run / "report.json").write_text(json.dumps({"methods": {}}))  # the CNN default's keys
    rows = log.stage_rows(run)
    assert [(r["method"], r["stage"], r["steps"], r["capped"], r["val_dice"]) for r in rows] == [
        ("cnn_ts_kd", "teacher", 250, False, 0.63), ("cnn_ts_kd", "distill", 132, True, 0.6),
        ("cnn_ts_kd", "student", 45, True, 0.85), ("ts_kd", "student", 45, True, 0.85)]
    text = log.to_markdown(rows)
    assert "| kidney_us_seed0 | cnn_ts_kd | teacher | 250 | 64 | plateau | 0.630 |" in text
    assert "student: 2 of 2 ended by the time cap" in text


def test_stage_log_refuses_a_folder_without_finished_runs_and_keeps_its_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    log = _script("stage_log")
    (tmp_path / "stages.md").write_text("the committed table\n")
    (tmp_path / "kidney_us_seed2" / "ts_kd" / "reports").mkdir(parents=True)  # still running
    (tmp_path / "kidney_us_seed2" / "ts_kd" / "reports" / "pipeline.json").write_text("{}")
    for folder in (tmp_path, tmp_path / "missing", tmp_path / "stages.md"):
        monkeypatch.setattr("sys.argv", ["stage_log.py", str(folder)])
        with pytest.raises(SystemExit) as stop:
            log.main()
        assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "skipped kidney_us_seed2: no report.json yet" in err
    assert "no finished run" in err and "is not a folder" in err
    assert (tmp_path / "stages.md").read_text() == "the committed table\n"
    assert not (tmp_path / "stages.json").exists()


def test_stage_log_names_the_file_that_is_not_json_and_keeps_a_missing_stop_reason(
        tmp_path: Path) -> None:
    log = _script("stage_log")
    run = tmp_path / "ct_abdomen_seed1"
    (run / "scratch" / "reports").mkdir(parents=True)
    (run / "report.json").write_text('{"default_student": {}}')
    pipeline = run / "scratch" / "reports" / "pipeline.json"
    pipeline.write_text('{"student": {"steps": 12, "seconds": 3.0}}')
    rows = log.stage_rows(run)
    assert [(r["steps"], r["stopped"], r["capped"]) for r in rows] == [(12, None, False)]
    assert "| ct_abdomen_seed1 | scratch | student | 12 | 3 | - | - |" in log.to_markdown(rows)
    pipeline.write_text('{"student": {"ste')
    with pytest.raises(ValueError, match="pipeline.json is not valid JSON"):
        log.stage_rows(run)


def test_validation_gate_keeps_the_student_validation_prefers_and_scores_it_on_test(
        tmp_path: Path) -> None:
    import json

    choice = _script("student_choice")
    # {run: {method folder: (validation Dice, test Dice)}}; b_seed0 was written while the CNN
    # was the default: its U-Net student is in unet16_*/ and its ts_kd/ is the CNN's
    runs = {"a_seed0": {"ts_kd": (0.80, 0.70), "scratch": (0.90, 0.75), "unet": (None, 0.72)},
            "a_seed1": {"ts_kd": (0.85, 0.60), "scratch": (0.85, 0.65), "unet": (None, 0.50)},
            "b_seed0": {"unet16_ts_kd": (0.90, 0.80), "unet16_scratch": (0.70, 0.70),
                        "ts_kd": (0.60, 0.66), "scratch": (0.50, 0.55), "unet": (None, 0.60)}}
    for run, methods in runs.items():
        for m, (val, _) in methods.items():
            if val is not None:
                (tmp_path / run / m / "student").mkdir(parents=True)
                (tmp_path / run / m / "student" / "meta.json").write_text(
                    json.dumps({"val": {"dice": val, "n_images": 2}}))
        report = {"methods": {m: {"dice_mean": t, "ms_per_image": 20.0}
                              for m, (_, t) in methods.items()}}
        (tmp_path / run / "report.json").write_text(json.dumps(
            report | ({} if run == "b_seed0" else {"default_student": {}})))
    gates = choice.compare([tmp_path])["gate"]
    a0, a1, b0 = (gates[f"{tmp_path.name}/{r}"] for r in runs)
    assert (a0["ts_kd"]["kept"], a0["ts_kd"]["kept_test"], a0["ts_kd"]["right"]) == (
        "scratch", 0.75, True)
    assert (a1["ts_kd"]["kept"], a1["ts_kd"]["right"]) == ("ts_kd", False)  # a tie keeps TS-KD
    assert (b0["ts_kd"]["kept_test"], b0["cnn_ts_kd"]["kept_test"]) == (0.80, 0.66)
    text = "\n".join(choice.gate_markdown(gates))
    assert "ts_kd: the gate kept the test-better student on 2 of 3 runs" in text
    assert f"| {tmp_path.name}/a_seed0 | ts_kd | 0.800 / 0.900 | scratch | 0.700 / 0.750 / " \
           "0.720 | +0.030 |" in text


def test_summary_covers_every_finished_run_also_from_committed_copies_only(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    def report(task: str, seed: int, dice: float) -> dict[str, Any]:
        return _report(seed, {"unet": 0.5, "ts_kd": dice}) | {"task": task}

    (tmp_path / "kidney_us_seed0").mkdir()  # a run folder, as the machine that ran it keeps
    (tmp_path / "kidney_us_seed0" / "report.json").write_text(
        json.dumps(report("kidney_us", 0, 0.8)))
    # committed copies only, as on a clone; one written with its Markdown table
    (tmp_path / "kidney_us_seed1.json").write_text(json.dumps(report("kidney_us", 1, 0.6)))
    (tmp_path / "skin_lesion_seed2.json").write_text(
        json.dumps(report("skin_lesion", 2, 0.9) | {"table": "| ... |"}))
    (tmp_path / "retina_vessels_seed0").mkdir()  # still running: no report.json yet
    argv = ["run_benchmark.py", "--finished-only", "--tasks", "skin_lesion", "--seeds", "2",
            "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    bench.main()  # asked for one run, summarises all three
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary) == ["kidney_us", "skin_lesion"]
    assert summary["kidney_us"]["seeds"] == [0, 1]
    assert summary["kidney_us"]["ts_kd"]["dice"]["mean"] == pytest.approx(0.7)
    assert (tmp_path / "dice_vs_seconds_skin_lesion.png").is_file()
    assert bench.finished_report(tmp_path, "skin_lesion", 2)["seed"] == 2
    assert "table" not in bench.finished_report(tmp_path, "skin_lesion", 2)
    assert bench.finished_report(tmp_path, "retina_vessels", 0) is None

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr("sys.argv", ["run_benchmark.py", "--finished-only", "--out", str(empty)])
    with pytest.raises(SystemExit, match="no finished"):
        bench.main()
    assert not (empty / "summary.json").exists()


def test_a_new_run_is_copied_without_its_table_and_joins_the_finished_ones(
        bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    (tmp_path / "kidney_us_seed0.json").write_text(json.dumps(_report(0, {"ts_kd": 0.8})))
    calls = []

    def fake_run_demo(task: str, seed: int, out: Path, **_: Any) -> dict[str, Any]:
        calls.append((task, seed))
        report = _report(seed, {"ts_kd": 0.6})
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps(report))
        return report | {"table": "| ... |"}

    monkeypatch.setattr(bench, "run_demo", fake_run_demo)
    monkeypatch.setattr("sys.argv", ["run_benchmark.py", "--tasks", "kidney_us", "--seeds", "0",
                                     "1", "--out", str(tmp_path)])
    bench.main()
    assert calls == [("kidney_us", 1)]  # seed 0 was finished: reused, not run again
    assert json.loads((tmp_path / "kidney_us_seed1.json").read_text()) == _report(1, {"ts_kd": 0.6})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["kidney_us"]["seeds"] == [0, 1]
    assert summary["kidney_us"]["ts_kd"]["dice"]["mean"] == pytest.approx(0.7)
