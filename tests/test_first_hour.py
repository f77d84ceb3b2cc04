"""Issue 19, "first-hour failures found by a new user": each case reproduced through the real CLI (typer's
CliRunner) or the library function that misbehaved, with the tiny session runs of conftest.py (no new training).
The rows of docs/reliability.md that cite ``first`` name the tests here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsdistill.cli import app

from helpers import SynData, assert_user_error


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _images(folder: Path, names: list[str]) -> Path:
    for k, name in enumerate(names):
        SynData.save(folder / name, SynData.image(30, 41, k))
    return folder


def _pngs_under(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.png"))


# --- predict: inputs ---------------------------------------------------------------------------------------------


def test_output_folder_inside_the_input_folder_is_not_read_back(runner, tiny_binary_run, tmp_path) -> None:
    """``predict q -o q/pred --overlay`` three times wrote 2, then 4, then 8 new masks (its own outputs as input)."""
    q = _images(tmp_path / "q", ["a.png", "b.png"])
    args = ["predict", str(q), "-o", str(q / "pred"), "--model", str(tiny_binary_run.run_dir), "--overlay"]
    args += ["--device", "cpu"]
    outputs = []
    for _ in range(3):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout.strip().splitlines()[-1])
    assert outputs[0].startswith("2 written, 0 already done")
    assert outputs[1].startswith("0 written, 2 already done") and outputs[2].startswith("0 written, 2 already done")
    assert _pngs_under(q / "pred" / "masks") == 2 and _pngs_under(q / "pred" / "overlays") == 2
    assert len((q / "pred" / "predictions.csv").read_text().splitlines()) == 1 + 2 * 2  # header + 2 images × 2 classes


def test_output_folder_equal_to_the_input_folder_and_old_output_folders_are_skipped(
    runner, tiny_binary_run, tmp_path
) -> None:
    q = _images(tmp_path / "q", ["a.png", "b.png"])
    base = ["--model", str(tiny_binary_run.run_dir), "--overlay", "--device", "cpu"]
    for _ in range(2):
        result = runner.invoke(app, ["predict", str(q), "-o", str(q), *base])
        assert result.exit_code == 0, result.output
    assert "0 written, 2 already done" in result.stdout
    assert _pngs_under(q / "masks") == 2
    # An earlier run's -o folder inside the input (it holds a manifest) is not input either, whatever -o is now.
    result = runner.invoke(app, ["predict", str(q), "-o", str(tmp_path / "elsewhere"), *base])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("2 written")


def test_overlapping_inputs_predict_each_image_once(runner, tiny_binary_run, tmp_path) -> None:
    """``predict r r/sub`` predicted r/sub's images twice (once under r/, once under sub/)."""
    r = _images(tmp_path / "r", ["a.png", "sub/b.png"])
    out = tmp_path / "out"
    args = ["predict", str(r), str(r / "sub"), str(r / "sub" / "b.png"), "-o", str(out)]
    result = runner.invoke(app, [*args, "--model", str(tiny_binary_run.run_dir), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1].startswith("2 written")
    assert sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png")) == [
        "r/a.png",
        "r/sub/b.png",
    ]


