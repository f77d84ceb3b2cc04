"""Runs, artifacts and outputs that a new user broke in the first hour (issue 19), through the real CLI.

Missing students, training into a finished run, rerunning a run's own resolved config, changed weight bytes, file
modes under the umask, leakage by content, and what killed saves and exports leave behind. Trained models come
from the session's tiny runs (conftest), copied before anything is damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.api import inference as inference_api
from fsdistill.api import runs as runs_api
from fsdistill.checkpoint import is_artifact, resolve_model_dir
from fsdistill.cli import app
from fsdistill.config import ModelCfg
from fsdistill.errors import CheckpointError, DataError
from fsdistill.models.build import load_model

from helpers import TINY_MODEL, SynData, assert_user_error, write_binary_folder

CPU = ["--device", "cpu"]
TINY = ["--backbone", "test-resnet", "--size", "64", "--device", "cpu", "--quiet"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _copy_run(run, target: Path) -> Path:
    shutil.copytree(run.run_dir, target)
    return target


def _image(tmp_path: Path) -> str:
    return str(SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0)))


# --- 1. a run without a usable student never falls back to its teacher ----------------------------------------------


@pytest.mark.parametrize("missing", ["student", "student/config.json", "student/model.safetensors"])
@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_missing_student_is_an_error_not_the_teacher(runner, tiny_binary_run, tiny_data, tmp_path, command, missing):
    bad = _copy_run(tiny_binary_run, tmp_path / "runs" / "bad")
    target = bad / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    if command == "evaluate":
        args = ["evaluate", str(tiny_data.binary_heldout), "--model", str(bad), *CPU]
    else:
        args = ["predict", _image(tmp_path), "-o", str(tmp_path / "out"), "--model", str(bad), *CPU]
    assert_user_error(runner.invoke(app, args), str(bad / missing), "no usable student", "--teacher")
    assert not (tmp_path / "out" / "masks").exists()


def test_the_teacher_of_a_run_without_student_is_used_only_with_teacher(runner, tiny_binary_run, tiny_data, tmp_path):
    bad = _copy_run(tiny_binary_run, tmp_path / "bad")
    shutil.rmtree(bad / "student")
    result = runner.invoke(app, ["evaluate", str(tiny_data.binary_heldout), "--model", str(bad), "--teacher", *CPU])
    assert result.exit_code == 0, result.output
    assert str(bad / "teacher") in result.stdout


def test_default_model_is_the_newest_run_with_a_student(runner, tiny_binary_run, tmp_path, monkeypatch):
    """A newer run with only a teacher (an adapt run, or a damaged one) is not the default model of predict."""
    monkeypatch.chdir(tmp_path)
    good = _copy_run(tiny_binary_run, tmp_path / "runs" / "a-good")
    teacher_only = _copy_run(tiny_binary_run, tmp_path / "runs" / "b-teacher-only")
    shutil.rmtree(teacher_only / "student")
    os.utime(teacher_only, (os.path.getmtime(good) + 60,) * 2)
    result = runner.invoke(app, ["predict", _image(tmp_path), "-o", "out", *CPU])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / ".fsdistill-predict.json").read_text())
    assert manifest["model"] == str((good / "student").resolve())
    # by the student's time, not the run folder's: exporting an older run touches its folder only
    newer = _copy_run(tiny_binary_run, tmp_path / "runs" / "c-newer")
    os.utime(newer / "student" / "config.json", (os.path.getmtime(good / "student" / "config.json") + 60,) * 2)
    os.utime(good, (os.path.getmtime(newer) + 120,) * 2)  # as writing good/student.onnx does
    result = runner.invoke(app, ["predict", _image(tmp_path), "-o", "out2", *CPU])
    manifest = json.loads((tmp_path / "out2" / ".fsdistill-predict.json").read_text())
    assert manifest["model"] == str((newer / "student").resolve())


def test_the_default_teacher_is_never_a_stopped_distill(runner, tiny_binary_run, tmp_path, monkeypatch):
    """A distill stopped before its student keeps its teacher: evaluate --teacher without --model took that
    unfinished run's teacher while evaluate took another run's student (a comparison of two runs)."""
    monkeypatch.chdir(tmp_path)
    good = _copy_run(tiny_binary_run, tmp_path / "runs" / "a-good")
    stopped = _copy_run(tiny_binary_run, tmp_path / "runs" / "b-stopped")
    shutil.rmtree(stopped / "student")
    os.utime(stopped / "teacher" / "config.json", (os.path.getmtime(good / "teacher" / "config.json") + 60,) * 2)
    assert resolve_model_dir(None, "teacher") == Path("runs") / "a-good" / "teacher"
    assert resolve_model_dir(None) == Path("runs") / "a-good" / "student"
    shutil.rmtree(good)
    # said as what it is (it read "hold no teacher to use (only teachers: …)" and asked for the --teacher given)
    with pytest.raises(CheckpointError, match=r"hold only distills stopped before their student; pass --model RUN"):
        resolve_model_dir(None, "teacher")


def test_runs_with_teachers_only_are_named_when_no_model_is_given(runner, tiny_binary_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(_copy_run(tiny_binary_run, tmp_path / "runs" / "adapted") / "student")
    result = runner.invoke(app, ["predict", _image(tmp_path), "-o", "out", *CPU])
    assert_user_error(result, "runs under ./runs hold no student to use (only teachers", "fsdistill distill")


# --- 4. adapt / distill into a finished run need --overwrite --------------------------------------------------------


def _no_training(monkeypatch) -> None:
    """Make any training step fail loudly: a refusal must come before training starts."""
    from fsdistill.api import training as training_api

    def train(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(training_api, "train", train)


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_training_into_a_finished_run_needs_overwrite(
    runner, tiny_multi_run, tiny_data, tmp_path, monkeypatch, command
):
    run = _copy_run(tiny_multi_run, tmp_path / "run")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _no_training(monkeypatch)
    result = runner.invoke(app, [command, "--support", str(tiny_data.binary), "--out", str(run), *TINY])
    assert_user_error(result, str(run), "already holds a run", "--overwrite", "new --out")
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_overwrite_replaces_the_run_and_drops_what_belonged_to_it(runner, tiny_multi_run, tiny_data, tmp_path, command):
    run = _copy_run(tiny_multi_run, tmp_path / "run")
    (run / "student.onnx").write_bytes(b"exported from the old 3-class student")
    (run / "notes.txt").write_text("the user's")
    args = [command, "--support", str(tiny_data.binary), "--out", str(run), "--steps", "0", "--overwrite", *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    kind = "teacher" if command == "adapt" else "student"
    assert load_model(run, kind=kind).class_names == ["background", "foreground"]  # was 3 classes
    assert not (run / "student.onnx").exists()
    if command == "adapt":  # the old 3-class student must not be paired with the new binary teacher
        assert not (run / "student").exists()
    assert (run / "notes.txt").read_text() == "the user's"


def test_empty_folder_and_adapt_run_take_a_distill_without_overwrite(runner, tiny_data, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--support", str(tiny_data.binary), "--steps", "0", *TINY]
    assert runner.invoke(app, ["distill", *args, "--out", str(empty)]).exit_code == 0
    assert is_artifact(empty / "student")
    adapted = tmp_path / "adapted"
    assert runner.invoke(app, ["adapt", *args, "--out", str(adapted)]).exit_code == 0
    # Distilling an adapt run's own teacher into it replaces nothing.
    result = runner.invoke(app, ["distill", *args, "--teacher", str(adapted / "teacher"), "--out", str(adapted)])
    assert result.exit_code == 0, result.output
    assert is_artifact(adapted / "student") and is_artifact(adapted / "teacher")


def _interrupt_training(monkeypatch) -> None:
    """Ctrl-C as training starts."""
    from fsdistill.api import training as training_api

    def train(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_api, "train", train)


def test_an_interrupted_run_into_a_finished_one_leaves_its_config_and_its_protection(
    runner, tiny_binary_run, tiny_data, tmp_path, monkeypatch
):
    """Killed before it saved anything, ``adapt --overwrite`` or ``distill --teacher OUT/teacher --out OUT`` leaves
    the finished run as it was, config.resolved.yaml included; a later distill without --teacher must not take the
    adapt teacher's place without --overwrite."""
    adapted = tmp_path / "adapted"
    args = ["--support", str(tiny_data.binary), "--steps", "0", *TINY]
    assert runner.invoke(app, ["adapt", *args, "--out", str(adapted)]).exit_code == 0
    before = {p.relative_to(adapted): p.read_bytes() for p in adapted.rglob("*") if p.is_file()}
    _interrupt_training(monkeypatch)
    distill = ["distill", *args, "--teacher", str(adapted / "teacher"), "--out", str(adapted), "--seed", "7"]
    for command in (distill, ["adapt", *args, "--out", str(adapted), "--overwrite", "--seed", "7"]):
        assert runner.invoke(app, command).exit_code == 130
        assert {p.relative_to(adapted): p.read_bytes() for p in adapted.rglob("*") if p.is_file()} == before
    result = runner.invoke(app, ["distill", *args, "--out", str(adapted)])
    assert_user_error(result, "already holds a run", "--overwrite")


