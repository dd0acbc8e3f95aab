"""The TS-KD stages composed over one run folder.

Every stage is a function ``stage_x(cfg, progress=None, cancel=None, resume=False)`` that reads
its inputs from ``cfg`` and the run folder, writes its artefact into the run folder, and returns
a small JSON-able result. A stage whose artefact exists with the same fingerprint is skipped.
The CLI and the napari widgets call these functions and nothing deeper.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tskd.atomic import write_json
from tskd.config import RunConfig, TrainConfig, to_dict
from tskd.engine import CancelToken, ProgressCallback, clear_checkpoint, seed_everything
from tskd.errors import TskdError, TskdInputError
from tskd.pipeline.run_folder import (
    RunPaths,
    check_run_dir_inputs,
    checkpoint_inputs,
    files_fingerprint,
    fingerprint,
    mark_done,
    mark_started,
    prepare_run_dir,
    read_result,
    stage_done,
    writing,
)

__all__ = [
    "prepare_run_dir",
    "export_dataset",
    "stage_teacher",
    "stage_synthesize",
    "stage_distill",
    "stage_finetune_student",
    "stage_evaluate",
    "run_pipeline",
]


@dataclass
class LabelledData:
    """The labelled set, split, with what the models need to know about it."""

    train: list[Any]
    val: list[Any]
    num_classes: int
    class_names: list[str]
    fingerprint: str
    # median (height, width) of the labelled 2D images before resizing: the scale the models
    # learn at, recorded in the bundles as "train_image_shape" so prediction tiles at it
    image_shape: tuple[int, int] = (0, 0)
    label_map: Any = None  # tskd.data.label_policy.LabelMap: label values <-> class indices


def median_image_shape(samples: list[Any]) -> tuple[int, int]:
    """Median (height, width) in pixels of the samples' images (rounded to whole pixels)."""
    if not samples:
        raise TskdInputError("no labelled image: cannot tell the training image size")
    hw = np.array([s.image.shape[:2] for s in samples], dtype=np.float64)
    h, w = np.median(hw, axis=0)
    return int(round(h)), int(round(w))


