"""Which student should be the default: compared on validation images only, never the test set.

    python benchmarks/student_choice.py benchmarks/results/converged

Every benchmark run (``<folder>/<task>_seed<k>/``) holds each method's fine-tuned student with
the Dice it reached on the run's validation images (``<method>/student/meta.json``: ``val``,
the images ``data.val_fraction`` holds out of the labelled set to decide when a stage stops).
This script compares the students after TS-KD on that Dice alone, beside their speed per image,
so the default is chosen without looking at a test image; the test Dice of the same runs is
what docs/benchmark.md reports. Writes ``<folder>/student_choice.{json,md}``.

It also measures a validation gate offline: for each student trained both after TS-KD and on
the labels alone, keep the one with the higher validation Dice (TS-KD on a tie), and report how
often that kept the one with the higher test Dice. The rule has no threshold to tune; the test
Dice is read only to score it, never to choose.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from tskd.apps.demo_report import CNN_DEFAULT_KEYS, as_current

# the students after TS-KD that may be the default (today's method keys: ``ts_kd`` is the
# default student), with the words the table uses
CANDIDATES = {"ts_kd": "U-Net student (MONAI BasicUNet, width 16)",
              "cnn_ts_kd": "CNN student (MobileNetV3 + U-Net decoder)",
              "vit_ts_kd": "ViT-Tiny student (the paper's)"}
# each candidate's same student trained on the labels alone, for the validation gate
SCRATCH = {"ts_kd": "scratch", "cnn_ts_kd": "cnn_scratch", "vit_ts_kd": "vit_scratch"}


def validation_dice(run: Path, methods: tuple[str, ...] = tuple(CANDIDATES)
                    ) -> dict[str, float]:
    """Each method's validation Dice in one benchmark run.

    Args:
        run: A ``<task>_seed<k>`` folder of ``run_benchmark.py``; one written while the CNN was
            the default student (no ``default_student`` in its report) holds the CNN in
            ``ts_kd/`` and the U-Net student in ``unet16_ts_kd/``.
        methods: Today's keys of the student methods to read (default: the candidates).

    Returns:
        {method (today's key): Dice on the run's validation images}, for the methods the
        run trained.
    """
    report = json.loads((run / "report.json").read_text())
    folder = {m: m for m in methods}
    if "default_student" not in report:
        folder |= {new: old for old, new in CNN_DEFAULT_KEYS.items() if new in methods}
    out = {}
    for method in methods:
        meta = run / folder[method] / "student" / "meta.json"
        if meta.is_file():
            val = json.loads(meta.read_text()).get("val")
            if val is not None:
                out[method] = float(val["dice"])
    return out


def gate(run: Path, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The validation gate between each student after TS-KD and from scratch, in one run.

    Args:
        run: A ``<task>_seed<k>`` folder of ``run_benchmark.py``.
        report: Its ``report.json``, read with today's keys (``as_current``).

    Returns:
        {TS-KD method: {"val": {method: Dice}, "test": {method: Dice, "unet": Dice},
        "kept": the method with the higher validation Dice (TS-KD on a tie), "kept_test": its
        test Dice, "right": whether it is also the one with the higher test Dice (a test tie
        counts as right)}}, for the students the run trained both ways.
    """
    val = validation_dice(run, tuple(CANDIDATES) + tuple(SCRATCH.values()))
    test = report["methods"]
    out = {}
    for kd, scratch in SCRATCH.items():
        if not {kd, scratch} <= set(val) or not {kd, scratch, "unet"} <= set(test):
            continue
        kept = kd if val[kd] >= val[scratch] else scratch
        other = scratch if kept == kd else kd
        dice = {m: float(test[m]["dice_mean"]) for m in (kd, scratch, "unet")}
        out[kd] = {"val": {kd: val[kd], scratch: val[scratch]}, "test": dice, "kept": kept,
                   "kept_test": dice[kept], "right": dice[kept] >= dice[other]}
    return out


def compare(folders: list[Path]) -> dict[str, Any]:
    """Validation Dice per run and candidate, the mean per candidate over runs that have all.

    Args:
        folders: ``run_benchmark.py`` results folders.

    Returns:
        {"runs": {run: {method: Dice}}, "mean": {method: mean Dice over the runs holding every
        candidate}, "ms_per_image": {method: median over runs}, "n_runs": that number of runs,
        "gate": {run: ``gate(run)``}}.
    """
    runs: dict[str, dict[str, float]] = {}
    gates: dict[str, dict[str, dict[str, Any]]] = {}
    speed: dict[str, list[float]] = {}
    for folder in folders:
        for run in sorted(p for p in folder.iterdir() if (p / "report.json").is_file()):
            runs[f"{folder.name}/{run.name}"] = validation_dice(run)
            report = as_current(json.loads((run / "report.json").read_text()))
            gates[f"{folder.name}/{run.name}"] = gate(run, report)
            for m in CANDIDATES:
                if m in report["methods"]:
                    speed.setdefault(m, []).append(report["methods"][m]["ms_per_image"])
    complete = [v for v in runs.values() if set(v) == set(CANDIDATES)]
    mean = {m: statistics.fmean(v[m] for v in complete) for m in CANDIDATES} if complete else {}
    return {"runs": runs, "mean": mean, "n_runs": len(complete), "gate": gates,
            "ms_per_image": {m: statistics.median(v) for m, v in speed.items()}}


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one row per run) and the means.

    Args:
        result: ``compare``'s result.

    Returns:
        The Markdown text.
    """
    names = list(CANDIDATES)
    lines = ["| run | " + " | ".join(CANDIDATES[m] for m in names) + " |",
             "|---|" + "---|" * len(names)]
    for run, dice in result["runs"].items():
        lines.append(f"| {run} | " + " | ".join(
            f"{dice[m]:.3f}" if m in dice else "-" for m in names) + " |")
    if result["mean"]:
        lines.append(f"| mean over the {result['n_runs']} runs with all three | " + " | ".join(
            f"**{result['mean'][m]:.3f}**" for m in names) + " |")
    lines.append("| ms per 256² image (median) | " + " | ".join(
        f"{result['ms_per_image'][m]:.1f}" if m in result["ms_per_image"] else "-"
        for m in names) + " |")
    return "\n".join(lines + gate_markdown(result["gate"])) + "\n"


def gate_markdown(gates: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """The validation gate's table: per run and student, what validation kept and its test Dice.

    Args:
        gates: {run: ``gate(run)``}.

    Returns:
        Markdown lines (none where no run trained a student both ways).
    """
    rows = [(run, kd, g) for run, by in gates.items() for kd, g in by.items()]
    if not rows:
        return []
    lines = ["", "Validation gate (keep the student after TS-KD or from scratch, whichever has "
             "the higher validation Dice):", "",
             "| run | student | validation TS-KD / scratch | kept | test TS-KD / scratch / "
             "U-Net | kept - U-Net (test) |", "|---|---|---|---|---|---|"]
    for run, kd, g in rows:
        scratch = SCRATCH[kd]
        lines.append(f"| {run} | {kd} | {g['val'][kd]:.3f} / {g['val'][scratch]:.3f} | "
                     f"{'TS-KD' if g['kept'] == kd else 'scratch'} | {g['test'][kd]:.3f} / "
                     f"{g['test'][scratch]:.3f} / {g['test']['unet']:.3f} | "
                     f"{g['kept_test'] - g['test']['unet']:+.3f} |")
    for kd in SCRATCH:
        of = [g for _, k, g in rows if k == kd]
        if of:
            kept, ts, unet = (statistics.fmean(g["kept_test"] for g in of),
                              statistics.fmean(g["test"][kd] for g in of),
                              statistics.fmean(g["test"]["unet"] for g in of))
            lines.append(f"\n{kd}: the gate kept the test-better student on "
                         f"{sum(g['right'] for g in of)} of {len(of)} runs; mean test Dice: "
                         f"kept {kept:.3f}, TS-KD {ts:.3f}, U-Net {unet:.3f}")
    return lines


def main() -> None:
    """Compare the candidates in the given results folders and write the files."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args()
    result = compare(args.folders)
    out = args.folders[0]
    (out / "student_choice.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "student_choice.md").write_text(to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
