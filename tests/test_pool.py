"""``distill --unlabeled POOL``: the teacher labels unlabeled images and the student also trains on them."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.config import DistillCfg, TrainCfg, load_config
from fsdistill.errors import DataError
from fsdistill.models.build import load_model
from fsdistill.train.fit import train
from fsdistill.train.losses import IGNORE_INDEX
from fsdistill.train.pool import crop_gain_range, join_pool, label_batch, nearest_supports, pseudo_labels

from helpers import TINY_MODEL, TINY_TRAIN, assert_user_error


def _probs(*rows: list[float]) -> torch.Tensor:
    """1×K×1×P class probabilities from P pixel rows of K values."""
    return torch.tensor(rows).T[None, :, None, :]


def test_pseudo_labels_keep_confident_pixels_of_the_chosen_labeller() -> None:
    teacher = _probs([0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.5, 0.5])
    student = _probs([0.8, 0.2], [0.1, 0.9], [0.9, 0.1], [0.3, 0.7])
    ignore = IGNORE_INDEX
    assert pseudo_labels(teacher, student, "teacher", 0.7).flatten().tolist() == [0, ignore, 1, ignore]
    assert pseudo_labels(teacher, student, "student", 0.7).flatten().tolist() == [0, 1, 0, 1]
    # agree: the same class from both, and their mean probability of it high enough
    assert pseudo_labels(teacher, student, "agree", 0.7).flatten().tolist() == [0, 1, ignore, ignore]
    assert pseudo_labels(teacher, student, "agree", 0.8).flatten().tolist() == [0, ignore, ignore, ignore]
    # mean: the class of the mean probabilities, where that mean is high enough
    assert pseudo_labels(teacher, student, "mean", 0.7).flatten().tolist() == [0, 1, ignore, ignore]
    assert pseudo_labels(teacher, student, "mean", 0.5).flatten().tolist() == [0, 1, 0, 1]
    assert pseudo_labels(teacher, student, "teacher", 0.0).flatten().tolist() == [0, 1, 1, 0]
    # trusted: a class the teacher cannot find teaches nothing, and the background where it may hide neither
    three_t = _probs([0.9, 0.05, 0.05], [0.6, 0.1, 0.3], [0.1, 0.1, 0.8], [0.1, 0.85, 0.05])
    three_s = _probs([0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1])
    trusted = torch.tensor([True, False])  # class 1 trusted, class 2 not
    for labeller in ("teacher", "agree"):
        got = pseudo_labels(three_t, three_s, labeller, 0.5, trusted).flatten().tolist()
        assert got == [0, ignore, ignore, 1], labeller
    assert pseudo_labels(three_t, three_s, "student", 0.5, trusted).flatten().tolist() == [0, 0, 2, 1]
    with pytest.raises(ValueError, match="unknown pool labeller"):
        pseudo_labels(teacher, student, "oracle", 0.5)


def test_nearest_supports_takes_the_most_similar_then_one_per_missing_class() -> None:
    present = torch.tensor([[True, False, False], [True, False, False], [False, True, False], [False, False, True]])
    similarity = torch.tensor([0.9, 0.8, 0.1, 0.5])
    # the two most similar show class 0 only: the most similar support of each other class joins them
    assert nearest_supports(similarity, present, 2) == [0, 1, 2, 3]
    assert nearest_supports(similarity, present, 1) == [0, 2, 3]
    # a class no support shows is not looked for
    assert nearest_supports(similarity, present[:, :1], 1) == [0]
    assert nearest_supports(torch.tensor([0.1, 0.9, 0.2, 0.3]), present[:, :1], 2) == [1, 3]
    # shots beyond the set: every support, in order
    assert nearest_supports(similarity, present, 10) == [0, 1, 2, 3]
    # one more support showing classes 1 and 2: it covers both
    wide = torch.cat([present, torch.tensor([[False, True, True]])])
    assert nearest_supports(torch.tensor([0.9, 0.8, 0.1, 0.5, 0.3]), wide, 1) == [0, 3, 4]


def test_labelling_against_the_nearest_supports_is_labelling_against_that_subset(tiny_pool_models) -> None:
    teacher, student, cache, support = tiny_pool_models
    teacher.eval()
    student.eval()
    trusted = torch.ones(teacher.num_classes, dtype=torch.bool)
    supports = cache.support[0]
    image = support.images[:1]
    everything = label_batch(teacher, student, supports, image, "teacher", 0.0, trusted)
    assert torch.equal(everything[2], label_batch(teacher, student, supports, image, "teacher", 0.0, trusted, 99)[2])
    # one shot: the image's own support is the most similar; the rest join only for the classes it misses
    feats = teacher.backbone.encode(image)
    embed = torch.nn.functional.normalize(feats[-1][-1].mean(dim=(-2, -1)), dim=1)
    similarity = (embed @ torch.nn.functional.normalize(supports.feats[3][-1].mean(dim=(-2, -1)), dim=1).T)[0]
    chosen = nearest_supports(similarity, supports.present, 1)
    assert 0 in chosen and len(chosen) < len(supports)
    _, coarse, labels = label_batch(teacher, student, supports, image, "teacher", 0.0, trusted, 1)
    with torch.no_grad():
        query = teacher.backbone.encode(image)
        subset = supports.select(chosen)
        expected = teacher.coarse_maps(query, subset)
    for got, want in zip(coarse, expected):
        torch.testing.assert_close(got[0], want)
    assert labels.shape == everything[2].shape


def _label(teacher, student, support, batches, labeller, threshold):
    """The pool targets of image batches, every class trusted (as ``distill`` joins its labelled batches)."""
    teacher.eval()
    student.eval()
    trusted = torch.ones(teacher.num_classes, dtype=torch.bool)
    parts = [label_batch(teacher, student, support, images, labeller, threshold, trusted) for images in batches]
    return join_pool(parts, trusted, support.present.device)


def test_label_pool_caches_features_targets_and_labels(tiny_pool_models) -> None:
    teacher, student, cache, support = tiny_pool_models
    images = support.images[:3]
    pool = _label(teacher, student, cache.support[0], [images[:2], images[2:]], "teacher", 0.0)
    assert pool is not None and len(pool) == 3
    size = images.shape[-1]
    assert pool.labels.shape == (3, size, size)
    n = teacher.num_classes
    for stage, reference in zip(pool.coarse, teacher.coarse_maps(cache.query(0, 0)[0], cache.support[0])):
        assert stage.shape[:2] == (3, n) and stage.shape[2:] == reference.shape[1:]
    # the stored coarse maps are the teacher's maps of that image against all supports
    torch.testing.assert_close(pool.coarse[0][0], reference_maps(teacher, cache, 0)[0])
    feats, labels, coarse = pool.batch([2, 0])
    assert labels.shape == (2, size, size) and coarse[0].shape[0] == 2
    assert feats[-1][-1].shape[0] == 2
    assert 0.0 < pool.labelled_fraction() <= 1.0
    assert pool.trusted.tolist() == [True] * n
    assert _label(teacher, student, cache.support[0], [], "teacher", 0.5) is None


def reference_maps(teacher, cache, index):
    with torch.no_grad():
        return teacher.coarse_maps(cache.query(index, 0)[0], cache.support[0])


def test_training_with_a_pool_adds_its_losses_and_moves_the_student(tiny_pool_models) -> None:
    teacher, student, cache, support = tiny_pool_models
    pool = _label(teacher, student, cache.support[0], [support.images], "student", 0.0)
    assert pool is not None
    cfg = TrainCfg(steps=2, pool_batch=2)
    before = [p.detach().clone() for p in student.convdist.parameters()]
    stats = train(teacher, cache, cfg, student=student, quiet=True, pool=pool)
    assert stats.steps == 2
    assert all({"pool", "pool_mse"} <= set(h) for h in stats.history)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.convdist.parameters()))
    # no pool: no pool losses
    stats = train(teacher, cache, TrainCfg(steps=1), student=student, quiet=True)
    assert "pool" not in stats.history[0]


def _distill_cfg(support, out, pool, min_iou=0.0, **extra):
    """A tiny run with a pool; ``min_iou`` 0 lets the 2-step teacher (no better than chance) label it."""
    train = {**TINY_TRAIN, "pool_min_iou": min_iou}
    overrides = {"support": support, "out": out, "unlabeled": pool, "device": "cpu", "model": TINY_MODEL}
    return load_config(DistillCfg, None, {**overrides, "train": train, **extra})


def _distill_cli(support, out, pool, config):
    """``fsdistill distill`` of a tiny 1-step run with ``pool`` and the ``config`` YAML, through typer's runner."""
    args = ["distill", "--support", str(support), "--backbone", "test-resnet", "--size", "64", "--steps", "1",
            "--device", "cpu", "--out", str(out), "--unlabeled", str(pool), "--config", str(config)]  # fmt: skip
    return CliRunner().invoke(app, args)


