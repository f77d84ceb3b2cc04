"""``suggest``: rank unlabelled pool images by how much labelling each would teach the run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from fsdistill.api.inference import _batch_size, _decode_workers, check_counts
from fsdistill.api.runs import support_matcher
from fsdistill.checkpoint import recover_artifact
from fsdistill.data.layouts import mask_files
from fsdistill.errors import ConfigError, DataError
from fsdistill.infer.predictor import list_images
from fsdistill.infer.shard import Shard, parse_shard
from fsdistill.models.build import load_model
from fsdistill.runtime import ensure_writable_dir, ensure_writable_file, is_count, resolve_device, write_atomic

__all__ = ["SUGGEST_TOP", "SuggestResult", "suggest"]

SUGGEST_TOP = 20  # default --top: a labelling session's worth of images


@dataclass
class SuggestResult:
    """What ``suggest`` found: every readable pool image ranked (rank 1 = label first), the outputs holding the
    first ``top``. ``teacher`` None: ranked by the student's uncertainty alone. ``failed``: (path, reason) of each
    image that could not be read."""

    model: str
    teacher: str | None
    class_names: list[str]
    top: int
    ranking: list[Any]  # fsdistill.infer.suggest.Suggestion, all scored images in rank order
    failed: list[tuple[str, str]] = field(default_factory=list)
    supports_left_out: list[str] = field(default_factory=list)  # pool images that are the run's own supports
    masks_left_out: list[str] = field(default_factory=list)  # mask files of a labelled folder given as the pool
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
            "supports_left_out": self.supports_left_out,
            "masks_left_out": self.masks_left_out,
            "top": self.top,
            "score": "(disagreement + uncertainty) / 2" if self.teacher is not None else "uncertainty",
            "note": self.note,
            "classes": self.class_names,
            "ranking": [row.to_dict(self.class_names) for row in self.shown],
        }


def _without_supports(paths: list[Any], config: dict[str, Any]) -> tuple[list[Any], list[str]]:
    """``paths`` less the student's own support images (the labelling loop copies suggested images, names kept,
    into the support folder, and ranking them again would suggest labelling them twice), and those left out.
    Pool files named like a support are compared by their decoded pixels, as ``evaluate`` finds supports
    (:func:`~fsdistill.api.runs.support_matcher`): decoding every pool image here would double a large pool's
    reads. Files in an object store and unreadable ones stay (the scoring reports the latter)."""
    support = config.get("support") or {}
    support_of = support_matcher(support)
    if support_of is None:
        return paths, []
    names = {PurePosixPath(key).name for key in support.get("keys", [])}
    kept, left_out = [], []
    for path in paths:
        try:
            is_support = isinstance(path, Path) and path.stem in names and support_of(path) is not None
        except DataError:
            is_support = False
        if is_support:
            left_out.append(str(path))
        else:
            kept.append(path)
    return kept, left_out


def _suggest_teacher(student: Any, teacher: Path | None) -> tuple[Any, str | None]:
    """(teacher, note): ``teacher`` if given, else the student's run's ``teacher/``, else the one it was distilled
    from (as recorded), else None with a note saying so. A teacher that is there but does not load is an error."""
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
    shard: str | Shard | None = None,
    engine: str = "local",
    address: str | None = None,
    gpus_per_worker: float | None = None,
) -> SuggestResult:
    """Rank the images of ``pool`` (files or folders, searched recursively) by how much labelling each would
    teach the run (``fsdistill suggest``, see :mod:`fsdistill.infer.suggest`); ``out`` (CSV), ``json_out`` and
    ``copy_to`` get the first ``top``, and an unreadable image is reported in ``failed``.

    Args:
        model: run or student artifact folder (None: the newest run under ./runs).
        teacher: teacher artifact or run folder (None: the run's ``teacher/``, else the one the student was
            distilled from; neither: uncertainty only, with ``note`` saying so).
        student_only: rank by the student's uncertainty alone, without running the (slow) teacher.
        copy_to: a folder to copy the top images into (see :func:`fsdistill.infer.suggest.copy_images`).
        batch_size, workers, engine, address, gpus_per_worker: as for :func:`fsdistill.api.predict` (the ray
            engine: :class:`~fsdistill.infer.ray_engine.RayScorer`, the same scores and ranking).
        shard: ``"I/N"``, score only shard I of N of the sorted pool; the ranking and outputs are then that
            shard's alone (give each shard its own ``out``/``json_out``).
        on_model: called once with the student's path when loaded; on_total: once with the number of images;
            on_progress: with the number of images done (read or skipped).

    Raises:
        ConfigError: ``top`` or ``batch_size`` below 1, negative ``workers``, a bad ``shard``, an unknown
            ``engine`` or a Ray option without it. DependencyError: ``engine="ray"`` without Ray Data installed.
            DataError: a missing pool, a pool without images, none readable, an unwritable output.
            CheckpointError: no student, or a teacher that does not load or does not match it.
    """
    from fsdistill.infer.ray_engine import RayScorer, resolve_engine
    from fsdistill.infer.suggest import (
        Suggestion,
        SuggestScorer,
        check_teacher,
        copy_images,
        score_images,
        spread_ranking,
        write_ranking_csv,
    )

    if not is_count(top) or top < 1:
        raise ConfigError(f"--top must be an integer of at least 1 (got {top!r}): it is how many images to suggest.")
    if student_only and teacher is not None:
        raise ConfigError("--student-only ranks without a teacher; drop --teacher or --student-only.")
    check_counts(batch_size, workers)
    shard = parse_shard(shard)
    engine = resolve_engine(engine, address, gpus_per_worker)
    pools = [Path(p).expanduser() for p in ([pool] if isinstance(pool, (str, Path)) else pool)]
    out, json_out, copy_to = (None if p is None else Path(p).expanduser() for p in (out, json_out, copy_to))
    for path in pools:
        if not path.exists():
            raise DataError(f"Pool {path} does not exist; pass a folder (or files) of unlabelled images.")
    # The copy folder may sit inside the pool: its copies are not pool images on a rerun.
    entries = list_images(pools, copy_to, writes_masks=False)
    # A labelled folder given as the pool: its masks are no images to label (left out before sharding, which
    # must cut the same list in every process).
    local = [source for source, _ in entries if isinstance(source, Path)]
    masks = set().union(*(mask_files(path, local) for path in pools if path.is_dir()))
    entries = [entry for entry in entries if entry[0] not in masks]
    if not entries:
        raise DataError(f"The pool holds mask files only ({len(masks)}); pass the folder of its images.")
    if shard is not None:
        entries = shard.select(entries)
        if not entries:
            raise DataError(f"Shard {shard} of the pool holds no image (the pool has fewer than {shard.count}).")
    for path, flag, example in ((out, "--out", "ranking.csv"), (json_out, "--json", "ranking.json")):
        if path is not None:
            ensure_writable_file(path, flag, example)
    if out is not None and json_out is not None and out.absolute() == json_out.absolute():
        raise ConfigError(f"--out and --json both name {out}; give each its own file (the JSON would replace the CSV).")
    if copy_to is not None:
        ensure_writable_dir(copy_to, "--copy-to")
    student = load_model(model, kind="student")
    if on_model is not None:
        on_model(str(student.path))
    teacher_model, note = (None, None) if student_only else _suggest_teacher(student, teacher)
    paths, supports_left_out = _without_supports([source for source, _ in entries], student.config)
    if not paths:
        raise DataError(f"Every image of the pool is a support of {student.path}; pass images it was not trained on.")
    if engine == "ray":
        # ``device`` is the actors' (the driver runs no model): their GPU when they get one.
        batch_size = _batch_size(batch_size, bool(gpus_per_worker) or device.startswith("cuda"))
        check_teacher(student, teacher_model)  # here, not as every actor's failure
        teacher_path = None if teacher_model is None else teacher_model.path
        ray_scorer = RayScorer(student.path, teacher_path, device, address, workers, gpus_per_worker or 0.0)
        outputs = ray_scorer.score_images(paths, batch_size, on_progress)
    else:
        torch_device = resolve_device(device)
        on_gpu = torch_device.type != "cpu"
        scorer = SuggestScorer(student, teacher_model, torch_device)
        workers = _decode_workers(on_gpu) if workers is None else workers
        outputs = score_images(scorer, paths, _batch_size(batch_size, on_gpu), workers, on_progress)
    if on_total is not None:
        on_total(len(paths))
    start = time.perf_counter()
    results = sorted(outputs, key=lambda item: item[0])  # the ray engine yields in the order the actors finish
    scored = [(index, scores, embedding) for index, scores, embedding, error in results if error is None]
    failed = [(str(paths[index]), error) for index, _, _, error in results if error is not None]
    if not scored:
        raise DataError(
            f"None of the {len(paths)} images of the pool could be read (first: {failed[0][1]}); re-export them "
            "as PNG or JPEG."
        )
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
        supports_left_out=supports_left_out,
        masks_left_out=sorted(map(str, masks)),
        note=note,
        seconds=time.perf_counter() - start,
    )
    if out is not None:
        result.csv_path = write_ranking_csv(Path(out), result.shown, result.class_names)
    if json_out is not None:
        result.json_path = write_atomic(Path(json_out), json.dumps(result.to_dict(), indent=2) + "\n")
    if copy_to is not None:
        report = copy_images([Path(row.image) for row in result.shown], copy_to)
        result.copy_to, result.copied, result.already_copied = copy_to, len(report.copied), len(report.present)
    return result
