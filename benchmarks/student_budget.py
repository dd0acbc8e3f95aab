"""Are the students held back by their training budget? The demo with longer student stages.

    python benchmarks/student_budget.py --task ct_abdomen --dev-seed 100 --factor 3

Runs `tskd demo` on a *development* draw (seed >= 100, never a benchmark seed) twice: with the
`small` budget, and with the distillation and fine-tuning epochs multiplied by ``--factor``
(teacher, transfer set and everything else unchanged). If the TS-KD student's gap to its teacher
shrinks with more student steps, the gap is under-training, not missing knowledge. Writes
benchmarks/results/student_budget_<task>_dev<seed>.json with both reports' Dice figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from tskd.apps.demo import BUDGETS, run_demo
from tskd.apps.demo_report import METHODS

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ct_abdomen")
    parser.add_argument("--dev-seed", type=int, default=100)
    parser.add_argument("--factor", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.dev_seed < 100:
        parser.error("the dev seed must be >= 100: seeds 0-99 are the benchmark's")
    small = BUDGETS["small"]
    longer = f"small_students_x{args.factor}"
    BUDGETS[longer] = dataclasses.replace(
        small,
        distill_epochs=small.distill_epochs * args.factor,
        student_epochs=small.student_epochs * args.factor,
    )
    out: dict[str, dict[str, float]] = {}
    for budget in ("small", longer):
        with tempfile.TemporaryDirectory() as tmp:
            report = run_demo(task=args.task, seed=args.dev_seed, budget=budget, out=Path(tmp),
                              device=args.device)
        out[budget] = {m: report["methods"][m]["dice_mean"] for m in METHODS
                       if m in report["methods"]}
        out[budget]["seconds"] = report["seconds"]
        print(budget, json.dumps(out[budget]), flush=True)
    path = RESULTS / f"student_budget_{args.task}_dev{args.dev_seed}.json"
    path.write_text(json.dumps({"task": args.task, "dev_seed": args.dev_seed, **out},
                               indent=1) + "\n")


if __name__ == "__main__":
    main()
