"""Import of official DCAMA / DistillFSS teacher checkpoints (fsdistill.models.reference_import).

No download: the checkpoints are synthetic state dicts with the official key names, order and shapes
(reference.md §1.3, §4), filled with random values. The expected head shapes below are written from the reference
description, independently of fsdistill's decoder, so these tests also check that our decoder has the reference
layout. The swin-b teacher is built on the meta device and materialised uninitialised (its 87 M backbone
parameters would take seconds to initialise); import only copies into it.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from fsdistill.errors import CheckpointError
from fsdistill.models.backbone import create_backbone
from fsdistill.models.build import build_decoder
from fsdistill.models.reference_import import BLOCK_STAGES, ImportReport, import_reference_weights
from fsdistill.models.teacher import DCAMATeacher

# Reference head geometry: attention widths at stages 2-4, maps per stage 2-4, skip channels (stride 4, stride 8).
SWIN_B = dict(widths=(256, 512, 1024), maps=(2, 18, 2), skips=(128, 256))
RESNET50 = dict(widths=(512, 1024, 2048), maps=(4, 6, 3), skips=(256, 512))
HEAD_TENSORS = 84  # 3 blocks × 2 linears × 2 + 5 conv blocks × 12 + 3 mixers × 4


def official_head_shapes(widths, maps, skips, concat_support=False) -> list[tuple[str, tuple[int, ...]]]:
    """(key without the ``model.`` prefix, shape) of the reference DCAMA head, in module order (pe left out)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for i, c in enumerate(widths):
        for j in range(2):
            out += [(f"DCAMA_blocks.{i}.linears.{j}.weight", (c, c)), (f"DCAMA_blocks.{i}.linears.{j}.bias", (c,))]
    n2, n3, n4 = maps
    convs = [
        ("conv1", [n4, 16, 64, 128], (3, 3, 3)),
        ("conv2", [n3, 16, 64, 128], (5, 3, 3)),
        ("conv3", [n2, 16, 64, 128], (5, 5, 3)),
        ("conv4", [128] * 4, (3, 3, 3)),
        ("conv5", [128] * 4, (3, 3, 3)),
    ]
    for name, chans, kernels in convs:
        for s, (ci, co, k) in enumerate(zip(chans[:-1], chans[1:], kernels)):
            out += [
                (f"{name}.{3 * s}.weight", (co, ci, k, k)),
                (f"{name}.{3 * s}.bias", (co,)),
                (f"{name}.{3 * s + 1}.weight", (co,)),
                (f"{name}.{3 * s + 1}.bias", (co,)),
            ]
    c4, c8 = skips
    mixer_in = 128 + (2 if concat_support else 1) * (c8 + c4)
    for name, chans in (("mixer1", [mixer_in, 128, 64]), ("mixer2", [64, 64, 16]), ("mixer3", [16, 16, 2])):
        for s, (ci, co) in enumerate(zip(chans[:-1], chans[1:])):
            out += [(f"{name}.{2 * s}.weight", (co, ci, 3, 3)), (f"{name}.{2 * s}.bias", (co,))]
    return out


def our_name(ref: str) -> str:
    """Expected fsdistill parameter of a reference head key (the documented mapping, written out here)."""
    module, rest = ref.split(".", 1)
    if module == "DCAMA_blocks":
        return f"blocks.{rest}"
    return f"decoder.{module}.{rest}"