def test_a_run_killed_between_its_two_saves_never_pairs_the_new_teacher_with_the_old_student(
    runner, tiny_multi_run, tiny_data, tmp_path, monkeypatch
):
    from fsdistill.api import training as training_api

    run = _copy_run(tiny_multi_run, tmp_path / "run")  # 3 classes
    save_model = training_api.save_model

    def killed_at_the_student(directory, *args, **kwargs):
        if Path(directory).name == "student":
            raise KeyboardInterrupt
        return save_model(directory, *args, **kwargs)

    monkeypatch.setattr(training_api, "save_model", killed_at_the_student)
    command = ["distill", "--support", str(tiny_data.binary), "--out", str(run), "--steps", "0", *TINY]
    assert runner.invoke(app, [*command, "--overwrite"]).exit_code == 130
    assert load_model(run, kind="teacher").class_names == ["background", "foreground"]
    assert not (run / "student").exists()
    assert yaml.safe_load((run / "config.resolved.yaml").read_text())["support"] == str(tiny_data.binary)
    monkeypatch.setattr(training_api, "save_model", save_model)
    result = runner.invoke(app, command)  # the same command finishes it, no --overwrite needed
    assert result.exit_code == 0, result.output
    assert load_model(run, kind="student").class_names == ["background", "foreground"]


