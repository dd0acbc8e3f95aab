"""The ``tskd`` subcommands that run no training stage.

They are predict, evaluate, check-data, export-onnx, make-sample-data and demo
(``pretrain-mini`` is ``tskd.apps.pretrain_command``).
Each is ``command(args, progress, cancel) -> exit code`` for ``tskd.apps.cli.main``, which
parses the arguments and turns a ``TskdError`` into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def set_if(obj: Any, name: str, value: Any) -> None:
    """Set ``obj.name`` to ``value`` unless ``value`` is None (an option not given).

    Args:
        obj: A config section (``TrainConfig``, ``TeacherConfig``, ...).
        name: The attribute to set.
        value: The option's value; None leaves the attribute as it is.
    """
    if value is not None:
        setattr(obj, name, value)


def print_json(result: Any) -> None:
    """Print a command's result as indented JSON on stdout.

    Args:
        result: JSON-able values; anything else (paths, numpy scalars) is printed as a string.
    """
    import json

    print(json.dumps(result, indent=1, default=str))


def predict(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Segment image files, stacks and folders with a model folder (``tskd predict``).

    Writes one label map per input image into ``args.output`` (values: the training labels'
    values, ``LabelMap.from_meta``).

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0.

    Raises:
        TskdInputError: an input is missing, no image is found, the output folder is, holds
            or lies inside an input folder or holds label maps without ``--overwrite``, or an
            image is unreadable or too large.
        CheckpointError: the model folder is missing or its files are invalid
            (``ModelMetaError`` for its ``meta.json``).
    """
    from tskd.data import outputs
    from tskd.data.files import list_images
    from tskd.errors import TskdInputError
    from tskd.inference.predict import predict_paths, segmenter_from_bundle

    outputs.check_not_input(outputs.check_output_folder(args.output),
                            [p for p in args.inputs if p.exists()])
    files: list[Path] = []
    for path in args.inputs:
        if path.is_dir():
            files += list_images(path)
        elif path.is_file():
            files.append(path)
        else:
            raise TskdInputError(f"input not found: {path}")
    if not files:
        raise TskdInputError("no images found in the given inputs")
    from tskd.data.label_map import LabelMap

    segmenter, meta = segmenter_from_bundle(args.model, device=args.device,
                                            tile_size=args.tile_size, max_pixels=args.max_pixels)
    label_map = LabelMap.from_meta(meta)  # predictions carry the training labels' values
    written = predict_paths(segmenter, files, args.output, overwrite=args.overwrite,
                            input_folders=[p for p in args.inputs if p.is_dir()],
                            log=lambda line: print(f"tskd: {line}", file=sys.stderr),
                            label_values=label_map.values)
    print(f"wrote {len(written)} label map(s) to {args.output}")
    return 0


def evaluate(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Score predicted label maps against ground truth (``tskd evaluate``).

    Dice, IoU and HD95 per image and class (``tskd.inference.metrics``), written as
    ``metrics.json`` and ``metrics.csv``; the summary is printed as JSON.

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0.

    Raises:
        TskdInputError: ``--pred``, ``--gt`` or ``--output`` is missing, the output folder is
            inside an input or holds the reports without ``--overwrite``, or the folders do not
            match.
    """
    from tskd.data import outputs
    from tskd.errors import TskdInputError
    from tskd.inference import metrics

    if not (args.pred and args.gt and args.output):
        raise TskdInputError("evaluate needs --pred, --gt and -o/--output")
    out = outputs.check_output_folder(args.output)
    outputs.check_not_input(out, [p for p in (args.pred, args.gt) if p.exists()],
                            allow_parent=True)
    outputs.check_replace([out / "metrics.json", out / "metrics.csv"], args.overwrite, out)
    report = metrics.evaluate_folders(
        args.pred, args.gt, num_classes=args.num_classes,
        spacing=tuple(args.spacing) if args.spacing else None, ignore_label=args.ignore_label,
    )
    metrics.write_report(report, args.output)
    print_json(report.summary)
    return 0


def check_data(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Check every image and label map of a labelled folder (``tskd check-data``).

    Prints the report (text, or JSON with ``--json``); the class map and ignore label come from
    ``--config`` when given, ``--ignore-label`` winning.

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        2 when the report holds an error, else 0.

    Raises:
        TskdInputError: the folder or the configuration file cannot be read.
    """
    from tskd.config import load_config
    from tskd.data import check

    classes, ignore = None, args.ignore_label
    if args.config:
        cfg = load_config(args.config)
        classes = cfg.data.classes
        if ignore is None:
            ignore = cfg.data.ignore_label
    report = check.check_folder(args.folder, classes=classes, ignore_label=ignore)
    print(check.report_json(report) if args.json else check.format_report(report))
    return 2 if report.n_errors else 0


def export(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Export a model folder to ONNX, checked against PyTorch (``tskd export-onnx``).

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0; the largest difference between the ONNX and PyTorch outputs is printed.

    Raises:
        TskdInputError: the output file exists without ``--overwrite`` or its folder is or
            lies inside the model folder.
        CheckpointError: the model folder is missing or its files are invalid
            (``ModelMetaError`` for its ``meta.json``).
        TskdError: the ONNX model's output differs from PyTorch's by more than 1e-3.
    """
    from tskd.data import outputs
    from tskd.inference import bundle

    outputs.check_not_input(args.output.parent, [args.model] if args.model.exists() else [],
                            what="output file's folder", allow_parent=True)
    outputs.check_replace([args.output], args.overwrite, args.output.parent)
    model, meta = bundle.load_bundle(args.model)
    diff = bundle.export_onnx(model, args.output, bundle.input_size(meta))
    print(f"wrote {args.output} (max |onnx - torch| = {diff:.2e})")
    return 0


def sample_data(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Write a procedural sample task as folders (``tskd make-sample-data``).

    Writes ``train/``, ``unlabelled/`` and ``test/`` under ``args.output``
    (``tskd.data.phantoms.write_task_folders``).

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0.

    Raises:
        TskdInputError: the task is unknown or the folders hold sample files without
            ``--overwrite``.
    """
    from tskd.data import outputs, phantoms
    from tskd.errors import TskdInputError

    if args.task not in phantoms.TASKS:
        raise TskdInputError(
            f"unknown task '{args.task}'; choose one of {', '.join(sorted(phantoms.TASKS))}"
        )
    outputs.check_task_folder(args.task, args.output, args.train, args.unlabelled, args.test,
                              overwrite=args.overwrite)
    phantoms.write_task_folders(args.task, args.output, args.train, args.unlabelled, args.test,
                                args.size, args.seed)
    print(f"wrote {args.task} to {args.output}/train, unlabelled, test")
    return 0


def demo(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Run the whole method on a procedural task or the user's data, with baselines (``tskd demo``).

    Prints the result table and the path of ``report.md`` (``tskd.apps.demo.run_demo``).

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0.

    Raises:
        TskdInputError: a setting or the output folder is refused.
        Cancelled: training was stopped (Ctrl-C).
    """
    from tskd.apps import demo

    result = demo.run_demo(
        task=args.task, n_labels=args.labels, seed=args.seed, budget=args.budget,
        teacher=args.teacher, checkpoint=args.checkpoint, out=args.out, device=args.device,
        progress=progress, cancel=cancel, check_pretraining=args.check_pretraining,
        teacher_size=args.teacher_size, data=args.data,
    )
    progress.close()
    print(result["table"])
    print(f"report: {args.out / 'report.md'}")
    return 0
