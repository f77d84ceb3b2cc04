"""``distill --unlabeled POOL --engine ray``: the pool labelled on Ray actors gives the local run's tensors.

The Ray tests skip without the ray extra; the option checks run everywhere.
"""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.config import DistillCfg, load_config
from fsdistill.errors import ConfigError
from fsdistill.models.build import load_model
from fsdistill.train.pool import join_pool, label_files

from helpers import TINY_MODEL, TINY_TRAIN, assert_user_error


@pytest.fixture(scope="module")
def pool_dir(tiny_data, tmp_path_factory):
    """Nine unlabeled images (the held-out images of the 3-class folder and its support images mirrored: copies of
    supports would be left out of a pool) and a corrupt one."""
    pool = tmp_path_factory.mktemp("ray_pool") / "pool"
    shutil.copytree(tiny_data.multi_heldout / "images", pool)
    for i, path in enumerate(sorted((tiny_data.multi / "images").iterdir())):
        with Image.open(path) as image:
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(pool / f"s{i}.png")
    (pool / "c_broken.png").write_bytes(b"not a png")
    return pool


def _assert_same_pool(ours, theirs) -> None:
    assert ours is not None and theirs is not None and len(ours) == len(theirs)
    assert torch.equal(ours.labels, theirs.labels) and torch.equal(ours.trusted, theirs.trusted)
    for a, b in zip(ours.coarse, theirs.coarse, strict=True):
        assert torch.equal(a, b)
    for level_a, level_b in zip(ours.feats, theirs.feats, strict=True):
        for a, b in zip(level_a, level_b, strict=True):
            assert torch.equal(a, b)


@pytest.mark.ray
def test_ray_labelling_gives_the_local_tensors(ray_cluster, tiny_pool_models, pool_dir) -> None:
    from fsdistill.config import ModelCfg
    from fsdistill.train.pool_ray import RayPoolLabeller

    teacher, student, cache, _ = tiny_pool_models
    paths = sorted(pool_dir.iterdir())
    assert len(paths) == 10
    # One class the pool does not teach: the trust reaches the actors too.
    trusted = torch.tensor([True] * (teacher.num_classes - 1) + [False])
    # Batches of 4, 4 and 2 files; each image against its nearest support (and one per class it misses).
    args = (paths, TINY_MODEL["size"], "mean", 0.0, trusted, 4, 1)
    local = list(label_files(teacher, student, cache.support[0], *args))
    remote = list(
        RayPoolLabeller("cpu", workers=2).label_files(teacher, ModelCfg(**TINY_MODEL), student, cache.support[0], *args)
    )
    assert [(i, e) for i, e, _ in remote] == [(i, e) for i, e, _ in local]
    broken = [e for _, errors, _ in remote for e in errors]
    assert len(broken) == 1 and broken[0][0] == 0 and str(pool_dir / "c_broken.png") in broken[0][1]
    device = cache.support[0].present.device
    pools = [join_pool([b for _, _, b in results if b is not None], trusted, device) for results in (local, remote)]
    _assert_same_pool(*pools)
    assert 0.0 < pools[0].labelled_fraction() < 1.0  # the untrusted class left pixels out


def _cfg(tiny_data, out, pool):
    train = {**TINY_TRAIN, "pool_min_iou": 0.0}
    overrides = {"support": tiny_data.multi, "out": out, "unlabeled": pool, "device": "cpu", "model": TINY_MODEL}
    return load_config(DistillCfg, None, {**overrides, "train": train})


@pytest.mark.ray
def test_distill_with_the_ray_engine_trains_the_local_student(ray_cluster, tiny_data, pool_dir, tmp_path) -> None:
    local = api.distill(_cfg(tiny_data, tmp_path / "local", pool_dir), quiet=True)
    remote = api.distill(_cfg(tiny_data, tmp_path / "ray", pool_dir), quiet=True, engine="ray", workers=2)
    ours, theirs = remote.stats["pool"], local.stats["pool"]
    assert ours.pop("engine") == "ray" and "engine" not in theirs
    for info in (ours, theirs):
        info.pop("label_seconds")
    assert ours == theirs and ours["images"] == 9 and len(ours["skipped"]) == 1
    # The same labels and coarse maps, so the same training after them: the same student, weight for weight.
    a, b = (load_model(r.run_dir, "student").model.state_dict() for r in (local, remote))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_ray_engine_without_the_extra_is_one_sentence_and_exit_2(
    tiny_data, pool_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as without the extra
    monkeypatch.setitem(sys.modules, "ray.data", None)
    args = ["distill", "--support", str(tiny_data.multi), "--backbone", "test-resnet", "--size", "64", "--steps", "1",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--unlabeled", str(pool_dir), "--engine", "ray"]  # fmt: skip
    assert_user_error(CliRunner().invoke(app, args), "pip install 'fsdistill[ray]'")
    assert not (tmp_path / "run").exists()  # said before anything was trained


def test_engine_options_are_checked_before_training(tiny_data, pool_dir, tmp_path) -> None:
    base = ["distill", "--support", str(tiny_data.multi), "--backbone", "test-resnet", "--size", "64", "--steps", "1",
            "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    runner = CliRunner()
    assert_user_error(runner.invoke(app, [*base, "--unlabeled", str(pool_dir), "--workers", "2"]), "--engine ray")
    assert_user_error(runner.invoke(app, [*base, "--address", "auto"]), "--engine ray")
    assert_user_error(runner.invoke(app, [*base, "--engine", "spark"]), "engine")
    assert not (tmp_path / "run").exists()
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="--unlabeled"):
        api.distill(_cfg(tiny_data, tmp_path / "run", None), engine="ray")