def test_distill_with_a_teacher_takes_and_records_its_model_settings(runner, tiny_binary_run, tiny_data, tmp_path):
    """--teacher: the run is the teacher's backbone and size (none given here), and its config says so; a model
    option the teacher contradicts is refused, not silently dropped."""
    teacher = str(tiny_binary_run.teacher_dir)
    args = ["distill", "--support", str(tiny_data.binary), "--teacher", teacher, "--steps", "0", *CPU, "-q"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run"), "--student-width", "16"])
    assert result.exit_code == 0, result.output
    model = yaml.safe_load((tmp_path / "run" / "config.resolved.yaml").read_text())["model"]
    assert (model["backbone"], model["size"], model["student_width"]) == ("test-resnet", 64, 16)
    student = load_model(tmp_path / "run", kind="student")
    assert student.config["train_config"]["model"]["backbone"] == "test-resnet"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "other"), "--backbone", "resnet50"])
    assert_user_error(result, "runs with its own model settings (backbone 'test-resnet'), but --backbone 'resnet50'")
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "other"), "--size", "96"])
    assert_user_error(result, "(size 64), but --size 96 was given; drop --size.")
    # the default's value given is a choice too (it was taken for "not given" and dropped)
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "other"), "--size", str(ModelCfg().size)])
    assert_user_error(result, "(size 64), but --size 384 was given")
    missing = ["distill", "--support", str(tiny_data.binary), "--teacher", str(tmp_path / "nope"), *CPU]
    message = assert_user_error(runner.invoke(app, [*missing, "--out", str(tmp_path / "other")]), "does not exist")
    assert "--model" not in message  # the flag typed was --teacher
    assert not (tmp_path / "other").exists()


# --- 5. a run's config.resolved.yaml reruns the run -----------------------------------------------------------------


def test_resolved_config_records_absolute_paths_and_its_own_run(runner, tiny_data, tmp_path, monkeypatch):
    """Relative paths as typed made the file useless from another folder, and a default run folder was recorded as
    ``out: null``, so rerunning the file made a new run where the README says it is refused."""
    project = tmp_path / "my proj"
    shutil.copytree(tiny_data.binary, project / "support")
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["distill", "--support", "support", "--steps", "0", *TINY])
    assert result.exit_code == 0, result.output
    (run,) = (project / "runs").iterdir()
    data = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert data["support"] == str(project / "support") and data["out"] == str(run)
    assert load_model(run).config["train_config"]["out"] == str(run)
    monkeypatch.chdir(tmp_path)
    config = str(run / "config.resolved.yaml")
    assert_user_error(runner.invoke(app, ["distill", "--config", config, "-q"]), "already holds a run")
    result = runner.invoke(app, ["distill", "--config", config, "--out", "again", "-q"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "again" / "config.resolved.yaml").read_text())["out"] == str(tmp_path / "again")


def test_resolved_config_reruns_its_run(runner, tiny_binary_run, tmp_path):
    resolved = tiny_binary_run.run_dir / "config.resolved.yaml"
    data = yaml.safe_load(resolved.read_text())
    assert data["command"] == "distill" and data["support"]  # the file as a run writes it
    rerun = tmp_path / "rerun"
    result = runner.invoke(app, ["distill", "--config", str(resolved), "--out", str(rerun), "--device", "cpu", "-q"])
    assert result.exit_code == 0, (result.output, result.exception)
    again = yaml.safe_load((rerun / "config.resolved.yaml").read_text())
    assert again == {**data, "out": str(rerun), "device": "cpu"}
    old, new = load_model(tiny_binary_run.run_dir), load_model(rerun)
    assert new.config["train_config"]["train"] == old.config["train_config"]["train"]


def test_resolved_config_without_out_flag_points_at_its_own_run(runner, tiny_binary_run, tmp_path):
    config = tmp_path / "config.resolved.yaml"
    shutil.copy(tiny_binary_run.run_dir / "config.resolved.yaml", config)
    result = runner.invoke(app, ["distill", "--config", str(config), "--device", "cpu", "-q"])
    assert_user_error(result, str(tiny_binary_run.run_dir), "--overwrite", "new --out", "out:")


def test_resolved_config_of_another_command_is_refused(runner, tiny_binary_run, tmp_path):
    resolved = str(tiny_binary_run.run_dir / "config.resolved.yaml")
    result = runner.invoke(app, ["adapt", "--config", resolved, "--out", str(tmp_path / "r"), *CPU])
    assert_user_error(result, "command: distill", "fsdistill distill")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["adapt", "distill"])
