"""``distill --init RUN``: continue a run on a grown support folder, classes matched by name."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.config import DistillCfg, ModelCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.build import build_student, build_teacher, load_model
from fsdistill.models.grow import copy_student_classes, match_classes

from helpers import TINY_MODEL, TINY_TRAIN, assert_user_error, write_multiclass_folder


def test_match_classes_by_name() -> None:
    match = match_classes(["background", "a", "b", "c"], ["background", "c", "d", "a"], ["b"], "RUN")
    assert match.source == (2, None, 0)
    assert (match.kept, match.new, match.dropped) == (("c", "a"), ("d",), ("b",))


@pytest.mark.parametrize(
    "drop, message",
    [
        ([], "Class 'b' of RUN is not in the support folder; add images that show it, or pass --drop-class b"),
        (["x"], "--drop-class 'x' is not a class of RUN"),
        (["b", "a"], "--drop-class 'a' is still a class of the support folder"),
    ],
)
def test_match_classes_refuses_in_one_sentence(drop, message) -> None:
    with pytest.raises(ConfigError, match=message):
        match_classes(["background", "a", "b"], ["background", "a", "c"], drop, "RUN")


def test_dropping_classes_below_the_shared_decoders_groups_is_refused_and_a_drop_named_twice_counts_once() -> None:
    """The shared decoder's ConvDist has one hidden group per class up to 4, each class reading them all: 5 → 3
    classes cut a group off and the kept classes' predictions changed (7,530 pixels at --steps 0, exit 0)."""
    cfg = ModelCfg(backbone="test-resnet", size=64, student_width=4, decoder="shared")
    old = build_student(build_teacher(cfg, 4, pretrained=False), 4, cfg.refiner)
    new = build_student(build_teacher(cfg, 3, pretrained=False), 4, cfg.refiner)
    match = match_classes(["background", "a", "b", "c", "d"], ["background", "a", "b", "c"], ["d", "d"], "RUN")
    assert match.dropped == ("d",)  # recorded and printed once (it was "d, d")
    with pytest.raises(ConfigError, match="would have 3 ConvDist groups where the run's shared decoder has 4"):
        copy_student_classes(new, old, match, torch.full((3,), 0.25))


@pytest.mark.parametrize("width, decoder", [(4, "light"), (0, "light"), (4, "shared")])
def test_kept_classes_keep_their_coarse_maps_at_their_new_position(width, decoder) -> None:
    """Copied ConvDist blocks give the same coarse maps as in the run's student; a new class starts at its prior.
    With the shared decoder's ConvDist (hidden groups shared by the classes: 3 in the run, 4 now) the groups both
    have carry over and each kept class its readout of them."""
    torch.manual_seed(0)
    cfg = ModelCfg(backbone="test-resnet", size=64, student_width=width, decoder=decoder)
    old = build_student(build_teacher(cfg, 3, pretrained=False), width, cfg.refiner).eval()
    for p in old.convdist.parameters():
        p.data.normal_(0, 0.2)
    new = build_student(build_teacher(cfg, 4, pretrained=False), width, cfg.refiner).eval()
    match = match_classes(["background", "a", "b", "c"], ["background", "c", "new", "a", "b"], [], "RUN")
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    old.class_prior.copy_(torch.tensor([0.05, 0.15, 0.25]))
    copy_student_classes(new, old, match, prior)
    with torch.no_grad():
        feats = old.backbone(torch.randn(2, 3, 64, 64))
        before, after = old.coarse_maps(feats), new.coarse_maps(feats)
    for stage_old, stage_new in zip(before, after):
        for to_class, from_class in enumerate(match.source):
            if from_class is None:
                torch.testing.assert_close(stage_new[:, to_class], torch.full_like(stage_new[:, to_class], 0.2))
            else:
                torch.testing.assert_close(stage_new[:, to_class], stage_old[:, from_class])
    # a kept class keeps its recorded foreground fraction (the decoder's coarse-map prior reads it), a new one
    # takes the new folder's; with the run's decoder its per-class logits are the run's
    torch.testing.assert_close(new.class_prior, torch.tensor([0.25, 0.2, 0.05, 0.15]))
    new.decoder.load_state_dict(old.decoder.state_dict())

    def class_logits(student, feats):
        coarse = [c.flatten(0, 1) for c in student.coarse_maps(feats)]
        skip = student.decoder.skip_features(feats[0][-1], feats[1][-1])
        logits = student.decoder(coarse, skip, student.class_prior.repeat(2))
        return logits.view(2, student.num_classes, *logits.shape[1:])

    with torch.no_grad():
        before, after = class_logits(old, feats), class_logits(new, feats)
    for to_class, from_class in enumerate(match.source):
        if from_class is not None:
            torch.testing.assert_close(after[:, to_class], before[:, from_class])


