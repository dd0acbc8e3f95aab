"""The stage registry (tskd.pipeline.registry) and the stage context (tskd.pipeline.context).

One table names every stage for the CLI, the widgets' training process, the widgets and the
docs; one context per run reads and hashes the labelled set once.
"""

from __future__ import annotations

import ast
import queue
import re
import threading
import warnings
from pathlib import Path

import pytest
import yaml

from tiny_setup import tiny_config, write_tiny_sam, write_tiny_task
from tskd.config import RunConfig, from_dict, to_dict
from tskd.errors import TskdInputError
from tskd.pipeline import context, fingerprints, registry, stages
from tskd.pipeline.registry import STAGES, by_cli_name, stage
from tskd.pipeline.run_folder import RunPaths

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("registry")
    return {"root": root, "data": write_tiny_task(root / "data", 3, 2, 1),
            "sam": write_tiny_sam(root / "sam.safetensors")}


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Count reads of the labelled set and every file hash the pipeline computes."""
    from tskd.data import samples

    calls: dict[str, list] = {"read": [], "hash": []}
    real_read, real_hash = samples.read_labelled_set, context.markers.files_fingerprint

    def read(*args: object, **kwargs: object) -> object:
        calls["read"].append(args[0])
        return real_read(*args, **kwargs)

    def hashed(paths: object) -> str:
        paths = list(paths)  # type: ignore[call-overload]
        calls["hash"].append(sorted({Path(p).parent.parent.name for p in paths}))
        return real_hash(paths)

    monkeypatch.setattr(samples, "read_labelled_set", read)
    monkeypatch.setattr(context.markers, "files_fingerprint", hashed)
    monkeypatch.setattr(fingerprints, "files_fingerprint", hashed)
    return calls


def test_a_whole_run_reads_and_hashes_the_labelled_set_once(
        task: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four stages and the evaluation: one read of the labelled set, one hash of the
    labelled files and one of the unlabelled files (were four reads, four hashes of the
    labelled files and three of the unlabelled ones)."""
    calls = _count_reads(monkeypatch)
    cfg = from_dict(RunConfig, tiny_config(task["data"], task["sam"], task["root"] / "run"))
    results = registry.run_pipeline(cfg)
    assert [k for k in results if k != "evaluate"] == ["teacher", "synthesize", "distill",
                                                        "student"]
    assert not any(r.get("skipped") for r in results.values())
    labelled, test = str(task["data"] / "train"), str(task["data"] / "test")
    assert calls["read"] == [labelled, test]  # the test set by the evaluation, at the end
    assert calls["hash"] == [["train"], ["unlabelled"]]
    # a second run skips every stage and still reads the labelled set once
    calls["read"].clear()
    calls["hash"].clear()
    again = registry.run_pipeline(cfg)
    assert all(again[s.name].get("skipped") for s in STAGES)
    assert calls["read"] == [labelled, test]
    assert calls["hash"] == [["train"], ["unlabelled"]]