def test_support_from_the_config_or_a_clear_error(runner, tiny_data, tmp_path, command):
    config = tmp_path / "c.yaml"
    config.write_text(f"support: {tiny_data.binary}\nmodel:\n  backbone: test-resnet\n  size: 64\n")
    ok = runner.invoke(app, [command, "--config", str(config), "--out", str(tmp_path / "r"), "--steps", "0", *CPU])
    assert ok.exit_code == 0, (ok.output, ok.exception)
    assert load_model(tmp_path / "r", kind="teacher").config["support"]["root"] == str(tiny_data.binary)
    config.write_text("model:\n  backbone: test-resnet\n")
    for extra in (["--config", str(config)], []):
        result = runner.invoke(app, [command, *extra, "--out", str(tmp_path / "r2"), *TINY])
        assert_user_error(result, "No support", "--support")
    assert not (tmp_path / "r2").exists()


# --- 6. weight bytes are checked against config.json ----------------------------------------------------------------


def _scribble(weights: Path) -> None:
    """Random bytes over the middle of the tensor data: the file still parses as safetensors."""
    data = bytearray(weights.read_bytes())
    start = len(data) // 2
    data[start : start + 256] = np.random.default_rng(0).integers(0, 256, 256, dtype=np.uint8).tobytes()
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_changed_weight_bytes_are_refused(runner, tiny_binary_run, tiny_data, tmp_path, command):
    run = _copy_run(tiny_binary_run, tmp_path / "run")
    _scribble(run / "student" / "model.safetensors")
    from safetensors.torch import load_file

    load_file(str(run / "student" / "model.safetensors"))  # parses: only the hash can tell
    if command == "evaluate":
        args = ["evaluate", str(tiny_data.binary_heldout), "--model", str(run), *CPU]
    else:
        args = ["predict", _image(tmp_path), "-o", str(tmp_path / "out"), "--model", str(run), *CPU]
    assert_user_error(runner.invoke(app, args), str(run / "student" / "model.safetensors"), "sha256")


def test_artifact_without_weights_hash_still_loads(tiny_binary_run, tmp_path):
    student = shutil.copytree(tiny_binary_run.student_dir, tmp_path / "student")
    config = json.loads((student / "config.json").read_text())
    assert len(config.pop("weights_sha256")) == 64
    (student / "config.json").write_text(json.dumps(config))  # as an artifact written before the field
    assert load_model(student).kind == "student"


# --- 7. outputs follow the umask ------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["022", "027"])
def test_outputs_follow_the_umask(runner, tiny_binary_run, tmp_path, umask):

    previous = os.umask(umask)
    try:
        image = _image(tmp_path)
        out = tmp_path / "out"
        result = runner.invoke(app, ["predict", image, "-o", str(out), "--model", str(tiny_binary_run.run_dir),
                                     "--overlay", "-q", *CPU])  # fmt: skip
        assert result.exit_code == 0, result.output
        loaded = load_model(tiny_binary_run.run_dir)
        from fsdistill.models.build import save_model

        config = loaded.config
        saved = save_model(tmp_path / "artifact", loaded.model, loaded.model_cfg, class_names=config["class_names"],
                           palette=config["palette"], train_config=config["train_config"],
                           support_info=config["support"])  # fmt: skip
        runs_api._write_run_config(tmp_path, api.DistillCfg(support=tmp_path), "distill")
    finally:
        os.umask(previous)
    files = [p for p in [*out.rglob("*"), *saved.iterdir(), tmp_path / "config.resolved.yaml"] if p.is_file()]
    assert {p.name for p in files} >= {"a.png", "predictions.csv", "model.safetensors", "config.json"}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


# --- 11. leakage is decided by content, not by name -----------------------------------------------------------------


def test_renamed_support_image_is_leakage(runner, tiny_binary_run, tiny_data, tmp_path):
    data = write_binary_folder(tmp_path / "held", ["h0", "h1"], seed=7)
    shutil.copy(tiny_data.binary / "images" / "s2.png", data / "images" / "renamed.png")
    shutil.copy(tiny_data.binary / "masks" / "s2.png", data / "masks" / "renamed.png")
    result = runner.invoke(app, ["evaluate", str(data), "--model", str(tiny_binary_run.run_dir), *CPU])
    assert_user_error(result, "1 image(s)", str(data), "renamed (support s2)", "held-out")


def test_new_images_named_like_supports_are_not_leakage(runner, tiny_binary_run, tmp_path):
    data = write_binary_folder(tmp_path / "held", ["s0", "s1", "s2"], seed=8)  # the supports' names, new pixels
    result = runner.invoke(app, ["evaluate", str(data), "--model", str(tiny_binary_run.run_dir), *CPU])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.stdout


def test_artifacts_record_support_pixel_hashes(tiny_binary_run, tiny_data):
    from fsdistill.api import pixel_sha256
    from fsdistill.data.images import read_image

    images = load_model(tiny_binary_run.run_dir).config["support"]["images"]
    assert [e["key"] for e in images] == ["s0", "s1", "s2", "s3"]
    pixels = read_image(tiny_data.binary / "images" / "s1.png")
    assert images[1] == {"key": "s1", "size": [pixels.shape[1], pixels.shape[0]], "sha256": pixel_sha256(pixels)}


