"""Another teacher on the benchmark's draws: adapted, from random init, and distilled.

    python benchmarks/teacher_grid.py --checkpoint runs/pt_small/mini_sam.safetensors \\
        --seeds 0 1 2 --students 0 --out benchmarks/results/teacher_grid_small

For every task and seed it draws the same images as ``run_benchmark.py`` (same task, seed,
10 labels, ``converged`` budget: ``tskd.data.phantoms.write_task_folders``) and, with the
mini SAM weights of ``--checkpoint``:

- adapts the teacher as the demo's TS-KD run does (LoRA, refine head, validation stopping,
  the budget's time cap) and scores it on the test images (``teacher``);
- trains the same architecture from random initialisation, every parameter, for the same
  time cap (``tskd.apps.pretraining_check.random_init_teacher``: ``teacher_random_init``);
- on the seeds of ``--students`` also runs the rest of TS-KD (synthesis, distillation,
  fine-tuning) and scores the default student (``ts_kd``). Re-run on a finished cell, it keeps
  the adapted teacher (the pipeline skips a stage done with the same inputs) and the random
  initialisation's result (same teacher weights and budget), so students can be added later.

The full ``run_benchmark.py`` cell also trains the six baselines (~31 min a cell on 2 cores);
this costs 3.3 min a cell (9 min with the student), so a new teacher can be measured on every
task and seed. The teacher was chosen on development draws (``pretraining_curve.py``); this
script only reports on the test images, it chooses nothing. Writes one
``<task>_seed<k>.json`` a cell (the format ``teacher_vs_student.py`` reads) and
``summary.{md,json}``: each task's mean over seeds against the built-in teacher and the U-Net
baseline of the same draws, read from ``--baseline`` (the committed grid reports).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from tskd.apps.demo import BUDGETS, demo_config
from tskd.apps.demo_report import as_current, score, teacher_identity
from tskd.apps.pretraining_check import random_init_teacher
from tskd.atomic import write_json
from tskd.config import RunConfig
from tskd.data import phantoms

RESULTS = Path(__file__).parent / "results"
TASKS = tuple(phantoms.TASKS)  # the benchmark's tasks, in its order
COLUMNS = (("teacher", "new teacher, adapted"),
           ("teacher_random_init", "new architecture, random init"),
           ("builtin_teacher", "built-in teacher, adapted"),
           ("ts_kd", "U-Net student, TS-KD (new teacher)"),
           ("builtin_ts_kd", "U-Net student, TS-KD (built-in)"),
           ("unet_student_seeds", "U-Net baseline, student seeds"),
           ("unet", "U-Net baseline"))


def _run_stages(cfg: RunConfig, with_student: bool) -> dict[str, float]:
    """Run the teacher stage, or all of TS-KD; {stage: wall-clock seconds}."""
    from tskd.pipeline import registry
    from tskd.pipeline.run_folder import prepare_run_dir

    if with_student:
        results = registry.run_pipeline(cfg, overwrite=True)
    else:  # as `tskd teacher` does: the run folder, then the one stage
        prepare_run_dir(cfg, overwrite=True)
        results = {"teacher": registry.stage("teacher").function(cfg)}
    return {k: float(r.get("seconds", 0.0)) for k, r in results.items()
            if k != "evaluate" and isinstance(r, dict)}


def run_cell(task: str, seed: int, checkpoint: str | None, budget: str, with_student: bool,
             out: Path) -> dict[str, Any]:
    """One task and seed: the report ``teacher_vs_student.py`` reads (test Dice per model)."""
    t0 = time.perf_counter()
    b = BUDGETS[budget]
    cell = out / f"{task}_seed{seed}"
    data = cell / "data"
    if not (data / "test").is_dir():
        phantoms.write_task_folders(task, data, 10, b.n_unlabelled, b.n_test, 256, seed)
    cfg = demo_config(data, cell / "ts_kd", b, seed, "mini", checkpoint)
    cfg.data.test = None  # scored below, once per model
    seconds = _run_stages(cfg, with_student)  # a teacher already adapted here is reused
    test = data / "test"
    methods: dict[str, Any] = {
        "teacher": score(cfg, "teacher", test) | {"seconds": seconds["teacher"]}}
    if with_student:
        methods["ts_kd"] = score(cfg, "student", test) | {
            "seconds": sum(seconds.values()), "stage_seconds": seconds}
    weights = teacher_identity(cfg)  # hashes the weights file: once
    earlier = _earlier_report(out / f"{task}_seed{seed}.json", weights, budget)
    methods["teacher_random_init"] = (earlier or {}).get("teacher_random_init") or (
        random_init_teacher(cfg, test))  # same draw, weights and budget: not trained again
    return {"task": task, "n_labels": 10, "seed": seed, "budget": budget,
            "teacher_model": "mini", "teacher_input_size": cfg.teacher.input_size,
            "teacher_weights": weights,
            "default_student": {"architecture": cfg.student.architecture,
                                "unet_width": cfg.student.unet_width},
            "n_test": b.n_test, "methods": methods, "seconds": time.perf_counter() - t0}


def _earlier_report(path: Path, weights: dict[str, Any], budget: str) -> dict[str, Any] | None:
    """The methods of this cell's earlier report when it used the same teacher and budget."""
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    same = report.get("teacher_weights") == weights and report.get("budget") == budget
    return report["methods"] if same else None