def standard_pe(length: int, channels: int) -> torch.Tensor:
    """The annotated-transformer sinusoidal table the reference stores as ``pe`` (1×L×C)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(length, channels)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe[None]


def official_head(geometry: dict, gen: torch.Generator, concat_support=False, pe=True, pe_len=1024):
    """``model.*`` tensors of a reference head (DCAMA_blocks, pe, conv1-5, mixer1-3 order)."""
    shapes = official_head_shapes(**geometry, concat_support=concat_support)
    sd = {f"model.{k}": torch.randn(s, generator=gen) for k, s in shapes[:12]}
    if pe:
        sd.update({f"model.pe.{i}.pe": standard_pe(pe_len, c) for i, c in enumerate(geometry["widths"])})
    sd.update({f"model.{k}": torch.randn(s, generator=gen) for k, s in shapes[12:]})
    return sd


def official_backbone(teacher: DCAMATeacher, gen: torch.Generator) -> tuple[dict, dict]:
    """Reference-named backbone tensors (``feature_extractor.`` left off) and our timm name → reference name.

    ResNet-50: torchvision names (= timm's) plus the classifier. Swin-B: original Swin layout (PatchMerging at the
    end of stage i, reduction before norm), with the ``relative_position_index``/``attn_mask`` buffers, final norm
    and classifier that our pruned backbone lacks.
    """
    family = teacher.backbone.spec.family
    ours = teacher.backbone.model.state_dict()
    sd: dict[str, torch.Tensor] = {}
    expected: dict[str, str] = {}

    base = torch.rand(1, generator=gen).item()
    count = iter(range(1, 10**6))

    def rand(t: torch.Tensor) -> torch.Tensor:
        # A different constant per tensor and per checkpoint: mis-paired tensors show, and filling is fast.
        return torch.full(t.shape, base + next(count) * 1e-3) if t.is_floating_point() else torch.full_like(t, 7)

    keys = list(ours)
    if family == "swin":
        # timm: layers.i.downsample.{norm.weight, norm.bias, reduction.weight} → original layers.{i-1}.downsample
        # with reduction first.
        reordered = []
        for k in keys:
            if ".downsample.reduction." in k:
                reordered.insert(len(reordered) - 2, k)
            else:
                reordered.append(k)
        for k in reordered:
            parts = k.split(".")
            if parts[0] == "layers" and parts[2] == "downsample":
                ref = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
            else:
                ref = k
            if k.endswith(".norm1.weight") and int(k.split(".")[3]) % 2 == 1 and int(k.split(".")[1]) < 3:
                windows = (96 // 2 ** int(k.split(".")[1]) // 12) ** 2
                sd[k.replace("norm1.weight", "attn_mask")] = torch.zeros(windows, 144, 144)
            sd[ref] = rand(ours[k])
            expected[k] = ref
            if k.endswith("relative_position_bias_table"):
                sd[k.replace("bias_table", "index")] = torch.zeros(144, 144, dtype=torch.long)
        sd.update(
            {
                "norm.weight": torch.ones(1024),
                "norm.bias": torch.zeros(1024),
                "head.weight": torch.randn(1000, 1024, generator=gen),
                "head.bias": torch.zeros(1000),
            }
        )
    else:
        for k in keys:
            sd[k] = rand(ours[k])
            expected[k] = k
        sd.update({"fc.weight": torch.randn(1000, 2048, generator=gen), "fc.bias": torch.zeros(1000)})
    return sd, expected


def official_checkpoint(teacher, geometry, seed=0, backbone=True, **head_kw):
    """Full reference state dict (``feature_extractor.*`` then ``model.*``) and the backbone name map."""
    gen = torch.Generator().manual_seed(seed)
    sd, expected = {}, {}
    if backbone:
        bb, expected = official_backbone(teacher, gen)
        sd.update({f"feature_extractor.{k}": v for k, v in bb.items()})
    sd.update(official_head(geometry, gen, **head_kw))
    return sd, expected


def materialised_teacher(name: str) -> DCAMATeacher:
    """A teacher on the real backbone spec, built without initialising the backbone (meta → uninitialised)."""
    with torch.device("meta"):
        backbone = create_backbone(name, pretrained=False)
        teacher = DCAMATeacher(backbone, build_decoder(backbone.spec, "dcama"), num_classes=2)
    teacher.to_empty(device="cpu")
    return reset(teacher)


def reset(teacher: DCAMATeacher) -> DCAMATeacher:
    """Undo a previous import: zero head, our default prior scale and cosine attention, and a NaN in the first
    element of every floating backbone tensor, so an equality check proves each one was overwritten (cheaper than
    rewriting 87 M values)."""
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if not name.startswith("backbone."):
                p.zero_()
        for t in teacher.backbone.model.state_dict().values():
            if t.is_floating_point():
                t.view(-1)[0] = float("nan")
        teacher.decoder.prior_scale.fill_(8.0)
    for block in teacher.blocks:
        block.qk_norm = 10.0
    return teacher


@pytest.fixture(scope="module")
def swin_teacher() -> DCAMATeacher:
    return materialised_teacher("swin-b")


@pytest.fixture(scope="module")
def r50_teacher() -> DCAMATeacher:
    return materialised_teacher("resnet50")


@pytest.fixture
def swin(swin_teacher):
    return reset(swin_teacher)


@pytest.fixture
def r50(r50_teacher):
    return reset(r50_teacher)


@pytest.fixture(scope="module")
def r50_checkpoint(r50_teacher):
    return official_checkpoint(r50_teacher, RESNET50, seed=1)


def assert_head_equal(teacher: DCAMATeacher, sd: dict, prefix: str = "model.") -> None:
    params = dict(teacher.named_parameters())
    for ref, _ in official_head_shapes(**(SWIN_B if teacher.backbone.spec.name == "swin-b" else RESNET50)):
        assert torch.equal(params[our_name(ref)], sd[prefix + ref]), ref


def assert_backbone_equal(teacher: DCAMATeacher, sd: dict, expected: dict, prefix: str = "feature_extractor.") -> None:
    ours = teacher.backbone.model.state_dict()
    for timm_name, ref in expected.items():
        assert torch.equal(ours[timm_name], sd[prefix + ref].to(ours[timm_name].dtype)), timm_name


def assert_published_behaviour(teacher: DCAMATeacher) -> None:
    assert teacher.decoder.prior_scale.item() == 0.0
    assert all(block.qk_norm is None for block in teacher.blocks)


# ---------------------------------------------------------------------------------------------------------------


def test_reference_head_geometry_matches_our_teacher(swin, r50):
    for teacher, geometry in ((swin, SWIN_B), (r50, RESNET50)):
        shapes = official_head_shapes(**geometry)
        assert len(shapes) == HEAD_TENSORS
        params = dict(teacher.named_parameters())
        assert {our_name(k): s for k, s in shapes} == {
            k: tuple(p.shape) for k, p in params.items() if k.startswith(("blocks.", "decoder.")) and p.ndim
        }
    assert official_head_shapes(**SWIN_B, concat_support=True)[-12][1][1] == 896  # mixer1.0 input, reference §1.3


def test_block_index_is_stage_minus_two(swin):
    # DCAMA_blocks.0 → blocks.0 = stage 2 (level 1, 256 ch on swin-b), .1 → stage 3 (512), .2 → stage 4 (1024).
    assert BLOCK_STAGES == {0: (2, 1), 1: (3, 2), 2: (4, 3)}
    assert [b.channels for b in swin.blocks] == [256, 512, 1024]
    assert [swin.backbone.spec.channels[level] for _, level in BLOCK_STAGES.values()] == [256, 512, 1024]


def test_swin_b_by_name_from_pt(swin, tmp_path):
    sd, expected = official_checkpoint(swin, SWIN_B, pe_len=2304)  # 48² = stage-2 grid at 384 px
    path = tmp_path / "swin_fold0_pascal_modcross_soft.pt"
    torch.save({"state_dict": sd, "epoch": 50}, path)
    swin.blocks[0].use_pe = False  # not the default: the import must keep it as configured, not switch it on
    try:
        report = import_reference_weights(swin, path)
        use_pe = swin.blocks[0].use_pe
    finally:
        swin.blocks[0].use_pe = True  # the module's shared teacher

    assert isinstance(report, ImportReport)
    assert (report.head_method, report.head_tensors) == ("name", HEAD_TENSORS)
    assert report.backbone_method == "name"
    assert report.backbone_tensors == len(expected)
    assert_head_equal(swin, sd)
    assert_backbone_equal(swin, sd, expected)
    # DCAMA_blocks.1 landed in blocks.1 (stage 3).
    assert torch.equal(swin.blocks[1].linears[1].weight, sd["model.DCAMA_blocks.1.linears.1.weight"])
    assert_published_behaviour(swin)
    assert use_pe is False
    ignored = set(report.ignored_keys)
    assert {f"model.pe.{i}.pe" for i in range(3)} <= ignored
    assert {"feature_extractor.head.weight", "feature_extractor.norm.weight"} <= ignored
    assert "feature_extractor.layers.0.blocks.0.attn.relative_position_index" in ignored
    assert "feature_extractor.layers.0.blocks.1.attn_mask" in ignored
    assert report.pe_checked == 3  # the stored reference PE equals the one fsdistill regenerates


@pytest.mark.parametrize(
    "variant,with_backbone",
    [
        ("module.pt", True),
        ("la-repo.safetensors", True),
        ("plain.pth", False),
        ("wrapped-model.pt", False),
        ("module.safetensors", False),
    ],
)
def test_resnet50_prefixes_and_formats(r50, r50_checkpoint, tmp_path, variant, with_backbone):
    sd, expected = r50_checkpoint
    if not with_backbone:  # head only: keeps the test fast, the backbone part is covered by the other variants
        sd = {k: v for k, v in sd.items() if not k.startswith("feature_extractor.")}
    if variant.startswith("module"):
        stored = {f"module.{k}": v for k, v in sd.items()}
    elif variant.startswith("la-repo"):
        stored = {f"model.{k}": v for k, v in sd.items()}  # model.model.DCAMA_blocks…, model.feature_extractor…
    else:
        stored = dict(sd)
    path = tmp_path / f"resnet50_fold0_{variant}"
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in stored.items()}, str(path))
    else:
        torch.save({"model": stored} if variant.startswith("wrapped") else stored, path)
    report = import_reference_weights(r50, path)
    assert (report.head_method, report.head_tensors) == ("name", HEAD_TENSORS)
    assert_head_equal(r50, sd)
    assert_published_behaviour(r50)
    ignored = set(report.ignored_keys)
    assert any(k.endswith("model.pe.0.pe") for k in ignored)
    if with_backbone:
        assert (report.backbone_method, report.backbone_tensors) == ("name", len(expected))
        assert_backbone_equal(r50, sd, expected)
        assert any(k.endswith("feature_extractor.fc.weight") for k in ignored)
    else:
        assert report.backbone_kept


def test_positional_head_with_renamed_keys(r50, r50_checkpoint, tmp_path):
    sd, expected = r50_checkpoint
    renamed = {}
    for i, (k, v) in enumerate(sd.items()):
        renamed[k if k.startswith("feature_extractor.") else f"net.head_{i}.w"] = v
    torch.save(renamed, tmp_path / "renamed.pt")
    report = import_reference_weights(r50, tmp_path / "renamed.pt")
    assert (report.head_method, report.backbone_method) == ("positional", "name")
    assert_head_equal(r50, sd)
    assert_backbone_equal(r50, sd, expected)
    assert_published_behaviour(r50)


def test_positional_everything_without_names(r50, r50_checkpoint, tmp_path):
    # No feature_extractor / model names at all: the head is the last 84 tensors (PE dropped by shape), the
    # backbone everything before it, paired by position (BN counters and the trailing classifier skipped).
    sd, expected = r50_checkpoint
    renamed = {f"t{i}": v for i, v in enumerate(sd.values())}
    torch.save(renamed, tmp_path / "anonymous.pt")
    report = import_reference_weights(r50, tmp_path / "anonymous.pt")
    assert (report.head_method, report.backbone_method) == ("positional", "positional")
    assert report.backbone_tensors == sum(1 for k in expected if not k.endswith("num_batches_tracked"))
    assert_head_equal(r50, sd)
    ours = r50.backbone.model.state_dict()
    for timm_name, ref in expected.items():
        if not timm_name.endswith("num_batches_tracked"):
            assert torch.equal(ours[timm_name], sd[f"feature_extractor.{ref}"]), timm_name


@pytest.mark.parametrize(
    "geometry,name,shape", [(SWIN_B, "swin", (128, 896, 3, 3)), (RESNET50, "r50", (128, 1664, 3, 3))]
)
def test_concat_support_checkpoint_is_refused(request, tmp_path, geometry, name, shape):
    teacher = request.getfixturevalue(name)
    sd = official_head(geometry, torch.Generator().manual_seed(0), concat_support=True, pe=False)
    torch.save(sd, tmp_path / "original_dcama.pt")
    before = teacher.decoder.mixer2[0].weight.clone()
    with pytest.raises(CheckpointError) as info:
        import_reference_weights(teacher, tmp_path / "original_dcama.pt")
    text = str(info.value)
    assert "model.mixer1.0.weight" in text and str(shape) in text
    assert str(tuple(teacher.decoder.mixer1[0].weight.shape)) in text
    assert "support concatenation" in text and "modcross" in text
    # Nothing was changed by the failed import.
    assert torch.equal(teacher.decoder.mixer2[0].weight, before)
    assert teacher.decoder.prior_scale.item() == 8.0 and teacher.blocks[0].qk_norm == 10.0
    # Also recognised when the names are unknown and the head is paired by position.
    torch.save({f"k{i}": v for i, v in enumerate(sd.values())}, tmp_path / "anonymous.pt")
    with pytest.raises(CheckpointError, match=re.escape(f"k72 of shape {shape}") + ".*support concatenation"):
        import_reference_weights(teacher, tmp_path / "anonymous.pt")


def test_wrong_backbone_is_refused_with_the_needed_one(swin, r50, tmp_path):
    gen = torch.Generator().manual_seed(0)
    torch.save(official_head(RESNET50, gen, pe=False), tmp_path / "r50.pt")
    with pytest.raises(CheckpointError, match=r"resnet50 backbone .*512/1024/2048.*swin-b.*--backbone resnet50"):
        import_reference_weights(swin, tmp_path / "r50.pt")
    torch.save(official_head(SWIN_B, gen, pe=False), tmp_path / "swin.pt")
    with pytest.raises(CheckpointError, match=r"swin-b backbone .*256/512/1024.*--backbone swin-b"):
        import_reference_weights(r50, tmp_path / "swin.pt")
    # Also when the names are unknown and the head is paired by position.
    anonymous = {f"x{i}": v for i, v in enumerate(official_head(SWIN_B, gen, pe=False).values())}
    torch.save(anonymous, tmp_path / "swin_anonymous.pt")
    with pytest.raises(CheckpointError, match=r"--backbone swin-b"):
        import_reference_weights(r50, tmp_path / "swin_anonymous.pt")


def test_corrupt_and_foreign_files(r50, tmp_path):
    bad = {
        "garbage.pt": b"not a checkpoint at all",
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json",
        "empty.pth": b"",
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no_tensors.pt")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "tiny.pt")
    torch.save(create_backbone("test-resnet", pretrained=False).model.state_dict(), tmp_path / "backbone_only.pt")
    with_args = {"model.conv1.0.weight": torch.zeros(8, 3, 3, 3), "args": argparse.Namespace(lr=1)}
    torch.save(with_args, tmp_path / "args.pt")
    good = tmp_path / "truncated.pt"
    torch.save(official_head(RESNET50, torch.Generator().manual_seed(0), pe=False), good)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files = [*bad, "list.pt", "no_tensors.pt", "tiny.pt", "backbone_only.pt", "args.pt", "truncated.pt", "missing.pt"]
    for name in files:
        with pytest.raises(CheckpointError) as info:
            import_reference_weights(r50, tmp_path / name)
        message = str(info.value)
        assert name in message and message.count(". ") == 0 and message.endswith("."), message


def test_head_only_checkpoint_keeps_backbone(r50, tmp_path, caplog):
    import dataclasses

    with torch.no_grad():
        r50.backbone.model.conv1.weight.fill_(0.5)  # the whole tensor, so "kept" is checkable
    # as built (an earlier test's import recorded its checkpoint as the shared teacher's backbone source)
    r50.backbone.spec = dataclasses.replace(r50.backbone.spec, source="random init")
    torch.save(official_head(RESNET50, torch.Generator().manual_seed(0), pe=False), tmp_path / "head.pt")
    with caplog.at_level(logging.WARNING, logger="fsdistill.models.reference_import"):
        report = import_reference_weights(r50, tmp_path / "head.pt")
    assert report.backbone_kept and report.backbone_tensors == 0 and "no backbone" in report.backbone_note
    assert (r50.backbone.model.conv1.weight == 0.5).all()
    assert any("keeping the current backbone" in r.message for r in caplog.records)  # random-init backbone


def test_unfitting_backbone_is_kept_with_a_warning(r50, tmp_path, caplog):
    # Head for resnet50, but the backbone tensors of a different (tiny) ResNet: neither names nor positions fit.
    tiny = create_backbone("test-resnet", pretrained=False).model.state_dict()
    sd = {f"feature_extractor.{k}": v for k, v in tiny.items()}
    sd.update(official_head(RESNET50, torch.Generator().manual_seed(0)))
    torch.save(sd, tmp_path / "mixed.pt")
    with torch.no_grad():
        r50.backbone.model.layer4[0].conv2.weight.fill_(0.25)
    with caplog.at_level(logging.WARNING, logger="fsdistill.models.reference_import"):
        report = import_reference_weights(r50, tmp_path / "mixed.pt")
    assert report.head_method == "name" and report.backbone_kept
    assert "do not fit resnet50" in report.backbone_note
    assert (r50.backbone.model.layer4[0].conv2.weight == 0.25).all()
    assert any(r.levelno == logging.WARNING and "keeping the current backbone" in r.message for r in caplog.records)
    assert_published_behaviour(r50)


def test_foreign_positional_encoding_is_reported(r50, tmp_path, caplog):
    sd = official_head(RESNET50, torch.Generator().manual_seed(0), pe_len=64)
    sd["model.pe.1.pe"] = torch.rand(1, 64, 1024)
    torch.save(sd, tmp_path / "pe.pt")
    with caplog.at_level(logging.WARNING, logger="fsdistill.models.reference_import"):
        report = import_reference_weights(r50, tmp_path / "pe.pt")
    assert report.pe_checked == 2
    assert any("positional encoding of DCAMA block 1" in r.message for r in caplog.records)


def _tiny_reference_checkpoint(path: Path, backbone_weights: dict | None = None) -> dict:
    """A reference-named checkpoint for a test-resnet teacher, made from our own (randomised) teacher's head."""
    from fsdistill.config import ModelCfg
    from fsdistill.models.build import build_teacher

    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64, decoder="dcama"), 1, pretrained=False)
    gen = torch.Generator().manual_seed(3)
    sd: dict[str, torch.Tensor] = {}
    source = create_backbone("test-resnet", pretrained=False).model.state_dict()
    for k, v in source.items():
        sd[f"module.feature_extractor.{k}"] = torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
    for name, p in teacher.named_parameters():
        if name.startswith("blocks."):
            sd["module.model.DCAMA_blocks." + name.removeprefix("blocks.")] = torch.randn(p.shape, generator=gen)
        elif name.startswith("decoder.") and name != "decoder.prior_scale":
            sd["module.model." + name.removeprefix("decoder.")] = torch.randn(p.shape, generator=gen)
    torch.save(sd, path)
    return sd


