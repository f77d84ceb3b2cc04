"""benchmarks/distill_wall.py: the folder it derives (the first classes kept) and a smoke run through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import load_benchmark, write_multiclass_folder


@pytest.fixture(scope="module")
def distill_wall():
    return load_benchmark("distill_wall")


def test_keep_first_classes_turns_the_later_classes_into_background(distill_wall, tmp_path) -> None:
    source = write_multiclass_folder(tmp_path / "src", [f"m{i}" for i in range(4)], ["red", "green", "blue"])
    mask = np.array(Image.open(source / "masks" / "m0.png"))
    mask[:2] = 255  # an ignored band stays ignored
    Image.fromarray(mask).save(source / "masks" / "m0.png")
    kept = distill_wall.keep_first_classes(source, tmp_path / "out", 2)
    assert kept == ["background", "red", "green"]
    assert (tmp_path / "out" / "classes.txt").read_text().split() == kept
    for path in sorted((source / "masks").iterdir()):
        before = np.array(Image.open(path))
        after = np.array(Image.open(tmp_path / "out" / "masks" / path.name))
        assert np.array_equal(after, np.where(before == 3, 0, before))  # blue (3) gone, 255 and 1–2 kept
        assert (tmp_path / "out" / "images" / path.name).read_bytes() == (source / "images" / path.name).read_bytes()
    for bad in (0, 4):
        with pytest.raises(SystemExit, match="choose 1 to 3"):
            distill_wall.keep_first_classes(source, tmp_path / f"bad{bad}", bad)


def test_smoke_run_writes_one_row_per_precision(distill_wall, tmp_path) -> None:
    source = write_multiclass_folder(tmp_path / "src", [f"m{i}" for i in range(4)], ["red", "green", "blue"])
    out = tmp_path / "out"
    report = distill_wall.main([
        "--support", str(source), "--classes", "2", "--steps", "2", "--size", "64", "--threads", "1",
        "--precision", "float32", "bfloat16", "--out", str(out),
    ])  # fmt: skip
    assert [row["precision"] for row in report["runs"]] == ["float32", "bfloat16"]
    assert all(row["steps"] == 2 and row["wall_s"] > 0 for row in report["runs"])
    assert report["meta"]["supports"] == 4 and report["meta"]["classes"] == 2
    assert json.loads((out / "results.json").read_text()) == report
    table = (out / "results.md").read_text()
    assert "4 supports × 2 classes at 64 px" in table and "| float32 | float32 | 2 + " in table
