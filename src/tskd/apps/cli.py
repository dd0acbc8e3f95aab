"""The ``tskd`` command: every stage of the pipeline, for scripts and GPU servers.

A user-fixable problem (``TskdError``) prints one line and exits with code 2; Ctrl-C stops a
training stage at the next step, keeps a resumable checkpoint and exits with code 130.
"""

from __future__ import annotations

import argparse
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tskd.apps import commands, job, pretrain_command
from tskd.apps.commands import set_if
from tskd.errors import Cancelled, TskdError
from tskd.pipeline.registry import STAGES, by_cli_name

OVERWRITE_RUN_HELP = ("replace a different run in the run folder (only the files that run wrote "
                      "are removed)")


class _TqdmProgress:
    """Turns engine ``Progress`` reports into one tqdm bar per stage."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._stage = ""

    def __call__(self, p: Any) -> None:
        from tqdm import tqdm

        restarted = self._bar is not None and p.step < self._bar.n  # same stage, next model
        if self._bar is None or p.stage != self._stage or restarted:
            self.close()
            self._stage = p.stage
            # initial: a resumed run's steps before this one do not count in its rate
            self._bar = tqdm(total=p.total, initial=p.step, desc=p.stage, unit="step",
                             dynamic_ncols=True)
        self._bar.n = p.step
        if p.loss == p.loss:  # no loss (NaN) while sampling or caching: no "loss=nan"
            self._bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        self._bar.refresh()

    def close(self) -> None:  # the stage's bar is done (a new one starts at the next report)
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run configuration (see examples/)")
    p.add_argument("--run-dir", help="run folder (default: from the config)")
    p.add_argument("--data", help="labelled folder: images/+labels/ or nnU-Net raw layout")
    p.add_argument("--unlabelled", help="folder of unlabelled images for the transfer set")
    p.add_argument("--test", help="held-out labelled folder to evaluate on")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps: the run's device (config "
                   "'device'), for every stage")
    p.add_argument("--seed", type=int, help="seed of the training stage")
    p.add_argument("--epochs", type=int,
                   help="epochs of the training stage (synthesize: of 50 steps each)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN_HELP)
    p.add_argument("--max-pixels", type=int,
                   help="most pixels one image file may decode to (data.max_pixels; 2^28)")


def _teacher_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-type", choices=["mini", "vit_b", "vit_l", "vit_h"])
    p.add_argument("--checkpoint", help="official SAM checkpoint (.pth or .safetensors)")
    p.add_argument("--input-size", type=int, help="SAM input size (1024 native)")
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--lr", type=float)


def _synthesize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-images", type=int, help="number of images to sample")
    p.add_argument("--steps", type=int,
                   help="diffusion training steps (synth.train.max_steps, in epochs of 50)")
    p.add_argument("--resolution", type=int, help="diffusion resolution")


def _distill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task-agnostic", action="store_true",
                   help="baseline: match the un-adapted SAM encoder's features only")


def _student_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-scratch", action="store_true", help="baseline: no distillation")
    p.add_argument("--continue", dest="continue_from_last", action="store_true",
                   help="start from the last fine-tuned student (annotate-train loop)")


# each stage's own arguments, by ``Stage.name`` (tskd.pipeline.registry)
_STAGE_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "teacher": _teacher_arguments,
    "synthesize": _synthesize_arguments,
    "distill": _distill_arguments,
    "student": _student_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``tskd`` command's argument parser.

    One subcommand per stage of ``tskd.pipeline.registry.STAGES`` (its CLI name and aliases,
    the run options and the stage's own arguments), then ``run``, ``predict``, ``evaluate``,
    ``check-data``, ``export-onnx``, ``pretrain-mini``, ``make-sample-data`` and ``demo``.

    Returns:
        The parser; ``args.command`` holds the subcommand, a key of ``COMMANDS``.
    """
    parser = argparse.ArgumentParser(
        prog="tskd",
        description="Task-specific knowledge distillation from Segment Anything into a small, "
        "fast segmentation model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for i, stage in enumerate(STAGES, start=1):
        p = sub.add_parser(stage.cli_name, aliases=list(stage.cli_aliases),
                           help=f"stage {i}, {stage.title.lower()}: {stage.summary}")
        _add_run_options(p)
        _STAGE_ARGUMENTS[stage.name](p)

    p = sub.add_parser("predict", help="segment images, stacks or folders")
    p.add_argument("inputs", nargs="+", type=Path, help="image files or folders")
    p.add_argument("--model", required=True, type=Path, help="student or teacher folder")
    p.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--tile-size", type=int,
                   help="tile side in pixels (default: the size of the model's training "
                   "images, so tiles keep the training scale; 1024 for older models)")
    p.add_argument("--max-pixels", type=int,
                   help="most pixels one image may decode to (default: $TSKD_MAX_PIXELS or "
                   "2^28); larger files are refused before they are read")
    p.add_argument("--overwrite", action="store_true",
                   help="replace label maps already in the output folder (they are named)")

    p = sub.add_parser("evaluate", help="Dice, IoU and HD95 per image and class")
    p.add_argument("--pred", type=Path, help="folder of predicted label maps")
    p.add_argument("--gt", type=Path, help="folder of ground-truth label maps")
    p.add_argument("-o", "--output", type=Path, help="folder for metrics.json and metrics.csv")
    p.add_argument("--num-classes", type=int,
                   help="classes incl. background, label values 0..N-1 (default: dataset.json "
                        "beside the ground truth, else the values in the ground truth)")
    p.add_argument("--spacing", type=float, nargs="+", help="pixel spacing for HD95 (e.g. 0.5 0.5)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace metrics.json/metrics.csv already in the output folder")
    p.add_argument("--ignore-label", type=int,
                   help="ground-truth label value to leave out of the scores (e.g. 255)")

    p = sub.add_parser("check-data",
                       help="check every image and label map of a labelled folder before training")
    p.add_argument("folder", type=Path, help="images/+labels/ or nnU-Net raw layout")
    p.add_argument("--config", type=Path,
                   help="YAML run configuration (its data.classes and data.ignore_label)")
    p.add_argument("--ignore-label", type=int, help="label value to ignore (e.g. 255)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("run", help="the whole pipeline from one YAML file")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--run-dir")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps: the run's device (config "
                   "'device'), for every stage")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_RUN_HELP)
    p.add_argument("--max-pixels", type=int,
                   help="most pixels one image file may decode to (data.max_pixels; 2^28)")

    p = sub.add_parser("export-onnx", help="export a student to ONNX (checked against PyTorch)")
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("-o", "--output", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    pretrain_command.add_parser(sub)

    # tskd.data.phantoms.TASKS, written out for a light start-up (tests/test_brain_task.py)
    tasks = ("kidney_us, skin_lesion, retina_vessels, ct_abdomen or brain_mri (needs the "
             "[brain] extra)")
    p = sub.add_parser("make-sample-data", help="write a sample task as folders")
    p.add_argument("task", help=tasks)
    p.add_argument("output", type=Path)
    p.add_argument("--train", type=int, default=10, help="labelled training images")
    p.add_argument("--unlabelled", type=int, default=40)
    p.add_argument("--test", type=int, default=20)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace sample files already in OUTPUT (other files are never touched)")

    p = sub.add_parser("demo", help="the whole method on a sample task, with baselines")
    p.add_argument("--task", default="kidney_us", help=tasks)
    p.add_argument("--data", type=Path, help="your own data instead of --task: a folder of train/"
                   " and test/ (labelled) and optionally unlabelled/, never written")
    p.add_argument("--labels", type=int, default=10, help="labelled training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", choices=["tiny", "small", "converged"], default="small")
    p.add_argument("--teacher", default="mini", help="mini, vit_b, vit_l or vit_h")
    p.add_argument("--checkpoint", help="SAM checkpoint for --teacher vit_*")
    p.add_argument("--teacher-size", type=int, help="teacher input px (128 mini, 512 vit_*)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--device", default="auto")
    p.add_argument("--check-pretraining", action="store_true",
                   help="also train the teacher's architecture from random initialisation")
    return parser


def _config_from_args(args: argparse.Namespace) -> Any:
    from tskd.config import RunConfig, load_config

    cfg = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    if getattr(args, "run_dir", None):
        cfg.run_dir = args.run_dir
    for opt, attr in (("data", "labelled"), ("unlabelled", "unlabelled"), ("test", "test")):
        if getattr(args, opt, None):
            setattr(cfg.data, attr, getattr(args, opt))
    if getattr(args, "max_pixels", None) is not None:
        cfg.data.max_pixels = args.max_pixels
    if getattr(args, "device", None):
        cfg.set_device(args.device)  # the run's device; the command line beats the file
    stage = by_cli_name(args.command)
    if stage is not None:
        train = getattr(cfg, stage.section).train
        set_if(train, "seed", args.seed)
        if args.epochs:
            train.epochs = args.epochs
        _STAGE_SETTINGS[stage.name](cfg, args)
    return cfg


def _teacher_settings(cfg: Any, args: argparse.Namespace) -> None:
    set_if(cfg.teacher, "model_type", args.model_type)
    set_if(cfg.teacher, "checkpoint", args.checkpoint)
    set_if(cfg.teacher, "input_size", args.input_size)
    set_if(cfg.teacher.lora, "rank", args.lora_rank)
    set_if(cfg.teacher.train, "lr", args.lr)


def _synthesize_settings(cfg: Any, args: argparse.Namespace) -> None:
    from tskd.config import SYNTH_EPOCH_STEPS

    set_if(cfg.synth, "n_images", args.n_images)
    if args.steps is not None:  # exactly this many steps, in epochs of 50
        cfg.synth.train.set_steps(args.steps, SYNTH_EPOCH_STEPS)
    set_if(cfg.synth, "resolution", args.resolution)


def _distill_settings(cfg: Any, args: argparse.Namespace) -> None:
    if args.task_agnostic:
        cfg.distill.task_agnostic = True


def _student_settings(cfg: Any, args: argparse.Namespace) -> None:
    if args.from_scratch:
        cfg.student.from_scratch = True


# each stage's own arguments into the config, by ``Stage.name``
_STAGE_SETTINGS: dict[str, Callable[[Any, argparse.Namespace], None]] = {
    "teacher": _teacher_settings,
    "synthesize": _synthesize_settings,
    "distill": _distill_settings,
    "student": _student_settings,
}


def _cmd_stage(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    from tskd.pipeline.lock import run_lock
    from tskd.pipeline.run_folder import check_run_dir_inputs, prepare_run_dir
    from tskd.pipeline.settings_check import check_settings
    from tskd.pipeline.stages import stage_evaluate

    stage = by_cli_name(args.command)
    assert stage is not None  # COMMANDS sends only stage subcommands here
    cfg = _config_from_args(args)
    options = {name: getattr(args, name) for name in stage.options}
    check_run_dir_inputs(cfg)  # before the lock creates anything in the run folder
    check_settings(cfg)
    with run_lock(cfg.run_dir, stage.cli_name):  # one writer from the config to the result
        prepare_run_dir(cfg, overwrite=args.overwrite)
        result = stage.function(cfg, progress=progress, cancel=cancel, resume=args.resume,
                                **options)
        if stage.name == "student" and cfg.data.test:
            result["evaluate"] = stage_evaluate(cfg)
    progress.close()
    job.print_result(result)
    return 0


def _cmd_run(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    from tskd.pipeline.registry import run_pipeline

    cfg = _config_from_args(args)
    result = run_pipeline(
        cfg, progress=progress, cancel=cancel, resume=args.resume, overwrite=args.overwrite
    )
    progress.close()
    job.print_result(result)
    return 0


# subcommand -> ``command(args, progress, cancel) -> exit code``
COMMANDS: dict[str, Callable[[argparse.Namespace, Any, Any], int]] = {
    **{name: _cmd_stage for s in STAGES for name in (s.cli_name, *s.cli_aliases)},
    "run": _cmd_run,
    "predict": commands.predict,
    "evaluate": commands.evaluate,
    "check-data": commands.check_data,
    "export-onnx": commands.export,
    "pretrain-mini": pretrain_command.pretrain,
    "make-sample-data": commands.sample_data,
    "demo": commands.demo,
}


def _show_warning(message: Any, category: Any, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    print(f"tskd: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tskd`` console script.

    A ``TskdError`` (and an ``OSError`` a user can fix, such as a full disk) is printed as one
    line ``tskd: error: ...``; warnings as one line each. Ctrl-C asks the running stage to stop
    at its next step (a second Ctrl-C stops at once).

    Args:
        argv: The arguments after ``tskd``; None reads ``sys.argv``.

    Returns:
        The exit code: 0 on success, 2 for a user-fixable error (and ``check-data`` finding
        one), 130 when training was cancelled (Ctrl-C) or aborted (a second Ctrl-C).

    Raises:
        SystemExit: for ``--help`` and arguments the parser refuses (argparse, code 2).
    """
    args = build_parser().parse_args(argv)
    from tskd.engine import CancelToken

    cancel = CancelToken()
    progress = _TqdmProgress()

    def on_sigint(signum: int, frame: Any) -> None:
        if cancel.cancelled:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        print(job.stop_note(), file=sys.stderr)
        cancel.cancel()

    previous = signal.signal(signal.SIGINT, on_sigint)
    warnings.showwarning = _show_warning
    try:
        command = COMMANDS[args.command]
        return job.run(command, args, progress, cancel, command in (_cmd_stage, _cmd_run))
    except Cancelled as exc:
        progress.close()
        print(f"tskd: {exc} (run the same command with --resume)", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # the second Ctrl-C: no traceback, the checkpoints are atomic
        progress.close()
        print(f"\ntskd{job.rank_note()}: aborted (a training goes on with --resume from its "
              "last complete checkpoint, if it wrote one)", file=sys.stderr)
        return 130
    except TskdError as exc:
        progress.close()
        print(f"tskd: error{job.rank_note()}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a writer outside tskd.atomic: still one line for a full disk
        from tskd.atomic import user_fixable_error

        where = Path(exc.filename).parent if exc.filename else "the output folder"
        err = user_fixable_error(exc, where, None)
        if err is None:
            raise
        progress.close()
        print(f"tskd: error: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    sys.exit(main())
