"""Bad inputs and interruptions, command by command, through the real CLI (see docs/reliability.md).

Every refused input must give exit 2 and exactly one ``error:`` line on stderr that names the problem (and no
traceback); every accepted odd input must succeed with sane output. Cases that other files already run through
the CLI are not repeated here: test_cli.py (missing and empty support folders, folders without pairs, unknown
backbone and bad --device for adapt/distill/predict, missing or non-artifact --model, a corrupt image in
predict), test_export.py (ONNX files and the onnx backend). Interruptions run ``fsdistill`` in a subprocess and
signal it for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from fsdistill.checkpoint import is_artifact
from fsdistill.cli import app
from fsdistill.errors import CheckpointError
from fsdistill.models.build import load_model

from helpers import SynData, assert_user_error, write_binary_folder

TINY = ["--backbone", "test-resnet", "--size", "64", "--device", "cpu", "--quiet"]
HUGE = (4200, 4000)  # H×W: 16.8 M pixels, above logits_to_mask's 2**24-pixel band, so predict upsamples in bands


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _held_out(root: Path, n: int = 3, seed: int = 5) -> Path:
    """A binary folder whose names (h0, h1, ...) are not the tiny runs' support names (s0..s3)."""
    return write_binary_folder(root, [f"h{i}" for i in range(n)], seed=seed)


def _truncate_to_jpeg(folder: Path) -> None:
    png = folder / "images" / "h1.png"
    pixels = np.asarray(Image.open(png))
    png.unlink()
    jpeg = SynData.save(folder / "images" / "h1.jpg", pixels, quality=90)
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[: len(data) // 2])


def _bad_class_ids(folder: Path) -> None:
    for i in range(3):
        mask = np.asarray(Image.open(folder / "masks" / f"h{i}.png"))
        SynData.save(folder / "masks" / f"h{i}.png", (mask > 0).astype(np.uint8) * (7 if i == 2 else 1))
    (folder / "classes.txt").write_text("background\nforeground\n")


def _empty_masks(folder: Path) -> None:
    for mask in (folder / "masks").glob("*.png"):
        SynData.save(mask, np.zeros((48, 56), np.uint8))


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Support/data folders with one defect each (names h*, so evaluate does not trip over leakage first)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    folders: dict[str, Path] = {}
    (root / "empty").mkdir()
    folders["empty"] = root / "empty"
    (root / "non-image" / "docs").mkdir(parents=True)
    (root / "non-image" / "notes.txt").write_text("not an image")
    (root / "non-image" / "docs" / "table.csv").write_text("a,b\n1,2\n")
    folders["non-image"] = root / "non-image"
    for name, damage in [
        ("truncated-jpeg", _truncate_to_jpeg),
        ("size-mismatch", lambda f: SynData.save(f / "masks" / "h1.png", np.zeros((20, 20), np.uint8))),
        ("class-id-not-in-names", _bad_class_ids),
        ("all-empty-masks", _empty_masks),
    ]:
        folders[name] = _held_out(root / name)
        damage(folders[name])
    return folders


SUPPORT_ERRORS = {
    "non-image": ["No image/mask pairs found", "non-image"],
    "truncated-jpeg": ["Cannot read image", "h1.jpg"],
    "size-mismatch": ["h1.png is 20×20", "resize the mask"],
    "class-id-not-in-names": ["class id 7", "classes.txt"],
    "all-empty-masks": ["are empty", "mask values"],
}


# --- support folders: check, adapt, distill, evaluate ------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(SUPPORT_ERRORS))
@pytest.mark.parametrize("command", ["check", "adapt", "distill", "evaluate"])
def test_bad_folder_is_refused_by_every_command(runner, bad, tiny_binary_run, tmp_path, command, case) -> None:
    folder = str(bad[case])
    run = tmp_path / "run"
    if command == "check":
        args = ["check", folder]
    elif command == "evaluate":
        args = ["evaluate", folder, "--model", str(tiny_binary_run.run_dir), "--device", "cpu"]
    else:
        args = [command, "--support", folder, "--out", str(run), "--steps", "1", *TINY]
    assert_user_error(runner.invoke(app, args), *SUPPORT_ERRORS[case])
    assert not run.exists()  # refused before a run folder is made


def test_evaluate_empty_folder(runner, bad, tiny_binary_run) -> None:
    result = runner.invoke(app, ["evaluate", str(bad["empty"]), "--model", str(tiny_binary_run.run_dir)])
    assert_user_error(result, "is empty")


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("empty", ["No images found", "supported:"]),
        ("non-image", ["No images found"]),
        ("text-file", ["notes.txt is not an image file"]),
        ("truncated-jpeg", ["Cannot read image", "h1.jpg"]),
    ],
)
def test_predict_bad_inputs(runner, bad, tiny_binary_run, tmp_path, case, fragments) -> None:
    given = {
        "empty": bad["empty"],
        "non-image": bad["non-image"],
        "text-file": bad["non-image"] / "notes.txt",
        "truncated-jpeg": bad["truncated-jpeg"] / "images",
    }[case]
    out = tmp_path / "out"
    args = ["predict", str(given), "-o", str(out), "--model", str(tiny_binary_run.run_dir), "--device", "cpu", "-q"]
    assert_user_error(runner.invoke(app, args), *fragments)
    if case == "truncated-jpeg":  # the readable images are still written
        assert sorted(p.name for p in (out / "masks").iterdir()) == ["h0.png", "h2.png"]


