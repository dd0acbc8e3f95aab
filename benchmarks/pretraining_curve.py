"""Adapted-teacher Dice against pretraining compute, for each pretrained size. Dev draws only.

    tskd pretrain-mini --arch mini --snapshot-every 2 --steps 1600 --out runs/pt_mini
    tskd pretrain-mini --arch small --snapshot-every 2 --steps 1600 --out runs/pt_small
    python benchmarks/pretraining_curve.py --runs runs/pt_mini runs/pt_small \\
        --tasks retina_vessels kidney_us --dev-seeds 100 --steps 0 400 800 1600

Each run's snapshots (``runs/*/snapshots/step_*.safetensors``, written by ``--snapshot-every``)
and, as step 0, the same architecture from random initialisation (every parameter trained, the
pretraining check's baseline) are adapted to 10 labels of each task's development draw (seeds
100+, never the benchmark's 0-2) with the ``converged`` budget's teacher recipe (LoRA + refine
head, early stopping on a validation split of the labels) and scored on that draw's 30
development images. Pretraining seconds are the steps times the run's measured seconds per
step (``mini_sam.json`` or the newest snapshot). Writes benchmarks/results/pretraining_curve.json
(rows appended; a finished row is not run again) and pretraining_curve.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from teacher_adaptation import dev_draws, run_recipe, save_row

from tskd.apps.demo import BUDGETS, demo_config

RESULTS = Path(__file__).parent / "results" / "pretraining_curve.json"


def snapshots(run: Path) -> list[tuple[int, Path, float]]:
    """(step, weights, seconds per step) of a pretraining run's snapshots, by step."""
    out = []
    for path in sorted((run / "snapshots").glob("step_*.safetensors")):
        info = json.loads(path.with_suffix(".json").read_text())["info"]
        step = int(info["step"])
        out.append((step, path, float(info.get("run_seconds", 0.0)) / max(step, 1)))
    return out


def _row_key(row: dict[str, Any]) -> tuple:
    return row["run"], row["step"], row["task"], row["dev_seed"]


def evaluate(run: Path, step: int, weights: Path | None, task: str, seed: int,
             root: Path) -> float:
    """Dev Dice of the teacher adapted from ``weights`` (None: random init of that arch)."""
    from tskd.models.mini_sam_files import read_mini_config

    # step 0: the architecture of the run's snapshots, randomly initialised (build_sam reads it)
    source = weights or snapshots(run)[0][1]
    arch = read_mini_config(source)
    cfg = demo_config(root / "data", root / "run", BUDGETS["converged"], seed,
                      checkpoint=str(source), teacher_size=arch.img_size, device="cpu")
    cfg.teacher.refine_head = True
    if weights is None:
        return float(run_recipe("random", cfg, root / "data" / "test", root / "w")["dice"])
    return float(run_recipe("lora", cfg, root / "data" / "test", root / "w")["dice"])


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Dice against pretraining seconds, one line per run and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for run, task in sorted({(r["run"], r["task"]) for r in rows}):
        pts = sorted((r["pretrain_seconds"], r["dice"]) for r in rows
                     if r["run"] == run and r["task"] == task)
        ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], marker="o",
                label=f"{Path(run).name} / {task}")
    ax.set_xlabel("pretraining (CPU minutes, 2 cores)")
    ax.set_ylabel("adapted teacher Dice (dev draw)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", default=["retina_vessels", "kidney_us"])
    parser.add_argument("--dev-seeds", nargs="+", type=int, default=[100])
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="adapt only these pretraining steps (0: random init); default all")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if any(s < 100 for s in args.dev_seeds):
        parser.error("dev seeds must be >= 100: seeds 0-99 are the benchmark's")
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    done = {_row_key(r) for r in rows}
    for task, seed, root in dev_draws(args.tasks, args.dev_seeds):
        for run in args.runs:
            snaps = snapshots(run)
            per_step = snaps[-1][2] if snaps else 0.0
            for step, weights in [(0, None), *((s, w) for s, w, _ in snaps)]:
                if args.steps is not None and step not in args.steps:
                    continue
                row = {"run": str(run), "step": step, "task": task, "dev_seed": seed}
                if _row_key(row) not in done:
                    row["pretrain_seconds"] = round(step * per_step, 1)
                    row["dice"] = evaluate(run, step, weights, task, seed, root)
                    save_row(row, rows, args.out)
    plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