def test_crop_gain_range_follows_a_pool_brighter_or_darker_than_the_supports(tmp_path) -> None:
    """High: the pool's 90th-percentile brightness over the brightest support's; low: its 10th over the dimmest's;
    within 1.25x of the supports nothing changes, beyond 2x it is capped; unreadable images are skipped."""
    size = 32

    def images(*levels: int) -> torch.Tensor:
        out = torch.zeros(len(levels), 3, size, size, dtype=torch.uint8)
        for i, level in enumerate(levels):
            out[i, :, 4:20, 4:20] = level  # a bright object on a dark background: the 99th percentile is its level
        return out

    def pool(name: str, *levels: int) -> list:
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(images(*levels)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
        return sorted(folder.iterdir())

    supports = images(60, 80)
    assert crop_gain_range(supports, pool("same", *[70] * 10), size) == (1.0, 1.0)
    assert crop_gain_range(supports, pool("slightly", *[95] * 10, 50), size) == (1.0, 1.0)  # 95 / 80 < 1.25
    assert crop_gain_range(supports, pool("brighter", *[120] * 10), size) == pytest.approx((1.0, 1.5))
    assert crop_gain_range(supports, pool("much", *[250] * 10), size) == (1.0, 2.0)
    assert crop_gain_range(supports, pool("darker", *[30] * 10), size) == pytest.approx((0.5, 1.0))
    assert crop_gain_range(supports, pool("both", *[30] * 5, *[200] * 5), size) == pytest.approx((0.5, 2.0))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert crop_gain_range(supports, [broken], size) == (1.0, 1.0)
    assert crop_gain_range(supports, [broken, *pool("one", 120)], size) == pytest.approx((1.0, 1.5))


def test_pool_brightness_states_the_bounds_it_uses() -> None:
    """The option's description writes the dead zone and the cap out (config loads no torch): held to the constants."""
    from fsdistill.train.pool import BRIGHTNESS_MAX_GAIN, BRIGHTNESS_MIN_RATIO

    description = TrainCfg.model_fields["pool_brightness"].description
    assert f"at least {BRIGHTNESS_MIN_RATIO:g}x brighter" in description
    assert f"up to {BRIGHTNESS_MAX_GAIN:g}x" in description


def test_distill_with_a_pool_records_it_in_the_artifact(tiny_data, tmp_path) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data.multi_heldout / "images", pool)
    (pool / "broken.png").write_bytes(b"not a png")
    (pool / "gone.png").symlink_to(tmp_path / "nowhere.png")  # unreadable: skipped, not a traceback of the copy check
    (pool / "sub").mkdir()
    first = sorted((tiny_data.multi_heldout / "images").iterdir())[0]
    Image.open(first).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pool / "sub" / "deep.png")
    # `suggest --copy-to` copies inside the pool and a copy of a support image: left out, not trained on twice
    (pool / "to_label").mkdir()
    shutil.copy(first, pool / "to_label" / first.name)
    shutil.copy(next((tiny_data.multi / "images").iterdir()), pool / "support_copy.png")
    cfg = _distill_cfg(tiny_data.multi, tmp_path / "run", pool)
    run = api.distill(cfg)
    info = run.stats["pool"]
    assert info["label_shots"] == cfg.train.max_shots  # each image against its nearest supports
    images = len(list((tiny_data.multi_heldout / "images").iterdir())) + 1
    assert info["images"] == images and info["pool_size"] == images + 2 and info["copies_left_out"] == 2
    assert len(info["skipped"]) == 2 and "broken.png" in info["skipped"][0] and "gone.png" in info["skipped"][1]
    assert info["used"] and info["labeller"] == "mean" and len(info["fingerprint"]) == 64
    assert info["trusted"] == tiny_data.multi_classes and set(info["teacher_leave_one_out"]) == set(info["trusted"])
    assert info["support_steps"] == info["pool_steps"] == TINY_TRAIN["steps"]
    assert run.stats["steps"] == 2 * TINY_TRAIN["steps"]
    assert run.stats["device"].startswith("cpu (")  # was empty for a run with a pool
    # the run's precision is recorded for both phases (a pool run said float32 after training in bfloat16)
    bf16 = cfg.model_copy(
        update={"out": tmp_path / "bf16", "train": cfg.train.model_copy(update={"precision": "bfloat16"})}
    )
    assert api.distill(bf16, quiet=True).stats["precision"] == "bfloat16"
    stored = load_model(run.run_dir, "student").config["training"]["pool"]
    assert stored["fingerprint"] == info["fingerprint"]
    # the crop views' gains, from the pool's brightness against the supports'
    low, high = info["crop_gain"]
    assert 0.5 <= low <= 1.0 <= high <= 2.0 and stored["crop_gain"] == info["crop_gain"]
    # a pool larger than --unlabeled-max: a sample of it
    again = api.distill(_distill_cfg(tiny_data.multi, tmp_path / "run2", pool, unlabeled_max=2))
    assert again.stats["pool"]["images"] == 2 and again.stats["pool"]["pool_size"] == images + 2


