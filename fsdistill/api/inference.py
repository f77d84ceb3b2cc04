"""``evaluate``, ``predict``, ``export`` and ``profile``: verbs that load trained artifacts."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fsdistill.api.runs import _leaked_supports
from fsdistill.checkpoint import config_sha256, resolve_model_dir
from fsdistill.data.discover import SupportIndex, discover, recorded_category_ids
from fsdistill.errors import CheckpointError, ConfigError, DataError, FsdistillError
from fsdistill.infer.formats import FormatOptions
from fsdistill.infer.predictor import Predictor, PredictResult, Runner, list_images, predict_files
from fsdistill.infer.ray_engine import RayRunner, resolve_engine
from fsdistill.infer.shard import Shard, parse_shard
from fsdistill.metrics import ConfusionMatrix
from fsdistill.models.build import load_model
from fsdistill.runtime import ensure_writable_dir, is_count, resolve_device, resolved_link

if TYPE_CHECKING:
    from fsdistill.infer.export import ExportResult
    from fsdistill.profiling import ProfileCfg, ProfileResult

log = logging.getLogger(__name__)


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
    ``workers``, ``on_total`` and ``on_progress``: as for :func:`predict`.

    Raises:
        DataError: support images of the model among the images (leakage), or other class names than the model's.
    """
    check_counts(batch_size, workers)
    loaded = load_model(model, kind="teacher" if teacher else None)
    index = discover(data_dir)
    if on_total is not None:
        on_total(len(index))
    class_ids = None
    # Id 0 is the background on both sides however each spells it ("Background", "bg"). A folder without a names
    # file whose classes are its ids 1..N ("foreground", "class_1", "class_2", ...) is read by id against a model
    # with names; against class_<value> names of another folder (class_7) it is matched by name.
    folder_names = [loaded.class_names[0], *index.class_names[1:]]
    unnamed = index.class_names[1:] in (["foreground"], [f"class_{k}" for k in range(1, len(index.class_names))])
    model_unnamed = all(re.fullmatch(r"class_\d+", name) for name in loaded.class_names[1:])
    if unnamed and not model_unnamed and len(folder_names) == len(loaded.class_names):
        folder_names = loaded.class_names
    if folder_names != loaded.class_names:
        if sorted(folder_names) != sorted(loaded.class_names):
            extra = [name for name in folder_names if name not in loaded.class_names]
            missing = [name for name in loaded.class_names if name not in folder_names]
            differ = [f"not the model's: {extra}"] if extra else []
            differ += [f"not here: {missing}"] if missing else []
            raise DataError(
                f"{data_dir} has classes {index.class_names} but the model {loaded.path} predicts "
                f"{loaded.class_names} ({'; '.join(differ)}); evaluate on a folder labelled "
                "with the model's classes."
            )
        # The same classes in another order (another names file, COCO categories listed otherwise): matched by name.
        class_ids = np.arange(256, dtype=np.uint8)
        class_ids[: len(folder_names)] = [loaded.class_names.index(name) for name in folder_names]
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
    matrix, seconds = confusion_on_folder(predictor, index, batch_size, workers, on_progress, class_ids)
    if not matrix.matrix[1:].any():
        raise DataError(
            f"All {len(index)} masks in {data_dir} are empty: no pixel has a foreground class, so IoU is undefined; "
            f"{index.empty_masks_hint()}."
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
    class_ids: np.ndarray | None = None,
) -> tuple[ConfusionMatrix, float]:
    """``runner``'s masks against a labelled folder's, at each image's original resolution: (confusion matrix,
    seconds taken). Any :class:`Runner` (a model, a baseline) is scored the same way; an unreadable image raises
    DataError. ``class_ids``: a (256,) table from the folder's class ids to the runner's (the same classes in
    another order), else the ids are the same."""
    matrix = ConfusionMatrix(len(index.class_names))
    start = time.perf_counter()
    # Ground-truth masks are read in the main process while workers decode the images for the model.
    for i, prediction, _, error in runner.outputs([s.image_path for s in index.samples], batch_size, workers):
        if error is not None:
            raise DataError(error)
        truth = index.load_mask(i, size=(prediction.shape[1], prediction.shape[0]))
        matrix.update(truth if class_ids is None else class_ids[truth], prediction)
        if on_progress:
            on_progress(1)
    return matrix, time.perf_counter() - start


