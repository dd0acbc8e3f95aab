"""``tskd pretrain-mini``: its options and its command.

Pretrains a miniature SAM teacher on procedural scenes (``tskd.training.pretrain``) into a user
folder; the package's built-in teacher is replaced only with ``--replace-packaged-weights``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from tskd.apps.commands import print_json, set_if

# the defaults, written out for a light start-up; tests/test_pretrain_cli.py checks them against
# tskd.training.pretrain_config.PretrainConfig and tskd.models.mini_archs.MINI_ARCHS
DEFAULT_STEPS = 1200
DEFAULT_BATCH = 8
ARCHS = ("basic", "mini", "small")
SCENES = ("basic", "broad", "broad-hdr")


def _at_least(low: int) -> Any:
    """An argparse type: an integer of at least ``low`` (else argparse's one-line error)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid integer value"
    return parse


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``pretrain-mini`` subcommand to ``tskd``'s subparsers.

    Args:
        sub: ``argparse``'s subparsers action of the ``tskd`` parser.

    Returns:
        The subcommand's parser.
    """
    p = sub.add_parser(
        "pretrain-mini", help="pretrain a miniature SAM teacher on procedural scenes (into "
        "--out; the built-in one only with --replace-packaged-weights)")
    p.add_argument("--steps", type=_at_least(1), help=f"optimiser steps in all (default "
                   f"{DEFAULT_STEPS}, in resumable epochs of 100)")
    p.add_argument("--batch-size", type=_at_least(1),
                   help=f"scenes per step (default {DEFAULT_BATCH})")
    p.add_argument("--image-size", type=_at_least(8), default=128,
                   help="pretraining resolution in pixels (default 128; the teacher adapts to "
                   "others by interpolation)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, scenes and prompts "
                   "(default 0)")
    p.add_argument("--arch", default="mini", choices=ARCHS,
                   help="architecture (default mini: 8-px patches and a full-resolution head; "
                   "basic: 16-px patches, no head; small: narrower and shallower than mini)")
    p.add_argument("--scenes", default="broad", choices=SCENES,
                   help="scene families (default broad; broad-hdr: 35 %% of broad in a CT-like "
                   "narrow band; basic: the first teacher's)")
    p.add_argument("--snapshot-every", type=_at_least(0), default=0, metavar="EPOCHS",
                   help="also keep the weights every EPOCHS epochs (of 100 steps) in snapshots/ "
                   "(default 0: none)")
    p.add_argument("--out", type=Path,
                   help="output folder (default: $TSKD_DATA_DIR/pretrain-mini, else the user "
                        "data folder's tskd/pretrain-mini)")
    p.add_argument("--replace-packaged-weights", action="store_true",
                   help="maintainers: write into the package's built-in teacher weights")
    p.add_argument("--overwrite", action="store_true",
                   help="replace mini_sam.safetensors/.json already in --out")
    p.add_argument("--resume", action="store_true",
                   help="go on from the checkpoint of an interrupted run into the same --out, "
                   "with the same options")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default "
                   "auto)")
    return p


def pretrain(args: argparse.Namespace, progress: Any, cancel: Any) -> int:
    """Pretrain a miniature SAM teacher (``tskd pretrain-mini``).

    Builds a ``PretrainConfig`` from the arguments (``--steps`` optimiser steps in all, run in
    pieces of ``steps_per_checkpoint``) and runs ``tskd.training.pretrain.pretrain_mini``.

    Args:
        args: The parsed arguments of the subcommand (``tskd.apps.cli.build_parser``).
        progress: Receives the engine's ``Progress`` reports (the CLI's tqdm bar).
        cancel: The run's ``CancelToken`` (set by Ctrl-C).

    Returns:
        0; the result (output files, steps, losses) is printed as JSON.

    Raises:
        TskdInputError: both ``--out`` and ``--replace-packaged-weights`` are given, the
            output folder holds weights without ``--overwrite``, or ``--resume`` finds a
            finished run or a checkpoint of other options (``pretrain_mini``).
        Cancelled: training was stopped (Ctrl-C) after writing a checkpoint.
    """
    from tskd.engine import RunControl
    from tskd.errors import TskdInputError
    from tskd.models.mini_archs import mini_arch
    from tskd.training import pretrain
    from tskd.training.pretrain_config import PretrainConfig

    if args.out and args.replace_packaged_weights:
        raise TskdInputError("give either --out or --replace-packaged-weights, not both")

    cfg = PretrainConfig(image_size=args.image_size, scenes=args.scenes)
    if args.steps is not None:
        cfg.train.set_steps(args.steps, cfg.steps_per_checkpoint)
    set_if(cfg.train, "batch_size", args.batch_size)
    cfg.train.seed = args.seed
    cfg.train.device = args.device
    packaged = bool(args.replace_packaged_weights)
    out = pretrain.packaged_weights_dir() if packaged else (
        args.out or pretrain.default_output_dir())
    result = pretrain.pretrain_mini(
        cfg, out, RunControl(progress, cancel, args.resume,
                             pretrain.checkpoint_dir_for(out, packaged)),
        command=shlex.join(["tskd", *sys.argv[1:]]),  # quoted: pasteable, parseable
        overwrite=args.overwrite, replace_packaged=packaged,
        arch=mini_arch(args.arch, args.image_size), snapshot_every=args.snapshot_every,
    )
    progress.close()
    print_json(result)
    return 0
