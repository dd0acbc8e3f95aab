"""How each stage of each benchmark run ended: steps, wall-clock, why it stopped, validation Dice.

    python benchmarks/stage_log.py benchmarks/results/converged [more result folders]

Reads every run folder's ``<method>/reports/pipeline.json`` (the run folders stay out of git)
and writes ``stages.md`` and ``stages.json`` beside them. It shows which stage a converged run
cut at its time cap rather than at its validation plateau, and how many steps a method got: a
method that got far fewer steps than its peers on the same run shared the machine with another
job (the stages are capped by wall-clock). Validation Dice only (the 2 held-out labelled images
of each run); nothing here reads a test score.

The run folders are not in git: on a fresh clone, run the benchmark first. A folder with no
finished run (``<task>_seed<k>/report.json``) is refused with exit status 2 and its existing
tables are left as they were; a run folder still being written (no ``report.json`` yet) is
named and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tskd.apps.demo_report import CNN_DEFAULT_KEYS

STAGES = ("teacher", "distill", "student")  # the trained stages that validate
CAP = "time budget"  # the start of a stage's "stopped" text when its wall-clock cap ended it


def stage_rows(run: Path) -> list[dict[str, Any]]:
    """One row per trained stage of every method of one run folder.

    Args:
        run: a ``tskd demo`` output folder (``<task>_seed<k>``) with method folders.

    Raises:
        ValueError: a ``report.json`` or ``pipeline.json`` is not valid JSON (the message
            names the file).

    Returns:
        Rows with ``run``, ``method``, ``stage``, ``steps``, ``seconds``, ``capped`` (bool:
        the time cap, not the validation plateau, ended it), ``val_dice`` (None where the
        stage's record holds no validation score: distillation records one only when its last
        epoch validated) and ``stopped`` (the stage's own words, None where the record has
        none); a stage reused from
        another method (``skipped``) is left out. Methods carry today's keys (a run of the
        CNN default has the CNN in ``ts_kd/``: ``cnn_ts_kd`` here, as ``as_current`` reads it).
    """
    current = "default_student" in _read(run / "report.json")
    rows = []
    for pipeline in sorted(run.glob("*/reports/pipeline.json")):
        method = pipeline.parent.parent.name
        method = method if current else CNN_DEFAULT_KEYS.get(method, method)
        stages = _read(pipeline)
        for stage in STAGES:
            r = stages.get(stage)
            if not isinstance(r, dict) or r.get("skipped") or "steps" not in r:
                continue
            val = r.get("val_dice", (r.get("val") or {}).get("dice"))
            if val is None and stage == "distill":
                val = (r.get("final_losses") or {}).get("val_score")
            stopped = r.get("stopped")
            rows.append({"run": run.name, "method": method, "stage": stage,
                         "steps": int(r["steps"]), "seconds": float(r.get("seconds", 0.0)),
                         "capped": str(stopped).startswith(CAP), "val_dice": val,
                         "stopped": None if stopped is None else str(stopped)})
    return rows


def _read(path: Path) -> Any:
    """A JSON file's content; ValueError naming the file where it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run that task and seed") from e


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, then the share of stages the time cap ended."""
    lines = ["| run | method | stage | steps | s | ended by | validation Dice |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        val = "-" if r["val_dice"] is None else f"{r['val_dice']:.3f}"
        stopped = r["stopped"] or ""
        end = "time cap" if r["capped"] else "plateau" if "not improved" in stopped \
            else "epochs" if stopped else "-"
        lines.append(f"| {r['run']} | {r['method']} | {r['stage']} | {r['steps']} | "
                     f"{r['seconds']:.0f} | {end} | {val} |")
    for stage in STAGES:
        of = [r for r in rows if r["stage"] == stage]
        if of:
            capped = sum(r["capped"] for r in of)
            lines.append(f"\n{stage}: {capped} of {len(of)} ended by the time cap")
    return "\n".join(lines) + "\n"


def finished_runs(folder: Path) -> list[Path]:
    """The run folders under a result folder that hold a ``report.json``, sorted by name.

    Raises:
        ValueError: no run folder under it has a ``report.json`` (the run folders are not in
            git), so there is nothing to tabulate.
    """
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    runs = [d for d in subdirs if (d / "report.json").is_file()]
    for d in subdirs:
        if d not in runs and any(d.glob("*/reports/pipeline.json")):
            print(f"skipped {d.name}: no report.json yet (a run still being written?)",
                  file=sys.stderr)
    if not runs:
        raise ValueError(f"no finished run (<task>_seed<k>/report.json) under {folder}; run "
                         "benchmarks/run_benchmark.py first (run folders are not in git)")
    return runs


def main() -> None:
    """Tabulate every run folder under the given result folders (exit status 2 on bad input)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path,
                   help="result folders holding <task>_seed<k>/ run folders, e.g. "
                        "benchmarks/results/converged")
    args = p.parse_args()
    for folder in args.folders:
        if not folder.is_dir():
            p.error(f"{folder} is not a folder")
    try:  # read everything before writing anything
        tables = {f: [row for run in finished_runs(f) for row in stage_rows(run)]
                  for f in args.folders}
    except ValueError as e:
        p.error(str(e))
    for folder, rows in tables.items():
        text = to_markdown(rows)
        (folder / "stages.json").write_text(json.dumps(rows, indent=1) + "\n")
        (folder / "stages.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
