"""Which way of adapting the mini teacher carries its pretraining best? Scored on dev draws only.

    python benchmarks/teacher_adaptation.py --tasks retina_vessels ct_abdomen --dev-seeds 100 101

For each task and dev seed it draws 10 labelled images and 30 *development* images (seeds 100+,
never the benchmark's seeds 0-2, so nothing here looks at a benchmark test set), then trains
the teacher in several ways with the demo's `small` budget and scores each on the dev images:

- ``lora``: LoRA (r=32 by default; ``lora:rank=4`` was the demo's first choice, SAMed's) on the
  encoder's qkv and the decoder's q/v, plus the class heads;
- ``lora+decoder``: the same LoRA plus the whole mask decoder trained, as SAMed does;
- ``full``: the pretrained weights (refine head included), every parameter trained at the
  random initialisation's rate (full fine-tuning instead of LoRA);
- ``random``: the same architecture from random initialisation, every parameter trained
  (the pretraining check's baseline), so each recipe's gain over no pretraining is visible.

``--checkpoint`` adapts other mini SAM weights (a ``tskd pretrain-mini`` output) than the built-in
ones; ``--sizes`` repeats everything at other teacher input sizes; ``--budget`` picks the demo
budget (``small`` by default; ``converged`` stops on a validation split of the 10 labels). Writes
benchmarks/results/teacher_adaptation.json (or ``--out``), appending to what is there.
``--summary`` trains nothing: it prints the rows of ``--out`` as a table, one line a teacher
and recipe, each task's mean Dice over the dev seeds it ran on, and the mean over the tasks.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tskd.apps.demo import BUDGETS, demo_config
from tskd.apps.pretraining_check import random_init_teacher
from tskd.config import RunConfig
from tskd.data import phantoms
from tskd.inference.predict import evaluate_folder, segmenter_from_bundle
from tskd.training.teacher import finetune_teacher

RESULTS = Path(__file__).parent / "results" / "teacher_adaptation.json"
RECIPES = ("lora", "lora+decoder", "full", "random")
MLP_TARGET = r"image_encoder\.blocks\.\d+\.mlp\.lin[12]"  # SAM's ViT blocks: MLPBlock lin1, lin2
EMBED_TARGET = "image_encoder.patch_embed.proj"  # SAM's patch embedding, a strided Conv2d


def parse_recipe(spec: str) -> tuple[str, dict[str, float]]:
    """'lora+decoder:rank=16,lr=1e-3' -> ('lora+decoder', {'rank': 16.0, 'lr': 0.001}).

    Options: rank (alpha = rank), lr, epochs, bg (1 = background in the Dice term), refine
    (1 = the full-resolution refine head, 0 = SAM's logits upsampled), cap (the teacher's
    time cap in seconds, in place of the budget's; 0 = none), mlp (1 = LoRA on the encoder's
    MLP layers too, ``MLP_TARGET``), embed (1 = LoRA on the patch embedding too,
    ``EMBED_TARGET``).
    """
    name, _, opts = spec.partition(":")
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose {RECIPES}")
    values = dict(o.split("=") for o in opts.split(",") if o)
    unknown = set(values) - {"rank", "lr", "epochs", "bg", "refine", "cap", "mlp",
                                  "embed"}
    if unknown:
        raise ValueError(f"unknown recipe option(s) {sorted(unknown)}")
    return name, {k: float(v) for k, v in values.items()}


def _dev_dice(folder: Path, dev: Path) -> float:
    """Dice on ``dev`` of the teacher saved in ``folder`` (tiles of 1024 px, as always here)."""
    segmenter, _ = segmenter_from_bundle(folder, device="cpu", tile_size=1024)
    report, _ = evaluate_folder(segmenter, dev)
    return float(report.summary["dice_mean"])


def run_recipe(recipe: str, cfg: RunConfig, dev: Path, work: Path) -> dict[str, Any]:
    """Train the teacher one way on ``cfg``'s labels; Dice on ``dev`` and seconds."""
    from tskd.pipeline.context import load_labelled_data

    t0 = time.perf_counter()
    recipe, opts = parse_recipe(recipe)
    cfg = copy.deepcopy(cfg)
    if "lr" in opts:
        cfg.teacher.train.lr = opts["lr"]
    if "epochs" in opts:
        cfg.teacher.train.epochs = int(opts["epochs"])
    if "bg" in opts:  # 1: the background class in the teacher's Dice term too
        cfg.teacher.dice_include_background = bool(opts["bg"])
    if "cap" in opts:
        cfg.teacher.train.max_seconds = opts["cap"] or None
    if "refine" in opts:
        cfg.teacher.refine_head = bool(opts["refine"])
    if opts.get("mlp"):
        cfg.teacher.lora.targets = [*cfg.teacher.lora.targets, MLP_TARGET]
    if opts.get("embed"):
        cfg.teacher.lora.targets = [*cfg.teacher.lora.targets, EMBED_TARGET]
    if "rank" in opts:
        cfg.teacher.lora.rank = int(opts["rank"])
        cfg.teacher.lora.alpha = float(opts["rank"])
    if recipe in ("random", "full"):
        result = random_init_teacher(cfg, dev, pretrained=recipe == "full")
        return {"dice": result["dice_mean"], "seconds": time.perf_counter() - t0,
                "steps": result["steps"]}
    tcfg = copy.deepcopy(cfg.teacher)
    tcfg.lora.train_decoder = recipe == "lora+decoder"
    data = load_labelled_data(cfg)
    folder = work / "teacher"
    record = finetune_teacher(tcfg, data.train, data.val, data.num_classes, folder)
    dice = _dev_dice(folder, dev)
    return {"dice": dice, "seconds": time.perf_counter() - t0, "steps": record["steps"]}


