"""The benchmark: `tskd demo` on every task over several seeds, aggregated, with plots.

    python benchmarks/run_benchmark.py --budget converged --tasks kidney_us --seeds 0 1 2

Each (task, seed) is one `run_demo` call: a fresh draw of the task's data (the seed also seeds
the data), every method trained the same way (the U-Net with the TS-KD pipeline's wall-clock),
scored on held-out test images that no stage looks at. Writes
benchmarks/results/<budget>/<task>_seed<k>/ per run (its report.json is also copied to
benchmarks/results/<budget>/<task>_seed<k>.json, which is kept in git). A finished (task, seed)
is reused, so the grid can be filled in parts: its run folder's report.json, or, where the run
folder is not there (a clone: run folders stay out of git), its committed copy (delete both to
run it again). Then summary.json + summary.md over every finished (task, seed) of the results
folder, not only the ones asked for (mean and standard deviation over seeds of each method's
mean test Dice and HD95, and the comparisons of docs/benchmark.md) and one figure per task,
dice_vs_seconds_<task>.png: test Dice against each method's training wall-clock. Nothing is
chosen on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tskd.apps.demo import run_demo
from tskd.apps.demo_report import LABELS, METHODS, as_current
from tskd.data import phantoms

RESULTS = Path(__file__).parent / "results"
ALL_TASKS = list(phantoms.TASKS)  # every sample task, in the order of the reports
# (the method, what it is compared with) for the per-seed comparisons in summary.md
COMPARISONS = [("ts_kd", "unet"), ("ts_kd", "scratch"), ("ts_kd", "task_agnostic_kd"),
               ("cnn_ts_kd", "unet"), ("cnn_ts_kd", "cnn_scratch"),
               ("cnn_ts_kd", "cnn_task_agnostic_kd"),
               ("vit_ts_kd", "vit_scratch"), ("vit_ts_kd", "vit_task_agnostic_kd"),
               ("teacher", "unet")]


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of each method's test-set means, per task.

    Args:
        reports: ``run_demo`` reports (of any version: ``as_current``); a method is kept
            where every report of its task has it.

    Returns:
        {task: {"seeds", "n_labels", method: {"dice", "hd95", "seconds", "speck_share":
        {"mean", "std", "values"}, "params", "ms_per_image"}}}.
    """
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in map(as_current, reports):
        by_task.setdefault(r["task"], []).append(r)
    out: dict[str, Any] = {}
    for task, runs in by_task.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                                 "n_labels": runs[0]["n_labels"]}
        for m in METHODS:
            if not all(m in r["methods"] for r in runs):
                continue
            for key in ("dice_mean", "hd95_mean", "seconds", "speck_share"):
                values = [r["methods"][m].get(key, 0.0) for r in runs]
                entry.setdefault(m, {})[key.replace("_mean", "")] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
            entry[m]["params"] = runs[0]["methods"][m]["params"]
            entry[m]["ms_per_image"] = statistics.median(
                r["methods"][m]["ms_per_image"] for r in runs)
        out[task] = entry
    return out


def _comparisons(e: dict[str, Any]) -> list[str]:
    lines = []
    for a, b in COMPARISONS:
        if a not in e or b not in e:
            continue
        va, vb = e[a]["dice"]["values"], e[b]["dice"]["values"]
        ahead = sum(x >= y for x, y in zip(va, vb, strict=True))
        gap = statistics.fmean(va) - statistics.fmean(vb)
        lines.append(f"- {LABELS[a]} vs {LABELS[b]}: {gap:+.3f} Dice in the mean; at least as "
                     f"good on {ahead} of {len(va)} seeds ("
                     + ", ".join(f"{x:.3f} / {y:.3f}" for x, y in zip(va, vb, strict=True))
                     + ").")
    return lines


# each student's methods: from scratch, after task-agnostic KD, after TS-KD
STUDENTS = {"U-Net w16 (default)": ("scratch", "task_agnostic_kd", "ts_kd"),
            "CNN": ("cnn_scratch", "cnn_task_agnostic_kd", "cnn_ts_kd"),
            "ViT-Tiny": ("vit_scratch", "vit_task_agnostic_kd", "vit_ts_kd")}


