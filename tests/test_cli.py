"""The typer CLI: help texts, check, one-line user errors with exit 2, and an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from PIL import Image
from typer.testing import CliRunner

from fsdistill.checkpoint import load_artifact
from fsdistill.cli import app
from fsdistill.errors import DataError

from helpers import SynData, assert_user_error

REQUIRED_COMMANDS = ("check", "adapt", "distill", "predict", "evaluate")
TINY = ["--backbone", "test-resnet", "--size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _commands() -> list[str]:
    group = typer.main.get_command(app)
    return sorted(group.commands)


# --- help ------------------------------------------------------------------------------------------------------


def test_all_contract_commands_exist() -> None:
    assert set(REQUIRED_COMMANDS) <= set(_commands())


@pytest.mark.parametrize("name", _commands())
def test_help_of_every_command_shows_an_example(runner, name) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert f"fsdistill {name}" in result.output


@pytest.mark.parametrize("name", _commands())
def test_every_command_takes_the_common_options(name) -> None:
    """cli.md: every command has --device, --seed and --quiet (scripts pass them to all commands alike)."""
    import typer.main

    params = typer.main.get_command(app).commands[name].params
    flags = {flag for param in params for flag in getattr(param, "opts", [])}
    assert {"--device", "--seed", "--quiet"} <= flags


def test_check_accepts_the_common_options_and_refuses_an_unknown_device(runner, tiny_data) -> None:
    ok = runner.invoke(app, ["check", str(tiny_data.binary), "--device", "cpu", "--seed", "3", "--quiet"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["check", str(tiny_data.binary), "--device", "gpu"])
    assert bad.exit_code == 2 and "Unknown device 'gpu'" in bad.output


def test_root_help_and_version(runner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in REQUIRED_COMMANDS:
        assert name in result.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("fsdistill ")


# --- check -----------------------------------------------------------------------------------------------------


def test_check_good_folder_writes_json(runner, tiny_data, tmp_path) -> None:
    report = tmp_path / "sub" / "report.json"
    result = runner.invoke(app, ["check", str(tiny_data.multi), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert "red" in result.stdout and "paired" in result.stdout
    data = json.loads(report.read_text())
    assert data["num_pairs"] == 6 and data["layout"] == "paired"
    assert data["class_names"] == ["background", "red", "green", "blue"]
    assert set(data["images_per_class"]) == set(data["class_names"])


def test_check_quiet_prints_nothing(runner, tiny_data) -> None:
    result = runner.invoke(app, ["check", str(tiny_data.binary), "--quiet"])
    assert result.exit_code == 0 and result.stdout == ""


# --- user errors -----------------------------------------------------------------------------------------------


def test_check_missing_folder(runner, tmp_path) -> None:
    assert_user_error(runner.invoke(app, ["check", str(tmp_path / "nope")]), "does not exist")


def test_check_empty_folder(runner, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    assert_user_error(runner.invoke(app, ["check", str(tmp_path / "empty")]), "empty")


def test_check_folder_without_pairs(runner, tmp_path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    assert_user_error(runner.invoke(app, ["check", str(tmp_path / "junk")]))


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_training_on_a_missing_or_empty_folder(runner, tmp_path, command) -> None:
    run = tmp_path / "run"
    assert_user_error(runner.invoke(app, [command, "--support", str(tmp_path / "nope"), "--out", str(run), *TINY]))
    (tmp_path / "empty").mkdir()
    assert_user_error(runner.invoke(app, [command, "--support", str(tmp_path / "empty"), "--out", str(run), *TINY]))
    assert not run.exists()


def _train_args(tiny_data, tmp_path, command="distill"):
    return [command, "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), "--steps", "0", "--quiet"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--backbone", "nope", "--size", "64"], "nope"),
        (["--backbone", "test-resnet", "--size", "64", "--device", "tpu"], "tpu"),
        (["--backbone", "test-resnet", "--size", "100"], "size"),
        (["--backbone", "test-resnet", "--size", "64", "--train", "mapper,bogus"], "bogus"),
        (["--backbone", "test-resnet", "--size", "64", "--steps", "-1"], "steps"),
        (["--backbone", "test-swin", "--size", "64"], "128"),
        (["--backbone", "test-resnet", "--size", "64", "--precision", "fp16"], "--precision fp16"),
        (["--backbone", "test-resnet", "--size", "64", "--norm-adapt", "1.5"], "--norm-adapt 1.5"),
    ],
    ids=[
        "unknown-backbone",
        "bad-device",
        "size-not-multiple-of-32",
        "unknown-train-group",
        "negative-steps",
        "swin-size",
        "unknown-precision",
        "norm-adapt-above-1",
    ],
)
@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_bad_training_options(runner, tiny_data, tmp_path, command, extra, fragment) -> None:
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path, command), *extra])
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()  # a refused run leaves no run folder


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("train:\n  stepz: 3\n", "stepz"),
        ("modle:\n  size: 64\n", "modle"),
        ("train: [1, 2\n", "yaml"),
        ("- just\n- a list\n", "mapping"),
        ("[]\n", "mapping"),
        ("false\n", "mapping"),
        # a section given as a value (the flags' empty sections used to replace it, so it was ignored, exit 0)
        ("train: [mapper, attention]\n", "train must be a section of options"),
        ("model: resnet50\n", "model must be a section of options"),
        # silently read otherwise: the last of two sections, `yes` as 1 step, inf as a rate, "" as the current folder
        ("train:\n  steps: 0\ntrain:\n  seed: 3\n", "sets 'train' twice (lines 1 and 3); keep one"),
        ("train:\n  seed: yes\n", "train.seed: expected a number, got True"),
        ("train:\n  lr: .inf\n", "train.lr: Input should be a finite number"),
        ("train:\n  train: []\n", "no group to train"),
        ("train:\n  student_batch: 0\n  polish_steps: 5\n", "polish_steps (5) needs student_batch of 1"),
        ("model:\n  decoder: dcama\n  refiner: true\n", "model: the refiner works with the light"),
    ],
    ids=[
        "unknown-nested-key",
        "unknown-top-key",
        "invalid-yaml",
        "not-a-mapping",
        "empty-list",
        "false",
        "train-as-list",
        "model-as-name",
        "duplicate-section",
        "bool-as-steps",
        "inf-lr",
        "no-group",
        "polish-without-batch",
        "dcama-refiner",
    ],  # fmt: skip
)
def test_bad_config_yaml(runner, tiny_data, tmp_path, yaml_text, fragment) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml_text)
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--config", str(config), *TINY])
    assert_user_error(result, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_the_config_files_device_is_used_unless_a_flag_names_one(runner, tiny_data, tmp_path, command) -> None:
    """defaults < YAML < flags for device: too (the flag's default used to override the YAML's device: cuda)."""
    config = tmp_path / "cfg.yaml"
    config.write_text("device: tpu\nmodel:\n  backbone: test-resnet\n  size: 64\n")
    args = [*_train_args(tiny_data, tmp_path, command), "--config", str(config)]
    assert_user_error(runner.invoke(app, args), "tpu")
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())["device"] == "cpu"


def test_a_check_across_fields_of_the_config_file_is_not_blamed_on_a_flag(runner, tiny_data, tmp_path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text("train:\n  min_steps: 3000\n")
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--config", str(config), *TINY])
    message = assert_user_error(result, "Invalid configuration (from", "cfg.yaml", "min_steps")
    assert "--train" not in message


def test_missing_config_file(runner, tiny_data, tmp_path) -> None:
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--config", str(tmp_path / "no.yaml"), *TINY])
    assert_user_error(result, "no.yaml")
    (tmp_path / "dir.yaml").mkdir()
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--config", str(tmp_path / "dir.yaml"), *TINY])
    assert_user_error(result, "dir.yaml is a folder")


def test_a_utf16_config_file_is_read(runner, tiny_data, tmp_path) -> None:
    """What a Windows shell's ``>`` writes (UTF-16 with a BOM) was a UnicodeDecodeError traceback."""
    config = tmp_path / "cfg.yaml"
    config.write_bytes("train:\n  lr: 0.002\n".encode("utf-16"))
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--config", str(config), *TINY])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())["train"]["lr"] == 0.002


