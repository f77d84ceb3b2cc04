"""Backbone taps, weights loading and freezing (fsdistill.models.backbone, backbone_specs, backbone_weights).

Lite0 runs with its real embedded ImageNet weights; ResNet-50 and Swin-B run as tiny random-init instances of
the same classes (the ``test-*`` names or overrides), since their weights cannot be downloaded here.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from fsdistill.errors import CheckpointError, ConfigError
from fsdistill.models import backbone as bb
from fsdistill.models import backbone_weights as bw
from fsdistill.models.backbone import Backbone, create_backbone, load_classifier
from fsdistill.models.backbone_specs import (
    BACKBONE_NAMES,
    DEFAULT_BACKBONE,
    USER_BACKBONE_NAMES,
    BackboneSpec,
    backbone_spec,
)

SHRUNK_RESNET50 = dict(layers=(1, 2, 1, 1), channels=(4, 8, 16, 32))
SHRUNK_SWIN_B = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=2, img_size=64)


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return create_backbone("efficientnet-lite0")


@pytest.fixture(scope="module")
def lite0_classifier() -> nn.Module:
    return load_classifier("efficientnet-lite0")


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, torch.Tensor]:
    return bw._read_state_dict(bw._embedded_lite0_path())


def _randomize_norms(model: nn.Module) -> nn.Module:
    # timm zero-initialises each residual branch's last BatchNorm, which would make random-init blocks identity
    # maps (and pre-ReLU taps non-negative); random affine parameters make the checks below meaningful.
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def _one_sentence(message: str) -> None:
    # User-facing errors are one sentence: what is wrong; how to fix it.
    assert message.count("; ") >= 1 and "\n" not in message, message


# --- registry and specs -----------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert USER_BACKBONE_NAMES == ("efficientnet-lite0", "resnet50", "swin-b")
    assert set(BACKBONE_NAMES) == set(USER_BACKBONE_NAMES) | {"test-resnet", "test-swin"}
    assert DEFAULT_BACKBONE == "efficientnet-lite0"


@pytest.mark.parametrize(
    "name, channels, blocks, mean, fixed",
    [
        ("efficientnet-lite0", (24, 40, 112, 192), (2, 2, 3, 4), (0.5, 0.5, 0.5), None),
        ("resnet50", (256, 512, 1024, 2048), (3, 4, 6, 3), (0.485, 0.456, 0.406), None),
        ("swin-b", (128, 256, 512, 1024), (2, 2, 18, 2), (0.485, 0.456, 0.406), 384),
    ],
)
def test_real_specs_match_their_modules(name, channels, blocks, mean, fixed) -> None:
    spec = backbone_spec(name)
    assert (spec.channels, spec.num_blocks, spec.mean, spec.fixed_size) == (channels, blocks, mean, fixed)
    assert (spec.default_size, spec.size_multiple, spec.strides) == (384, 32, (4, 8, 16, 32))
    # Full-size modules on the meta device (no memory, no weights): the Backbone constructor checks the real
    # module structure against the spec, so this proves the numbers above for the actual timm models.
    with torch.device("meta"):
        backbone = create_backbone(name, pretrained=False)
    assert backbone.spec.channels == channels and backbone.spec.num_blocks == blocks


def test_unknown_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="Unknown backbone 'vgg16'") as info:
        create_backbone("vgg16")
    _one_sentence(str(info.value))
    with pytest.raises(ConfigError):
        backbone_spec("vgg16")


def test_bad_override_is_config_error() -> None:
    with pytest.raises(ConfigError, match="overrides"):
        create_backbone("test-resnet", not_a_timm_arg=1)


def test_spec_round_trip_rebuilds_same_module() -> None:
    backbone = create_backbone("resnet50", pretrained=False, **SHRUNK_RESNET50)
    spec = backbone.spec
    assert spec.model_args == SHRUNK_RESNET50 and spec.channels == (16, 32, 64, 128)
    again_spec = BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again_spec == spec and hash(again_spec) == hash(spec)
    again = create_backbone(again_spec.name, pretrained=False, **again_spec.model_args)
    a, b = backbone.state_dict(), again.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    with pytest.raises(CheckpointError, match="newer"):
        BackboneSpec.from_dict({**spec.to_dict(), "from_the_future": 1})
    with pytest.raises(CheckpointError, match="lacks keys"):
        BackboneSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "channels"})


# --- taps -------------------------------------------------------------------------------------------------------


def _check_taps(backbone: Backbone, height: int, width: int) -> None:
    spec = backbone.spec
    images = torch.randn(2, 3, height, width)
    feats = backbone(images)
    assert len(feats) == 4
    for level, maps in enumerate(feats):
        assert len(maps) == spec.num_blocks[level]
        stride = spec.strides[level]
        for m in maps:
            assert m.shape == (2, spec.channels[level], height // stride, width // stride)
            assert m.is_contiguous() and not m.requires_grad
    # A channels-last batch (predict on the CPU) gets the same maps, dense in its own layout (no NCHW copies).
    last = backbone(images.contiguous(memory_format=torch.channels_last))
    for maps, maps_last in zip(feats, last):
        for m, m_last in zip(maps, maps_last):
            assert m_last.is_contiguous(memory_format=torch.channels_last) and not m_last.is_contiguous()
            torch.testing.assert_close(m_last, m, rtol=1e-4, atol=1e-4)


def test_lite0_taps(lite0: Backbone) -> None:
    assert lite0.spec.num_blocks == (2, 2, 3, 4) and lite0.spec.channels == (24, 40, 112, 192)
    for size in [(256, 192), (128, 128), (160, 224)]:
        _check_taps(lite0, *size)


@pytest.mark.parametrize(
    "name, overrides, sizes",
    [
        ("test-resnet", {}, [(256, 192), (96, 128)]),
        ("resnet50", SHRUNK_RESNET50, [(192, 256), (64, 64)]),
        ("test-swin", {}, [(128, 128)]),
        ("swin-b", SHRUNK_SWIN_B, [(64, 64)]),
    ],
)
def test_shrunk_taps(name, overrides, sizes) -> None:
    backbone = create_backbone(name, pretrained=False, **overrides)
    assert backbone.spec.source == "random init"
    for size in sizes:
        _check_taps(backbone, *size)


@pytest.mark.parametrize(
    "name, indices",
    [
        # timm's stage ends: lite0 feature_info 1, 2, 3 = blocks[1], [2], [4]; resnet 1..4 = layer1..4.
        ("efficientnet-lite0", {0: 1, 1: 2, 2: 3}),
        ("test-resnet", {0: 1, 1: 2, 2: 3, 3: 4}),
        ("test-swin", {0: 0, 1: 1, 2: 2, 3: 3}),
    ],
)
def test_last_tap_of_each_level_is_timms_stage_output(name, indices, lite0_classifier) -> None:
    # Guards the hand-written block walks against timm upgrades: the last map of a level must equal the
    # stage output timm itself reports (ResNet taps are pre-ReLU, timm's stage output is after it).
    if name == "efficientnet-lite0":
        full = lite0_classifier
    else:
        full = _randomize_norms(load_classifier(name, pretrained=False))
    spec = backbone_spec(name)
    backbone = bb._FAMILY_CLASSES[spec.family](spec, copy.deepcopy(full))
    size = spec.fixed_size or 128
    x = torch.randn(1, 3, size, size)
    feats = backbone(x)
    with torch.no_grad():
        stages = full.forward_intermediates(x, indices=sorted(indices.values()), intermediates_only=True)
    by_index = dict(zip(sorted(indices.values()), stages))
    for level, idx in indices.items():
        tap = feats[level][-1]
        if spec.family == "resnet":
            assert tap.min() < 0  # really before the ReLU
            tap = F.relu(tap)
        torch.testing.assert_close(tap, by_index[idx], rtol=1e-4, atol=1e-5)


def test_resnet_bottleneck_split_matches_timm_block() -> None:
    backbone = _randomize_norms(create_backbone("test-resnet", pretrained=False))
    block = backbone.model.layer3[0]  # has a downsample shortcut
    x = torch.randn(1, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        pre, out = bb._bottleneck(block, x)
        torch.testing.assert_close(out, block(x.clone()))
    torch.testing.assert_close(F.relu(pre), out)


def test_head_is_pruned(lite0: Backbone) -> None:
    keys = lite0.state_dict().keys()
    assert not any(k.startswith(("model.classifier", "model.conv_head", "model.bn2", "model.blocks.6")) for k in keys)
    assert not any("fc" in k for k in create_backbone("test-resnet", pretrained=False).state_dict())
    assert not any(k.startswith("model.head") for k in create_backbone("test-swin", pretrained=False).state_dict())
    assert "mean" not in keys  # normalisation travels in the spec, not the weights


def test_input_size_rules(lite0: Backbone) -> None:
    with pytest.raises(ConfigError, match="multiples of 32") as info:
        lite0(torch.randn(1, 3, 250, 256))
    _one_sentence(str(info.value))
    swin = create_backbone("test-swin", pretrained=False)
    with pytest.raises(ConfigError, match=r"test-swin needs 128×128 input.*use --size 128"):
        swin(torch.randn(1, 3, 160, 160))
    assert backbone_spec("swin-b").fixed_size == 384
    with pytest.raises(ValueError):
        lite0(torch.randn(3, 64, 64))


# --- frozen and eval --------------------------------------------------------------------------------------------


def test_frozen_and_eval_even_after_train() -> None:
    backbone = create_backbone("test-resnet", pretrained=False)
    parent = nn.Sequential(backbone, nn.Conv2d(3, 3, 1))
    parent.train()
    backbone.train(True)
    assert not any(m.training for m in backbone.modules())
    assert parent[1].training
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.randn(1, 3, 64, 64, requires_grad=True)
    feats = backbone(x)
    assert not any(m.requires_grad for level in feats for m in level)
    # eval mode really is used: BatchNorm running statistics do not move.
    before = backbone.model.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64) * 5 + 3)
    torch.testing.assert_close(backbone.model.bn1.running_mean, before)


def _norm_stats(backbone: Backbone) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.running_mean.clone(), m.running_var.clone()) for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)
    ]


def test_adapt_norm_stats_moves_the_statistics_by_weight_only() -> None:
    """AdaBN: weight 1 gives the images' own statistics (the stem BN's: the mean / unbiased variance of its conv's
    output over the images), 0.5 the midpoint with the pretrained ones, 0 nothing; weights and eval mode kept."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=gen)
    fresh = create_backbone("test-resnet", pretrained=False)
    pretrained, params = _norm_stats(fresh), copy.deepcopy(fresh.state_dict())
    momenta = [m.momentum for m in fresh.modules() if isinstance(m, nn.BatchNorm2d)]

    full = copy.deepcopy(fresh)
    layers = full.adapt_norm_stats(images, 1.0, batch_size=8)
    assert layers == len(pretrained) > 0
    stem = full.model.conv1(full.preprocess(images))
    torch.testing.assert_close(full.model.bn1.running_mean, stem.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(full.model.bn1.running_var, stem.var(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not any(m.training for m in full.modules())
    assert [m.momentum for m in full.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    kept = {k: v for k, v in full.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert all(torch.equal(v, params[k]) for k, v in kept.items())  # the weights stay frozen

    half = copy.deepcopy(fresh)
    half.adapt_norm_stats(images, 0.5)
    for (m0, v0), (m1, v1), (mh, vh) in zip(pretrained, _norm_stats(full), _norm_stats(half)):
        if not torch.allclose(m1, m0):  # deeper layers see the half-adapted layers before them: first one only
            torch.testing.assert_close(mh, (m0 + m1) / 2)
            torch.testing.assert_close(vh, (v0 + v1) / 2)
            break
    assert any(not torch.allclose(a[0], b[0]) for a, b in zip(_norm_stats(half), pretrained))

    none = copy.deepcopy(fresh)
    assert none.adapt_norm_stats(images, 0.0) == 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(_norm_stats(none), pretrained))


def test_adapt_norm_stats_batches_average_and_interruption_restores() -> None:
    """Batches of the images average to the statistics of the whole set (same-size batches); an exception midway
    leaves the pretrained statistics exactly; a backbone without BatchNorm (Swin) moves nothing."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=gen)
    one, two = create_backbone("test-resnet", pretrained=False), create_backbone("test-resnet", pretrained=False)
    two.load_state_dict(one.state_dict())
    one.adapt_norm_stats(images, 1.0, batch_size=4)
    two.adapt_norm_stats(images, 1.0, batch_size=2)
    torch.testing.assert_close(one.model.bn1.running_mean, two.model.bn1.running_mean)

    broken = create_backbone("test-resnet", pretrained=False)
    before = _norm_stats(broken)

    def fail(x: torch.Tensor) -> None:
        raise RuntimeError("out of memory")

    broken._taps = fail  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        broken.adapt_norm_stats(images, 1.0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(_norm_stats(broken), before))
    assert not any(m.training for m in broken.modules())
    assert create_backbone("test-swin", pretrained=False).adapt_norm_stats(images, 1.0) == 0


def test_preprocess_normalises_uint8_with_the_spec_as_transforms_normalize(lite0: Backbone) -> None:
    """The backbone normalises its uint8 input itself, bit for bit as the ONNX path's normalize (one formula)."""
    from fsdistill.data.transforms import normalize

    x = torch.full((1, 3, 4, 4), 191, dtype=torch.uint8)  # 0.749 on the 0–1 scale, mean = std = 0.5
    torch.testing.assert_close(lite0.preprocess(x), torch.full((1, 3, 4, 4), 191 / 127.5 - 1))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lite0.preprocess(images), normalize(images, lite0.spec.mean, lite0.spec.std))
    last = images.contiguous(memory_format=torch.channels_last)
    assert lite0.preprocess(last).is_contiguous(memory_format=torch.channels_last)  # predict's CPU layout is kept
    with pytest.raises(TypeError, match="uint8"):
        lite0.encode(images.float())  # normalised twice would be silently wrong


def test_encode_batched_equals_one_encode(lite0: Backbone) -> None:
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole, batched = lite0.encode(images), lite0.encode_batched(images, batch_size=2)
    for level, level_batched in zip(whole, batched):
        for m, m_batched in zip(level, level_batched):
            torch.testing.assert_close(m_batched, m, rtol=1e-4, atol=1e-4)  # conv kernels differ per batch size


# --- weights ----------------------------------------------------------------------------------------------------


def _imagenet_top5(model: nn.Module, image: np.ndarray) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        logits = model((x - 0.5) / 0.5)
    return logits[0].topk(5).indices.tolist()


def test_golden_lite0_embedded_weights_classify(lite0_classifier) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    info = timm.data.ImageNetInfo()
    cat = _imagenet_top5(lite0_classifier, skimage_data.chelsea())
    assert cat[0] in {281, 282, 285}, [info.index_to_description(i) for i in cat]
    assert "cat" in info.index_to_description(cat[0])
    coffee = _imagenet_top5(lite0_classifier, skimage_data.coffee())
    assert coffee[0] == 967, [info.index_to_description(i) for i in coffee]
    assert info.index_to_description(967) == "espresso"


def test_backbone_holds_the_classifier_weights(lite0, lite0_classifier) -> None:
    full = lite0_classifier.state_dict()
    own = {k.removeprefix("model."): v for k, v in lite0.state_dict().items()}
    assert len(own) > 200
    for k, v in own.items():
        assert torch.equal(v, full[k]), k
    assert "embedded" in lite0.spec.source


def test_lite0_local_files_lukemelas_and_timm_named(tmp_path, lite0, lukemelas_state) -> None:
    from safetensors.torch import save_file

    expected = lite0.state_dict()
    luke = tmp_path / "lite0_lukemelas.safetensors"
    save_file({k: v.contiguous() for k, v in lukemelas_state.items()}, str(luke))
    shuffled = tmp_path / "lite0_lukemelas_shuffled.pth"
    keys = list(lukemelas_state)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0)).tolist()
    torch.save({keys[i]: lukemelas_state[keys[i]] for i in order}, shuffled)
    timm_named = tmp_path / "lite0_timm.pth"
    # Wrapped and prefixed as training scripts save them.
    torch.save({"state_dict": {f"module.{k}": v for k, v in load_classifier().state_dict().items()}}, timm_named)
    # safetensors stores keys sorted by name and the shuffled file has no order at all: the remap must not
    # rely on the file's key order.
    for path in (luke, shuffled, timm_named):
        loaded = create_backbone("efficientnet-lite0", weights=path)
        assert str(path) in loaded.spec.source
        got = loaded.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_corrupted_lukemelas_file_is_checkpoint_error(tmp_path, lukemelas_state) -> None:
    state = dict(lukemelas_state)
    state["_blocks.3._bn1.weight"] = state["_blocks.3._bn1.weight"][:-1]
    bad = tmp_path / "bad_shape.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match=r"_blocks\.3\._bn1\.weight") as info:
        create_backbone("efficientnet-lite0", weights=bad)
    _one_sentence(str(info.value))

    state = dict(lukemelas_state)
    del state["_fc.bias"]
    short = tmp_path / "missing_tensor.pth"
    torch.save(state, short)
    with pytest.raises(CheckpointError, match="tensors"):
        create_backbone("efficientnet-lite0", weights=short)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read"):
        create_backbone("efficientnet-lite0", weights=junk)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "test-resnet", "resnet50", "swin-b"])
