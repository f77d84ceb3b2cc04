"""Losses of TransferFSS and DistillFSS (reference.md §2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "coarse_mse", "IGNORE_INDEX"]

IGNORE_INDEX = 255


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Multi-class focal loss, mean over labelled pixels of (1 − p_t)^γ · CE, no α (the paper's choice).

    Args:
        logits: B×K×h×w merged logits; at a coarser stride than the target (the light decoder's stride 4) they
            are upsampled bilinearly to it, as they are when a mask is predicted. target: B×H×W class ids, 255 = ignore.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    ce = F.cross_entropy(logits, target.long(), ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    p_t = torch.exp(-ce)
    return ((1.0 - p_t) ** gamma * ce)[valid].mean()


def coarse_mse(student: list[Tensor], teacher: list[Tensor], present: Tensor) -> Tensor:
    """MSE between the student's and the teacher's coarse maps, averaged over the 3 stages and the classes present.

    Args:
        student: per stage, N×n×h×w (one query image). teacher: per stage, N×n×h×w. present: N bool.
    Teacher maps are targets (detached): the distillation term trains the student, not the teacher's attention.
    """
    if not present.any():
        return student[0].sum() * 0.0
    losses = [F.mse_loss(s[present], t[present].detach()) for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()
