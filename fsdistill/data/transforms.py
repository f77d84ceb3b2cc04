"""Resizing, normalisation and flips shared by training, prediction and evaluation (one way to do each)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "resize_image",
    "resize_mask",
    "normalize",
    "normalize_coefficients",
    "FLIP_VIEWS",
    "flip",
]

# Cached augmentation views for training: identity, horizontal, vertical, both (dims of a …×H×W tensor to flip).
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 → size×size×3 uint8 (no aspect preservation, as the reference; area filter when shrinking)."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def to_chw_tensor(image: np.ndarray) -> Tensor:
    """H×W×3 uint8 → contiguous 3×H×W uint8 tensor (cv2.split de-interleaves faster than permute + contiguous)."""
    return torch.from_numpy(np.stack(cv2.split(image)))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """H×W uint8 class ids → size×size, nearest neighbour (class ids are not interpolated)."""
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def normalize_coefficients(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[list[float], list[float]]:
    """Per-channel (scale, shift) with ``x * scale + shift = (x / 255 - mean) / std`` for uint8 ``x``: one
    multiply-add, shared by the backbone and :func:`normalize` so both give bit-identical inputs."""
    return [1.0 / (255.0 * s) for s in std], [-m / s for m, s in zip(mean, std)]


def normalize(images: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """B×H×W×3 or B×3×H×W uint8 → B×3×H×W float32 normalised with the backbone's mean/std (0–1 scale), for
    code that feeds floats to a model from outside it (ONNX export); a Backbone normalises uint8 images itself."""
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    scale, shift = normalize_coefficients(mean, std)
    scale_t = torch.tensor(scale, device=images.device).view(1, 3, 1, 1)
    shift_t = torch.tensor(shift, device=images.device).view(1, 3, 1, 1)
    return images.float().mul_(scale_t).add_(shift_t)


def flip(x: Tensor, view: int) -> Tensor:
    """Apply flip view ``view`` (index into FLIP_VIEWS) to the last two dims."""
    dims = FLIP_VIEWS[view]
    return torch.flip(x, dims) if dims else x