def test_refiner_weights_move_with_their_class() -> None:
    """The class-shared refiner is copied whole but for its per-output weights, which follow their class; a new
    class keeps a zero output row (it starts unrefined)."""
    torch.manual_seed(0)
    cfg = ModelCfg(backbone="test-resnet", size=64, student_width=4)
    old = build_student(build_teacher(cfg, 3, pretrained=False), 4, True).eval()
    for p in old.refiner.parameters():
        p.data.normal_(0, 0.2)
    new = build_student(build_teacher(cfg, 4, pretrained=False), 4, True).eval()
    match = match_classes(["background", "a", "b", "c"], ["background", "c", "new", "a", "b"], [], "RUN")
    copy_student_classes(new, old, match, torch.full((4,), 0.2))
    first = old.refiner.proj.in_channels - 4  # the softmax columns of the projection (N + 1 = 4 in the run)
    assert torch.equal(new.refiner.proj.weight[:, :first], old.refiner.proj.weight[:, :first])
    assert torch.equal(new.refiner.norm.weight, old.refiner.norm.weight)
    for to, src in [(0, 0), (1, 3), (3, 1), (4, 2)]:  # background, c, a, b
        assert torch.equal(new.refiner.out.weight[to], old.refiner.out.weight[src])
        assert torch.equal(new.refiner.proj.weight[:, first + to], old.refiner.proj.weight[:, first + src])
    assert not new.refiner.out.weight[2].any() and new.refiner.out.bias[2] == 0  # "new"


def _cfg(support, out, **extra):
    return load_config(
        DistillCfg,
        None,
        {"support": support, "out": out, "device": "cpu", "model": TINY_MODEL, "train": TINY_TRAIN, **extra},
    )


def test_distill_init_adds_a_class_and_records_it(tiny_multi_run, tiny_data, tmp_path) -> None:
    """A fourth class: the run's teacher is taken whole, the kept classes start from the run's student."""
    grown = write_multiclass_folder(
        tmp_path / "grown", [f"g{i}" for i in range(8)], [*tiny_data.multi_classes, "yellow"], seed=5
    )
    run = api.distill(_cfg(grown, tmp_path / "run", init=tiny_multi_run.run_dir, train={**TINY_TRAIN, "steps": 0}))
    continued = load_model(tiny_multi_run.run_dir, "student").config["weights_sha256"]  # what it continued, by hash
    assert run.stats["init"] == {"run": str(tiny_multi_run.run_dir), "student_sha256": continued,
                                 "kept": ["red", "green", "blue"], "new": ["yellow"], "dropped": [], "moved": {}}  # fmt: skip
    old_t, new_t = load_model(tiny_multi_run.run_dir, "teacher"), load_model(run.run_dir, "teacher")
    old_state, new_state = old_t.model.state_dict(), new_t.model.state_dict()
    assert old_state.keys() == new_state.keys()
    assert all(torch.equal(old_state[k], new_state[k]) for k in old_state)
    student = load_model(run.run_dir, "student")
    assert student.class_names == ["background", "red", "green", "blue", "yellow"]
    old_student = load_model(tiny_multi_run.run_dir, "student").model
    old_s = old_student.convdist[0]
    width = old_s.width
    torch.testing.assert_close(student.model.convdist[0].hidden.weight[: 3 * width], old_s.hidden.weight)
    # untrained, it keeps the decoder the run's student was polished with (it took the teacher's, and the kept
    # classes predicted something else than the run did)
    old_decoder, new_decoder = old_student.decoder.state_dict(), student.model.decoder.state_dict()
    assert all(torch.equal(old_decoder[k], new_decoder[k]) for k in old_decoder)
    # and the kept classes keep their recorded class fractions (the new folder's moved their predictions)
    torch.testing.assert_close(student.model.class_prior[:3], old_student.class_prior)
    # with training steps the run trains on (the automatic budget is skipped in tests: 2 steps)
    trained = api.distill(_cfg(grown, tmp_path / "run2", init=tiny_multi_run.run_dir))
    assert trained.stats["steps"] == TINY_TRAIN["steps"]
    # its joint phase ends at its floors, then the student is polished alone as in any run (measured better)
    assert trained.stats["polish_steps"] == TINY_TRAIN["polish_steps"]


