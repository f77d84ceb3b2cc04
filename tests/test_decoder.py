"""The two decoders: output strides, group independence, per-class cost, config validation, artifact round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fsdistill.config import AdaptCfg, ModelCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.build import build_student, build_teacher, load_model, save_model
from fsdistill.models.decoder import DCAMADecoder, LightDecoder
from fsdistill.train.fit import teacher_groups
from fsdistill.train.losses import focal_loss

SIZE = 64


def _decoder_inputs(groups: int, batch: int = 1, seed: int = 0):
    """Coarse maps for layers (2, 3, 4) at strides 8/16/32 of a 64 px input and skip maps of 8 and 16 channels."""
    g = torch.Generator().manual_seed(seed)
    coarse = [torch.rand(batch * groups, n, SIZE // s, SIZE // s, generator=g) for n, s in ((2, 8), (3, 16), (4, 32))]
    skip4 = torch.randn(batch, 8, SIZE // 4, SIZE // 4, generator=g)
    skip8 = torch.randn(batch, 16, SIZE // 8, SIZE // 8, generator=g)
    return coarse, skip4, skip8


def _randomised(decoder):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return decoder.eval()


DECODER_CASES = {
    "dcama": lambda: DCAMADecoder((2, 3, 4), (8, 16), width=32, mixer=(16, 8, 8)),
    "light": lambda: LightDecoder((2, 3, 4), (8, 16)),
}


@pytest.mark.parametrize("name", list(DECODER_CASES))
def test_output_stride_and_shape(name) -> None:
    decoder = _randomised(DECODER_CASES[name]())
    coarse, skip4, skip8 = _decoder_inputs(groups=3, batch=2)
    with torch.no_grad():
        logits = decoder(coarse, decoder.skip_features(skip4, skip8), torch.full((6,), 0.3))
    side = SIZE // decoder.output_stride
    assert logits.shape == (6, 2, side, side)
    assert decoder.output_stride == (1 if name == "dcama" else 4)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(DECODER_CASES))
def test_groups_and_images_are_decoded_independently(name) -> None:
    """Decoding G groups of B images at once equals decoding each (image, group) alone: the skip broadcast is
    per image, never mixed across images."""
    decoder = _randomised(DECODER_CASES[name]())
    coarse, skip4, skip8 = _decoder_inputs(groups=3, batch=2, seed=4)
    prior = torch.rand(6)
    with torch.no_grad():
        skip = decoder.skip_features(skip4, skip8)
        together = decoder(coarse, skip, prior)
        for i in range(6):
            image = i // 3
            alone = decoder([c[i : i + 1] for c in coarse], skip[image : image + 1], prior[i : i + 1])
            torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(together[0], together[3], atol=1e-3)  # images differ: the check is not vacuous


def _per_class_flops(decoder_name: str, **model_args) -> tuple[int, int]:
    """FLOPs of one student forward at 384 px on Lite0 with 1 and with 5 classes (random weights)."""
    counts = []
    for classes in (1, 5):
        teacher = build_teacher(ModelCfg(decoder=decoder_name, size=384, **model_args), classes, pretrained=False)
        student = build_student(teacher, 8).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            student(torch.randn(1, 3, 384, 384))
        counts.append(counter.get_total_flops())
    return counts[0], counts[1]


def test_light_decoder_cost_per_class_is_small_next_to_the_backbone() -> None:
    """The reason for the light decoder, as an operation count (deterministic, unlike a timing): each extra class
    adds < 10% of the backbone's FLOPs (ConvDist at width 8 included), against several backbones' worth for the
    paper's decoder."""
    backbone = build_teacher(ModelCfg(size=384), 1, pretrained=False).backbone
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(torch.randn(1, 3, 384, 384))
    backbone_flops = counter.get_total_flops()
    one, five = _per_class_flops("light")
    assert (five - one) / 4 < 0.10 * backbone_flops
    one_paper, five_paper = _per_class_flops("dcama")
    assert (five_paper - one_paper) / 4 > 2 * backbone_flops


