"""Training through the library API: adapt, distill, frozen teachers, single supports, run folders."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from fsdistill import api
from fsdistill.checkpoint import is_artifact, load_artifact, resolve_model_dir
from fsdistill.config import AdaptCfg, DistillCfg, load_config
from fsdistill.errors import CheckpointError, ConfigError
from fsdistill.models.build import load_model

from helpers import TINY_MODEL, TINY_TRAIN, write_binary_folder


def _adapt_cfg(support, out, steps=2, **train):
    return load_config(
        AdaptCfg,
        None,
        {
            "support": support,
            "out": out,
            "device": "cpu",
            "model": TINY_MODEL,
            "train": {**TINY_TRAIN, "steps": steps, **train},
        },
    )


def _distill_cfg(support, out, **extra):
    train = {**TINY_TRAIN, **extra.pop("train", {})}
    return load_config(
        DistillCfg,
        None,
        {"support": support, "out": out, "device": "cpu", "model": TINY_MODEL, "train": train, **extra},
    )


def _finite_losses(stats: dict) -> dict:
    losses = stats["final_losses"]
    assert losses, "no loss recorded"
    for name, value in losses.items():
        assert value is not None and math.isfinite(value), (name, value)
    return losses


def test_adapt_zero_steps_writes_the_untuned_teacher(tiny_data, tmp_path) -> None:
    result = api.adapt(_adapt_cfg(tiny_data.binary, tmp_path / "run", steps=0), quiet=True)
    assert result.teacher_dir == tmp_path / "run" / "teacher"
    assert is_artifact(result.teacher_dir) and result.student_dir is None
    assert result.stats["steps"] == 0
    loaded = load_model(result.teacher_dir)
    assert loaded.kind == "teacher" and loaded.config["training"]["steps"] == 0
    teacher = loaded.model
    for block in teacher.blocks:  # untouched initialisation: identity projections, zero last conv, prior scale 8
        for lin in block.linears:
            assert torch.equal(lin.weight, torch.eye(lin.weight.shape[0])) and not lin.bias.any()
    assert not teacher.decoder.mixer3[-1].weight.any()
    assert float(teacher.decoder.prior_scale.detach()) == 8.0
    assert loaded.support_images.shape == (4, 3, 64, 64)
    logits = loaded.logits(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert logits.shape == (1, 2, 16, 16) and torch.isfinite(logits).all()  # the light decoder: stride 4


def test_norm_adapt_default_is_half_way_except_for_published_weights() -> None:
    from fsdistill.config import TrainCfg

    assert TrainCfg().norm_adapt_weight(published_weights=False) == 0.5
    assert TrainCfg().norm_adapt_weight(published_weights=True) == 0.0  # they behave as published
    assert TrainCfg(norm_adapt=0.3).norm_adapt_weight(published_weights=True) == 0.3  # unless asked


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_adapt_moves_the_backbone_norm_statistics_towards_the_supports(tiny_data, tmp_path, weight) -> None:
    """train.norm_adapt: the artifact's backbone BatchNorm statistics are ``weight`` of the way from the pretrained
    ones to the support images' (as Backbone.adapt_norm_stats computes them), and it says so; 0 keeps them."""
    from fsdistill.data.discover import discover
    from fsdistill.data.support_tensors import load_support_tensors
    from fsdistill.models.backbone import create_backbone

    result = api.adapt(_adapt_cfg(tiny_data.binary, tmp_path / "run", steps=0, norm_adapt=weight), quiet=True)
    loaded = load_model(result.teacher_dir)
    fresh = create_backbone("test-resnet", pretrained=False)  # random-init weights; initial statistics 0 / 1
    expected = create_backbone("test-resnet", pretrained=False)
    state = loaded.model.backbone.state_dict()  # the run's (frozen) weights with the initial statistics
    expected.load_state_dict({k: fresh.state_dict()[k] if "running" in k else v for k, v in state.items()})
    images = load_support_tensors(discover(tiny_data.binary), 64).images
    layers = expected.adapt_norm_stats(images, weight)
    stored = loaded.model.backbone.model.bn1.running_mean
    torch.testing.assert_close(stored, expected.model.bn1.running_mean)
    assert torch.equal(stored, fresh.model.bn1.running_mean) == (weight == 0)
    assert loaded.config["training"]["norm_stats"] == {"weight": weight, "layers": layers, "images": 4}


@pytest.mark.parametrize("data", ["binary", "multi"])
def test_adapt_trains_and_writes_a_teacher(tiny_data, tmp_path, data) -> None:
    support = getattr(tiny_data, data)
    result = api.adapt(_adapt_cfg(support, tmp_path / "run"), quiet=True)
    assert result.stats["steps"] == 2 and result.stats["episodes"] == 2 * TINY_TRAIN["episodes_per_step"]
    assert "teacher" in _finite_losses(result.stats)
    loaded = load_model(result.teacher_dir)
    expected = ["background", "foreground"] if data == "binary" else ["background", "red", "green", "blue"]
    assert loaded.class_names == expected
    # adapting changed the trained groups (mapper, mixer) but not the frozen attention
    assert loaded.model.decoder.mixer3[-1].weight.any()
    query_proj = loaded.model.blocks[0].linears[0].weight
    assert torch.equal(query_proj, torch.eye(query_proj.shape[0]))
    assert not (tmp_path / "run" / "student").exists()


