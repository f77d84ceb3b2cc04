"""Logits → masks: the one way predict, evaluate, the Python API and the training check make class-id masks
(logits upsampled bilinearly straight to the image's own size, then the argmax)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["channel_argmax", "logits_to_mask"]


def channel_argmax(scores: Tensor) -> Tensor:
    """K×H×W scores → H×W uint8 index of the largest channel (the first on ties, like ``argmax``), by a running
    maximum: ``Tensor.argmax(dim=0)`` over a channel axis is far slower on the CPU and decided predict's speed."""
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for k in range(1, scores.shape[0]):
        index.masked_fill_(scores[k] > best, k)
        torch.maximum(best, scores[k], out=best)
    return index


def _class_ids(scores: Tensor) -> Tensor:
    """K×H×W upsampled logits, or 1×H×W fg − bg differences of a binary model → H×W uint8 class ids."""
    return (scores[0] > 0).to(torch.uint8) if scores.shape[0] == 1 else channel_argmax(scores)


def logits_to_mask(logits: Tensor, height: int, width: int, band_pixels: int = 1 << 24) -> np.ndarray:
    """1×K×h×w (or K×h×w) logits → height×width uint8 class ids, upsampled bilinearly before the argmax.

    Large outputs are produced in horizontal bands (``grid_sample`` over the rows of each band, the same bilinear
    sampling as ``interpolate(align_corners=False)``) so a huge image never needs a K×H×W float tensor.
    """
    if logits.dim() == 3:
        logits = logits[None]
    logits = logits.float()
    if logits.shape[1] == 2:
        # Binary: bilinear upsampling is linear, so upsampling fg - bg once and taking its sign is the argmax of
        # the two upsampled channels (up to float rounding) at half the cost; > 0 keeps argmax's tie rule (bg).
        logits = logits[:, 1:] - logits[:, :1]
    if height * width <= band_pixels:
        up = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        return _class_ids(up[0]).cpu().numpy()
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, band_pixels // width)
    # Pixel centres in normalised coordinates (align_corners=False convention).
    xs = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) / width * 2 - 1
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        ys = (torch.arange(top, bottom, device=logits.device, dtype=torch.float32) + 0.5) / height * 2 - 1
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)[None]
        band = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[top:bottom] = _class_ids(band[0]).cpu().numpy()
    return out