# --- odd but valid inputs ------------------------------------------------------------------------------------------


def _mixed_modes(root: Path) -> Path:
    """h0 grey, h1 RGBA, h2 16-bit grey, h3 RGB: the masks stay 0/255."""
    _held_out(root, 4, seed=8)
    images = root / "images"
    rgb = {i: np.asarray(Image.open(images / f"h{i}.png")) for i in range(3)}
    Image.fromarray(rgb[0][..., 0]).save(images / "h0.png")
    alpha = np.full(rgb[1].shape[:2] + (1,), 200, np.uint8)
    Image.fromarray(np.concatenate([rgb[1], alpha], -1)).save(images / "h1.png")
    Image.fromarray(rgb[2][..., 0].astype(np.uint16) * 257).save(images / "h2.png")
    return root


def _huge(root: Path) -> Path:
    """Two normal pairs and one HUGE pair."""
    _held_out(root, 2, seed=9)
    h, w = HUGE
    image = np.full((h, w, 3), 90, np.uint8)
    image[1000:3000, 1200:2800] = (230, 60, 60)
    mask = np.zeros((h, w), np.uint8)
    mask[1000:3000, 1200:2800] = 255
    SynData.save(root / "images" / "big.png", image)
    SynData.save(root / "masks" / "big.png", mask)
    return root


@pytest.mark.parametrize("case", ["one-image", "mixed-grey-rgb-rgba-16bit", "huge-image"])
def test_odd_but_valid_support_folders_work_everywhere(runner, tiny_binary_run, tmp_path, case) -> None:
    if case == "one-image":
        folder = _held_out(tmp_path / "one", 1, seed=6)
    elif case == "huge-image":
        folder = _huge(tmp_path / "huge")
    else:
        folder = _mixed_modes(tmp_path / "mixed")
    count = len(list((folder / "images").iterdir()))

    check = runner.invoke(app, ["check", str(folder)])
    assert check.exit_code == 0, check.output
    assert f"pairs: {count}" in check.stdout, check.stdout
    if case == "one-image":
        assert "appears in only 1 image" in check.stdout
    if case == "huge-image":
        assert str(HUGE[1]) in check.stdout  # the size range shows the huge width

    run = tmp_path / "run"
    distill = runner.invoke(app, ["distill", "--support", str(folder), "--out", str(run), "--steps", "1", *TINY])
    assert distill.exit_code == 0, (distill.output, distill.exception)
    assert load_model(run, kind="student").size == 64

    evaluate = runner.invoke(app, ["evaluate", str(folder), "--model", str(tiny_binary_run.run_dir), "--device", "cpu"])
    assert evaluate.exit_code == 0, (evaluate.output, evaluate.exception)
    assert f"({count} images" in evaluate.stdout

    out = tmp_path / "pred"
    predict_args = ["predict", str(folder / "images"), "-o", str(out), "--model", str(run), "--workers", "0"]
    predict = runner.invoke(app, [*predict_args, "--device", "cpu"])
    assert predict.exit_code == 0, (predict.output, predict.exception)
    assert f"{count} written" in predict.stdout
    for image in (folder / "images").iterdir():
        with Image.open(image) as src, Image.open(out / "masks" / f"{image.stem}.png") as mask:
            assert mask.size == src.size and mask.mode == "P"  # at the original size, huge included


