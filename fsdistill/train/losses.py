"""Losses of TransferFSS and DistillFSS (reference.md §2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "dice_loss", "segmentation_loss", "coarse_mse", "IGNORE_INDEX"]

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
    # A masked mean, not boolean indexing: the same value (ignored pixels have ce = 0) without a nonzero() and a
    # scatter in the backward over B×H×W pixels every step.
    return ((1.0 - p_t) ** gamma * ce).sum() / valid.sum()


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 − soft Dice of each foreground class that the target shows, averaged over those classes.

    Pixel losses weigh a class by its area; Dice scores each class by its overlap alone, whatever its size. Classes
    the target does not show are left to the pixel loss.

    Args:
        logits: B×K×H×W (background first). target: B×H×W class ids, 255 = ignore (left out of overlap and sums).
    """
    valid = (target != IGNORE_INDEX)[:, None].float()  # B×1×H×W
    probs = logits.softmax(dim=1)[:, 1:] * valid  # B×N×H×W
    classes = torch.arange(1, logits.shape[1], device=target.device)[None, :, None, None]
    truth = (target[:, None].long() == classes).float()  # B×N×H×W (255 matches no class)
    area = truth.sum(dim=(0, 2, 3))  # N: the batch's pixels of each class
    shown = area > 0
    if not shown.any():
        return logits.sum() * 0.0
    overlap = (probs * truth).sum(dim=(0, 2, 3))
    dice = (2 * overlap + 1.0) / (probs.sum(dim=(0, 2, 3)) + area + 1.0)
    return (1.0 - dice[shown]).mean()


def segmentation_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, dice_weight: float = 1.0) -> Tensor:
    """focal(γ) + ``dice_weight`` · Dice: the loss of the teacher's and the student's merged logits, in float32."""
    logits = logits.float()  # bfloat16 under mixed precision: the loss is computed in float32
    if logits.shape[-2:] != target.shape[-2:]:  # upsampled once here, not once in each term
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    loss = focal_loss(logits, target, gamma)
    if dice_weight:
        loss = loss + dice_weight * dice_loss(logits, target)
    return loss


def coarse_mse(student: list[Tensor], teacher: list[Tensor], present: Tensor) -> Tensor:
    """MSE between the student's and the teacher's coarse maps, averaged over the 3 stages and the classes present.

    Args:
        student: per stage, N×n×h×w (one query image). teacher: per stage, N×n×h×w. present: N bool.
    Teacher maps are targets (detached): the distillation term trains the student, not the teacher's attention.
    """
    if not present.any():
        return student[0].sum() * 0.0
    losses = [F.mse_loss(s[present].float(), t[present].detach().float()) for s, t in zip(student, teacher)]
    return torch.stack(losses).mean()