def test_supports_changed_while_training_are_recorded_as_read(tiny_data, tmp_path, monkeypatch):
    """The support folder was read again after training: a support replaced meanwhile was recorded (so evaluate
    accepted the image actually trained on), and one deleted meanwhile lost the finished training."""
    from fsdistill.api import pixel_sha256
    from fsdistill.api import training as training_api
    from fsdistill.data.discover import discover
    from fsdistill.data.images import read_image

    support = tmp_path / "support"
    shutil.copytree(tiny_data.binary, support)
    trained_on = read_image(support / "images" / "s1.png")
    fingerprint_before = discover(support).fingerprint()
    real_train = training_api.train

    def folder_changes_meanwhile(*args, **kwargs):
        shutil.copy(support / "images" / "s0.png", support / "images" / "s1.png")
        (support / "images" / "s3.png").unlink()
        return real_train(*args, **kwargs)

    monkeypatch.setattr(training_api, "train", folder_changes_meanwhile)
    result = api.distill({"support": str(support), "out": str(tmp_path / "run"), "model": {"backbone": "test-resnet",
                          "size": 64}, "train": {"steps": 1}, "device": "cpu"}, quiet=True)  # fmt: skip
    record = load_model(result.run_dir).config["support"]
    assert record["images"][1]["sha256"] == pixel_sha256(trained_on)
    assert [e["key"] for e in record["images"]] == ["s0", "s1", "s2", "s3"]
    assert record["fingerprint"] == fingerprint_before


# --- 15. what killed saves and exports leave; onnx threads; unwritable output as root -------------------------------


KILL_BETWEEN_RENAMES = (
    "import os, signal\n"
    "real = os.replace\n"
    "def replace(src, dst):\n"
    "    real(src, dst)\n"
    "    if '.student.old-' in str(dst):  # the old artifact moved aside, the new one not yet in place\n"
    "        os.kill(os.getpid(), signal.SIGKILL)\n"
    "os.replace = replace\n"
)


def test_artifact_killed_between_the_two_renames_is_recovered(runner, tiny_binary_run, tmp_path):
    run = _copy_run(tiny_binary_run, tmp_path / "run")
    code = KILL_BETWEEN_RENAMES + (
        "import sys\nfrom fsdistill.models.build import load_model, save_model\n"
        "m = load_model(sys.argv[1]); c = m.config\n"
        "save_model(m.path, m.model, m.model_cfg, class_names=c['class_names'], palette=c['palette'],\n"
        "           train_config=c['train_config'], support_info=c['support'])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(run)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "student").exists() and len(list(run.glob(".student.old-*"))) == 1  # the state the kill left

    result = runner.invoke(app, ["predict", _image(tmp_path), "-o", str(tmp_path / "out"), "--model", str(run), *CPU])
    assert result.exit_code == 0, result.output  # the old copy went back into place
    assert is_artifact(run / "student") and not list(run.glob(".student.old-*"))
    assert (run / "student" / "config.json").read_bytes() == (tiny_binary_run.student_dir / "config.json").read_bytes()
    assert list(run.glob(".student.partial-*"))  # the unfinished new copy: removed by the next save
    loaded = load_model(run)
    c = loaded.config
    from fsdistill.models.build import save_model

    save_model(run / "student", loaded.model, loaded.model_cfg, class_names=c["class_names"], palette=c["palette"],
               train_config=c["train_config"], support_info=c["support"])  # fmt: skip
    assert not list(run.glob(".student.*"))


def test_predict_removes_the_cvat_temp_file_of_a_killed_run(tiny_binary_run, tmp_path):
    """A predict --format cvat killed while writing cvat.zip left a hidden temp file (a random mkstemp name, as
    large as the zip) that no later run removed."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(folder / "a.png")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".cvat.zip.tmp-{dead.stdout.strip()}-0123abcd"
    stale.write_bytes(b"half a zip")
    api.predict([folder], out, tiny_binary_run.run_dir, device="cpu", workers=0, formats="cvat")
    assert (out / "cvat.zip").is_file() and not list(out.glob(".cvat.zip.*"))


def test_export_removes_temp_files_of_killed_exports(runner, tiny_binary_run, tmp_path):
    pytest.importorskip("onnxruntime")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        stale = [tmp_path / ".m.onnx.tmp-0123abcd", tmp_path / f".m.onnx.tmp-{dead.stdout.strip()}-0123abcd"]
        live = tmp_path / f".m.onnx.tmp-{sleeper.pid}-0123abcd"  # an export running right now
        for path in [*stale, live]:
            path.write_bytes(b"half an onnx file")
        result = runner.invoke(app, ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(tmp_path / "m.onnx"),
                                     "-q", *CPU])  # fmt: skip
        assert result.exit_code == 0, result.output
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not any(p.exists() for p in stale) and live.exists()
    assert (tmp_path / "m.onnx").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_onnx_backend_uses_the_torch_thread_count(tiny_binary_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import torch

    onnx_file = tmp_path / "m.onnx"
    api.export(tiny_binary_run.run_dir, onnx_file, random_samples=1, real_samples=0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # as OMP_NUM_THREADS=3 or torch.set_num_threads(3)
    runner_ = inference_api._runner(onnx_file, "cpu", "onnx")
    assert runner_.session.get_session_options().intra_op_num_threads == 3


# --- two commands into one run folder --------------------------------------------------------------------------------


def _distill_args(tiny_data, out: Path) -> list[str]:
    return ["distill", "--support", str(tiny_data.binary), "--out", str(out), "--steps", "1", *TINY]


_HOLD_CLAIM = """
import fcntl, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{socket.gethostname()} {os.getpid()}".encode())
print("held", flush=True)
time.sleep(120)
"""


def _claim_in_another_process(run_dir: Path, text: str | None = None) -> subprocess.Popen:
    """A process holding ``run_dir``'s claim as a training command does (locked, "HOST PID" in it, or ``text``)."""
    other = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CLAIM, str(run_dir / runs_api.CLAIM_FILE)], stdout=subprocess.PIPE, text=True
    )
    assert other.stdout.readline().strip() == "held"
    if text is not None:
        (run_dir / runs_api.CLAIM_FILE).write_text(text)
    return other


