"""ConvDist student: shapes for every backbone family, batch independence, fused = per-class blocks, width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fsdistill.config import ModelCfg, TrainCfg
from fsdistill.models.backbone import create_backbone
from fsdistill.models.build import build_decoder, build_student, build_teacher
from fsdistill.models.student import ConvDist, DistilledStudent
from fsdistill.models.teacher import ATTENTION_LEVELS, DCAMATeacher
from fsdistill.train.fit import _student_groups

from helpers import perturb_head


def _student(
    backbone: str,
    size: int,
    num_classes: int,
    width: int | None = None,
    pretrained: bool = False,
    decoder: str = "light",
):
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone=backbone, size=size, decoder=decoder), num_classes, pretrained=pretrained)
    return build_student(teacher, width, decoder != "dcama").eval()


@pytest.mark.parametrize("decoder", ["light", "dcama"])
@pytest.mark.parametrize(
    "backbone, size, pretrained",
    [
        ("test-resnet", 64, False),
        ("test-swin", 128, False),
        ("efficientnet-lite0", 64, False),
        ("efficientnet-lite0", 96, True),
    ],
    ids=["test-resnet-64", "test-swin-128", "lite0-random-64", "lite0-pretrained-96"],
)
def test_output_shapes_for_every_backbone_family(backbone, size, pretrained, decoder) -> None:
    n = 3
    student = _student(backbone, size, n, pretrained=pretrained, decoder=decoder)
    spec = student.backbone.spec
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, coarse = student.forward_features(student.backbone(images))
    out = size // (4 if decoder == "light" else 1)  # the light decoder's logits are at stride 4
    assert logits.shape == (2, n + 1, out, out)
    assert torch.isfinite(logits).all()
    assert len(coarse) == len(ATTENTION_LEVELS)
    for c, lvl in zip(coarse, ATTENTION_LEVELS):
        stride = spec.strides[lvl]
        assert c.shape == (2, n, spec.num_blocks[lvl], size // stride, size // stride)
    with torch.no_grad():
        assert torch.equal(student(images), logits)


def test_batch_1_equals_batch_8_in_eval_mode() -> None:
    student = _student("test-resnet", 64, 2)
    perturb_head(student, torch.Generator().manual_seed(0))
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = student(images)
        single = torch.cat([student(images[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    # different images give different outputs (the comparison is not vacuous)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)


@pytest.mark.parametrize("width", [None, 5])
def test_fused_convdist_equals_separate_per_class_blocks(width) -> None:
    channels, n, layers = 12, 3, 2
    torch.manual_seed(3)
    fused = ConvDist(channels, n, width)
    w = width or channels
    if width is None:  # the paper's block: Conv3×3(C→C) → ReLU → Conv1×1(C→1)
        assert fused.bottleneck is None and fused.hidden.weight.shape == (n * w, channels, 3, 3)
    else:  # bottleneck Conv1×1(C→W) → Conv3×3(W→W) → ReLU → Conv1×1(W→1)
        assert fused.bottleneck.weight.shape == (n * w, channels, 1, 1)
        assert fused.hidden.weight.shape == (n * w, w, 3, 3)
    assert fused.out.weight.shape == (n, w, 1, 1)
    with torch.no_grad():
        for p in fused.parameters():
            p.normal_(0, 0.2)
    maps = [torch.randn(2, channels, 5, 6) for _ in range(layers)]
    out = fused(maps)
    assert out.shape == (2, n, layers, 5, 6)
    for c in range(n):
        rows = slice(c * w, (c + 1) * w)
        layers_c: list[nn.Module] = []
        if width is not None:
            squeeze = nn.Conv2d(channels, w, 1)
            with torch.no_grad():
                squeeze.weight.copy_(fused.bottleneck.weight[rows])
                squeeze.bias.copy_(fused.bottleneck.bias[rows])
            layers_c.append(squeeze)
        conv, head = nn.Conv2d(w if width else channels, w, 3, padding=1), nn.Conv2d(w, 1, 1)
        with torch.no_grad():
            conv.weight.copy_(fused.hidden.weight[rows])
            conv.bias.copy_(fused.hidden.bias[rows])
            head.weight.copy_(fused.out.weight[c : c + 1])
            head.bias.copy_(fused.out.bias[c : c + 1])
        block = nn.Sequential(*layers_c, conv, nn.ReLU(), head)
        for layer, m in enumerate(maps):  # one block per class, shared by all layer maps of the stage
            # The student's coarse maps are bounded like the teacher's attention mass: sigmoid of the block.
            torch.testing.assert_close(out[:, c, layer], torch.sigmoid(block(m)[:, 0]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("width", [4, None])
def test_shared_group_convdist_with_a_block_diagonal_readout_is_the_per_class_one(width) -> None:
    """ConvDist with G shared hidden groups and N ≤ G classes has one group per class; read out block-diagonally
    (class c only from group c) it is exactly the per-class ConvDist with the same weights. Its readout is dense,
    so each class may also read the other groups."""
    torch.manual_seed(0)
    per_class, shared = ConvDist(6, 3, width), ConvDist(6, 3, width, groups=4)
    assert shared.groups == 3 and shared.shared and not per_class.shared
    assert shared.out.weight.shape == (3, 3 * per_class.width, 1, 1)
    for p in per_class.parameters():
        p.data.normal_(0, 0.3)
    state = per_class.state_dict()
    w = per_class.width
    readout = torch.zeros(3, 3 * w, 1, 1)
    for c in range(3):
        readout[c, c * w : (c + 1) * w] = state["out.weight"][c]
    shared.load_state_dict({**state, "out.weight": readout})
    maps = [torch.randn(2, 6, 5, 5) for _ in range(2)]
    with torch.no_grad():
        torch.testing.assert_close(shared(maps), per_class(maps), rtol=1e-5, atol=1e-5)


def test_shared_group_convdist_cost_stops_growing_at_its_group_count() -> None:
    """Beyond G classes the hidden layers keep G groups: a class adds only its readout row (G·W weights + bias)."""
    blocks = {n: ConvDist(40, n, 8, groups=4) for n in (1, 4, 5, 50)}
    hidden = {n: sum(p.numel() for m in (d.bottleneck, d.hidden) for p in m.parameters()) for n, d in blocks.items()}
    assert hidden[1] < hidden[4] == hidden[5] == hidden[50]  # min(G, N) groups
    sizes = {n: sum(p.numel() for p in d.parameters()) for n, d in blocks.items()}
    assert sizes[50] - sizes[5] == 45 * (4 * 8 + 1)
    dist = ConvDist(40, 50, 8, groups=4)
    assert dist.hidden.out_channels == 32 and dist.out(torch.zeros(1, 32, 2, 2)).shape == (1, 50, 2, 2)
    out = dist([torch.randn(2, 40, 6, 6)])
    assert out.shape == (2, 50, 1, 6, 6) and ((out > 0) & (out < 1)).all()


def test_student_convdist_groups_follow_its_decoder() -> None:
    """The shared decoder's students share ConvDist hidden groups among their classes; the light decoder's keep one
    block per class (the paper's)."""
    shared = _student("test-resnet", 64, 6, 4, decoder="shared")
    light = _student("test-resnet", 64, 6, 4, decoder="light")
    assert all(d.shared and d.groups == 4 for d in shared.convdist)
    assert all(not d.shared and d.groups == 6 for d in light.convdist)


@pytest.mark.parametrize(("decoder", "classes", "lr"), [("light", 6, 1e-2), ("shared", 6, 2.5e-3), ("shared", 2, 5e-3)])
def test_convdist_trains_at_the_student_lr_over_the_groups_each_class_reads(decoder, classes, lr) -> None:
    """A class of a shared ConvDist reads all G hidden groups (G·W channels instead of its own W), so its output
    moves G times as far per step: its stage trains at student_lr / G (G = min(4, N)); per-class blocks at
    student_lr. Every ConvDist parameter is in exactly one group, the refiner at the decoder's lr."""
    cfg = TrainCfg(student_lr=1e-2, lr=3e-3)
    student = _student("test-resnet", 64, classes, 4, decoder=decoder)
    groups = _student_groups(student, cfg)
    convdist = {id(p) for p in student.convdist.parameters()}
    stages = [g for g in groups if {id(p) for p in g["params"]} <= convdist]
    assert [g["lr"] for g in stages] == pytest.approx([lr] * len(ATTENTION_LEVELS))
    assert sorted(id(p) for g in stages for p in g["params"]) == sorted(convdist)
    assert [g["lr"] for g in groups[len(stages) :]] == [cfg.lr]  # the refiner
    assert all(p.requires_grad for g in groups for p in g["params"])


def test_convdist_input_dropout_drops_whole_channels_only_while_training() -> None:
    """Channel dropout: each (image, channel) input map is zeroed whole or kept scaled by 1 / (1 - p); in eval
    mode nothing is dropped, whatever ``input_dropout`` says."""
    torch.manual_seed(0)
    dist = ConvDist(8, 2, 4)
    with torch.no_grad():
        for p in dist.parameters():
            p.normal_(0, 0.2)
    maps = [torch.rand(3, 8, 5, 5) + 1 for _ in range(2)]
    clean = dist(maps)  # training mode, no dropout set
    seen = []
    dist.bottleneck.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    dist.input_dropout = 0.5
    dropped = dist(maps)
    assert not torch.allclose(dropped, clean)
    inputs, originals = seen[-1], torch.cat(maps)
    zeroed = (inputs == 0).all(dim=(2, 3))
    assert zeroed.any() and (~zeroed).any()
    torch.testing.assert_close(inputs[~zeroed], 2 * originals[~zeroed])
    dist.eval()
    torch.testing.assert_close(dist(maps), clean)


def test_student_width_reduces_parameter_count() -> None:
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), 2, pretrained=False)
    paper = build_student(teacher, None, True)
    narrow = build_student(teacher, 4, True)

    def count(student: DistilledStudent) -> int:
        return sum(p.numel() for p in student.convdist.parameters())

    assert count(narrow) < count(paper)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in paper.parameters())
    spec = teacher.backbone.spec
    for dist, lvl in zip(paper.convdist, ATTENTION_LEVELS):
        assert dist.width == spec.channels[lvl]  # paper width = the stage's channels
    for dist in narrow.convdist:
        assert dist.width == 4 and dist.hidden.out_channels == 2 * 4 and dist.bottleneck.out_channels == 2 * 4
    # The student holds no attention: its parameters are backbone, decoder, ConvDist (and the prior buffer).
    assert not [k for k in narrow.state_dict() if k.startswith("blocks.")]