def dev_draws(tasks: list[str], seeds: list[int]) -> Iterator[tuple[str, int, Path]]:
    """(task, seed, root) for each development draw, written to ``root/data`` (train/, test/).

    10 labelled and 30 development images per draw; the folder is removed after its turn.
    """
    for task in tasks:
        for seed in seeds:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                phantoms.write_task_folders(task, root / "data", 10, 0, 30, 256, seed)
                yield task, seed, root


def save_row(row: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """Print ``row``, append it to ``rows`` and write them all to ``out`` (JSON)."""
    print(json.dumps(row), flush=True)
    rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")


def summary_table(rows: list[dict[str, Any]], seeds: list[int] | None = None) -> str:
    """Markdown table of ``rows``: a line per (checkpoint, recipe, size), a column per task.

    Each cell is the mean dev Dice over the dev seeds of ``seeds`` (all when None) that line
    ran on for that task; ``mean`` averages the task cells of a line that has every task.
    """
    tasks = [t for t in phantoms.TASKS if any(r["task"] == t for r in rows)]
    cells: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for r in rows:
        if seeds is None or r["dev_seed"] in seeds:
            key = (r["checkpoint"], r["recipe"], r["size"])
            cells.setdefault(key, {}).setdefault(r["task"], []).append(r["dice"])
    lines = ["| teacher | recipe | size | " + " | ".join(tasks) + " | mean |",
             "|---" * (len(tasks) + 4) + "|"]
    for (ckpt, recipe, size), by_task in cells.items():
        means = [statistics.fmean(by_task[t]) if t in by_task else None for t in tasks]
        known = [m for m in means if m is not None]
        mean = statistics.fmean(known) if len(known) == len(tasks) else None
        shown = ["-" if m is None else f"{m:.3f}" for m in [*means, mean]]
        lines.append(f"| {ckpt} | {recipe} | {size} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(phantoms.TASKS))
    parser.add_argument("--dev-seeds", nargs="+", type=int,
                        help="default: 100 101 (training), every seed of --out (--summary)")
    parser.add_argument("--sizes", nargs="+", type=int, default=[128])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON to append rows to")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--checkpoint", help="mini SAM weights; default: the built-in ones")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES),
                        help="name[:rank=R,lr=LR,epochs=E,cap=S,mlp=1]; names: "
                        + ", ".join(RECIPES))
    parser.add_argument("--summary", action="store_true",
                        help="print --out's rows on --dev-seeds as a table; train nothing")
    args = parser.parse_args()
    if args.summary:
        print(summary_table(json.loads(args.out.read_text()), args.dev_seeds))
        return
    args.dev_seeds = args.dev_seeds or [100, 101]
    if any(s < 100 for s in args.dev_seeds):
        parser.error("dev seeds must be >= 100: seeds 0-99 are the benchmark's")
    budget = BUDGETS[args.budget]
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    for task, seed, root in dev_draws(args.tasks, args.dev_seeds):
        for size in args.sizes:
            cfg = demo_config(root / "data", root / "run", budget, seed,
                              checkpoint=args.checkpoint, teacher_size=size, device="cpu")
            for recipe in args.recipes:
                r = run_recipe(recipe, cfg, root / "data" / "test", root / f"w{size}")
                save_row({"task": task, "dev_seed": seed, "size": size, "recipe": recipe,
                          "budget": args.budget, "checkpoint": args.checkpoint or "builtin",
                          **r}, results, args.out)

if __name__ == "__main__":
    main()
