"""The three decoders: output strides, group independence, per-class cost, config validation, artifact round trip;
the shared decoder (bilinear upsampling of the merged logits, absent classes, flat cost, distill and export)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fsdistill.config import AdaptCfg, ModelCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.build import build_student, build_teacher, load_model
from fsdistill.models.decoder import ABSENT_LOGIT, DCAMADecoder, LightDecoder, SharedDecoder, merge_classes
from fsdistill.train.fit import teacher_groups
from fsdistill.train.losses import focal_loss

from helpers import save_plain_artifact

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
    "shared": lambda: SharedDecoder((2, 3, 4), (8, 16)),
}


@pytest.mark.parametrize("name", list(DECODER_CASES))
def test_output_stride_and_shape(name) -> None:
    decoder = _randomised(DECODER_CASES[name]())
    coarse, skip4, skip8 = _decoder_inputs(groups=3, batch=2)
    with torch.no_grad():
        logits = decoder(coarse, decoder.skip_features(skip4, skip8), torch.full((6,), 0.3))
    side = SIZE // decoder.class_stride  # per-class logits; the shared decoder's come at stride 8
    assert logits.shape == (6, 2, side, side)
    assert decoder.output_stride == (1 if name == "dcama" else 4)
    assert decoder.class_stride == {"dcama": 1, "light": 4, "shared": 8}[name]
    assert torch.isfinite(logits).all()
    with torch.no_grad():
        merged = decoder.refine(merge_classes(logits.view(2, 3, 2, side, side)), decoder.skip_features(skip4, skip8))
    assert merged.shape == (2, 4, SIZE // decoder.output_stride, SIZE // decoder.output_stride)


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


def _per_class_flops(decoder_name: str, classes_pair: tuple[int, int] = (1, 5), **model_args) -> tuple[int, int]:
    """FLOPs of one student forward at 384 px on Lite0 with 1 and with 5 classes (random weights)."""
    counts = []
    for classes in classes_pair:
        teacher = build_teacher(ModelCfg(decoder=decoder_name, size=384, **model_args), classes, pretrained=False)
        student = build_student(teacher, 8, decoder_name != "dcama").eval()
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
    student = build_student(teacher, 4, True)
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
    student = _randomised(build_student(teacher, cfg.student_width, cfg.refiner))
    path = save_plain_artifact(tmp_path / "student", student, cfg)
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


@pytest.mark.parametrize("decoder", ["light", "dcama", "shared"])
def test_every_decoder_parameter_is_in_a_trainable_group(decoder) -> None:
    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder=decoder)
    teacher = build_teacher(cfg, 1, pretrained=False)
    grouped = {id(p) for params in teacher_groups(teacher).values() for p in params}
    missing = [name for name, p in teacher.decoder.named_parameters() if id(p) not in grouped]
    assert not missing


# --- the shared decoder -----------------------------------------------------------------------------------------


def test_shared_decoder_upsamples_the_merged_logits_bilinearly() -> None:
    """``refine`` takes all N+1 merged stride-8 logits to stride 4 alike, bilinearly (align_corners=False, as the
    mask's upsampling), so a channel at ABSENT_LOGIT stays there exactly."""
    decoder = SharedDecoder((2, 3, 4), (8, 16))
    _, skip4, skip8 = _decoder_inputs(groups=1, batch=2, seed=3)
    merged = torch.randn(2, 5, SIZE // 8, SIZE // 8)
    merged[:, 3] = ABSENT_LOGIT
    with torch.no_grad():
        out = decoder.refine(merged, decoder.skip_features(skip4, skip8))
    torch.testing.assert_close(out, F.interpolate(merged, scale_factor=2, mode="bilinear", align_corners=False))
    assert (out[:, 3] == ABSENT_LOGIT).all()


def test_coarse_map_prior_resamples_each_stage_once_as_per_map_upsampling() -> None:
    """The prior's evidence (the mean coarse map of every stage, upsampled to the logits, averaged) is computed
    with one resampling call per stage over all groups; that equals upsampling each group's mean map alone."""
    decoder = _randomised(LightDecoder((2, 3, 4), (8, 16)))
    coarse, _, _ = _decoder_inputs(groups=3, batch=2, seed=5)
    logits, prior = torch.randn(6, 2, SIZE // 4, SIZE // 4), torch.rand(6)
    size = logits.shape[-2:]
    maps = [F.interpolate(c.mean(1, keepdim=True), size=size, mode="bilinear", align_corners=True) for c in coarse]
    evidence = torch.cat(maps, dim=1).mean(dim=1)
    with torch.no_grad():
        out = decoder._with_prior(logits, coarse, prior)
    torch.testing.assert_close(out[:, 0], logits[:, 0])
    torch.testing.assert_close(out[:, 1], logits[:, 1] + decoder.prior_scale * (evidence - prior.view(-1, 1, 1)))
    # Channels-last logits (the CPU inference layout) keep their layout: no strided pass over the output.
    with torch.no_grad():
        out_cl = decoder._with_prior(logits.contiguous(memory_format=torch.channels_last), coarse, prior)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out)


def test_shared_decoder_keeps_absent_classes_absent_and_losses_finite() -> None:
    """The teacher decodes only the classes its supports show; through the class-shared stage an absent class stays
    at ABSENT_LOGIT, never wins a pixel, and the loss and its gradients stay finite."""
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=SIZE, decoder="shared"), 3, pretrained=False)
    _randomised(teacher.decoder).train()
    images = torch.randn(4, 3, SIZE, SIZE)
    feats = teacher.backbone(images)
    masks = torch.randint(0, 4, (3, SIZE, SIZE), generator=torch.Generator().manual_seed(1)).to(torch.uint8)
    support = teacher.prepare_support([[m[:3] for m in level] for level in feats], masks)
    query = [[m[3:] for m in level] for level in feats]
    present = torch.tensor([True, False, True])
    logits = teacher.decode_episode(query, support, teacher.coarse_maps(query, support), present)
    assert logits.shape == (1, 4, SIZE // 4, SIZE // 4)
    assert torch.allclose(logits[:, 2], torch.full_like(logits[:, 2], ABSENT_LOGIT))
    assert (logits.argmax(1) != 2).all()
    target = torch.randint(0, 4, (1, SIZE, SIZE))
    target[target == 2] = 0  # as fit.py's teacher target: a class no support shows is background
    loss = focal_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in teacher.decoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert teacher.decoder.mixer3[-1].weight.grad.abs().sum() > 0  # the shared stage learns from the teacher too


def test_shared_decoder_cost_per_class_is_a_fraction_of_the_light_one() -> None:
    """The point of the shared decoder, as an operation count: no per-class work at stride 4 and ConvDist hidden
    groups shared beyond four classes, so beyond four a class costs a twentieth of the light decoder's, under 0.5 %
    of the backbone (ConvDist at width 8 included in both)."""
    five, nine = _per_class_flops("shared", (5, 9))
    one_light, five_light = _per_class_flops("light")
    assert (nine - five) / 4 < 0.05 * (five_light - one_light) / 4
    assert _per_class_flops("shared", (1, 1))[0] < one_light
    backbone = build_teacher(ModelCfg(size=384), 1, pretrained=False).backbone
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        backbone(torch.randn(1, 3, 384, 384))
    assert (nine - five) / 4 < 0.005 * counter.get_total_flops()


def test_shared_teacher_voting_equals_one_chunk_when_every_chunk_shows_every_class() -> None:
    """predict_features votes per class at the class stride and refines once: with one chunk it is decode_episode."""
    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=SIZE, decoder="shared"), 2, pretrained=False).eval()
    _randomised(teacher.decoder)
    images = torch.randint(0, 256, (3, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(2, SIZE, SIZE, dtype=torch.uint8)
    masks[:, :20, :20], masks[:, 40:, 40:] = 1, 2
    with torch.no_grad():
        support = teacher.prepare_support(teacher.backbone.encode(images[:2]), masks)
        query = teacher.backbone.encode(images[2:])
        whole = teacher.predict_features(query, support, voting=2)
        coarse = teacher.coarse_maps(query, support)
        direct = teacher.decode_episode(query, support, coarse, torch.tensor([True, True]))
    torch.testing.assert_close(whole, direct)
    assert whole.shape == (1, 3, SIZE // 4, SIZE // 4)


def test_shared_distill_end_to_end_and_artifact_round_trip(tiny_data, tmp_path) -> None:
    """adapt + distill with the shared decoder on the tiny multi-class folder: finite losses, a student artifact
    that loads the shared decoder and predicts the same logits."""
    from fsdistill import api
    from fsdistill.config import DistillCfg

    from helpers import TINY_MODEL, TINY_TRAIN

    cfg = load_config(
        DistillCfg,
        None,
        {
            "support": tiny_data.multi,
            "out": tmp_path / "run",
            "device": "cpu",
            "model": {**TINY_MODEL, "decoder": "shared"},
            "train": TINY_TRAIN,
        },
    )
    run = api.distill(cfg, quiet=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in run.stats["final_losses"].values())
    student = load_model(run.student_dir)
    assert isinstance(student.model.decoder, SharedDecoder) and student.model_cfg.decoder == "shared"
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    logits = student.logits(images)
    assert logits.shape == (2, 4, SIZE // 4, SIZE // 4) and torch.isfinite(logits).all()
    teacher = load_model(run.teacher_dir)
    assert isinstance(teacher.model.decoder, SharedDecoder)
    assert teacher.logits(images).shape == (2, 4, SIZE // 4, SIZE // 4)


def test_artifact_of_the_earlier_shared_decoder_is_refused_in_one_sentence(tmp_path) -> None:
    """A student written with the shared decoder's first layout (its convex upsampling stage, ``skip_proj``) cannot
    be built any more: loading says so and what to do, instead of a state-dict mismatch."""
    from fsdistill.checkpoint import load_artifact, save_artifact
    from fsdistill.errors import CheckpointError

    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder="shared", student_width=4)
    student = build_student(build_teacher(cfg, 2, pretrained=False), 4, True)
    path = save_plain_artifact(tmp_path / "student", student, cfg)
    assert isinstance(load_model(path).model.decoder, SharedDecoder)
    tensors, config = load_artifact(path)
    tensors["decoder.skip_proj.weight"] = torch.zeros(16, 96, 1, 1)
    save_artifact(path, tensors, config)
    with pytest.raises(CheckpointError, match="earlier layout of the shared decoder.*re-run fsdistill adapt / distill"):
        load_model(path)


def test_refiner_width_follows_the_decoder_and_an_artifact_keeps_its_own(tmp_path) -> None:
    """The shared decoder's students refine at 16 channels, the light decoder's at 32; a shared student written
    with a 32-channel refiner (before that default) loads as written and gives the same logits."""
    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder="shared", student_width=4)
    student = build_student(build_teacher(cfg, 2, pretrained=False), 4, True)
    assert student.refiner.width == SharedDecoder.refiner_width == 16
    light = ModelCfg(backbone="test-resnet", size=SIZE, decoder="light", student_width=4)
    assert build_student(build_teacher(light, 2, pretrained=False), 4, True).refiner.width == 32
    wide = _randomised(build_student(build_teacher(cfg, 2, pretrained=False), 4, True, refiner_width=32))
    assert wide.refiner.width == 32
    loaded = load_model(save_plain_artifact(tmp_path / "student", wide, cfg))
    assert loaded.model.refiner.width == 32
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.predict(images), wide.predict(images))


def test_artifact_whose_config_names_no_decoder_loads_the_light_one(tmp_path) -> None:
    """Artifacts store their ModelCfg; one written before the decoder could be anything but the light one (no
    ``decoder`` key) must load the light decoder whatever today's default is, and no refiner (no ``refiner`` key:
    written before the student had one)."""
    from fsdistill.checkpoint import load_artifact, save_artifact

    torch.manual_seed(0)
    cfg = ModelCfg(backbone="test-resnet", size=SIZE, decoder="light", student_width=4, refiner=False)
    student = _randomised(build_student(build_teacher(cfg, 1, pretrained=False), 4, False))
    path = save_plain_artifact(tmp_path / "student", student, cfg)
    tensors, config = load_artifact(path)
    stored = {k: v for k, v in config["model_cfg"].items() if k not in ("decoder", "refiner")}
    config = {k: v for k, v in config.items() if k != "weights_sha256"}
    old = save_artifact(tmp_path / "old", tensors, {**config, "model_cfg": stored})
    loaded = load_model(old)
    assert isinstance(loaded.model.decoder, LightDecoder) and loaded.model_cfg.decoder == "light"
    assert loaded.model.refiner is None and not loaded.model_cfg.refiner
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), student.predict(images))