def test_distill_init_keeps_the_run_refiner_width(tiny_multi_run, tiny_data, tmp_path) -> None:
    """A run whose student refines at another width than its decoder's default now (an earlier shared-decoder run:
    32 channels, the default since 16) is continued at its own width, so its refiner carries over."""
    import shutil

    from fsdistill.checkpoint import load_artifact, save_artifact
    from fsdistill.models.student import SharedRefiner

    run_dir = shutil.copytree(tiny_multi_run.run_dir, tmp_path / "earlier")
    tensors, config = load_artifact(run_dir / "student")
    written = tensors["refiner.proj.weight"]
    wide = written.shape[0] * 2
    channels = load_model(run_dir, "student").model.backbone.spec.channels
    refiner = SharedRefiner((channels[0], channels[1]), 4, wide)  # background + the run's 3 classes
    assert refiner.proj.weight.shape[1] == written.shape[1]  # the same inputs, twice the channels
    torch.nn.init.normal_(refiner.out.weight, std=0.1)
    tensors.update({f"refiner.{k}": v for k, v in refiner.state_dict().items()})
    save_artifact(run_dir / "student", tensors, config)
    grown = write_multiclass_folder(
        tmp_path / "grown", [f"g{i}" for i in range(8)], [*tiny_data.multi_classes, "yellow"], seed=5
    )
    run = api.distill(_cfg(grown, tmp_path / "run", init=run_dir, train={**TINY_TRAIN, "steps": 0}))
    student = load_model(run.run_dir, "student").model
    assert student.refiner.width == wide
    assert torch.equal(student.refiner.out.weight[1], refiner.out.weight[1])  # "red": kept at its place


def test_distill_init_automatic_budget_stops_when_the_new_class_is_covered(tiny_multi_run, tiny_data, tmp_path) -> None:
    """Without --steps a continued run stops at the floors (min_steps, the new class's queries), not the plateau."""
    grown = write_multiclass_folder(
        tmp_path / "grown", [f"g{i}" for i in range(8)], [*tiny_data.multi_classes, "yellow"], seed=5
    )
    train = {**TINY_TRAIN, "steps": None, "min_steps": 3, "max_steps": 500, "queries_per_class": 12}
    run = api.distill(_cfg(grown, tmp_path / "run", init=tiny_multi_run.run_dir, train=train))
    queries = run.stats["class_queries"]
    assert "continued run" in run.stats["stop_reason"]
    assert run.stats["steps"] >= 3 and queries[3] >= 12
    # it stopped at the first step that covered the new class (one query + a student batch of 4 per step at most)
    assert queries[3] < 12 + 5 or run.stats["steps"] == 3
    # the new class is a query target as often as the three kept ones together
    assert queries[3] >= max(queries[:3])


