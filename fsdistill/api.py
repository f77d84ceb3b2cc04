"""The library's verbs as plain functions: typed config in, results out. No printing, no ``sys.exit``.

``adapt`` (TransferFSS) and ``distill`` (DistillFSS) train from a support folder and write artifacts into a run
directory; ``predict`` and ``evaluate`` load artifacts. The CLI (``fsdistill.cli``) only parses options and calls
these.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import yaml

from fsdistill.checkpoint import WEIGHTS_FILE, config_sha256, is_artifact, recover_artifact, resolve_model_dir
from fsdistill.config import AdaptCfg, DistillCfg, ModelCfg
from fsdistill.data.discover import SupportIndex, discover
from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.data.support_tensors import load_support_tensors
from fsdistill.errors import CheckpointError, ConfigError, DataError, FsdistillError
from fsdistill.infer.predictor import PredictResult, Predictor, Runner, list_images, predict_files
from fsdistill.metrics import ConfusionMatrix
from fsdistill.models.build import (
    build_student,
    build_teacher,
    load_model,
    save_model,
    stored_parameters,
)
from fsdistill.models.teacher import DCAMATeacher
from fsdistill.runtime import ensure_writable_dir, resolve_device, seed_everything, write_atomic
from fsdistill.train.episodes import FeatureCache
from fsdistill.train.fit import TrainStats, train
from fsdistill.train.support_check import SupportCheck, check_supports

if TYPE_CHECKING:
    from fsdistill.export import ExportResult
    from fsdistill.profile import ProfileCfg, ProfileResult

__all__ = [
    "RunResult",
    "EvalResult",
    "new_run_dir",
    "check_run_dir",
    "pixel_sha256",
    "adapt",
    "distill",
    "evaluate",
    "confusion_on_folder",
    "predict",
    "profile",
    "export",
    "resolve_onnx_file",
]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a training command produced."""

    run_dir: Path
    teacher_dir: Path | None = None
    student_dir: Path | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    check: SupportCheck | None = None  # distill: the per-class check on the support folder
    student_parameters: int | None = None  # distill: numbers in the student artifact (weights and buffers)
    student_mb: float | None = None  # distill: size of its model.safetensors in MiB


def new_run_dir(out: Path | None) -> Path:
    """``out`` if given (created), else ``runs/<date>-<time>`` made unique: a run never overwrites another."""
    if out is not None:
        return ensure_writable_dir(Path(out), "--out")
    base = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return ensure_writable_dir(candidate, "--out")


def _recorded_command(run_dir: Path) -> str | None:
    """The ``command:`` of a run folder's config.resolved.yaml, or None when it has none that can be read."""
    try:
        data = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return data.get("command") if isinstance(data, dict) else None


def _is_artifact_at(model: Path, directory: Path) -> bool:
    """Whether the teacher ``model`` names (artifact or run folder) is ``directory``."""
    try:
        return resolve_model_dir(model, "teacher").resolve() == directory.resolve()
    except FsdistillError:
        return False


def check_run_dir(out: Path | None, command: str, teacher: Path | None = None, overwrite: bool = False) -> None:
    """Refuse to train into a folder that holds a finished run, unless ``overwrite``; called before any training.

    A finished run is one with a complete ``teacher/`` or ``student/`` artifact that this run would replace or
    leave beside a model it does not belong to (``distill --out`` on a 3-class run silently made it a binary one).
    Allowed without ``overwrite``: a missing or empty folder, a killed run (no complete artifact, or a ``distill``
    killed after saving its teacher: the same command finishes it), and ``distill --teacher OUT/teacher --out OUT``
    (distilling an adapt run's teacher into that run replaces nothing).

    Raises:
        DataError: the folder holds a finished run (the message asks for --overwrite or another --out).
    """
    if out is None or overwrite or not Path(out).is_dir():
        return
    out = Path(out)
    finished = [name for name in ("teacher", "student") if is_artifact(recover_artifact(out / name))]
    if not finished:
        return
    if command == "distill" and "student" not in finished:
        if teacher is not None and _is_artifact_at(teacher, out / "teacher"):
            return
        if teacher is None and _recorded_command(out) == "distill":
            return
    raise DataError(
        f"{out} already holds a run ({', '.join(name + '/' for name in finished)}); pass --overwrite to replace it, or "
        "choose a new --out (a run's config.resolved.yaml names that run as its out:)."
    )