@pytest.mark.parametrize("data", ["binary", "multi"])
def test_distill_writes_teacher_and_student(request, data) -> None:
    run = request.getfixturevalue(f"tiny_{data}_run")
    assert is_artifact(run.teacher_dir) and is_artifact(run.student_dir)
    assert run.student_dir == run.run_dir / "student" and run.teacher_dir == run.run_dir / "teacher"
    losses = _finite_losses(run.stats)
    assert {"teacher", "student", "mse"} <= set(losses)
    assert run.stats["steps"] == 2
    student = load_model(run.run_dir)
    assert student.kind == "student"
    n = 1 if data == "binary" else 3
    assert student.model.num_classes == n and len(student.class_names) == n + 1
    assert student.config["training"]["steps"] == 2
    logits = student.logits(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert logits.shape == (2, n + 1, 16, 16) and torch.isfinite(logits).all()  # light decoder: stride 4
    # the student keeps the support set's class prior, not the 0.5 placeholder
    assert not torch.allclose(student.model.class_prior, torch.full((n,), 0.5))


def test_resolved_config_yaml_is_in_the_run_dir(tiny_binary_run, tiny_data) -> None:
    path = tiny_binary_run.run_dir / "config.resolved.yaml"
    data = yaml.safe_load(path.read_text())
    assert data["command"] == "distill"
    assert data["model"]["backbone"] == "test-resnet" and data["model"]["size"] == 64
    assert data["train"]["steps"] == 2 and data["train"]["episodes_per_step"] == TINY_TRAIN["episodes_per_step"]
    assert data["support"] == str(tiny_data.binary)
    # it round-trips into the same configuration
    data.pop("command")
    again = load_config(DistillCfg, None, data)
    assert again.model.backbone == "test-resnet" and again.train.steps == 2


def test_artifacts_record_the_support_fingerprint(tiny_binary_run, tiny_data) -> None:
    from fsdistill.data.discover import discover

    index = discover(tiny_data.binary)
    for directory in (tiny_binary_run.teacher_dir, tiny_binary_run.student_dir):
        config = load_artifact(directory)[1]
        assert config["support"]["fingerprint"] == index.fingerprint()
        assert config["support"]["keys"] == ["s0", "s1", "s2", "s3"]
        assert config["train_config"]["model"]["backbone"] == "test-resnet"


def test_distill_from_an_adapted_teacher_writes_the_teacher_it_trained_on(tiny_binary_run, tiny_data, tmp_path):
    """--teacher without --freeze-teacher trains the teacher on with the student: the run keeps that teacher (the
    one the student learned from; it was thrown away), the given one stays as it was."""
    teacher_dir = tiny_binary_run.teacher_dir
    before = teacher_dir.joinpath("model.safetensors").read_bytes()
    result = api.distill(_distill_cfg(tiny_data.binary, tmp_path / "run", teacher=teacher_dir), quiet=True)
    assert result.teacher_dir == tmp_path / "run" / "teacher" and is_artifact(result.teacher_dir)
    given, trained = load_artifact(teacher_dir)[0], load_artifact(result.teacher_dir)[0]
    assert any(not torch.equal(given[k], trained[k]) for k in given), "the teacher did not train on"
    assert teacher_dir.joinpath("model.safetensors").read_bytes() == before


def test_distill_from_a_frozen_adapted_teacher_leaves_it_unchanged(
    tiny_binary_run, tiny_data, tmp_path, monkeypatch
) -> None:
    teacher_dir = tiny_binary_run.teacher_dir
    before_files = {n: (teacher_dir / n).read_bytes() for n in ("model.safetensors", "config.json")}
    reference, _ = load_artifact(teacher_dir)
    seen = {}
    from fsdistill.api import training as training_api

    real_train = training_api.train

    def spy(teacher, cache, cfg, student=None, freeze_teacher=False, quiet=False, **options):
        seen["freeze"] = freeze_teacher
        seen["convdist"] = {k: v.clone() for k, v in student.convdist.state_dict().items()}
        stats = real_train(teacher, cache, cfg, student=student, freeze_teacher=freeze_teacher, quiet=quiet, **options)
        seen["teacher"] = {k: v.clone() for k, v in teacher.state_dict().items()}
        seen["convdist_after"] = student.convdist.state_dict()
        return stats

    monkeypatch.setattr(training_api, "train", spy)
    cfg = _distill_cfg(tiny_data.binary, tmp_path / "run", teacher=teacher_dir, freeze_teacher=True)
    result = api.distill(cfg, quiet=True)
    assert seen["freeze"] is True
    for key, value in seen["teacher"].items():  # the in-memory teacher after training = the artifact
        assert torch.equal(value, reference[key]), key
    changed = [k for k in seen["convdist"] if not torch.equal(seen["convdist"][k], seen["convdist_after"][k])]
    assert changed, "the student did not train"
    assert result.teacher_dir is None and not (tmp_path / "run" / "teacher").exists()
    assert is_artifact(result.student_dir)
    assert {n: (teacher_dir / n).read_bytes() for n in before_files} == before_files
    losses = _finite_losses(result.stats)
    assert "teacher" not in losses and {"student", "mse"} <= set(losses)
    assert "norm_stats" not in result.stats  # the given teacher's statistics, as adapted (checked above)
    # evaluate --teacher --model RUN said the finished run "stopped before its model was saved"
    with pytest.raises(CheckpointError, match=rf"has no teacher/ \(its student learned from the frozen teacher .*"
                       rf"{teacher_dir.name}\); pass --model .*{teacher_dir.name} for the teacher\."):  # fmt: skip
        resolve_model_dir(tmp_path / "run", "teacher")


def test_freeze_teacher_without_a_teacher_is_refused(tiny_data, tmp_path) -> None:
    with pytest.raises(ConfigError):
        api.distill(_distill_cfg(tiny_data.binary, tmp_path / "run", freeze_teacher=True), quiet=True)
    assert not (tmp_path / "run").exists()


def test_single_support_image_trains_with_flip_views(tmp_path) -> None:
    support = write_binary_folder(tmp_path / "one", ["only"], size=(40, 44), seed=9)
    result = api.distill(_distill_cfg(support, tmp_path / "run"), quiet=True)
    assert is_artifact(result.student_dir) and is_artifact(result.teacher_dir)
    _finite_losses(result.stats)
    assert load_model(result.teacher_dir).support_images.shape[0] == 1


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_single_support_image_without_augmentation_is_refused(tmp_path, command) -> None:
    """Without flip views the only query would be its own support (a copy task): refused, no run folder."""
    support = write_binary_folder(tmp_path / "one", ["only"], size=(40, 44), seed=9)
    with pytest.raises(ConfigError, match="augment"):
        if command == "adapt":
            api.adapt(_adapt_cfg(support, tmp_path / "run", augment=False), quiet=True)
        else:
            api.distill(_distill_cfg(support, tmp_path / "run", train={"augment": False}), quiet=True)
    assert not (tmp_path / "run").exists()


def test_supports_with_empty_masks_train(tmp_path, monkeypatch) -> None:
    """Negative examples (empty masks) give episodes with no class to find: no crash, finite loss."""
    support = write_binary_folder(tmp_path / "neg", [f"s{i}" for i in range(4)], seed=5)
    for i in (1, 2, 3):
        Image.fromarray(np.zeros((48, 56), np.uint8)).save(support / "masks" / f"s{i}.png")
    from fsdistill.train import fit

    episodes = []
    real_sample = fit.EpisodeSampler.sample

    def recording_sample(self):
        episode = real_sample(self)
        episodes.append(episode)
        return episode

    monkeypatch.setattr(fit.EpisodeSampler, "sample", recording_sample)
    result = api.adapt(_adapt_cfg(support, tmp_path / "run", steps=2, episodes_per_step=3), quiet=True)
    _finite_losses(result.stats)
    assert is_artifact(result.teacher_dir)
    # the run met the case it is about: an episode whose supports show no class at all
    assert any(all(i != 0 for i, _ in e.supports) for e in episodes), episodes


def test_default_run_dir_is_unique_and_never_overwrites(tmp_path, monkeypatch) -> None:
    support = write_binary_folder(tmp_path / "one", ["only"], size=(40, 44), seed=3)
    monkeypatch.chdir(tmp_path)

    class FrozenClock:
        @staticmethod
        def now():
            import datetime as _dt

            return _dt.datetime(2030, 1, 2, 3, 4, 5)

    from fsdistill.api import runs as runs_api

    monkeypatch.setattr(runs_api, "datetime", FrozenClock)  # every run starts "at the same second"
    first = api.adapt(_adapt_cfg(support, None, steps=0), quiet=True)
    stamp = (first.teacher_dir / "model.safetensors").read_bytes()
    second = api.adapt(_adapt_cfg(support, None, steps=0), quiet=True)
    third = api.new_run_dir(None)
    dirs = [first.run_dir, second.run_dir, third]
    assert len(set(dirs)) == 3
    for d in dirs:
        assert (tmp_path / d).parent == tmp_path / "runs"
        assert re.fullmatch(r"20300102-030405(-\d+)?", d.name), d.name
    assert (first.teacher_dir / "model.safetensors").read_bytes() == stamp
    assert is_artifact(tmp_path / first.teacher_dir) and is_artifact(tmp_path / second.teacher_dir)


def test_default_run_dir_uses_the_current_date(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    d = api.new_run_dir(None)
    assert (tmp_path / d).is_dir() and (tmp_path / "runs") == (tmp_path / d).parent
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", d.name)


def test_explicit_out_is_used_as_given(tmp_path) -> None:
    assert api.new_run_dir(tmp_path / "mine") == tmp_path / "mine"
    assert (tmp_path / "mine").is_dir()


# --- real example data -----------------------------------------------------------------------------------------


@pytest.mark.examples
def test_real_nuclei_untuned_teacher(examples_root, tmp_path) -> None:
    nuclei = examples_root / "nuclei"
    cfg = load_config(
        AdaptCfg,
        None,
        {
            "support": nuclei / "support",
            "out": tmp_path / "run",
            "device": "cpu",
            "model": {"size": 128},
            "train": {"steps": 0},
        },
    )
    result = api.adapt(cfg, quiet=True)
    assert load_model(result.teacher_dir).config["backbone"]["name"] == "efficientnet-lite0"
    evaluation = api.evaluate(nuclei / "heldout", result.run_dir, teacher=True, device="cpu", workers=0)
    assert evaluation.images == len(list((nuclei / "heldout" / "images").iterdir()))
    assert isinstance(evaluation.miou, float) and 0.0 <= evaluation.miou <= 1.0
    assert set(evaluation.iou) == {"background", "nucleus"}


@pytest.mark.examples
def test_real_nuclei_short_distill(examples_root, tmp_path) -> None:
    nuclei = examples_root / "nuclei"
    cfg = load_config(
        DistillCfg,
        None,
        {
            "support": nuclei / "support",
            "out": tmp_path / "run",
            "device": "cpu",
            "model": {"size": 128},
            "train": {"steps": 20, "episodes_per_step": 2},
        },
    )
    result = api.distill(cfg, quiet=True)
    _finite_losses(result.stats)
    evaluation = api.evaluate(nuclei / "heldout", result.run_dir, device="cpu", workers=0)
    assert evaluation.model == str(result.student_dir)
    # A short run already segments nuclei (measured 0.77 after 20 steps of 4 episodes at 128 px); 0.3 leaves
    # room for machine and seed noise but fails a student that collapsed to one class or learned nothing.
    assert evaluation.miou > 0.3, evaluation.iou
    predicted = api.predict([nuclei / "heldout" / "images"], tmp_path / "pred", result.run_dir, device="cpu", workers=0)
    assert predicted.written == evaluation.images and not predicted.failed
    counts = np.zeros(2, np.int64)
    for mask_path in (tmp_path / "pred" / "masks").iterdir():
        with Image.open(mask_path) as mask, Image.open(nuclei / "heldout" / "images" / mask_path.name) as image:
            assert mask.size == image.size
            counts += np.bincount(np.asarray(mask).ravel(), minlength=2)[:2]
    assert (counts > 0).all(), f"the student predicts a single class everywhere: {counts.tolist()}"


def test_episode_sampler_covers_classes_then_fills_up_to_k_shots() -> None:
    """Episodes hold 1..max_shots supports (the teacher is used with many at once), never the query itself, and
    always one support per class the query shows."""
    from fsdistill.train.episodes import EpisodeSampler

    present = torch.tensor([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    sampler = EpisodeSampler(present, max_shots=4, views=1, seed=0)
    sizes = set()
    for _ in range(300):
        episode = sampler.sample()
        chosen = [i for i, _ in episode.supports]
        assert episode.query not in chosen and len(set(chosen)) == len(chosen)
        for cls in present[episode.query].nonzero().flatten().tolist():
            assert any(present[i, cls] for i in chosen)
        sizes.add(len(chosen))
    assert sizes == {1, 2, 3, 4}
    # two images: the only other one is the whole episode
    small = EpisodeSampler(present[:2], max_shots=4, views=1, seed=0)
    assert all(len(small.sample().supports) == 1 for _ in range(10))


def test_plateau_stop_waits_for_min_steps_coverage_and_a_flat_loss() -> None:
    from fsdistill.train.budget import PlateauStop

    # a loss that falls for 60 steps, then stays flat: stops two windows after the fall ends, not before min_steps
    stop = PlateauStop(min_steps=50, max_steps=1000, window=10, patience=2, tolerance=0.02)
    losses = [1.0 - 0.01 * t for t in range(60)] + [0.4] * 200
    steps = next(t + 1 for t, loss in enumerate(losses) if stop.update(loss))
    assert 60 < steps <= 90 and "stopped falling" in stop.reason
    # flat from the start: min_steps still holds
    stop = PlateauStop(min_steps=50, max_steps=1000, window=10, patience=2)
    assert next(t + 1 for t in range(1000) if stop.update(1.0)) == 50
    # a class seen in too few queries keeps training until it is, however flat the loss
    stop = PlateauStop(min_steps=10, max_steps=1000, window=10, patience=2, queries_per_class=30)
    steps = next(t + 1 for t in range(1000) if stop.update(1.0, [5 * t, t // 2]))
    assert steps == 61  # the first update whose counts reach 30 (t = 60)
    # the caps
    stop = PlateauStop(min_steps=10, max_steps=35, window=10)
    assert next(t + 1 for t in range(1000) if stop.update(1.0 / (t + 1))) == 35 and "step cap" in stop.reason
    stop = PlateauStop(min_steps=10, max_steps=1000, max_seconds=0.0)
    assert stop.update(1.0) and "time cap" in stop.reason
    # a cap under a minute in seconds (max_minutes 0.1 read "(0 min)"), longer ones in minutes
    stop = PlateauStop(min_steps=10, max_steps=1000, max_seconds=6.0)
    stop._start -= 10
    assert stop.update(1.0) and stop.reason == "reached the time cap (6 s)"
    for seconds, said in ((90.0, "1.5 min"), (60_000.0, "1000 min"), (86_400.0, "1440 min")):  # never 1e+03
        stop = PlateauStop(min_steps=10, max_steps=1000, max_seconds=seconds)
        stop._start -= seconds + 1
        assert stop.update(1.0) and stop.reason == f"reached the time cap ({said})"


def test_a_continued_run_stops_at_its_floors_while_the_loss_still_falls() -> None:
    from fsdistill.train.budget import PlateauStop

    falling = [1.0 / (t + 1) for t in range(1000)]
    stop = PlateauStop(min_steps=20, max_steps=1000, window=10, queries_per_class=30, plateau=False)
    # the class to learn reaches 30 queries at t = 60 (its counts grow by one every other step)
    steps = next(t + 1 for t, loss in enumerate(falling) if stop.update(loss, [t // 2]))
    assert steps == 61 and "continued run" in stop.reason
    stop = PlateauStop(min_steps=20, max_steps=1000, window=10, queries_per_class=30, plateau=False)
    assert next(t + 1 for t, loss in enumerate(falling) if stop.update(loss, [])) == 20  # no class to learn
    # the same falling loss keeps a fresh run training
    stop = PlateauStop(min_steps=20, max_steps=1000, window=10, queries_per_class=30)
    assert not any(stop.update(loss, [t // 2]) for t, loss in enumerate(falling[:200]))


def test_episode_queries_are_class_balanced() -> None:
    """A class in 2 of 10 images is a query target as often as one in all ten (the rule for small structures)."""
    from fsdistill.train.episodes import EpisodeSampler

    present = torch.zeros(10, 3, dtype=torch.bool)
    present[:, 0] = True  # large class: every image
    present[:5, 1] = True
    present[8:, 2] = True  # rare class: 2 images
    sampler = EpisodeSampler(present, max_shots=3, views=1, seed=0)
    queries = [sampler.sample().query for _ in range(300)]
    assert sampler.trained_classes == [0, 1, 2]
    rare = sum(q >= 8 for q in queries)
    assert rare >= 100  # a third of the queries target it (one query per image and pass gave 60)
    assert sampler.class_queries[2] == rare and sampler.class_queries[0] == 300
    # a class no image shows is never a target
    present[:, 2] = False
    assert EpisodeSampler(present, 3, 1, 0).trained_classes == [0, 1]


def test_class_repeats_make_a_new_class_a_target_more_often() -> None:
    """distill --init repeats the classes the run did not know: 3 repeats = 3 of every 5 class targets."""
    from fsdistill.train.episodes import EpisodeSampler

    present = torch.zeros(9, 3, dtype=torch.bool)
    for c in range(3):
        present[3 * c : 3 * c + 3, c] = True  # each image shows one class
    sampler = EpisodeSampler(present, max_shots=2, views=1, seed=0, class_repeats=[1, 1, 3])
    queries = [sampler.sample().query for _ in range(500)]
    assert sum(q >= 6 for q in queries) == 300
    assert sampler.class_queries == [100, 100, 300]


def test_dice_counts_a_small_class_like_a_large_one() -> None:
    from fsdistill.train.losses import dice_loss, focal_loss, segmentation_loss

    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[0, :16] = 1  # large class: half the image
    target[0, 30:, 30:] = 2  # small class: 4 pixels
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 20
    assert dice_loss(perfect, target) < 1e-3
    missed = perfect.clone()
    missed[0, :, 30:, 30:] = torch.tensor([20.0, 0.0, 0.0])[:, None, None]  # the 4 pixels called background
    # focal hardly notices 4 wrong pixels out of 1024; Dice loses a whole class out of two
    assert focal_loss(missed, target) < 0.1 and dice_loss(missed, target) > 0.35
    assert segmentation_loss(missed, target, dice_weight=0.0) == focal_loss(missed, target)
    ignored = torch.full_like(target, 255)
    assert dice_loss(perfect, ignored) == 0.0


def test_adapt_without_steps_uses_the_automatic_budget(tiny_data, tmp_path) -> None:
    """With no --steps the run trains until the budget says stop, records why, and keeps steps null in its config
    (so rerunning the config decides again)."""
    cfg = _adapt_cfg(tiny_data.binary, tmp_path / "run", steps=None, min_steps=12, max_steps=30, queries_per_class=4)
    result = api.adapt(cfg, quiet=True)
    assert 12 <= result.stats["steps"] <= 30 and result.stats["stop_reason"]
    assert result.stats["class_queries"][0] >= 4
    assert yaml.safe_load((result.run_dir / "config.resolved.yaml").read_text())["train"]["steps"] is None
    assert load_model(result.teacher_dir).config["training"]["steps"] == result.stats["steps"]


def test_min_steps_above_max_steps_is_refused() -> None:
    from fsdistill.config import TrainCfg

    with pytest.raises(ValueError, match="min_steps"):
        TrainCfg(min_steps=50, max_steps=10)


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    from fsdistill.train.losses import focal_loss

    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, :4] = 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), ce)
    assert focal_loss(logits, target, gamma=2.0) < ce  # the paper's γ down-weights confident pixels


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_focal_loss_gradient_is_finite_on_a_certain_pixel(gamma) -> None:
    """(1 − p)^γ with 0 < γ < 1 has an infinite slope at p = 1: a pixel classified with a margin of 80 gave NaN."""
    from fsdistill.train.losses import focal_loss

    logits = torch.tensor([[[[40.0]], [[-40.0]]]], requires_grad=True)  # 1×2×1×1, class 0 certain
    focal_loss(logits, torch.zeros(1, 1, 1, dtype=torch.long), gamma=gamma).backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_is_the_mean_over_labelled_pixels_and_ignores_the_rest() -> None:
    """focal(γ) = mean over the pixels not marked 255 of (1 − p_t)^γ · CE; ignored pixels get no gradient, and an
    image with no labelled pixel gives a zero loss that still backpropagates."""
    from fsdistill.train.losses import focal_loss

    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[1, 2:5] = 255
    valid = target != 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    expected = ((1 - torch.exp(-ce)) ** 2 * ce)[valid].mean()
    loss = focal_loss(logits, target, gamma=2.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert (logits.grad[1, :, 2:5] == 0).all() and logits.grad[0].abs().sum() > 0
    empty = focal_loss(logits, torch.full_like(target, 255))
    assert empty.item() == 0.0 and empty.requires_grad


def test_segmentation_loss_is_focal_plus_dice_written_out() -> None:
    """The shared-pass implementation equals the two terms written from their definitions (cross-entropy, one-hot
    overlaps), in value and in gradient: channels-last logits at stride 4, ignored pixels, a class the target lacks."""
    from fsdistill.train.losses import segmentation_loss

    torch.manual_seed(0)
    coarse = (3 * torch.randn(2, 4, 8, 8)).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    target = torch.randint(0, 3, (2, 32, 32))  # class 3 never shown
    target[1, :5] = 255
    loss = segmentation_loss(coarse, target, gamma=2.0, dice_weight=0.7)
    (grad,) = torch.autograd.grad(loss, coarse)

    logits = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="bilinear", align_corners=False)
    valid = target != 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    focal = ((1 - torch.exp(-ce)) ** 2 * ce)[valid].mean()
    probs = logits.softmax(1)[:, 1:] * valid[:, None]
    truth = torch.stack([(target == c).float() for c in (1, 2, 3)], dim=1)
    area = truth.sum(dim=(0, 2, 3))
    dice = (2 * (probs * truth).sum(dim=(0, 2, 3)) + 1) / (probs.sum(dim=(0, 2, 3)) + area + 1)
    expected = focal + 0.7 * (1 - dice[area > 0]).mean()
    (expected_grad,) = torch.autograd.grad(expected, coarse)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)


def test_focal_gamma_reaches_the_run(tiny_data, tmp_path) -> None:
    """focal_gamma is recorded with the run, and a run with it (0 = cross-entropy) trains to finite losses."""
    cfg = _adapt_cfg(tiny_data.binary, tmp_path / "run", steps=3, focal_gamma=0.0)
    result = api.adapt(cfg, quiet=True)
    _finite_losses(result.stats)
    saved = yaml.safe_load((result.run_dir / "config.resolved.yaml").read_text())["train"]
    assert saved["focal_gamma"] == 0.0


def test_distill_ends_with_a_per_class_check_on_the_supports(tiny_multi_run) -> None:
    """Each class gets a leave-one-out IoU (teacher, other supports) and a fit IoU (student, its training images);
    both are stored in the artifact, and a class the student has not learned gets one line of advice."""
    check = tiny_multi_run.check
    assert [c.name for c in check.classes] == ["red", "green", "blue"] and check.queries == 6
    for c in check.classes:
        assert c.supports >= 1
        for value in (c.leave_one_out, c.fit):
            assert value is None or 0.0 <= value <= 1.0
    saved = load_model(tiny_multi_run.student_dir).config["training"]["support_check"]
    assert [c["name"] for c in saved["classes"]] == ["red", "green", "blue"]
    assert saved == check.to_dict()


def test_support_check_advice_names_the_class_and_what_to_do() -> None:
    from fsdistill.train.support_check import ClassCheck, SupportCheck

    unlearned = ClassCheck("vessel", supports=3, leave_one_out=0.4, fit=0.2)
    assert "vessel" in unlearned.advice and "--steps" in unlearned.advice
    isolated = ClassCheck("lesion", supports=2, leave_one_out=0.02, fit=0.9)
    assert (
        "lesion" in isolated.advice and "add support images" in isolated.advice and "in 2 supports" in isolated.advice
    )
    healthy = ClassCheck("organ", supports=8, leave_one_out=0.6, fit=0.9)
    alone = ClassCheck("rare", supports=1, leave_one_out=None, fit=0.8)  # no other support to find it from
    assert healthy.advice is None and alone.advice is None
    assert SupportCheck([unlearned, healthy, isolated]).warnings() == [unlearned.advice, isolated.advice]


def test_teacher_logits_keep_the_decoder_dtype_under_autocast(tiny_multi_run) -> None:
    """On CUDA the predictor runs the teacher under bf16 autocast: its features are bf16, its decoder's output
    float. The per-class logits must take the decoder's dtype (they were allocated from the features and failed)."""
    loaded = load_model(tiny_multi_run.teacher_dir)
    teacher, support = loaded.model, loaded.support_features()
    with torch.no_grad():
        query = teacher.backbone(torch.zeros(1, 3, 64, 64))
        coarse = teacher.coarse_maps(query, support)
    bf16_query = [[m.to(torch.bfloat16) for m in level] for level in query]  # what CUDA autocast's backbone gives
    decoder = teacher.decoder
    skip_features, forward = decoder.skip_features, decoder.forward
    # the decoder as CUDA autocast runs it: bf16 inputs taken, float out of its normalisation layers
    decoder.skip_features = lambda a, b: skip_features(a.float(), b.float())
    decoder.forward = lambda maps, skip, prior: forward(maps, skip, prior).float()
    try:
        with torch.no_grad():
            logits = teacher.class_logits(bf16_query, support, coarse, torch.tensor([True, False, True]))
    finally:
        del decoder.skip_features, decoder.forward
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all() and logits.shape[:2] == (1, 3)


def test_pair_attention_reuses_each_pair_and_matches_the_live_attention() -> None:
    """Episodes from cached (query, support) sums = the teacher's own attention without dropout; a pair seen
    again is not recomputed; past the memory cap pairs are computed each time, still correct."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.models.build import build_teacher
    from fsdistill.train.episodes import EpisodeSampler, FeatureCache, PairAttention

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=2, pretrained=False).eval()
    masks = torch.zeros(5, 64, 64, dtype=torch.uint8)
    for i in range(5):
        masks[i, 4 * i : 4 * i + 20, :30] = 1 + i % 2
    masks[4, 40:, 40:] = 1
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    cache = FeatureCache(teacher, SupportTensors(images, masks, [str(i) for i in range(5)]), torch.device("cpu"), False)
    pairs = PairAttention(teacher)
    capped = PairAttention(teacher, max_bytes=0)
    sampler = EpisodeSampler(cache.present, max_shots=3, views=1, seed=0)
    drawn, seen = 0, set()
    for _ in range(40):
        episode = sampler.sample()
        drawn += len(episode.supports)
        seen |= {(episode.query, index) for index, _ in episode.supports}
        query, _ = cache.query(episode.query, episode.query_view)
        support = cache.supports(list(episode.supports))
        with torch.no_grad():
            expected = teacher.coarse_maps(query, support)
        for got in (pairs.coarse_maps(episode, query, support), capped.coarse_maps(episode, query, support)):
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert pairs.computed == len(seen) < drawn and pairs.bytes > 0
    assert capped.computed == drawn and capped.bytes == 0


def test_support_check_reuses_the_training_pairs_with_the_same_result() -> None:
    """With the training's pair attention kept on the cache, the leave-one-out check computes only the pairs
    training did not (here: none after a first check) and gives the numbers of the inference pass."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.models.build import build_student, build_teacher
    from fsdistill.train.episodes import FeatureCache
    from fsdistill.train.support_check import check_supports

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=2, pretrained=False).eval()
    student = build_student(teacher, 8, True).eval()
    masks = torch.zeros(5, 64, 64, dtype=torch.uint8)
    for i in range(5):
        masks[i, 4 * i : 4 * i + 20, :30] = 1 + i % 2
        masks[i, 40:50, 10 * i : 10 * i + 12] = 2 - i % 2
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    cache = FeatureCache(teacher, SupportTensors(images, masks, [str(i) for i in range(5)]), torch.device("cpu"), False)
    names = ["background", "a", "b"]
    live = check_supports(teacher, student, cache, names)  # no pairs kept: the inference pass
    pairs = cache.pair_attention(teacher)
    reused = check_supports(teacher, student, cache, names)
    assert pairs.computed == 5 * 4  # every (query, other support) pair once
    again = check_supports(teacher, student, cache, names)
    assert pairs.computed == 5 * 4  # all reused
    for a, b, c in zip(live.classes, reused.classes, again.classes):
        assert a.leave_one_out is not None
        assert a.leave_one_out == pytest.approx(b.leave_one_out, abs=1e-3) and b.leave_one_out == c.leave_one_out
    teacher.voting = 2  # more other supports than one voting chunk: the inference pass again, pairs untouched
    check_supports(teacher, student, cache, names)
    assert pairs.computed == 5 * 4
    # A phase that trains the attention drops the kept sums (they would be stale for a later check).
    from fsdistill.config import TrainCfg
    from fsdistill.train.fit import train

    train(teacher, cache, TrainCfg(steps=1, train=["attention"]), student=student, quiet=True)
    assert cache.pairs is None
    train(teacher, cache, TrainCfg(steps=1), student=student, quiet=True)
    assert cache.pairs is not None and cache.pairs.teacher is teacher


@pytest.mark.parametrize("weight", [0.0, 5.0])
def test_mse_weight_scales_the_distillation_term(weight) -> None:
    """Each step's loss = (teacher + student + w·MSE) / 3 (+ the student batch), as recorded per step."""
    from fsdistill.config import ModelCfg, TrainCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.models.build import build_student, build_teacher
    from fsdistill.train.episodes import FeatureCache
    from fsdistill.train.fit import train

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=1, pretrained=False)
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for i in range(3):
        masks[i, 8 * i : 8 * i + 24, 10:40] = 1
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    cache = FeatureCache(teacher, SupportTensors(images, masks, ["a", "b", "c"]), torch.device("cpu"), False)
    student = build_student(teacher, 4, True)
    stats = train(teacher, cache, TrainCfg(steps=3, student_batch=0, mse_weight=weight), student=student, quiet=True)
    for step in stats.history:
        assert step["mse"] > 0
        expected = (step["teacher"] + step["student"] + weight * step["mse"]) / 3
        assert step["loss"] == pytest.approx(expected, rel=1e-5)


def test_flip_batch_flips_features_and_targets_of_each_image_alike() -> None:
    """Each image gets one flip view for its features of every level and for its maps; the draws are seeded."""
    from fsdistill.data.transforms import FLIP_VIEWS, flip
    from fsdistill.train.episodes import flip_batch

    batch = 32
    masks = torch.randint(0, 3, (batch, 16, 16), dtype=torch.uint8)
    coarse = torch.rand(batch, 2, 3, 4, 4)
    # Features that are the masks themselves (at two levels), so a flip of one and not the other shows.
    feats = [[masks[:, None].float()], [masks[:, None, ::4, ::4].float(), masks[:, None, ::4, ::4].float() * 2]]
    flipped, (out_masks, out_coarse) = flip_batch(torch.Generator().manual_seed(3), feats, masks, coarse)
    again, _ = flip_batch(torch.Generator().manual_seed(3), feats, masks, coarse)
    assert all(torch.equal(a, b) for la, lb in zip(flipped, again) for a, b in zip(la, lb))
    assert torch.equal(flipped[0][0][:, 0], out_masks.float())
    views = []
    for i in range(batch):
        view = next(v for v in range(len(FLIP_VIEWS)) if torch.equal(flip(masks[i], v), out_masks[i]))
        views.append(view)
        assert torch.equal(out_coarse[i], flip(coarse[i], view))
        assert torch.equal(flipped[1][1][i], flip(feats[1][1][i], view))
    assert set(views) == set(range(len(FLIP_VIEWS)))  # every view drawn (32 images, 4 views)


def test_random_resized_crops_move_masks_with_images_and_keep_the_area_floor() -> None:
    """Each crop is one region of its image rescaled to the full size: its mask is the same region of the mask
    (a pixel keeps its class, ignore included); the region covers at least ``min_area`` of the image (≤ 0.75,
    where a side cut to the image cannot shrink it below); the draws are seeded."""
    from fsdistill.data.transforms import random_resized_crops

    count, size = 64, 64
    ramp = torch.linspace(0, 255, size)
    images = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    images[:, 0] = ramp.view(1, 1, size).round().to(torch.uint8)  # channel 0: the column, channel 1: the row
    images[:, 1] = ramp.view(1, size, 1).round().to(torch.uint8)
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for i in range(count):
        masks[i, 8 + i % 20 : 30 + i % 20, 10:40] = 1 + i % 2
        masks[i, 50:60, 50:60] = 255
    crops, crop_masks = random_resized_crops(images, masks, 0.35, torch.Generator().manual_seed(0))
    again, _ = random_resized_crops(images, masks, 0.35, torch.Generator().manual_seed(0))
    assert crops.shape == images.shape and crop_masks.shape == masks.shape and crop_masks.dtype == torch.uint8
    assert torch.equal(crops, again)
    # Each crop pixel's source pixel, read from the coordinate channels, carries the crop mask's class there
    # (checked where the source's 3×3 neighbourhood has one class: sub-pixel rounding cannot pick another).
    column = (crops[:, 0].float() / 255 * (size - 1)).round().long()
    row = (crops[:, 1].float() / 255 * (size - 1)).round().long()
    source = torch.stack([masks[i, row[i], column[i]] for i in range(count)])
    as_float = masks.float().unsqueeze(1)
    uniform = (F.max_pool2d(as_float, 3, 1, 1) == -F.max_pool2d(-as_float, 3, 1, 1)).squeeze(1)
    stable = torch.stack([uniform[i, row[i], column[i]] for i in range(count)])
    assert torch.equal(crop_masks[stable], source[stable]) and stable.float().mean() > 0.8
    assert {0, 1, 2, 255} <= set(crop_masks.unique().tolist())
    width = (crops[:, 0, 0, -1].float() - crops[:, 0, 0, 0].float()) / 255
    height = (crops[:, 1, -1, 0].float() - crops[:, 1, 0, 0].float()) / 255
    area = width * height
    assert bool((area >= 0.35 - 0.05).all()) and bool((area <= 1.0).all()) and float(area.min()) < 0.6
    assert float(area.std()) > 0.05  # drawn, not fixed


def test_class_centred_crops_lie_around_a_class_the_image_shows() -> None:
    """``centre_on_class``: each crop lies around a pixel of a class its image shows, background included, each
    class equally likely: a 3×3 px structure in a corner is in every crop where it is the only class not ignored,
    in about half where background is the other (uniform crops of the same area floor miss it in most); the draws
    are seeded."""
    from fsdistill.data.transforms import random_resized_crops

    count, size = 64, 64
    images = torch.randint(
        0, 256, (count, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    masks = torch.zeros(count, size, size, dtype=torch.uint8)
    for i in range(count):
        corner = (i % 4) // 2 * (size - 5) + 1, (i % 2) * (size - 5) + 1
        masks[i, corner[0] : corner[0] + 3, corner[1] : corner[1] + 3] = 1 + i % 3

    def showing(crop_masks: torch.Tensor) -> int:
        return int(((crop_masks > 0) & (crop_masks < 255)).flatten(1).any(1).sum())

    centred, centred_masks = random_resized_crops(images, masks, 0.35, torch.Generator().manual_seed(0), True)
    again, _ = random_resized_crops(images, masks, 0.35, torch.Generator().manual_seed(0), True)
    _, uniform_masks = random_resized_crops(images, masks, 0.35, torch.Generator().manual_seed(0), False)
    assert torch.equal(centred, again) and centred.shape == images.shape
    assert count // 4 < showing(centred_masks) < count and showing(uniform_masks) < showing(centred_masks)
    only_structure = torch.where(masks == 0, torch.full_like(masks, 255), masks)  # background ignored
    _, structure_masks = random_resized_crops(images, only_structure, 0.35, torch.Generator().manual_seed(0), True)
    assert showing(structure_masks) == count


def test_feature_cache_crop_views_are_encoded_crops_mixed_into_the_student_batches() -> None:
    """A cache with crop views holds the student's maps of each crop (the same crops from the same seed); about
    half the images of a student batch are crop views, each with the mask of its crop; without crop views a batch
    is the images' own cached maps. A batch's level 0 holds only the map the student reads."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.data.transforms import CROP_GEOMETRY_SEED, random_resized_crops
    from fsdistill.models.build import build_teacher
    from fsdistill.models.student import student_inputs
    from fsdistill.train.episodes import FeatureCache

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=2, pretrained=False).eval()
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for i in range(3):
        masks[i, 4 + 8 * i : 20 + 8 * i, 6:50] = 1 + i % 2
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    support = SupportTensors(images, masks, ["a", "b", "c"])
    plain = FeatureCache(teacher, support, torch.device("cpu"), False)
    cropped = FeatureCache(teacher, support, torch.device("cpu"), False, crop_views=2, crop_min_area=0.4, crop_seed=5)
    assert not plain.crop_feats and len(cropped.crop_feats) == 2
    geometry = torch.Generator().manual_seed(5 + CROP_GEOMETRY_SEED)
    for view in range(2):
        crop_images, crop_masks = random_resized_crops(images, masks, 0.4, geometry)
        assert torch.equal(cropped.crop_masks[view], crop_masks)
        with torch.no_grad():
            expected = student_inputs(teacher.backbone.encode(crop_images))
        for got_level, expected_level in zip(cropped.crop_feats[view], expected):
            assert len(got_level) == len(expected_level)
            for got, want in zip(got_level, expected_level):
                torch.testing.assert_close(got, want)
    centred = FeatureCache(
        teacher,
        support,
        torch.device("cpu"),
        False,
        crop_views=2,
        crop_min_area=0.4,
        crop_seed=5,
        crop_centre_on_class=True,
    )
    geometry = torch.Generator().manual_seed(5 + CROP_GEOMETRY_SEED)
    for view in range(2):
        _, crop_masks = random_resized_crops(images, masks, 0.4, geometry, True)
        assert torch.equal(centred.crop_masks[view], crop_masks)
    assert not all(torch.equal(a, b) for a, b in zip(centred.crop_masks, cropped.crop_masks))

    picks = [(i % 3, 0) for i in range(60)]
    feats, batch_masks = plain.batch(picks)
    assert len(feats[0]) == 1 and torch.equal(
        feats[0][0], torch.cat([plain.feats[0][0][-1][i : i + 1] for i, _ in picks])
    )
    assert torch.equal(batch_masks, masks[[i for i, _ in picks]])
    feats, batch_masks = cropped.batch(picks)
    kinds = []
    for row, (index, _) in enumerate(picks):
        sources = [plain.feats[0][0][-1][index]] + [crop[0][0][index] for crop in cropped.crop_feats]
        source = next(k for k, m in enumerate(sources) if torch.equal(feats[0][0][row], m))
        kinds.append(source)
        wanted = masks[index] if source == 0 else cropped.crop_masks[source - 1][index]
        assert torch.equal(batch_masks[row], wanted)
    assert 15 <= sum(k > 0 for k in kinds) <= 45 and {1, 2} <= set(kinds)


def test_random_gains_scale_each_image_within_the_range_and_stay_uint8() -> None:
    from fsdistill.data.transforms import random_gains

    images = torch.full((64, 3, 4, 4), 100, dtype=torch.uint8)
    images[:, :, 0, 0] = 200  # clipped where a gain pushes it past 255
    out = random_gains(images, 0.5, 2.0, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    gains = out[:, 0, 1, 1].float() / 100
    assert (
        float(gains.min()) >= 0.5 and float(gains.max()) <= 2.0 and float(gains.min()) < 0.8 < 1.25 < float(gains.max())
    )
    plain = images[0] == 100
    assert all(bool((out[i][plain] == out[i, 0, 1, 1]).all()) for i in range(64))  # one gain per image
    clipped = gains > 1.28  # 200 × gain past 255
    assert bool(clipped.any()) and bool((out[clipped][:, :, 0, 0] == 255).all())
    # one image, one gain: every pixel scaled alike; a range of one gain is that gain exactly
    assert torch.equal(
        random_gains(images, 1.5, 1.5, torch.Generator()), torch.where(images == 200, 255, 150).to(torch.uint8)
    )
    again = random_gains(images, 0.5, 2.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_feature_cache_crop_gain_brightens_the_crops_it_encodes() -> None:
    """With ``crop_gain`` the cached crop views are the encoded crops of the same geometry times their gains
    (drawn from the crop seed); the full-image views are untouched, and (1, 1) is the plain cache."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.data.transforms import CROP_GEOMETRY_SEED, random_gains, random_resized_crops
    from fsdistill.models.build import build_teacher
    from fsdistill.models.student import student_inputs
    from fsdistill.train.episodes import CROP_GAIN_SEED, FeatureCache

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=1, pretrained=False).eval()
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 10:40] = 1
    images = torch.randint(0, 120, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    support = SupportTensors(images, masks, ["a", "b"])
    args = (teacher, support, torch.device("cpu"), False)
    plain = FeatureCache(*args, crop_views=2, crop_min_area=0.5, crop_seed=3)
    same = FeatureCache(*args, crop_views=2, crop_min_area=0.5, crop_seed=3, crop_gain=(1.0, 1.0))
    bright = FeatureCache(*args, crop_views=2, crop_min_area=0.5, crop_seed=3, crop_gain=(1.0, 2.0))
    geometry = torch.Generator().manual_seed(3 + CROP_GEOMETRY_SEED)
    gains = torch.Generator().manual_seed(3 + CROP_GAIN_SEED)
    for view in range(2):
        crop_images, crop_masks = random_resized_crops(images, masks, 0.5, geometry)
        assert torch.equal(bright.crop_masks[view], crop_masks)
        with torch.no_grad():
            expected = student_inputs(teacher.backbone.encode(random_gains(crop_images, 1.0, 2.0, gains)))
        torch.testing.assert_close(bright.crop_feats[view][-1][-1], expected[-1][-1])
        assert torch.equal(same.crop_feats[view][-1][-1], plain.crop_feats[view][-1][-1])
        assert not torch.equal(bright.crop_feats[view][-1][-1], plain.crop_feats[view][-1][-1])
    assert torch.equal(bright.feats[0][-1][-1], plain.feats[0][-1][-1])


def test_crop_views_change_only_the_student_batches() -> None:
    """With crop views the student's supervised batches differ (other losses from the same seed); the episodes,
    and so the teacher's loss of the first step, are the same."""
    from fsdistill.config import TrainCfg
    from fsdistill.train.episodes import FeatureCache
    from fsdistill.train.fit import train

    histories = {}
    for views in (0, 2):
        teacher, cache, student = _banded_supports(1)
        if views:
            support = _banded_support_tensors()
            cache = FeatureCache(teacher, support, torch.device("cpu"), False, crop_views=views, crop_min_area=0.35)
        cfg = TrainCfg(steps=3, student_batch=3, flip_features=False)
        histories[views] = train(teacher, cache, cfg, student=student, quiet=True).history
    assert histories[0][0]["teacher"] == histories[2][0]["teacher"]
    assert [h["student_batch"] for h in histories[0]] != [h["student_batch"] for h in histories[2]]


def _banded_supports(num_classes: int):
    """Three 64 px random supports, each with one band of class 1 + i % num_classes (not symmetric: a flip moves
    it), and, from torch seed 0, a random-init test-resnet teacher, its feature cache and a width-4 student with the
    refiner: (teacher, cache, student)."""
    from fsdistill.config import ModelCfg
    from fsdistill.models.build import build_student, build_teacher
    from fsdistill.train.episodes import FeatureCache

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=num_classes, pretrained=False)
    cache = FeatureCache(teacher, _banded_support_tensors(num_classes), torch.device("cpu"), False)
    return teacher, cache, build_student(teacher, 4, True)


def _banded_support_tensors(num_classes: int = 1):
    """The three supports of :func:`_banded_supports`."""
    from fsdistill.data.support_tensors import SupportTensors

    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    for i in range(3):
        masks[i, 4 + 8 * i : 20 + 8 * i, 6:50] = 1 + i % num_classes
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return SupportTensors(images, masks, ["a", "b", "c"])


def test_the_student_batch_rides_in_the_episode_pass_with_the_gradients_of_two_passes() -> None:
    """The student's supervised batch shares the episode query's forward pass: in training mode the student is
    per-image (no batch statistics), so the merged pass has the two separate passes' losses and gradients, and a
    run's episode losses do not depend on whether a batch rides along (channel dropout off)."""
    from fsdistill.config import TrainCfg
    from fsdistill.models.backbone import cat_features
    from fsdistill.models.student import student_inputs
    from fsdistill.train.fit import train
    from fsdistill.train.losses import segmentation_loss

    teacher, cache, student = _banded_supports(2)
    student.train()
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(not any(p is q for q in student.backbone.parameters()))
    q_feats, q_mask = cache.query(0, 0)
    b_feats, b_masks = cache.batch([(1, 0), (2, 0)])

    def gradients(loss):
        student.zero_grad(set_to_none=True)
        loss.backward()
        return [p.grad.clone() for p in params if p.grad is not None]

    apart = segmentation_loss(student.forward_features(student_inputs(q_feats))[0], q_mask) + segmentation_loss(
        student.forward_features(b_feats)[0], b_masks
    )
    logits, _ = student.forward_features(cat_features([student_inputs(q_feats), b_feats]))
    merged = segmentation_loss(logits[:1], q_mask) + segmentation_loss(logits[1:], b_masks)
    assert float(merged.detach()) == pytest.approx(float(apart.detach()), rel=1e-5)
    grads_apart, grads_merged = gradients(apart), gradients(merged)
    assert len(grads_apart) == len(grads_merged) > 0
    for a, b in zip(grads_apart, grads_merged):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

    histories = {}
    for batch in (0, 2):
        teacher, cache, student = _banded_supports(2)
        cfg = TrainCfg(steps=1, student_batch=batch, convdist_dropout=0.0, flip_features=False)
        histories[batch] = train(teacher, cache, cfg, student=student, quiet=True).history
    first, with_batch = histories[0][0], histories[2][0]
    assert "student_batch" not in first and with_batch["student_batch"] > 0
    for key in ("teacher", "student", "mse"):
        assert with_batch[key] == pytest.approx(first[key], rel=1e-5)
    assert with_batch["loss"] == pytest.approx(first["loss"] + with_batch["student_batch"], rel=1e-5)


def test_flip_features_changes_only_the_student_batches() -> None:
    """With flip_features the student's supervised batch is flipped (different losses from the same seed); the
    episodes, and so the teacher's loss of the first step, are the same."""
    from fsdistill.config import TrainCfg
    from fsdistill.train.fit import train

    histories = {}
    for flips in (False, True):
        teacher, cache, student = _banded_supports(1)
        cfg = TrainCfg(steps=3, student_batch=3, flip_features=flips)
        histories[flips] = train(teacher, cache, cfg, student=student, quiet=True).history
    assert histories[False][0]["teacher"] == histories[True][0]["teacher"]
    assert [h["student_batch"] for h in histories[False]] != [h["student_batch"] for h in histories[True]]


def test_convdist_dropout_reaches_the_student_while_it_trains() -> None:
    """train.convdist_dropout is set on every ConvDist block and changes the student's losses from the same seed;
    the teacher's first loss (computed before the student's) is the same; 1 is refused."""
    from pydantic import ValidationError

    from fsdistill.config import TrainCfg
    from fsdistill.train.fit import train

    histories = {}
    for p in (0.0, 0.5):
        teacher, cache, student = _banded_supports(1)
        histories[p] = train(teacher, cache, TrainCfg(steps=3, convdist_dropout=p), student=student, quiet=True).history
        assert [dist.input_dropout for dist in student.convdist] == [p] * len(student.convdist)
    assert histories[0.0][0]["teacher"] == histories[0.5][0]["teacher"]
    assert histories[0.0][0]["student"] != histories[0.5][0]["student"]
    with pytest.raises(ValidationError, match="convdist_dropout"):
        TrainCfg(convdist_dropout=1.0)


def test_polish_trains_the_student_alone_on_its_own_decoder() -> None:
    """After joint training the student gets its own copy of the decoder and trains alone: the teacher (its
    decoder included) is unchanged, the student's weights move, each step's loss is recorded; 0 steps: no phase."""
    from fsdistill.config import TrainCfg
    from fsdistill.train.fit import polish, train

    teacher, cache, student = _banded_supports(2)
    train(teacher, cache, TrainCfg(steps=2, student_batch=2), student=student, quiet=True)

    assert polish(student, cache, TrainCfg(polish_steps=0), quiet=True).steps == 0
    assert student.decoder is teacher.decoder  # no phase: still the shared decoder

    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    stats = polish(student, cache, TrainCfg(polish_steps=4, student_batch=2), quiet=True)
    assert stats.steps == 4 and len(stats.history) == 4 and all(h["polish"] > 0 for h in stats.history)
    assert student.decoder is not teacher.decoder
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any(k.startswith("convdist.") for k in moved) and any(k.startswith("decoder.") for k in moved)
    assert not any(p.requires_grad for p in student.parameters())  # left frozen, as train() leaves it


def test_distill_records_the_polish_steps(tiny_data, tmp_path) -> None:
    """distill ends with the student's polish phase and its artifact says how many steps it took."""
    cfg = load_config(
        DistillCfg,
        overrides={
            "support": tiny_data.binary,
            "out": tmp_path / "run",
            "model": TINY_MODEL,
            "train": {**TINY_TRAIN, "polish_steps": 3},
        },
    )
    result = api.distill(cfg, quiet=True)
    assert result.stats["polish_steps"] == 3 and result.stats["final_losses"]["polish"] > 0
    assert load_artifact(result.student_dir)[1]["training"]["polish_steps"] == 3


def test_bfloat16_training_follows_float32_and_leaves_contiguous_weights() -> None:
    """precision bfloat16 trains teacher and student with the losses of float32 from the same seed, step by step (a
    forward pass on stale bfloat16 copies of the weights would drift off by step 2), records its arithmetic, and
    leaves the weights contiguous for the artifact (channels-last only while training on the CPU)."""
    from fsdistill.config import TrainCfg
    from fsdistill.train.fit import polish, train

    histories = {}
    for precision in ("float32", "bfloat16"):
        teacher, cache, student = _banded_supports(2)
        cfg = TrainCfg(steps=8, student_batch=2, polish_steps=3, precision=precision)
        stats = train(teacher, cache, cfg, student=student, quiet=True)
        stats.add_polish(polish(student, cache, cfg, quiet=True))
        assert stats.precision == precision
        histories[precision] = [h.get("loss", h.get("polish")) for h in stats.history]
        assert all(p.is_contiguous() for p in (*teacher.parameters(), *student.parameters()))
    assert len(histories["bfloat16"]) == 11
    bf16, fp32 = histories["bfloat16"], histories["float32"]
    torch.testing.assert_close(bf16[:8], fp32[:8], atol=0.02, rtol=0.0)  # the joint steps: within 0.005 measured
    # The polish steps train the student alone from weights eight steps of rounding apart: where the CPU computes
    # bfloat16 in hardware (AMX) their losses part by up to ~2 % (0.023 of 1.07 measured), on AVX2 by less.
    torch.testing.assert_close(bf16[8:], fp32[8:], atol=0.0, rtol=0.04)


def test_a_teacher_with_raw_dot_product_scores_trains_on_the_live_attention() -> None:
    """An imported teacher scores by raw dot products (``qk_norm`` None): scaled scores above ~87 overflowed the
    kept attention sums (1 / e^score flushed to 0), NaN at step 0, while the softmax of the live path is finite."""
    from fsdistill.config import ModelCfg, TrainCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.models.build import build_student, build_teacher
    from fsdistill.train.episodes import FeatureCache
    from fsdistill.train.fit import train

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=2, pretrained=False)
    student = build_student(teacher, 8, True)
    assert teacher.sums_are_bounded
    with torch.no_grad():
        for block in teacher.blocks:
            block.qk_norm = None
            block.linears[0].weight.mul_(15)  # scores far beyond exp's float32 range
    assert not teacher.sums_are_bounded
    masks = torch.zeros(4, 64, 64, dtype=torch.uint8)
    for i in range(4):
        masks[i, 4 * i : 4 * i + 20, :30] = 1 + i % 2
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    cache = FeatureCache(teacher, SupportTensors(images, masks, [str(i) for i in range(4)]), torch.device("cpu"), False)
    cfg = TrainCfg(steps=3, polish_steps=0, precision="float32")
    stats = train(teacher, cache, cfg, student=student, quiet=True)
    assert stats.steps == 3 and cache.pairs is None


def test_a_class_that_vanishes_at_the_input_size_is_said(tmp_path, caplog) -> None:
    """A structure smaller than a cell of the input grid vanished from a support's resized mask without a word:
    that support taught the class nothing (a class lost in every support is never learned)."""
    import logging

    from fsdistill.data.discover import discover
    from fsdistill.data.support_tensors import load_support_tensors

    root = tmp_path / "sup"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.full((400, 400, 3), 60 * i, np.uint8)).save(root / "images" / f"s{i}.png")
        mask = np.zeros((400, 400), np.uint8)
        mask[100:300, 100:300] = 1
        mask[7, 5 + i] = 2  # one pixel: nearest-neighbour sampling at 64 px misses it
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    (root / "classes.txt").write_text("background\nbig\ndot\n")
    with caplog.at_level(logging.WARNING, logger="fsdistill.data.support_tensors"):
        tensors = load_support_tensors(discover(root), 64)
    assert set(np.unique(tensors.masks.numpy())) == {0, 1}
    messages = [r.message for r in caplog.records]
    assert (
        len(messages) == 1
        and "Class 'dot' vanishes when 2 support image(s) are resized to 64 px (e.g. s0)" in (messages[0])
    )


def test_feature_cache_automatic_flip_views_where_they_fit(monkeypatch) -> None:
    """augment None caches the four flip views when their features fit FLIP_VIEW_BYTES, bit-identical to augment
    True; over the bound one view, and ``views_left_out`` says how much they would have taken."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.support_tensors import SupportTensors
    from fsdistill.models.build import build_teacher
    from fsdistill.runtime import storage_bytes
    from fsdistill.train import episodes
    from fsdistill.train.episodes import FeatureCache

    torch.manual_seed(0)
    teacher = build_teacher(ModelCfg(backbone="test-resnet", size=64), num_classes=2, pretrained=False).eval()
    masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks[:, 10:30, 5:40] = 1
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    support = SupportTensors(images, masks, ["a", "b", "c"])
    cpu = torch.device("cpu")
    auto, asked, plain = (FeatureCache(teacher, support, cpu, a) for a in (None, True, False))
    assert (auto.views, asked.views, plain.views) == (4, 4, 1) and auto.views_left_out is None
    for view in range(4):
        assert torch.equal(auto.masks[view], asked.masks[view])
        for got, want in zip(episodes._tensors(auto.feats[view]), episodes._tensors(asked.feats[view])):
            assert torch.equal(got, want)
        for got, want in zip(episodes._tensors(auto.support[view]), episodes._tensors(asked.support[view])):
            assert torch.equal(got, want)
    one_view = storage_bytes([plain.masks[0], *episodes._tensors(plain.feats[0]), *episodes._tensors(plain.support[0])])
    monkeypatch.setattr(episodes, "FLIP_VIEW_BYTES", 4 * one_view)  # exactly fits
    assert FeatureCache(teacher, support, cpu, None).views == 4
    monkeypatch.setattr(episodes, "FLIP_VIEW_BYTES", 4 * one_view - 1)
    over = FeatureCache(teacher, support, cpu, None)
    assert over.views == 1 and over.views_left_out.startswith("their features would take 0.0 GiB, more than")
    assert FeatureCache(teacher, support, cpu, True).views == 4  # asked for: whatever they take


def test_storage_bytes_counts_shared_memory_once() -> None:
    from fsdistill.runtime import storage_bytes

    base = torch.zeros(10, 4)  # 160 bytes
    assert storage_bytes([base, base, base[2:5], base.view(40)]) == 160
    assert storage_bytes([base, torch.zeros(3, dtype=torch.uint8)]) == 163
    assert storage_bytes([]) == 0


def test_the_flip_view_bound_is_stated_as_it_is() -> None:
    """The automatic bound's figure in --augment's help (written out: the CLI loads no config at start-up) and in
    TrainCfg.augment's description is FLIP_VIEW_BYTES's, the one value the cache compares with."""
    from fsdistill.cli.common import AugmentOpt
    from fsdistill.config import FLIP_VIEW_BYTES, TrainCfg
    from fsdistill.train import episodes

    figure = f"{FLIP_VIEW_BYTES / 2**30:g} GiB"
    assert figure in AugmentOpt.__metadata__[0].help
    assert figure in TrainCfg.model_fields["augment"].description
    assert episodes.FLIP_VIEW_BYTES is FLIP_VIEW_BYTES


def test_distill_records_its_flip_views_and_says_when_automatic_augmentation_left_them_out(
    tmp_path, monkeypatch, tiny_data
) -> None:
    """The artifact records the views each support was cached in: four by default on a small folder, one with
    --no-augment or without steps, and for adapt unless asked; over the memory bound distill says so in one note
    (and records why)."""
    from typer.testing import CliRunner

    from fsdistill.cli import app
    from fsdistill.train import episodes

    def run_cli(*args: str):
        return CliRunner().invoke(app, list(args))

    monkeypatch.chdir(tmp_path)
    default = api.distill(_distill_cfg(tiny_data.binary, tmp_path / "default"), quiet=True)
    assert default.stats["flip_views"] == 4 and "flip_views_left_out" not in default.stats
    assert load_artifact(default.student_dir)[1]["training"]["flip_views"] == 4
    plain = api.distill(_distill_cfg(tiny_data.binary, tmp_path / "plain", train={"augment": False}), quiet=True)
    assert plain.stats["flip_views"] == 1
    untrained = api.distill(_distill_cfg(tiny_data.binary, tmp_path / "zero", train={"steps": 0}), quiet=True)
    assert untrained.stats["flip_views"] == 1 and "flip_views_left_out" not in untrained.stats
    adapted = api.adapt(_adapt_cfg(tiny_data.binary, tmp_path / "adapted"), quiet=True)
    assert adapted.stats["flip_views"] == 1  # adapt caches flip views only when asked (or for a single image)
    assert api.adapt(_adapt_cfg(tiny_data.binary, tmp_path / "a2", augment=True), quiet=True).stats["flip_views"] == 4
    monkeypatch.setattr(episodes, "FLIP_VIEW_BYTES", 1)
    over = api.distill(_distill_cfg(tiny_data.binary, tmp_path / "over"), quiet=True)
    assert over.stats["flip_views"] == 1
    assert over.stats["flip_views_left_out"].startswith("their features would take")
    args = ["distill", "--support", str(tiny_data.binary), "--out", "cli", "--device", "cpu", "--steps", "1"]
    args += ["--backbone", "test-resnet", "--size", "64"]
    said = run_cli(*args)
    assert said.exit_code == 0, said.output
    assert "note: the supports were cached without their flip views (their features would take" in said.output
    assert "--augment caches them anyway" in said.output
    asked = run_cli(*args[:4], "asked", *args[5:], "--augment")
    assert asked.exit_code == 0 and "flip views" not in asked.output
    assert load_artifact(tmp_path / "asked" / "student")[1]["training"]["flip_views"] == 4