def test_a_pool_image_deleted_while_the_pool_phase_trains_loses_nothing(tiny_data, tmp_path, monkeypatch) -> None:
    """The fingerprint read every pool file again after the pool phase: one deleted meanwhile was a
    FileNotFoundError and the finished run was lost (no teacher, no student)."""
    from fsdistill.api import training as training_api

    pool = tmp_path / "pool"
    shutil.copytree(tiny_data.multi_heldout / "images", pool)
    real_train = training_api.train

    def tidied_during_training(*args, **kwargs):
        if kwargs.get("pool") is not None:
            sorted(pool.iterdir())[0].unlink()
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training_api, "train", tidied_during_training)
    run = api.distill(_distill_cfg(tiny_data.multi, tmp_path / "run", pool))
    assert run.student_dir.is_dir() and len(run.stats["pool"]["fingerprint"]) == 64


def test_the_support_folder_as_pool_leaves_its_images_and_masks_out(tiny_data, tmp_path) -> None:
    support = tmp_path / "support"
    shutil.copytree(tiny_data.multi, support)
    extra = next((tiny_data.multi_heldout / "images").iterdir())
    shutil.copy(extra, support / "unlabeled_extra.png")
    run = api.distill(_distill_cfg(support, tmp_path / "run", support))
    assert run.stats["pool"]["images"] == run.stats["pool"]["pool_size"] == 1