def _drop_stale(run_dir: Path, keep: set[str]) -> None:
    """Remove what a replaced run left in ``run_dir`` and this run did not write: its ``teacher/`` or ``student/``
    (which would be paired with the new model) and ``student.onnx`` (exported from the old student). Other files
    are the user's and stay."""
    for name in ("teacher", "student", "student.onnx"):
        path = run_dir / name
        if name in keep or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_run_config(run_dir: Path, cfg: AdaptCfg | DistillCfg, command: str) -> None:
    data = {"command": command, **json.loads(cfg.model_dump_json())}
    write_atomic(run_dir / "config.resolved.yaml", yaml.safe_dump(data, sort_keys=False))


def pixel_sha256(image: np.ndarray) -> str:
    """sha256 of an H×W×3 uint8 image's decoded pixels (its shape included): the same for a renamed or
    losslessly re-encoded copy of the file, different for any other image whatever its name."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def _support_info(index: SupportIndex) -> dict[str, Any]:
    """What an artifact records of its support folder; ``images``: each support's size and :func:`pixel_sha256`,
    by which ``evaluate`` recognises support images (leakage) by content, not by file name."""
    images = []
    for i, sample in enumerate(index.samples):
        pixels = index.load_image(i)
        images.append({"key": sample.key, "size": [pixels.shape[1], pixels.shape[0]], "sha256": pixel_sha256(pixels)})
    return {
        "root": str(index.root),
        "layout": index.layout,
        "count": len(index),
        "keys": [s.key for s in index.samples],
        "fingerprint": index.fingerprint(),
        "images": images,
    }


def _leaked_supports(support: dict[str, Any], index: SupportIndex) -> list[str]:
    """Images of ``index`` that are support images of the model, as ``KEY (support KEY)``.

    Decided by the hash of the decoded RGB pixels at original size that training recorded (``support.images``):
    hashing the image as the model sees it (resized to the input size) would also work but ties the check to the
    resize code and needs the teacher's stored tensors, which a student artifact does not have; the original
    pixels are what a copied file keeps. Only images of a support image's size are decoded for it (the size comes
    from the header). Artifacts from before the hashes fall back to the old rule, matching file names.
    """
    recorded = support.get("images")
    if recorded is None:
        keys = set(support.get("keys", []))
        return [f"{s.key} (support {s.key})" for s in index.samples if s.key in keys]
    from fsdistill.data.images import image_size

    by_size: dict[tuple[int, int], dict[str, str]] = {}
    for entry in recorded:
        by_size.setdefault(tuple(entry["size"]), {})[entry["sha256"]] = entry["key"]
    leaked = []
    for i, sample in enumerate(index.samples):
        candidates = by_size.get(image_size(sample.image_path))
        if candidates:
            match = candidates.get(pixel_sha256(index.load_image(i)))
            if match is not None:
                leaked.append(f"{sample.key} (support {match})")
    return leaked


def _stats_dict(stats: TrainStats) -> dict[str, Any]:
    return {
        "steps": stats.steps,
        "episodes": stats.episodes,
        "seconds": round(stats.seconds, 2),
        "stop_reason": stats.stop_reason,
        "class_queries": stats.class_queries,
        "final_losses": {k: stats.final(k) for k in (stats.history[-1] if stats.history else {})},
    }


def _prepare(cfg: AdaptCfg | DistillCfg, quiet: bool):
    """Discover and load the support folder, pick the device and seed everything."""
    index = discover(cfg.support)
    num_classes = len(index.class_names) - 1
    if num_classes < 1:
        raise DataError(f"{cfg.support} declares no foreground class; masks need at least one labelled class.")
    unused = index.unused_classes()
    if unused:
        # A class without a pixel is only ever taught "absent": the model would carry it and never predict it.
        raise DataError(
            f"Class {unused[0]!r} ({index.names_source}) has no pixel in any mask of {cfg.support}"
            f"{f' (nor do {len(unused) - 1} more)' if len(unused) > 1 else ''}, so it cannot be learned; add "
            f"images that show it or {index.drop_class_hint()}."
        )
    device = resolve_device(cfg.device)
    seed_everything(cfg.train.seed)
    support = load_support_tensors(index, cfg.model.size)
    if not bool(((support.masks > 0) & (support.masks != IGNORE_INDEX)).any()):
        raise DataError(
            f"All {len(index)} masks in {cfg.support} are empty: no pixel has a foreground class, so there is "
            "nothing to learn; check the mask values (binary masks need 255 or 1 for the object) and the names file."
        )
    return cfg, index, num_classes, device, support


def _augment(cfg: AdaptCfg | DistillCfg, count: int) -> bool:
    """Flip views when asked, or by default only for a single support image (episodes need a second view)."""
    return cfg.train.augment if cfg.train.augment is not None else count == 1


def _artifact_fields(cfg: AdaptCfg | DistillCfg, index: SupportIndex, stats: TrainStats) -> dict[str, Any]:
    """What every artifact of a run records besides its weights: classes, input size, config, supports, training."""
    return {
        "class_names": index.class_names,
        "palette": index.palette,
        "train_config": json.loads(cfg.model_dump_json()),
        "support_info": _support_info(index),
        "training": _stats_dict(stats),
    }


def adapt(cfg: AdaptCfg, quiet: bool = False, overwrite: bool = False) -> RunResult:
    """TransferFSS: fine-tune the DCAMA teacher on the support folder; writes ``RUN/teacher/``.

    ``cfg.train.steps == 0`` writes the untuned teacher (the training-free baseline) as a normal artifact.
    ``overwrite``: replace a finished run at ``cfg.out`` (see :func:`check_run_dir`); its student goes with it.
    """
    check_run_dir(cfg.out, "adapt", overwrite=overwrite)
    cfg, index, num_classes, device, support = _prepare(cfg, quiet)
    teacher, teacher_cfg = _new_teacher(cfg, num_classes)
    teacher = teacher.to(device)
    if cfg.train.augment is False and len(index) == 1 and cfg.train.steps != 0:
        raise ConfigError("One support image needs augmentation to build episodes; drop --no-augment or add images.")
    run_dir = new_run_dir(cfg.out)
    _write_run_config(run_dir, cfg, "adapt")
    cache = FeatureCache(teacher, support, device, _augment(cfg, len(index)))
    stats = train(teacher, cache, cfg.train, quiet=quiet)
    teacher_dir = save_model(
        run_dir / "teacher",
        teacher,
        teacher_cfg,
        support_images=support.images,
        support_masks=support.masks,
        **_artifact_fields(cfg, index, stats),
    )
    _drop_stale(run_dir, keep={"teacher"})
    return RunResult(run_dir, teacher_dir=teacher_dir, stats=_stats_dict(stats))


def _new_teacher(cfg: AdaptCfg | DistillCfg, num_classes: int) -> tuple[DCAMATeacher, ModelCfg]:
    """A fresh teacher (official weights imported when ``cfg.model.teacher_weights`` is set) and the ModelCfg it
    was built from, which its artifact stores."""
    if cfg.model.teacher_weights is None:
        return build_teacher(cfg.model, num_classes), cfg.model
    from fsdistill.models.reference_import import import_reference_weights, published_model_cfg

    model_cfg = published_model_cfg(cfg.model)
    teacher = build_teacher(model_cfg, num_classes)
    import_reference_weights(teacher, cfg.model.teacher_weights)
    return teacher, model_cfg


def distill(cfg: DistillCfg, quiet: bool = False, overwrite: bool = False) -> RunResult:
    """DistillFSS: train the support-free ConvDist student (jointly with the teacher unless ``cfg.teacher``).

    Writes ``RUN/student/`` and, when the teacher was adapted here, ``RUN/teacher/``. ``overwrite``: replace a
    finished run at ``cfg.out`` (see :func:`check_run_dir`).
    """
    check_run_dir(cfg.out, "distill", cfg.teacher, overwrite)
    cfg, index, num_classes, device, support = _prepare(cfg, quiet)
    if cfg.train.augment is False and len(index) == 1 and cfg.train.steps != 0:  # as in adapt: no query besides it
        raise ConfigError("One support image needs augmentation to build episodes; drop --no-augment or add images.")
    if cfg.teacher is not None:
        loaded = load_model(cfg.teacher, kind="teacher")
        if loaded.class_names != index.class_names:
            raise DataError(
                f"The teacher {loaded.path} knows classes {loaded.class_names} but {cfg.support} has "
                f"{index.class_names}; distill with the support folder the teacher was adapted on."
            )
        if loaded.size != cfg.model.size:
            raise ConfigError(f"The teacher {loaded.path} runs at --size {loaded.size}; pass --size {loaded.size}.")
        teacher: DCAMATeacher = loaded.model.to(device)
        teacher_cfg = loaded.model_cfg
    else:
        if cfg.freeze_teacher:
            raise ConfigError("--freeze-teacher needs an adapted teacher: pass --teacher RUN/teacher.")
        teacher, teacher_cfg = _new_teacher(cfg, num_classes)
        teacher = teacher.to(device)
    run_dir = new_run_dir(cfg.out)
    _write_run_config(run_dir, cfg, "distill")
    cache = FeatureCache(teacher, support, device, _augment(cfg, len(index)))
    student = build_student(teacher, cfg.model.student_width).to(device)
    # The student is the teacher's architecture (an adapted teacher's, whatever this run's --decoder says) with
    # this run's ConvDist width.
    student_cfg = teacher_cfg.model_copy(update={"student_width": cfg.model.student_width})
    student.set_class_prior(teacher.class_prior(cache.support[0], list(range(num_classes))))
    stats = train(teacher, cache, cfg.train, student=student, freeze_teacher=cfg.freeze_teacher, quiet=quiet)
    check = check_supports(teacher, student, cache, index.class_names) if cfg.train.steps != 0 else None
    common = _artifact_fields(cfg, index, stats)
    if check is not None:
        common["training"]["support_check"] = check.to_dict()
    teacher_dir = None
    if cfg.teacher is None:
        teacher_dir = save_model(
            run_dir / "teacher",
            teacher,
            teacher_cfg,
            support_images=support.images,
            support_masks=support.masks,
            **common,
        )
    student_dir = save_model(run_dir / "student", student, student_cfg, **common)
    own_teacher = cfg.teacher is None or _is_artifact_at(cfg.teacher, run_dir / "teacher")
    _drop_stale(run_dir, keep={"student", "teacher"} if own_teacher else {"student"})
    return RunResult(
        run_dir,
        teacher_dir=teacher_dir,
        student_dir=student_dir,
        stats=common["training"],
        check=check,
        student_parameters=stored_parameters(student.state_dict()),
        student_mb=(student_dir / WEIGHTS_FILE).stat().st_size / 2**20,
    )


@dataclass
class EvalResult:
    """Dataset-level IoU per class (accumulated over all images, at original resolution) and fg mIoU."""

    model: str
    images: int
    iou: dict[str, float]
    miou: float
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "images": self.images, "iou": self.iou, "miou": self.miou}


def evaluate(
    data_dir: Path,
    model: Path | None = None,
    teacher: bool = False,
    device: str = "auto",
    batch_size: int = 8,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate a run's student (or ``teacher=True``: its teacher with the stored supports) on a labelled folder.

    ``on_total``: called once with the number of labelled images found; ``on_progress``: with 1 per image done.

    ``workers`` None: decode processes as in :func:`predict` (2 on a GPU; on the CPU none up to 2 cores).

    Raises:
        DataError: images with the pixels of the model's support images (evaluation leakage, see
            :func:`_leaked_supports`), or a folder whose class names differ from the model's.
    """
    loaded = load_model(model, kind="teacher" if teacher else None) if model is not None or teacher else load_model(None)
    index = discover(data_dir)
    if on_total is not None:
        on_total(len(index))
    if index.class_names != loaded.class_names:
        raise DataError(
            f"{data_dir} has classes {index.class_names} but the model {loaded.path} predicts {loaded.class_names}; "
            "evaluate on a folder labelled with the same classes (same names file)."
        )
    leaked = sorted(_leaked_supports(loaded.config.get("support", {}), index))
    if leaked:
        shown = ", ".join(leaked[:3]) + (", …" if len(leaked) > 3 else "")
        raise DataError(
            f"{len(leaked)} image(s) of {data_dir} are support images the model was trained on ({shown}); evaluate "
            "on held-out images only."
        )
    predictor = Predictor(loaded, resolve_device(device))
    if workers is None:
        workers = _decode_workers(predictor.on_gpu)
    matrix, seconds = confusion_on_folder(predictor, index, batch_size, workers, on_progress)
    if not matrix.matrix[1:].any():
        raise DataError(
            f"All {len(index)} masks in {data_dir} are empty: no pixel has a foreground class, so IoU is undefined; "
            "check the mask values (binary masks need 255 or 1 for the object) and the names file."
        )
    ious = matrix.iou()
    return EvalResult(
        model=str(loaded.path),
        images=len(index),
        iou={name: (None if np.isnan(v) else float(v)) for name, v in zip(loaded.class_names, ious)},
        miou=matrix.miou(),
        seconds=seconds,
    )


