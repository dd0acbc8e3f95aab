"""The benchmark: `tskd demo` on every procedural task over several seeds, aggregated.

    python benchmarks/run_benchmark.py --tasks kidney_us skin_lesion --seeds 0 1 2 --budget small

Each (task, seed) is one `run_demo` call: a fresh draw of the task's data (the seed also seeds
the data), the four methods trained the same way, scored on held-out test images that no stage
looks at. Writes benchmarks/results/<task>_seed<k>/ per run (its report.json is also copied to
benchmarks/results/<task>_seed<k>.json, which is kept in git), and
benchmarks/results/summary.json + summary.md with the mean and standard deviation over seeds of
each method's mean test Dice and HD95. Nothing is chosen on the test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from tskd.apps.demo import LABELS, METHODS, run_demo

RESULTS = Path(__file__).parent / "results"


def aggregate(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of each method's test-set means, per task."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_task.setdefault(r["task"], []).append(r)
    out: dict[str, Any] = {}
    for task, runs in by_task.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in runs],
                                 "n_labels": runs[0]["n_labels"]}
        for m in METHODS:
            for key in ("dice_mean", "hd95_mean"):
                values = [r["methods"][m][key] for r in runs]
                entry.setdefault(m, {})[key.replace("_mean", "")] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
            entry[m]["params"] = runs[0]["methods"][m]["params"]
            entry[m]["ms_per_image"] = statistics.median(
                r["methods"][m]["ms_per_image"] for r in runs
            )
        checks = [r.get("pretraining_check", {}).get("random_init_all_trained") for r in runs]
        if all(checks):
            entry["pretraining_check"] = {
                "pretrained_lora": [r["methods"]["teacher"]["dice_mean"] for r in runs],
                "random_init": [c["dice_mean"] for c in checks],
            }
        out[task] = entry
    return out


def to_markdown(summary: dict[str, Any]) -> str:
    lines = []
    for task, e in summary.items():
        lines += [
            f"### {task} ({e['n_labels']} labels, seeds {', '.join(map(str, e['seeds']))})",
            "",
            "| model | Dice (mean ± sd over seeds) | HD95 px | parameters | ms / 256² image |",
            "|---|---|---|---|---|",
        ]
        for m in METHODS:
            d, h = e[m]["dice"], e[m]["hd95"]
            lines.append(
                f"| {LABELS[m]} | {d['mean']:.3f} ± {d['std']:.3f} | {h['mean']:.1f} ± "
                f"{h['std']:.1f} | {e[m]['params'] / 1e6:.2f} M | {e[m]['ms_per_image']:.1f} |"
            )
        ts = e["ts_kd"]["dice"]["values"]
        ahead = {m: sum(a > b for a, b in zip(ts, e[m]["dice"]["values"], strict=True))
                 for m in ("scratch", "task_agnostic_kd")}
        lines += ["", "Student test Dice per seed, TS-KD / scratch / task-agnostic KD: "
                  + ", ".join(f"{a:.3f} / {b:.3f} / {c:.3f}" for a, b, c in zip(
                      ts, e["scratch"]["dice"]["values"],
                      e["task_agnostic_kd"]["dice"]["values"], strict=True))
                  + f"; TS-KD ahead of scratch on {ahead['scratch']} of {len(ts)}, of "
                  f"task-agnostic KD on {ahead['task_agnostic_kd']} of {len(ts)}."]
        check = e.get("pretraining_check")
        if check:
            pairs = list(zip(check["pretrained_lora"], check["random_init"], strict=True))
            wins = sum(a > b for a, b in pairs)
            lines += ["", "Pretraining check, teacher test Dice per seed (pretrained + LoRA vs "
                      "same architecture from random init): "
                      + ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in pairs)
                      + f"; pretrained ahead on {wins} of {len(pairs)}."]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["kidney_us", "skin_lesion", "retina_vessels",
                                                  "ct_abdomen"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--labels", type=int, default=10)
    p.add_argument("--budget", default="small")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    reports = []
    for task in args.tasks:
        for seed in args.seeds:
            folder = args.out / f"{task}_seed{seed}"
            done = folder / "report.json"
            if done.is_file():  # finished earlier: reuse (delete the folder to re-run)
                reports.append(json.loads(done.read_text()))
                continue
            report = run_demo(task=task, n_labels=args.labels, seed=seed, budget=args.budget,
                              out=folder, device=args.device, check_pretraining=True)
            print(report["table"], flush=True)
            reports.append(report)
        for report in reports[-len(args.seeds):]:  # run folders stay out of git; these copies not
            copy = args.out / f"{task}_seed{report['seed']}.json"
            copy.write_text(json.dumps(report, indent=1) + "\n")
    summary = aggregate(reports)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (args.out / "summary.md").write_text(to_markdown(summary))
    print(to_markdown(summary))


if __name__ == "__main__":
    main()