def test_a_pool_the_teacher_cannot_be_trusted_with_is_left_unused(tiny_data, tmp_path) -> None:
    """No class reaches the leave-one-out IoU asked for: the teacher labels nothing, the run says so."""
    pool = tiny_data.multi_heldout / "images"
    cfg = _distill_cfg(tiny_data.multi, tmp_path / "run", pool, min_iou=1.0)
    cfg.train.pool_labeller = "teacher"
    run = api.distill(cfg)
    info = run.stats["pool"]
    assert not info["used"] and info["trusted"] == [] and "no class reaches" in info["reason"]
    # the reason gives each class's figure (it said "a class in one support has none" whether or not one had)
    assert all(f"{name} " in info["reason"] for name in tiny_data.multi_classes)
    assert "none (in one support)" not in info["reason"]
    assert run.stats["steps"] == TINY_TRAIN["steps"] and "images" not in info
    # the mean labeller (the default) falls back to the student's own labels, which need no trust in the teacher
    for labeller in ("mean", "student"):
        cfg = _distill_cfg(tiny_data.multi, tmp_path / labeller, pool, min_iou=1.0)
        cfg.train.pool_labeller = labeller
        info = api.distill(cfg).stats["pool"]
        assert info["used"] and info["labeller"] == "student" and info["trusted"] == []
    config = tmp_path / "teacher.yaml"
    config.write_text("train:\n  pool_labeller: teacher\n")
    result = _distill_cli(tiny_data.multi, tmp_path / "cli", pool, config)
    assert result.exit_code == 0, result.output
    assert "unlabeled pool: the pool was not used: no class reaches" in result.output


