"""Artifact folders: bit-exact round trips, contents, header metadata, and every way loading must refuse."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fsdistill import __version__
from fsdistill.checkpoint import config_sha256, is_artifact, load_artifact, resolve_model_dir, save_artifact
from fsdistill.config import ModelCfg
from fsdistill.errors import CheckpointError, DataError
from fsdistill.models.build import build_student, build_teacher, load_model, save_model

SIZE = 64
MODEL_CFG = ModelCfg(backbone="test-resnet", size=SIZE, student_width=6)
CLASSES = ["background", "cell", "nucleus"]
PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def _perturb(module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not name.startswith("backbone."):
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = build_teacher(MODEL_CFG, 2, pretrained=False).eval()
    student = build_student(teacher, MODEL_CFG.student_width, MODEL_CFG.refiner).eval()
    _perturb(teacher, 1)
    _perturb(student, 2)  # ConvDist too
    student.class_prior.copy_(torch.tensor([0.2, 0.35]))
    g = torch.Generator().manual_seed(3)
    support_images = torch.randint(0, 256, (3, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    support_masks = torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    support_masks[0, 10:30, 10:40] = 1
    support_masks[1, 20:50, 5:25] = 2
    support_masks[2, 0:20, :] = 1
    support_masks[2, 40:60, :] = 2
    support_masks[2, 0, 0] = 255
    return teacher, student, support_images, support_masks


def _save(models, root, kind: str):
    teacher, student, images, masks = models
    common = dict(
        class_names=CLASSES,
        palette=PALETTE,
        train_config={"model": {"backbone": "test-resnet", "size": SIZE}, "train": {"steps": 3}},
        support_info={"root": "/data/support", "count": 3, "keys": ["a", "b", "c"], "fingerprint": "f" * 64},
        training={"steps": 3},
    )
    if kind == "teacher":
        return save_model(root / "teacher", teacher, MODEL_CFG, support_images=images, support_masks=masks, **common)
    return save_model(root / "student", student, MODEL_CFG, **common)


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {"teacher": _save(models, root, "teacher"), "student": _save(models, root, "student"), "root": root}


def _copy(src, dst):
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


# --- round trips -----------------------------------------------------------------------------------------------


def test_student_round_trip_is_bit_exact(models, saved) -> None:
    _, student, _, _ = models
    loaded = load_model(saved["student"])
    assert loaded.kind == "student"
    original, again = student.state_dict(), loaded.model.state_dict()
    assert set(original) == set(again)
    for key in original:
        assert torch.equal(original[key], again[key]), key
    images = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(loaded.logits(images), student.predict(images))
    assert loaded.class_names == CLASSES and loaded.palette == PALETTE and loaded.size == SIZE
    assert loaded.model.convdist[0].width == 6


def test_a_loaded_model_keeps_its_backbone_source_when_saved_again(models, tmp_path) -> None:
    """A loaded model's backbone is built without weights (the artifact's are loaded), so it said "random init":
    a run continued with --init or --teacher recorded that instead of where the weights came from."""
    import dataclasses

    _, student, _, _ = models
    original = student.backbone.spec
    student.backbone.spec = dataclasses.replace(original, source="ImageNet-1k weights of a test")
    try:
        first = _save(models, tmp_path / "a", "student")
    finally:
        student.backbone.spec = original
    loaded = load_model(first)
    assert loaded.model.backbone.spec.source == "ImageNet-1k weights of a test"
    again = save_model(tmp_path / "b" / "student", loaded.model, MODEL_CFG, class_names=CLASSES, palette=PALETTE,
                       train_config={}, support_info={})  # fmt: skip
    assert json.loads((again / "config.json").read_text())["backbone"]["source"] == "ImageNet-1k weights of a test"


def test_teacher_round_trip_is_bit_exact(models, saved) -> None:
    teacher, _, images_u8, masks_u8 = models
    loaded = load_model(saved["teacher"])
    assert loaded.kind == "teacher"
    original, again = teacher.state_dict(), loaded.model.state_dict()
    assert set(original) == set(again)
    for key in original:
        assert torch.equal(original[key], again[key]), key
    assert torch.equal(loaded.support_images, images_u8)
    assert torch.equal(loaded.support_masks, masks_u8)
    assert loaded.support_images.dtype == torch.uint8
    feats = teacher.backbone.encode_batched(images_u8)
    support = teacher.prepare_support(feats, masks_u8.long())
    images = torch.randint(0, 256, (1, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(loaded.logits(images), teacher.predict(images, support))


def test_run_dir_resolves_to_student_then_teacher(saved) -> None:
    root = saved["root"]
    assert resolve_model_dir(root) == root / "student"
    assert resolve_model_dir(root, "teacher") == root / "teacher"
    assert load_model(root, kind="teacher").kind == "teacher"
    with pytest.raises(CheckpointError):
        load_model(saved["student"], kind="teacher")


# Written by fsdistill before artifacts stored their ModelCfg (what _model_args read back from the modules).
_OLD_MODEL_ARGS = {
    "teacher": {"num_classes": 2, "heads": 8, "use_pe": True, "attn_dropout": 0.5, "voting": 50, "qk_norm": 2.0,
                "decoder": "light", "decoder_width": 32, "mixer_widths": [16, 16, 16]},
    "student": {"num_classes": 2, "student_width": 6, "decoder": "light", "decoder_width": 32,
                "mixer_widths": [16, 16, 16]},
}  # fmt: skip


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_artifact_with_model_args_only_still_loads(models, saved, tmp_path, kind) -> None:
    """Runs made before ``model_cfg`` was stored rebuild the same model from their ``model_args``."""
    tensors, config = load_artifact(saved[kind])
    tensors = {k: v for k, v in tensors.items() if not k.startswith("refiner.")}  # as old: no refiner then
    config = {k: v for k, v in config.items() if k not in ("model_cfg", "weights_sha256")}
    old = save_artifact(tmp_path / kind, tensors, {**config, "model_args": _OLD_MODEL_ARGS[kind]})
    loaded = load_model(old)
    cfg = loaded.model_cfg  # the decoder's widths spelt out where MODEL_CFG leaves them at their defaults
    assert (cfg.backbone, cfg.size, cfg.decoder, cfg.decoder_width) == ("test-resnet", SIZE, "light", 32)
    assert cfg.qk_norm == 2.0
    assert cfg.student_width == (6 if kind == "student" else 8)
    original = models[0] if kind == "teacher" else models[1]
    again = loaded.model.state_dict()
    assert not cfg.refiner and not any(k.startswith("refiner.") for k in again)
    assert all(torch.equal(v, again[k]) for k, v in original.state_dict().items() if k in tensors)


def test_save_refuses_a_config_the_model_was_not_built_from(models, tmp_path) -> None:
    teacher, student, images, masks = models
    common = dict(class_names=CLASSES, palette=PALETTE, train_config={}, support_info={})
    with pytest.raises(ValueError, match="student_width 6"):
        save_model(tmp_path / "s", student, MODEL_CFG.model_copy(update={"student_width": 4}), **common)
    with pytest.raises(ValueError, match="qk_norm 2.0"):  # no parameter shows it: it would load as another model
        save_model(tmp_path / "t", teacher, MODEL_CFG.model_copy(update={"qk_norm": None}),
                   support_images=images, support_masks=masks, **common)  # fmt: skip
    with pytest.raises(ValueError, match="classes 2"):
        save_model(tmp_path / "s", student, MODEL_CFG, **{**common, "class_names": CLASSES[:2]})
    assert not list(tmp_path.iterdir())


def test_model_cfg_this_version_cannot_build_raises(saved, tmp_path) -> None:
    tensors, config = load_artifact(saved["student"])
    config = {k: v for k, v in config.items() if k != "weights_sha256"}
    bad = save_artifact(tmp_path / "bad", tensors, {**config, "model_cfg": {**config["model_cfg"], "mixer_stride": 8}})
    with pytest.raises(CheckpointError, match="does not describe a model this fsdistill can build"):
        load_model(bad)


# --- contents --------------------------------------------------------------------------------------------------


def _keys_and_metadata(directory):
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return list(handle.keys()), handle.metadata()


def test_student_artifact_has_no_attention_and_no_supports(saved) -> None:
    keys, _ = _keys_and_metadata(saved["student"])
    assert not [k for k in keys if k.startswith("blocks.")]
    assert not [k for k in keys if k.startswith("support.")]
    assert any(k.startswith("convdist.") for k in keys)
    assert any(k.startswith("decoder.") for k in keys)
    assert "class_prior" in keys


def test_teacher_artifact_holds_its_supports(saved) -> None:
    keys, _ = _keys_and_metadata(saved["teacher"])
    assert {"support.images", "support.masks"} <= set(keys)
    assert any(k.startswith("blocks.") for k in keys)
    assert not any(k.startswith("convdist.") for k in keys)


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_config_json_contents(models, saved, kind) -> None:
    config = json.loads((saved[kind] / "config.json").read_text())
    assert config["kind"] == kind
    assert config["backbone"]["name"] == "test-resnet"
    assert {"source", "mean", "std", "channels", "num_blocks"} <= set(config["backbone"])
    assert config["input_size"] == SIZE
    assert config["class_names"] == CLASSES
    assert config["palette"] == [list(c) for c in PALETTE]
    assert config["model_cfg"] == MODEL_CFG.model_dump(mode="json")  # the config the model was built from
    assert "model_args" not in config
    assert config["train_config"]["train"]["steps"] == 3
    assert config["support"]["fingerprint"] == "f" * 64
    assert config["versions"]["fsdistill"] == __version__ and "torch" in config["versions"]
    assert config["fsdistill_version"] == __version__
    # the model's parameters, as distill prints them and profile reports them (not its buffers too)
    model = models[0] if kind == "teacher" else models[1]
    assert config["parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_safetensors_header_metadata(saved, kind) -> None:
    _, metadata = _keys_and_metadata(saved[kind])
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    assert {"format", "fsdistill_version", "kind", "config_sha256"} <= set(metadata)
    assert metadata["kind"] == kind
    assert metadata["fsdistill_version"] == __version__
    config = json.loads((saved[kind] / "config.json").read_text())
    assert metadata["config_sha256"] == config_sha256(config)
    assert metadata["format"] == config["format"]


# --- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_weights_raise_checkpoint_error(saved, tmp_path, damage) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    weights = art / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"garbage": b"\x00\xff not safetensors" * 50, "truncated": data[: len(data) // 2], "empty": b""}
    weights.write_bytes(damaged[damage])
    with pytest.raises(CheckpointError):
        load_model(art)


def test_foreign_safetensors_file_raises(saved, tmp_path) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    tensors, _ = load_artifact(saved["student"])
    save_file(tensors, str(art / "model.safetensors"))  # same tensors, no fsdistill metadata
    with pytest.raises(CheckpointError, match="fsdistill"):
        load_model(art)


def test_foreign_safetensors_with_other_metadata_raises(saved, tmp_path) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    save_file({"weight": torch.zeros(2, 2)}, str(art / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError):
        load_model(art)


def test_edited_config_is_a_hash_mismatch(saved, tmp_path) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    config = json.loads((art / "config.json").read_text())
    config["class_names"] = ["background", "cell", "tumour"]
    (art / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(CheckpointError, match="hash"):
        load_model(art)


def test_reformatted_config_still_loads(saved, tmp_path) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    config = json.loads((art / "config.json").read_text())
    (art / "config.json").write_text(json.dumps(config))  # same content, other whitespace
    assert load_model(art).kind == "student"


def test_config_from_a_newer_version_raises(saved, tmp_path) -> None:
    art = _copy(saved["teacher"], tmp_path / "art")
    config = json.loads((art / "config.json").read_text())
    config["fsdistill_version"] = "99.0.0"
    (art / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(CheckpointError, match="upgrade"):
        load_model(art)


@pytest.mark.parametrize("damage", ["not-json", "foreign-json", "missing-config", "missing-weights"])
def test_damaged_or_missing_config_raises(saved, tmp_path, damage) -> None:
    art = _copy(saved["student"], tmp_path / "art")
    if damage == "not-json":
        (art / "config.json").write_text("{not json")
    elif damage == "foreign-json":
        (art / "config.json").write_text(json.dumps({"architectures": ["Bert"]}))
    elif damage == "missing-config":
        (art / "config.json").unlink()
    else:
        (art / "model.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        load_model(art)
    if damage.startswith("missing"):  # the file is named, not "holds no student artifact; pass a run folder"
        missing = "config.json" if damage == "missing-config" else "model.safetensors"
        assert f"incomplete artifact: {art / missing} is missing" in str(err.value)


def test_weights_that_do_not_fit_name_the_tensor(saved, monkeypatch) -> None:
    """torch's first line is only a header; the message gives the line that names the tensor."""

    def refuse(self, state_dict, strict=True):
        raise RuntimeError(
            "Error(s) in loading state_dict for DistilledStudent:\n\tsize mismatch for head.weight: copying a "
            "param with shape torch.Size([3]) from checkpoint, the shape in current model is torch.Size([2])."
        )

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", refuse)
    with pytest.raises(CheckpointError, match=r"does not fit its config.json \(size mismatch for head.weight"):
        load_model(saved["student"])