def _gap(e: dict[str, Any], a: str, b: str) -> str:
    """``a``'s mean Dice minus ``b``'s, or a dash where either is missing."""
    if a not in e or b not in e:
        return "-"
    return f"{e[a]['dice']['mean'] - e[b]['dice']['mean']:+.3f}"


def goals(summary: dict[str, Any]) -> list[str]:
    """The accuracy goals per task as mean-Dice gaps over the seeds run (positive: met).

    Args:
        summary: ``aggregate``'s result.

    Returns:
        Markdown lines: one table row per task; a student's gaps read "TS-KD minus U-Net",
        "TS-KD minus from scratch", "TS-KD minus task-agnostic KD".
    """
    head = ["task", "seeds", "teacher - U-Net"]
    for student in STUDENTS:
        head += [f"{student} TS-KD - U-Net", "- scratch", "- task-agnostic"]
    lines = ["### Goals: mean-Dice gaps (positive: met)", "",
             "| " + " | ".join(head + ["largest specks %"]) + " |",
             "|" + "---|" * (len(head) + 1)]
    for task, e in summary.items():
        cells = [task, str(len(e["seeds"])), _gap(e, "teacher", "unet")]
        for scratch, agnostic, ts_kd in STUDENTS.values():
            cells += [_gap(e, ts_kd, "unet"), _gap(e, ts_kd, scratch), _gap(e, ts_kd, agnostic)]
        specks = [e[m]["speck_share"]["mean"] for m in METHODS if m in e]
        cells.append(f"{100 * max(specks):.2f}" if specks else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def to_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables, one per task, with the per-seed comparisons.

    Args:
        summary: ``aggregate``'s result.

    Returns:
        The Markdown text.
    """
    lines = []
    for task, e in summary.items():
        lines += [
            f"### {task} ({e['n_labels']} labels, seeds {', '.join(map(str, e['seeds']))})",
            "",
            "| model | Dice (mean ± sd over seeds) | HD95 px | training s | parameters "
            "| ms / 256² image |",
            "|---|---|---|---|---|---|",
        ]
        for m in METHODS:
            if m not in e:
                continue
            d, h, t = e[m]["dice"], e[m]["hd95"], e[m]["seconds"]
            lines.append(
                f"| {LABELS[m]} | {d['mean']:.3f} ± {d['std']:.3f} | {h['mean']:.1f} ± "
                f"{h['std']:.1f} | {t['mean']:.0f} | {e[m]['params'] / 1e6:.2f} M "
                f"| {e[m]['ms_per_image']:.1f} |")
        lines += ["", *_comparisons(e), ""]
    return "\n".join(lines + goals(summary))


def plot(summary: dict[str, Any], out: Path) -> list[Path]:
    """Per task, test Dice against training wall-clock for every method (one point per seed).

    Args:
        summary: ``aggregate``'s result.
        out: The folder the PNGs go to.

    Returns:
        The files written, ``dice_vs_seconds_<task>.png``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for task, e in summary.items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for m in METHODS:
            if m not in e:
                continue
            xs, ys = e[m]["seconds"]["values"], e[m]["dice"]["values"]
            line = ax.scatter(xs, ys, s=18, alpha=0.6)
            ax.scatter([statistics.fmean(xs)], [statistics.fmean(ys)], s=80, marker="D",
                       color=line.get_facecolor()[0], label=LABELS[m], edgecolors="black")
        ax.set_xlabel("training wall-clock from the labels, s (2 CPU cores)")
        ax.set_ylabel("test Dice")
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: each seed (dots) and the mean (diamond)")
        ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        path = out / f"dice_vs_seconds_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(path)
    return files


def _check_same_teacher(report: dict[str, Any], checkpoint: str | None, folder: Path) -> None:
    """Refuse to reuse a finished run whose teacher weights are not the ones asked for."""
    from tskd.models.mini_sam import BUILTIN_WEIGHTS
    from tskd.models.sam_checkpoint import sha256_of

    recorded = (report.get("teacher_weights") or {}).get("sha256")
    wanted = sha256_of(checkpoint or BUILTIN_WEIGHTS)[:12]
    if recorded is not None and recorded != wanted:
        raise SystemExit(f"{folder} was run with teacher weights {recorded}, not {wanted}: "
                         "give another --out, or delete that folder to run it again")


def finished_report(out: Path, task: str, seed: int) -> dict[str, Any] | None:
    """A finished run's report: its folder's report.json, else its committed copy, else None.

    Args:
        out: The results folder.
        task, seed: The run.

    Returns:
        The report as ``run_demo`` wrote it to report.json (without the Markdown "table").
    """
    for path in (out / f"{task}_seed{seed}" / "report.json", out / f"{task}_seed{seed}.json"):
        if path.is_file():
            report = json.loads(path.read_text())
            report.pop("table", None)  # copies written before it was dropped carry it
            return report
    return None


def all_finished(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """Every finished (task, seed) of a results folder, in task order, then seed order.

    Args:
        out: The results folder: its ``<task>_seed<k>.json`` copies and ``<task>_seed<k>/``
            run folders with a report.json.

    Returns:
        {(task, seed): its report (``finished_report``)}.
    """
    cells = set()
    for path in out.glob("*_seed*"):
        task, _, seed = (path.stem if path.is_file() else path.name).rpartition("_seed")
        if seed.isdigit():
            cells.add((task, int(seed)))
    reports = {cell: finished_report(out, *cell) for cell in in_task_order(cells)}
    return {cell: r for cell, r in reports.items() if r is not None}


def in_task_order(cells: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """(task, seed) pairs sorted in ``ALL_TASKS`` order (other tasks after), then by seed."""
    return sorted(cells, key=lambda c: (ALL_TASKS.index(c[0]) if c[0] in ALL_TASKS
                                        else len(ALL_TASKS), c[0], c[1]))


def main() -> None:
    """Run the missing (task, seed) demos, then write the summary and the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=ALL_TASKS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--budget", default="converged")
    p.add_argument("--device", default="auto")
    p.add_argument("--checkpoint", default=None,
                   help="mini SAM weights to adapt instead of the built-in ones (a "
                        "`tskd pretrain-mini` output); use its own --out folder")
    p.add_argument("--cnn-students", action="store_true",
                   help="also the CNN student (scratch, task-agnostic KD, TS-KD): ~10 min more "
                        "per task and seed")
    p.add_argument("--finished-only", action="store_true",
                   help="summarise the finished (task, seed) runs; start none")
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default benchmarks/results/<budget>)")
    args = p.parse_args()
    out = args.out or RESULTS / args.budget
    finished = all_finished(out)
    for task in args.tasks:
        for seed in args.seeds:
            if (task, seed) in finished:  # finished earlier: reused
                _check_same_teacher(finished[task, seed], args.checkpoint,
                                    out / f"{task}_seed{seed}")
            elif not args.finished_only:
                report = run_demo(task=task, n_labels=args.labels, seed=seed,
                                  budget=args.budget, out=out / f"{task}_seed{seed}",
                                  device=args.device, checkpoint=args.checkpoint,
                                  cnn_students=args.cnn_students)
                print(report.pop("table"), flush=True)
                # run folders stay out of git; this copy of its report.json does not
                (out / f"{task}_seed{seed}.json").write_text(json.dumps(report, indent=1) + "\n")
                finished[task, seed] = report
    reports = [finished[cell] for cell in in_task_order(finished)]
    if not reports:
        raise SystemExit(f"{out}: no finished (task, seed) run to summarise (neither a "
                         "<task>_seed<k>/report.json nor a <task>_seed<k>.json copy)"
                         + ("" if out.is_dir() else "; the folder does not exist"))
    summary = aggregate(reports)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(to_markdown(summary))
    plot(summary, out)
    print(to_markdown(summary))


if __name__ == "__main__":
    main()
