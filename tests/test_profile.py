"""``fsdistill profile``: tiny grids through the API and the CLI, --model on a tiny run, OOM cells, bad options."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.config import DistillCfg
from fsdistill.errors import ConfigError
from fsdistill.models.build import load_model
from fsdistill.models.teacher import DCAMATeacher
from fsdistill.profiling import CSV_COLUMNS, ProfileCfg, headline_ratios, is_oom, shot_grid

from helpers import SynData

TINY = dict(backbone="test-resnet", size=64, ways=2, shots=5, runs=2, device="cpu")
FILES = ("profile.json", "profile.csv", "profile.md", "profile.png")


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: tiny models time the same, and a loaded machine cannot stall OpenMP barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A distilled test-resnet run at 64 px (teacher + student artifacts) from a synthetic binary folder."""
    root = tmp_path_factory.mktemp("profile_run")
    SynData().paired(root / "support", n=3, size=(48, 56))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = DistillCfg(
            support=root / "support",
            out=root / "run",
            model={"backbone": "test-resnet", "size": 64},
            train={"steps": 1, "episodes_per_step": 1},
            device="cpu",
        )
        api.distill(cfg, quiet=True)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def check_schema(data: dict, ways: list[int], shots: list[int]) -> None:
    assert isinstance(data["device"], str) and data["device"]
    assert isinstance(data["backbone"], str)
    assert isinstance(data["size"], int)
    assert isinstance(data["rows"], list) and data["rows"]
    for row in data["rows"]:
        assert row["model"] in ("teacher", "student", "backbone")
        assert isinstance(row["ways"], int) and isinstance(row["shots"], int)
        assert isinstance(row["params"], int) and row["params"] > 0
        assert isinstance(row["peak_mem_mb"], float)
        assert row["status"] in ("ok", "oom")
        if row["status"] == "ok":
            assert isinstance(row["p50_ms"], float) and isinstance(row["p95_ms"], float)
            assert 0 < row["p50_ms"] <= row["p95_ms"]
            assert row["throughput"] > 0 and row["runs"] >= 1
    for model in ("teacher", "student", "backbone"):
        cells = [(r["ways"], r["shots"]) for r in data["rows"] if r["model"] == model]
        assert sorted(cells) == sorted((w, s) for w in ways for s in shots), model
    assert {"torch", "timm"} <= set(data["versions"]) and data["threads"] >= 1