def test_non_artifact_folder_raises(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "empty")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "missing")


# --- atomic save -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_save_leaves_nothing_loadable(models, tmp_path, monkeypatch, exc) -> None:
    import fsdistill.checkpoint as checkpoint

    real_save_file = checkpoint.save_file
    calls = []

    def save_then_fail(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)  # the weights are fully written ...
        calls.append(filename)
        raise exc("interrupted")  # ... then the run dies before the config and the rename

    monkeypatch.setattr(checkpoint, "save_file", save_then_fail)
    with pytest.raises(exc):
        _save(models, tmp_path, "student")
    assert calls, "the save did not reach the weights"
    target = tmp_path / "student"
    assert not target.exists()
    for entry in tmp_path.iterdir():  # no hidden staging folder either
        assert not is_artifact(entry), entry
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError):
        load_model(target)


def test_interrupted_save_after_config_keeps_the_previous_artifact(models, tmp_path, monkeypatch) -> None:
    import fsdistill.checkpoint as checkpoint

    first = _save(models, tmp_path, "student")
    before = {n: (first / n).read_bytes() for n in ("model.safetensors", "config.json")}

    def fail_replace(src, dst):
        raise KeyboardInterrupt  # both staged files written, killed at the rename

    monkeypatch.setattr(checkpoint.os, "replace", fail_replace)
    with pytest.raises(KeyboardInterrupt):
        _save(models, tmp_path, "student")
    monkeypatch.undo()
    assert {n: (first / n).read_bytes() for n in before} == before
    assert load_model(first).kind == "student"
    assert [p.name for p in tmp_path.iterdir()] == ["student"]