def test_a_run_folder_another_process_trains_into_is_refused(runner, tiny_data, tmp_path):
    """Two distills into one --out at once: the second to finish replaced the first's finished run without
    --overwrite, both exit 0 (and their saves could interleave: one run's teacher beside the other's student)."""
    out = tmp_path / "run"
    out.mkdir()
    other = _claim_in_another_process(out)
    try:
        assert_user_error(
            runner.invoke(app, _distill_args(tiny_data, out)),
            f"Another fsdistill run (process {other.pid}) is training into {out}",
            "wait for it to finish or choose another --out",
        )
        assert sorted(p.name for p in out.iterdir()) == [runs_api.CLAIM_FILE]  # its claim kept, nothing written
        # A run folder being trained into is not called a stopped run by the commands that read models, and its
        # artifacts are neither read nor recovered (an --overwrite run sets the old one aside while saving).
        assert_user_error(
            runner.invoke(app, ["predict", _image(tmp_path), "-o", str(tmp_path / "o"), "--model", str(out), *CPU]),
            f"{out} is still being trained (process {other.pid}); wait for it to finish (if no run is going on, "
            f"delete {out / runs_api.CLAIM_FILE}).",
        )
        (out / "student").mkdir()
        (out / "student" / "config.json").write_text("{}")
        for model in (out, out / "student"):
            assert_user_error(
                runner.invoke(app, ["predict", _image(tmp_path), "-o", str(tmp_path / "o"), "--model", str(model)]),
                "is still being trained",
            )
        shutil.rmtree(out / "student")
    finally:
        other.kill()
        other.wait()
    # Its process gone (killed), the claim is stale: taken over, and released when the run ends.
    result = runner.invoke(app, _distill_args(tiny_data, out))
    assert result.exit_code == 0, result.output
    assert is_artifact(out / "student") and not (out / runs_api.CLAIM_FILE).exists()


def test_a_run_finished_into_the_folder_meanwhile_is_not_replaced(
    runner, tiny_binary_run, tiny_data, tmp_path, monkeypatch
):
    """The folder was checked only when the command began: a run that finished into it during this one's
    preparation was replaced without --overwrite."""
    from fsdistill.api import training

    out = tmp_path / "run"
    prepare = training._prepare

    def another_run_finishes_meanwhile(cfg):
        prepared = prepare(cfg)
        shutil.copytree(tiny_binary_run.run_dir, out, dirs_exist_ok=True)
        return prepared

    monkeypatch.setattr(training, "_prepare", another_run_finishes_meanwhile)
    assert_user_error(runner.invoke(app, _distill_args(tiny_data, out)), f"{out} already holds a run", "--overwrite")
    assert not (out / runs_api.CLAIM_FILE).exists()
    assert (out / "student" / "model.safetensors").read_bytes() == (
        tiny_binary_run.run_dir / "student" / "model.safetensors"
    ).read_bytes()


def test_a_stopped_run_and_an_artifact_file_are_named_as_such(runner, tiny_binary_run, tiny_data, tmp_path):
    """A run stopped before saving ("holds no student artifact …; pass a run folder", for a run folder) and a file
    of an artifact given as the model ("pass a run folder") said to do what the user had done."""
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.resolved.yaml").write_text("command: distill\n")
    image = _image(tmp_path)
    assert_user_error(
        runner.invoke(app, ["predict", image, "-o", str(tmp_path / "o"), "--model", str(stopped), *CPU]),
        f"{stopped} is a run that stopped before its model was saved (config.resolved.yaml only)",
        "re-run the command that started it",
    )
    weights = tiny_binary_run.run_dir / "student" / "model.safetensors"
    assert_user_error(
        runner.invoke(app, ["predict", image, "-o", str(tmp_path / "o"), "--model", str(weights), *CPU]),
        f"{weights} is a file of the artifact {weights.parent}; pass that folder (or its run).",
    )