PREDICT_BACKENDS = ("torch", "onnx")


def predict(
    inputs: Path | str | Sequence[Path | str],
    out_dir: Path | str,
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
    formats: str | Sequence[str] | None = None,
    coco_rle: bool = False,
    image_root_url: str | None = None,
    shard: str | Shard | None = None,
    engine: str = "local",
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> PredictResult:
    """Support-free batch inference with a student: masks at each image's original size, resuming.

    Args:
        inputs, out_dir: local paths, or object-store prefixes as str (``s3://bucket/prefix``, ``gs://…``: the ray
            extra, see :mod:`fsdistill.storage`); the files written are the same. ``inputs``: one path, or several.
        formats: ``png`` (always written) and any of ``coco``, ``cvat``, ``labelstudio`` (a list, or comma-separated):
            pre-labels written after the masks, their paths in ``result.format_paths``. coco_rle: COCO masks as
            compressed RLE. image_root_url: the prefix of the Label Studio tasks' image URLs.
        batch_size: None: 8 on a GPU, 2 on the CPU. workers: decode processes (None: see :func:`_decode_workers`).
        backend: ``torch``, or ``onnx`` to run an exported file with onnxruntime only (``model``: the ``.onnx``
            file, or a folder with ``student.onnx`` beside the artifact); None: ``onnx`` for an ``.onnx`` model.
        on_model: called once with the loaded model's path (which run ``model`` None picked); on_total: once with
            the number of images; on_progress: with 1 per image done or skipped.
        shard: ``"I/N"``, only shard I of N of the sorted images (:mod:`fsdistill.infer.shard`).
        engine: ``local``, or ``ray`` to run the model in a pool of Ray actors (:mod:`fsdistill.infer.ray_engine`;
            the same bytes written): ``workers`` actors (None: the cluster's CPUs up to 8, or its GPUs /
            ``gpus_per_worker``) of ``gpus_per_worker`` GPUs each (default 0), on the cluster at ``address``
            (None: the one this process is connected to, else a new local one; ``auto``; ``ray://host:10001``).

    Raises:
        ConfigError: an unknown backend, engine or format, a format option without its format, an ``.onnx``
            model with the torch backend, a bad ``shard`` or one combined with a pre-label format, Ray options
            without ``engine="ray"``.
        DependencyError: the onnx backend without onnxruntime, the ray engine or an object-store URI without
            the ray extra installed.
        DataError: an object store that cannot be reached (unknown bucket, refused credentials, no endpoint).
    """
    if isinstance(inputs, (str, os.PathLike)):  # one input, not a sequence of its characters
        inputs = [inputs]
    if not isinstance(inputs, Iterable):
        raise ConfigError(f"inputs is a path or paths (a list, a glob, ...), not {type(inputs).__name__} {inputs!r}.")
    inputs = list(inputs)  # a generator (Path.glob) is read once
    check_counts(batch_size, workers)
    format_options = FormatOptions.parse(formats, coco_rle, image_root_url)
    shard = parse_shard(shard)
    engine = resolve_engine(engine, address, gpus_per_worker)
    if engine == "ray":
        if (backend or "torch").lower() != "torch" or _is_onnx_file(model):
            raise ConfigError("--engine ray runs the torch backend; drop --backend onnx or use --engine local.")
        # The driver's copy only labels the outputs (classes, palette, manifest): on the CPU, leaving the GPUs to
        # the actors (which run on ``device``).
        local = _runner(model, "cpu", backend)
        runner = RayRunner(local, device, address, workers, gpus_per_worker or 0.0)
    else:
        runner = _runner(model, device, backend)
    if on_model is not None:
        on_model(runner.identity()["model"])
    batch_size = _batch_size(batch_size, runner.on_gpu)
    if workers is None:
        workers = _decode_workers(runner.on_gpu)
    return predict_files(
        runner, inputs, out_dir, batch_size, overlay, overwrite, workers, on_progress, on_total, format_options, shard
    )


def check_counts(batch_size: int | None, workers: int | None) -> None:
    """Refuse a batch size below 1 or a negative number of decode workers (the CLI's option bounds, for callers of
    the library), before any model is loaded or output written.

    Raises:
        ConfigError: naming the argument.
    """
    if batch_size is not None and (not is_count(batch_size) or batch_size < 1):
        raise ConfigError(f"batch_size must be an integer of at least 1, got {batch_size!r}.")
    if workers is not None and (not is_count(workers) or workers < 0):
        raise ConfigError(f"workers must be 0 (decode in this process) or more, got {workers!r}.")


def _batch_size(given: int | None, on_gpu: bool) -> int:
    """``given``, else 8 on a GPU and 2 on the CPU (a large batch's depthwise convolutions leave the caches)."""
    return given if given is not None else (8 if on_gpu else 2)


def _decode_workers(on_gpu: bool, cores: int | None = None) -> int:
    """Default decode processes: 2 beside a GPU; on the CPU, where they compete with the model's threads for the
    same ``cores`` (default: this machine's), none up to 2 cores, else one per four, at most 2."""
    if on_gpu:
        return 2
    cores = cores if cores is not None else os.cpu_count() or 1
    return 0 if cores <= 2 else min(2, cores // 4)


def _is_onnx_file(model: Path | None) -> bool:
    return model is not None and Path(model).suffix.lower() == ".onnx"


def _runner(model: Path | None, device: str, backend: str | None):
    backend = (backend or ("onnx" if _is_onnx_file(model) else "torch")).lower()
    if backend not in PREDICT_BACKENDS:
        raise ConfigError(f"Unknown backend '{backend}'; use one of {', '.join(PREDICT_BACKENDS)}.")
    if backend == "torch":
        if _is_onnx_file(model):
            raise ConfigError(f"{model} is an ONNX file; predict it with --backend onnx (or pass the run folder).")
        loaded = load_model(model, kind=None)
        if loaded.kind == "teacher":  # allowed (to compare), but predict is for the support-free student
            log.warning(
                "note: %s is a teacher: each image is segmented against its %d stored supports (slower than the "
                "student, which reads none); pass the run folder or its student/ for the student.",
                loaded.path,
                len(loaded.support_images),
            )
        return Predictor(loaded, resolve_device(device))
    import torch

    from fsdistill.infer.onnx import OnnxRunner, require_export_packages

    require_export_packages("onnxruntime")
    # The torch backend's intra-op thread count (OMP_NUM_THREADS or torch.set_num_threads, else one per core):
    # onnxruntime's own default ignores both and would use every core of a run limited to fewer.
    return OnnxRunner(resolve_onnx_file(model), device, threads=torch.get_num_threads())


def resolve_onnx_file(model: Path | None) -> Path:
    """The ``.onnx`` file for ``model``: the file itself, ``DIR/student.onnx``, or the one beside a student artifact
    (None: of the newest run under ./runs).

    Raises:
        CheckpointError: no exported file there (the message says how to make one).
    """
    from fsdistill.infer.onnx import default_onnx_path

    if _is_onnx_file(model) or (model is not None and Path(model).is_file()):  # --backend onnx names the format
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
) -> ExportResult:
    """Export a run's student to ONNX (``fsdistill export``) and check it against PyTorch: ``passed`` is False in
    the :class:`~fsdistill.infer.export.ExportResult` when they differ too much (see
    :func:`fsdistill.infer.export.export_onnx`).

    Args:
        model: run or student artifact folder (None: newest run under ./runs).
        out: the file to write (None: ``RUN/student.onnx`` beside the artifact; a folder, or a new path not ending
            in ``.onnx``: ``FOLDER/student.onnx``, the folder created); an existing file must be an ``.onnx``.
        images: image files/folders for the check, the first ``real_samples`` used (None: the run's own support
            images, if still there), besides ``random_samples`` random ones.
        device: where the PyTorch reference of the check runs.

    Raises:
        DependencyError: onnx/onnxruntime missing. ConfigError: an unknown format or bad tolerance.
        CheckpointError: no student artifact. DataError: an unwritable output or unreadable sample image.
    """
    from fsdistill.infer.export import export_onnx
    from fsdistill.infer.onnx import default_onnx_path, require_export_packages

    if format.lower() != "onnx":
        raise ConfigError(f"Unknown export format '{format}'; the only format is onnx.")
    given = all(isinstance(x, Real) and not isinstance(x, bool) for x in (tolerance, min_agreement))
    if not given or not tolerance >= 0 or not 0.0 <= min_agreement <= 1.0:  # "not >=": NaN is refused too
        raise ConfigError("--tolerance must be >= 0 and --min-agreement within 0..1.")
    require_export_packages("onnx", "onnxruntime")
    torch_device = resolve_device(device)
    loaded = load_model(model, kind="student")
    target = Path(out).expanduser() if out is not None else default_onnx_path(loaded.path)
    target = resolved_link(target)  # -o latest.onnx -> v3.onnx: the model it names is replaced, the link kept
    # A folder: one that exists, or a new path not ending in .onnx ("-o exported/" and "-o v1.2/" arrive without
    # their "/").
    if target.is_dir() or (not target.exists() and target.suffix.lower() != ".onnx"):
        target = target / "student.onnx"
    if target.exists() and target.suffix.lower() != ".onnx":
        # -o RUN/student/model.safetensors replaced the trained weights with the ONNX file, exit 0.
        raise DataError(f"-o {target} is an existing file that is not an .onnx model; export will not overwrite it.")
    ensure_writable_dir(target.parent, "-o")
    real = _sample_images(loaded, images, real_samples)
    spec = loaded.config["backbone"]
    # A model of a COCO folder: its category ids, for predict --backend onnx --format coco.
    recorded_ids = recorded_category_ids(loaded.config)
    category_ids = {"category_ids": json.dumps(recorded_ids)} if recorded_ids else {}
    result = export_onnx(
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
            "weights_sha256": str(loaded.config.get("weights_sha256", "")),
            "backbone": str(spec.get("name")),
            **category_ids,
        },
    )
    if real is None and real_samples > 0 and not images:
        # The parity check's real inputs are the run's supports by default: without them it is weaker, so say so.
        root = (loaded.config.get("support") or {}).get("root")
        missing = f"the run's support images ({root}) are not there any more, so " if root else ""
        note = f"{missing}the check used random images only; pass --images to add real ones"
        result = replace(result, note="; ".join(filter(None, [result.note, note])))
    return replace(result, model=loaded.path)


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


def profile(cfg: ProfileCfg | None = None, quiet: bool = False, **options: Any) -> ProfileResult:
    """Latency and memory of teacher, student and bare backbone over ways × shots (``fsdistill profile``), written
    into ``cfg.out``: a :class:`fsdistill.profiling.ProfileCfg`, or its fields as keywords (``profile(ways=5)``).

    Raises:
        ConfigError: a bad option (ways, shots or runs below 1, an unknown backbone, …).
    """
    from fsdistill.profiling import ProfileCfg, run_profile

    if cfg is None:
        try:
            cfg = ProfileCfg(**options)
        except TypeError as exc:
            raise ConfigError(f"Unknown profile option ({exc}); see fsdistill.profiling.ProfileCfg.") from None
    elif options:
        raise ConfigError("Pass either a ProfileCfg or keyword options to profile, not both.")
    return run_profile(cfg, quiet=quiet)