def test_missing_weights_file_is_checkpoint_error(tmp_path, name) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match="nope.pth does not exist") as info:
        create_backbone(name, weights=missing)
    _one_sentence(str(info.value))


def test_hub_weights_through_local_file_and_family_filter(tmp_path) -> None:
    from safetensors.torch import save_file

    # ResNet: a timm-named safetensors file.
    torch.manual_seed(0)
    source = load_classifier("test-resnet", pretrained=False)
    path = tmp_path / "resnet.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = create_backbone("test-resnet", weights=path)
    x = torch.randn(1, 3, 64, 64)
    reference = bb.ResNetBackbone(backbone_spec("test-resnet"), copy.deepcopy(source))
    torch.testing.assert_close(loaded(x)[3][0], reference(x)[3][0])

    # Swin: a file in the ORIGINAL Swin layout (PatchMerging at the end of a stage, `head.*`, under "model"), as
    # the reference's swin_base_patch4_window12_384.pth; timm's family filter must move it back.
    source = load_classifier("test-swin", pretrained=False)
    original = {}
    for k, v in source.state_dict().items():
        if "relative_position_index" in k or "attn_mask" in k:
            continue
        for i in range(1, 4):
            k = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        original[k.replace("head.fc.", "head.")] = v
    assert "layers.0.downsample.reduction.weight" in original
    path = tmp_path / "swin_original.pth"
    torch.save({"model": original}, path)
    loaded = create_backbone("test-swin", weights=path)
    reference = bb.SwinBackbone(backbone_spec("test-swin"), copy.deepcopy(source))
    x = torch.randn(1, 3, 128, 128)
    for a, b in zip(loaded(x), reference(x)):
        torch.testing.assert_close(a[-1], b[-1])

    # A file of another architecture does not fit.
    wrong = tmp_path / "wrong.safetensors"
    save_file(load_classifier("test-swin", pretrained=False).state_dict(), str(wrong))
    with pytest.raises(CheckpointError, match="does not fit ResNet-50") as info:
        create_backbone("test-resnet", weights=wrong)
    _one_sentence(str(info.value))


