"""fsdistill suggest: the scoring functions on hand-made masks, the ranking rule, copying, and the command end to end.

Model-level tests use ``shaken_multi_student`` (a tiny student that predicts every class) with the teacher of
``tiny_multi_run``; tests that need a controlled teacher-student disagreement replace ``SuggestScorer.infer``.
"""

from __future__ import annotations

import csv
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.errors import CheckpointError, ConfigError, DataError
from fsdistill.infer import suggest as suggest_module
from fsdistill.infer.suggest import (
    class_disagreement,
    class_uncertainty,
    copy_images,
    csv_header,
    least_confidence,
    score_batch,
    spread_ranking,
)
from fsdistill.models.teacher import DCAMATeacher

from helpers import SynData, assert_user_error

CLASSES = ["background", "red", "green", "blue"]  # tiny_multi_run's


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _image(seed: int, size: int = 48) -> np.ndarray:
    """A smooth image with a coloured square (different per seed), like the images the shaken student segments."""
    image = SynData.image(size, size + 8, seed)
    colour = np.random.default_rng(seed).integers(0, 255, 3)
    image[size // 4 : size // 2, size // 3 : 2 * size // 3] = colour
    return image


def _pool(root: Path, seeds: range | list[int]) -> Path:
    for seed in seeds:
        SynData.save(root / f"p{seed}.png", _image(seed))
    return root


def _one_axis_each(images: torch.Tensor, dims: int = 4096) -> torch.Tensor:
    """B×dims one-hot embeddings, the axis a checksum of each image's pixels: distinct images lie √2 apart."""
    ids = [zlib.crc32(image.numpy().tobytes()) % dims for image in images]
    return torch.nn.functional.one_hot(torch.tensor(ids), dims).float()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- scoring functions on hand-made masks -----------------------------------------------------------------------


def test_per_class_disagreement_on_a_hand_made_case() -> None:
    """Class 1: student 4 pixels, teacher 2 of them + 2 others (IoU 2/6); class 2 identical; class 3 in neither."""
    student = torch.zeros(1, 4, 4, dtype=torch.long)
    teacher = torch.zeros(1, 4, 4, dtype=torch.long)
    student[0, 0, :4] = 1
    teacher[0, 0, :2] = 1
    teacher[0, 1, :2] = 1
    student[0, 3, :2] = 2
    teacher[0, 3, :2] = 2
    values, present = class_disagreement(student, teacher, num_labels=4)
    assert values[0].tolist() == pytest.approx([1 - 2 / 6, 0.0, 0.0])
    assert present[0].tolist() == [True, True, False]
    probs = torch.full((1, 4, 4, 4), 0.25)  # every label equally likely: uncertainty 1 everywhere
    score = score_batch(probs, student, teacher)[0]
    assert score.class_disagreement == pytest.approx([2 / 3, 0.0, 0.0])
    assert score.disagreement == pytest.approx((2 / 3 + 0.0) / 2)  # mean over the two classes present, not three
    assert score.uncertainty == pytest.approx(1.0)
    assert score.score == pytest.approx((score.disagreement + 1.0) / 2)
    assert score.fractions == pytest.approx([10 / 16, 4 / 16, 2 / 16, 0.0])  # the student's mask


def test_disjoint_masks_disagree_fully_and_identical_masks_not_at_all() -> None:
    a = torch.zeros(2, 3, 3, dtype=torch.long)
    b = torch.zeros(2, 3, 3, dtype=torch.long)
    a[0, 0, 0] = 1
    b[0, 2, 2] = 1  # image 0: class 1 in both, no overlap
    a[1, 1, 1] = b[1, 1, 1] = 2  # image 1: class 2 the same pixel
    values, present = class_disagreement(a, b, num_labels=3)
    assert values.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert present.tolist() == [[True, False], [False, True]]


def test_least_confidence_is_scaled_to_0_1() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]).T.reshape(1, 3, 1, 3)
    assert least_confidence(probs)[0, 0].tolist() == pytest.approx([0.0, 1.0, 0.75])