def test_bad_pools_are_one_sentence_before_any_training(tiny_data, tmp_path) -> None:
    runner = CliRunner()
    base = ["distill", "--support", str(tiny_data.multi), "--backbone", "test-resnet", "--size", "64", "--steps",
            "1", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--unlabeled", str(tmp_path / "missing")])
    assert_user_error(result, "--unlabeled", "does not exist")
    assert not (tmp_path / "a").exists()
    (tmp_path / "a_file.png").write_bytes(b"")
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--unlabeled", str(tmp_path / "a_file.png")])
    assert_user_error(result, "--unlabeled", "is not a folder")
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--unlabeled", str(empty)])
    assert_user_error(result, f"--unlabeled {empty}: no images found")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"junk")
    config = tmp_path / "pool.yaml"  # the pool is read only when the teacher may label it
    config.write_text("train:\n  pool_min_iou: 0.0\n")
    result = runner.invoke(
        app, [*base, "--out", str(tmp_path / "c"), "--unlabeled", str(broken), "--config", str(config)]
    )
    # The unreadable image's reason as a warning, then the one error.
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 2 and "Traceback" not in result.output
    assert lines[0].startswith("warning: skipped an unreadable pool image: Cannot read image")
    assert lines[1].startswith("error: None of the 1 images of --unlabeled") and "could be read" in lines[1]
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "d"), "--unlabeled-max", "0"])
    assert_user_error(result, "--unlabeled-max")
    # a pool size without a pool does nothing: said, before anything is trained
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "e"), "--unlabeled-max", "5"])
    assert_user_error(result, "--unlabeled-max only applies with --unlabeled")
    assert not (tmp_path / "e").exists()