def test_save_artifact_replaces_an_existing_artifact(tmp_path) -> None:
    target = tmp_path / "a"
    save_artifact(target, {"x": torch.zeros(2)}, {"kind": "student", "n": 1})
    save_artifact(target, {"x": torch.ones(2)}, {"kind": "student", "n": 2})
    tensors, config = load_artifact(target)
    assert config["n"] == 2 and torch.equal(tensors["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize("failure", ["safetensors", "config"])
def test_a_full_disk_while_saving_is_one_sentence_and_keeps_the_old_artifact(tmp_path, monkeypatch, failure) -> None:
    """A full disk (or a file-size limit) while distill or adapt saved the model was a traceback, exit 1; now a
    DataError naming the folder, with the artifact already there left in place and no staging folder behind."""
    import errno

    from safetensors import SafetensorError

    import fsdistill.checkpoint as checkpoint

    target = save_artifact(tmp_path / "student", {"w": torch.ones(3)}, {"kind": "student"})
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    if failure == "safetensors":

        def full(*args, **kwargs):
            raise SafetensorError("Error while serializing: I/O error: File too large (os error 27)")

        monkeypatch.setattr(checkpoint, "save_file", full)
    else:

        def full_text(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(checkpoint.Path, "write_text", full_text)
    with pytest.raises(DataError, match=r"Cannot write the model to .*student \((File too large|No space left)"):
        save_artifact(target, {"w": torch.zeros(3)}, {"kind": "student"})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


def test_a_failed_rename_is_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    """A save whose last rename failed (another command put a folder in the way) said "free some space"."""
    import errno

    import fsdistill.checkpoint as checkpoint

    real_replace = checkpoint.os.replace

    def in_the_way(src, dst):
        if ".partial-" in str(src):
            raise OSError(errno.ENOTEMPTY, "Directory not empty")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", in_the_way)
    with pytest.raises(DataError, match=r"\(Directory not empty\); make sure nothing else writes there, then run"):
        save_artifact(tmp_path / "student", {"w": torch.ones(3)}, {"kind": "student"})