def _writes(key: str, outputs: Callable[[RunPaths], list[Path]]) -> Callable[[Any], Any]:
    """Run a stage holding its run folder's lock, recording what it writes under ``outputs``
    in the folder's manifest (``tskd.pipeline.run_folder.writing``). A run folder that is,
    contains or lies inside a data folder of the config is refused first
    (``check_run_dir_inputs``)."""

    def decorate(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        @functools.wraps(fn)
        def wrapper(cfg: RunConfig, *args: Any, **kwargs: Any) -> dict[str, Any]:
            check_run_dir_inputs(cfg)  # before anything is created in the run folder
            paths = RunPaths(Path(cfg.run_dir))
            with writing(paths.root, key, outputs(paths), what=f"stage {key}"):
                return fn(cfg, *args, **kwargs)

        return wrapper

    return decorate


def _train_fp(train: TrainConfig) -> dict[str, Any]:
    """Training settings that change the result (not the device)."""
    d = to_dict(train)
    d.pop("device", None)
    return d


def _data_files(folder: str | Path | None, role: str) -> list[Path]:
    """The files a data folder of ``role`` (labelled, unlabelled, test) contributes, exactly
    as its reader reads them (``tskd.data.io.data_files``: never recursive, never label files as
    images)."""
    from tskd.data import io

    return io.data_files(folder, role)


def load_labelled_data(cfg: RunConfig) -> LabelledData:
    """Read and split the labelled set named in ``cfg.data.labelled``.

    Labels go through the one label policy (``tskd.data.label_policy``): ``data.classes`` or the
    dataset.json declare the classes, else the values seen do; ``data.ignore_label`` pixels are
    left out. Samples hold class indices; ``label_map`` turns them back into label values.
    """
    from tskd.data import dataset, io

    if not cfg.data.labelled:
        raise TskdInputError("no labelled data given (data.labelled / --data)")
    with io.pixel_budget(cfg.data.max_pixels):
        samples, label_map = io.read_labelled_set(
            cfg.data.labelled, classes=cfg.data.classes, ignore_label=cfg.data.ignore_label
        )
    train, val = dataset.split_train_val(samples, cfg.data.val_fraction, cfg.data.split_seed)
    parts: list[Any] = [
        files_fingerprint(_data_files(cfg.data.labelled, "labelled")),
        cfg.data.val_fraction,
        cfg.data.split_seed,
    ]
    if label_map.fingerprint() is not None:  # identity maps keep the fingerprints they had
        parts.append(label_map.fingerprint())
    return LabelledData(train, val, label_map.num_classes, list(label_map.names),
                        fingerprint(*parts), median_image_shape(samples), label_map)


def export_dataset(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    folder: str | Path,
    names: list[str] | None = None,
) -> Path:
    """Write images and label maps as ``folder/images`` + ``folder/labels`` (tif).

    This is how data that lives in napari layers becomes a labelled set the stages can read.
    """
    from tskd.data import io

    if len(images) != len(labels):
        raise TskdInputError(f"{len(images)} images but {len(labels)} label maps")
    if not images:
        raise TskdInputError("no labelled image to export")
    folder = Path(folder)
    names = names or [f"image_{i:04d}" for i in range(len(images))]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    for name, image, label in zip(names, images, labels, strict=True):
        io.write_image(folder / "images" / f"{name}.tif", image)
        io.write_label(folder / "labels" / f"{name}.tif", label)
    return folder


def _start(folder: Path, fp: str, seed: int | None, redo: bool = False) -> dict[str, Any] | None:
    """The common start of a stage that writes ``folder``.

    Returns the recorded result (with ``"skipped": True``) when ``folder`` already holds a
    finished stage of fingerprint ``fp`` and ``redo`` is False; otherwise marks the stage
    started, seeds every generator with ``seed`` (before any model is built: repeatable
    runs; None leaves them) and returns None.
    """
    if not redo and stage_done(folder, fp):
        return read_result(folder) | {"skipped": True}
    mark_started(folder)
    if seed is not None:
        seed_everything(seed)
    return None


def _finish(folder: Path, fp: str, result: dict[str, Any],
            checkpoints: Path | None = None) -> dict[str, Any]:
    """The common end: mark ``folder`` done with ``result``, drop the stage's checkpoint."""
    mark_done(folder, fp, result)
    if checkpoints is not None:
        clear_checkpoint(checkpoints)
    return result


def _teacher_fp(cfg: RunConfig, data_fp: str) -> str:
    return fingerprint("teacher", to_dict(cfg.teacher) | {"train": _train_fp(cfg.teacher.train)},
                       data_fp)


@_writes("teacher", lambda p: [p.teacher, p.checkpoints("teacher")])
def stage_teacher(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 1: adapt SAM to the task with LoRA; writes ``run/teacher``."""
    from tskd.training import teacher

    paths = RunPaths(Path(cfg.run_dir))
    data = load_labelled_data(cfg)
    fp = _teacher_fp(cfg, data.fingerprint)
    if (done := _start(paths.teacher, fp, cfg.teacher.train.seed)) is not None:
        return done
    t0 = time.perf_counter()
    metrics = teacher.finetune_teacher(
        cfg.teacher,
        data.train,
        data.val,
        data.num_classes,
        paths.teacher,
        progress=progress,
        cancel=cancel,
        resume=resume,
        checkpoint_dir=checkpoint_inputs(paths.checkpoints("teacher"), fp, resume),
        keep_checkpoint=True,  # cleared once the artefact is written
        class_names=data.class_names,
        augment=cfg.data.augment,
        train_image_shape=list(data.image_shape),
        label_meta=data.label_map.to_meta() if data.label_map is not None else None,
    )
    result = dict(metrics) | {"seconds": time.perf_counter() - t0}
    return _finish(paths.teacher, fp, result, paths.checkpoints("teacher"))


def _synth_fp(cfg: RunConfig, data_fp: str) -> str:
    synth = to_dict(cfg.synth)
    synth.pop("device", None)
    unl = files_fingerprint(_data_files(cfg.data.unlabelled, "unlabelled"))
    return fingerprint("synth", synth, data_fp, unl, cfg.data.image_size)


@_writes("synthesize", lambda p: [p.transfer, p.checkpoints("synthesize")])
def stage_synthesize(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 2: train a small DDPM on the task's images and sample synthetic transfer images."""
    paths = RunPaths(Path(cfg.run_dir))
    data = load_labelled_data(cfg)
    fp = _synth_fp(cfg, data.fingerprint)
    if (done := _start(paths.transfer, fp, None)) is not None:
        return done
    real = _unlabelled_images(cfg)
    images = [s.image for s in data.train] + real
    if cfg.synth.enabled and cfg.synth.n_images > 0:
        from tskd.training import synthesize

        seed_everything(cfg.synth.seed)  # before any model is built: repeatable runs
        report = synthesize.synthesize(
            images,
            cfg.synth,
            paths.synthetic,
            progress=progress,
            cancel=cancel,
            resume=resume,
            checkpoint_dir=checkpoint_inputs(paths.checkpoints("synthesize"), fp,
                                             resume),
            model_dir=paths.diffusion,
            out_size=cfg.data.image_size,
        )
        result = report.to_dict()
    else:
        result = {"n_generated": 0, "n_kept": 0, "n_dropped": 0, "share_dropped": 0.0, "paths": []}
    write_json(
        paths.transfer / "manifest.json",
        {
            "labelled_without_labels": [s.name for s in data.train],
            "unlabelled": [str(p) for p in _data_files(cfg.data.unlabelled, "unlabelled")],
            "synthetic": [str(p) for p in result.get("paths", [])],
        },
    )
    return _finish(paths.transfer, fp, result)


def _unlabelled_images(cfg: RunConfig) -> list[np.ndarray]:
    from tskd.data import io

    if not cfg.data.unlabelled:
        return []
    with io.pixel_budget(cfg.data.max_pixels):
        return [s.image for s in io.load_unlabelled(cfg.data.unlabelled)]


def _transfer_images(cfg: RunConfig, data: LabelledData) -> list[np.ndarray]:
    """Unlabelled real images + labelled images without labels + synthetic images."""
    from tskd.data import io

    paths = RunPaths(Path(cfg.run_dir))
    images = _unlabelled_images(cfg) + [s.image for s in data.train]
    if paths.synthetic.is_dir() and any(paths.synthetic.iterdir()):
        images += [s.image for s in io.load_unlabelled(paths.synthetic)]
    return images


def base_teacher_id(cfg: RunConfig) -> str:
    """The identity of the un-adapted SAM: its teacher-cache key and its part of the
    distillation fingerprint (16 hex digits).

    From the model type, the checkpoint's content (sha256; "builtin" for the packaged mini
    SAM, so a moved copy is the same teacher and a replaced file another) and the input size.
    Raises ``CheckpointError`` when ``teacher.checkpoint`` names no file.
    """
    from tskd.models import sam_checkpoint

    ckpt = cfg.teacher.checkpoint
    ckpt_id = sam_checkpoint.sha256_of(ckpt) if ckpt else "builtin"
    return fingerprint("base", cfg.teacher.model_type, ckpt_id, cfg.teacher.input_size)


def _base_teacher(cfg: RunConfig, num_classes: int) -> tuple[Any, str]:
    """The un-adapted SAM (task-agnostic baseline) and its id (``base_teacher_id``)."""
    from tskd.models.teacher import SemanticSam, build_sam

    sam = build_sam(cfg.teacher.model_type, cfg.teacher.checkpoint, cfg.teacher.input_size)
    return SemanticSam(sam, num_classes).eval(), base_teacher_id(cfg)


def _distill_fp(cfg: RunConfig, data: LabelledData) -> str:
    student_arch = to_dict(cfg.student)
    student_arch.pop("train")
    teacher_part = (base_teacher_id(cfg) if cfg.distill.task_agnostic
                    else _teacher_fp(cfg, data.fingerprint))
    return fingerprint(
        "distill",
        to_dict(cfg.distill) | {"train": _train_fp(cfg.distill.train)},
        student_arch,
        teacher_part,
        _synth_fp(cfg, data.fingerprint),
        cfg.data.image_size,
    )


@_writes("distill", lambda p: [p.distilled, p.cache, p.checkpoints("distill"),
                                p.reports / "distill_history.json"])
def stage_distill(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Stage 3: distil the teacher into the student on the transfer set (``run/distilled``)."""
    from tskd.inference import bundle
    from tskd.models import lora
    from tskd.models.student import Student
    from tskd.training import distill

    paths = RunPaths(Path(cfg.run_dir))
    data = load_labelled_data(cfg)
    fp = _distill_fp(cfg, data)
    if (done := _start(paths.distilled, fp, cfg.distill.train.seed)) is not None:
        return done
    if cfg.distill.task_agnostic:
        model, teacher_id = _base_teacher(cfg, data.num_classes)
    else:
        if not (paths.teacher / "meta.json").is_file():
            raise TskdError(f"no adapted teacher in {paths.teacher}; run finetune-teacher first")
        model = lora.load_teacher(paths.teacher)
        teacher_id = lora.teacher_id(paths.teacher)
    images = _transfer_images(cfg, data)
    seed_everything(cfg.distill.train.seed)  # the student's initialisation, whatever came before
    student = Student(cfg.student, data.num_classes, cfg.data.image_size)
    t0 = time.perf_counter()
    result = distill.distill(
        model,
        images,
        cfg.distill,
        student,
        teacher_input_size=cfg.teacher.input_size,
        teacher_id=teacher_id,
        cache_dir=paths.cache,
        progress=progress,
        cancel=cancel,
        resume=resume,
        checkpoint_dir=checkpoint_inputs(paths.checkpoints("distill"), fp, resume),
        keep_checkpoint=True,  # cleared once the artefact is written
    )
    summary = {
        "n_transfer_images": len(images),
        "final_losses": result.history[-1] if result.history else {},
        "seconds": time.perf_counter() - t0,
        "task_agnostic": cfg.distill.task_agnostic,
    }
    bundle.save_student(student, paths.distilled, _student_meta(cfg, data, summary))
    write_json(paths.reports / "distill_history.json", result.history)
    return _finish(paths.distilled, fp, summary, paths.checkpoints("distill"))


def _student_meta(cfg: RunConfig, data: LabelledData, extra: dict[str, Any]) -> dict[str, Any]:
    label_meta = data.label_map.to_meta() if data.label_map is not None else {}
    return {
        "student": to_dict(cfg.student),
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        **label_meta,
        "image_size": cfg.data.image_size,
        "train_image_shape": list(data.image_shape),
        **extra,
    }


@_writes("student", lambda p: [p.student, p.checkpoints("student"),
                                p.reports / "student_history.json"])
def stage_finetune_student(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    continue_from_last: bool = False,
) -> dict[str, Any]:
    """Stage 4: fine-tune the student on the labelled images; writes ``run/student``.

    ``continue_from_last`` starts from the last fine-tuned student (the annotate-train loop);
    otherwise from the distilled student, or from scratch when ``student.from_scratch``.
    """
    from tskd.inference import bundle
    from tskd.models.student import Student
    from tskd.training import finetune

    paths = RunPaths(Path(cfg.run_dir))
    data = load_labelled_data(cfg)
    init = "scratch" if cfg.student.from_scratch else _distill_fp(cfg, data)
    fp = fingerprint("student", to_dict(cfg.student) | {"train": _train_fp(cfg.student.train)},
                     init, data.fingerprint, cfg.data.image_size)
    if (done := _start(paths.student, fp, cfg.student.train.seed,
                       redo=continue_from_last)) is not None:
        return done
    if continue_from_last:
        if not (paths.student / "meta.json").is_file():
            raise TskdError(f"no student in {paths.student} to continue from; train one first")
        student, _ = bundle.load_student(paths.student)
    elif cfg.student.from_scratch:
        student = Student(cfg.student, data.num_classes, cfg.data.image_size)
    else:
        if not (paths.distilled / "meta.json").is_file():
            raise TskdError(
                f"no distilled student in {paths.distilled}; run distill first or set "
                "student.from_scratch"
            )
        student, _ = bundle.load_student(paths.distilled)
    t0 = time.perf_counter()
    result, metrics = finetune.finetune_student(
        student,
        data.train,
        data.val,
        cfg.student,
        cfg.data.image_size,
        progress=progress,
        cancel=cancel,
        resume=resume,
        checkpoint_dir=checkpoint_inputs(paths.checkpoints("student"), fp, resume),
        keep_checkpoint=True,  # cleared once the artefact is written
    )
    summary = {
        "init": "last" if continue_from_last else ("scratch" if cfg.student.from_scratch else
                                                   "distilled"),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "val": metrics,
        "seconds": time.perf_counter() - t0,
    }
    bundle.save_student(student, paths.student, _student_meta(cfg, data, summary))
    write_json(paths.reports / "student_history.json", result.history)
    return _finish(paths.student, fp, summary, paths.checkpoints("student"))


@_writes("evaluate", lambda p: [p.reports / f"eval_{m}" for m in ("student", "teacher",
                                                                  "distilled")])
def stage_evaluate(
    cfg: RunConfig, model: str = "student", test_folder: str | Path | None = None
) -> dict[str, Any]:
    """Segment the held-out test set with the run's student (or teacher) and score it."""
    from tskd.inference import metrics
    from tskd.inference.predict import evaluate_folder, segmenter_from_bundle

    paths = RunPaths(Path(cfg.run_dir))
    folder = test_folder or cfg.data.test
    if not folder:
        raise TskdInputError("no test set given (data.test / --test)")
    source = {"student": paths.student, "teacher": paths.teacher, "distilled": paths.distilled}
    if model not in source:
        raise TskdInputError(f"unknown model '{model}'; choose student, teacher or distilled")
    from tskd.data.label_policy import LabelMap

    segmenter, meta = segmenter_from_bundle(
        source[model], device=cfg.predict.device, tile_size=cfg.predict.tile_size,
        tile_overlap=cfg.predict.tile_overlap, batch_size=cfg.predict.batch_size,
        max_pixels=cfg.data.max_pixels,
    )
    label_map = LabelMap.from_meta(meta)
    if cfg.data.ignore_label is not None and label_map.ignore_label != cfg.data.ignore_label:
        label_map = LabelMap(label_map.values, label_map.names, label_map.declared,
                             cfg.data.ignore_label)
    report, ms = evaluate_folder(segmenter, folder, label_map)
    out = paths.reports / f"eval_{model}"
    metrics.write_report(report, out)
    return report.summary | {"ms_per_image": ms}


def _stages_for(cfg: RunConfig) -> list[str]:
    if cfg.student.from_scratch:
        return ["student"]
    if cfg.distill.task_agnostic:
        return ["synthesize", "distill", "student"]
    return ["teacher", "synthesize", "distill", "student"]


@_writes("pipeline", lambda p: [p.reports / "pipeline.json"])
def run_pipeline(
    cfg: RunConfig,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Every stage the config asks for, in order, skipping those already done.

    Holds the run folder's lock throughout (a second writer gets ``RunFolderError`` naming this
    process); ``overwrite`` as in ``prepare_run_dir``.
    """
    prepare_run_dir(cfg, overwrite=overwrite)
    funcs = {
        "teacher": stage_teacher,
        "synthesize": stage_synthesize,
        "distill": stage_distill,
        "student": stage_finetune_student,
    }
    results: dict[str, Any] = {}
    for name in _stages_for(cfg):
        results[name] = funcs[name](cfg, progress=progress, cancel=cancel, resume=resume)
    if cfg.data.test:
        results["evaluate"] = stage_evaluate(cfg)
    write_json(RunPaths(Path(cfg.run_dir)).reports / "pipeline.json", results)
    return results