def test_uncertainty_is_per_class_not_diluted_by_background() -> None:
    """A 2-pixel object the student is unsure of, in a 100-pixel image of confident background: the image's
    uncertainty is the object's (a whole-image mean would be 50 times smaller)."""
    probs = torch.zeros(1, 2, 10, 10)
    probs[0, 0] = 1.0
    student = torch.zeros(1, 10, 10, dtype=torch.long)
    probs[0, :, 0, :2] = 0.5  # the object: p = (0.5, 0.5), least confidence 1
    student[0, 0, 0] = 1  # the student labels one pixel of it, the teacher the other
    teacher = torch.zeros_like(student)
    teacher[0, 0, 1] = 1
    values, present = class_uncertainty(probs, student, teacher)
    assert values[0].tolist() == pytest.approx([2 / 100, 1.0])  # background: all 100 pixels (each model 99)
    assert present[0].tolist() == [True, True]
    score = score_batch(probs, student, teacher)[0]
    assert score.uncertainty == pytest.approx(1.0)
    assert score.disagreement == pytest.approx(1.0)
    alone = score_batch(probs, student)[0]  # no teacher: the student's region only, and the score is the uncertainty
    assert alone.disagreement is None and alone.class_disagreement is None
    assert alone.uncertainty == pytest.approx(1.0) and alone.score == alone.uncertainty


def test_an_image_without_foreground_scores_its_background_uncertainty() -> None:
    probs = torch.zeros(1, 2, 2, 2)
    probs[0, 0], probs[0, 1] = 0.8, 0.2  # background everywhere at 0.8: least confidence 0.4
    empty = torch.zeros(1, 2, 2, dtype=torch.long)
    score = score_batch(probs, empty, empty)[0]
    assert score.disagreement == 0.0 and score.class_disagreement == [0.0]
    assert score.uncertainty == pytest.approx(0.4)


# --- the ranking rule -------------------------------------------------------------------------------------------


