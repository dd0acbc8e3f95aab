"""The ``tskd`` command as one rank of a ``torchrun`` / ``accelerate launch`` job.

Every rank runs the same command line. The main process (rank 0) shows the progress bar,
writes every file and prints the result; the others train with it and wait for it
(``tskd.distributed``). The stage commands and ``run`` take part on every rank, stage by stage
(``tskd.distributed.as_rank``); ``pretrain-mini`` trains once on every rank; the other
commands run on the main process while the rest wait; ``demo`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tskd.errors import TskdError

TRAINS_ONCE = {"pretrain-mini"}  # commands that call the engine once, on every rank


class _Silent:
    """The progress of a rank that is not the main one: nothing shown."""

    def __call__(self, p: Any) -> None:
        pass

    def close(self) -> None:
        pass


def join(progress: Any) -> Any:
    """Join the job when launched on several processes; this rank's progress callback.

    Args:
        progress: the CLI's progress bar.

    Returns:
        ``progress`` on the main process (and in a single process), a silent one elsewhere.
    """
    from tskd import distributed

    if distributed.world_size() == 1:
        return progress
    import torch

    distributed.setup(cpu=not torch.cuda.is_available())
    distributed.follow_main()
    return progress if distributed.is_main() else _Silent()


def run(command: Callable[[Any, Any, Any], int], args: Any, progress: Any, cancel: Any,
        every_rank: bool) -> int:
    """Run one subcommand on this rank, joining the job first (see the module docstring).

    Args:
        command: the subcommand's ``command(args, progress, cancel) -> exit code``.
        args: its parsed arguments (``args.command`` names it, e.g. ``predict``).
        progress: the CLI's progress bar (shown by the main process only: ``join``).
        cancel: the run's ``CancelToken``.
        every_rank: the command handles a job itself (the stage commands and ``run``).

    Returns:
        The exit code (0 on a rank that only waited).

    Raises:
        TskdError: ``demo`` in a job, or from the command.
    """
    from tskd import distributed

    if args.command == "demo" and distributed.world_size() > 1:
        raise TskdError("tskd demo runs on one process; start it without torchrun or "
                        "accelerate launch")
    progress = join(progress)
    try:
        if not distributed.in_job() or every_rank:
            return command(args, progress, cancel)
        result = distributed.as_rank(lambda: {"code": command(args, progress, cancel)},
                                     f"tskd {args.command}", args.command in TRAINS_ONCE)
        return int(result.get("code", 0))
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Destroy this process's torch.distributed group, if any, before the interpreter exits.

    Left to the interpreter's exit, gloo's threads can abort the process ("terminate called
    without an active exception", exit -6) after the work is done; torch's documentation asks
    for ``destroy_process_group`` at the end of a job.
    """
    import sys

    dist = sys.modules.get("torch.distributed")  # never imports torch for a command without it
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def print_result(result: Any) -> None:
    """Print a command's JSON result, from the main process only.

    Args:
        result: JSON-able values (``tskd.apps.commands.print_json``).
    """
    from tskd import distributed
    from tskd.apps.commands import print_json

    if distributed.is_main():
        print_json(result)


def rank_note() -> str:
    """`` (rank N)`` on a rank of a job other than the main one, for its error lines; else ``""``.

    Returns:
        The note, with its leading space.
    """
    from tskd import distributed

    return f" (rank {distributed.rank()})" if distributed.following() else ""


def stop_note() -> str:
    """The line a first Ctrl-C prints, tagged with the rank on a job's other ranks.

    Returns:
        A new line, then "tskd: stopping at the next step (Ctrl-C again to abort now)", with
        " (rank N)" after "tskd" on rank N > 0 of a ``torchrun`` / ``accelerate launch`` job.
    """
    return f"\ntskd{rank_note()}: stopping at the next step (Ctrl-C again to abort now)"