def test_a_tilde_the_shell_left_is_the_home_folder(runner, tiny_binary_run, tmp_path, monkeypatch):
    """--model '~/run' was "does not exist", -o '~/out' (quoted, --out=~/x, YAML, the API) wrote a folder named
    "~" in the working folder, while --support and --out of distill expanded it."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    shutil.copytree(tiny_binary_run.run_dir, home / "run")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    result = runner.invoke(app, ["predict", _image(tmp_path), "-o", "~/out", "--model", "~/run", *CPU, "-q"])
    assert result.exit_code == 0, result.output
    assert (home / "out" / "masks" / "a.png").is_file() and not (work / "~").exists()
    assert api.predict(_image(tmp_path), "~/out2", model="~/run", device="cpu").written == 1
    assert (home / "out2" / "masks" / "a.png").is_file() and not (work / "~").exists()


def test_training_calls_from_two_threads_run_one_after_the_other(tiny_data, tmp_path):
    """Two distill calls in threads of one process: both trained into one --out (the claim was per process) and
    runs of one seed differed (the global generators are shared); now they run in turn, so the second into the
    same folder finds the first's run, and each run is its seed's."""
    import threading

    import torch

    from fsdistill.config import DistillCfg
    from fsdistill.errors import DataError

    def cfg(out: Path) -> DistillCfg:
        return DistillCfg(
            support=tiny_data.binary,
            out=out,
            model={"backbone": "test-resnet", "size": 64},
            train={"steps": 2, "episodes_per_step": 1},
            device="cpu",
        )

    outcomes: dict[str, object] = {}

    def run(name: str, out: Path) -> None:
        try:
            outcomes[name] = api.distill(cfg(out), quiet=True)
        except DataError as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=(n, tmp_path / o)) for n, o in [("a", "same"), ("b", "same"),
               ("c", "c"), ("d", "d")]]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [n for n in "ab" if isinstance(outcomes[n], DataError)]
    assert len(refused) == 1 and "already holds a run" in str(outcomes[refused[0]])
    assert not (tmp_path / "same" / runs_api.CLAIM_FILE).exists()
    c, d = (load_model(tmp_path / n / "student").model.state_dict() for n in "cd")
    assert all(torch.equal(c[k], d[k]) for k in c)


@runs_api.training_command
def _claim_and_read(folder: Path) -> str:
    """A training command that only claims ``folder``: the claim's text, released when it returns."""
    runs_api.claim_run_dir(folder)
    return (folder / runs_api.CLAIM_FILE).read_text()


def test_a_claim_is_made_where_hard_links_and_locks_are_not(tmp_path, monkeypatch):
    """On a file system without file locks or hard links the claim is created exclusively instead, its text telling
    whether its process runs; a live one still refuses."""
    import errno

    from fsdistill import checkpoint

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(runs_api.os, "link", no_links)
    monkeypatch.setattr(checkpoint, "fcntl", None)
    run = tmp_path / "run"
    run.mkdir()

    train_into = _claim_and_read

    assert train_into(run) == runs_api.claim_text() and not (run / runs_api.CLAIM_FILE).exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run / runs_api.CLAIM_FILE).write_text(f"{socket.gethostname()} {other.pid}")
        with pytest.raises(runs_api.DataError, match=f"process {other.pid}"):
            train_into(run)
    finally:
        other.kill()
        other.wait()
    assert train_into(run) == runs_api.claim_text()  # its process gone: taken over