def test_missing_backbone_weights_file(runner, tiny_data, tmp_path) -> None:
    weights = str(tmp_path / "w.pth")
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--backbone-weights", weights, *TINY])
    assert_user_error(result)


def test_distill_from_a_non_teacher(runner, tiny_data, tmp_path) -> None:
    (tmp_path / "notateacher").mkdir()
    result = runner.invoke(app, [*_train_args(tiny_data, tmp_path), "--teacher", str(tmp_path / "notateacher"), *TINY])
    assert_user_error(result)


def _image(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(SynData.image(30, 41, 0)).save(path)
    return str(path)


def test_predict_with_a_non_artifact_model(runner, tmp_path) -> None:
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "config.json").write_text("{}")
    image = _image(tmp_path / "in" / "a.png")
    result = runner.invoke(app, ["predict", image, "-o", str(tmp_path / "out"), "--model", str(tmp_path / "notamodel")])
    assert_user_error(result, "notamodel")


def test_predict_with_a_missing_model(runner, tmp_path) -> None:
    image = _image(tmp_path / "in" / "a.png")
    result = runner.invoke(app, ["predict", image, "-o", str(tmp_path / "out"), "--model", str(tmp_path / "gone")])
    assert_user_error(result, "gone")


def test_predict_without_model_and_without_runs(runner, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "in" / "a.png")
    assert_user_error(runner.invoke(app, ["predict", image, "-o", str(tmp_path / "out")]), "runs")