def test_refiner_starts_as_identity_and_learns() -> None:
    """An untrained refiner changes no logit (zero output conv); a gradient step on its output moves them."""
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), 2, pretrained=False)
    plain, refined = build_student(teacher, 4, False).eval(), build_student(teacher, 4, True).eval()
    refined.convdist.load_state_dict(plain.convdist.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = plain(images)
        assert logits.shape == (2, 3, 16, 16)
        torch.testing.assert_close(refined(images), logits)
    refined(images).logsumexp(1).mean().backward()
    assert refined.refiner.out.weight.grad.abs().sum() > 0
    # Its cost is per image: only its N+1 input and output channels grow with the classes.
    three = build_student(build_teacher(ModelCfg(backbone="test-resnet", size=64), 3, pretrained=False), 4, True)
    per_class = sum(p.numel() for p in three.refiner.parameters()) - sum(
        p.numel() for p in refined.refiner.parameters()
    )
    assert per_class == refined.refiner.proj.out_channels + refined.refiner.out.in_channels + 1


def test_refiner_reads_stride_8_logits_at_stride_8() -> None:
    """Given the stride-8 logits the stride-4 ones were upsampled from (the shared decoder's), the refiner projects
    their softmax at stride 8 and upsamples it with the stride-8 query map's projection (a quarter of the
    positions, where the cost grows with the classes); without them it reads the stride-4 softmax (light)."""
    torch.manual_seed(0)
    student = _student("test-resnet", 64, 3, 4, decoder="shared")
    refiner = student.refiner
    for p in refiner.parameters():
        p.data.normal_(0, 0.2)
    c4, c8 = student.backbone.spec.channels[:2]
    skip4, skip8 = torch.randn(2, c4, 16, 16), torch.randn(2, c8, 8, 8)
    coarse = 4 * torch.randn(2, 4, 8, 8)  # peaked: the softmax of the upsampled logits is another function
    fine = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="bilinear")
    w = refiner.proj.weight
    at8 = torch.nn.functional.conv2d(torch.cat([skip8, coarse.softmax(1)], 1), w[:, c4:])
    x = torch.nn.functional.conv2d(skip4, w[:, :c4], refiner.proj.bias)
    x = x + torch.nn.functional.interpolate(at8, size=(16, 16), mode="bilinear")
    x = refiner.norm(x).relu()
    for conv in refiner.convs:
        x = conv(x).relu()
    with torch.no_grad():
        torch.testing.assert_close(refiner(fine, skip4, skip8, coarse), fine + refiner.out(x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(refiner(fine, skip4, skip8, coarse), refiner(fine, skip4, skip8), atol=1e-3)


@pytest.mark.parametrize("decoder", ["light", "shared"])
@pytest.mark.parametrize("classes", [2, 9])
def test_channels_last_student_gives_the_contiguous_ones_logits(decoder, classes) -> None:
    """As predict runs it on the CPU (channels-last weights and maps), a student computes the same function; from 8
    merged channels it copies the merged logits channels-last before the refiner (9 classes), below it does not."""
    student = _student("efficientnet-lite0", 64, classes, 4, decoder=decoder)
    perturb_head(student, torch.Generator().manual_seed(1))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = student(images)
        student = student.to(memory_format=torch.channels_last)
        got = student(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.is_contiguous(memory_format=torch.channels_last) == (classes + 1 >= 8)


def test_refiner_needs_a_stride_4_decoder() -> None:
    assert not ModelCfg(decoder="dcama").refiner  # the paper's decoder ends at full resolution: off by default
    assert ModelCfg().refiner and ModelCfg(decoder="shared").refiner
    with pytest.raises(ValueError, match="not dcama; set refiner: false"):
        ModelCfg(decoder="dcama", refiner=True)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64, decoder="dcama"), 1, pretrained=False)
    with pytest.raises(ValueError, match="output stride is 1"):
        build_student(teacher, 4, True)


def test_student_shares_backbone_and_decoder_with_its_teacher() -> None:
    backbone = create_backbone("test-resnet", pretrained=False)
    decoder = build_decoder(backbone.spec, "light")
    teacher = DCAMATeacher(backbone, decoder, 2)
    student = build_student(teacher, 8, True)
    assert teacher.decoder is decoder  # the decoder built once: given to the teacher, shared with the student
    assert student.backbone is teacher.backbone and student.decoder is teacher.decoder
    assert torch.equal(student.class_prior, torch.full((2,), 0.5))
