"""ConfusionMatrix: dataset-level IoU per class, ignore index, foreground mIoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fsdistill.metrics import ConfusionMatrix


def test_iou_hand_computed_example() -> None:
    # 3 classes. Ground truth / prediction over 8 pixels:
    target = np.array([[0, 0, 1, 1], [1, 2, 2, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(target, pred)
    expected = np.array([[2, 1, 0], [0, 2, 1], [1, 0, 1]])  # rows: gt, cols: pred
    np.testing.assert_array_equal(cm.matrix, expected)
    # class 0: tp 2, union = 3 (gt) + 3 (pred) - 2 = 4; class 1: tp 2, union 3 + 3 - 2 = 4; class 2: tp 1, 2 + 2 - 1
    np.testing.assert_allclose(cm.iou(), [2 / 4, 2 / 4, 1 / 3])
    assert cm.miou() == pytest.approx((2 / 4 + 1 / 3) / 2)


def test_accumulates_over_images_not_per_image_mean() -> None:
    cm = ConfusionMatrix(2)
    # image 1: perfect on a 1-pixel object; image 2: 3 object pixels, 1 found.
    cm.update(np.array([[1, 0, 0, 0]]), np.array([[1, 0, 0, 0]]))
    cm.update(np.array([[1, 1, 1, 0]]), np.array([[1, 0, 0, 0]]))
    # dataset level: tp 2, gt 4, pred 2 → 2 / 4 (the per-image mean would be (1 + 1/3) / 2)
    assert cm.iou()[1] == pytest.approx(0.5)
    assert cm.miou() == pytest.approx(0.5)


def test_ignore_255_pixels_are_skipped() -> None:
    target = np.array([[1, 255, 255, 0]], np.uint8)
    pred = np.array([[1, 1, 0, 0]], np.uint8)
    cm = ConfusionMatrix(2)
    cm.update(target, pred)
    assert cm.matrix.sum() == 2
    np.testing.assert_allclose(cm.iou(), [1.0, 1.0])


def test_miou_excludes_background() -> None:
    cm = ConfusionMatrix(3)
    # background is perfect, class 1 half right, class 2 wrong everywhere it appears
    target = np.array([[0, 0, 0, 0, 1, 1, 2, 2]])
    pred = np.array([[0, 0, 0, 0, 1, 0, 1, 1]])
    cm.update(target, pred)
    iou = cm.iou()
    assert iou[2] == 0.0
    assert cm.miou() == pytest.approx((iou[1] + iou[2]) / 2)
    assert cm.miou() != pytest.approx(np.mean(iou))


def test_class_absent_everywhere_is_nan_and_not_counted() -> None:
    cm = ConfusionMatrix(4)
    target = np.array([[0, 1, 1, 2]])
    pred = np.array([[0, 1, 1, 0]])
    cm.update(target, pred)
    iou = cm.iou()
    assert math.isnan(iou[3])  # never in ground truth nor prediction
    assert iou[2] == 0.0  # in ground truth, never predicted: counts as 0
    assert cm.miou() == pytest.approx((1.0 + 0.0) / 2)
    assert not math.isnan(cm.miou())


def test_predicted_only_class_counts_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([[1, 1, 0]]), np.array([[1, 1, 2]]))
    assert cm.iou()[2] == 0.0
    assert cm.miou() == pytest.approx(0.5)


def test_no_foreground_anywhere_gives_nan_miou() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    assert math.isnan(cm.miou())


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_a_tall_image_is_counted_in_bands_as_a_whole() -> None:
    """update counts in bands of rows (a whole 12,000 × 9,000 image took 4 GB of int64 codes): the same matrix."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (5000, 1000), dtype=np.uint8)
    target[::7] = 255
    prediction = rng.integers(0, 4, (5000, 1000), dtype=np.uint8)
    matrix = ConfusionMatrix(4)
    matrix.update(target, prediction)
    valid = target != 255
    expected = np.bincount(target[valid].astype(np.int64) * 4 + prediction[valid], minlength=16).reshape(4, 4)
    assert np.array_equal(matrix.matrix, expected)