def test_predict_missing_input(runner, tiny_binary_run, tmp_path) -> None:
    model = str(tiny_binary_run.run_dir)
    missing = str(tmp_path / "missing.png")
    result = runner.invoke(app, ["predict", missing, "-o", str(tmp_path / "out"), "--model", model])
    assert_user_error(result, "missing.png")


def test_predict_bad_device(runner, tiny_binary_run, tmp_path) -> None:
    image = _image(tmp_path / "in" / "a.png")
    result = runner.invoke(
        app, ["predict", image, "-o", str(tmp_path / "out"), "--model", str(tiny_binary_run.run_dir), "--device", "tpu"]
    )
    assert_user_error(result, "tpu")


def test_evaluate_with_leakage(runner, tiny_binary_run, tiny_data) -> None:
    model = str(tiny_binary_run.run_dir)
    result = runner.invoke(app, ["evaluate", str(tiny_data.binary), "--model", model, "--device", "cpu"])
    assert_user_error(result, str(tiny_data.binary))


def test_evaluate_with_other_classes(runner, tiny_binary_run, tiny_data) -> None:
    result = runner.invoke(
        app, ["evaluate", str(tiny_data.multi_heldout), "--model", str(tiny_binary_run.run_dir), "--device", "cpu"]
    )
    assert_user_error(result, "classes")


def test_evaluate_json_that_is_a_folder_is_refused_before_evaluating(runner, tiny_binary_run, tiny_data, tmp_path):
    (tmp_path / "results").mkdir()
    args = ["evaluate", str(tiny_data.binary_heldout), "--model", str(tiny_binary_run.run_dir), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "results")])
    assert_user_error(result, "is a folder", "--json")
    assert "mIoU" not in result.stdout  # refused before the evaluation, not after it
    # check too: refused before its report is printed (it printed the report, then failed to write)
    result = runner.invoke(app, ["check", str(tiny_data.binary), "--json", str(tmp_path / "results")])
    assert_user_error(result, "is a folder", "--json")
    assert "Support folder" not in result.stdout