def test_predict_one_image_file(runner, tiny_binary_run, tmp_path) -> None:
    image = SynData.save(tmp_path / "only.jpg", SynData.image(31, 45, 1), quality=90)
    model = ["--model", str(tiny_binary_run.run_dir), "--device", "cpu"]
    result = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "out"), *model])
    assert result.exit_code == 0 and "1 written" in result.stdout
    with Image.open(tmp_path / "out" / "masks" / "only.png") as mask:
        assert mask.size == (45, 31)


# --- damaged models: every command that loads one ----------------------------------------------------------------


def _damaged(source: Path, target: Path, damage: str) -> Path:
    shutil.copytree(source, target)
    weights, config = target / "model.safetensors", target / "config.json"
    if damage == "corrupt":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "foreign":
        import torch

        save_file({"weight": torch.zeros(3)}, str(weights), metadata={"format": "pt"})
    elif damage == "truncated-config":
        config.write_text(config.read_text()[:100])
    else:  # newer
        data = json.loads(config.read_text())
        data.update(fsdistill_version="9.0.0", format_version=99)
        config.write_text(json.dumps(data))
    return target


DAMAGE = {
    "corrupt": ["corrupt or not a safetensors file"],
    "foreign": ["not written by fsdistill"],
    "newer": ["9.0.0", "upgrade fsdistill"],
    "truncated-config": ["config.json is not valid JSON", "damaged"],
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "profile", "distill --teacher"])
def test_damaged_model_is_refused_by_every_command(
    runner, tiny_binary_run, tiny_data, tmp_path, command, damage
) -> None:
    kind = "teacher" if command == "distill --teacher" else "student"
    model = str(_damaged(getattr(tiny_binary_run, f"{kind}_dir"), tmp_path / kind, damage))
    if command == "predict":
        image = SynData.save(tmp_path / "a.png", SynData.image(30, 41, 0))
        args = ["predict", str(image), "-o", str(tmp_path / "out"), "--model", model]
    elif command == "evaluate":
        args = ["evaluate", str(tiny_data.binary_heldout), "--model", model]
    elif command == "export":
        pytest.importorskip("onnxruntime")
        args = ["export", "--model", model, "-o", str(tmp_path / "x.onnx")]
    elif command == "profile":
        args = ["profile", "--model", model, "--out", str(tmp_path / "prof"), "--runs", "1", "--shots", "1"]
    else:
        args = ["distill", "--support", str(tiny_data.binary), "--teacher", model, "--out", str(tmp_path / "run"), "-q"]
    assert_user_error(runner.invoke(app, [*args, "--device", "cpu"]), *DAMAGE[damage])
    assert not (tmp_path / "out" / "masks").exists() and not (tmp_path / "x.onnx").exists()
    assert not (tmp_path / "prof").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["export", "profile"])
def test_missing_model_folder(runner, tmp_path, command) -> None:
    if command == "export":
        pytest.importorskip("onnxruntime")
    assert_user_error(runner.invoke(app, [command, "--model", str(tmp_path / "gone")]), "gone", "does not exist")


# --- options -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["evaluate", "export", "profile"])
def test_bad_device(runner, tiny_binary_run, tiny_data, tmp_path, command) -> None:
    model = ["--model", str(tiny_binary_run.run_dir)]
    args = {
        "evaluate": ["evaluate", str(tiny_data.binary_heldout), *model],
        "export": ["export", *model, "-o", str(tmp_path / "x.onnx")],
        "profile": ["profile", "--backbone", "test-resnet", "--size", "64", "--out", str(tmp_path / "p")],
    }[command]
    if command == "export":
        pytest.importorskip("onnxruntime")
    assert_user_error(runner.invoke(app, [*args, "--device", "tpu"]), "tpu", "auto, cpu, cuda, mps")


