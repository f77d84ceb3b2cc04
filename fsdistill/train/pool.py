"""Unlabeled images as training data for the student (``distill --unlabeled``).

After the support phase the teacher (with the student, per ``labeller``) labels a pool of unlabeled images; the
student then also trains on their pseudo-labels (unsure pixels ignored) and on the teacher's coarse maps of them.
Each pool image costs one backbone and one teacher pass, once: its features are cached.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsdistill.models.backbone import cat_features
from fsdistill.models.student import DistilledStudent, student_inputs
from fsdistill.models.teacher import ATTENTION_LEVELS, DCAMATeacher, Features, SupportFeatures
from fsdistill.train.losses import IGNORE_INDEX

__all__ = [
    "POOL_LABELLERS",
    "PoolTargets",
    "crop_gain_range",
    "join_pool",
    "label_batch",
    "label_files",
    "nearest_supports",
    "pseudo_labels",
]

POOL_LABELLERS = ("teacher", "student", "mean", "agree")

# The pool's brightness against the supports' (``train.pool_brightness``). An image's brightness is this percentile
# of its pixel values: its bright objects, whatever share of it they cover.
BRIGHTNESS_PERCENTILE = 99.0
BRIGHTNESS_SAMPLE = 64  # pool images read for it (a fixed sample of a larger pool)
# A pool less than this much brighter (or darker) than the supports is left alone: a gain of 7-11 % on the crop
# views cost brain K = 1 0.03-0.10 (its classes are intensity levels of one scan), where nuclei's pools lie 2-4x
# beyond their supports (docs/benchmarks-history.md, "Brightness on nuclei's failing draw").
BRIGHTNESS_MIN_RATIO = 1.25
BRIGHTNESS_MAX_GAIN = 2.0


@dataclass
class PoolTargets:
    """Cached features and targets of P unlabeled images.

    Attributes:
        feats: backbone features, each P×C×h×w (level 0: its last map only, all the student reads there).
        coarse: the teacher's coarse maps against all supports, per stage 2, 3, 4: P×N×n×h×w.
        labels: P×H×W pseudo-label class ids (H = W = the model's input size), IGNORE_INDEX where unsure.
        trusted: N bool, the foreground classes the pool teaches.
    """

    feats: Features
    coarse: list[Tensor]
    labels: Tensor
    trusted: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: list[int]) -> tuple[Features, Tensor, list[Tensor]]:
        """Features (batch B), B×H×W pseudo-labels and per-stage B×N×n×h×w teacher coarse maps of ``indices``."""
        index = torch.tensor(indices, device=self.labels.device)
        feats = [[m.index_select(0, index) for m in level] for level in self.feats]
        return feats, self.labels.index_select(0, index), [c.index_select(0, index) for c in self.coarse]

    def sampler(self, seed: int) -> _PoolSampler:
        return _PoolSampler(len(self), seed)

    def labelled_fraction(self) -> float:
        """Share of pool pixels that carry a pseudo-label (the rest the labeller was unsure of)."""
        return float((self.labels != IGNORE_INDEX).float().mean()) if len(self) else 0.0


class _PoolSampler:
    """Pool images in a fresh random order each pass (every image once per pass)."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.rng, self._order = count, random.Random(seed), []

    def sample(self, size: int) -> list[int]:
        picks = []
        for _ in range(min(size, self.count)):
            if not self._order:
                self._order = list(range(self.count))
                self.rng.shuffle(self._order)
            picks.append(self._order.pop())
        return picks


def pseudo_labels(
    teacher_probs: Tensor, student_probs: Tensor, labeller: str, threshold: float, trusted: Tensor | None = None
) -> Tensor:
    """B×K×H×W class probabilities of teacher and student → B×H×W labels, IGNORE_INDEX where unsure.

    ``teacher`` / ``student``: that model's most likely class where its probability is at least ``threshold``;
    ``mean``: the most likely class of their mean probabilities, where that mean is at least ``threshold``;
    ``agree``: the class both models pick, where they pick the same one and their mean probability of it is at
    least ``threshold``. ``trusted`` (K − 1 bool, all but the student labeller): pixels given a foreground class that is
    not trusted are ignored, and so are the background pixels where the teacher's runner-up is such a class with
    at least half the top probability (where a class it cannot find may hide).
    """
    if labeller not in POOL_LABELLERS:
        raise ValueError(f"unknown pool labeller {labeller!r}; choose from {list(POOL_LABELLERS)}")
    if labeller == "agree":
        probs = (teacher_probs + student_probs) / 2
        confident, labels = probs.max(dim=1)
        confident = confident.masked_fill(labels != student_probs.argmax(dim=1), 0.0)
        confident = confident.masked_fill(labels != teacher_probs.argmax(dim=1), 0.0)
    elif labeller == "mean":
        confident, labels = ((teacher_probs + student_probs) / 2).max(dim=1)
    else:
        confident, labels = (teacher_probs if labeller == "teacher" else student_probs).max(dim=1)
    labels = labels.masked_fill(confident < threshold, IGNORE_INDEX)
    if trusted is not None and labeller != "student" and not bool(trusted.all()):
        untrusted = torch.cat([trusted.new_zeros(1), ~trusted]).to(labels.device)  # K, background first
        labels = labels.masked_fill(untrusted[labels.clamp_max(len(untrusted) - 1)] & (labels != IGNORE_INDEX),
                                    IGNORE_INDEX)  # fmt: skip
        top2 = teacher_probs.topk(2, dim=1)
        hiding = (labels == 0) & untrusted[top2.indices[:, 1]] & (top2.values[:, 1] >= top2.values[:, 0] / 2)
        labels = labels.masked_fill(hiding, IGNORE_INDEX)
    return labels


def nearest_supports(similarity: Tensor, present: Tensor, shots: int) -> list[int]:
    """The supports an image is labelled against: its ``shots`` most similar ones, then, for each class those miss
    and some support shows, the most similar support that shows it.

    Args:
        similarity: S similarities of the image to each support. present: S×N bool, the classes each support shows.
    Returns:
        Support indices in ascending order (≥ min(shots, S) of them; all S when ``shots`` ≥ S).
    """
    order = similarity.argsort(descending=True).tolist()
    chosen = order[:shots]
    missing = present.any(dim=0) & ~present[chosen].any(dim=0)
    for index in order[shots:]:
        if not missing.any():
            break
        if (present[index] & missing).any():
            chosen.append(index)
            missing &= ~present[index]
    return sorted(chosen)


def _embedding(last_map: Tensor) -> Tensor:
    """B×C×h×w last backbone map → B×C unit vectors (global average pooling): what "similar images" compares."""
    return F.normalize(last_map.mean(dim=(-2, -1)), dim=1)


def _probs(logits: Tensor, size: tuple[int, int]) -> Tensor:
    if logits.shape[-2:] != size:  # the light decoder's stride-4 logits, upsampled as the losses do
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.float().softmax(dim=1)


# One labelled batch: its features (per level, the kept block maps, each B×C×h×w), the teacher's coarse maps per
# stage (B×N×n×h×w) and the B×H×W uint8 pseudo-labels.
LabelledBatch = tuple[Features, list[Tensor], Tensor]


@torch.no_grad()
def label_batch(
    teacher: DCAMATeacher,
    student: DistilledStudent,
    support: SupportFeatures,
    images: Tensor,
    labeller: str,
    threshold: float,
    trusted: Tensor,
    shots: int | None = None,
) -> LabelledBatch:
    """Encode and label one batch of B×3×H×W uint8 images at the model's input size (``labeller``, ``threshold``,
    ``trusted``: see :func:`pseudo_labels`); the models must be in eval mode. A batch's results depend only on its
    own images, so batches may be labelled anywhere and joined with :func:`join_pool`.

    The teacher compares each image with its :func:`nearest_supports` (``shots`` of them, plus one for each class
    those miss), or with all supports when ``shots`` is None: its cost grows with the supports it reads, and it was
    trained on episodes of at most ``max_shots``.
    """
    images = images.to(support.present.device)
    feats = teacher.backbone.encode(images)
    size = (images.shape[-2], images.shape[-1])
    s_logits, _ = student.forward_features(feats)
    if shots is not None:
        similarity = _embedding(feats[-1][-1]) @ _embedding(support.feats[ATTENTION_LEVELS[-1]][-1]).T  # B×S
    per_image_coarse, t_logits = [], []
    for i in range(images.shape[0]):
        query = [[m[i : i + 1] for m in level] for level in feats]
        chosen = support if shots is None else support.select(nearest_supports(similarity[i], support.present, shots))
        coarse = teacher.coarse_maps(query, chosen)  # per stage N×n×h×w
        t_logits.append(teacher.decode_episode(query, chosen, coarse, chosen.present.any(dim=0)))
        per_image_coarse.append(coarse)
    labels = pseudo_labels(_probs(torch.cat(t_logits), size), _probs(s_logits, size), labeller, threshold, trusted)
    return student_inputs(feats), [torch.stack(stage) for stage in zip(*per_image_coarse)], labels.to(torch.uint8)


def join_pool(parts: list[LabelledBatch], trusted: Tensor, device: torch.device) -> PoolTargets | None:
    """The :class:`PoolTargets` of labelled batches, in their order, on ``device``; None without a batch."""
    if not parts:
        return None
    return PoolTargets(
        feats=[[m.to(device) for m in level] for level in cat_features([p[0] for p in parts])],
        coarse=[torch.cat(stage).to(device) for stage in zip(*(p[1] for p in parts))],
        labels=torch.cat([p[2].to(device) for p in parts]),
        trusted=trusted.to(device),
    )


# One batch of pool files labelled: the indices (into the path list) of its readable images, in order, the
# ``(index, message)`` of each unreadable one, and the labelled batch (None when none was readable).
FileBatch = tuple[list[int], list[tuple[int, str]], LabelledBatch | None]


def label_files(
    teacher: DCAMATeacher,
    student: DistilledStudent,
    support: SupportFeatures,
    paths: list[Path],
    size: int,
    labeller: str,
    threshold: float,
    trusted: Tensor,
    batch_size: int,
    shots: int | None = None,
) -> Iterator[FileBatch]:
    """Decode ``paths`` ``batch_size`` at a time (resized to size×size) and label each batch in this process (the
    local engine of ``distill --unlabeled``; the Ray one cuts the same batches); ``shots``: see
    :func:`label_batch`."""
    from fsdistill.infer.predictor import image_batches

    teacher.eval()
    student.eval()
    for items, errors in image_batches(paths, size, batch_size, workers=0):
        batch = None
        if items:
            images = torch.stack([it["image"] for it in items])
            batch = label_batch(teacher, student, support, images, labeller, threshold, trusted, shots)
        yield [it["index"] for it in items], errors, batch


def brightness(images: Tensor) -> list[float]:
    """B×3×H×W uint8 → each image's :data:`BRIGHTNESS_PERCENTILE` th percentile pixel value (numpy's, linear)."""
    return [float(np.percentile(image.cpu().numpy(), BRIGHTNESS_PERCENTILE)) for image in images]


def crop_gain_range(support_images: Tensor, paths: list[Path], size: int) -> tuple[float, float]:
    """The gains (low, high) for the student's crop views of the supports, from how much brighter or darker the pool
    is than the supports (``distill --unlabeled``, ``train.pool_brightness``).

    ``high``: the pool's 90th-percentile brightness over the brightest support's; ``low``: its 10th percentile over
    the dimmest support's; each clipped to :data:`BRIGHTNESS_MAX_GAIN` (or its inverse), and 1 where the pool lies
    within :data:`BRIGHTNESS_MIN_RATIO` of the supports on that side. Read from a fixed sample of
    :data:`BRIGHTNESS_SAMPLE` pool images, decoded and resized as the labeller decodes them; unreadable ones are
    skipped (the labeller reports them), and with none readable the range is (1, 1).

    Args:
        support_images: S×3×size×size uint8. paths: the pool's images. size: the model's input size.
    """
    from fsdistill.infer.predictor import image_batches

    sample = sorted(random.Random(0).sample(list(paths), min(BRIGHTNESS_SAMPLE, len(paths))))
    # The DataLoader behind image_batches draws its seed from torch's global generator: forked, so that reading the
    # sample leaves the run's training draws as they would be without it.
    with torch.random.fork_rng(devices=[]):
        pool = [
            value
            for items, _ in image_batches(sample, size, 8, 0)
            if items
            for value in brightness(torch.stack([it["image"] for it in items]))
        ]
    if not pool:
        return 1.0, 1.0
    supports = brightness(support_images)
    high = float(np.quantile(pool, 0.9)) / max(max(supports), 1.0)
    low = float(np.quantile(pool, 0.1)) / max(min(supports), 1.0)
    high = min(high, BRIGHTNESS_MAX_GAIN) if high >= BRIGHTNESS_MIN_RATIO else 1.0
    low = max(low, 1 / BRIGHTNESS_MAX_GAIN) if low <= 1 / BRIGHTNESS_MIN_RATIO else 1.0
    return low, high
