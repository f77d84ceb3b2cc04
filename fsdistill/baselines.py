"""Reference points that fsdistill's teacher and student must beat (used by benchmarks, not by the CLI).

``PrototypeBaseline``: training-free prototype matching (masked average pooling of support features, cosine
similarity per class), the classic few-shot segmentation baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fsdistill.models.teacher import one_hot_masks
from fsdistill.train.episodes import SupportTensors, encode_batched

__all__ = ["PrototypeBaseline"]


class PrototypeBaseline:
    """Class prototypes from the supports' stride-8 and stride-16 features; pixels take the nearest prototype.

    Args:
        backbone: a frozen :class:`~fsdistill.models.backbone.Backbone`. num_classes: foreground classes N.
    """

    def __init__(self, backbone, num_classes: int) -> None:
        self.backbone = backbone
        self.num_classes = num_classes
        self.prototypes: Tensor | None = None  # (N+1)×D, L2-normalised

    def _features(self, feats: list[list[Tensor]]) -> Tensor:
        """Last map of levels 1 and 2, upsampled to stride 8, each L2-normalised, concatenated: B×D×h×w."""
        level1, level2 = feats[1][-1], feats[2][-1]
        level2 = F.interpolate(level2, size=level1.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([F.normalize(level1, dim=1), F.normalize(level2, dim=1)], dim=1)

    @torch.no_grad()
    def fit(self, support: SupportTensors, device: torch.device) -> "PrototypeBaseline":
        feats = self._features(encode_batched(self.backbone, support.images, device))  # S×D×h×w
        onehot = one_hot_masks(support.masks.to(device), self.num_classes)
        background = ((support.masks.to(device) == 0).float())[:, None]
        masks = torch.cat([background, onehot], dim=1)  # S×(N+1)×H×W
        masks = F.interpolate(masks, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        sums = torch.einsum("sdhw,skhw->kd", feats, masks)
        self.prototypes = F.normalize(sums / masks.sum(dim=(0, 2, 3))[:, None].clamp_min(1e-6), dim=1)
        return self

    @torch.no_grad()
    def logits(self, batch: Tensor) -> Tensor:
        """B×3×H×W normalised images → B×(N+1)×H/8×W/8 cosine similarities (upsample before the argmax)."""
        assert self.prototypes is not None, "call fit() first"
        feats = F.normalize(self._features(self.backbone(batch)), dim=1)
        return torch.einsum("bdhw,kd->bkhw", feats, self.prototypes)
