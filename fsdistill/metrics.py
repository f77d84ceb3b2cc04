"""Dataset-level IoU from an accumulated confusion matrix (the paper's metric, reference.md §5)."""

from __future__ import annotations

import numpy as np

__all__ = ["ConfusionMatrix"]


class ConfusionMatrix:
    """K×K pixel counts (rows: ground truth, columns: prediction), accumulated over a whole data set.

    IoU per class is computed from the totals, not averaged per image, and mIoU is the mean over the foreground
    classes 1..K-1 (background excluded), as the paper reports.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, target: np.ndarray, prediction: np.ndarray) -> None:
        """target, prediction: H×W class ids of one image (same size); ``ignore_index`` pixels are skipped."""
        if target.shape != prediction.shape:
            raise ValueError(f"target {target.shape} and prediction {prediction.shape} differ in size")
        k = self.num_classes
        # In bands of rows: the pair codes are int64 (bincount's own type), 8 bytes a pixel, which for a whole
        # 12,000 × 9,000 image took 4 GB.
        rows = max(1, 2**22 // max(1, target.shape[-1]))
        for top in range(0, target.shape[0], rows):
            t, p = target[top : top + rows], prediction[top : top + rows]
            valid = t != self.ignore_index
            codes = t[valid].astype(np.int64) * k + p[valid]
            self.matrix += np.bincount(codes, minlength=k * k).reshape(k, k)

    def iou(self) -> np.ndarray:
        """K IoUs; a class absent from both ground truth and prediction gets NaN (it does not count)."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over foreground classes (1..K-1), ignoring classes that never occur."""
        fg = self.iou()[1:]
        return float(np.nanmean(fg)) if np.isfinite(fg).any() else float("nan")