def test_distill_init_bad_input_is_one_sentence(tiny_multi_run, tiny_data, tmp_path) -> None:
    smaller = write_multiclass_folder(tmp_path / "smaller", [f"s{i}" for i in range(4)], ["red", "green"], seed=6)
    runner = CliRunner()
    base = ["distill", "--support", str(smaller), "--backbone", "test-resnet", "--size", "64", "--steps", "1",
            "--device", "cpu", "--init", str(tiny_multi_run.run_dir)]  # fmt: skip
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert_user_error(result, "Class 'blue'", "--drop-class blue")
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--drop-class", "blue"])
    assert result.exit_code == 0, result.output
    assert "dropped blue" in result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--drop-class", "blue", "--size", "96"])
    assert_user_error(result, "--init continues", "size")
    result = runner.invoke(
        app, ["distill", "--support", str(smaller), "--drop-class", "blue", "--out", str(tmp_path / "d")]
    )
    assert_user_error(result, "--drop-class only applies with --init")
    only_student = tmp_path / "only_student"
    only_student.mkdir()
    (only_student / "student").symlink_to(tiny_multi_run.run_dir / "student", target_is_directory=True)
    result = runner.invoke(app, [*base[:-1], str(only_student), "--out", str(tmp_path / "e")])
    assert_user_error(result, "--init needs a run with its teacher")
    # a distill stopped before its student: told to finish it (it was called "an adapt run?")
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "teacher").symlink_to(tiny_multi_run.run_dir / "teacher", target_is_directory=True)
    result = runner.invoke(app, [*base[:-1], str(stopped), "--out", str(tmp_path / "f")])
    assert_user_error(result, "stopped before its student was saved", f"--teacher {stopped / 'teacher'} --out")
    adapted = tmp_path / "adapted"  # an adapt run: told to use --teacher (it was told to evaluate it)
    tiny = ["--backbone", "test-resnet", "--size", "64", "--device", "cpu", "--quiet"]
    adapt = ["adapt", "--support", str(tiny_data.multi), "--steps", "1", "--out", str(adapted), *tiny]
    assert runner.invoke(app, adapt).exit_code == 0
    result = runner.invoke(app, [*base[:-1], str(adapted), "--out", str(tmp_path / "f")])
    assert_user_error(result, "has no student", f"--teacher {adapted / 'teacher'}")
    # a run distilled from a frozen teacher kept elsewhere (it was told "pass --model …", an option distill lacks)
    frozen = tmp_path / "frozen"
    distill = ["distill", "--support", str(tiny_data.multi), "--teacher", str(adapted / "teacher"), "--freeze-teacher",
               "--steps", "1", "--out", str(frozen), *tiny]  # fmt: skip
    assert runner.invoke(app, distill).exit_code == 0
    result = runner.invoke(app, [*base[:-1], str(frozen), "--out", str(tmp_path / "f")])
    assert_user_error(result, "learned from the frozen teacher", f"--teacher {adapted / 'teacher'} instead")
    # an artifact of the run instead of the run, and a path that is not there
    result = runner.invoke(app, [*base[:-1], str(tiny_multi_run.run_dir / "student"), "--out", str(tmp_path / "g")])
    assert_user_error(result, f"--init takes a run folder: pass {tiny_multi_run.run_dir}, not its student/.")
    result = runner.invoke(app, [*base[:-1], str(tmp_path / "nope"), "--out", str(tmp_path / "h")])
    assert_user_error(result, "does not exist; pass the folder of the run to continue")
    # the run continued into itself: a stop between its two saves left neither (refused before anything)
    result = runner.invoke(app, [*base, "--out", str(tiny_multi_run.run_dir), "--overwrite"])
    assert_user_error(result, "name the same run", "new --out")


