"""Which unlabelled images to label next (``fsdistill suggest``): score every pool image by teacher-student
disagreement and the student's uncertainty, per foreground class on the models' output grid, then rank with
near-duplicates pushed down (:func:`spread_ranking`). The definitions: README, ``suggest``.
"""

from __future__ import annotations

import csv
import filecmp
import io
import itertools
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsdistill.errors import CheckpointError
from fsdistill.models.build import LoadedModel
from fsdistill.runtime import (
    inference_dtype,
    mixed_precision,
    new_file_mode,
    raise_if_interrupted,
    retain_freed_memory,
    write_atomic,
)

__all__ = [
    "DUPLICATE_DISTANCE",
    "CANDIDATES_PER_PICK",
    "ImageScore",
    "Suggestion",
    "class_disagreement",
    "class_uncertainty",
    "least_confidence",
    "score_batch",
    "spread_ranking",
    "SuggestScorer",
    "score_images",
    "csv_header",
    "write_ranking_csv",
    "CopyReport",
    "copy_images",
]

# Embedding distance (0..2) up to which an image is a near-duplicate of one ranked above it and is skipped: only
# near-exact copies, since distinct neighbouring slices of one scan can lie closer than a flipped or cropped copy
# (closer-than-usual images are pushed down by the spread rule instead).
DUPLICATE_DISTANCE = 0.02
# The spread rule orders the CANDIDATES_PER_PICK × top highest-scoring images (near-duplicates skipped).
CANDIDATES_PER_PICK = 4


@dataclass
class ImageScore:
    """One image's scores (see :func:`score_batch`). ``disagreement`` and ``class_disagreement`` are None
    without a teacher; ``class_disagreement`` has one value per foreground class, ``fractions`` one per label
    (background first: the share of the student's mask)."""

    score: float
    uncertainty: float
    disagreement: float | None
    class_disagreement: list[float] | None
    fractions: list[float]


@dataclass
class Suggestion:
    """A ranked pool image: rank 1 is the one to label first. ``duplicate_of``: the image ranked above whose
    near-duplicate this one is (it was skipped by the spread rule), else None."""

    rank: int
    image: str
    scores: ImageScore
    duplicate_of: str | None = None

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        s = self.scores
        per_class = (
            None
            if s.class_disagreement is None
            else dict(zip(class_names[1:], (round(v, 6) for v in s.class_disagreement)))
        )
        return {
            "rank": self.rank,
            "image": self.image,
            "score": round(s.score, 6),
            "disagreement": None if s.disagreement is None else round(s.disagreement, 6),
            "uncertainty": round(s.uncertainty, 6),
            "disagreement_per_class": per_class,
            "fractions": dict(zip(class_names, (round(v, 6) for v in s.fractions))),
            "duplicate_of": self.duplicate_of,
        }


# --- scoring: pure functions of masks and probabilities -------------------------------------------------------


def least_confidence(probs: Tensor) -> Tensor:
    """B×K×H×W probabilities (softmax over K labels) → B×H×W ``(1 − max_k p_k) · K / (K − 1)`` in 0..1."""
    k = probs.shape[1]
    return (1.0 - probs.amax(dim=1)) * (k / (k - 1))


