"""What every benchmark script shares: results written atomically, and bad arguments or fsdistill's user errors
ending in one ``error:`` line and exit status 2 instead of a traceback (argument checks run before any work)."""

from __future__ import annotations

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest

from fsdistill.errors import DataError

from helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


@pytest.fixture(scope="module")
def common():
    return load_benchmark("common")


def _exits_with(capsys, code: int, call) -> str:
    """Run ``call``; assert it exits with ``code``; the last stderr line."""
    with pytest.raises(SystemExit) as exc:
        call()
    assert exc.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_run_script_turns_user_errors_into_one_line(common, capsys) -> None:
    def main() -> None:
        raise DataError("Support folder /missing/support does not exist; check the path.")

    line = _exits_with(capsys, 2, lambda: common.run_script(main))
    assert line == "error: Support folder /missing/support does not exist; check the path."


def test_every_script_runs_its_main_through_run_script() -> None:
    """Each script's ``__main__`` called ``main()`` bare: a DataError or ConfigError was a traceback."""
    assert len(SCRIPTS) >= 10
    for script in SCRIPTS:
        tail = script.read_text().split('if __name__ == "__main__":', 1)[1]
        assert tail.strip() == "run_script(main)", script.name


def test_no_script_writes_its_results_in_place() -> None:
    """results.json / results.md were written with write_text: a run killed while writing left a truncated file."""
    in_place = re.compile(r"write_text\(json\.dumps|\.(json|md)\"\)\.write_text\(")
    for script in [*SCRIPTS, BENCHMARKS / "common.py"]:
        assert not in_place.search(script.read_text()), script.name


def test_write_results_replaces_the_files_whole(common, tmp_path: Path) -> None:
    out = tmp_path / "out"
    common.write_results(out, {"a": 1}, "| old |\n")
    with open(out / "results.json") as before:  # a reader that opened the old file keeps reading it whole
        common.write_results(out, {"a": 2, "b": [1.5]}, "| new |\n")
        assert json.loads(before.read()) == {"a": 1}
    assert json.loads((out / "results.json").read_text()) == {"a": 2, "b": [1.5]}
    assert (out / "results.md").read_text() == "| new |\n"
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]


def test_accuracy_merge_of_a_missing_or_truncated_file_names_it(capsys, tmp_path: Path) -> None:
    accuracy = load_benchmark("accuracy")
    missing, truncated = tmp_path / "missing.json", tmp_path / "truncated.json"
    truncated.write_text('{"meta": {"shots": [1')
    line = _exits_with(capsys, 2, lambda: accuracy.main(["--merge", str(missing), "--out", str(tmp_path / "o")]))
    assert line == f"error: --merge {missing} cannot be read: No such file or directory"
    line = _exits_with(capsys, 2, lambda: accuracy.main(["--merge", str(truncated), "--out", str(tmp_path / "o")]))
    assert line.startswith(f"error: --merge {truncated} is not a whole results.json")
    assert not (tmp_path / "o").exists()


def test_accuracy_docs_plot_is_replaced_only_with_its_section(monkeypatch, tmp_path: Path) -> None:
    """--write-docs copied the new plot over the docs' one first: a failure writing the section left the new plot
    beside the old text."""
    accuracy = load_benchmark("accuracy")
    docs = tmp_path / "docs" / "benchmarks.md"
    docs.parent.mkdir()
    docs.write_text("old text\n")
    png = docs.parent / accuracy.DOCS_PNG
    png.write_bytes(b"old plot")
    monkeypatch.setattr(accuracy, "plot", lambda report, path: path.write_bytes(b"new plot"))
    monkeypatch.setattr(accuracy, "markdown", lambda report, image: "table\n")

    def disk_full(docs: Path, section: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(accuracy, "write_docs_section", disk_full)
    args = Namespace(out=tmp_path / "out", write_docs=True, docs=docs)
    with pytest.raises(OSError):
        accuracy.write_reports({}, args)
    assert png.read_bytes() == b"old plot" and sorted(p.name for p in docs.parent.iterdir()) == [png.name, docs.name]
    monkeypatch.undo()
    monkeypatch.setattr(accuracy, "plot", lambda report, path: path.write_bytes(b"new plot"))
    monkeypatch.setattr(accuracy, "markdown", lambda report, image: "table\n")
    accuracy.write_reports({}, args)
    assert png.read_bytes() == b"new plot" and "table" in docs.read_text()
    assert sorted(p.name for p in docs.parent.iterdir()) == [png.name, docs.name]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--case", "nuclei", "--base", "5", "--add", "1"], "--base 5: choose 1 to 1 (nuclei's foreground classes)"),
        (["--case", "brain", "--base", "2", "--add", "1"], "--add 1: choose 0 to 0"),
        (["--base", "0"], "--base 0: choose 1 to 5 (macaque's foreground classes)"),
        (["--base", "-2"], "--base -2: choose 1 to 5"),
        (["--case", "nope"], "argument --case: invalid choice: 'nope'"),
    ],
)
def test_grow_checks_classes_before_it_runs(monkeypatch, capsys, argv: list[str], message: str) -> None:
    """Classes beyond the case's ran the whole benchmark; --base 0 and an unknown case were tracebacks."""
    grow = load_benchmark("grow")
    monkeypatch.setattr(grow, "build_examples", lambda *a, **k: pytest.fail("built a case for a refused call"))
    assert message in _exits_with(capsys, 2, lambda: grow.main(argv))


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("onnx_latency", ["--batch-sizes", "-1"], "--batch-sizes must be at least 1, got '-1'"),
        ("onnx_latency", ["--batch-sizes", "1,x"], "--batch-sizes must be comma-separated whole numbers"),
        ("onnx_latency", ["--runs", "0"], "--runs must be at least 1, got 0"),
        ("onnx_latency", ["--model", "/missing/run"], "--model /missing/run does not exist"),
        ("predict_throughput", ["--images", "-5"], "--images must be at least 1, got -5"),
        ("predict_throughput", ["--model", "/missing/run"], "--model /missing/run does not exist"),
        ("distill_wall", ["--support", "/missing/support"], "--support /missing/support is not a support folder"),
        ("accuracy", ["--steps", "-3"], "--steps must be at least 1, got -3"),
        ("teacher_student", ["--steps", "-3"], "--steps must be at least 1, got -3"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(capsys, script: str, argv: list[str], message: str) -> None:
    module = load_benchmark(script)
    assert message in _exits_with(capsys, 2, lambda: module.main(argv))


@pytest.mark.parametrize("script", ["accuracy", "suggest_loop"])
def test_a_missing_folder_case_is_one_line(capsys, tmp_path: Path, script: str) -> None:
    """--folder x=/missing was a DataError traceback."""
    module = load_benchmark(script)
    argv = ["--cases", "--folder", f"x={tmp_path / 'missing'}", "--out", str(tmp_path / "out"), "--device", "cpu"]
    line = _exits_with(capsys, 2, lambda: module.run_script(lambda: module.main(argv)))
    assert line == f"error: Support folder {tmp_path / 'missing' / 'support'} does not exist; check the path."