def _unit(*rows: list[float]) -> np.ndarray:
    e = np.array(rows, dtype=np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_exact_duplicates_are_skipped_and_ranked_after_the_others() -> None:
    emb = _unit([1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1])
    order, duplicates = spread_ranking(np.array([0.9, 0.9, 0.5, 0.4]), emb, ["a", "a_copy", "b", "c"], top=2)
    assert order == [0, 2, 3, 1]
    assert duplicates == {1: 0}


def test_a_close_neighbour_of_a_pick_is_pushed_below_a_distant_lower_score() -> None:
    """A 1.0, B 0.9 next to A (distance ~0.1), C 0.5 far away: B's value 0.9 × 0.1/d_ref falls below C's 0.5."""
    angle = 0.1
    emb = _unit([1, 0, 0], [np.cos(angle), np.sin(angle), 0], [0, 0, 1])
    order, duplicates = spread_ranking(np.array([1.0, 0.9, 0.5]), emb, ["a", "b", "c"], top=3)
    assert order == [0, 2, 1] and duplicates == {}
    # With the images all far apart the ranking is the score order, ties broken by name.
    order, _ = spread_ranking(np.array([0.2, 0.7, 0.7, 0.1]), np.eye(4, dtype=np.float32), ["d", "c", "b", "a"], top=4)
    assert order == [2, 1, 0, 3]


def test_only_the_candidates_are_spread_the_rest_follow_by_score() -> None:
    rng = np.random.default_rng(0)
    emb = _unit(*rng.normal(size=(30, 8)).tolist())
    scores = rng.uniform(size=30)
    order, _ = spread_ranking(scores, emb, [f"i{k:02d}" for k in range(30)], top=2)  # 8 candidates
    by_score = sorted(range(30), key=lambda i: -scores[i])
    assert sorted(order) == list(range(30))
    assert order[0] == by_score[0]
    assert set(order[:8]) == set(by_score[:8]) and order[8:] == by_score[8:]


# --- copying ----------------------------------------------------------------------------------------------------


def test_copy_keeps_names_handles_collisions_and_reruns(tmp_path) -> None:
    a, b, c = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "y.png"
    for path, seed in ((a, 1), (b, 2), (c, 3)):
        SynData.save(path, _image(seed))
    out = tmp_path / "to_label"
    out.mkdir()
    SynData.save(out / "y.png", _image(99))  # a different file already there under y.png: never overwritten
    first = copy_images([a, b, c], out)
    assert [Path(dst).name for _, dst in first.copied] == ["x.png", "x-2.png", "y-2.png"]
    assert (out / "x-2.png").read_bytes() == b.read_bytes()
    assert np.array_equal(np.asarray(Image.open(out / "y.png")), _image(99))
    (out / "x-2.png").unlink()  # as if interrupted before that file
    again = copy_images([a, b, c], out)
    assert [Path(dst).name for _, dst in again.copied] == ["x-2.png"]
    assert [Path(dst).name for _, dst in again.present] == ["x.png", "y-2.png"]
    assert sorted(p.name for p in out.iterdir()) == ["x-2.png", "x.png", "y-2.png", "y.png"]  # no temp files


# --- with models ------------------------------------------------------------------------------------------------


def _controlled_infer(monkeypatch, disagree_on_bright: bool = True) -> None:
    """Replace the models: the student labels the left half red with p = 0.73 on every image; the teacher agrees
    on dark images and labels that half green on bright ones. Embeddings are far apart (one axis per image)."""

    def infer(self, images):
        b = images.shape[0]
        student = torch.zeros(b, 4, 8, 8)
        student[:, 1, :, :4] = 2.0  # red on the left half
        teacher = student.clone()
        bright = images.float().mean(dim=(1, 2, 3)) > 128
        if disagree_on_bright:
            teacher[bright, 1] = 0.0
            teacher[bright, 2, :, :4] = 2.0
        return student, teacher, _one_axis_each(images)

    monkeypatch.setattr(suggest_module.SuggestScorer, "infer", infer)


def test_an_image_the_models_disagree_on_ranks_above_one_they_agree_on(monkeypatch, tiny_multi_run, tmp_path) -> None:
    _controlled_infer(monkeypatch)
    pool = tmp_path / "pool"
    SynData.save(pool / "a_dark.png", np.full((40, 40, 3), 30, np.uint8))
    SynData.save(pool / "b_bright.png", np.full((40, 40, 3), 220, np.uint8))
    result = api.suggest(pool, tiny_multi_run.run_dir, top=2, device="cpu")
    assert [Path(r.image).name for r in result.ranking] == ["b_bright.png", "a_dark.png"]
    bright, dark = (r.scores for r in result.ranking)
    assert bright.class_disagreement == pytest.approx([1.0, 1.0, 0.0])
    assert dark.class_disagreement == [0.0, 0.0, 0.0] and dark.disagreement == 0.0
    assert bright.uncertainty == pytest.approx(dark.uncertainty)  # same student: the difference is disagreement
    assert bright.score > dark.score


def test_ranking_is_by_score_and_deterministic(monkeypatch, shaken_multi_student, tiny_multi_run, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(7))
    kwargs = dict(model=shaken_multi_student, teacher=tiny_multi_run.run_dir, top=7, device="cpu", batch_size=3)
    first = api.suggest(pool, **kwargs)
    second = api.suggest(pool, **kwargs)
    assert first.teacher is not None and first.note is None
    assert [r.rank for r in first.ranking] == list(range(1, 8))
    assert [(r.image, r.scores) for r in first.ranking] == [(r.image, r.scores) for r in second.ranking]
    scores = [r.scores.score for r in first.ranking]
    assert scores[0] == max(scores)
    assert len({round(s, 6) for s in scores}) > 1  # the shaken student gives the images different scores
    # With embeddings all equally far apart, the diversity rule changes nothing: the ranking is the score order.
    real_infer = suggest_module.SuggestScorer.infer

    def orthogonal(self, images):
        student, teacher, _ = real_infer(self, images)
        return student, teacher, _one_axis_each(images)

    monkeypatch.setattr(suggest_module.SuggestScorer, "infer", orthogonal)
    spread = api.suggest(pool, **kwargs)
    assert [r.scores.score for r in spread.ranking] == sorted(scores, reverse=True)


def test_exact_duplicates_are_not_both_in_the_top(shaken_multi_student, tiny_multi_run, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(4))
    shutil.copy(pool / "p2.png", pool / "zz_copy_of_p2.png")
    result = api.suggest(pool, shaken_multi_student, top=4, teacher=tiny_multi_run.run_dir, device="cpu")
    top = {Path(r.image).name for r in result.shown}
    assert len(top) == 4 and not {"p2.png", "zz_copy_of_p2.png"} <= top
    assert top - {"p2.png", "zz_copy_of_p2.png"} == {"p0.png", "p1.png", "p3.png"}
    last = result.ranking[-1]
    assert Path(last.image).name in ("p2.png", "zz_copy_of_p2.png") and last.duplicate_of is not None
    assert {Path(last.image).name, Path(last.duplicate_of).name} == {"p2.png", "zz_copy_of_p2.png"}
    assert sum(r.duplicate_of is not None for r in result.ranking) == 1  # distinct images are not taken for copies


def test_without_a_teacher_the_ranking_is_by_uncertainty_with_a_note(shaken_multi_student, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(3))
    result = api.suggest(pool, shaken_multi_student, top=3, out=tmp_path / "r.csv", device="cpu")
    assert result.teacher is None and "ranked by the student's uncertainty alone" in result.note
    assert all(r.scores.disagreement is None and r.scores.score == r.scores.uncertainty for r in result.ranking)
    rows = _rows(tmp_path / "r.csv")
    assert [row["disagreement"] for row in rows] == ["", "", ""] and rows[0]["disagreement_red"] == ""


def test_student_only_skips_the_teacher_of_a_run_that_has_one(monkeypatch, tiny_multi_run, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(2))

    def no_teacher_pass(*args, **kwargs):
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(DCAMATeacher, "predict_features", no_teacher_pass)
    result = api.suggest(pool, tiny_multi_run.run_dir, student_only=True, device="cpu")
    assert result.teacher is None and result.note is None
    assert all(r.scores.disagreement is None for r in result.ranking)
    with pytest.raises(ConfigError, match="--student-only"):
        api.suggest(pool, tiny_multi_run.run_dir, teacher=tiny_multi_run.run_dir, student_only=True)


def test_api_refuses_bad_options_and_mismatched_teachers(
    tiny_multi_run, tiny_binary_run, shaken_multi_student, tmp_path
) -> None:
    pool = _pool(tmp_path / "pool", range(2))
    with pytest.raises(ConfigError, match="--top must be an integer of at least 1"):
        api.suggest(pool, tiny_multi_run.run_dir, top=0)
    with pytest.raises(DataError, match="does not exist"):
        api.suggest(tmp_path / "nowhere", tiny_multi_run.run_dir)
    with pytest.raises(CheckpointError, match="knows classes"):
        api.suggest(pool, shaken_multi_student, teacher=tiny_binary_run.run_dir, device="cpu")
    with pytest.raises(DataError, match="is a folder"):
        api.suggest(pool, tiny_multi_run.run_dir, out=tmp_path)


# --- the command ------------------------------------------------------------------------------------------------


def test_cli_writes_csv_json_and_copies_the_top(runner, monkeypatch, tiny_multi_run, tmp_path) -> None:
    _controlled_infer(monkeypatch)
    pool = tmp_path / "pool"
    for k in range(5):
        SynData.save(pool / ("sub" if k == 4 else "") / f"i{k}.png", np.full((32, 40, 3), 40 + 45 * k, np.uint8))
    out, js, dest = tmp_path / "ranking.csv", tmp_path / "ranking.json", pool / "to_label"  # copies inside the pool
    args = ["suggest", str(pool), "--model", str(tiny_multi_run.run_dir), "--top", "3", "--out", str(out)]
    args += ["--json", str(js), "--copy-to", str(dest), "--device", "cpu", "--seed", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == csv_header(CLASSES)
    assert header[:5] == ["rank", "image", "score", "disagreement", "uncertainty"]
    assert [c for c in header if c.startswith("disagreement_")] == [
        "disagreement_red",
        "disagreement_green",
        "disagreement_blue",
    ]
    assert [c for c in header if c.startswith("fraction_")] == [f"fraction_{c}" for c in CLASSES]
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert float(rows[0]["fraction_red"]) == pytest.approx(0.5)  # the student's left half
    data = json.loads(js.read_text())
    assert data["images"] == 5 and data["top"] == 3 and data["classes"] == CLASSES and data["failed"] == []
    assert [r["image"] for r in data["ranking"]] == [row["image"] for row in rows]
    first = data["ranking"][0]
    assert set(first) == {
        "rank",
        "image",
        "score",
        "disagreement",
        "uncertainty",
        "disagreement_per_class",
        "fractions",
        "duplicate_of",
    }
    assert first["score"] == pytest.approx(float(rows[0]["score"]), abs=1e-6)
    assert list(first["disagreement_per_class"]) == CLASSES[1:] and list(first["fractions"]) == CLASSES
    copied = sorted(p.name for p in dest.iterdir())
    assert copied == sorted(Path(row["image"]).name for row in rows)
    assert "3 copied (0 already there)" in result.stdout
    assert Path(rows[0]["image"]).name in result.stdout  # the table
    # A rerun does not score the copies inside the pool and copies nothing new.
    again = runner.invoke(app, args + ["--quiet"])
    assert again.exit_code == 0, again.output
    assert json.loads(js.read_text())["images"] == 5
    assert again.stdout == ""


def test_cli_without_model_uses_the_newest_run_and_says_so(runner, monkeypatch, tiny_multi_run, tmp_path) -> None:
    _controlled_infer(monkeypatch)
    shutil.copytree(tiny_multi_run.run_dir, tmp_path / "runs" / "r1")
    _pool(tmp_path / "pool", range(2))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["suggest", "pool", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "newest run under ./runs" in result.stderr


@pytest.mark.parametrize(
    "case", ["missing-pool", "empty-pool", "no-student", "top-0", "teacher-only-model", "out-is-json"]
)
def test_cli_bad_inputs_are_one_sentence_exit_2(runner, case, tiny_multi_run, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(2))
    model = tiny_multi_run.run_dir
    extra: list[str] = []
    if case == "missing-pool":
        pool, fragment = tmp_path / "nowhere", "does not exist"
    elif case == "empty-pool":
        pool = tmp_path / "empty"
        pool.mkdir()
        (pool / "notes.txt").write_text("not an image")
        fragment = "No images found"
    elif case == "no-student":
        model = tmp_path / "adapt_run"
        shutil.copytree(tiny_multi_run.run_dir / "teacher", model / "teacher")
        fragment = "no usable student"
    elif case == "teacher-only-model":
        model, fragment = tiny_multi_run.run_dir / "teacher", "a student is needed"
    elif case == "out-is-json":  # the JSON replaced the CSV, exit 0
        same = str(tmp_path / "ranking.out")
        extra, fragment = ["--out", same, "--json", same], "--out and --json both name"
    else:
        extra, fragment = ["--top", "0"], "--top must be an integer of at least 1"
    result = runner.invoke(app, ["suggest", str(pool), "--model", str(model), "--device", "cpu", *extra])
    assert_user_error(result, fragment)


def test_cli_corrupt_image_is_reported_and_skipped(runner, tiny_multi_run, tmp_path) -> None:
    pool = _pool(tmp_path / "pool", range(2))
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    out = tmp_path / "ranking.csv"
    args = ["suggest", str(pool), "--model", str(tiny_multi_run.run_dir), "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--quiet"])
    assert_user_error(result, "broken.png")
    assert sorted(Path(row["image"]).name for row in _rows(out)) == ["p0.png", "p1.png"]
    pool_only_broken = tmp_path / "bad"
    pool_only_broken.mkdir()
    shutil.copy(pool / "broken.png", pool_only_broken / "broken.png")
    none = runner.invoke(
        app, ["suggest", str(pool_only_broken), "--model", str(tiny_multi_run.run_dir), "--device", "cpu"]
    )
    assert_user_error(none, "None of the 1 images")


def test_the_runs_own_supports_are_left_out_of_the_ranking(runner, tiny_multi_run, tiny_data, tmp_path) -> None:
    """The labelling loop copies labelled images (names kept) into the support folder; a pool that still holds
    them had them suggested again. Pool files named like a support are compared by their pixels: a new image that
    only shares a support's name stays, and a renamed copy is not looked for (each pool image would be decoded)."""
    pool = tmp_path / "pool"
    pool.mkdir()
    supports = sorted((tiny_data.multi / "images").iterdir())[:3]
    shutil.copy(supports[0], pool / "renamed_copy.png")
    shutil.copy(supports[1], pool / supports[1].name)
    shutil.copy(supports[2], pool / supports[2].name)
    SynData.save(pool / "new.png", SynData.image(32, 40, 7))
    SynData.save(pool / "sub" / supports[0].name, SynData.image(32, 40, 9))  # a support's name, other pixels
    args = ["suggest", str(pool), "--model", str(tiny_multi_run.run_dir), "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, [*args, "--device", "cpu", "--student-only"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["images"] == 3
    assert sorted(data["supports_left_out"]) == sorted(str(pool / s.name) for s in supports[1:])
    assert "2 images of the pool are supports of the model" in result.stderr
    for extra in (pool / "new.png", pool / "renamed_copy.png", pool / "sub" / supports[0].name):
        extra.unlink()
    result = runner.invoke(app, [*args, "--device", "cpu", "--student-only"])
    assert_user_error(result, "Every image of the pool is a support of")


def test_a_labelled_folder_as_pool_ranks_its_images_not_its_masks(runner, tiny_multi_run, tiny_data, tmp_path) -> None:
    """images/ + labels/ (a mask folder name that may hold photographs elsewhere, so predict's walk keeps it): the
    masks were ranked as images to label."""
    pool = tmp_path / "labelled"
    shutil.copytree(tiny_data.multi_heldout / "images", pool / "images")
    shutil.copytree(tiny_data.multi_heldout / "masks", pool / "labels")
    images = len(list((pool / "images").iterdir()))
    args = ["suggest", str(pool), "--model", str(tiny_multi_run.run_dir), "--json", str(tmp_path / "r.json")]
    result = runner.invoke(app, [*args, "--device", "cpu", "--student-only"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["images"] == images and len(data["masks_left_out"]) == images
    assert all("/labels/" in row["image"] or "labels" not in row["image"] for row in data["ranking"])
    assert f"{images} files of the pool are masks of a labelled folder" in result.stderr
    result = runner.invoke(app, [*args[:1], str(pool / "labels"), *args[2:], "--device", "cpu", "--student-only"])
    assert result.exit_code == 0  # a folder of masks alone is no labelled folder: its files are ranked as given
