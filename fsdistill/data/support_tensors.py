"""A support folder as tensors at the model's input size (apart from support_index, which needs no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fsdistill.data.support_index import SupportIndex
from fsdistill.data.transforms import resize_image, resize_mask

__all__ = ["SupportTensors", "load_support_tensors"]


@dataclass
class SupportTensors:
    """``images``: S×3×size×size uint8; ``masks``: S×size×size uint8 class ids (255 = ignore); ``keys``: sample
    keys."""

    images: Tensor
    masks: Tensor
    keys: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_support_tensors(index: SupportIndex, size: int) -> SupportTensors:
    """Read every pair of ``index`` and resize it to size×size."""
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