def test_a_claim_is_its_lock_not_its_text(runner, tiny_binary_run, tmp_path):
    """A claim left by a crash on a machine of another name (a restarted container) or naming a process id reused
    since blocked the run folder for good, for training and reading alike; and two runs taking over one stale claim
    both went on (each removed the other's fresh claim)."""
    import socket

    run = _copy_run(tiny_binary_run, tmp_path / "run")
    for stale in ("node-old 4242", f"{socket.gethostname()} {os.getpid()}", f"{socket.gethostname()} 1"):
        (run / runs_api.CLAIM_FILE).write_text(stale)  # nobody holds its lock: its process is gone
        assert runs_api.live_claim(run) is None
        assert resolve_model_dir(run) == run / "student"

    @runs_api.training_command
    def train_into(folder):
        runs_api.claim_run_dir(folder)
        taker = subprocess.run(
            [sys.executable, "-c", "import sys; from pathlib import Path; from fsdistill.api import runs\n"
             "try:\n    runs.claim_run_dir(Path(sys.argv[1]))\nexcept runs.DataError as e:\n    print(e)",
             str(folder)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return (folder / runs_api.CLAIM_FILE).read_text(), taker.stdout

    text, second = train_into(run)  # takes over the stale claim; a second taker is refused meanwhile
    assert text == runs_api.claim_text() and f"Another fsdistill run (process {os.getpid()})" in second
    assert not (run / runs_api.CLAIM_FILE).exists()
    # A live holder's lock decides, whatever its file says (here another machine's name).
    other = _claim_in_another_process(run, text="node-7 99")
    try:
        assert runs_api.live_claim(run) == "process 99 on node-7"
        with pytest.raises(runs_api.DataError, match="process 99 on node-7"):
            train_into(run)
    finally:
        other.kill()
        other.wait()
    assert runs_api.live_claim(run) is None


def test_a_run_being_saved_is_not_recovered_by_a_reader(tiny_binary_run, tmp_path):
    """An --overwrite save sets the old teacher aside before renaming the new one in; a command reading the run
    meanwhile (evaluate without --model) put the old one back, and the save failed ("free some space")."""
    from fsdistill.checkpoint import recover_artifact

    run = _copy_run(tiny_binary_run, tmp_path / "run")
    aside = run / ".teacher.old-12345678"
    (run / "teacher").rename(aside)
    other = _claim_in_another_process(run)
    try:
        assert recover_artifact(run / "teacher") == run / "teacher" and not (run / "teacher").exists()
        assert aside.is_dir()
    finally:
        other.kill()
        other.wait()
    recover_artifact(run / "teacher")  # its run gone: the set-aside copy goes back
    assert is_artifact(run / "teacher") and not aside.exists()


def test_a_full_disk_in_an_overwrite_says_the_replaced_student_is_gone(
    tiny_binary_run, tiny_data, tmp_path, monkeypatch
):
    """The replaced run's student is removed before the new teacher is saved (never the new teacher beside the old
    student); a full disk then left the run without its student, and the message said only "free some space"."""
    from fsdistill.api import training
    from fsdistill.config import DistillCfg, load_config

    out = _copy_run(tiny_binary_run, tmp_path / "run")

    def full(run_dir, *args, **kwargs):
        raise DataError(f"Cannot write the model to {run_dir / 'teacher'} (No space left on device); free some space.")

    monkeypatch.setattr(training, "_save_teacher", full)
    cfg = load_config(
        DistillCfg,
        None,
        {"support": tiny_data.binary, "out": out, "device": "cpu", "model": TINY_MODEL, "train": {"steps": 1}},
    )
    with pytest.raises(DataError, match=r"free some space\. The student of the run replaced in .* was removed"):
        api.distill(cfg, quiet=True, overwrite=True)
    assert is_artifact(out / "teacher") and not (out / "student").exists()


def test_a_claim_file_that_is_a_link_or_folder_is_never_written_through(tmp_path):
    """A claim file that was a symlink had its target overwritten with "HOST PID" (another user's file, in a shared
    runs folder)."""
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_text("important")
    (run / runs_api.CLAIM_FILE).symlink_to(victim)

    train_into = _claim_and_read

    with pytest.raises(DataError, match="is not a regular file; remove it"):
        train_into(run)
    assert victim.read_text() == "important"
    (run / runs_api.CLAIM_FILE).unlink()
    (run / runs_api.CLAIM_FILE).mkdir()
    with pytest.raises(DataError, match="is not a regular file; remove it"):
        train_into(run)


def test_a_failed_claim_leaves_nothing_held_and_another_users_stale_claim_is_taken_over(tmp_path, monkeypatch):
    """A claim whose write failed (a full disk) kept its lock until the process ended: the same Python session could
    never train into the folder again. And another user's claim file (not writable) of an ended run was "Cannot
    write into the folder"."""
    import errno

    run = tmp_path / "run"
    run.mkdir()
    real_write = runs_api.os.write
    failures = iter([OSError(errno.ENOSPC, "No space left on device")])

    def write_once_full(fd, data):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_write(fd, data)

    monkeypatch.setattr(runs_api.os, "write", write_once_full)

    train_into = _claim_and_read

    with pytest.raises(DataError, match=r"Cannot write into .* \(No space left on device\)"):
        train_into(run)
    assert not (run / runs_api.CLAIM_FILE).exists()
    assert train_into(run) == runs_api.claim_text()  # nothing of the failed try in the way
    (run / runs_api.CLAIM_FILE).write_text("another-user-host 4242")  # its run ended: nobody holds the lock
    real_open = runs_api._open_claim

    def not_writable(claim):
        if claim.exists():
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(claim)

    monkeypatch.setattr(runs_api, "_open_claim", not_writable)
    assert train_into(run) == runs_api.claim_text()


def test_a_claim_that_is_a_hard_link_or_cannot_be_read_is_left_alone(tmp_path, monkeypatch):
    """A claim file hard-linked to another file had that file overwritten; another user's live claim created 0600
    (unreadable here) was taken for one on a file system without locks, removed, and the folder trained into twice."""
    from fsdistill import checkpoint

    run, precious = tmp_path / "run", tmp_path / "precious.txt"
    run.mkdir()
    precious.write_text("important")
    os.link(precious, run / runs_api.CLAIM_FILE)

    train_into = _claim_and_read

    with pytest.raises(DataError, match="is a hard link to another file; remove it"):
        train_into(run)
    assert precious.read_text() == "important"
    (run / runs_api.CLAIM_FILE).unlink()
    (run / runs_api.CLAIM_FILE).write_text("node-9 77")
    real_open, real_read = checkpoint.os.open, Path.read_text

    def unreadable_open(path, flags, *args):
        if str(path).endswith(runs_api.CLAIM_FILE):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args)

    def unreadable_text(self, *args, **kwargs):
        if self.name == runs_api.CLAIM_FILE:
            raise PermissionError(13, "Permission denied")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint.os, "open", unreadable_open)
    monkeypatch.setattr(Path, "read_text", unreadable_text)
    assert checkpoint.claim_held(run / runs_api.CLAIM_FILE) is True
    assert runs_api.live_claim(run) == "a run of another user, whose claim this user cannot read"
    with pytest.raises(DataError, match="Another fsdistill run \\(a run of another user"):
        train_into(run)
    monkeypatch.undo()
    assert (run / runs_api.CLAIM_FILE).read_text() == "node-9 77"  # never removed