def test_cli_adapt_with_teacher_weights(tmp_path, syn_binary):
    from fsdistill.cli import app
    from fsdistill.models.build import load_model

    support, _ = syn_binary
    weights = tmp_path / "tiny_modcross.pt"
    sd = _tiny_reference_checkpoint(weights)
    run = tmp_path / "run"
    args = ["adapt", "--support", str(support), "--backbone", "test-resnet", "--size", "64", "--steps", "0",
            "--teacher-weights", str(weights), "--out", str(run), "--device", "cpu", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = load_model(run / "teacher", kind="teacher").model
    params = dict(loaded.named_parameters())
    for key, value in sd.items():
        if ".model." in key:
            ref = key.removeprefix("module.model.")
            assert torch.equal(params[our_name(ref)], value), key
    state = loaded.backbone.model.state_dict()
    for key, value in sd.items():  # the checkpoint's BatchNorm statistics too: published weights keep them
        if ".feature_extractor." in key:
            assert torch.equal(state[key.removeprefix("module.feature_extractor.")], value), key
    assert load_model(run / "teacher", kind="teacher").config["training"]["norm_stats"]["weight"] == 0.0
    assert_published_behaviour(loaded)  # survives save and reload (the stored model_cfg says qk_norm None)
    assert load_model(run / "teacher", kind="teacher").model_cfg.qk_norm is None

    # A bad file is one line on stderr and exit code 2.
    (tmp_path / "bad.pt").write_bytes(b"junk")
    args[args.index(str(weights))] = str(tmp_path / "bad.pt")
    args[args.index(str(run))] = str(tmp_path / "run2")  # the first run is finished: reusing it needs --overwrite
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Cannot read teacher weights file" in result.output


def test_api_new_teacher_imports(tmp_path):
    from fsdistill.api.training import _new_teacher
    from fsdistill.config import AdaptCfg, ModelCfg

    weights = tmp_path / "tiny.safetensors"
    sd = _tiny_reference_checkpoint(tmp_path / "tiny.pt")
    save_file({k.removeprefix("module."): v.contiguous() for k, v in sd.items()}, str(weights))
    cfg = AdaptCfg(support=tmp_path, model=ModelCfg(backbone="test-resnet", size=64, teacher_weights=weights))
    teacher, model_cfg = _new_teacher(cfg, 2)
    assert_published_behaviour(teacher)
    assert model_cfg.qk_norm is None and model_cfg.teacher_weights == weights  # what the artifact stores
    assert torch.equal(teacher.decoder.conv3[6].weight, sd["module.model.conv3.6.weight"])
    assert torch.equal(teacher.blocks[2].linears[0].bias, sd["module.model.DCAMA_blocks.2.linears.0.bias"])


def test_a_checkpoint_with_its_backbone_needs_no_download(tmp_path, monkeypatch) -> None:
    """--teacher-weights built the teacher with its default (hub) backbone weights first, only to overwrite them:
    offline that was "Could not download resnet50 weights", online ~100 MB for nothing. They are loaded only for a
    head-only checkpoint, which keeps the backbone."""
    from fsdistill.api import training as training_api
    from fsdistill.config import AdaptCfg, ModelCfg

    calls: list[bool] = []
    real_build = training_api.build_teacher

    def recording(cfg, num_classes, pretrained=True):
        calls.append(pretrained)
        return real_build(cfg, num_classes, pretrained=pretrained)

    monkeypatch.setattr(training_api, "build_teacher", recording)
    whole = tmp_path / "whole.pt"
    sd = _tiny_reference_checkpoint(whole)
    cfg = AdaptCfg(support=tmp_path, model=ModelCfg(backbone="test-resnet", size=64, teacher_weights=whole))
    teacher, _ = training_api._new_teacher(cfg, 2)
    assert calls == [False] and teacher.backbone.spec.source == f"backbone of the teacher checkpoint {whole}"
    calls.clear()
    head_only = tmp_path / "head.pt"
    torch.save({k: v for k, v in sd.items() if ".feature_extractor." not in k}, head_only)
    cfg = AdaptCfg(support=tmp_path, model=ModelCfg(backbone="test-resnet", size=64, teacher_weights=head_only))
    training_api._new_teacher(cfg, 2)
    assert calls == [False, True]


def test_teacher_weights_select_the_paper_decoder_unless_another_is_asked_for(tmp_path) -> None:
    from fsdistill.config import ModelCfg
    from fsdistill.errors import ConfigError
    from fsdistill.models.build import build_teacher

    assert ModelCfg().decoder == "light"
    assert ModelCfg(teacher_weights=tmp_path / "w.pt").decoder == "dcama"
    weights = tmp_path / "tiny_modcross.pt"
    _tiny_reference_checkpoint(weights)
    light = build_teacher(ModelCfg(backbone="test-resnet", size=64, decoder="light"), 1, pretrained=False)
    with pytest.raises(ConfigError, match="--decoder dcama"):
        import_reference_weights(light, weights)


def test_a_backbone_under_another_prefix_is_refused_not_dropped(r50, r50_checkpoint, tmp_path):
    """feature_extractor.* renamed backbone.*: 323 tensors were dropped at INFO level and the teacher ran on another
    backbone, exit 0. Tensors that fit nothing, with no backbone found, are refused; nothing is changed."""
    sd, _ = r50_checkpoint
    renamed = {k.replace("feature_extractor.", "backbone.", 1): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pt")
    head_before = r50.decoder.mixer3[0].weight.clone()
    with pytest.raises(CheckpointError, match=r"tensors that fit no part of a DCAMA teacher \(e.g. backbone\."):
        import_reference_weights(r50, tmp_path / "renamed.pt")
    assert torch.equal(r50.decoder.mixer3[0].weight, head_before)


def test_a_distillfss_student_and_unknown_tensors_are_said(r50, r50_checkpoint, tmp_path, caplog):
    """A DistillFSS model's student (student.*) and unknown head tensors were dropped at INFO level only; the
    backbone the teacher then has is recorded as the checkpoint's (it said the --backbone-weights file)."""
    sd, _ = r50_checkpoint
    extra = {**{f"teacher.{k}": v for k, v in sd.items()}, "student.0.coarse_extractor.0.0.weight": torch.randn(4, 4),
             "model.extra_proj.0.weight": torch.randn(3, 3)}  # fmt: skip
    torch.save(extra, tmp_path / "distillfss.pt")
    with caplog.at_level(logging.WARNING, logger="fsdistill.models.reference_import"):
        import_reference_weights(r50, tmp_path / "distillfss.pt")
    messages = " ".join(r.message for r in caplog.records)
    assert "also holds a DistillFSS student (1 tensors, e.g. student.0.coarse_extractor.0.0.weight)" in messages
    assert "1 tensors are not used (e.g. model.extra_proj.0.weight)" in messages
    assert r50.backbone.spec.source == f"backbone of the teacher checkpoint {tmp_path / 'distillfss.pt'}"