@pytest.mark.parametrize("name", ["resnet50", "swin-b"])
def test_offline_hub_is_checkpoint_error(monkeypatch, name) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    calls = []

    def offline_create_model(model_name, pretrained=False, **kwargs):
        calls.append((model_name, pretrained))
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    # The hub answers a TCP connect but the download still fails (the fast unreachable path: test_first_hour.py).
    monkeypatch.setattr(bw, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(bw, "_hub_file_in_cache", lambda spec: None)
    with pytest.raises(CheckpointError, match=r"Could not download .* \(offline\?\); pass --backbone-weights") as info:
        create_backbone(name)
    _one_sentence(str(info.value))
    assert calls == [(backbone_spec(name).timm_name, True)]


def test_test_names_never_download(monkeypatch) -> None:
    real = timm.create_model

    def no_download(model_name, pretrained=False, **kwargs):
        assert not pretrained
        return real(model_name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    assert create_backbone("test-swin").spec.source == "random init"


# --- inference preparation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, expected", [("efficientnet-lite0", 128, 45), ("test-resnet", 64, None), ("test-swin", 128, 0)]
)
def test_folding_batchnorm_keeps_the_taps(name, size, expected) -> None:
    """Every BN after a conv is folded into it (Lite0: all 45; Swin has none); the taps stay the same, activations
    of timm's BatchNormAct2d included, and a second fold finds nothing left."""
    backbone = _randomize_norms(create_backbone(name, pretrained=False))
    gen = torch.Generator().manual_seed(1)
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):  # running statistics away from the 0 / 1 of a fresh model
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    images = torch.randn(2, 3, size, size)
    before = backbone(images)
    folded = copy.deepcopy(backbone)
    count = folded.fold_batchnorm()
    assert count == (bns if expected is None else expected) and count == bns
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    for maps, maps_folded in zip(before, folded(images)):
        for m, m_folded in zip(maps, maps_folded):
            torch.testing.assert_close(m_folded, m, rtol=1e-4, atol=1e-4 * float(m.abs().max()))
    assert folded.fold_batchnorm() == 0


def test_predictor_runs_the_student_folded_with_the_same_logits(tmp_path) -> None:
    """predict/evaluate prepare their model with for_inference (folded BNs, predict's layout): same logits."""
    from fsdistill.config import ModelCfg
    from fsdistill.infer.predictor import Predictor
    from fsdistill.models.build import build_student, build_teacher, load_model

    from helpers import save_plain_artifact

    torch.manual_seed(0)
    cfg = ModelCfg(backbone="test-resnet", size=64, student_width=4)
    student = build_student(build_teacher(cfg, 2, pretrained=False), cfg.student_width, cfg.refiner).eval()
    _randomize_norms(student.backbone)
    path = save_plain_artifact(tmp_path / "student", student, cfg)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    reference = load_model(path)
    with torch.no_grad():
        expected = reference.model.predict(images)
    predictor = Predictor(load_model(path), torch.device("cpu"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in predictor.loaded.model.modules())
    torch.testing.assert_close(predictor.logits(images), expected, rtol=1e-4, atol=1e-4)
