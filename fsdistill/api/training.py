"""``adapt`` (TransferFSS) and ``distill`` (DistillFSS): a support folder in, teacher / student artifacts out.

Under ``torchrun`` both train data-parallel, each process on its own episodes; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from fsdistill import distributed
from fsdistill.api.runs import (
    RunResult,
    _drop_stale,
    _is_artifact_at,
    _support_info,
    _write_run_config,
    check_run_dir,
    claim_run_dir,
    new_run_dir,
    training_command,
)
from fsdistill.checkpoint import (
    WEIGHTS_FILE,
    WEIGHTS_SHA_KEY,
    is_artifact,
    recorded_train_config,
    written_by_distill,
)
from fsdistill.config import AdaptCfg, DistillCfg, ModelCfg, load_config
from fsdistill.data.discover import SupportIndex, discover
from fsdistill.data.images import image_size
from fsdistill.data.layouts import mask_files
from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.data.support_tensors import SupportTensors, load_support_tensors
from fsdistill.errors import CheckpointError, ConfigError, DataError
from fsdistill.infer.predictor import list_images
from fsdistill.infer.ray_engine import resolve_engine
from fsdistill.models.backbone_specs import backbone_spec
from fsdistill.models.build import (
    LoadedModel,
    build_student,
    build_teacher,
    load_model,
    parameter_count,
    save_model,
)
from fsdistill.models.grow import check_shared_groups, copy_student_classes, match_classes
from fsdistill.models.student import DistilledStudent
from fsdistill.models.teacher import DCAMATeacher
from fsdistill.runtime import (
    flush_denormals,
    global_random_state_kept,
    progress,
    resolve_device,
    seed_everything,
)
from fsdistill.train.episodes import FeatureCache
from fsdistill.train.fit import TrainStats, polish, train
from fsdistill.train.pool import crop_gain_range, join_pool, label_files
from fsdistill.train.pool_ray import RayPoolLabeller
from fsdistill.train.support_check import check_supports

log = logging.getLogger(__name__)
CfgT = TypeVar("CfgT", AdaptCfg, DistillCfg)

POOL_BATCH = 8  # pool images decoded, encoded and labelled at a time


def _stats_dict(stats: TrainStats) -> dict[str, Any]:
    out = {
        "steps": stats.steps,
        "episodes": stats.episodes,
        "seconds": round(stats.seconds, 2),
        "stop_reason": stats.stop_reason,
        "precision": stats.precision,
        "device": stats.device,
        "class_queries": stats.class_queries,
        "flip_views": stats.flip_views,
        "final_losses": {k: stats.final(k) for k in dict.fromkeys(k for h in stats.history for k in h)},
    }
    if stats.polish_steps:
        out["polish_steps"] = stats.polish_steps
    if stats.flip_views_left_out:
        out["flip_views_left_out"] = stats.flip_views_left_out
    if distributed.world_size() > 1:  # recorded only then: a one-process run's artifact is as before
        out["processes"] = distributed.world_size()
    return out


def _start_run(cfg: CfgT, command: str, overwrite: bool, teacher: Path | None = None) -> tuple[Path, CfgT]:
    """Create and claim the run folder (rank 0 only; :func:`~fsdistill.api.runs.claim_run_dir`, released when the
    command returns) and write its config there, so a killed run's folder says what ran; the folder's path on every
    process and ``cfg`` with that folder as ``out`` (a default one too: the config and the artifacts record the run
    itself, so its config.resolved.yaml reruns into it only with ``--overwrite``). Not over a finished run this one
    replaces (``--overwrite``, ``distill --teacher OUT/teacher --out OUT``): its config describes its artifacts
    until this run writes new ones. The folder is checked again once claimed: a run into it may have finished
    since the command began (:func:`~fsdistill.api.runs.check_run_dir`)."""

    def start() -> Path:
        run_dir = new_run_dir(cfg.out)
        claim_run_dir(run_dir)
        check_run_dir(run_dir, command, teacher, overwrite)
        if not any(is_artifact(run_dir / name) for name in ("teacher", "student")):
            _write_run_config(run_dir, cfg.model_copy(update={"out": run_dir.absolute()}), command)
        return run_dir

    run_dir = distributed.on_main(start)
    return run_dir, cfg.model_copy(update={"out": run_dir.absolute()})


def _prepare(cfg: AdaptCfg | DistillCfg) -> tuple[SupportIndex, int, torch.device, SupportTensors]:
    """Discover and load the support folder, pick the device, seed everything and flush denormals (training slows
    down several-fold on them, :func:`~fsdistill.runtime.flush_denormals`): (index, foreground classes, device,
    support tensors)."""
    flush_denormals()
    index = discover(cfg.support)
    num_classes = len(index.class_names) - 1
    if num_classes < 1:
        raise DataError(f"{cfg.support} declares no foreground class; masks need at least one labelled class.")
    _refuse_unused_classes(index, index.unused_classes(), cfg.support)  # where the folder scan counted pixels
    device = resolve_device(cfg.device)
    seed_everything(cfg.train.seed)
    support = load_support_tensors(index, cfg.model.size)
    if not bool(((support.masks > 0) & (support.masks != IGNORE_INDEX)).any()):
        raise _all_masks_empty(index, cfg.support)
    if index.class_pixels is None:  # COCO, Label Studio, ...: the classes are counted as the masks are read
        shown = support.present_classes
        _refuse_unused_classes(index, [n for k, n in enumerate(index.class_names) if k and k not in shown], cfg.support)
    if cfg.train.augment is False and len(index) == 1 and cfg.train.steps != 0:  # no query besides the one support
        raise ConfigError("One support image needs augmentation to build episodes; drop --no-augment or add images.")
    return index, num_classes, device, support


def _refuse_unused_classes(index: SupportIndex, unused: list[str], support: Path) -> None:
    """A class without a pixel is only ever taught "absent": the model would carry it and never predict it.

    Raises:
        DataError: naming the first of ``unused`` and how to drop it.
    """
    if unused and len(unused) == len(index.class_names) - 1:  # no class at all: the masks are the problem
        raise _all_masks_empty(index, support)
    if unused:
        raise DataError(
            f"Class {unused[0]!r} ({index.names_source}) has no pixel in any mask of {support}"
            f"{f' (nor do {len(unused) - 1} more)' if len(unused) > 1 else ''}, so it cannot be learned; add "
            f"images that show it or {index.drop_class_hint(unused)}."
        )


def _all_masks_empty(index: SupportIndex, support: Path) -> DataError:
    return DataError(
        f"All {len(index)} masks in {support} are empty: no pixel has a foreground class, so there is nothing to "
        f"learn; {index.empty_masks_hint()}."
    )


def _adapt_norm_stats(cfg: AdaptCfg | DistillCfg, teacher: DCAMATeacher, support: SupportTensors) -> dict[str, Any]:
    """Move a new teacher's backbone BatchNorm statistics towards the support images' (before any feature is
    cached; ``TrainCfg.norm_adapt_weight``: published weights keep their checkpoint's by default, they behave as
    published): what the artifact records of it."""
    weight = cfg.train.norm_adapt_weight(cfg.model.teacher_weights is not None)
    layers = teacher.backbone.adapt_norm_stats(support.images, weight)
    return {"weight": weight if layers else 0.0, "layers": layers, "images": int(support.images.shape[0])}


def _augment(cfg: AdaptCfg | DistillCfg, count: int) -> bool | None:
    """Flip views as asked; by default always for a single support image (episodes need a second view), else for
    distill where they fit (None, :class:`~fsdistill.train.episodes.FeatureCache`) and never for adapt or a run
    without steps (nothing trains on them)."""
    if cfg.train.augment is not None:
        return cfg.train.augment
    if count == 1:
        return True
    # The student gains from them on every example case, the teacher adapted alone does not (docs/benchmarks.md).
    return None if isinstance(cfg, DistillCfg) and cfg.train.steps != 0 else False


def _artifact_fields(
    cfg: AdaptCfg | DistillCfg, index: SupportIndex, support: SupportTensors, stats: TrainStats
) -> dict[str, Any]:
    """What every artifact of a run records besides its weights: classes, input size, config, supports (as read for
    training), training."""
    return {
        "class_names": index.class_names,
        "palette": index.palette,
        "train_config": json.loads(cfg.model_dump_json()),
        "support_info": _support_info(index, support),
        "training": _stats_dict(stats),
    }


def _as_config(cfg: Any, cls: type[AdaptCfg] | type[DistillCfg]) -> Any:
    """``cfg`` as a ``cls`` (one already, or a mapping of its options read as a YAML file is), its paths made
    absolute.

    Raises:
        ConfigError: anything else (an AdaptCfg for distill, a path), or a mapping with bad options.
    """
    if isinstance(cfg, Mapping):
        cfg = load_config(cls, data=cfg)  # the class names the command a `command:` key must match
    if isinstance(cfg, cls):
        # Recorded (config.resolved.yaml, the artifacts) as absolute paths: the file reruns the run from any folder.
        absolute = {
            name: Path(value).expanduser().absolute()
            for name in ("support", "out", "teacher", "init", "unlabeled")
            if (value := getattr(cfg, name, None)) is not None
        }
        weights = {
            name: Path(value).expanduser().absolute()
            for name in ("backbone_weights", "teacher_weights")
            if (value := getattr(cfg.model, name, None)) is not None
        }
        return cfg.model_copy(update={**absolute, "model": cfg.model.model_copy(update=weights)})
    command, article = ("adapt", "an") if cls is AdaptCfg else ("distill", "a")
    raise ConfigError(
        f"fsdistill.{command} takes {article} {cls.__name__} or a mapping of its options (as in the YAML), not a "
        f"{type(cfg).__name__}."
    )


@training_command
@global_random_state_kept()
def adapt(cfg: AdaptCfg | Mapping[str, Any], quiet: bool = False, overwrite: bool = False) -> RunResult:
    """TransferFSS: fine-tune the DCAMA teacher on the support folder; writes ``RUN/teacher/``.

    ``cfg``: an AdaptCfg or a mapping of its options (``{"support": "support/", "train": {"steps": 40}}``).
    ``cfg.train.steps == 0`` writes the untuned teacher (the training-free baseline) as a normal artifact.
    ``overwrite``: replace a finished run at ``cfg.out`` (see :func:`check_run_dir`); its student goes with it.
    The run is seeded by ``cfg.train.seed``; the caller's global random states are left as they were. The CPU
    flushes denormal floats from the first call on (:func:`~fsdistill.runtime.flush_denormals`).
    """
    cfg = _as_config(cfg, AdaptCfg)
    check_run_dir(cfg.out, "adapt", overwrite=overwrite)
    index, num_classes, device, support = _prepare(cfg)
    teacher, teacher_cfg = _new_teacher(cfg, num_classes)
    teacher = teacher.to(device)
    norm_stats = _adapt_norm_stats(cfg, teacher, support)
    run_dir, cfg = _start_run(cfg, "adapt", overwrite)
    cache = FeatureCache(teacher, support, device, _augment(cfg, len(index)))
    stats = train(teacher, cache, cfg.train, quiet=quiet)

    def write() -> Path:
        fields = _artifact_fields(cfg, index, support, stats)
        fields["training"]["norm_stats"] = norm_stats
        # A replaced run's student goes first: killed in between, the run never pairs it with the new teacher.
        _drop_stale(run_dir, keep={"teacher"})
        teacher_dir = _save_teacher(run_dir, teacher, teacher_cfg, support, fields)
        _write_run_config(run_dir, cfg, "adapt")
        return teacher_dir

    return RunResult(run_dir, teacher_dir=distributed.on_main(write), stats=_stats_dict(stats))


def _save_teacher(
    run_dir: Path, teacher: DCAMATeacher, teacher_cfg: ModelCfg, support: SupportTensors, fields: dict[str, Any]
) -> Path:
    """Write ``RUN/teacher/``: the teacher keeps its support tensors (it needs them to predict)."""
    return save_model(
        run_dir / "teacher", teacher, teacher_cfg, support_images=support.images, support_masks=support.masks, **fields
    )


def _new_teacher(cfg: AdaptCfg | DistillCfg, num_classes: int) -> tuple[DCAMATeacher, ModelCfg]:
    """A fresh teacher (official weights imported when ``cfg.model.teacher_weights`` is set) and the ModelCfg it
    was built from, which its artifact stores."""
    if cfg.model.teacher_weights is None:
        return build_teacher(cfg.model, num_classes), cfg.model
    from fsdistill.models.reference_import import import_reference_weights, published_model_cfg

    model_cfg = published_model_cfg(cfg.model)
    # Built without its default weights first: a checkpoint with its backbone (the official ones) needs no
    # download (offline, that failed; online it fetched ~100 MB to overwrite them).
    teacher = build_teacher(model_cfg, num_classes, pretrained=False)
    default_source = teacher.backbone.spec.source == "random init" and cfg.model.backbone_weights is None
    if default_source:  # the backbone a head-only file keeps: its default weights, loaded below (said by the import)
        teacher.backbone.spec = replace(teacher.backbone.spec, source=backbone_spec(model_cfg.backbone).source)
    report = import_reference_weights(teacher, cfg.model.teacher_weights)
    if report.backbone_kept and default_source:  # a head-only file: the backbone's default weights after all
        pretrained = build_teacher(model_cfg, num_classes).backbone
        teacher.backbone.load_state_dict(pretrained.state_dict())
        teacher.backbone.spec = pretrained.spec
    elif not report.backbone_kept and cfg.model.backbone_weights is not None:
        log.warning(
            "--backbone-weights %s is not used: the teacher checkpoint %s brings its own backbone.",
            cfg.model.backbone_weights,
            cfg.model.teacher_weights,
        )
    return teacher, model_cfg


def _frozen_teacher_of(run: Path) -> str | None:
    """The frozen teacher a run's student was distilled from (``distill --teacher T --freeze-teacher``), as its
    student records it; None for other runs or none readable."""
    train_config = recorded_train_config(run / "student") or {}
    return str(train_config["teacher"]) if train_config.get("teacher") and train_config.get("freeze_teacher") else None


def _load_init(cfg: DistillCfg) -> tuple[LoadedModel, LoadedModel]:
    """The teacher and student of the run ``cfg.init`` continues from (``distill --init``)."""
    if cfg.teacher is not None:
        raise ConfigError("--init continues a run's own teacher; pass --init or --teacher, not both.")
    assert cfg.init is not None
    if is_artifact(Path(cfg.init)) and is_artifact(Path(cfg.init).parent / "teacher"):
        raise ConfigError(f"--init takes a run folder: pass {Path(cfg.init).parent}, not its {Path(cfg.init).name}/.")
    if not Path(cfg.init).exists():
        raise ConfigError(f"--init {cfg.init} does not exist; pass the folder of the run to continue.")
    try:
        teacher = load_model(cfg.init, kind="teacher")
    except CheckpointError as err:
        frozen = _frozen_teacher_of(Path(cfg.init))
        if frozen is not None:  # its student learned from a teacher kept elsewhere: nothing here to continue with
            raise ConfigError(
                f"--init continues a run with its own teacher, and {cfg.init} learned from the frozen teacher "
                f"{frozen}; distill the grown folder with --teacher {frozen} instead."
            ) from None
        raise ConfigError(
            f"--init needs a run with its teacher (RUN/teacher, written by distill without --teacher): {err}"
        ) from None
    try:
        student = load_model(cfg.init, kind="student")
    except CheckpointError:  # an adapt run: its teacher is what distill --teacher starts from
        teacher_dir = Path(cfg.init) / "teacher"
        if written_by_distill(teacher_dir):  # a distill killed between its two saves, not an adapt run
            raise ConfigError(
                f"--init continues a finished distill run, and {cfg.init} stopped before its student was saved; "
                f"finish it first (fsdistill distill --teacher {teacher_dir} --out {cfg.init}, with its support "
                "folder)."
            ) from None
        raise ConfigError(
            f"--init continues a distill run, and {cfg.init} has no student (an adapt run?); to distill from its "
            f"teacher, pass --teacher {teacher_dir} instead."
        ) from None
    if student.class_names != teacher.class_names:
        raise ConfigError(f"The teacher and student of {cfg.init} know different classes; pass one run folder.")
    _refuse_other_model_settings(cfg.model, student.model_cfg, f"--init continues {cfg.init}")
    return teacher, student


# The fields of ModelCfg a distill run chooses for its student, whatever teacher it is given.
_STUDENT_FIELDS = ("student_width", "refiner")


def _refuse_other_model_settings(asked: ModelCfg, model: ModelCfg, what: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse model settings given (in the YAML, as flags or to ModelCfg, a default's value included) that differ
    from ``model``'s, the settings of the model a run continues or distills; ``skip``: fields the run may set anew.

    Raises:
        ConfigError: the first such setting, named with ``model``'s value.
    """
    effective = asked
    if asked.teacher_weights is not None:  # such a teacher runs with the published attention (a run records as given)
        from fsdistill.models.reference_import import published_model_cfg

        effective = published_model_cfg(asked)
    given = {k: getattr(effective, k) for k in asked.model_fields_set if k not in skip}
    differs = sorted(k for k, v in given.items() if getattr(model, k) != v)
    if differs:
        key = differs[0]
        flagged = ("size", "backbone", "decoder", "teacher_weights", "backbone_weights", "student_width")
        option = f"--{key.replace('_', '-')}" if key in flagged else key  # the others are YAML keys

        def shown(value: Any) -> str:
            return repr(value) if isinstance(value, str) else str(value)

        raise ConfigError(
            f"{what} with its own model settings ({key} {shown(getattr(model, key))}), but {option} "
            f"{shown(given[key])} was given; drop {option}."
        )


