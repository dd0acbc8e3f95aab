"""Student Dice against teacher Dice, across tasks and teachers: does a better teacher pay?

    python benchmarks/teacher_vs_student.py \\
        "8x8 tokens, no head=benchmarks/results/converged_no_refine_head" \\
        "8x8 tokens, refine head=benchmarks/results/converged_basic_refine" \\
        "16x16 tokens, pretrained head=benchmarks/results/converged"

Each argument is ``label=folder``: a results folder of ``run_benchmark.py`` (its
``<task>_seed<k>.json`` reports), all of one teacher. For every teacher and task: the adapted
teacher's test Dice and the students' after TS-KD and the U-Net baseline's, as the mean
over the seeds that folder holds (the seeds are listed: compare rows of the same seeds; a
column that covers fewer of them names its own). Writes
benchmarks/results/teacher_vs_student.{md,json,png}; the figure puts each (teacher, task, seed)
at (teacher Dice, student Dice) with the diagonal, so points above it are students that went past
their teacher. Reads only finished reports; trains nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from tskd.apps.demo_report import as_current

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("teacher", "ts_kd", "cnn_ts_kd", "vit_ts_kd", "scratch", "unet")
HEADERS = ("adapted teacher", "U-Net student (w16), TS-KD", "CNN student, TS-KD",
           "ViT-Tiny, TS-KD", "U-Net student (w16) from scratch", "U-Net baseline (w32)")


def collect(label: str, folder: Path) -> list[dict[str, Any]]:
    """One row per task of a results folder: seeds and each method's mean test Dice."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*_seed*.json")):
        report = as_current(json.loads(path.read_text()))
        by_task.setdefault(report["task"], []).append(report)
    rows = []
    for task, reports in sorted(by_task.items()):
        row: dict[str, Any] = {"label": label, "task": task,
                               "seeds": sorted(r["seed"] for r in reports),
                               "teacher_weights": reports[0].get("teacher_weights")}
        for m in COLUMNS:
            has = [r for r in reports if m in r["methods"]]
            values = [r["methods"][m]["dice_mean"] for r in has]
            row[m] = {"mean": statistics.fmean(values), "values": values,
                      "seeds": [r["seed"] for r in has]} if values else None
        rows.append(row)
    return rows


def _cell(value: dict[str, Any] | None, seeds: list[int]) -> str:
    """A column's mean; the seeds it covers when not all of the row's."""
    if not value:
        return "-"
    if sorted(value["seeds"]) == seeds:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} (seed {', '.join(map(str, sorted(value['seeds'])))})"


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as one Markdown table (test Dice, mean over the listed seeds)."""
    lines = ["| teacher | task | seeds | " + " | ".join(HEADERS) + " |",
             "|---|---|---|" + "---|" * len(HEADERS)]
    for r in rows:
        cells = [_cell(r[m], r["seeds"]) for m in COLUMNS]
        lines.append(f"| {r['label']} | {r['task']} | {', '.join(map(str, r['seeds']))} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Each seed's TS-KD student Dice (U-Net w16 filled, CNN and ViT open) against the teacher's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    markers = "osD^v"
    teachers = list(dict.fromkeys(r["label"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    colours = plt.get_cmap("tab10")
    for r in rows:
        marker = markers[teachers.index(r["label"]) % len(markers)]
        colour = colours(tasks.index(r["task"]) % 10)
        for m, fill in (("ts_kd", colour), ("cnn_ts_kd", "none"), ("vit_ts_kd", "none")):
            if not (r[m] and r["teacher"]):
                continue
            teacher = dict(zip(r["teacher"]["seeds"], r["teacher"]["values"]))
            pairs = [(teacher[s], v) for s, v in zip(r[m]["seeds"], r[m]["values"])
                     if s in teacher]  # the same seed's teacher and student
            ax.scatter([t for t, _ in pairs], [v for _, v in pairs], marker=marker,
                       facecolors=fill, edgecolors=colour, s=40)
    for i, t in enumerate(teachers):
        ax.scatter([], [], marker=markers[i % len(markers)], color="black", label=t)
    for i, task in enumerate(tasks):
        ax.scatter([], [], marker="s", color=colours(i % 10), label=task)
    ax.set_xlabel("adapted teacher test Dice")
    ax.set_ylabel("student test Dice after TS-KD (filled: U-Net w16; open: CNN, ViT-Tiny)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="label=results folder, one per teacher")
    p.add_argument("--out", type=Path, default=RESULTS / "teacher_vs_student")
    args = p.parse_args()
    rows = []
    for arg in args.folders:
        label, sep, folder = arg.partition("=")
        if not sep or not Path(folder).is_dir():
            p.error(f"'{arg}' is not label=folder with an existing folder")
        rows += collect(label, Path(folder))
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(rows))
    plot(rows, args.out.with_suffix(".png"))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