def check_files(out: Path) -> dict:
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*.tmp"))
    assert (out / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "profile.json").read_text())
    with open(out / "profile.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert list(reader.fieldnames[: len(CSV_COLUMNS)]) == list(CSV_COLUMNS)
        assert len(list(reader)) == len(data["rows"])
    md = (out / "profile.md").read_text()
    assert "| ways | shots | teacher ms" in md and "teacher / student at" in md
    return data


def test_shot_grid():
    assert shot_grid(1) == [1]
    assert shot_grid(5) == [1, 5]
    assert shot_grid(7) == [1, 5, 7]
    assert shot_grid(50) == [1, 5, 10, 25, 50]
    assert shot_grid(60) == [1, 5, 10, 25, 50, 60]


def test_api_tiny_grid(tmp_path):
    result = api.profile(ProfileCfg(**TINY, warmup=0, out=tmp_path / "p"), quiet=True)
    data = check_files(tmp_path / "p")
    check_schema(data, [1, 2], [1, 5])
    assert data == json.loads(json.dumps(result.data))
    assert data["complete"] and data["batch_size"] == 1 and data["cache"] is True
    teacher = [r for r in data["rows"] if r["model"] == "teacher"]
    assert all(r["status"] == "ok" and r["supports"] == r["ways"] * r["shots"] for r in teacher)
    # every student cell pairs its rounds with the backbone's (TINY: 2 timed runs each)
    students = [r for r in data["rows"] if r["model"] == "student"]
    assert students and all(r["runs"] == 2 and r["over_backbone"] > 0 for r in students)
    ratios = data["ratios"]
    assert ratios["largest_cell"] == {"ways": 2, "shots": 5}
    largest = next(r for r in students if (r["ways"], r["shots"]) == (2, 5))
    assert ratios["student_over_backbone"] == largest["over_backbone"]
    for key in ("student_max_over_min", "teacher_over_student", "student_over_backbone"):
        assert ratios[key] > 0
    assert ratios["student_max_over_min"] >= 1.0


def test_student_and_backbone_are_timed_in_predicts_layout(tmp_path):
    """On the CPU predict runs the student channels-last: profile times student and backbone the same way, on
    copies, so the teacher (sharing the backbone in random mode) keeps the default layout."""
    from fsdistill.runtime import inference_memory_format

    cpu = torch.device("cpu")
    assert inference_memory_format(cpu, "student") == torch.channels_last
    assert inference_memory_format(cpu, "teacher") == torch.contiguous_format
    result = api.profile(ProfileCfg(**{**TINY, "ways": 1, "shots": 1}, warmup=0, out=tmp_path / "p"), quiet=True)
    rows = result.data["rows"]
    assert {r["memory_format"] for r in rows if r["model"] in ("student", "backbone")} == {"channels_last"}
    assert all("memory_format" not in r for r in rows if r["model"] == "teacher")
    assert "memory layout: student and backbone channels_last" in (tmp_path / "p" / "profile.md").read_text()


def test_cli_tiny_grid_no_cache(tmp_path):
    out = tmp_path / "cli"
    args = ["profile", "--backbone", "test-resnet", "--size", "64", "--ways", "2", "--shots", "5", "--warmup", "1",
            "--runs", "2", "--device", "cpu", "--no-cache", "--batch-size", "2", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "teacher/student at 2-way 5-shot" in result.output
    data = check_files(out)
    check_schema(data, [1, 2], [1, 5])
    assert data["cache"] is False and data["batch_size"] == 2
    assert all("support_cache_mb" not in r for r in data["rows"])


def test_cli_teacher_max_ways_times_student_and_backbone_beyond_it(tmp_path):
    """--ways beyond --teacher-max-ways: the teacher only in the cells up to it, the student and the backbone in
    every cell, each row with its peak memory; the per-ways ratios and the largest cell's memory are reported."""
    out = tmp_path / "many"
    args = ["profile", "--backbone", "test-resnet", "--size", "64", "--ways", "4", "--shots", "1", "--warmup", "0",
            "--runs", "1", "--device", "cpu", "--teacher-max-ways", "2", "--decoder", "shared", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = check_files(out)
    cells = {(r["model"], r["ways"]) for r in data["rows"]}
    assert cells == {("teacher", 1), ("teacher", 2)} | {(m, w) for m in ("student", "backbone") for w in range(1, 5)}
    assert data["teacher_max_ways"] == 2 and data["teacher_ways"] == [1, 2] and data["decoder"] == "shared"
    assert data["refiner"] is True and all(r["refiner"] for r in data["rows"] if r["model"] == "student")
    assert all(isinstance(r["peak_mem_mb"], float) and r["peak_mem_mb"] >= 0 for r in data["rows"])
    ratios = data["ratios"]
    assert ratios["teacher_cell"] == {"ways": 2, "shots": 1} and ratios["largest_cell"] == {"ways": 4, "shots": 1}
    assert set(ratios["student_over_backbone_by_ways"]) == {"1", "2", "3", "4"}
    assert set(ratios["peak_mem_mb_largest_cell"]) == {"teacher", "student", "backbone"}
    assert "teacher/student at 2-way 1-shot" in result.output and "peak memory (MB" in result.output
    assert "student/backbone by ways: 1: " in result.output
    md = (out / "profile.md").read_text()
    assert "teacher timed up to 2 ways" in md and "| student / backbone |" in md


def test_teacher_max_ways_zero_times_no_teacher(tmp_path):
    result = api.profile(
        ProfileCfg(**{**TINY, "shots": 1}, teacher_max_ways=0, warmup=0, out=tmp_path / "p"), quiet=True
    )
    assert {r["model"] for r in result.rows} == {"student", "backbone"}
    assert result.ratios["teacher_cell"] is None and result.ratios["teacher_over_student"] is None


def test_profile_with_model(tiny_run, tmp_path):
    out = tmp_path / "m"
    result = CliRunner().invoke(
        app, ["profile", "--model", str(tiny_run), "--shots", "2", "--warmup", "0", "--runs", "2", "--device", "cpu",
              "--out", str(out), "--quiet"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = check_files(out)
    check_schema(data, [1], [1, 2])
    assert data["backbone"] == "test-resnet" and data["size"] == 64
    assert data["weights"] == "run artifacts" and set(data["artifacts"]) == {"teacher", "student"}
    # the run's settings (they were null beside student rows that gave them)
    settings = load_model(tiny_run / "student").model_cfg
    assert (data["student_width"], data["decoder"], data["refiner"]) == (
        settings.student_width,
        settings.decoder,
        settings.refiner,
    )
    student = load_model(tiny_run / "student").model
    assert all(
        r["params"] == sum(p.numel() for p in student.parameters()) for r in data["rows"] if r["model"] == "student"
    )


def test_profile_model_conflicts(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match="--size"):
        api.profile(model=tiny_run, size=128, out=tmp_path / "x", device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="--ways"):
        api.profile(model=tiny_run, ways=3, out=tmp_path / "x", device="cpu", quiet=True)


def test_oom_cell_is_reported(tmp_path, monkeypatch):
    original = DCAMATeacher.predict_features
    chunks: list[int] = []

    def fake(self, query, support, voting=None):
        if len(support) == 10:  # the 2-way 5-shot cell only
            chunks.append(voting)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, query, support, voting)

    monkeypatch.setattr(DCAMATeacher, "predict_features", fake)
    api.profile(ProfileCfg(**TINY, warmup=0, out=tmp_path / "o"), quiet=True)
    data = check_files(tmp_path / "o")
    check_schema(data, [1, 2], [1, 5])
    bad = [r for r in data["rows"] if r["status"] != "ok"]
    assert [(r["model"], r["ways"], r["shots"]) for r in bad] == [("teacher", 2, 5)]
    assert bad[0]["p50_ms"] is None and bad[0]["voting"] == 1 and "out of memory" in bad[0]["note"]
    assert chunks == [50, 25, 12, 6, 3, 1]  # from the default voting chunk, halved until it fits
    assert data["ratios"]["teacher_over_student"] is None
    assert "OOM" in (tmp_path / "o" / "profile.md").read_text()


def test_is_oom():
    assert is_oom(torch.OutOfMemoryError("x"))
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes"))
    assert not is_oom(RuntimeError("shape mismatch"))


def _row(model: str, w: int, s: int, ms: float) -> dict:
    """A profile row of a measured cell (only what the headline ratios read)."""
    return {"model": model, "ways": w, "shots": s, "p50_ms": ms, "status": "ok"}


def test_ratios_from_rows():
    row = _row
    rows = [
        row("backbone", 1, 1, 10.0),
        row("backbone", 1, 5, 10.0),
        row("student", 1, 1, 11.0),
        row("student", 1, 5, 12.0),
        row("teacher", 1, 1, 100.0),
        row("teacher", 1, 5, 600.0),
    ]
    r = headline_ratios(rows, 1, 5)
    assert r["student_max_over_min"] == pytest.approx(12 / 11, abs=1e-3)
    assert r["teacher_over_student"] == 50.0
    assert r["student_over_backbone"] == 1.2
    assert r["student_paired_max_over_min"] == pytest.approx(1.2 / 1.1, abs=1e-3)


def test_paired_flatness_divides_out_machine_drift():
    """A machine twice as slow in one cell doubles both student and backbone there: raw max/min sees 2×, the
    paired ratio sees the student's own flatness."""
    row = _row
    rows = [
        row("backbone", 1, 1, 10.0),
        row("student", 1, 1, 11.0),
        row("backbone", 2, 1, 20.0),
        row("student", 2, 1, 23.0),
    ]
    r = headline_ratios(rows, 2, 1)
    assert r["student_max_over_min"] == pytest.approx(23 / 11, abs=1e-3)
    assert r["student_paired_max_over_min"] == pytest.approx(1.15 / 1.1, abs=1e-3)


def test_cell_ratio_pairs_each_round_so_a_passing_load_divides_out():
    """A load that comes and goes slows both runs of a round alike (3× in rounds 2 and 4): the median of the
    per-round ratios is the student's own cost (1.2), where the two medians fall on different rounds (1.3); the
    headline ratios and the table take the paired one."""
    from fsdistill.profiling.grid import _paired_ratio
    from fsdistill.profiling.measure import _Measure

    student = _Measure(times=[12.0, 36.0, 12.0, 36.0, 13.0])
    backbone = _Measure(times=[10.0, 30.0, 10.0, 30.0, 10.0])
    assert statistics.median(student.times) / statistics.median(backbone.times) == pytest.approx(1.3)
    assert _paired_ratio(student, backbone) == 1.2
    assert _paired_ratio(student, _Measure(times=[10.0])) is None  # rounds that do not pair
    assert _paired_ratio(student, _Measure(status="oom")) is None

    rows = [_row("backbone", 1, 1, 30.0), {**_row("student", 1, 1, 30.0), "over_backbone": 1.2}]
    r = headline_ratios(rows, 1, 1)
    assert r["student_over_backbone"] == 1.2 and r["student_over_backbone_by_ways"] == {"1": 1.2}


@pytest.mark.parametrize(
    "args, word",
    [
        (["--ways", "0"], "--ways"),
        (["--shots", "0"], "--shots"),
        (["--runs", "0"], "--runs"),
        (["--backbone", "no-such-net"], "no-such-net"),
        (["--size", "100"], "--size"),
        (["--teacher-max-ways", "-1"], "--teacher-max-ways"),
    ],
)
def test_bad_options_exit_2(tmp_path, args, word):
    result = CliRunner().invoke(app, ["profile", "--device", "cpu", "--out", str(tmp_path / "b"), *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], result.stderr
    assert not (tmp_path / "b").exists()


def test_student_oom_keeps_backbone(tmp_path, monkeypatch):
    from fsdistill.models.student import DistilledStudent

    original = DistilledStudent.forward

    def fake(self, images):
        if self.num_classes == 2:
            raise MemoryError("no memory left")
        return original(self, images)

    monkeypatch.setattr(DistilledStudent, "forward", fake)
    api.profile(ProfileCfg(**{**TINY, "shots": 1}, warmup=1, out=tmp_path / "s"), quiet=True)
    data = check_files(tmp_path / "s")
    status = {(r["model"], r["ways"]): r["status"] for r in data["rows"]}
    assert status == {
        ("backbone", 1): "ok",
        ("student", 1): "ok",
        ("teacher", 1): "ok",
        ("backbone", 2): "ok",
        ("student", 2): "oom",
        ("teacher", 2): "ok",
    }
    backbone = next(r for r in data["rows"] if r["model"] == "backbone" and r["ways"] == 2)
    assert backbone["runs"] == 2 and backbone["warmup"] == 1


def test_timed_runs_are_not_metered_for_memory():
    """Metering trims the heap first, which would make each timed run fault its memory in again: only warm-up
    calls are metered, or the first timed call of a cell without warm-up."""
    import torch

    from fsdistill.profiling import ProfileCfg
    from fsdistill.profiling.measure import _Runner

    class CountingMeter:
        starts = 0

        def start(self):
            CountingMeter.starts += 1

        def stop(self):
            return 1.0

    calls = []
    runner = _Runner(ProfileCfg(warmup=1, runs=4), torch.device("cpu"), CountingMeter())
    out = runner.measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, estimate_ms=1.0)
    # One priming call per model (first cell only), one metered warm-up call, four timed ones.
    assert len(calls) == 12 and CountingMeter.starts == 2
    assert all(len(m.times) == 4 and m.peak_mb == 1.0 for m in out.values())
    CountingMeter.starts = 0
    slow = _Runner(ProfileCfg(warmup=1, runs=4, slow_s=0.001, cell_budget_s=10.0), torch.device("cpu"), CountingMeter())
    out = slow.measure({"a": lambda: calls.append("a")}, estimate_ms=5000.0)  # a slow cell: no warm-up
    assert out["a"].warmup == 0 and CountingMeter.starts == 1 and out["a"].peak_mb == 1.0


def test_each_model_is_called_once_unmetered_before_its_first_cell():
    """A process's first call of a model also sets up what the process keeps (thread pools, kernel caches): it is
    neither metered nor timed, or the first cell's peak memory would be 10-35x every other cell's."""
    from fsdistill.profiling.measure import _Runner

    log = []

    class LoggingMeter:
        def start(self):
            log.append("start")

        def stop(self):
            return 1.0

    runner = _Runner(ProfileCfg(warmup=1, runs=2), torch.device("cpu"), LoggingMeter())
    runner.measure({"student": lambda: log.append("student")}, estimate_ms=1.0)
    assert log[:2] == ["student", "start"]
    log.clear()
    out = runner.measure({"student": lambda: log.append("student"), "teacher": lambda: log.append("teacher")}, 1.0)
    assert log[:2] == ["teacher", "start"]  # the student was primed in the first cell; the teacher now
    assert log.count("student") == 3 and out["student"].warmup == 1 and len(out["student"].times) == 2


def test_a_model_with_fewer_teacher_ways_says_the_teacher_was_not_timed(tiny_run, tmp_path):
    """--teacher-max-ways below the model's ways named a teacher cell that was never measured ("teacher/student at
    1-way 1-shot: n/a") and profile.md claimed the teacher was timed up to 10 ways."""
    out = tmp_path / "m"
    args = ["profile", "--model", str(tiny_run), "--shots", "1", "--warmup", "0", "--runs", "1", "--device", "cpu",
            "--teacher-max-ways", "0", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "profile.json").read_text())
    assert data["teacher_ways"] == [] and data["ratios"]["teacher_cell"] is None
    assert "teacher: not timed" in result.stdout and "teacher/student at" not in result.stdout
    md = (out / "profile.md").read_text()
    assert "teacher not timed" in md and "teacher timed up to" not in md and "- teacher: not timed" in md


def test_an_interrupted_rerun_leaves_no_report_of_the_earlier_grid(tmp_path, monkeypatch):
    """Ctrl-C during a second profile into one --out kept the first run's profile.md / .png beside the new partial
    profile.json, and the message spoke of predict and --overwrite."""
    from fsdistill.profiling import grid

    out = tmp_path / "p"
    args = ["profile", "--backbone", "test-resnet", "--size", "64", "--ways", "2", "--shots", "1", "--warmup", "0",
            "--runs", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    assert all((out / name).is_file() for name in FILES)
    measured = grid._measure_pair
    calls = []

    def interrupted_in_the_second_cell(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measured(*a, **k)

    monkeypatch.setattr(grid, "_measure_pair", interrupted_in_the_second_cell)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    assert result.stderr.strip().startswith("interrupted: profile.json and profile.csv hold the cells measured so far")
    assert sorted(p.name for p in out.iterdir()) == ["profile.csv", "profile.json"]
    data = json.loads((out / "profile.json").read_text())
    assert data["complete"] is False and {r["ways"] for r in data["rows"]} == {1}
    # Stopped in its first cell, a rerun leaves the earlier (complete) profile whole.
    again = [*args[:-1], str(tmp_path / "q")]
    monkeypatch.setattr(grid, "_measure_pair", measured)
    assert CliRunner().invoke(app, again).exit_code == 0
    before = {name: (tmp_path / "q" / name).read_bytes() for name in FILES}
    monkeypatch.setattr(grid, "_measure_pair", interrupted_in_the_second_cell)  # calls holds 2: the first raises
    calls[:] = [1]
    assert CliRunner().invoke(app, again).exit_code == 130
    assert {name: (tmp_path / "q" / name).read_bytes() for name in FILES} == before


def test_a_folder_where_a_report_goes_is_refused_before_measuring(tmp_path, monkeypatch):
    """A folder named profile.png in --out was an IsADirectoryError traceback, after the whole grid was measured."""
    from fsdistill.profiling import grid

    (tmp_path / "p" / "profile.png").mkdir(parents=True)
    monkeypatch.setattr(grid, "_measure_pair", lambda *a, **k: pytest.fail("measured"))
    result = CliRunner().invoke(app, ["profile", "--device", "cpu", "--out", str(tmp_path / "p"), "--size", "64"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {tmp_path / 'p' / 'profile.png'} is a folder, where profile writes a file; move it or pass another "
        "--out."
    )


def test_inputs_too_large_for_memory_are_a_user_error(tmp_path, monkeypatch):
    """A huge --shots or --batch-size failed allocating the random inputs: a traceback, and an empty --out left."""
    from fsdistill.profiling import grid

    def no_memory(n, size, gen):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(grid, "_random_images", no_memory)
    args = ["profile", "--backbone", "test-resnet", "--size", "64", "--batch-size", "100000", "--device", "cpu",
            "--out", str(tmp_path / "p")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "do not fit in memory" in result.stderr and "lower --batch-size or --shots" in result.stderr
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("field", ["size", "student_width"])
def test_api_refuses_a_string_where_a_number_goes(tmp_path, field):
    with pytest.raises(ConfigError, match=f"--{field.replace('_', '-')} must be"):
        api.profile(ProfileCfg(**{**TINY, field: "128"}, out=tmp_path / "p"), quiet=True)