def class_disagreement(student: Tensor, teacher: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """Per foreground class 1..K−1 (K = ``num_labels``), 1 − IoU of two B×H×W label masks: (B×N float, 0 where
    neither mask has the class; B×N bool, whether either has it)."""
    values, present = [], []
    for c in range(1, num_labels):
        s, t = student == c, teacher == c
        union = (s | t).sum(dim=(1, 2))
        inter = (s & t).sum(dim=(1, 2))
        values.append(
            torch.where(union > 0, 1.0 - inter / union.clamp_min(1), torch.zeros_like(union, dtype=torch.float))
        )
        present.append(union > 0)
    return torch.stack(values, dim=1).float(), torch.stack(present, dim=1)


def class_uncertainty(probs: Tensor, student: Tensor, teacher: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per label (background included), the mean :func:`least_confidence` of the B×K×H×W ``probs`` over the
    pixels either B×H×W label mask gives it (teacher None: the student's alone): (B×K float, 0 for an empty
    region; B×K bool, whether the region is non-empty)."""
    lc = least_confidence(probs)
    values, present = [], []
    for c in range(probs.shape[1]):
        region = student == c if teacher is None else (student == c) | (teacher == c)
        count = region.sum(dim=(1, 2))
        total = (lc * region).sum(dim=(1, 2))
        values.append(torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total)))
        present.append(count > 0)
    return torch.stack(values, dim=1), torch.stack(present, dim=1)


def _masked_mean(values: Tensor, present: Tensor) -> Tensor:
    """B×N values, B×N bool → B means over the present entries (0 where none is)."""
    count = present.sum(dim=1)
    return torch.where(count > 0, (values * present).sum(dim=1) / count.clamp_min(1), torch.zeros_like(values[:, 0]))


def score_batch(probs: Tensor, student: Tensor, teacher: Tensor | None = None) -> list[ImageScore]:
    """Scores of B images from the student's B×K×H×W probabilities and the two B×H×W label masks (teacher None:
    uncertainty only). Disagreement: the mean :func:`class_disagreement` over the classes either mask has;
    uncertainty: the mean :func:`class_uncertainty` over the foreground classes either mask has (an image with
    none: its background's); score: their mean (without a teacher: the uncertainty)."""
    probs, student = probs.float().cpu(), student.cpu()
    teacher = teacher.cpu() if teacher is not None else None
    k = probs.shape[1]
    unc, unc_present = class_uncertainty(probs, student, teacher)
    fg_present = unc_present[:, 1:]
    uncertainty = torch.where(fg_present.any(dim=1), _masked_mean(unc[:, 1:], fg_present), unc[:, 0])
    fractions = torch.stack([(student == c).flatten(1).float().mean(dim=1) for c in range(k)], dim=1)
    if teacher is not None:
        dis, dis_present = class_disagreement(student, teacher, k)
        disagreement = _masked_mean(dis, dis_present)
        score = (disagreement + uncertainty) / 2
    else:
        dis, disagreement, score = None, None, uncertainty
    return [
        ImageScore(
            score=float(score[b]),
            uncertainty=float(uncertainty[b]),
            disagreement=None if disagreement is None else float(disagreement[b]),
            class_disagreement=None if dis is None else [float(v) for v in dis[b]],
            fractions=[float(v) for v in fractions[b]],
        )
        for b in range(probs.shape[0])
    ]


# --- ranking: scores plus diversity ----------------------------------------------------------------------------


def spread_ranking(
    scores: np.ndarray, embeddings: np.ndarray, keys: list[str], top: int
) -> tuple[list[int], dict[int, int]]:
    """Rank images by score while skipping near-duplicates and spreading the top over the pool.

    1. Candidates: the images by score (ties by ``keys``), each within ``DUPLICATE_DISTANCE`` of a candidate
       already taken skipped, until ``CANDIDATES_PER_PICK × top`` are taken.
    2. Greedy k-centre weighted by score over the candidates: the highest score first, then each time the one
       with the largest ``score × min(1, d / d_ref)``, ``d`` its distance to the nearest pick and ``d_ref`` the
       median distance between two candidates (the pool's usual spacing). Ties: the higher score, then the key.
    3. The ranking: the picks in that order, then every other image by score.

    Args:
        scores: (n,) image scores. embeddings: (n, D) L2-normalised. keys: n names (image paths) for ties.
        top: how many images the caller will show (sets the number of candidates).
    Returns:
        (the n indices in rank order, {index of a skipped near-duplicate: index of the candidate it copies}).
    """
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), keys[i]))
    limit = min(n, max(1, CANDIDATES_PER_PICK * top))
    emb = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    kept: list[int] = []
    duplicate_of: dict[int, int] = {}
    for i in order:
        if len(kept) == limit:
            break
        if kept:
            d = torch.cdist(emb[i : i + 1], emb[kept])[0]
            nearest = int(d.argmin())
            if float(d[nearest]) <= DUPLICATE_DISTANCE:
                duplicate_of[i] = kept[nearest]
                continue
        kept.append(i)
    picked = _weighted_k_centre(np.asarray(scores, dtype=np.float64)[kept], emb[kept])
    ranked = [kept[j] for j in picked]
    taken = set(ranked)
    return ranked + [i for i in order if i not in taken], duplicate_of