def _mean(values: list[float]) -> dict[str, Any] | None:
    return {"mean": statistics.fmean(values), "values": values} if values else None


def summarise(out: Path, baseline: Path) -> list[dict[str, Any]]:
    """Per task, the mean test Dice over the seeds ``out`` holds, beside the baseline folder's
    built-in teacher, its TS-KD student and its U-Net baseline on the same seeds."""
    rows = []
    for task in TASKS:
        cells = [json.loads(p.read_text()) for p in sorted(out.glob(f"{task}_seed*.json"))]
        if not cells:
            continue
        seeds = [c["seed"] for c in cells]
        base = {s: as_current(json.loads((baseline / f"{task}_seed{s}.json").read_text()))
                for s in seeds if (baseline / f"{task}_seed{s}.json").is_file()}

        def own(m: str, cells: list[dict[str, Any]] = cells) -> list[float]:
            return [c["methods"][m]["dice_mean"] for c in cells if m in c["methods"]]

        def old(m: str, only: list[int] | None = None,
                base: dict[int, Any] = base) -> list[float]:
            return [base[s]["methods"][m]["dice_mean"] for s in sorted(base)
                    if only is None or s in only]

        student_seeds = [c["seed"] for c in cells if "ts_kd" in c["methods"]]
        rows.append({"task": task, "seeds": seeds, "student_seeds": student_seeds,
                     "teacher_weights": cells[0]["teacher_weights"],
                     "teacher": _mean(own("teacher")),
                     "teacher_random_init": _mean(own("teacher_random_init")),
                     "ts_kd": _mean(own("ts_kd")),
                     "builtin_teacher": _mean(old("teacher")), "unet": _mean(old("unet")),
                     "builtin_ts_kd": _mean(old("ts_kd", student_seeds)),
                     "unet_student_seeds": _mean(old("unet", student_seeds))})
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table: test Dice, mean over the seeds listed."""
    lines = ["| task | seeds | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[k]['mean']:.3f}" if r[k] else "-" for k, _ in COLUMNS]
        lines.append(f"| {r['task']} | {', '.join(map(str, r['seeds']))} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    lines.append("TS-KD columns and the U-Net baseline's on student seeds: mean over the "
                 "seeds the students ran on ("
                 + "; ".join(f"{r['task']}: {', '.join(map(str, r['student_seeds']))}"
                             for r in rows) + ").")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="mini SAM weights (a `tskd pretrain-mini` output); "
                   "default: the built-in ones")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--students", nargs="*", type=int, default=[0],
                   help="seeds on which the rest of TS-KD runs too")
    p.add_argument("--budget", default="converged", choices=sorted(BUDGETS))
    p.add_argument("--baseline", type=Path, default=RESULTS / "converged",
                   help="folder of the grid's <task>_seed<k>.json reports (built-in teacher)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--finished-only", action="store_true", help="summarise; train nothing")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.finished_only:
        for seed in a.seeds:
            for task in a.tasks:
                report = run_cell(task, seed, a.checkpoint, a.budget, seed in a.students,
                                  a.out)
                write_json(a.out / f"{task}_seed{seed}.json", report)
                print(task, seed, {m: round(v["dice_mean"], 3)
                                   for m, v in report["methods"].items()}, flush=True)
    rows = summarise(a.out, a.baseline)
    write_json(a.out / "summary.json", rows)
    (a.out / "summary.md").write_text(to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
