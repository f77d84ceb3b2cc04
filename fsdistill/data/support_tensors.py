"""A support folder as tensors at the model's input size (apart from support_index, which needs no torch)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from fsdistill.data.images import pixel_sha256
from fsdistill.data.masks import IGNORE_INDEX, NO_BACKGROUND_WARNING
from fsdistill.data.support_index import SupportIndex
from fsdistill.data.transforms import resize_image, resize_mask

__all__ = ["SupportTensors", "load_support_tensors"]

log = logging.getLogger(__name__)


@dataclass
class SupportTensors:
    """``images``: S×3×size×size uint8; ``masks``: S×size×size uint8 class ids (255 = ignore); ``keys``: sample
    keys."""

    images: Tensor
    masks: Tensor
    keys: list[str]
    # Of each support as read (full size): (height, width) and images.pixel_sha256, recorded in the artifacts.
    sizes: list[tuple[int, int]] = field(default_factory=list)
    pixel_sha256: list[str] = field(default_factory=list)
    fingerprint: str = ""  # SupportIndex.fingerprint() when the supports were read
    present_classes: set[int] = field(default_factory=set)  # class ids in the full-size masks (255 left out)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_support_tensors(index: SupportIndex, size: int) -> SupportTensors:
    """Read every pair of ``index`` and resize it to size×size, recording each image's size and pixel hash, the
    classes the masks show and the folder's fingerprint as read (what the artifacts record, whatever changes in
    the folder during training). A class that a support shows but that no pixel of its resized mask keeps (a
    structure smaller than the input grid's cells) is said in a warning: that support cannot teach it, and a class
    lost in every support is never learned."""
    images, masks = [], []
    sizes, digests = [], []
    present: set[int] = set()
    lost: dict[int, list[str]] = {}
    for i in range(len(index)):
        image, mask = index.load_pair(i)
        sizes.append((image.shape[0], image.shape[1]))
        digests.append(pixel_sha256(image))
        shown = set(np.unique(mask).tolist())
        present |= shown
        images.append(resize_image(image, size))
        masks.append(resize_mask(mask, size))
        for cls in shown - set(np.unique(masks[-1]).tolist()) - {0, 255}:
            lost.setdefault(cls, []).append(index.samples[i].key)
    if not any((mask == 0).any() for mask in masks):
        log.warning(NO_BACKGROUND_WARNING)
    for cls, keys in sorted(lost.items()):
        log.warning(
            "Class %r vanishes when %d support image(s) are resized to %d px (e.g. %s): too small at that size, so "
            "they cannot teach it; use a larger --size or crop closer to it.",
            index.class_names[cls], len(keys), size, keys[0],
        )  # fmt: skip
    return SupportTensors(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(np.stack(masks)),
        keys=[s.key for s in index.samples],
        sizes=sizes,
        pixel_sha256=digests,
        fingerprint=index.fingerprint(),
        present_classes=present - {IGNORE_INDEX},
    )
