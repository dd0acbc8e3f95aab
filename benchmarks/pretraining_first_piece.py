"""Re-run the first resumable piece of a recorded pretraining and compare it with the record.

    python benchmarks/pretraining_first_piece.py \\
        benchmarks/results/pretraining_runs/small_hdr.json --threads 2

A full ``tskd pretrain-mini`` run takes 35-75 min on two cores; its first piece (one epoch of
100 optimiser steps, planned over the whole run's schedule) takes 2-5 min. This runs the
record's own command (``info.command``) into a new temporary folder in place of its ``--out``,
stops it with Ctrl-C once the first checkpoint is written, and compares that epoch's mean loss
with the record's first history entry. The same code on the same CPU and thread count gives the
same loss bit for bit. On other CPU features the scenes themselves differ slightly (NumPy's
SIMD code paths; the report's ``machine``, and the record's ``info.machine`` since it was kept):
``NPY_DISABLE_CPU_FEATURES`` set before the check switches paths off, to match an older CPU.
Prints, and with ``--out`` writes, a JSON report; exit 1 when the losses differ by more than
``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tskd.training.pretrain_record import machine


def first_piece_command(command: str, out: Path) -> tuple[list[str], dict[str, str]]:
    """The record's command as an argument list with ``--out`` replaced, and its env settings.

    Args:
        command: ``info.command`` of a ``mini_sam.json``, e.g. ``OMP_NUM_THREADS=1 tskd
            pretrain-mini --steps 1600 --out runs/x``.
        out: The folder to write into instead.

    Returns:
        ``(argv after "tskd", {variable: value})``.

    Raises:
        ValueError: the command is not a ``tskd pretrain-mini`` command.
    """
    words = shlex.split(command)
    env = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    if words[:2] != ["tskd", "pretrain-mini"]:
        raise ValueError(f"not a `tskd pretrain-mini` command: {command!r}")
    args = words[1:]
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    return [*args, "--out", str(out)], env


def run_first_piece(argv: list[str], env: dict[str, str], out: Path,
                    timeout: float) -> dict[str, Any]:
    """Run ``tskd`` with ``argv`` until its first checkpoint, then stop it (SIGINT).

    Returns:
        The first history entry of the checkpoint (its ``loss`` and parts) and the seconds.

    Raises:
        RuntimeError: no checkpoint within ``timeout`` seconds, or the command failed.
    """
    state = out / "checkpoints" / "ckpt" / "state.json"
    t0 = time.perf_counter()
    log = out.parent / "stderr.txt"  # a file, not a pipe: the progress bar never blocks on it
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tskd", *argv], env=os.environ | env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not (state.is_file() and json.loads(state.read_text())["history"]):
            if proc.poll() is not None:
                raise RuntimeError(f"the command ended first: {log.read_text()[-2000:]}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"no checkpoint after {timeout:.0f} s")
            time.sleep(2)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=300)
    return {"first_epoch": json.loads(state.read_text())["history"][0],
            "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("record", type=Path, help="a pretraining's mini_sam.json")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS (default: the command's, else "
                   "the record's info.machine.torch_threads, else the environment's)")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest loss difference that passes (default 1e-3; exit 1 above)")
    p.add_argument("--timeout", type=float, default=1800,
                   help="seconds to wait for the first checkpoint (default 1800)")
    p.add_argument("--out", type=Path, help="also write the report here (JSON)")
    args = p.parse_args()
    info = json.loads(args.record.read_text())["info"]
    with tempfile.TemporaryDirectory(prefix="tskd-first-piece-") as tmp:
        argv, env = first_piece_command(info["command"], Path(tmp) / "out")
        threads = args.threads or (info.get("machine") or {}).get("torch_threads")
        if threads and (args.threads or "OMP_NUM_THREADS" not in env):
            env["OMP_NUM_THREADS"] = str(threads)
        got = run_first_piece(argv, env, Path(tmp) / "out", args.timeout)
    recorded = info["history"][0]["loss"]
    loss = got["first_epoch"]["loss"]
    report = {"record": str(args.record), "command": info["command"], "env": env,
              "machine": machine() | {"torch_threads": env.get("OMP_NUM_THREADS")},
              "recorded_machine": info.get("machine"), "recorded_loss": recorded, "loss": loss,
              "difference": loss - recorded, "seconds": got["seconds"],
              "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    raise SystemExit(0 if abs(report["difference"]) <= args.tolerance else 1)


if __name__ == "__main__":
    main()