def _load_teacher(cfg: DistillCfg) -> LoadedModel:
    """The adapted teacher ``cfg.teacher`` names (``distill --teacher``), its model settings checked against the
    ones given: the run takes the teacher's (its size included), only the student's own fields are this run's."""
    loaded = load_model(cfg.teacher, kind="teacher")
    _refuse_other_model_settings(cfg.model, loaded.model_cfg, f"The teacher {loaded.path} runs", _STUDENT_FIELDS)
    return loaded


@dataclass
class _PoolImages:
    """The images of ``distill --unlabeled``'s pool a run labels, and what was left out of it.

    ``paths``: the images to label (a seeded sample of ``unlabeled_max`` readable ones from a larger pool, in
    sorted order). ``total``: distinct images in the pool (supports, copies and mask files not counted).
    ``copies``: byte copies of support or earlier pool images left out. ``masks``: mask files of a labelled folder
    left out. ``unreadable``: one message per file whose header could not be read (skipped before training, and
    replaced from the rest of a larger pool)."""

    paths: list[Path]
    total: int
    copies: int
    masks: int
    unreadable: list[str]


def _pool_images(cfg: DistillCfg, index: SupportIndex) -> _PoolImages:
    """The pool images a run uses, checked before any training (see :class:`_PoolImages`).

    Raises:
        DataError: a missing pool, a file, a pool without images besides the supports (and their copies and
            masks), or none whose header can be read.
    """
    assert cfg.unlabeled is not None
    pool = cfg.unlabeled
    if not pool.exists():
        raise DataError(f"--unlabeled {pool} does not exist; check the path of the unlabeled images.")
    if not pool.is_dir():
        raise DataError(f"--unlabeled {pool} is not a folder; pass a folder of unlabeled images.")
    try:
        found = [p for p, _ in list_images([pool], writes_masks=False)]
    except DataError as exc:  # no image file at all: say which folder of the command it is
        raise DataError(f"--unlabeled {pool}: {str(exc)[0].lower()}{str(exc)[1:]}") from None
    # The support folder itself may be (or hold) the pool: its images and mask files are not pool images.
    supports = {p.resolve() for s in index.samples for p in (s.image_path, *s.mask_paths)}
    listed = [p for p in found if p.resolve() not in supports]
    # A labelled folder given as the pool: its masks are not photographs to label.
    masks = mask_files(pool, listed)
    images = [p for p in listed if p not in masks]
    # `suggest --copy-to` copies pool images into a folder that may lie in the pool, and a labelled image may have
    # been copied into the supports: a copy would be trained on twice, or labelled by the teacher beside its mask.
    paths = _without_copies(images, [s.image_path for s in index.samples])
    if not paths:
        what = ["the support images and masks"] if len(listed) < len(found) else []
        what += ["mask files"] if masks else []
        what += ["copies of the supports"] if len(paths) < len(images) else []
        raise DataError(
            f"--unlabeled {pool} holds no image besides {' and '.join(what) or 'the supports'}; pass a folder of "
            "images that are not supports."
        )
    total = len(paths)
    # A larger pool's seeded sample first, the rest (in a seeded order) replacing its unreadable files.
    rng = random.Random(cfg.train.seed)
    chosen, rest = paths, []
    if total > cfg.unlabeled_max:
        chosen = sorted(rng.sample(paths, cfg.unlabeled_max))
        taken = set(chosen)
        rest = [p for p in paths if p not in taken]
        rng.shuffle(rest)
    readable, unreadable = [], []
    for path in (*chosen, *rest):
        if len(readable) == cfg.unlabeled_max:
            break
        try:
            image_size(path)  # the header only: an empty, truncated-header or non-image file fails here
        except DataError as exc:
            log.warning("skipped an unreadable pool image: %s", exc)
            unreadable.append(str(exc))
            continue
        readable.append(path)
    if not readable:
        raise _unreadable_pool(total, pool, unreadable[0])
    return _PoolImages(sorted(readable), total, len(images) - total, len(masks), unreadable)