def _weighted_k_centre(scores: np.ndarray, emb: Tensor) -> list[int]:
    """Order of the m candidates (given in score order) under the rule of :func:`spread_ranking`, step 2."""
    m = len(scores)
    if m <= 1:
        return list(range(m))
    dist = torch.cdist(emb, emb).double().numpy()
    d_ref = float(np.median(dist[np.triu_indices(m, k=1)]))
    picked = [0]
    nearest = dist[0].copy()  # each candidate's distance to the nearest pick
    free = np.ones(m, dtype=bool)
    free[0] = False
    while free.any():
        spread = np.minimum(1.0, nearest / d_ref) if d_ref > 0 else (nearest > 0).astype(np.float64)
        value = np.where(free, scores * spread, -np.inf)
        best = value.max()
        # Ties: the first free candidate with the best value, i.e. the higher score, then the key.
        j = int(np.flatnonzero(value == best)[0])
        picked.append(j)
        free[j] = False
        nearest = np.minimum(nearest, dist[j])
    return picked


# --- running the models ----------------------------------------------------------------------------------------


def _same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models' backbones compute the same features (same spec and weights)."""
    if a.backbone.spec.to_dict() != b.backbone.spec.to_dict():
        return False
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def check_teacher(student: LoadedModel, teacher: LoadedModel | None) -> None:
    """Raise CheckpointError when ``teacher`` cannot be compared with ``student`` (other classes or input size)."""
    if teacher is None:
        return
    if teacher.class_names != student.class_names:
        raise CheckpointError(
            f"The teacher {teacher.path} knows classes {teacher.class_names} but the student {student.path} "
            f"{student.class_names}; pass the teacher the student was distilled from."
        )
    if teacher.size != student.size:
        raise CheckpointError(
            f"The teacher {teacher.path} runs at {teacher.size} px and the student {student.path} at "
            f"{student.size} px; pass the teacher the student was distilled from."
        )


class SuggestScorer:
    """Runs a student and (optionally) its teacher, with its stored supports, on uint8 batches: logits of both
    and pooled embeddings. Equal backbones (always within one distill run) encode each batch once for both.
    The student is prepared for inference in place (batch norms folded): never save it afterwards.

    Raises:
        CheckpointError: the teacher has other classes or another input size than the student.
    """

    def __init__(self, student: LoadedModel, teacher: LoadedModel | None, device: torch.device) -> None:
        retain_freed_memory()
        check_teacher(student, teacher)
        self.student = student.to(device)
        self.teacher = teacher.to(device) if teacher is not None else None
        self.device = device
        self.size = student.size
        self.class_names = student.class_names
        self.dtype = inference_dtype(device)  # the forward's arithmetic
        self.shared = self.teacher is not None and _same_backbone(self.student.model, self.teacher.model)
        # Inference only: the backbone's batch norms folded into its convs, as predict runs it (the folded
        # backbone computes the same features, so the teacher may read them too).
        self.student.model.backbone.fold_batchnorm()

    @torch.inference_mode()
    def infer(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """B×3×size×size uint8 → (student B×K×h×w logits, teacher logits on the same grid or None, B×D
        L2-normalised embeddings), float32 on the CPU."""
        images = images.to(self.device)
        with mixed_precision(self.device, self.dtype):
            feats = self.student.model.backbone.encode(images)
            student = self.student.model.forward_features(feats)[0].float()
            teacher = None
            if self.teacher is not None:
                support = self.teacher.support_features()
                if self.shared:
                    one = lambda b: [[m[b : b + 1] for m in level] for level in feats]  # noqa: E731
                    teacher = torch.cat(
                        [self.teacher.model.predict_features(one(b), support) for b in range(len(images))]
                    )
                else:
                    teacher = self.teacher.model.predict(images, support)
                teacher = teacher.float()
                if teacher.shape[-2:] != student.shape[-2:]:
                    teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
            pooled = feats[-1][-1].float().mean(dim=(2, 3))
        embeddings = F.normalize(pooled, dim=1)
        return student.cpu(), None if teacher is None else teacher.cpu(), embeddings.cpu()

    def score(self, images: Tensor) -> tuple[list[ImageScore], np.ndarray]:
        """B×3×size×size uint8 → (B scores, B×D embeddings)."""
        student, teacher, embeddings = self.infer(images)
        probs = torch.softmax(student, dim=1)
        scores = score_batch(probs, student.argmax(dim=1), None if teacher is None else teacher.argmax(dim=1))
        return scores, embeddings.numpy()


def score_images(
    scorer: SuggestScorer,
    paths: list[Path],
    batch_size: int = 2,
    workers: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, ImageScore | None, np.ndarray | None, str | None]]:
    """Yield ``(index, scores, embedding, None)`` per readable path and ``(index, None, None, error)`` per
    unreadable one, decoding ``batch_size`` images at a time (``workers`` processes)."""
    from fsdistill.infer.predictor import image_batches

    for good, failed in image_batches(paths, scorer.size, batch_size, workers):
        for index, error in failed:
            yield index, None, None, error
        if good:
            scores, embeddings = scorer.score(torch.stack([it["image"] for it in good]))
            for it, s, e in zip(good, scores, embeddings):
                yield it["index"], s, e, None
        if on_progress:
            on_progress(len(good) + len(failed))


