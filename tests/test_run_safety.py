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
from typer.testing import CliRunner

from conftest import SynData, write_binary_folder
from test_cli import assert_user_error
from fsdistill.checkpoint import is_artifact
from fsdistill.cli import app
from fsdistill.models.build import load_model

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
    from fsdistill import api

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
        saved = save_model(tmp_path / "artifact", loaded.model, class_names=config["class_names"],
                           palette=config["palette"], input_size=config["input_size"],
                           train_config=config["train_config"], support_info=config["support"])  # fmt: skip
        api._write_run_config(tmp_path, api.DistillCfg(support=tmp_path), "distill")
    finally:
        os.umask(previous)
    files = [p for p in [*out.rglob("*"), *saved.iterdir(), tmp_path / "config.resolved.yaml"] if p.is_file()]
    assert {p.name for p in files} >= {"a.png", "predictions.csv", "model.safetensors", "config.json"}
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