def _unreadable_pool(total: int, pool: Path | None, first: str) -> DataError:
    """No image of the pool could be read (``first``: the first file's reason)."""
    return DataError(
        f"None of the {total} images of --unlabeled {pool} could be read ({first}); check the files or leave "
        "--unlabeled out."
    )


def _without_copies(paths: list[Path], known: list[Path]) -> list[Path]:
    """``paths`` less byte-for-byte copies of an earlier one or of a ``known`` file (the first of a set in
    ``paths``' order is kept). Only files whose sizes collide are read."""

    def size(path: Path) -> int:  # 0 (never a copy) for a file that cannot be read: the labeller reports it
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def digest(path: Path) -> str | None:
        try:
            return hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None

    sizes = {path: size(path) for path in (*known, *paths)}
    counts = Counter(sizes.values())

    def may_be_a_copy(path: Path) -> bool:  # empty or unreadable files are no copies: reported as such
        return sizes[path] > 0 and counts[sizes[path]] > 1

    seen = {digest(path) for path in known if may_be_a_copy(path)} - {None}
    kept = []
    for path in paths:
        content = digest(path) if may_be_a_copy(path) else None
        if content is not None:
            if content in seen:
                continue
            seen.add(content)
        kept.append(path)
    return kept


def _pool_fingerprint(root: Path, paths: list[Path]) -> str:
    """sha256 over each used pool file's path below ``root`` and the sha256 of its bytes ("unreadable" for a file
    gone since it was labelled: a pool tidied while the run goes on must not lose the run)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            content = "unreadable"
        h.update(f"{path.relative_to(root).as_posix()}\0{content}\n".encode())
    return h.hexdigest()


def _pool_engine(
    cfg: DistillCfg, engine: str | None, address: str | None, workers: int | None, gpus_per_worker: float | None
) -> RayPoolLabeller | None:
    """The Ray labeller of the pool for ``engine="ray"`` (None: label it in this process), its options checked
    before anything is trained.

    Raises:
        ConfigError: an unknown engine, Ray's options without it, ``ray`` without a pool or under torchrun.
        DependencyError: ``ray`` without the ray extra.
    """
    engine = resolve_engine(engine, address, gpus_per_worker)
    if engine == "local":
        if workers is not None:
            raise ConfigError("--workers sets the Ray actors that label the pool; add --engine ray or drop it.")
        return None
    if cfg.unlabeled is None:
        raise ConfigError("--engine ray labels the --unlabeled pool; add --unlabeled POOL or drop --engine ray.")
    if distributed.world_size() > 1:
        raise ConfigError("--engine ray labels the pool from one process; run distill without torchrun for it.")
    return RayPoolLabeller(cfg.device, address, workers, gpus_per_worker or 0.0)


def _train_on_pool(
    cfg: DistillCfg,
    pool_images: _PoolImages,
    teacher: DCAMATeacher,
    teacher_cfg: ModelCfg,
    student: DistilledStudent,
    cache: FeatureCache,
    class_names: list[str],
    support_stats: TrainStats,
    quiet: bool,
    ray_labeller: RayPoolLabeller | None = None,
) -> tuple[TrainStats, dict[str, Any]]:
    """The pool phase of ``distill --unlabeled``: label the pool (on ``ray_labeller``'s actors if given), then
    train on supports and pool together: (the statistics of both phases, what the artifact records of the pool).

    The teacher's labels and coarse maps teach only the classes it finds in held-out supports (leave-one-out IoU
    at least ``cfg.train.pool_min_iou``); with none, a pool the teacher would label is left unused.
    """
    # What the teacher can be trusted with: the classes it finds in each support from the other supports.
    check = check_supports(teacher, student, cache, class_names)
    trusted = [c.leave_one_out is not None and c.leave_one_out >= cfg.train.pool_min_iou for c in check.classes]
    # The student's own labels (self-training) need no trust in the teacher; its coarse maps still do.
    labeller = cfg.train.pool_labeller
    if labeller == "mean" and not any(trusted):  # the teacher's half would teach nothing: the student labels alone
        labeller = "student"
    base_info: dict[str, Any] = {
        "root": str(cfg.unlabeled),
        "pool_size": pool_images.total,
        "copies_left_out": pool_images.copies,
        "masks_left_out": pool_images.masks,
        "support_steps": support_stats.steps,
        "min_iou": cfg.train.pool_min_iou,
        "trusted": [c.name for c, ok in zip(check.classes, trusted) if ok],
        "teacher_leave_one_out": {c.name: c.leave_one_out for c in check.classes},
        "labeller": labeller,
    }
    if not any(trusted) and labeller != "student":
        if not check.queries:
            reason = "one support image: the teacher cannot be checked on the others (add supports)"
        else:
            scores = ", ".join(
                f"{c.name} {c.leave_one_out:.2f}" if c.leave_one_out is not None else f"{c.name} none (in one support)"
                for c in check.classes
            )
            reason = (
                f"no class reaches a leave-one-out IoU of {cfg.train.pool_min_iou} with the teacher on the supports "
                f"({scores}): its labels would teach the student its mistakes"
            )
        return support_stats, {**base_info, "used": False, "reason": f"the pool was not used: {reason}"}
    start = time.perf_counter()
    paths = pool_images.paths
    support, trust = cache.support[0], torch.tensor(trusted, dtype=torch.bool)
    # Each image against its nearest supports, as many as a training episode had (and one per class they miss).
    args = (paths, cfg.model.size, labeller, cfg.train.pool_threshold, trust, POOL_BATCH, cfg.train.max_shots)
    if ray_labeller is not None:
        results = ray_labeller.label_files(teacher, teacher_cfg, student, support, *args)
    else:
        results = label_files(teacher, student, support, *args)
    bar = progress(total=len(paths), quiet=quiet, desc="label pool", unit="img")
    parts, labelled, skipped = [], [], list(pool_images.unreadable)
    for indices, errors, batch in results:
        for _, message in errors:  # the message names the file
            log.warning("skipped an unreadable pool image: %s", message)
            skipped.append(message)
        bar.update(len(indices) + len(errors))
        labelled.extend(paths[i] for i in indices)
        if batch is not None:
            parts.append(batch)
    bar.close()
    pool = join_pool(parts, trust, support.present.device)
    label_seconds = time.perf_counter() - start
    if pool is None:
        raise _unreadable_pool(pool_images.total, cfg.unlabeled, skipped[0])
    # The bytes just labelled, read now rather than after the pool phase: a file moved meanwhile has its own entry.
    fingerprint = _pool_fingerprint(cfg.unlabeled, labelled)
    pool_stats = train(
        teacher, cache, cfg.train, student=student, freeze_teacher=cfg.freeze_teacher, quiet=quiet, pool=pool
    )
    combined = TrainStats(
        steps=support_stats.steps + pool_stats.steps,
        episodes=support_stats.episodes + pool_stats.episodes,
        seconds=support_stats.seconds + label_seconds + pool_stats.seconds,
        history=support_stats.history + pool_stats.history,
        stop_reason=f"supports: {support_stats.stop_reason}; with the pool: {pool_stats.stop_reason}",
        class_queries=[a + b for a, b in zip(support_stats.class_queries, pool_stats.class_queries)],
        precision=pool_stats.precision,  # both phases train in the run's one precision and on one device
        device=pool_stats.device,
        flip_views=pool_stats.flip_views,  # one cache for both phases
        flip_views_left_out=pool_stats.flip_views_left_out,
    )
    info = {
        **base_info,
        "used": True,
        "images": len(labelled),
        "skipped": skipped,
        "fingerprint": fingerprint,
        "labelled_fraction": round(pool.labelled_fraction(), 4),
        "label_seconds": round(label_seconds, 2),
        "label_shots": cfg.train.max_shots,
        "pool_steps": pool_stats.steps,
    }
    if ray_labeller is not None:  # recorded only then: a local run's artifact is as before
        info["engine"] = "ray"
    return combined, info


@training_command
@global_random_state_kept()
def distill(
    cfg: DistillCfg | Mapping[str, Any],
    quiet: bool = False,
    overwrite: bool = False,
    engine: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
) -> RunResult:
    """DistillFSS: train the support-free ConvDist student (jointly with the teacher unless ``cfg.teacher``).

    ``cfg``: a DistillCfg or a mapping of its options. Writes ``RUN/student/`` and ``RUN/teacher/``, the teacher
    the student learned from: adapted here, or the given ``cfg.teacher`` trained on jointly (not with
    ``cfg.freeze_teacher``: then the given one, left where it is).
    ``overwrite``: replace a finished run at ``cfg.out`` (see :func:`check_run_dir`). ``engine``: where the
    ``cfg.unlabeled`` pool is labelled, ``local`` (None) or ``ray`` (:class:`~fsdistill.train.pool_ray.RayPoolLabeller`,
    the same labels), with ``address``, ``workers`` and ``gpus_per_worker`` as for :func:`fsdistill.api.predict`.
    Seeding and denormals as for :func:`adapt`.

    Raises:
        ConfigError: bad options (see :func:`_pool_engine` for the engine's). DependencyError: ``engine="ray"``
            without the ray extra.
    """
    cfg = _as_config(cfg, DistillCfg)
    if cfg.init is not None and cfg.out is not None and cfg.out.resolve() == cfg.init.resolve():
        # The run would be replaced while it is read: a stop between its two saves would leave neither run.
        raise ConfigError(f"--init {cfg.init} and --out name the same run; write the continued run to a new --out.")
    check_run_dir(cfg.out, "distill", cfg.teacher, overwrite)
    ray_labeller = _pool_engine(cfg, engine, address, workers, gpus_per_worker)
    if cfg.drop_class and cfg.init is None:
        raise ConfigError("--drop-class only applies with --init RUN.")
    init = _load_init(cfg) if cfg.init is not None else None
    if init is not None:  # the run's own settings, its student's width and refiner included
        cfg = cfg.model_copy(update={"model": init[1].model_cfg})
    given_teacher = _load_teacher(cfg) if cfg.teacher is not None else None
    if given_teacher is not None:  # recorded as what ran: the teacher's settings, this run's student fields
        student_fields = {k: getattr(cfg.model, k) for k in _STUDENT_FIELDS}
        cfg = cfg.model_copy(update={"model": given_teacher.model_cfg.model_copy(update=student_fields)})
    index, num_classes, device, support = _prepare(cfg)
    # Checked before any training: a bad pool must not cost the support phase first.
    pool_images = _pool_images(cfg, index) if cfg.unlabeled is not None else None
    match = None
    if init is not None:
        init_teacher = init[0]
        match = match_classes(init_teacher.class_names, index.class_names, cfg.drop_class, str(cfg.init))
        check_shared_groups(init[1].model, num_classes)  # before the run folder and any feature is made
        # The teacher has no per-class weight: the run's, whole (the new one only differs in its class count),
        # so it is built from the run's own config without loading backbone or official weights a second time.
        teacher_cfg = init_teacher.model_cfg
        teacher = build_teacher(teacher_cfg, num_classes, pretrained=False)
        teacher.load_state_dict(init_teacher.model.state_dict())
        teacher.backbone.spec = init_teacher.model.backbone.spec  # where its weights came from, not "random init"
    elif given_teacher is not None:
        if given_teacher.class_names != index.class_names:
            raise DataError(
                f"The teacher {given_teacher.path} knows classes {given_teacher.class_names} but {cfg.support} has "
                f"{index.class_names}; distill with the support folder the teacher was adapted on."
            )
        teacher, teacher_cfg = given_teacher.model, given_teacher.model_cfg
    else:
        if cfg.freeze_teacher:
            raise ConfigError("--freeze-teacher needs an adapted teacher: pass --teacher RUN/teacher.")
        teacher, teacher_cfg = _new_teacher(cfg, num_classes)
    teacher = teacher.to(device)
    # A given teacher (--teacher, --init) keeps the statistics it was adapted with: its decoder learned on them.
    norm_stats = _adapt_norm_stats(cfg, teacher, support) if init is None and cfg.teacher is None else None
    run_dir, cfg = _start_run(cfg, "distill", overwrite, cfg.teacher)
    # Only the student's supervised batches read crop views.
    crops = cfg.train.crop_views if cfg.train.student_batch and cfg.train.steps != 0 else 0
    crop_gain = (1.0, 1.0)
    if pool_images is not None and cfg.train.pool_brightness and crops:
        crop_gain = crop_gain_range(support.images, pool_images.paths, cfg.model.size)
    cache = FeatureCache(
        teacher,
        support,
        device,
        _augment(cfg, len(index)),
        crop_views=crops,
        crop_min_area=cfg.train.crop_min_area,
        crop_seed=cfg.train.seed + distributed.rank(),
        crop_centre_on_class=cfg.train.crop_centre == "class",
        crop_gain=crop_gain,
    )
    # The student is the teacher's architecture (an adapted teacher's, whatever this run's --decoder says) with
    # this run's ConvDist width, and the refiner where that decoder ends at stride 4 (not the paper's).
    refiner = cfg.model.refiner and teacher.decoder.output_stride == 4
    # A run continued with --init keeps its refiner's width, whatever the decoder's default is now.
    init_refiner = init[1].model.refiner if init is not None else None
    refiner_width = init_refiner.width if init_refiner is not None else None
    student = build_student(teacher, cfg.model.student_width, refiner, refiner_width).to(device)
    student_cfg = teacher_cfg.model_copy(update={"student_width": cfg.model.student_width, "refiner": refiner})
    prior = teacher.class_prior(cache.support[0], list(range(num_classes)))
    if match is not None:
        copy_student_classes(student, init[1].model.to(device), match, prior)
        if cfg.train.steps == 0:
            # Untrained, the kept classes must predict what the run did: with the decoder its blocks were polished
            # on (the student's own copy), not the teacher's. Training pairs the blocks with the teacher's again.
            student.decoder = copy.deepcopy(init[1].model.decoder)
    else:
        student.set_class_prior(prior)
    new_classes = None if match is None else [source is None for source in match.source]
    stats = train(
        teacher,
        cache,
        cfg.train,
        student=student,
        freeze_teacher=cfg.freeze_teacher,
        quiet=quiet,
        new_classes=new_classes,
    )
    pool_info = None
    if pool_images is not None and cfg.train.steps == 0:  # said, as any pool left unused is
        pool_info = {
            "root": str(cfg.unlabeled),
            "used": False,
            "reason": "the pool was not used: 0 steps (nothing is trained)",
        }
    elif pool_images is not None:
        stats, pool_info = _train_on_pool(
            cfg,
            pool_images,
            teacher,
            teacher_cfg,
            student,
            cache,
            index.class_names,
            stats,
            quiet,
            ray_labeller,
        )
    if pool_info is not None and crops:
        pool_info["crop_gain"] = [round(crop_gain[0], 4), round(crop_gain[1], 4)]
    if cfg.train.steps != 0:
        # A continued run too (it stops its joint phase at its floors, fsdistill.train.budget): polished, its kept
        # and new classes both gained on the three example cases (benchmarks/grow.py, docs "Growing a folder").
        stats.add_polish(polish(student, cache, cfg.train, quiet))

    def check_and_write() -> RunResult:
        # Rank 0 only under torchrun: every process holds the same weights, so one check and one artifact.
        check = check_supports(teacher, student, cache, index.class_names) if cfg.train.steps != 0 else None
        common = _artifact_fields(cfg, index, support, stats)
        if norm_stats is not None:
            common["training"]["norm_stats"] = norm_stats
        if pool_info is not None:
            common["training"]["pool"] = pool_info
        if check is not None:
            common["training"]["support_check"] = check.to_dict()
        if match is not None:
            # The continued student by its weights' hash: the run folder alone may have changed since.
            weights = init[1].config.get(WEIGHTS_SHA_KEY)
            common["training"]["init"] = {
                "run": str(cfg.init),
                "student_sha256": weights,
                **match.to_dict(),
                "moved": match.moved(index.class_names),
            }
        teacher_dir = None
        # The teacher the student learned from is the run's: adapted here, or a given one trained on with the
        # student (only a frozen one is left where it is).
        trained_teacher = cfg.teacher is None or not cfg.freeze_teacher
        if trained_teacher:
            # A replaced run's student goes first: killed between the two saves, the run holds the new teacher
            # (and this run's config) and no student (a rerun finishes it), never the new teacher beside the old
            # student.
            replaced_student = (run_dir / "student").exists()
            _drop_stale(run_dir, keep={"teacher"})
            try:
                teacher_dir = _save_teacher(run_dir, teacher, teacher_cfg, support, common)
            except DataError as exc:  # a full disk: the earlier teacher is still there, its student is not
                if not replaced_student:
                    raise
                raise DataError(
                    f"{exc} The student of the run replaced in {run_dir} was removed before the save (it would not "
                    "match a new teacher); its teacher is kept."
                ) from None
            _write_run_config(run_dir, cfg, "distill")
            keep = {"student", "teacher"}
        else:  # a frozen given teacher: a teacher/ here is kept only if it is that one
            keep = {"student", "teacher"} if _is_artifact_at(cfg.teacher, run_dir / "teacher") else {"student"}
        student_dir = save_model(run_dir / "student", student, student_cfg, **common)
        _drop_stale(run_dir, keep=keep)
        if not trained_teacher:
            _write_run_config(run_dir, cfg, "distill")
        return RunResult(
            run_dir,
            teacher_dir=teacher_dir,
            student_dir=student_dir,
            stats=common["training"],
            check=check,
            student_parameters=parameter_count(student),
            student_mb=(student_dir / WEIGHTS_FILE).stat().st_size / 2**20,
        )

    return distributed.on_main(check_and_write)
