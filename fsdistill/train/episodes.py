"""Cached backbone features and leave-one-out training episodes (TransferFSS, reference.md §2.2).

The backbone is frozen, so the features of every support image (and of its flipped views and random crops, our
augmentation) are computed once before training: a step then costs only the attention and the decoder, not a
backbone pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from fsdistill.config import FLIP_VIEW_BYTES
from fsdistill.data.support_tensors import SupportTensors
from fsdistill.data.transforms import FLIP_VIEWS, flip, random_gains, seeded_crop_views
from fsdistill.models.backbone import cat_features
from fsdistill.models.student import student_inputs
from fsdistill.models.teacher import DCAMATeacher, Features, SupportFeatures
from fsdistill.runtime import storage_bytes

__all__ = [
    "FeatureCache",
    "flip_batch",
    "PairAttention",
    "Episode",
    "EpisodeSampler",
]

# Memory for the attention sums of (query, support) pairs kept during one training run.
PAIR_ATTENTION_BYTES = 2 * 2**30
# Added to the crop seed for the choice of crop views in the student's batches (the geometry's: CROP_GEOMETRY_SEED
# of fsdistill.data.transforms).
CROP_PICK_SEED = 777
# Added to the crop seed for the crop views' gains (``crop_gain``; a torch generator, unrelated to the picks' draws).
CROP_GAIN_SEED = 777
# Share of the student's supervised batch images drawn as one of their crop views (when there are any).
CROP_PICK_PROBABILITY = 0.5


def _tensors(features: Features | SupportFeatures) -> list[Tensor]:
    """Every tensor of backbone features (levels of maps) or of a support set's teacher features."""
    if isinstance(features, SupportFeatures):
        return [*(m for maps in features.feats.values() for m in maps), *features.masks.values(), features.present]
    return [m for level in features for m in level]


def _select(feats: Features, index: int) -> Features:
    return [[m[index : index + 1] for m in level] for level in feats]


def flip_batch(generator: torch.Generator, feats: Features, *maps: Tensor) -> tuple[Features, list[Tensor]]:
    """Flip each image of a batch, its features and its spatial targets together, in a random flip view of its own.

    The cached features are flipped instead of recomputed from a flipped image: not the same features, but the
    head learns each structure in every orientation. ``maps``: tensors whose first dim is B and last two are
    spatial (B×H×W masks, B×N×n×h×w coarse maps); ``generator`` draws one of the ``FLIP_VIEWS`` per image.
    """
    views = torch.randint(len(FLIP_VIEWS), (len(feats[0][0]),), generator=generator).tolist()

    def each(t: Tensor) -> Tensor:
        return torch.stack([flip(t[i], v) for i, v in enumerate(views)])

    return [[each(m) for m in level] for level in feats], [each(t) for t in maps]


