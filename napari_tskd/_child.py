"""What runs inside the training process the GUI starts (spawn context): no Qt, no napari.

The parent sends a job (steps that name stages of ``tskd.pipeline.registry.STAGES`` by
``Stage.name``, or ``"pipeline"`` for ``run_pipeline``; the run configuration as a plain dict;
options) and two channels: a queue for messages back and an Event that cancels. Every message
is a plain dict, so the GUI can read it without importing torch. Kinds:
``note`` (what it does before training: importing torch, loading data), ``progress`` (the
fields of ``tskd.engine.Progress``), ``warning``, ``stage_done``, and exactly
one final ``done`` / ``cancelled`` / ``error``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

PIPELINE = "pipeline"  # the job step that runs every stage (tskd.pipeline.registry.run_pipeline)
PROGRESS_INTERVAL_S = 0.05  # at most ~20 reports a second reach the GUI (the last always does)


def resolve(target: str) -> Callable[..., Any]:
    """The function of a job step ``target``: a stage's ``Stage.name`` (its function in
    ``tskd.pipeline.registry.STAGES``), ``"pipeline"`` (``run_pipeline``), or an explicit
    ``"module:function"`` (tools and the tests' stand-in stages).

    Raises:
        TskdInputError: ``target`` is no stage name and no ``"module:function"``.
    """
    from tskd.pipeline import registry

    if target == PIPELINE:
        return registry.run_pipeline
    module, _, name = target.partition(":")
    if not name:
        return registry.stage(target).function
    return getattr(importlib.import_module(module), name)


def _is_stage(target: str) -> bool:
    return target != PIPELINE and ":" not in target


class _Reporter:
    """Progress callback that forwards plain dicts, throttled, to the parent."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.last = 0.0
        self.stage = ""

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        final = p.step >= p.total
        has_preview = getattr(p, "preview", None) is not None  # rare (seconds apart): always sent
        if (p.stage == self.stage and not final and not has_preview
                and now - self.last < PROGRESS_INTERVAL_S):
            return
        self.last, self.stage = now, p.stage
        data = dataclasses.asdict(p) if dataclasses.is_dataclass(p) else dict(vars(p))
        self.queue.put({"kind": "progress", **data})


def run_job(job: dict[str, Any], queue: Any, cancel_event: Any) -> None:
    """Entry point of the child process: run each step of ``job`` and report back."""
    for key, value in job.get("env", {}).items():
        os.environ[key] = value
    if job.get("nice") and hasattr(os, "nice"):
        # the viewer's thread wins a contended core: training loses little, the GUI stays smooth
        os.nice(int(job["nice"]))
    try:
        note(queue, "importing torch ...")
        import torch  # noqa: F401  (seconds: named apart from the backend's own imports)

        note(queue, "importing the tskd backend ...")
        from tskd.config import RunConfig, from_dict
        from tskd.engine import CancelToken
        from tskd.errors import Cancelled, TskdError, TskdWarning
        from tskd.pipeline.context import StageContext
    except Exception as exc:  # broken installation: still tell the GUI
        queue.put({"kind": "error", "message": f"cannot import the tskd backend: {exc}",
                   "user": False, "traceback": traceback.format_exc()})
        return

    def show_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if issubclass(category, TskdWarning):
            queue.put({"kind": "warning", "message": str(message)})

    warnings.showwarning = show_warning
    reporter = _Reporter(queue)
    cancel = CancelToken(cancel_event)
    results: dict[str, Any] = {}
    try:
        cfg = from_dict(RunConfig, job["config"])
        ctx = StageContext(cfg)  # the job's stages share one read of the labelled set
        for step in job["steps"]:
            target = step["target"]
            note(queue, "loading data and model for each stage ..." if target == PIPELINE
                 else f"loading data and model for {target} ...")
            fn = resolve(step["target"])
            run = ctx if _is_stage(step["target"]) else cfg
            result = fn(run, progress=reporter, cancel=cancel, **step.get("kwargs", {}))
            result = _plain(result)
            results[step["target"]] = result
            queue.put({"kind": "stage_done", "stage": step["target"], "result": result})
        queue.put({"kind": "done", "results": results})
    except Cancelled as exc:
        queue.put({"kind": "cancelled", "message": str(exc)})
    except TskdError as exc:
        queue.put({"kind": "error", "message": str(exc), "user": True})
    except BaseException as exc:  # a bug: keep the traceback for the terminal
        queue.put({"kind": "error", "message": f"{type(exc).__name__}: {exc}", "user": False,
                   "traceback": traceback.format_exc()})


def note(queue: Any, message: str) -> None:
    """Tell the GUI what the child does before training starts (a ``note`` message).

    Args:
        queue: the channel to the GUI.
        message: one short line, e.g. ``"importing torch ..."``.
    """
    queue.put({"kind": "note", "message": message})


def _plain(value: Any) -> Any:
    """A JSON-able copy (anything odd becomes a string), so the message always unpickles."""
    return json.loads(json.dumps(value, default=str))
