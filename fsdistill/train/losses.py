"""Losses of TransferFSS and DistillFSS (reference.md §2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "dice_loss", "segmentation_loss", "coarse_mse", "IGNORE_INDEX"]

IGNORE_INDEX = 255


class _PixelTerms:
    """What the focal and Dice terms share, computed once: float32 B×K×H×W log-probabilities at the target's size
    (coarser logits upsampled bilinearly first, as when a mask is predicted), the labelled pixels, and each pixel's
    log-probability of its target class.

    A gather at the target class instead of ``F.cross_entropy`` and a one-hot target: each term then needs one
    pass over the B×K×H×W probabilities (the Dice sums), where the one-hot products took several."""

    def __init__(self, logits: Tensor, target: Tensor) -> None:
        logits = logits.float()  # bfloat16 under mixed precision: the loss is computed in float32
        if logits.shape[-2:] != target.shape[-2:]:
            # Planar, not channels-last: with a few channels the planar kernel is the faster one, forward and back.
            logits = F.interpolate(logits.contiguous(), size=target.shape[-2:], mode="bilinear", align_corners=False)
        self.log_probs = logits.log_softmax(dim=1)  # B×K×H×W
        self.valid = target != IGNORE_INDEX  # B×H×W
        self.classes = torch.where(self.valid, target, 0).long()  # ignored pixels point at class 0, weighted 0
        self.log_p_target = self.log_probs.gather(1, self.classes[:, None])[:, 0]  # B×H×W
        self.p_target = self.log_p_target.exp()

    def focal(self, gamma: float) -> Tensor:
        valid = self.valid.float()
        count = valid.sum()
        if not count:
            return self.log_probs.sum() * 0.0
        ce = -self.log_p_target * valid
        weight = 1.0 - self.p_target
        if 0 < gamma < 1:  # x ** gamma has an infinite slope at 0: a certain pixel's gradient was NaN
            weight = weight.clamp_min(1e-12)
        return (weight**gamma * ce).sum() / count

    def dice(self) -> Tensor:
        k = self.log_probs.shape[1]
        shown_px = (self.classes > 0).float()  # foreground pixels of the target (ignored ones point at class 0)
        index = self.classes.flatten()
        area = torch.zeros(k, device=index.device).scatter_add_(0, index, shown_px.flatten())[1:]  # N
        shown = area > 0
        if not shown.any():
            return self.log_probs.sum() * 0.0
        # A class's overlap is its probability summed over its own pixels: the target-class probability there.
        overlap = torch.zeros(k, device=index.device).scatter_add(0, index, (self.p_target * shown_px).flatten())[1:]
        probs = self.log_probs.exp()
        if not bool(self.valid.all()):
            probs = probs * self.valid[:, None]
        dice = (2 * overlap + 1.0) / (probs.sum(dim=(0, 2, 3))[1:] + area + 1.0)
        return (1.0 - dice[shown]).mean()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0) -> Tensor:
    """Multi-class focal loss, mean over labelled pixels of (1 − p_t)^γ · CE, no α (the paper's choice).

    Args:
        logits: B×K×h×w merged logits; at a coarser stride than the target (the light decoder's stride 4) they
            are upsampled bilinearly to it, as they are when a mask is predicted. target: B×H×W class ids, 255 = ignore.
    """
    return _PixelTerms(logits, target).focal(gamma)


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 − soft Dice of each foreground class that the target shows, averaged over those classes.

    Pixel losses weigh a class by its area; Dice scores each class by its overlap alone, whatever its size. Classes
    the target does not show are left to the pixel loss.

    Args:
        logits: B×K×h×w (background first; upsampled to the target's size like :func:`focal_loss`'s). target: B×H×W
            class ids, 255 = ignore (left out of overlap and sums).
    """
    return _PixelTerms(logits, target).dice()


def segmentation_loss(logits: Tensor, target: Tensor, gamma: float = 2.0, dice_weight: float = 1.0) -> Tensor:
    """focal(γ) + ``dice_weight`` · Dice: the loss of the teacher's and the student's merged logits, in float32 (the
    logits upsampled and normalised once for both terms)."""
    terms = _PixelTerms(logits, target)
    loss = terms.focal(gamma)
    if dice_weight:
        loss = loss + dice_weight * terms.dice()
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