def test_light_teacher_and_student_end_to_end_shapes_and_loss() -> None:
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=SIZE, decoder="light"), 2, pretrained=False)
    student = build_student(teacher, 4)
    images = torch.randn(3, 3, SIZE, SIZE)
    feats = teacher.backbone(images)
    logits, coarse = student.forward_features(feats)
    assert logits.shape == (3, 3, SIZE // 4, SIZE // 4)
    target = torch.randint(0, 3, (3, SIZE, SIZE))
    loss = focal_loss(logits, target)  # stride-4 logits are upsampled to the target inside the loss
    loss.backward()
    assert torch.isfinite(loss)
    assert student.convdist[0].hidden.weight.grad is not None
    assert student.decoder.mixer3[-1].weight.grad is not None
    # the paper's trainable groups exist under the same names
    assert all(teacher_groups(teacher)[name] for name in ("mapper", "merge", "attention", "mixer"))


def test_focal_loss_upsamples_coarse_logits_like_prediction() -> None:
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 16, 16))
    up = F.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(focal_loss(logits, target), focal_loss(up, target))


def test_light_student_artifact_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder="light", student_width=4)
    teacher = build_teacher(cfg, 2, pretrained=False)
    student = _randomised(build_student(teacher, cfg.student_width))
    path = save_model(
        tmp_path / "student",
        student,
        cfg,
        class_names=["background", "a", "b"],
        palette=[(0, 0, 0), (1, 1, 1), (2, 2, 2)],
        train_config={},
        support_info={},
        training={},
    )
    loaded = load_model(path)
    assert isinstance(loaded.model.decoder, LightDecoder)
    assert loaded.config["model_cfg"]["decoder"] == "light" and loaded.model_cfg == cfg
    assert (loaded.model.decoder.width, loaded.model.decoder.mixer_widths) == (32, (16, 16, 16))
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), student.predict(images))


@pytest.mark.parametrize(
    "model, message",
    [
        ({"decoder": "dcama", "decoder_width": 48}, "multiple of 32"),
        ({"decoder": "light", "decoder_width": 18}, "multiple of 4"),
        ({"decoder": "unet"}, "decoder"),
    ],
)
def test_decoder_config_errors(model, message, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(AdaptCfg, overrides={"support": tmp_path, "model": model})


def test_light_decoder_width_need_not_be_a_multiple_of_32() -> None:
    cfg = ModelCfg(decoder="light", decoder_width=24)
    teacher = build_teacher(cfg.model_copy(update={"backbone": "test-resnet", "size": SIZE}), 1, pretrained=False)
    assert teacher.decoder.width == 24


def test_light_skip_projection_is_a_1x1_conv_over_the_upsampled_skip_maps() -> None:
    """The 1×1 projection runs on the stride-8 map before upsampling it; that must equal the plain definition
    (upsample, concatenate, 1×1 conv), which is what makes it ~17× cheaper at no change of function."""
    decoder = _randomised(LightDecoder((2, 3, 4), (8, 16)))
    _, skip4, skip8 = _decoder_inputs(groups=1, batch=2, seed=7)
    up8 = F.interpolate(skip8, size=skip4.shape[-2:], mode="bilinear", align_corners=True)
    plain = decoder.skip_proj(torch.cat([up8, skip4], dim=1))
    with torch.no_grad():
        torch.testing.assert_close(decoder.skip_features(skip4, skip8), plain, rtol=1e-5, atol=1e-5)
    assert decoder.mixer1[0].bias is None and decoder.mixer1[0].in_channels == decoder.width


@pytest.mark.parametrize("decoder", ["light", "dcama"])
def test_every_decoder_parameter_is_in_a_trainable_group(decoder) -> None:
    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder=decoder)
    teacher = build_teacher(cfg, 1, pretrained=False)
    grouped = {id(p) for params in teacher_groups(teacher).values() for p in params}
    missing = [name for name, p in teacher.decoder.named_parameters() if id(p) not in grouped]
    assert not missing