def confusion_on_folder(
    runner: Runner,
    index: SupportIndex,
    batch_size: int = 8,
    workers: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[ConfusionMatrix, float]:
    """``runner``'s masks against a labelled folder's, at each image's original resolution: (confusion matrix,
    seconds taken). Any :class:`Runner` (a model, a baseline) is scored the same way; an unreadable image raises
    DataError."""
    matrix = ConfusionMatrix(len(index.class_names))
    start = time.perf_counter()
    # Ground-truth masks are read in the main process while workers decode the images for the model.
    for i, prediction, error in runner.iterate([s.image_path for s in index.samples], batch_size, workers):
        if error is not None:
            raise DataError(error)
        matrix.update(index.load_mask(i, size=(prediction.shape[1], prediction.shape[0])), prediction)
        if on_progress:
            on_progress(1)
    return matrix, time.perf_counter() - start


PREDICT_BACKENDS = ("torch", "onnx")


def predict(
    inputs: list[Path],
    out_dir: Path,
    model: Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    overlay: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    backend: str | None = None,
    on_model: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> PredictResult:
    """Support-free batch inference with a student: masks at each image's original size (see predict_files).

    ``batch_size`` None: 8 on a GPU, 2 on the CPU; ``workers`` None: decode processes, 2 on a GPU; on the CPU none
    up to 2 cores (images are decoded between batches), else one per four cores, at most 2.

    ``backend``: ``torch`` runs the artifact with PyTorch; ``onnx`` runs an exported ``.onnx`` file with
    onnxruntime only (``model`` is the file, or a run/artifact folder whose ``student.onnx`` sits beside the
    artifact). None: ``onnx`` when ``model`` is an ``.onnx`` file, else ``torch``. Both write the same files.

    ``on_model``: called once with the model's path as soon as it is loaded, before any image is predicted (so a
    caller can say which run ``model`` None picked); ``on_total``: once with the number of images found;
    ``on_progress``: with 1 per image done or skipped.

    Raises:
        ConfigError: an unknown backend, or an ``.onnx`` model with the torch backend.
        DependencyError: the onnx backend without onnxruntime installed.
    """
    runner = _runner(model, device, backend)
    if on_model is not None:
        on_model(runner.identity()["model"])
    on_gpu = runner.on_gpu
    if batch_size is None:
        # On the CPU small batches ran faster per image (Lite0 at 384 px, 2 cores: 48 ms at batch 1-2, 73-110 ms
        # at batch 8: the depthwise convs of a large batch leave the caches); GPUs want larger batches.
        batch_size = 8 if on_gpu else 2
    if workers is None:
        workers = _decode_workers(on_gpu)
    return predict_files(runner, inputs, out_dir, batch_size, overlay, overwrite, workers, on_progress, on_total)


def _decode_workers(on_gpu: bool, cores: int | None = None) -> int:
    """Default decode processes of predict and evaluate: 2 beside a GPU; on the CPU they compete with the model's
    threads for the same ``cores`` (default: this machine's), so none up to 2 cores, else one per four, at most 2.

    On 2 cores a decode worker made predict slower (18.2-18.9 vs 18.7-21.2 images/s without one, interleaved
    runs): the model's two threads lose a core to it whenever it decodes. Larger machines have cores to spare.
    """
    if on_gpu:
        return 2
    cores = cores if cores is not None else os.cpu_count() or 1
    return 0 if cores <= 2 else min(2, cores // 4)


def _runner(model: Path | None, device: str, backend: str | None):
    is_onnx_file = model is not None and Path(model).suffix.lower() == ".onnx"
    backend = (backend or ("onnx" if is_onnx_file else "torch")).lower()
    if backend not in PREDICT_BACKENDS:
        raise ConfigError(f"Unknown backend '{backend}'; use one of {', '.join(PREDICT_BACKENDS)}.")
    if backend == "torch":
        if is_onnx_file:
            raise ConfigError(f"{model} is an ONNX file; predict it with --backend onnx (or pass the run folder).")
        return Predictor(load_model(model, kind=None), resolve_device(device))
    from fsdistill.infer.onnx import OnnxRunner, require_export_packages

    import torch

    require_export_packages("onnxruntime")
    # The same intra-op thread count as the torch backend (torch.get_num_threads: OMP_NUM_THREADS or
    # torch.set_num_threads, else one per core). onnxruntime's own default ignores both, so a run limited to
    # N threads used every core with --backend onnx and fought whatever the threads were limited for.
    return OnnxRunner(resolve_onnx_file(model), device, threads=torch.get_num_threads())


def resolve_onnx_file(model: Path | None) -> Path:
    """The ``.onnx`` file for ``model``: the file itself, ``DIR/student.onnx``, or the one beside a student artifact.

    None means the newest run under ./runs (as for the torch backend).

    Raises:
        CheckpointError: no exported file there (the message says how to make one).
    """
    from fsdistill.infer.onnx import default_onnx_path

    if model is not None and Path(model).suffix.lower() == ".onnx":
        return Path(model)
    if model is not None and (Path(model) / "student.onnx").is_file():
        return Path(model) / "student.onnx"
    artifact = resolve_model_dir(model, "student")
    candidate = default_onnx_path(artifact)
    if not candidate.is_file():
        raise CheckpointError(
            f"No exported model at {candidate}; run fsdistill export --model {artifact.parent} first, or pass the "
            ".onnx file to --model."
        )
    return candidate


def export(
    model: Path | None = None,
    out: Path | None = None,
    format: str = "onnx",
    images: list[Path] | None = None,
    device: str = "cpu",
    tolerance: float = 1e-2,
    min_agreement: float = 0.999,
    seed: int = 0,
    random_samples: int = 4,
    real_samples: int = 4,
    threads: int | None = None,
) -> "ExportResult":
    """Export a run's student to ONNX (``fsdistill export``) and check it against PyTorch.

    Args:
        model: run or student artifact folder (None: newest run under ./runs).
        out: the file to write (None: ``RUN/student.onnx`` beside the artifact; a folder: ``FOLDER/student.onnx``).
        images: image files/folders for the parity check, the first ``real_samples`` used (None: the first
            ``real_samples`` of the run's own support images, when its support folder is still there). Random
            images are always added (``random_samples``).
        device: where the PyTorch reference of the check runs. tolerance, min_agreement: see
            :func:`fsdistill.export.export_onnx`.

    Returns:
        :class:`fsdistill.export.ExportResult` (``passed`` False when onnxruntime and PyTorch differ too much).

    Raises:
        DependencyError: onnx/onnxruntime missing. ConfigError: an unknown format or bad tolerance.
        CheckpointError: no student artifact. DataError: an unwritable output or unreadable sample image.
    """
    from fsdistill.export import export_onnx
    from fsdistill.infer.onnx import default_onnx_path, require_export_packages

    if format.lower() != "onnx":
        raise ConfigError(f"Unknown export format '{format}'; the only format is onnx.")
    if tolerance < 0 or not 0.0 <= min_agreement <= 1.0:
        raise ConfigError("--tolerance must be >= 0 and --min-agreement within 0..1.")
    require_export_packages("onnx", "onnxruntime")
    torch_device = resolve_device(device)
    loaded = load_model(model, kind="student")
    target = Path(out) if out is not None else default_onnx_path(loaded.path)
    if target.is_dir():
        target = target / "student.onnx"
    ensure_writable_dir(target.parent, "-o")
    real = _sample_images(loaded, images, real_samples)
    spec = loaded.config["backbone"]
    return export_onnx(
        loaded.model,
        target,
        input_size=loaded.size,
        mean=loaded.mean,
        std=loaded.std,
        class_names=loaded.class_names,
        palette=loaded.palette,
        dynamic_hw=spec.get("fixed_size") is None,
        size_multiple=int(spec.get("size_multiple", 32)),
        real_images=real,
        random_samples=random_samples,
        tolerance=tolerance,
        min_agreement=min_agreement,
        device=torch_device,
        seed=seed,
        threads=threads,
        metadata={
            "kind": "student",
            "artifact": str(loaded.path.resolve()),
            "config_sha256": config_sha256(loaded.config),
            "backbone": str(spec.get("name")),
        },
    )


def _sample_images(loaded, images: list[Path] | None, limit: int):
    """R×3×size×size uint8 real images for the parity check, or None (given paths, else the run's supports)."""
    import torch

    from fsdistill.data.images import read_image
    from fsdistill.data.transforms import resize_image

    if images:
        paths = [source for source, _ in list_images(images)][: max(1, limit)]
    else:
        root = loaded.config.get("support", {}).get("root")
        try:
            paths = [s.image_path for s in discover(Path(root)).samples][:limit] if root and limit > 0 else []
        except FsdistillError:  # the support folder moved or changed since training: random inputs only
            paths = []
    arrays = [resize_image(read_image(p), loaded.size) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous() if arrays else None


def profile(cfg: "ProfileCfg | None" = None, quiet: bool = False, **options: Any) -> "ProfileResult":
    """Latency and memory of teacher, student and bare backbone over ways × shots (``fsdistill profile``).

    Pass a :class:`fsdistill.profile.ProfileCfg`, or its fields as keywords (``profile(ways=5, shots=50)``).
    Writes ``profile.json``, ``profile.csv``, ``profile.md`` and ``profile.png`` into ``cfg.out``; random weights
    and inputs unless ``cfg.model`` names a run. Shows a progress bar with an ETA unless ``quiet``.

    Raises:
        ConfigError: a bad option (ways, shots or runs below 1, an unknown backbone, …).
    """
    from fsdistill.profile import ProfileCfg, run_profile

    if cfg is None:
        try:
            cfg = ProfileCfg(**options)
        except TypeError as exc:
            raise ConfigError(f"Unknown profile option ({exc}); see fsdistill.profile.ProfileCfg.") from None
    elif options:
        raise ConfigError("Pass either a ProfileCfg or keyword options to profile, not both.")
    return run_profile(cfg, quiet=quiet)


# --- suggest: which pool images to label next ------------------------------------------------------------------

__all__ += ["SuggestResult", "suggest"]

SUGGEST_TOP = 20  # default --top: a labelling session's worth of images


@dataclass
class SuggestResult:
    """What ``suggest`` found: every readable pool image ranked (rank 1 = label first); the outputs hold the
    first ``top``.

    ``teacher`` None: the run has no teacher, the ranking is by the student's uncertainty alone (``note`` says
    so). ``failed``: (path, reason) of each image that could not be read (skipped).
    """

    model: str
    teacher: str | None
    class_names: list[str]
    top: int
    ranking: list[Any]  # fsdistill.infer.suggest.Suggestion, all scored images in rank order
    failed: list[tuple[str, str]] = field(default_factory=list)
    note: str | None = None
    csv_path: Path | None = None
    json_path: Path | None = None
    copy_to: Path | None = None
    copied: int = 0  # files copied into copy_to now
    already_copied: int = 0  # top images whose copy was already there (a rerun)
    seconds: float = 0.0

    @property
    def shown(self) -> list[Any]:
        """The first ``top`` of the ranking (what the CSV, JSON and copy hold)."""
        return self.ranking[: self.top]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document: model, teacher, counts, classes, the scoring rule and the top rows."""
        return {
            "model": self.model,
            "teacher": self.teacher,
            "images": len(self.ranking),
            "failed": [{"image": path, "error": reason} for path, reason in self.failed],
            "top": self.top,
            "score": "(disagreement + uncertainty) / 2" if self.teacher is not None else "uncertainty",
            "note": self.note,
            "classes": self.class_names,
            "ranking": [row.to_dict(self.class_names) for row in self.shown],
        }


def _suggest_teacher(student: Any, teacher: Path | None) -> tuple[Any, str | None]:
    """The teacher ``suggest`` compares the student with: ``teacher`` if given, else the student's run's
    ``teacher/``, else the teacher the student was distilled from (``distill --teacher``, as recorded), else None
    with the note that says so. A teacher folder that is there but does not load is an error, not a fallback."""
    if teacher is not None:
        return load_model(teacher, kind="teacher"), None
    candidates = [student.path.parent / "teacher"]
    recorded = (student.config.get("train_config") or {}).get("teacher")
    if recorded:
        candidates.append(Path(recorded))
    for candidate in candidates:
        if recover_artifact(candidate).exists():
            return load_model(candidate, kind="teacher"), None
    return None, (
        f"no teacher next to {student.path} (no {candidates[0]}), so images are ranked by the student's uncertainty "
        "alone; pass --teacher RUN/teacher to add teacher-student disagreement."
    )


def suggest(
    pool: Path | list[Path],
    model: Path | None = None,
    top: int = SUGGEST_TOP,
    out: Path | None = None,
    json_out: Path | None = None,
    copy_to: Path | None = None,
    teacher: Path | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    student_only: bool = False,
    on_model: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> SuggestResult:
    """Rank unlabelled images by how much labelling each would teach the run (``fsdistill suggest``).

    Every image of ``pool`` (files or folders, searched recursively) is scored by teacher-student disagreement
    and the student's uncertainty, both per class, and ranked with near-duplicates skipped (see
    :mod:`fsdistill.infer.suggest` for the rule). Images are streamed ``batch_size`` at a time; an unreadable
    one is reported in ``failed`` and skipped. All images are scored; ``out`` (CSV), ``json_out`` and ``copy_to``
    get the first ``top``.

    Args:
        model: run or student artifact folder (None: the newest run under ./runs).
        teacher: teacher artifact or run folder (None: the run's ``teacher/``, else the one the student was
            distilled from; neither: uncertainty only, with ``note`` saying so).
        student_only: rank by the student's uncertainty alone, without running the teacher (its attention over
            the supports costs seconds per image on a CPU, the student milliseconds).
        copy_to: a folder to copy the top images into (names kept; see :func:`fsdistill.infer.suggest.copy_images`).
        batch_size: None: 8 on a GPU, 2 on the CPU. workers: decode processes, None as in :func:`predict`.
        on_model: called once with the student's path when loaded; on_total: once with the number of images;
            on_progress: with the number of images done (read or skipped).

    Raises:
        ConfigError: ``top`` or ``batch_size`` below 1. DataError: a missing pool, a pool without images, none
            readable, an unwritable output. CheckpointError: no student, or a teacher that does not load or
            does not match it.
    """
    from fsdistill.infer.suggest import (
        Suggestion,
        SuggestScorer,
        copy_images,
        score_images,
        spread_ranking,
        write_ranking_csv,
        write_ranking_json,
    )

    if top < 1:
        raise ConfigError(f"--top must be at least 1 (got {top}): it is how many images to suggest.")
    if student_only and teacher is not None:
        raise ConfigError("--student-only ranks without a teacher; drop --teacher or --student-only.")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size}).")
    pools = [Path(p) for p in ([pool] if isinstance(pool, (str, Path)) else pool)]
    for path in pools:
        if not path.exists():
            raise DataError(f"Pool {path} does not exist; pass a folder (or files) of unlabelled images.")
    # The copy folder may sit inside the pool: its copies are not pool images on a rerun.
    entries = list_images(pools, Path(copy_to) if copy_to is not None else None)
    for path, flag, example in ((out, "--out", "ranking.csv"), (json_out, "--json", "ranking.json")):
        if path is not None:
            if Path(path).is_dir():
                raise DataError(f"{path} is a folder; give {flag} a file name (for example {example}).")
            ensure_writable_dir(Path(path).parent, flag)
    if copy_to is not None:
        ensure_writable_dir(Path(copy_to), "--copy-to")
    student = load_model(model, kind="student")
    if on_model is not None:
        on_model(str(student.path))
    teacher_model, note = (None, None) if student_only else _suggest_teacher(student, teacher)
    torch_device = resolve_device(device)
    scorer = SuggestScorer(student, teacher_model, torch_device)
    on_gpu = torch_device.type != "cpu"
    batch_size = batch_size or (8 if on_gpu else 2)
    workers = _decode_workers(on_gpu) if workers is None else workers
    if on_total is not None:
        on_total(len(entries))
    start = time.perf_counter()
    paths = [source for source, _ in entries]
    scored: list[tuple[int, Any, np.ndarray]] = []
    failed: list[tuple[str, str]] = []
    for index, scores, embedding, error in score_images(scorer, paths, batch_size, workers, on_progress):
        if error is not None:
            failed.append((str(paths[index]), error))
        else:
            scored.append((index, scores, embedding))
    if not scored:
        raise DataError(
            f"None of the {len(paths)} images of the pool could be read (first: {failed[0][1]}); re-export them "
            "as PNG or JPEG."
        )
    scored.sort(key=lambda item: item[0])
    keys = [str(paths[i]) for i, _, _ in scored]
    order, duplicates = spread_ranking(
        np.array([s.score for _, s, _ in scored]), np.stack([e for _, _, e in scored]), keys, top
    )
    ranking = [
        Suggestion(rank, keys[j], scored[j][1], keys[duplicates[j]] if j in duplicates else None)
        for rank, j in enumerate(order, start=1)
    ]
    result = SuggestResult(
        model=str(student.path),
        teacher=None if teacher_model is None else str(teacher_model.path),
        class_names=student.class_names,
        top=top,
        ranking=ranking,
        failed=sorted(failed),
        note=note,
        seconds=time.perf_counter() - start,
    )
    if out is not None:
        result.csv_path = write_ranking_csv(Path(out), result.shown, result.class_names)
    if json_out is not None:
        result.json_path = write_ranking_json(Path(json_out), result.to_dict())
    if copy_to is not None:
        report = copy_images([Path(row.image) for row in result.shown], Path(copy_to))
        result.copy_to, result.copied, result.already_copied = Path(copy_to), len(report.copied), len(report.present)
    return result