def test_profile_unknown_backbone(runner, tmp_path) -> None:
    result = runner.invoke(app, ["profile", "--backbone", "nope", "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert_user_error(result, "nope", "efficientnet-lite0")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("command", ["export", "predict --backend onnx"])
def test_missing_onnx_packages(runner, tiny_binary_run, tmp_path, monkeypatch, command) -> None:
    for name in ("onnx", "onnxruntime", "onnxscript"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError, as when not installed
    if command == "export":
        args = ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(tmp_path / "x.onnx")]
    else:
        image = SynData.save(tmp_path / "a.png", SynData.image(30, 41, 0))
        model = str(tmp_path / "m.onnx")
        args = ["predict", str(image), "-o", str(tmp_path / "out"), "--backend", "onnx", "--model", model]
    assert_user_error(runner.invoke(app, args), 'pip install "fsdistill[export]"', "onnxruntime")


# --- outputs that cannot be written --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["predict", "adapt", "distill", "check --json", "evaluate --json", "export", "profile"]
)
def test_output_that_cannot_be_written(runner, tiny_binary_run, tiny_data, tmp_path, command) -> None:
    """A path under a regular file: unwritable even for root (a chmod-ed folder is not, and CI runs as root)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    target = str(blocker / "out")
    model = ["--model", str(tiny_binary_run.run_dir), "--device", "cpu"]
    image = str(SynData.save(tmp_path / "a.png", SynData.image(30, 41, 0)))
    args = {
        "predict": ["predict", image, "-o", target, *model],
        "adapt": ["adapt", "--support", str(tiny_data.binary), "--out", target, "--steps", "0", *TINY],
        "distill": ["distill", "--support", str(tiny_data.binary), "--out", target, "--steps", "0", *TINY],
        "check --json": ["check", str(tiny_data.binary), "--json", str(blocker / "report.json")],
        "evaluate --json": ["evaluate", str(tiny_data.binary_heldout), *model, "--json", str(blocker / "r.json")],
        "export": ["export", *model, "-o", str(blocker / "x.onnx")],
        "profile": ["profile", "--backbone", "test-resnet", "--size", "64", "--out", target, "--device", "cpu"],
    }[command]
    if command == "export":
        pytest.importorskip("onnxruntime")
    assert_user_error(runner.invoke(app, args), "blocker")
    assert blocker.read_text() == "a file, not a folder"


def test_read_only_output_folder(runner, tiny_binary_run, tmp_path, monkeypatch) -> None:
    """chmod 500 where that locks the folder; as root (CI), which writes anyway, the OS's refusal is simulated
    at the write probe (EACCES for any file created in the folder), so the test runs everywhere."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if not hasattr(os, "geteuid") or os.geteuid() == 0:
        import errno

        real_write_bytes = Path.write_bytes

        def refuse_in_locked(self, data):
            if locked in self.parents:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return real_write_bytes(self, data)

        monkeypatch.setattr(Path, "write_bytes", refuse_in_locked)
        (locked / "out").mkdir()  # root can create it; the write test inside it is what fails
    try:
        image = str(SynData.save(tmp_path / "a.png", SynData.image(30, 41, 0)))
        model = str(tiny_binary_run.run_dir)
        result = runner.invoke(app, ["predict", image, "-o", str(locked / "out"), "--model", model])
        assert_user_error(result, "locked", "writable")
    finally:
        locked.chmod(0o700)


# --- interruptions (real signals to a real process) ----------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _spawn(args: list[str], cwd: Path, driver: str | None = None, **env: str) -> subprocess.Popen:
    """``fsdistill ARGS`` in a new process (``driver``: Python run first, e.g. to slow a step down)."""
    code = (driver or "") + "\nimport sys\nfrom fsdistill.cli import main\n"
    code += "sys.argv = ['fsdistill', *sys.argv[1:]]\nmain()\n"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env={**_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the process to get going")
        time.sleep(0.05)


def _finish(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def _distill_args(tiny_data, run: str, steps: int) -> list[str]:
    return ["distill", "--support", str(tiny_data.binary), "--out", run, "--steps", str(steps), *TINY]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_distill_killed_mid_training_leaves_nothing_loadable(runner, tiny_data, tmp_path, monkeypatch, sig) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "killed"
    proc = _spawn(_distill_args(tiny_data, "runs/killed", 1_000_000), tmp_path)
    _wait_for(lambda: (run / "config.resolved.yaml").is_file(), proc)  # written just before training starts
    time.sleep(0.5)
    proc.send_signal(sig)
    rc, err = _finish(proc)
    if sig == signal.SIGINT:
        assert rc == 130, err
        assert err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err
    else:
        assert rc == -signal.SIGKILL
    assert not is_artifact(run / "student") and not is_artifact(run / "teacher")
    with pytest.raises(CheckpointError):
        load_model(run)
    # The default model (newest run under ./runs) does not pick the half run either.
    image = str(SynData.save(tmp_path / "a.png", SynData.image(30, 41, 0)))
    assert_user_error(runner.invoke(app, ["predict", image, "-o", str(tmp_path / "out")]), "no run found")

    rerun = runner.invoke(app, _distill_args(tiny_data, "runs/killed", 1))
    assert rerun.exit_code == 0, (rerun.output, rerun.exception)
    assert load_model(run).kind == "student" and load_model(run, kind="teacher").kind == "teacher"


def test_distill_killed_while_saving_the_student(runner, tiny_data, tmp_path) -> None:
    """SIGKILL right after the student's weights hit the disk, before its config.json and the rename."""
    driver = (
        "import os, signal\n"
        "from fsdistill import checkpoint\n"
        "real, calls = checkpoint.save_file, []\n"
        "def save_then_die(tensors, path, metadata=None):\n"
        "    real(tensors, path, metadata=metadata)\n"
        "    calls.append(path)\n"
        "    if len(calls) == 2:  # the teacher is saved first, then the student\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpoint.save_file = save_then_die\n"
    )
    run = tmp_path / "run"
    proc = _spawn(_distill_args(tiny_data, str(run), 1), tmp_path, driver)
    rc, err = _finish(proc, timeout=120)
    assert rc == -signal.SIGKILL, err
    staging = list(run.glob(".student.partial-*"))
    assert len(staging) == 1 and (staging[0] / "model.safetensors").is_file()  # killed mid-save indeed
    assert not (run / "student").exists()
    for half in (staging[0], run):
        with pytest.raises(CheckpointError):
            load_model(half, kind="student")
    assert load_model(run, kind="teacher").kind == "teacher"  # the complete teacher is intact

    rerun = runner.invoke(app, _distill_args(tiny_data, str(run), 1))
    assert rerun.exit_code == 0, (rerun.output, rerun.exception)
    assert load_model(run, kind="student").kind == "student"
    assert not list(run.glob(".*.partial-*"))  # the next save cleared the dead staging folder


SLOW_MASKS = (
    "import time\n"
    "from fsdistill.infer import predictor\n"
    "real = predictor.write_mask\n"
    "def slow(out, key, mask, palette, text=None):\n"
    "    time.sleep(0.1)\n"
    "    real(out, key, mask, palette, text)\n"
    "predictor.write_mask = slow\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_predict_killed_mid_run_resumes_to_the_same_outputs(runner, shaken_multi_student, tmp_path, sig) -> None:
    images = tmp_path / "images"
    for i in range(12):
        SynData.save(images / f"im{i:02d}.png", SynData.image(40 + i, 48, i))
    out, reference = tmp_path / "out", tmp_path / "reference"
    args = ["predict", str(images), "--model", str(shaken_multi_student), "--device", "cpu", "--batch-size", "2",
            "--workers", "0", "--overlay", "-q"]  # fmt: skip
    proc = _spawn([*args, "-o", str(out)], tmp_path, SLOW_MASKS)
    masks = out / "masks"
    _wait_for(lambda: masks.is_dir() and len(list(masks.glob("*.png"))) >= 3, proc)
    proc.send_signal(sig)
    rc, err = _finish(proc)
    assert rc == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
    done = sorted(p.name for p in masks.glob("*.png"))
    assert 3 <= len(done) < 12, done  # it was stopped mid-run
    for name in done:  # every mask on disk is complete
        with Image.open(masks / name) as mask:
            mask.load()

    resumed = runner.invoke(app, [*args, "-o", str(out)])
    assert resumed.exit_code == 0, resumed.output
    assert runner.invoke(app, [*args, "-o", str(reference)]).exit_code == 0

    def tree(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    got, want = tree(out), tree(reference)
    assert sorted(got) == sorted(want)
    assert got == want  # masks, overlays, predictions.csv and the manifest, byte for byte
    assert len(np.unique(np.asarray(Image.open(out / "masks" / "im00.png")))) > 1  # not a trivial all-background run


def test_an_interrupt_swallowed_by_a_finaliser_still_stops_training(tiny_data, tmp_path) -> None:
    """Python drops a KeyboardInterrupt raised inside ``__del__``; the training loop checks the CLI's flag."""
    from fsdistill import api
    from fsdistill.config import DistillCfg, load_config
    from fsdistill.runtime import clear_interrupt, request_interrupt

    cfg = load_config(
        DistillCfg,
        None,
        {
            "support": tiny_data.binary,
            "out": tmp_path / "run",
            "device": "cpu",
            "model": {"backbone": "test-resnet", "size": 64},
            "train": {"steps": 1_000_000, "episodes_per_step": 1},
        },
    )
    request_interrupt()  # as the SIGINT handler does when its exception is lost
    try:
        with pytest.raises(KeyboardInterrupt):
            api.distill(cfg, quiet=True)
    finally:
        clear_interrupt()
    assert not is_artifact(tmp_path / "run" / "student")


def test_unreadable_folders_and_files_are_one_sentence_with_the_fix(tmp_path, monkeypatch, syn_data) -> None:
    """A folder that may not be listed was a PermissionError traceback (check, distill, predict's output-folder
    test) or passed over in silence (predict's walk); a file without read permission was told to be re-exported,
    and a full disk to "move what is in the way"."""
    import errno

    from fsdistill import storage
    from fsdistill.data import discover as discover_module
    from fsdistill.data.images import read_image
    from fsdistill.errors import DataError

    root = tmp_path / "support"
    syn_data.paired(root, n=2)

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(root / "masks"))

    with monkeypatch.context() as patch:
        patch.setattr(discover_module, "find_pairs", denied)
        with pytest.raises(
            DataError, match=r"Cannot read .*support or a file in it \(permission denied\); make it readable \(chmod\)"
        ):
            discover_module.discover(root)

    def walk_with_a_closed_folder(top, onerror=None):
        yield str(top), ["closed"], []
        onerror(PermissionError(errno.EACCES, "Permission denied", str(Path(top) / "closed")))

    with monkeypatch.context() as patch:
        patch.setattr(storage.os, "walk", walk_with_a_closed_folder)
        with pytest.raises(DataError, match=r"Cannot list .*closed \(Permission denied\); make it readable"):
            list(storage.LocalStorage(root).walk())

    with monkeypatch.context() as patch:
        patch.setattr(Path, "is_file", denied)
        with pytest.raises(DataError, match=r"Cannot look into .* \(permission denied\)"):
            storage.LocalStorage(root).kind("images/s0.png")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_bytes", denied)
        patch.setattr("fsdistill.data.images.open_pil", denied)
        with pytest.raises(DataError, match=r"permission denied\. Make it readable \(chmod\) or remove it\.$"):
            read_image(root / "images" / "s0.png")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(storage, "write_atomic", full)
        with pytest.raises(DataError, match=r"No space left on device\); free some space, or choose another"):
            storage.LocalStorage(tmp_path / "out").write_bytes("m.png", b"x")


def test_hostile_names_configs_and_archives_are_one_sentence(tmp_path, syn_data, monkeypatch) -> None:
    """Found by feeding careless and hostile inputs: a names id of 99999999999 and a YAML alias bomb in names:
    used all memory (MemoryError traceback); a 5,000-digit number or a python tag in --config was a traceback or
    "fix its syntax"; a zip unpacking to more than the free disk was unpacked; a labelstudio_config.xml cut short
    was ignored in silence (classes reordered); COCO images outside the folder were used without a word."""
    import json
    import os
    import shutil
    import zipfile

    from fsdistill.config import DistillCfg, load_config
    from fsdistill.data import discover as discover_module
    from fsdistill.data.classes import read_class_names
    from fsdistill.data.discover import discover
    from fsdistill.data.images import read_image
    from fsdistill.errors import ConfigError, DataError

    names = tmp_path / "data.yaml"
    names.write_text("names: {0: background, 1: nucleus, 99999999999: x}\n")
    with pytest.raises(DataError, match="gives the id 99999999999, but masks hold class ids up to 254"):
        read_class_names(names)
    for form in ("[background, *a1]", "{0: background, 1: *a1}"):  # an alias bomb, as a list or a mapping
        names.write_text(f"a0: &a0 [lol, lol]\na1: &a1 [*a0, *a0]\nnames: {form}\n")
        with pytest.raises(DataError, match="lists something other than plain names"):
            read_class_names(names)

    config = tmp_path / "c.yaml"
    config.write_text("train:\n  steps: 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError, match="holds a value fsdistill cannot read"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})
    config.write_text("train:\n  steps: 0x" + "f" * 40 + "\n")
    with pytest.raises(ConfigError, match="too large a number"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})
    config.write_text('train:\n  steps: "100000000000000000000000000000"\n')  # quoted: converted after the check
    with pytest.raises(ConfigError, match="too large a number"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})
    config.write_text("train: !!python/object/apply:os.system [echo]\n")
    with pytest.raises(ConfigError, match="uses a YAML tag fsdistill does not read"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})
    config.write_text("train:\n  <<: 5\n")  # no tag: a merge of no mapping
    with pytest.raises(ConfigError, match="cannot be read as options"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})
    config.write_text("train:\n  ? [a, b]\n  : 3\n")  # a list as an option name was a TypeError traceback
    with pytest.raises(ConfigError, match="uses a list or mapping as an option name"):
        load_config(DistillCfg, config, {"support": str(tmp_path)})

    support = tmp_path / "support"
    syn_data.paired(support, n=2)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in support.rglob("*.png"):
            z.write(path, path.relative_to(support).as_posix())
    monkeypatch.setenv("FSDISTILL_CACHE", str(tmp_path / "cache"))
    with monkeypatch.context() as patch:
        usage = shutil.disk_usage
        patch.setattr(discover_module.shutil, "disk_usage", lambda folder: usage(folder)._replace(free=10))
        with pytest.raises(DataError, match=r"unpacks to .* MB but .* has 0 MB free; set FSDISTILL_CACHE"):
            discover(archive)

    ls = tmp_path / "ls"
    ls.mkdir()
    (ls / "labelstudio_config.xml").write_text('<View><BrushLabels name="l" toName="i"><Label value="zeta"/>')
    (ls / "export.json").write_text(
        json.dumps([{"id": 1, "data": {"image": "x.png"}, "annotations": [{"result": []}]}])
    )
    with pytest.raises(DataError, match="is not a Label Studio labelling config that can be read"):
        discover(ls)

    coco = tmp_path / "coco"
    syn_data.save(coco / "images" / "a.png", syn_data.image(10, 12))
    syn_data.save(tmp_path / "outside" / "secret.png", syn_data.image(10, 12))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 10},
                   {"id": 2, "file_name": "../outside/secret.png", "width": 12, "height": 10}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": k, "image_id": k, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]} for k in (1, 2)],
    }  # fmt: skip
    (coco / "ann.json").write_text(json.dumps(data))
    index = discover(coco)
    assert any("1 images listed in ann.json lie outside" in w and "secret.png" in w for w in index.warnings)
    # An image of the folder that is a symlink into a shared store is the folder's own: no warning.
    data["images"] = data["images"][:1]
    data["annotations"] = data["annotations"][:1]
    (coco / "images" / "a.png").unlink()
    (coco / "images" / "a.png").symlink_to(tmp_path / "outside" / "secret.png")
    (coco / "ann.json").write_text(json.dumps(data))
    assert not [w for w in discover(coco).warnings if "outside" in w]

    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"is not a regular file \(a pipe or a device\); pass image files\.$"):
        read_image(fifo)
