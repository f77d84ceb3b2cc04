"""Support tensors, cached backbone features and leave-one-out training episodes (TransferFSS, reference.md §2.2).

The backbone is frozen, so the features of every support image (and of its flipped views, our augmentation) are
computed once before training: a step then costs only the attention and the decoder, not a backbone pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fsdistill.data.transforms import FLIP_VIEWS, flip, normalize, resize_image, resize_mask
from fsdistill.models.teacher import DCAMATeacher, Features, SupportFeatures

__all__ = ["SupportTensors", "load_support_tensors", "FeatureCache", "Episode", "EpisodeSampler", "encode_batched"]


@dataclass
class SupportTensors:
    """A support set resized to the model's input size.

    Attributes:
        images: S×3×size×size uint8. masks: S×size×size uint8 class ids (255 = ignore). keys: sample keys.
    """

    images: Tensor
    masks: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_support_tensors(index, size: int) -> SupportTensors:
    """Read every pair of a :class:`~fsdistill.data.discover.SupportIndex` and resize it to size×size."""
    images, masks = [], []
    for i in range(len(index)):
        image, mask = index.load_pair(i)
        images.append(resize_image(image, size))
        masks.append(resize_mask(mask, size))
    return SupportTensors(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks)),
        keys=[s.key for s in index.samples],
    )


@torch.no_grad()
def encode_batched(backbone, images: Tensor, device: torch.device, batch_size: int = 8) -> Features:
    """S×3×H×W uint8 → backbone features of all images (levels × block maps, each S×C×h×w), in batches."""
    spec = backbone.spec
    parts: list[Features] = []
    for start in range(0, images.shape[0], batch_size):
        batch = normalize(images[start : start + batch_size].to(device), spec.mean, spec.std)
        parts.append(backbone(batch))
    return [[torch.cat([p[lvl][b] for p in parts]) for b in range(len(parts[0][lvl]))] for lvl in range(len(parts[0]))]


def _select(feats: Features, index: int) -> Features:
    return [[m[index : index + 1] for m in level] for level in feats]


class FeatureCache:
    """Backbone features and teacher support features of every support image in every flip view."""

    def __init__(self, teacher: DCAMATeacher, support: SupportTensors, device: torch.device, augment: bool) -> None:
        self.views = len(FLIP_VIEWS) if augment else 1
        self.masks = [flip(support.masks, v).to(device) for v in range(self.views)]
        self.feats: list[Features] = []
        self.support: list[SupportFeatures] = []
        for v in range(self.views):
            feats = encode_batched(teacher.backbone, flip(support.images, v), device)
            self.feats.append(feats)
            self.support.append(teacher.prepare_support(feats, self.masks[v]))
        self.present = self.support[0].present.cpu()  # S×N, the same in every view

    def query(self, index: int, view: int) -> tuple[Features, Tensor]:
        """Features (batch 1) and 1×H×W mask of one support image used as the query."""
        return _select(self.feats[view], index), self.masks[view][index : index + 1]

    def supports(self, picks: list[tuple[int, int]]) -> SupportFeatures:
        """SupportFeatures of the (index, view) picks, shots concatenated in that order."""
        parts = [self.support[view].select([index]) for index, view in picks]
        return SupportFeatures(
            feats={lvl: [torch.cat([p.feats[lvl][b] for p in parts]) for b in range(len(parts[0].feats[lvl]))]
                   for lvl in parts[0].feats},
            masks={lvl: torch.cat([p.masks[lvl] for p in parts]) for lvl in parts[0].masks},
            present=torch.cat([p.present for p in parts]),
        )


@dataclass(frozen=True)
class Episode:
    query: int
    query_view: int
    supports: tuple[tuple[int, int], ...]  # (index, view) pairs


class EpisodeSampler:
    """Leave-one-out episodes: each support image in turn is the query against 1–``max_shots`` others.

    An episode draws K uniformly from 1..``max_shots`` (capped by the other images available); its supports
    first cover the query's classes (one image per class it shows, like the reference's ``paired`` episodes),
    then random other images fill it up to K. Before this fill-up every episode was one image per class, while
    inference attends to all supports at once: the teacher never trained for the multi-shot softmax it is used
    with. With a single support image the query is a flipped view of it (needs augmentation views).
    """

    def __init__(self, present: Tensor, max_shots: int, views: int, seed: int) -> None:
        self.present = present.bool()
        self.count = present.shape[0]
        self.max_shots = max_shots
        self.views = views
        self.rng = random.Random(seed)
        self._order: list[int] = []

    def _next_query(self) -> int:
        if not self._order:  # every image is a query once per pass, in a fresh random order
            self._order = list(range(self.count))
            self.rng.shuffle(self._order)
        return self._order.pop()

    def sample(self) -> Episode:
        query = self._next_query()
        others = [i for i in range(self.count) if i != query] or [query]
        query_view = self.rng.randrange(self.views)
        if self.count == 1 and self.views > 1:
            query_view = self.rng.randrange(1, self.views)  # never the identical view
        classes = self.present[query].nonzero().flatten().tolist()
        self.rng.shuffle(classes)
        chosen: list[int] = []
        for cls in classes:
            if len(chosen) >= self.max_shots:
                break
            if any(self.present[i, cls] for i in chosen):
                continue
            candidates = [i for i in others if self.present[i, cls] and i not in chosen]
            if candidates:
                chosen.append(self.rng.choice(candidates))
        shots = self.rng.randint(1, max(1, min(self.max_shots, len(others))))
        rest = [i for i in others if i not in chosen]
        self.rng.shuffle(rest)
        while len(chosen) < shots and rest:
            chosen.append(rest.pop())
        if not chosen:
            chosen.append(self.rng.choice(others))
        supports = tuple((i, self.rng.randrange(self.views) if i != query else 0) for i in chosen)
        return Episode(query, query_view, supports)