# --- outputs ----------------------------------------------------------------------------------------------------


def csv_header(class_names: list[str]) -> list[str]:
    """The ranking CSV's columns: rank, image, score, disagreement, uncertainty, ``disagreement_<class>`` per
    foreground class, ``fraction_<class>`` per label (background first), duplicate_of."""
    return [
        "rank",
        "image",
        "score",
        "disagreement",
        "uncertainty",
        *(f"disagreement_{name}" for name in class_names[1:]),
        *(f"fraction_{name}" for name in class_names),
        "duplicate_of",
    ]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def write_ranking_csv(path: Path, rows: list[Suggestion], class_names: list[str]) -> Path:
    """Write ``rows`` as the ranking CSV (:func:`csv_header`) atomically; empty cells for missing values."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(csv_header(class_names))
    for row in rows:
        s = row.scores
        per_class = s.class_disagreement if s.class_disagreement is not None else [None] * (len(class_names) - 1)
        writer.writerow(
            [
                row.rank,
                row.image,
                _fmt(s.score),
                _fmt(s.disagreement),
                _fmt(s.uncertainty),
                *(_fmt(v) for v in per_class),
                *(_fmt(v) for v in s.fractions),
                row.duplicate_of or "",
            ]
        )
    return write_atomic(Path(path), buffer.getvalue())


@dataclass
class CopyReport:
    """What :func:`copy_images` did: (source, destination) of each file copied now, and of each already there."""

    copied: list[tuple[str, str]] = field(default_factory=list)
    present: list[tuple[str, str]] = field(default_factory=list)


def _same_file_content(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def copy_images(sources: list[Path], folder: Path) -> CopyReport:
    """Copy ``sources`` into ``folder`` under their file names, never overwriting a different file: a name taken
    by another source or a different file gets ``-2``, ``-3``, … before its suffix; a file already there with the
    same bytes counts as present (a rerun copies only what is missing). Each copy is renamed into place whole."""
    folder = Path(folder)
    report = CopyReport()
    reserved: set[str] = set()
    for source in sources:
        source = Path(source)
        for n in itertools.count(1):
            name = source.name if n == 1 else f"{source.stem}-{n}{source.suffix}"
            target = folder / name
            if name not in reserved and (not target.exists() or _same_file_content(source, target)):
                break
        reserved.add(name)
        if target.exists():
            report.present.append((str(source), str(target)))
            continue
        raise_if_interrupted()
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(source, tmp)
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, target)
        report.copied.append((str(source), str(target)))
    return report
