"""benchmarks/ways_scaling.py: its table has one row per ways value and bad values are one argparse error."""

from __future__ import annotations

import json

import pytest

from helpers import load_benchmark


@pytest.fixture(scope="module")
def ways_scaling():
    return load_benchmark("ways_scaling")


def test_a_repeated_ways_value_is_measured_once(ways_scaling, tmp_path) -> None:
    """--ways 1,1,2 wrote each row twice with an extra column (and the first row's backbone time)."""
    out = tmp_path / "ws"
    ways_scaling.main(["--ways", "1,1,2", "--variants", "light:8", "--size", "64", "--rounds", "1", "--warmup", "0",
                       "--threads", "1", "--out", str(out)])  # fmt: skip
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["ways"] for r in rows] == [1, 2]
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in table] == ["| 1", "| 2"]
    assert all(line.count("|") == 4 for line in table)  # ways, one variant, backbone ms


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ways", "0"], "--ways must be at least 1"),
        (["--ways", "x"], "--ways must be comma-separated whole numbers"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--variants", "light"], "--variants entry 'light' is not decoder:student_width"),
        (["--size", "100"], "--size must be a multiple of 32"),
    ],
)
def test_bad_values_are_one_error(ways_scaling, tmp_path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exited:
        ways_scaling.main([*args, "--out", str(tmp_path / "ws")])
    assert exited.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()