def test_distill_cli_reports_the_pool(tiny_data, tmp_path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text("train:\n  pool_min_iou: 0.0\n")
    result = _distill_cli(tiny_data.multi, tmp_path / "run", tiny_data.multi_heldout / "images", config)
    assert result.exit_code == 0, result.output
    assert "unlabeled pool: 3 of 3 images labelled by teacher and student (mean)" in result.output
    assert "brightness" not in result.output  # a pool like the supports: the crop views as they are
    # a pool much darker than the supports: the student's crop views of them are darkened, and the run says so
    dark = tmp_path / "dark"
    dark.mkdir()
    for path in sorted((tiny_data.multi_heldout / "images").iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray((image * 0.3).astype(np.uint8)).save(dark / f"{path.stem}.png")
    result = _distill_cli(tiny_data.multi, tmp_path / "dark_run", dark, config)
    assert result.exit_code == 0, result.output
    assert "unlabeled pool: its images are darker than the supports: the student's crop views of the supports were " \
        "scaled 0.50-1.00x in brightness (train.pool_brightness)" in result.output  # fmt: skip
    stored = load_model(tmp_path / "dark_run", "student").config["training"]["pool"]
    assert stored["crop_gain"] == [0.5, 1.0]
    # no class trusted: the student's own labels teach every class, and the message says so with the figures
    config.write_text("train:\n  pool_min_iou: 1.0\n")
    common = ["distill", "--support", str(tiny_data.multi), "--backbone", "test-resnet", "--size", "64", "--device",
              "cpu", "--unlabeled", str(tiny_data.multi_heldout / "images"), "--config", str(config)]  # fmt: skip
    result = CliRunner().invoke(app, [*common, "--steps", "1", "--out", str(tmp_path / "run2")])
    assert result.exit_code == 0, result.output
    assert (
        "unlabeled pool: the teacher is trusted with no class (its leave-one-out IoU after the support phase red "
        in (result.output)
    )
    assert "the student's own labels teach every class" in result.output
    # 0 steps: nothing is trained, so the pool is not used, and the run says it (it was dropped silently)
    result = CliRunner().invoke(app, [*common, "--steps", "0", "--out", str(tmp_path / "run3")])
    assert result.exit_code == 0 and "unlabeled pool: the pool was not used: 0 steps" in result.output
    result = CliRunner().invoke(app, [*common[:-4], "--unlabeled", str(tmp_path / "nope"), "--steps", "1"])
    assert_user_error(result, "does not exist; check the path of the unlabeled images")


def test_a_labelled_folder_as_pool_gives_its_images_not_its_masks(tiny_data, tmp_path) -> None:
    """A labelled folder (images/ + labels/, or x_mask.png beside x.png) given as the pool: its masks were labelled
    and trained on as photographs, in silence; they are left out and counted."""
    pool = tmp_path / "labelled"
    shutil.copytree(tiny_data.multi_heldout / "images", pool / "images")
    shutil.copytree(tiny_data.multi_heldout / "masks", pool / "labels")
    first = sorted((pool / "images").iterdir())[0]
    shutil.copy(next((pool / "labels").iterdir()), pool / "images" / f"{first.stem}_mask.png")
    config = tmp_path / "pool.yaml"
    config.write_text("train:\n  pool_min_iou: 0.0\n")
    images = len(list((tiny_data.multi_heldout / "images").iterdir()))
    result = _distill_cli(tiny_data.multi, tmp_path / "run", pool, config)
    assert result.exit_code == 0, result.output
    info = load_model(tmp_path / "run", "student").config["training"]["pool"]
    assert info["images"] == info["pool_size"] == images and info["masks_left_out"] == images + 1
    assert f"{images + 1} mask files of a labelled folder left out" in result.output


def test_unreadable_pool_images_are_found_before_training_and_replaced_in_a_sample(tiny_data, tmp_path) -> None:
    """--unlabeled-max drew its sample before unreadable files were dropped (fewer images than asked for), and a
    pool of unreadable files was found only after the support phase had trained."""
    pool = tmp_path / "pool"
    shutil.copytree(tiny_data.multi_heldout / "images", pool)
    readable = len(list(pool.iterdir()))
    for i in range(4):
        (pool / f"broken{i}.png").write_bytes(b"" if i % 2 else f"not an image {i}".encode())
    run = api.distill(_distill_cfg(tiny_data.multi, tmp_path / "run", pool, unlabeled_max=readable), quiet=True)
    info = run.stats["pool"]
    assert info["images"] == readable and info["pool_size"] == readable + 4
    assert all("broken" in message for message in info["skipped"])  # those the sample met, each reported
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.png").write_bytes(b"")
    with pytest.raises(DataError, match="None of the 3 images of --unlabeled"):
        api.distill(_distill_cfg(tiny_data.multi, tmp_path / "never", bad), quiet=True)
    assert not (tmp_path / "never").exists()  # before the run folder, so before any training


def test_a_pool_of_support_copies_says_so(tiny_data, tmp_path) -> None:
    pool = tmp_path / "copies"
    pool.mkdir()
    for i, image in enumerate(sorted((tiny_data.multi / "images").iterdir())[:2]):
        shutil.copy(image, pool / f"renamed{i}.png")
    with pytest.raises(DataError, match="holds no image besides copies of the supports"):
        api.distill(_distill_cfg(tiny_data.multi, tmp_path / "run", pool), quiet=True)
