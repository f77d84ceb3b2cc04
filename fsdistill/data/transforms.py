"""Resizing, normalisation and flips shared by training, prediction and evaluation (one way to do each)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsdistill.data.masks import IGNORE_INDEX

__all__ = [
    "resize_image",
    "resize_mask",
    "normalize",
    "normalize_coefficients",
    "FLIP_VIEWS",
    "flip",
    "random_gains",
    "random_resized_crops",
    "seeded_crop_views",
]

# Crop views' aspect ratios (width / height) are drawn log-uniform in [e^-r, e^r] with r ≈ ln(4/3).
CROP_LOG_ASPECT = 0.2877
# Added to a run's crop seed for the crops' geometry (seeded_crop_views).
CROP_GEOMETRY_SEED = 12345

# Cached augmentation views for training: identity, horizontal, vertical, both (dims of a …×H×W tensor to flip).
FLIP_VIEWS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 uint8 → size×size×3 uint8 (no aspect preservation, as the reference): area filter when ``size`` is
    below both sides, bilinear otherwise (the rule the ONNX metadata states for users' own code)."""
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


def random_resized_crops(
    images: Tensor, masks: Tensor, min_area: float, generator: torch.Generator, centre_on_class: bool = False
) -> tuple[Tensor, Tensor]:
    """One random crop of each image, rescaled to the full size: a zoomed-in view for training.

    A crop's share of its image's area is drawn uniformly in [``min_area``, 1] and its aspect ratio log-uniformly
    in 3/4–4/3 (a side longer than the image's is cut to it, which leaves at least 3/4 of the area), at a uniform
    position inside the image, or with ``centre_on_class`` around a random pixel of one of the classes the image
    shows (each class, background included, equally likely; the pixel lies in the middle half of the crop unless an
    image edge pushes it off-centre, never outside). Images are resampled bilinearly and masks by nearest neighbour
    through the same sampling grid, so every pixel keeps a class of its source (255 = ignore stays).

    Args:
        images: S×3×H×W uint8. masks: S×H×W uint8 class ids. generator: draws the crops (CPU).
        centre_on_class: place each crop around a class's pixel (``train.crop_centre`` "class").
    Returns:
        S×3×H×W uint8 crops and their S×H×W uint8 masks, on the inputs' device.
    """
    count = images.shape[0]
    area = min_area + (1 - min_area) * torch.rand(count, generator=generator)
    aspect = torch.exp((torch.rand(count, generator=generator) * 2 - 1) * CROP_LOG_ASPECT)
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    if centre_on_class:
        # Around a pixel of one class of the image, each class it shows as likely as any other: a 0.2 % structure
        # is zoomed in on as often as a large one (a uniform position mostly shows background and large classes).
        centre_x, centre_y = _class_centres(masks.cpu(), generator)
        jitter_x = (torch.rand(count, generator=generator) - 0.5) * width / 2
        jitter_y = (torch.rand(count, generator=generator) - 0.5) * height / 2
        left = torch.minimum((centre_x - width / 2 + jitter_x).clamp(min=0), 1 - width)
        top = torch.minimum((centre_y - height / 2 + jitter_y).clamp(min=0), 1 - height)
    else:
        left = torch.rand(count, generator=generator) * (1 - width)
        top = torch.rand(count, generator=generator) * (1 - height)
    # The affine map from output to input coordinates, both in [-1, 1] (grid_sample's convention).
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width, 2 * left + width - 1
    theta[:, 1, 1], theta[:, 1, 2] = height, 2 * top + height - 1
    grid = F.affine_grid(theta, [count, 1, *images.shape[-2:]], align_corners=False).to(images.device)

    def sample(x: Tensor, mode: str) -> Tensor:
        return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)

    crops = sample(images.float(), "bilinear").round().clamp(0, 255).to(torch.uint8)
    crop_masks = sample(masks.float().unsqueeze(1), "nearest").squeeze(1).round().to(masks.dtype)
    return crops, crop_masks


def random_gains(images: Tensor, low: float, high: float, generator: torch.Generator) -> Tensor:
    """S×3×H×W uint8 → each image times its own gain, log-uniform in [``low``, ``high``] (drawn from ``generator``,
    on the CPU), rounded and clipped to uint8: brighter or darker copies of the images."""
    gains = torch.exp(
        math.log(low) + (math.log(high) - math.log(low)) * torch.rand(images.shape[0], generator=generator)
    )
    scaled = images.float() * gains.view(-1, 1, 1, 1).to(images.device)
    return scaled.round().clamp(0, 255).to(torch.uint8)


def _class_centres(masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """S×H×W class ids → per image the (x, y) position in [0, 1] of a random pixel of a class drawn uniformly
    among those it shows, background included; an image of ignored pixels only gets a uniform position."""
    count, height, width = masks.shape
    xs, ys = torch.rand(count, generator=generator), torch.rand(count, generator=generator)
    for i, mask in enumerate(masks):
        classes = [c for c in torch.unique(mask).tolist() if c != IGNORE_INDEX]
        if not classes:
            continue
        chosen = classes[int(torch.randint(len(classes), (1,), generator=generator))]
        pixels = (mask == chosen).flatten().nonzero().squeeze(1)
        flat = int(pixels[int(torch.randint(len(pixels), (1,), generator=generator))])
        xs[i], ys[i] = (flat % width + 0.5) / width, (flat // width + 0.5) / height
    return xs, ys


def seeded_crop_views(
    images: Tensor, masks: Tensor, views: int, min_area: float, seed: int, centre_on_class: bool = False
) -> Iterator[tuple[Tensor, Tensor]]:
    """``views`` rounds of :func:`random_resized_crops` of every image, one at a time, all drawn from one generator
    seeded ``seed + CROP_GEOMETRY_SEED``: the same crops wherever the same seed is given (the student's feature
    cache and the accuracy benchmark's fine-tuned baseline)."""
    geometry = torch.Generator().manual_seed(seed + CROP_GEOMETRY_SEED)
    for _ in range(views):
        yield random_resized_crops(images, masks, min_area, geometry, centre_on_class)
