"""Baselines the benchmarks compare against: the plain fine-tuned FPN head (and its fairness knobs)."""

from __future__ import annotations

import numpy as np
import torch

from fsdistill.config import ModelCfg
from fsdistill.data.discover import discover
from fsdistill.data.support_tensors import load_support_tensors
from fsdistill.data.transforms import normalize, seeded_crop_views
from fsdistill.metrics import ConfusionMatrix
from fsdistill.models.build import build_teacher

from helpers import TINY_MODEL, load_benchmark

baselines = load_benchmark("baselines")
FineTunedBaseline, FPNHead, PrototypeBaseline = (
    baselines.FineTunedBaseline,
    baselines.FPNHead,
    baselines.PrototypeBaseline,
)

SIZE = TINY_MODEL["size"]
CPU = torch.device("cpu")


def _backbone(num_classes: int = 1):
    torch.manual_seed(0)
    return build_teacher(ModelCfg(**TINY_MODEL), num_classes).backbone


def _held_out_iou(baseline, folder, num_classes: int) -> np.ndarray:
    held = load_support_tensors(discover(folder), SIZE)
    spec = baseline.backbone.spec
    logits = baseline.logits(normalize(held.images, spec.mean, spec.std))
    pred = torch.nn.functional.interpolate(logits, size=(SIZE, SIZE), mode="bilinear").argmax(1)
    matrix = ConfusionMatrix(num_classes + 1)
    for target, p in zip(held.masks.numpy(), pred.numpy()):
        matrix.update(target, p.astype(np.uint8))
    return matrix.iou()


def test_fpn_head_shapes() -> None:
    head = FPNHead((8, 16, 32, 64), num_outputs=4, width=16)
    maps = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip((8, 16, 32, 64), (4, 8, 16, 32))]
    assert head(maps).shape == (2, 4, 16, 16)


def test_fine_tuned_baseline_learns_a_synthetic_mask(tiny_data) -> None:
    support = load_support_tensors(discover(tiny_data.binary), SIZE)
    baseline = FineTunedBaseline(_backbone(), num_classes=1, width=32)
    baseline.fit(support, CPU, lr=3e-3, seed=0)  # its own budget: until the loss stops falling
    count = len(support)
    assert 100 <= baseline.stats["steps"] <= 1000 and baseline.stats["images"] == baseline.stats["steps"] * count
    assert "stopped falling" in baseline.stats["stop_reason"]
    assert baseline.stats["train_s"] > 0 and np.isfinite(baseline.stats["final_loss"])
    iou = _held_out_iou(baseline, tiny_data.binary_heldout, 1)
    masks = load_support_tensors(discover(tiny_data.binary_heldout), SIZE).masks
    chance = float((masks > 0).float().mean())  # IoU of labelling every pixel foreground
    assert iou[1] > max(0.5, 2 * chance), (iou, chance)
    # The fitted head beats the training-free prototype baseline on the same features: training did something.
    proto = PrototypeBaseline(baseline.backbone, 1).fit(support, CPU)
    assert iou[1] > _held_out_iou(proto, tiny_data.binary_heldout, 1)[1] - 0.05


def test_fine_tuned_baseline_multiclass_shapes_and_seed(tiny_data) -> None:
    index = discover(tiny_data.multi)
    support = load_support_tensors(index, SIZE)
    num_classes = len(index.class_names) - 1
    first = FineTunedBaseline(_backbone(num_classes), num_classes, augment=False).fit(support, CPU, seed=3, steps=2)
    assert first.stats["steps"] == 2 and first.stats["stop_reason"] == "the 2 steps asked for"
    batch = normalize(support.images[:2], first.backbone.spec.mean, first.backbone.spec.std)
    out = first.logits(batch)
    assert out.shape == (2, num_classes + 1, SIZE // 4, SIZE // 4)
    assert not out.requires_grad and torch.isfinite(out).all()
    again = FineTunedBaseline(_backbone(num_classes), num_classes, augment=False).fit(support, CPU, seed=3, steps=2)
    torch.testing.assert_close(again.logits(batch), out)  # the seed fixes initialisation and sampling


def test_fine_tuned_baseline_trains_on_the_students_crop_views_too(tiny_data) -> None:
    """The FPN gets the student's augmentation: its four flip views and ``crop_views`` random crops of each
    support (one backbone pass per view); the seed fixes the crops; without augmentation, the images alone."""
    support = load_support_tensors(discover(tiny_data.binary), SIZE)
    logits = []
    for crop_views, augment, passes in ((2, True, 6), (2, True, 6), (0, True, 4), (2, False, 1)):
        baseline = FineTunedBaseline(_backbone(), 1, width=16, augment=augment, crop_views=crop_views)
        encoded = []
        original = baseline.backbone.encode_batched

        def counted(images, *args, _original=original, _seen=encoded):
            _seen.append(images)
            return _original(images, *args)

        baseline.backbone.encode_batched = counted
        baseline.fit(support, CPU, seed=1, steps=2)
        assert len(encoded) == passes
        if crop_views and augment:
            assert not any(torch.equal(encoded[4], view) for view in encoded[:4])  # a crop, not a flip
            # The student's crops of the same seed (FeatureCache draws them with seeded_crop_views too).
            student_crops = seeded_crop_views(
                support.images, support.masks, crop_views, baseline.crop_min_area, 1, baseline.crop_centre_on_class
            )
            assert all(torch.equal(got, want) for got, (want, _) in zip(encoded[4:], student_crops, strict=True))
        images = normalize(support.images[:2], baseline.backbone.spec.mean, baseline.backbone.spec.std)
        logits.append(baseline.logits(images))
    torch.testing.assert_close(logits[0], logits[1])
    assert not torch.allclose(logits[0], logits[2])