def test_the_widgets_job_of_two_stages_reads_the_labelled_set_once(
        task: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training process of the widgets shares one context among a job's stages."""
    from napari_tskd._child import run_job

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # run_job replaces it
    calls = _count_reads(monkeypatch)
    raw = tiny_config(task["data"], task["sam"], task["root"] / "job")
    raw["synth"]["enabled"] = False
    out: queue.Queue = queue.Queue()
    job = {"steps": [{"target": "synthesize"}, {"target": "student",
                                                "kwargs": {"continue_from_last": False}}],
           "config": to_dict(from_dict(RunConfig, raw | {"student": raw["student"] | {
               "from_scratch": True}}))}
    run_job(job, out, threading.Event())
    messages = [out.get_nowait() for _ in range(out.qsize())]
    final = messages[-1]
    assert final["kind"] == "done", final
    assert set(final["results"]) == {"synthesize", "student"}
    assert len(calls["read"]) == 1


def test_a_context_passed_on_shares_its_reads_and_takes_new_options(
        task: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _count_reads(monkeypatch)
    cfg = from_dict(RunConfig, tiny_config(task["data"], task["sam"], task["root"] / "ctx"))
    ctx = context.StageContext(cfg)
    other = context.StageContext.of(ctx, resume=True)
    assert other is not ctx and other.resume and not ctx.resume
    assert other.data is ctx.data
    assert len(calls["read"]) == 1
    assert context.StageContext.of(cfg).cfg is cfg


def test_a_skipped_stage_keeps_the_checkpoint_and_a_finished_one_drops_it(
        tmp_path: Path) -> None:
    ctx = context.StageContext(from_dict(RunConfig, {"run_dir": str(tmp_path / "r")}))
    folder, ckpts = tmp_path / "r" / "teacher", tmp_path / "r" / "checkpoints" / "teacher"
    folder.mkdir(parents=True)
    step = ctx.begin(folder, "fp1", None, ckpts)
    assert step.done is None and step.checkpoint_dir() == ckpts
    assert (ckpts / "inputs.json").is_file()
    result = step.finish({"dice": 0.5})
    assert result["dice"] == 0.5 and result["seconds"] >= 0.0
    again = ctx.begin(folder, "fp1", None, ckpts)
    assert again.done == result | {"skipped": True}
    assert ctx.begin(folder, "fp2", None, ckpts).done is None  # other inputs: runs again
    assert not (folder / "stage.json").exists()  # the old marker withdrawn first
    with pytest.raises(ValueError, match="keeps no checkpoint"):
        ctx.begin(folder, "fp2", None).checkpoint_dir()


def test_every_stage_writes_into_the_folders_the_registry_names(tmp_path: Path) -> None:
    paths = RunPaths(tmp_path)
    for s in STAGES:
        outputs = s.function.outputs(paths)  # what the stage records in the manifest
        assert s.artefact_dir(tmp_path) in outputs, s.name
        assert s.checkpoint_dir(tmp_path) in outputs, s.name
    assert [s.artefact_dir(tmp_path) for s in STAGES] == [
        paths.teacher, paths.transfer, paths.distilled, paths.student]


def test_names_are_unique_and_the_old_subcommands_find_their_stage() -> None:
    names = [n for s in STAGES for n in (s.cli_name, *s.cli_aliases)]
    assert len(names) == len(set(names)) == 6
    assert [s.name for s in STAGES] == ["teacher", "synthesize", "distill", "student"]
    for command, name in (("finetune-teacher", "teacher"), ("teacher", "teacher"),
                          ("synthesize", "synthesize"), ("distill", "distill"),
                          ("finetune-student", "student"), ("student", "student")):
        found = by_cli_name(command)
        assert found is not None and found.name == name
    assert by_cli_name("run") is None and by_cli_name("predict") is None
    with pytest.raises(TskdInputError, match="unknown stage 'teachr'; choose one of teacher, "
                                             "synthesize, distill, student"):
        stage("teachr")


def test_stages_for_a_baseline_leave_out_what_it_does_not_need() -> None:
    cfg = RunConfig()
    assert [s.name for s in registry.stages_for(cfg)] == [s.name for s in STAGES]
    cfg.distill.task_agnostic = True
    assert [s.name for s in registry.stages_for(cfg)] == ["synthesize", "distill", "student"]
    cfg.student.from_scratch = True
    assert [s.name for s in registry.stages_for(cfg)] == ["student"]


def test_a_stage_alias_sets_the_same_config_as_its_subcommand() -> None:
    from tskd.apps.cli import COMMANDS, _config_from_args, build_parser

    parser = build_parser()
    for old, new, extra in (("finetune-teacher", "teacher", ["--lora-rank", "4"]),
                            ("finetune-student", "student", ["--from-scratch"])):
        args = ["--run-dir", "r", "--epochs", "3", "--seed", "5", "--device", "cpu", *extra]
        a, b = parser.parse_args([old, *args]), parser.parse_args([new, *args])
        assert COMMANDS[a.command] is COMMANDS[b.command]
        assert to_dict(_config_from_args(a)) == to_dict(_config_from_args(b))
    cfg = _config_from_args(parser.parse_args(["student", "--epochs", "3", "--from-scratch"]))
    assert cfg.student.train.epochs == 3 and cfg.student.from_scratch
    assert cfg.teacher.train.epochs == RunConfig().teacher.train.epochs  # other stages kept
    cfg = _config_from_args(parser.parse_args(["synthesize", "--seed", "9", "--device", "cpu"]))
    assert (cfg.synth.train.seed, cfg.device_of("synth"), cfg.device_of("predict")) == \
        (9, "cpu", "cpu")
    run = parser.parse_args(["run", "--config", "unread.yaml", "--device", "cpu"])
    run.config = None  # the defaults instead of a file
    cfg = _config_from_args(run)
    assert {cfg.device_of(s) for s in ("teacher", "synth", "distill", "student", "predict")} \
        == {"cpu"}
    assert cfg.device == "cpu" and cfg.teacher.train.device is None  # set once, for the run


def test_the_training_process_looks_stages_up_in_the_registry() -> None:
    from napari_tskd._child import resolve

    for s in STAGES:
        assert resolve(s.name) is s.function
    assert resolve("pipeline") is registry.run_pipeline
    assert resolve("tskd.pipeline.stages:stage_evaluate") is stages.stage_evaluate
    with pytest.raises(TskdInputError, match="unknown stage 'finetune'"):
        resolve("finetune")


def test_widget_tabs_and_manifest_name_stages_by_their_titles() -> None:
    from napari_tskd._main_widget import TABS

    titles = [t for t, _ in TABS]
    for name in ("teacher", "synthesize", "student"):
        assert stage(name).title in titles
    manifest = yaml.safe_load((ROOT / "napari_tskd" / "napari.yaml").read_text())
    shown = " ".join(w["display_name"] for w in manifest["contributions"]["widgets"]).lower()
    for name in ("teacher", "synthesize", "student"):
        assert stage(name).title.lower() in shown


def test_the_docs_list_the_registry() -> None:
    """docs/architecture.md, section "Stages": one table row per stage, as in the registry."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Stages\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip().strip("`") for c in line.strip("|").split("|")]
            for line in section.splitlines() if re.match(r"\| *\d", line)]
    expected = [[str(i), s.name, " / ".join((s.cli_name, *s.cli_aliases)), s.title,
                 f"{s.artefact}/", f"checkpoints/{s.checkpoint}/", s.function.__name__]
                for i, s in enumerate(STAGES, start=1)]
    assert rows == expected


@pytest.mark.parametrize("module", ["pipeline/stages.py", "pipeline/context.py",
                                    "pipeline/registry.py", "pipeline/fingerprints.py"])
def test_stage_functions_are_short(module: str) -> None:
    tree = ast.parse((ROOT / "src" / "tskd" / module).read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(tree)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and f.end_lineno - f.lineno + 1 > 60]
    assert long == []