def test_init_continues_a_student_wider_than_its_teachers_record(tiny_data, tmp_path) -> None:
    """distill --teacher RUN/teacher --out RUN --student-width 16 over a teacher that records width 8: --init RUN
    takes the student's own width (it crashed copying width-16 ConvDist blocks into a width-8 student)."""
    runner = CliRunner()
    tiny = ["--backbone", "test-resnet", "--size", "64", "--device", "cpu", "--quiet"]
    run = tmp_path / "run"
    adapt = ["adapt", "--support", str(tiny_data.binary), "--steps", "1", "--out", str(run), *tiny]
    assert runner.invoke(app, adapt).exit_code == 0
    distill = ["distill", "--support", str(tiny_data.binary), "--steps", "1", "--teacher", str(run / "teacher")]
    result = runner.invoke(app, [*distill, "--out", str(run), "--student-width", "16", *tiny])
    assert result.exit_code == 0, result.output
    more = ["distill", "--support", str(tiny_data.binary), "--init", str(run), "--steps", "1", "--device", "cpu"]
    result = runner.invoke(app, [*more, "--out", str(tmp_path / "more"), "-q"])
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "more", kind="student").model_cfg.student_width == 16


def test_a_run_on_imported_teacher_weights_replays_with_its_teacher() -> None:
    """A --teacher-weights run records its model settings as given (qk_norm 2.0) while its teacher runs the
    published attention (qk_norm None): its own config passed back with --init / --teacher was refused."""
    from fsdistill.api.training import _refuse_other_model_settings

    recorded = ModelCfg.model_validate({**TINY_MODEL, "teacher_weights": "w.pth", "qk_norm": 2.0})
    teacher = ModelCfg(**TINY_MODEL, teacher_weights="w.pth").model_copy(update={"qk_norm": None})
    _refuse_other_model_settings(recorded, teacher, "The teacher runs")
    with pytest.raises(ConfigError, match="size"):
        _refuse_other_model_settings(recorded.model_copy(update={"size": 96}), teacher, "The teacher runs")
    # against an ordinary teacher the setting named is the one given, not the qk_norm it implies
    only_weights = ModelCfg.model_validate({**TINY_MODEL, "teacher_weights": "w.pth"})
    with pytest.raises(ConfigError, match=r"\(teacher_weights None\), but --teacher-weights .*w.pth was given"):
        _refuse_other_model_settings(only_weights, ModelCfg(**TINY_MODEL), "The teacher runs")


def test_init_says_when_the_folder_reorders_the_classes(tiny_multi_run, tmp_path) -> None:
    """A names file listing the run's classes in another order moved them to other ids and colours in the new
    model's masks, silently; and --steps 0 said the continued student was untrained."""
    reordered = write_multiclass_folder(tmp_path / "reordered", [f"r{i}" for i in range(6)], ["blue", "red", "green"])
    result = CliRunner().invoke(app, ["distill", "--support", str(reordered), "--backbone", "test-resnet", "--size",
                                      "64", "--steps", "0", "--device", "cpu", "--init", str(tiny_multi_run.run_dir),
                                      "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "note: class ids (mask values and colours) differ from" in result.output
    assert "blue 3→1, red 1→2, green 2→3" in result.output
    assert "untrained" not in result.output
    recorded = load_model(tmp_path / "run", "student").config["training"]["init"]["moved"]
    assert recorded == {"blue": [3, 1], "red": [1, 2], "green": [2, 3]}


def test_the_shared_groups_refusal_comes_before_the_run_folder(tiny_data, tmp_path) -> None:
    """The refusal came after the run folder was made and the supports' features cached."""
    shared = {**TINY_MODEL, "decoder": "shared"}
    run = api.distill(
        {"support": tiny_data.multi, "out": tmp_path / "run", "device": "cpu", "model": shared, "train": TINY_TRAIN},
        quiet=True,
    )
    smaller = write_multiclass_folder(tmp_path / "smaller", [f"s{i}" for i in range(4)], ["red", "green"], seed=6)
    cfg = load_config(
        DistillCfg,
        None,
        {"support": smaller, "out": tmp_path / "grown", "device": "cpu", "init": run.run_dir,
         "drop_class": ["blue"], "train": TINY_TRAIN},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="would have 2 ConvDist groups where the run's shared decoder has 3"):
        api.distill(cfg, quiet=True)
    assert not (tmp_path / "grown").exists()