class FeatureCache:
    """Backbone features and teacher support features of every support image in every flip view, and the
    features of ``crop_views`` random crops of each (:func:`~fsdistill.data.transforms.random_resized_crops`, area
    fraction ≥ ``crop_min_area``, centred on a class's pixel with ``crop_centre_on_class``) for the student's
    supervised batches.

    ``augment``: cache the four flip views (True), the images as they are (False), or the flip views where their
    features fit :data:`~fsdistill.config.FLIP_VIEW_BYTES` (None; ``views_left_out`` then says why a folder got one
    view). A crop view costs a backbone pass per support image when the cache is built and its feature maps (the
    ones the student reads) in memory. ``crop_seed`` draws the crops and, in :meth:`batch`, which images are crop
    views. ``crop_gain`` (low, high): each crop is brightened or darkened by a gain log-uniform in that range
    (:func:`~fsdistill.data.transforms.random_gains`) before it is encoded (``distill --unlabeled``: see
    :func:`~fsdistill.train.pool.crop_gain_range`); (1, 1) leaves the crops as they are.
    """

    def __init__(
        self,
        teacher: DCAMATeacher,
        support: SupportTensors,
        device: torch.device,
        augment: bool | None,
        crop_views: int = 0,
        crop_min_area: float = 1.0,
        crop_seed: int = 0,
        crop_centre_on_class: bool = False,
        crop_gain: tuple[float, float] = (1.0, 1.0),
    ) -> None:
        self.masks = [support.masks.to(device)]
        self.feats = [teacher.backbone.encode_batched(support.images)]
        self.support = [teacher.prepare_support(self.feats[0], self.masks[0])]
        self.views_left_out: str | None = None
        if augment is None:
            # Measured from the identity view: every view's features have its shapes.
            needed = len(FLIP_VIEWS) * storage_bytes(
                [self.masks[0], *_tensors(self.feats[0]), *_tensors(self.support[0])]
            )
            augment = needed <= FLIP_VIEW_BYTES
            if not augment:
                gib = needed / 2**30
                self.views_left_out = (
                    f"their features would take {gib:.1f} GiB, more than {FLIP_VIEW_BYTES / 2**30:g} GiB"
                )
        for view in range(1, len(FLIP_VIEWS) if augment else 1):
            masks = flip(support.masks, view).to(device)
            feats = teacher.backbone.encode_batched(flip(support.images, view))
            self.masks.append(masks)
            self.feats.append(feats)
            self.support.append(teacher.prepare_support(feats, masks))
        self.views = len(self.feats)
        self.present = self.support[0].present.cpu()  # S×N, the same in every view
        # Kept across training phases and for the per-class check while the attention is frozen.
        self.pairs: PairAttention | None = None
        self.crop_feats: list[Features] = []
        self.crop_masks: list[Tensor] = []
        gains = torch.Generator().manual_seed(crop_seed + CROP_GAIN_SEED) if crop_gain != (1.0, 1.0) else None
        for images, masks in seeded_crop_views(
            support.images, support.masks, crop_views, crop_min_area, crop_seed, crop_centre_on_class
        ):
            if gains is not None:
                images = random_gains(images, *crop_gain, gains)
            self.crop_feats.append(student_inputs(teacher.backbone.encode_batched(images)))
            self.crop_masks.append(masks.to(device))
        self._crop_picks = random.Random(crop_seed + CROP_PICK_SEED)

    def pair_attention(self, teacher: DCAMATeacher) -> PairAttention:
        """The pair attention of these supports (created once). Callers use it only while ``teacher``'s attention
        is frozen, and drop it (``pairs = None``) when a phase trains the attention: its sums would be stale."""
        if self.pairs is None or self.pairs.teacher is not teacher:
            self.pairs = PairAttention(teacher)
        return self.pairs

    def query(self, index: int, view: int) -> tuple[Features, Tensor]:
        """Features (batch 1) and 1×H×W mask of one support image used as the query."""
        return _select(self.feats[view], index), self.masks[view][index : index + 1]

    def batch(self, picks: list[tuple[int, int]]) -> tuple[Features, Tensor]:
        """Features (batch B; level 0 its last map only) and B×H×W masks of the (index, view) picks: the student's
        supervised batch. With crop views, each pick is one of its image's crop views with probability
        ``CROP_PICK_PROBABILITY`` (drawn from the cache's crop seed)."""
        feats, masks = [], []
        for index, view in picks:
            if self.crop_feats and self._crop_picks.random() < CROP_PICK_PROBABILITY:
                crop = self._crop_picks.randrange(len(self.crop_feats))
                feats.append(_select(self.crop_feats[crop], index))
                masks.append(self.crop_masks[crop][index : index + 1])
            else:
                feats.append(student_inputs(_select(self.feats[view], index)))
                masks.append(self.masks[view][index : index + 1])
        return cat_features(feats), torch.cat(masks)

    def supports(self, picks: list[tuple[int, int]]) -> SupportFeatures:
        """SupportFeatures of the (index, view) picks, shots concatenated in that order."""
        parts = [self.support[view].select([index]) for index, view in picks]
        return SupportFeatures(
            feats={lvl: [torch.cat(maps) for maps in zip(*(p.feats[lvl] for p in parts))] for lvl in parts[0].feats},
            masks={lvl: torch.cat([p.masks[lvl] for p in parts]) for lvl in parts[0].masks},
            present=torch.cat([p.present for p in parts]),
        )


