"""How each stage of each benchmark run ended: steps, wall-clock, why it stopped, validation Dice.

    python benchmarks/stage_log.py benchmarks/results/converged [more result folders]

Reads every run folder's ``<method>/reports/pipeline.json`` (the run folders stay out of git)
and writes ``stages.md`` and ``stages.json`` beside them. It shows which stage a converged run
cut at its time cap rather than at its validation plateau, and how many steps a method got: a
method that got far fewer steps than its peers on the same run shared the machine with another
job (the stages are capped by wall-clock). Validation Dice only (the 2 held-out labelled images
of each run); nothing here reads a test score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tskd.apps.demo_report import CNN_DEFAULT_KEYS

STAGES = ("teacher", "distill", "student")  # the trained stages that validate
CAP = "time budget"  # the start of a stage's "stopped" text when its wall-clock cap ended it


def stage_rows(run: Path) -> list[dict[str, Any]]:
    """One row per trained stage of every method of one run folder.

    Args:
        run: a ``tskd demo`` output folder (``<task>_seed<k>``) with method folders.

    Returns:
        Rows with ``run``, ``method``, ``stage``, ``steps``, ``seconds``, ``capped`` (bool:
        the time cap, not the validation plateau, ended it), ``val_dice`` (None where the
        stage did not validate) and ``stopped`` (the stage's own words); a stage reused from
        another method (``skipped``) is left out. Methods carry today's keys (a run of the
        CNN default has the CNN in ``ts_kd/``: ``cnn_ts_kd`` here, as ``as_current`` reads it).
    """
    current = "default_student" in json.loads((run / "report.json").read_text())
    rows = []
    for pipeline in sorted(run.glob("*/reports/pipeline.json")):
        method = pipeline.parent.parent.name
        method = method if current else CNN_DEFAULT_KEYS.get(method, method)
        stages = json.loads(pipeline.read_text())
        for stage in STAGES:
            r = stages.get(stage)
            if not isinstance(r, dict) or r.get("skipped") or "steps" not in r:
                continue
            val = r.get("val_dice", (r.get("val") or {}).get("dice"))
            if val is None and stage == "distill":
                val = (r.get("final_losses") or {}).get("val_score")
            stopped = str(r.get("stopped", ""))
            rows.append({"run": run.name, "method": method, "stage": stage,
                         "steps": int(r["steps"]), "seconds": float(r.get("seconds", 0.0)),
                         "capped": stopped.startswith(CAP), "val_dice": val,
                         "stopped": stopped})
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, then the share of stages the time cap ended."""
    lines = ["| run | method | stage | steps | s | ended by | validation Dice |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        val = "-" if r["val_dice"] is None else f"{r['val_dice']:.3f}"
        end = "time cap" if r["capped"] else "plateau" if "not improved" in r["stopped"] \
            else "epochs"
        lines.append(f"| {r['run']} | {r['method']} | {r['stage']} | {r['steps']} | "
                     f"{r['seconds']:.0f} | {end} | {val} |")
    for stage in STAGES:
        of = [r for r in rows if r["stage"] == stage]
        if of:
            capped = sum(r["capped"] for r in of)
            lines.append(f"\n{stage}: {capped} of {len(of)} ended by the time cap")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Tabulate every run folder under the given result folders."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args()
    for folder in args.folders:
        runs = sorted(d for d in folder.iterdir() if (d / "report.json").is_file())
        rows = [row for run in runs for row in stage_rows(run)]
        text = to_markdown(rows)
        (folder / "stages.json").write_text(json.dumps(rows, indent=1) + "\n")
        (folder / "stages.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