def test_evaluate_missing_folder(runner, tiny_binary_run, tmp_path) -> None:
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--model", str(tiny_binary_run.run_dir)])
    assert_user_error(result, "does not exist")


def test_predict_corrupt_image_exits_2_after_writing_the_rest(runner, tiny_binary_run, tmp_path) -> None:
    _image(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(b"not an image at all")
    model = str(tiny_binary_run.run_dir)
    out = str(tmp_path / "out")
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-o", out, "--model", model, "--quiet"])
    assert_user_error(result, "bad.png")
    assert (tmp_path / "out" / "masks" / "good.png").is_file()


# --- end to end ------------------------------------------------------------------------------------------------


def test_distill_predict_evaluate_end_to_end(runner, tiny_data, tmp_path) -> None:
    config = tmp_path / "fast.yaml"
    config.write_text("train:\n  episodes_per_step: 1\n  steps: 50\n  polish_steps: 3\n")  # --steps overrides 50
    run = tmp_path / "run"
    result = runner.invoke(
        app,
        ["distill", "--support", str(tiny_data.binary), "--steps", "2", "--out", str(run), "--config", str(config)]
        + ["--precision", "bfloat16"]  # mixed precision on any CPU (emulated where it has no bfloat16 hardware)
        + ["--norm-adapt", "0.25"]
        + [arg for arg in TINY if arg != "--quiet"],  # the summary is checked below
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert (run / "student" / "model.safetensors").is_file() and (run / "teacher" / "config.json").is_file()
    resolved = (run / "config.resolved.yaml").read_text()
    assert "episodes_per_step: 1" in resolved and "steps: 2" in resolved and "precision: bfloat16" in resolved
    # distill ends with the per-class check on the support folder, and says why it stopped and in what arithmetic
    assert "(the 2 steps asked for), then the student alone 3 steps in" in result.stdout
    assert "bfloat16 mixed precision" in result.stdout
    assert load_artifact(run / "student")[1]["training"]["precision"] == "bfloat16"
    # The device it trained on, resolved (config.resolved.yaml keeps the option as given): "auto" said nothing.
    device = load_artifact(run / "student")[1]["training"]["device"]
    assert device.startswith("cpu (") and "threads)" in device and f"s on {device}, bfloat16" in result.stdout
    assert "norm_adapt: 0.25" in resolved
    assert load_artifact(run / "student")[1]["training"]["norm_stats"]["weight"] == 0.25
    assert "per-class check on the support folder" in result.stdout and "foreground" in result.stdout
    assert "leave-one-out" in result.stdout and " fit " in result.stdout

    out = tmp_path / "pred"
    result = runner.invoke(
        app,
        ["predict", str(tiny_data.binary_heldout / "images"), "-o", str(out), "--model", str(run), "--device", "cpu"],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert "3 written" in result.stdout
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["h0.png", "h1.png", "h2.png"]
    assert (out / "predictions.csv").is_file()

    report = tmp_path / "eval.json"
    result = runner.invoke(
        app, ["evaluate", str(tiny_data.binary_heldout), "--model", str(run), "--json", str(report), "--device", "cpu"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    data = json.loads(report.read_text())
    assert set(data) == {"model", "images", "iou", "miou"}
    assert data["images"] == 3 and set(data["iou"]) == {"background", "foreground"}
    assert 0.0 <= data["miou"] <= 1.0
    assert "mIoU" in result.stdout


def test_support_check_warnings_end_with_where_to_find_the_images(tmp_path, capsys) -> None:
    """A dead-looking class gets its warning line, then one hint naming the run for `fsdistill suggest` and
    `--init`; a healthy check prints its table and no hint."""
    from fsdistill.cli.training import _print_support_check
    from fsdistill.train.support_check import ClassCheck, SupportCheck

    lines: list[str] = []
    run = tmp_path / "run"
    dead = SupportCheck([ClassCheck("lesion", 2, 0.02, 0.9), ClassCheck("organ", 8, 0.6, 0.9)], queries=10)
    _print_support_check(dead, lines.append, run)
    err = capsys.readouterr().err.splitlines()
    assert any("lesion" in line for line in lines) and any("organ" in line for line in lines)
    assert err[0].startswith("warning: class 'lesion'") and len(err) == 2
    assert err[1].startswith("hint: `fsdistill suggest UNLABELED_DIR --model") and f"--init {run}" in err[1]
    _print_support_check(SupportCheck([ClassCheck("organ", 8, 0.6, 0.9)], queries=8), lines.append, run)
    assert capsys.readouterr().err == ""
    # a run on a frozen --teacher has no teacher of its own: --init would be refused, so the hint names --teacher
    _print_support_check(dead, lines.append, run, frozen_teacher=tmp_path / "t")
    hint = capsys.readouterr().err.splitlines()[1]
    assert "--init" not in hint and f"--teacher {tmp_path / 't'} --freeze-teacher" in hint
    # --quiet: errors and warnings only (the hint was printed too)
    _print_support_check(dead, lines.append, run, quiet=True)
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["warning"]


def test_a_diverging_run_is_one_sentence(runner, tiny_data, tmp_path) -> None:
    """A learning rate that sends the loss to NaN ended in a FloatingPointError traceback, exit 1."""
    args = ["adapt", "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), "--steps", "4", "--lr", "1e30"]
    result = runner.invoke(app, [*args, *TINY])
    assert_user_error(result, "Training diverged: the loss is", "lower the learning rate (--lr, now 1e+30)")


@pytest.mark.parametrize(
    "args",
    [
        ["adapt", "--support", "SUPPORT", "--out", ""],
        ["adapt", "--support", ""],
        ["check", ""],
        ["predict", "", "-o", "OUT"],
        ["predict", "SUPPORT", "-o", ""],
        ["evaluate", "SUPPORT", "--json", ""],
    ],
    ids=["out", "support", "check", "predict-inputs", "predict-out", "evaluate-json"],
)
def test_empty_paths_are_refused(runner, tiny_data, tmp_path, monkeypatch, args) -> None:
    """An empty path (an unset shell variable) was read as the current folder: a run written into it, a folder
    scanned from it."""
    monkeypatch.chdir(tmp_path)
    args = [{"SUPPORT": str(tiny_data.binary), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "is empty; give a path" in result.output, result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("seed", ["99999999999999999999", "18446744073709551615", "-1"])
@pytest.mark.parametrize("command", ["distill", "profile"])
def test_a_seed_out_of_range_is_a_usage_error(runner, tiny_data, tmp_path, command, seed) -> None:
    """--seed 99999999999999999999 was an OverflowError traceback (2^64 - 1 failed later, in the crop views, and
    left a run folder)."""
    args = [command, "--out", str(tmp_path / "run"), "--seed", seed, *TINY]
    if command == "distill":
        args += ["--support", str(tiny_data.binary)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output and "--seed" in result.output
    assert not (tmp_path / "run").exists()


def test_a_seed_out_of_range_in_a_config_is_refused(tmp_path) -> None:
    from fsdistill.config import DistillCfg, load_config
    from fsdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        load_config(DistillCfg, data={"support": str(tmp_path), "train": {"seed": 2**64 - 1}})


def test_help_and_usage_errors_are_readable_off_a_terminal() -> None:
    """COLUMNS=0 (some CI runners) left usage errors empty (exit 2, nothing said) and --help a blank line; off a
    terminal (80 columns) long defaults were cut with "…"."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "0"}
    bad = subprocess.run([sys.executable, "-m", "fsdistill", "check", "x", "--zz"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "No such option" in bad.stderr and "--zz" in bad.stderr
    env.pop("COLUMNS")
    helps = subprocess.run([sys.executable, "-m", "fsdistill", "predict", "--help"], capture_output=True, text=True,
                           env=env, timeout=120)  # fmt: skip
    assert (
        helps.returncode == 0 and "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT" in helps.stdout and "…" not in helps.stdout
    )


def test_quiet_keeps_warnings_and_drops_notes(runner, tiny_data, tmp_path) -> None:
    """check --quiet dropped the check's warnings; the library's warnings came out bare (no "warning:") and its
    notes also under --quiet."""
    import shutil

    support = tmp_path / "support"
    shutil.copytree(tiny_data.binary, support)
    SynData.save(support / "images" / "lonely.png", SynData.image(20, 24, 0))
    result = runner.invoke(app, ["check", str(support), "--quiet"])
    assert result.exit_code == 0 and result.stdout == ""
    assert "warning: 1 images have no mask (e.g. images/lonely.png); they are not used." in result.stderr
    import logging

    from fsdistill.cli.common import _LibraryLogHandler

    records = [logging.LogRecord("fsdistill.x", logging.WARNING, __file__, 1, text, None, None)
               for text in ("Class 'a' vanishes", "note: a teacher")]  # fmt: skip
    loud, quiet = _LibraryLogHandler(quiet=False), _LibraryLogHandler(quiet=True)
    assert [loud.format(r) for r in records] == ["warning: Class 'a' vanishes", "note: a teacher"]
    assert [bool(quiet.filter(r)) for r in records] == [True, False]


def test_a_path_option_given_twice_is_refused(runner, tiny_data, tmp_path, monkeypatch) -> None:
    """click keeps the last value of an option given twice: `--unlabeled a --unlabeled b` trained on b alone and
    said nothing of a. A path option given twice is a usage error now; repeatable options are left alone."""
    monkeypatch.chdir(tmp_path)  # the relative outputs below must land here if a refusal ever fails
    support = str(tiny_data.multi)
    for args, option in (
        (["distill", "--support", support, "--unlabeled", "a", "--unlabeled=b"], "--unlabeled"),
        (["distill", "--support", support, "--support", support], "--support"),
        (["predict", support, "-o", "x", "--out", "y"], "-o"),
        (["predict", support, "-ox", "-o", "y"], "-o"),  # a short option's value glued on
        (["predict", support, "-qo", "x", "-o", "y"], "-o"),  # or clustered after a flag
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
        assert f"'{option}'" in result.stderr and "was given 2 times" in result.stderr, result.stderr
    # a value that looks like the option, a repeatable option, and anything after "--" are no repeats
    result = runner.invoke(app, ["distill", "--support", support, "--drop-class", "a", "--drop-class", "b"])
    assert "was given" not in result.stderr
    result = runner.invoke(app, ["predict", "--out", "--out", "--model", str(tmp_path / "none"), support])
    assert "was given" not in result.stderr


def test_json_dash_is_refused_not_a_file_named_dash(runner, tiny_data, tmp_path, monkeypatch) -> None:
    """`--json -` (standard output in many tools) wrote a file named "-" in silence."""
    monkeypatch.chdir(tmp_path)
    for args in (["check", str(tiny_data.multi), "--json", "-"], ["predict", str(tiny_data.multi), "-o", "-"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "is '-': fsdistill reads and writes files" in result.stderr
        assert "/dev/stdout" in result.stderr
    assert not (tmp_path / "-").exists()
    from fsdistill.runtime import ensure_writable_dir, ensure_writable_file

    with pytest.raises(DataError, match="would write a file named '-'; give a file name, or /dev/stdout"):
        ensure_writable_file(Path("-"), "--json", "report.json")  # the API's callers (suggest's json_out)
    with pytest.raises(DataError, match="would write into a folder named '-'"):
        ensure_writable_dir(Path("-"), "--copy-to")