class PairAttention:
    """The teacher's coarse maps of training episodes, from attention sums kept per (query, support) pair.

    With frozen attention projections an episode's coarse maps are ratios of per-support sums that never change
    (:meth:`~fsdistill.models.teacher.DCAMATeacher.coarse_from_sums`): each pair is computed the first time an
    episode draws it and kept (up to ``max_bytes``). Dropout is off (the maps equal inference's).
    """

    def __init__(self, teacher: DCAMATeacher, max_bytes: int = PAIR_ATTENTION_BYTES) -> None:
        self.teacher, self.max_bytes = teacher, max_bytes
        self._sums: dict[tuple[int, int, int, int], list[Tensor]] = {}
        self.bytes = 0
        self.computed = 0  # pairs computed (cached or not), for tests and logs

    @torch.no_grad()
    def coarse_maps(self, episode: Episode, query: Features, support: SupportFeatures) -> list[Tensor]:
        """Per stage N×n×h×w coarse maps of the episode's query (features ``query``) against its ``support``."""
        keys = [(episode.query, episode.query_view, index, view) for index, view in episode.supports]
        missing = [i for i, key in enumerate(keys) if key not in self._sums]
        fresh: dict[int, list[Tensor]] = {}
        if missing:
            sums = self.teacher.attention_sums(query, support.select(missing))
            self.computed += len(missing)
            for row, i in enumerate(missing):
                fresh[i] = [stage[row] for stage in sums]
                size = sum(t.numel() * t.element_size() for t in fresh[i])
                if self.bytes + size <= self.max_bytes:
                    self._sums[keys[i]] = [t.clone() for t in fresh[i]]  # a copy, not a view of the whole batch
                    self.bytes += size
        per_support = [fresh[i] if i in fresh else self._sums[key] for i, key in enumerate(keys)]
        stacked = [torch.stack(parts) for parts in zip(*per_support)]
        return self.teacher.coarse_from_sums(stacked, support.present, query)


@dataclass(frozen=True)
class Episode:
    query: int
    query_view: int
    supports: tuple[tuple[int, int], ...]  # (index, view) pairs


class EpisodeSampler:
    """Leave-one-out episodes: a support image is the query against 1–``max_shots`` others.

    Queries are class-balanced: each pass over the foreground classes (in a fresh random order; a class
    ``class_repeats[c]`` times) takes the next image that shows the class, so a class shown by few supports is a
    target as often as one shown by all. ``class_queries`` counts, per class, the queries that showed it. An
    episode's supports first cover the query's classes, then random other images fill it up to K, drawn from
    1..``max_shots``. With a single support image the query is a flipped view of it.
    """

    def __init__(
        self, present: Tensor, max_shots: int, views: int, seed: int, class_repeats: list[int] | None = None
    ) -> None:
        self.present = present.bool()
        self.count = present.shape[0]
        self.max_shots = max_shots
        self.views = views
        self.rng = random.Random(seed)
        num_classes = self.present.shape[1]
        self.class_queries = [0] * num_classes
        # Images of each class, and the classes that have any: a class no support shows is never a query target.
        self._images_of = [self.present[:, c].nonzero().flatten().tolist() for c in range(num_classes)]
        self.trained_classes = [c for c in range(num_classes) if self._images_of[c]]
        # A pass over the classes holds each class ``class_repeats[c]`` times (default once): ``distill --init``
        # repeats the classes a run did not know yet, so they catch up with the ones that start trained.
        repeats = class_repeats or [1] * num_classes
        self._classes: list[int | None] = [c for c in self.trained_classes for _ in range(max(1, repeats[c]))] or [None]
        self._class_order: list[int | None] = []
        self._image_order: dict[int | None, list[int]] = {}

    def _next_query(self) -> int:
        if not self._class_order:  # every class is a target once per pass, in a fresh random order
            self._class_order = list(self._classes)
            self.rng.shuffle(self._class_order)
        cls = self._class_order.pop()
        order = self._image_order.setdefault(cls, [])
        if not order:  # the images of that class in a fresh random order (all images if no class has any)
            order.extend(self._images_of[cls] if cls is not None else range(self.count))
            self.rng.shuffle(order)
        query = order.pop()
        for shown in self.present[query].nonzero().flatten().tolist():
            self.class_queries[shown] += 1
        return query

    def sample_images(self, count: int) -> list[tuple[int, int]]:
        """``count`` class-balanced (image, view) picks, for a supervised batch (counted in ``class_queries``)."""
        return [(self._next_query(), self.rng.randrange(self.views)) for _ in range(count)]

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