def test_predict_without_model_says_which_run_it_used(runner, tiny_binary_run, tmp_path, monkeypatch) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "newest").symlink_to(tiny_binary_run.run_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "in", ["a.png"])
    result = runner.invoke(app, ["predict", "in", "-o", "out", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"model: {(tiny_binary_run.run_dir / 'student').resolve()}" in result.stderr
    quiet = runner.invoke(app, ["predict", "in", "-o", "out2", "--device", "cpu", "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    # With --model the user already knows which model it is: nothing extra.
    given = runner.invoke(app, ["predict", "in", "-o", "out3", "--device", "cpu", "--model", "runs/newest"])
    assert given.exit_code == 0 and "model:" not in given.stderr


# --- scripts/setup.sh ---------------------------------------------------------------------------------------------


def _fake_setup_tree(tmp_path: Path, pip_rc: int) -> Path:
    """A copy of scripts/setup.sh beside a fake .venv whose python prints a setuptools-like notice box."""
    import shutil

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "scripts" / "setup.sh", root / "scripts" / "setup.sh")
    fake = root / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "#!/bin/sh\n"
        'echo "pip $*"\n'
        'echo "!! ********** Editable installation **********" >&2\n'
        f'case "$*" in *-e*) exit {pip_rc};; esac\n'
    )
    fake.chmod(0o755)
    return root


def test_setup_is_quiet_when_it_works_and_shows_the_log_when_it_fails(tmp_path) -> None:
    """The demo printed setuptools' "Editable installation" warning box during set-up."""
    import subprocess

    ok = _fake_setup_tree(tmp_path / "ok", 0)
    done = subprocess.run(["bash", str(ok / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert "Editable installation" in (ok / ".cache" / "setup.log").read_text()

    bad = _fake_setup_tree(tmp_path / "bad", 1)
    failed = subprocess.run(["bash", str(bad / "scripts" / "setup.sh")], capture_output=True, text=True, timeout=60)
    assert failed.returncode != 0
    assert "set-up failed" in failed.stderr and "Editable installation" in failed.stderr
    assert "pip -m pip install -e" in failed.stderr  # the failing step's own output, from the log


# --- hub backbones offline -----------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch, tmp_path) -> list:
    """No route to anywhere (every TCP connect fails at once), an empty Hugging Face cache, and timm's hub loader
    made to fail loudly, so a test notices any download attempt. Returns the list of attempted connections."""
    import socket

    import timm
    from huggingface_hub import constants

    attempts: list = []

    def unreachable(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    real_create = timm.create_model

    def no_hub(name, pretrained=False, **kwargs):
        overlay = kwargs.get("pretrained_cfg_overlay") or {}
        assert not pretrained or "file" in overlay, f"{name}: a hub download was attempted"
        return real_create(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(timm, "create_model", no_hub)
    return attempts


def test_hub_backbone_offline_fails_fast_with_one_sentence(runner, tiny_data, tmp_path, no_network) -> None:
    """``--backbone swin-b`` offline waited 54 s and printed 22 lines of hub retries before its error."""
    import time

    start = time.perf_counter()
    result = runner.invoke(
        app, ["distill", "--support", str(tiny_data.binary), "--backbone", "swin-b", "--out", str(tmp_path / "run"),
              "--device", "cpu"],
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert_user_error(result, "swin_base_patch4_window12_384", "cannot be reached", "--backbone-weights FILE")
    assert elapsed < 10, elapsed  # one refused connect, not the hub client's retries
    assert len(no_network) == 1 and not (tmp_path / "run").exists()


def test_hub_backbone_loads_from_the_local_cache_without_the_network(tmp_path, no_network) -> None:
    """Weights downloaded once load from the hub cache offline (no connection tried, nothing waited for)."""
    import torch
    from safetensors.torch import save_file

    from fsdistill.models.backbone import create_backbone, load_classifier

    reference = load_classifier("resnet50", pretrained=False).state_dict()
    torch.manual_seed(0)
    reference = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.items()}
    repo = tmp_path / "hf-cache" / "models--timm--resnet50.a1h_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file(reference, str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))

    backbone = create_backbone("resnet50")
    assert no_network == []
    loaded = backbone.model.state_dict()
    assert torch.equal(loaded["conv1.weight"], reference["conv1.weight"])


def test_hub_retry_messages_are_silenced(runner, tiny_data, tmp_path, monkeypatch) -> None:
    """When the hub answers but the download fails, its retry warnings no longer bury the one error line."""
    import logging

    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    from fsdistill.models import backbone_weights as bw

    def retrying_create_model(name, pretrained=False, **kwargs):
        if pretrained:
            for k in range(1, 6):
                logging.getLogger("huggingface_hub.utils._http").warning(f"Retrying in 1s [Retry {k}/5].")
            raise LocalEntryNotFoundError("cannot find the requested files in the local cache")
        return real(name, pretrained=pretrained, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", retrying_create_model)
    monkeypatch.setattr(bw, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(bw, "_hub_file_in_cache", lambda spec: None)
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    emitted: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = emitted.append  # the hub client logs through its own handler, not necessarily to our stderr
    hub_logger.addHandler(collector)
    try:
        result = runner.invoke(
            app, ["distill", "--support", str(tiny_data.binary), "--backbone", "resnet50", "--out",
                  str(tmp_path / "run"), "--device", "cpu"],
        )  # fmt: skip
    finally:
        hub_logger.removeHandler(collector)
    assert_user_error(result, "Could not download", "--backbone-weights")
    assert emitted == []
    assert hub_logger.level == level  # restored after the call


# --- help texts and option messages ----------------------------------------------------------------------------------


def _help(runner: CliRunner, command: str) -> str:
    """The rendered ``--help`` of ``command``."""
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    return result.stdout


def _option_help(command: str, flag: str) -> str:
    """The help text of ``command``'s option ``flag``, as the help screen shows it (before line wrapping)."""
    import typer

    params = typer.main.get_command(app).commands[command].params
    option = next(p for p in params if flag in getattr(p, "opts", ()))
    return " ".join(option.help.split())


def test_steps_help_says_what_0_does_for_each_command(runner) -> None:
    """The shared help said "0 = untrained teacher" for distill too, where 0 writes an untrained student."""
    adapt, distill = _option_help("adapt", "--steps"), _option_help("distill", "--steps")
    assert "0 = the untrained teacher" in adapt
    assert "untrained teacher" not in distill and "the student is written untrained" in distill
    for text in (adapt, distill):
        assert "default: automatic from the support folder, see README" in text


def test_distill_with_0_steps_says_the_student_is_untrained(runner, tiny_data, tmp_path) -> None:
    args = ["distill", "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), "--steps", "0"]
    result = runner.invoke(app, [*args, "--backbone", "test-resnet", "--size", "64", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "note: 0 steps: the student is untrained" in result.stdout


def test_help_shows_the_defaults_of_size_and_steps(runner) -> None:
    from fsdistill.config import ModelCfg

    size = ModelCfg.model_fields["size"].default
    for command in ("adapt", "distill"):
        assert f"(default {size})" in _option_help(command, "--size")
        assert "default:" in _option_help(command, "--steps")
        # typer's rich markup reads [...] as a tag and dropped the old "[default: ...]" from the screen
        assert "[" not in _option_help(command, "--steps") + _option_help(command, "--size")


@pytest.mark.parametrize("command", ["check", "adapt", "distill", "predict", "evaluate", "profile", "export"])
def test_on_off_flags_show_no_value_type(runner, command) -> None:
    """Flags showed ``<bool>``, so ``--overlay true`` looked valid (and then failed: Input true does not exist)."""
    text = _help(runner, command)
    assert "--quiet" in text and "<bool>" not in text


def test_root_help_shows_no_value_type_for_flags(runner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "<bool>" not in result.stdout and "--version" in result.stdout


def test_empty_train_is_refused(runner, tiny_data, tmp_path) -> None:
    """``--train ""`` (an empty shell variable) silently meant the default groups."""
    args = ["distill", "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), "--train", ""]
    result = runner.invoke(app, [*args, "--backbone", "test-resnet", "--size", "64", "--device", "cpu"])
    assert_user_error(result, "--train got no group names", "mapper,merge,mixer")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--steps", "-1"], "Invalid --steps -1: Input should be greater than or equal to 0"),
        (["--size", "100"], "Invalid --size 100: size must be a multiple of 32"),
        (["--train", "mapper,bogus"], "Invalid --train mapper,bogus: unknown trainable group"),
        (["--lr", "0"], "Invalid --lr 0.0:"),
        (["--student-width", "-2"], "Invalid --student-width -2:"),
    ],
)
def test_option_errors_name_the_flag(runner, tiny_data, tmp_path, flags, fragment) -> None:
    """Errors said ``train.steps`` (the config key) for a value typed as ``--steps``."""
    args = ["distill", "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), *flags]
    line = assert_user_error(runner.invoke(app, [*args, "--backbone", "test-resnet", "--device", "cpu"]), fragment)
    assert "train." not in line and "model." not in line


def test_yaml_errors_still_name_the_yaml_key(runner, tiny_data, tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  steps: -1\n")
    args = ["distill", "--support", str(tiny_data.binary), "--out", str(tmp_path / "run"), "--config", str(config)]
    assert_user_error(runner.invoke(app, args), "train.steps")


def test_decoder_help_no_longer_claims_flat_cost(runner) -> None:
    """Measured: the light-decoder student is 1.23x the backbone at 1 class and 2.5x at 20, not flat (the CLI help
    says so with the numbers of docs/benchmarks.md's current table, the config field in words)."""
    from fsdistill.config import ModelCfg

    for command in ("adapt", "distill", "profile"):
        text = _option_help(command, "--decoder")
        assert "flat" not in text and "1.23x" in text and "2.5x at 20" in text
    description = ModelCfg.model_fields["decoder"].description
    assert "flat" not in description and "grows with the number of classes" in description


def test_jargon_options_are_explained_in_plain_words(runner) -> None:
    assert "ConvDist" not in _option_help("distill", "--student-width")
    assert "per class" in _option_help("distill", "--student-width")
    assert "Which parts of the teacher learn from your images" in _option_help("distill", "--train")
    no_cache = _option_help("profile", "--no-cache")
    assert "backbone again for every query image" in no_cache


# --- check: every broken pair, and masks turned by an EXIF orientation ---------------------------------------------


def _break_pairs(root: Path, names: list[str]) -> None:
    """Shrink the masks of ``names`` so each pair has a size mismatch."""
    for name in names:
        SynData.save(root / "masks" / f"{name}.png", np.zeros((20, 20), np.uint8))


def test_check_reports_every_bad_file(runner, tmp_path) -> None:
    """check reported only the first of several bad files, so fixing a folder took one run per file."""
    from helpers import write_binary_folder

    root = write_binary_folder(tmp_path / "support", [f"s{i}" for i in range(5)])
    _break_pairs(root, ["s1"])
    data = (root / "images" / "s2.png").read_bytes()
    (root / "images" / "s2.png").write_bytes(data[: len(data) // 3])  # truncated image
    (root / "masks" / "s4.png").write_bytes(b"not a png")  # unreadable mask
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert (
        lines[0]
        == f"error: 3 of 5 pairs in {root} cannot be used; fix or remove each file below, then run check again:"
    )
    assert len(lines) == 4 and all(line.startswith("  - ") for line in lines[1:])
    assert "s1.png is 20×20" in lines[1] and "images/s2.png" in lines[2] and "masks/s4.png" in lines[3]
    assert "Traceback" not in result.output
    # the other pairs are reported, and --json is written for a script (it got nothing to parse)
    assert "Broken pairs: 3" in result.stdout and "pairs: 5" in result.stdout
    result = runner.invoke(app, ["check", str(root), "--json", str(tmp_path / "report.json"), "--quiet"])
    assert result.exit_code == 2 and result.stdout == ""
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["num_pairs"] == 5 and len(report["broken_pairs"]) == 3 and "s1.png" in report["broken_pairs"][0]
    assert report["images_per_class"]["foreground"] == 2  # s0 and s3
    # every pair broken: no figures of zero pairs that look measured, no "appears in no mask" for every class
    for key in ("s0", "s3"):
        (root / "masks" / f"{key}.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 2 and "Broken pairs: all 5, so there is nothing to measure." in result.stdout
    assert "Image sizes" not in result.stdout and "appears in no mask" not in result.stdout


def test_check_caps_the_list_of_bad_files(runner, tmp_path) -> None:
    from fsdistill.data.check import MAX_REPORTED_PROBLEMS

    from helpers import write_binary_folder

    names = [f"s{i:02d}" for i in range(MAX_REPORTED_PROBLEMS + 6)]
    root = write_binary_folder(tmp_path / "support", names, size=(24, 28))
    _break_pairs(root, names[1:])  # all but one pair broken
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {len(names) - 1} of {len(names)} pairs")
    assert len(lines) == 1 + MAX_REPORTED_PROBLEMS + 1 and lines[-1] == "  - and 5 more"


def test_one_bad_file_is_still_one_sentence(runner, tmp_path) -> None:
    from helpers import write_binary_folder

    root = write_binary_folder(tmp_path / "support", ["s0", "s1"])
    _break_pairs(root, ["s1"])
    assert_user_error(runner.invoke(app, ["check", str(root)]), "s1.png is 20×20", "resize the mask")


@pytest.mark.parametrize("tagged", ["image", "mask"])
def test_mask_in_the_other_exif_orientation_is_told_so(runner, tmp_path, tagged) -> None:
    """A mask stored in the other orientation than its EXIF-rotated image was told to "resize the mask"."""
    root = tmp_path / "support"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° for display: stored 30×20 (w×h) shows as 20×30
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 5:20] = 255
    if tagged == "image":  # a phone photo; the mask was drawn on its stored (unrotated) pixels
        Image.fromarray(SynData.image(20, 30)).save(root / "images" / "a.jpg", exif=exif)
        Image.fromarray(mask).save(root / "masks" / "a.png")
    else:  # the image has no tag; the mask carries one and turns on reading
        Image.fromarray(SynData.image(20, 30)).save(root / "images" / "a.jpg")
        Image.fromarray(mask).save(root / "masks" / "a.png", exif=exif)
    line = assert_user_error(
        runner.invoke(app, ["check", str(root)]), "the same size turned by 90°", "EXIF orientation"
    )
    assert "resize the mask" not in line and "rotate it by 90°" in line
    assert f"{tagged}'s EXIF orientation tag" in line


# --- colour masks with smoothed edges ------------------------------------------------------------------------------


def _smoothed_colour_folder(root: Path, colours: dict[str, tuple[int, int, int]], n: int = 3, mask_dir="masks",
                            image_dir="images") -> Path:  # fmt: skip
    """Colour masks drawn at 64×64 (a disc of the first colour, a square of the second if any) and resized
    bilinearly to 97×89, as an image editor or a resize script does: the edges hold mixtures of the colours."""
    values = list(colours.values())
    for k in range(n):
        m = np.zeros((64, 64, 3), np.uint8)
        m[SynData.disc(64, 64, 20 + 5 * k, 30, 12)] = values[0]
        if len(values) > 1:
            m[40:56, 8 + 4 * k : 30 + 4 * k] = values[1]
        SynData.save(root / mask_dir / f"a{k}.png", np.asarray(Image.fromarray(m).resize((97, 89), Image.BILINEAR)))
        SynData.save(root / image_dir / f"a{k}.jpg", SynData.image(89, 97, k))
    return root


def _nearest_class(rgb: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    distances = ((rgb[..., None, :].astype(int) - np.asarray(palette)[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def test_smoothed_colour_masks_keep_their_real_classes(runner, tmp_path) -> None:
    """Two real colours resized bilinearly became 24 classes (exit 0, only "tiny class" warnings)."""
    from fsdistill.data.discover import discover

    root = _smoothed_colour_folder(tmp_path / "support", {"polyp": (200, 30, 30)})
    raw = np.asarray(Image.open(root / "masks" / "a0.png"))
    assert len(np.unique(raw.reshape(-1, 3), axis=0)) > 10  # the case of the issue: many edge colours
    index = discover(root)
    assert index.class_names == ["background", "foreground"] and index.palette == [(0, 0, 0), (200, 30, 30)]
    mask = index.load_mask(0)
    assert (mask == _nearest_class(raw, index.palette)).all()  # every edge pixel went to the nearer real colour
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert "Classes (1 + background" in result.stdout
    assert "lie between the real colours on object edges" in result.stdout
    assert "mapped to the nearest of the 2 real colours, not made a class" in result.stdout


def test_smoothed_colour_masks_with_three_colours(tmp_path) -> None:
    from fsdistill.data.discover import discover

    root = _smoothed_colour_folder(tmp_path / "support", {"red": (255, 0, 0), "green": (0, 255, 0)})
    index = discover(root)
    assert index.class_names == ["background", "class_1", "class_2"]
    assert index.palette == [(0, 0, 0), (0, 255, 0), (255, 0, 0)]
    raw = np.asarray(Image.open(root / "masks" / "a1.png"))
    assert (index.load_mask(1) == _nearest_class(raw, index.palette)).all()


def test_a_real_class_between_two_colours_is_not_taken_for_a_blend(tmp_path) -> None:
    """Dark blue between black and blue is a class of its own when it fills areas, not only edges."""
    from fsdistill.data.discover import discover

    root = tmp_path / "support"
    for k in range(2):
        m = np.zeros((40, 40, 3), np.uint8)
        m[:, 20:] = (0, 0, 255)
        m[5:15, 5 + k : 30 + k] = (0, 0, 128)
        SynData.save(root / "masks" / f"a{k}.png", m)
        SynData.save(root / "images" / f"a{k}.png", SynData.image(40, 40, k))
    index = discover(root)
    assert index.class_names == ["background", "class_1", "class_2"]
    assert not any("edges" in w for w in index.warnings)


def test_cvat_masks_with_smoothed_edges_map_blends_to_labelmap_colours(runner, tmp_path) -> None:
    from fsdistill.data.discover import discover

    root = tmp_path / "cvat"
    colours = {"car": (250, 50, 83), "road": (51, 221, 255)}
    _smoothed_colour_folder(root, colours, mask_dir="SegmentationClass", image_dir="JPEGImages")
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nroad:51,221,255::\n"
    )
    index = discover(root)
    assert (index.layout, index.class_names) == ("cvat", ["background", "car", "road"])
    assert any("lie between the colours of labelmap.txt on object edges" in w for w in index.warnings)
    raw = np.asarray(Image.open(root / "SegmentationClass" / "a2.png"))
    assert (index.load_mask(2) == _nearest_class(raw, index.palette)).all()
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 0 and "mapped to the nearest of the 3 real colours" in result.stdout

    # A colour that is no mixture of label-map colours is still refused, naming it.
    raw = raw.copy()
    raw[0, 0] = (10, 200, 10)
    SynData.save(root / "SegmentationClass" / "a2.png", raw)
    assert_user_error(runner.invoke(app, ["check", str(root)]), "colour (10, 200, 10)", "labelmap.txt")


# --- class ids with gaps, and listed classes without pixels ----------------------------------------------------------


def _gapped_folder(root: Path, values=(1, 2, 7), names: list[str] | None = None) -> Path:
    """Grey index masks whose values skip ids (default {0, 1, 2, 7}), each value in every mask."""
    for k in range(3):
        mask = np.zeros((48, 56), np.uint8)
        for j, v in enumerate(values):
            mask[4 + 14 * j : 14 + 14 * j, 5 + 3 * k : 30 + 3 * k] = v
        SynData.save(root / "masks" / f"g{k}.png", mask)
        SynData.save(root / "images" / f"g{k}.png", SynData.image(48, 56, k))
    if names is not None:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def test_class_ids_with_gaps_become_the_classes_that_occur(runner, tmp_path) -> None:
    """{0, 1, 2, 7} without a names file gave 8 classes, 4 of them empty, trained silently, and check told the
    user to "remove it from the names" in a folder that has no names file."""
    from fsdistill.data.discover import discover
    from fsdistill.models.build import load_model

    root = _gapped_folder(tmp_path / "support")
    index = discover(root)
    assert index.class_names == ["background", "class_1", "class_2", "class_7"]
    raw = np.asarray(Image.open(root / "masks" / "g0.png"))
    mask = index.load_mask(0)
    assert (mask[raw == 7] == 3).all() and (mask[raw == 2] == 2).all() and (mask[raw == 0] == 0).all()
    assert index.unused_classes() == []

    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    assert "Classes (3 + background" in result.stdout and "remove it from the names" not in result.stdout
    assert "appears in no mask" not in result.stdout  # no empty class_3..class_6 any more
    assert "gaps (3-6 unused): the classes are class_1, class_2, class_7, numbered 1..3" in result.stdout

    out = tmp_path / "run"
    args = ["distill", "--support", str(root), "--out", str(out), "--steps", "0", "--backbone", "test-resnet"]
    result = runner.invoke(app, [*args, "--size", "64", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_model(out, kind="student").class_names == ["background", "class_1", "class_2", "class_7"]


def test_listed_class_without_pixels_is_refused_for_training(runner, tmp_path) -> None:
    """A names file listing classes that no mask shows: check warns in terms of that file, training refuses."""
    names = ["background", "a", "b", "unused_3", "unused_4", "c"]
    root = _gapped_folder(tmp_path / "support", values=(1, 2, 5), names=names)
    result = runner.invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "Class 'unused_3' (classes.txt) appears in no mask, so adapt and distill refuse the folder" in text
    assert "or remove it from classes.txt (and renumber the masks)" in text

    for command in ("adapt", "distill"):
        out = tmp_path / f"run-{command}"
        args = [command, "--support", str(root), "--out", str(out), "--steps", "0", "--backbone", "test-resnet"]
        line = assert_user_error(
            runner.invoke(app, [*args, "--size", "64", "--device", "cpu"]),
            "Class 'unused_3' (classes.txt) has no pixel in any mask",
            "(nor do 1 more)",
            "remove it from classes.txt",
        )
        assert "cannot be learned" in line and not out.exists()


def test_a_background_line_taken_as_class_1_is_named_as_the_likely_cause(runner, tmp_path) -> None:
    """A first line naming the background in a word not known as background ("Umgebung") is class 1, every name
    moves up by one and the last has no pixel: the advice to delete that last line made the wrong names permanent."""
    root = _gapped_folder(tmp_path / "support", values=(1, 2, 3), names=["Umgebung", "a", "b", "c"])
    result = runner.invoke(app, ["check", str(root)])
    text = " ".join(result.stdout.split())
    assert "Class 'c' (classes.txt) appears in no mask" in text
    assert "if classes.txt's names look shifted by one, its first name 'Umgebung' may be the background" in text
    args = ["distill", "--support", str(root), "--out", str(tmp_path / "run"), "--steps", "0"]
    assert_user_error(
        runner.invoke(app, [*args, "--backbone", "test-resnet", "--size", "64", "--device", "cpu"]),
        "Class 'c' (classes.txt) has no pixel in any mask",
        "its first name 'Umgebung' may be the background: call it 'background'",
    )


@pytest.mark.parametrize("command", ["predict", "suggest", "distill"])
def test_the_ray_install_hint_keeps_its_extra_in_the_help(runner, command) -> None:
    """Rich read ``[ray]`` as markup and showed ``pip install 'fsdistill'``."""
    text = " ".join(_help(runner, command).replace("│", " ").split())
    assert "pip install 'fsdistill[ray]'" in text.replace("fsdistill [ray]", "fsdistill[ray]")
    assert "pip install 'fsdistill')" not in text


@pytest.mark.parametrize(
    "command, shown", [("check", "SUPPORT_DIR"), ("predict", "INPUTS"), ("evaluate", "DATA_DIR"), ("suggest", "POOL")]
)
def test_usage_lines_name_the_arguments_as_the_contract_does(runner, command, shown) -> None:
    """The usage line showed the parameter's Python name ({support_dir}, {inputs}...) instead of cli.md's."""
    usage = next(line for line in _help(runner, command).splitlines() if "Usage:" in line)
    assert shown in usage and shown.lower() not in usage


def test_a_coco_category_without_annotations_is_refused_for_training(runner, tmp_path) -> None:
    """check warned that a COCO category shows in no mask and "adapt and distill refuse the folder", yet they
    trained it (exit 0): the folder scan counts no pixels for COCO or Label Studio, so the refusal never ran."""
    import json

    root = tmp_path / "coco"
    for k in range(3):
        SynData.save(root / "images" / f"{k}.png", SynData.image(48, 56, k))
    data = {
        "images": [{"id": k, "file_name": f"{k}.png", "width": 56, "height": 48} for k in range(3)],
        "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "ghost"}],
        "annotations": [
            {"id": k, "image_id": k, "category_id": 1, "iscrowd": 0, "segmentation": [[5, 5, 30, 5, 30, 30, 5, 30]]}
            for k in range(3)
        ],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    for command in ("adapt", "distill"):
        out = tmp_path / f"run-{command}"
        args = [command, "--support", str(root), "--out", str(out), "--steps", "0", "--backbone", "test-resnet"]
        assert_user_error(
            runner.invoke(app, [*args, "--size", "64", "--device", "cpu"]),
            "Class 'ghost' (COCO categories of annotations.json) has no pixel in any mask",
            "remove it from the COCO categories",
        )
        assert not out.exists()


def test_names_with_gaps_and_binary_masks_under_many_names_say_the_cause(runner, tmp_path) -> None:
    """names: {1: a, 7: b} named ids 2-6 class_2..class_6 and told the user to remove them from data.yaml, which
    does not list them; 0/255 masks beside a 3-class classes.txt were "empty ... binary masks need 255"."""
    root = _gapped_folder(tmp_path / "gapped", values=(1, 7))
    (root / "data.yaml").write_text("names: {0: background, 1: grey, 7: white}\n")
    args = ["distill", "--support", str(root), "--out", str(tmp_path / "r1"), "--steps", "0", "--backbone",
            "test-resnet", "--size", "64", "--device", "cpu"]  # fmt: skip
    assert_user_error(runner.invoke(app, args), "Class 'class_2' (data.yaml)", "without gaps (ids 1, 2, 3, ...)")
    binary = _gapped_folder(tmp_path / "binary", values=(255,))
    (binary / "classes.txt").write_text("background\na\nb\n")
    for command in (["check", str(binary)], ["distill", "--support", str(binary), *args[3:]]):
        # distill said "Class 'a' has no pixel ... its first name 'a' may be the background" (check was right)
        result = runner.invoke(app, command)
        assert_user_error(result, "are empty", "read as class ids (255 = ignore)", "a binary folder lists one")
    # A names list with no gap (class_1, class_2 written out, class_2 unused) gets no "without gaps" advice.
    listed = _gapped_folder(tmp_path / "listed", values=(1,))
    (listed / "data.yaml").write_text("names: [background, class_1, class_2]\n")
    line = assert_user_error(runner.invoke(app, ["distill", "--support", str(listed), *args[3:]]), "class_2")
    assert "without gaps" not in line
