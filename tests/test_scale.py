"""Scaling predict out: ``--shard I/N`` (job arrays) and the Ray engine (``--engine ray``, skipped without ray)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.errors import ConfigError
from fsdistill.infer.shard import Shard, parse_shard

from helpers import SynData, assert_user_error


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Seven small images of varied sizes (two in a subfolder), and one corrupt file."""
    root = tmp_path_factory.mktemp("scale_in")
    for i, (h, w) in enumerate([(40, 52), (64, 64), (37, 81), (50, 33), (72, 60), (45, 45), (66, 39)]):
        image = SynData.image(h, w, i)
        image[h // 4 : h // 2, w // 3 : 2 * w // 3] = (40 * i % 255, 200, 90)
        path = root / ("sub" if i >= 5 else "") / f"img{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    (root / "broken.png").write_bytes(b"not a png at all")
    return root


def _predict(root, out, model, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("workers", 0)
    kw.setdefault("batch_size", 2)
    return api.predict([root], out, model, **kw)


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _outputs(root):
    """What must be identical between two ways of predicting one folder: masks, overlays and predictions.csv."""
    return {k: v for k, v in _tree(root).items() if k.split("/")[0] in ("masks", "overlays") or k == "predictions.csv"}


@pytest.fixture(scope="module")
def reference(shaken_multi_student, folder, tmp_path_factory):
    """An unsharded local predict of ``folder`` (with overlays): the outputs every other way must reproduce."""
    out = tmp_path_factory.mktemp("scale_ref") / "out"
    result = _predict(folder, out, shaken_multi_student, overlay=True)
    assert result.written == 7 and len(result.failed) == 1
    classes = {int(v) for p in (out / "masks").rglob("*.png") for v in np.unique(np.asarray(Image.open(p)))}
    assert classes == {0, 1, 2, 3}  # the byte comparisons can tell masks apart
    return out


# --- --shard ---------------------------------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert parse_shard("1/4") == Shard(1, 4) and parse_shard(" 0 / 1 ") == Shard(0, 1) and parse_shard(None) is None
    for bad in ("4/4", "-1/2", "1/0", "1", "a/b", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    assert Shard(1, 3).select(list(range(8))) == [1, 4, 7]


def test_shards_partition_the_images_and_merge_to_the_unsharded_outputs(
    shaken_multi_student, folder, reference, tmp_path
) -> None:
    out = tmp_path / "out"
    first = _predict(folder, out, shaken_multi_student, overlay=True, shard="0/2")
    assert first.csv_path == out / "predictions.shard-0-of-2.csv"
    assert not (out / "predictions.csv").exists()  # not before every shard is done
    second = _predict(folder, out, shaken_multi_student, overlay=True, shard="1/2")
    assert second.csv_path == out / "predictions.csv"
    # Round-robin over the sorted list (broken.png is image 0, so shard 0 has it): no image twice, none missing.
    assert (first.written, len(first.failed)) == (3, 1) and (second.written, len(second.failed)) == (4, 0)
    masks0 = {r["image"] for r in _csv_rows(out / "predictions.shard-0-of-2.csv")}
    masks1 = {r["image"] for r in _csv_rows(out / "predictions.shard-1-of-2.csv")}
    assert not masks0 & masks1 and len(masks0 | masks1) == 7
    assert _outputs(out) == _outputs(reference)
    # A shard run again resumes (nothing to do) and merges again to the same table.
    again = _predict(folder, out, shaken_multi_student, overlay=True, shard="0/2")
    assert again.written == 0 and again.skipped == 3 and _outputs(out) == _outputs(reference)
    # An unsharded run over the sharded folder predicts nothing and writes the same table too.
    whole = _predict(folder, out, shaken_multi_student, overlay=True)
    assert whole.written == 0 and whole.skipped == 7 and _outputs(out) == _outputs(reference)
    assert not list(out.rglob("*.tmp"))


def test_shard_tables_of_a_file_name_that_is_not_utf8_merge(shaken_multi_student, tmp_path) -> None:
    """The shard tables keep a Latin-1 name's bytes (predictions.csv crashed on it before); merging them decoded
    the tables strictly and crashed at the last shard."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    for name in (os.fsdecode(b"caf\xe9.png"), "plain.png"):
        Image.fromarray(SynData.image(30, 40, 1)).save(folder / name)
    out = tmp_path / "out"
    _predict(folder, out, shaken_multi_student, shard="0/2")
    merged = _predict(folder, out, shaken_multi_student, shard="1/2")
    assert merged.csv_path == out / "predictions.csv"
    assert b"caf\xe9.png" in (out / "predictions.csv").read_bytes()


def test_a_shard_rerun_with_another_spelling_of_the_inputs_keeps_every_row(
    shaken_multi_student, folder, tmp_path, monkeypatch
) -> None:
    """Shard 0 rerun with the folder as a relative path: the merge matched rows by the string as typed and lost
    the other shard's half of predictions.csv."""
    out = tmp_path / "out"
    for index in (0, 1):
        _predict(folder, out, shaken_multi_student, shard=f"{index}/2")
    complete = {r["image"] for r in _csv_rows(out / "predictions.csv")}
    monkeypatch.chdir(folder.parent)
    _predict(Path(folder.name), out, shaken_multi_student, shard="0/2")
    merged = _csv_rows(out / "predictions.csv")
    assert {Path(r["image"]).resolve() for r in merged} == {Path(p).resolve() for p in complete}


def _csv_rows(path):
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_shard_with_a_format_is_refused(shaken_multi_student, folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        _predict(folder, tmp_path / "out", shaken_multi_student, shard="0/2", formats="coco")


def test_cli_bad_shard_is_one_sentence_and_exit_2(shaken_multi_student, folder, tmp_path) -> None:
    runner = CliRunner()
    for bad in ("2/2", "x"):
        result = runner.invoke(
            app,
            ["predict", str(folder), "-o", str(tmp_path / "out"), "--model", str(shaken_multi_student)]
            + ["--shard", bad, "--device", "cpu", "--quiet"],
        )
        assert_user_error(result, "--shard")
    result = runner.invoke(
        app,
        ["suggest", str(folder), "--model", str(shaken_multi_student), "--shard", "3/3", "--device", "cpu", "--quiet"],
    )
    assert_user_error(result, "--shard")


def test_suggest_shard_scores_only_its_images(shaken_multi_student, folder) -> None:
    whole = api.suggest(folder, shaken_multi_student, top=20, device="cpu", workers=0, student_only=True)
    parts = [
        api.suggest(folder, shaken_multi_student, top=20, device="cpu", workers=0, student_only=True, shard=f"{i}/3")
        for i in range(3)
    ]
    images = [{row.image for row in part.ranking} | {path for path, _ in part.failed} for part in parts]
    assert sum(len(s) for s in images) == 8 and set().union(*images) == (
        {row.image for row in whole.ranking} | {path for path, _ in whole.failed}
    )
    scores = {row.image: row.scores.score for row in whole.ranking}
    for part in parts:
        for row in part.ranking:
            assert row.scores.score == pytest.approx(scores[row.image], abs=1e-6)


# --- --engine ray ----------------------------------------------------------------------------------------------


def test_missing_ray_extra_is_one_sentence_and_exit_2(shaken_multi_student, folder, tmp_path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = CliRunner().invoke(
        app,
        ["predict", str(folder), "-o", str(tmp_path / "out"), "--model", str(shaken_multi_student)]
        + ["--engine", "ray", "--device", "cpu", "--quiet"],
    )
    assert_user_error(result, "pip install 'fsdistill[ray]'")
    assert not (tmp_path / "out").exists()


def test_ray_options_need_the_ray_engine(shaken_multi_student, folder, tmp_path) -> None:
    with pytest.raises(ConfigError, match="--engine ray"):
        _predict(folder, tmp_path / "out", shaken_multi_student, address="auto")
    with pytest.raises(ConfigError, match="engine"):
        _predict(folder, tmp_path / "out", shaken_multi_student, engine="spark")


@pytest.mark.ray
def test_ray_engine_writes_the_local_outputs_and_resumes(
    ray_cluster, shaken_multi_student, folder, reference, tmp_path
) -> None:
    out = tmp_path / "out"
    result = _predict(folder, out, shaken_multi_student, overlay=True, engine="ray", workers=2)
    assert result.written == 7 and result.skipped == 0
    assert [path for path, _ in result.failed] == [str(folder / "broken.png")]  # an image's error, not the job's
    assert str(folder / "broken.png") in result.failed[0][1]
    assert _outputs(out) == _outputs(reference)
    assert (out / ".fsdistill-predict.json").read_bytes() == (reference / ".fsdistill-predict.json").read_bytes()
    # Resume: only the images without a mask go to the cluster.
    (out / "masks" / "img3.png").unlink()
    again = _predict(folder, out, shaken_multi_student, overlay=True, engine="ray", workers=1)
    assert again.written == 1 and again.skipped == 6 and _outputs(out) == _outputs(reference)


@pytest.mark.ray
def test_ray_engine_with_a_shard(ray_cluster, shaken_multi_student, folder, reference, tmp_path) -> None:
    out = tmp_path / "out"
    _predict(folder, out, shaken_multi_student, overlay=True, shard="0/2")
    _predict(folder, out, shaken_multi_student, overlay=True, shard="1/2", engine="ray", workers=1)
    assert _outputs(out) == _outputs(reference)


@pytest.mark.ray
def test_ray_engine_scored_format_equals_local(ray_cluster, shaken_multi_student, folder, tmp_path) -> None:
    """coco carries per-component scores: the actors return the class probabilities as well as the masks."""
    local = _predict(folder / "sub", tmp_path / "local", shaken_multi_student, formats="coco")
    remote = _predict(folder / "sub", tmp_path / "ray", shaken_multi_student, formats="coco", engine="ray", workers=1)
    assert local.written == remote.written == 2
    assert _tree(tmp_path / "ray") == _tree(tmp_path / "local")  # masks (scores inside), CSV, coco.json, manifest


@pytest.mark.ray
def test_ray_suggest_equals_local(ray_cluster, tiny_multi_run, shaken_multi_student, folder) -> None:
    """suggest --engine ray: the actors load student and teacher, score, and the driver ranks as a local run."""
    kw = {"top": 20, "device": "cpu", "teacher": tiny_multi_run.run_dir / "teacher"}
    local = api.suggest(folder, shaken_multi_student, workers=0, **kw)
    remote = api.suggest(folder, shaken_multi_student, engine="ray", workers=2, **kw)
    assert remote.failed == local.failed and [path for path, _ in remote.failed] == [str(folder / "broken.png")]
    assert [row.image for row in remote.ranking] == [row.image for row in local.ranking]
    # Ray's actors run torch on one thread, this process on torch's default: the same sums in another order can
    # differ in the last bits of a float32, so scores agree to a tolerance (the ranking above exactly).
    for ours, theirs in zip(remote.ranking, local.ranking):
        assert ours.duplicate_of == theirs.duplicate_of
        for field in ("score", "uncertainty", "disagreement", "class_disagreement", "fractions"):
            assert getattr(ours.scores, field) == pytest.approx(getattr(theirs.scores, field), abs=1e-5), field
    assert remote.teacher == local.teacher and remote.teacher is not None


def test_suggest_ray_options_need_the_ray_engine(shaken_multi_student, folder) -> None:
    with pytest.raises(ConfigError, match="--engine ray"):
        api.suggest(folder, shaken_multi_student, device="cpu", student_only=True, gpus_per_worker=1)
    with pytest.raises(ConfigError, match="engine"):
        api.suggest(folder, shaken_multi_student, device="cpu", student_only=True, engine="spark")


def test_cuda_actors_without_gpus_are_refused_before_any_work(shaken_multi_student, folder, tmp_path) -> None:
    """Ray gives an actor that asks for no GPU none: --device cuda then needs --gpus-per-worker, said up front."""
    pytest.importorskip("ray.data")
    with pytest.raises(ConfigError, match="--gpus-per-worker 1"):
        api.predict([folder], tmp_path / "out", shaken_multi_student, device="cuda", engine="ray")
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
def test_gpus_asked_of_a_cluster_without_them_are_refused(ray_cluster, shaken_multi_student, folder, tmp_path) -> None:
    """--gpus-per-worker 1 on a cluster with no GPU: Ray waited forever to place the actors (no error, no exit)."""
    with pytest.raises(ConfigError, match="has 0 GPUs but --gpus-per-worker 1 was asked"):
        api.predict([folder], tmp_path / "out", shaken_multi_student, device="cpu", engine="ray", gpus_per_worker=1)


@pytest.mark.parametrize(
    "address, fragment",
    [("bogus", "expected auto, HOST:PORT or ray://HOST:PORT"), ("127.0.0.1:1", "nothing answers there")],
)
def test_a_ray_address_nothing_answers_at_is_one_sentence(address, fragment) -> None:
    """An unreachable --address made Ray retry for minutes, printing a line each time; a malformed one was a
    ValueError traceback, exit 1."""
    from fsdistill.infer.ray_engine import _check_reachable

    with pytest.raises(ConfigError, match=fragment):
        _check_reachable(address, timeout=1.0)
    _check_reachable("auto")
    _check_reachable(None)


class _DiesOnce:
    """A Ray Data actor whose first batch kills its process (as an out-of-memory kill would) unless ``marker``
    exists; it creates the marker first, so the restarted actor and every later batch go through."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, batch: dict) -> dict:
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return {"index": batch["index"], "path": batch["path"], "pid": np.full(len(batch["index"]), os.getpid())}


@pytest.mark.ray
def test_an_actor_that_dies_is_restarted_and_its_batch_retried(ray_cluster, tmp_path) -> None:
    """The engine's actor pool (fsdistill.infer.ray_engine._map_paths, which predict, suggest and pool labelling
    use) gets every row back exactly once though an actor's process died in the middle of a batch."""
    from ray import cloudpickle

    from fsdistill.infer.ray_engine import _map_paths

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    marker = tmp_path / "died"
    paths = [f"image{i}.png" for i in range(40)]
    batches = list(_map_paths(ray_cluster, None, paths, _DiesOnce, {"marker": str(marker)}, {}, 8, 1, 0))
    assert marker.exists()  # an actor did die
    indices = sorted(int(i) for batch in batches for i in batch["index"])
    assert indices == list(range(len(paths)))
    assert sorted(str(p) for batch in batches for p in batch["path"]) == sorted(paths)


def test_ray_start_up_lines_written_to_the_stderr_file_descriptor_are_silenced(capfd) -> None:
    """Ray's C++ core printed "logging.cc:303: Set ray log level from environment variable …" on every
    --engine ray command (it writes to descriptor 2 directly); silenced while Ray starts, and only then."""
    import os

    from fsdistill.infer.ray_engine import _stderr_silenced

    with _stderr_silenced():
        os.write(2, b"from C++\n")
    os.write(2, b"after\n")
    with pytest.raises(ValueError), _stderr_silenced():
        raise ValueError("restored after an error too")
    os.write(2, b"still there\n")
    assert capfd.readouterr().err == "after\nstill there\n"
