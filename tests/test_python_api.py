"""``fsdistill.load(run).predict(image)``: the Python entry point gives the masks ``fsdistill predict`` writes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fsdistill
from fsdistill import api
from fsdistill.data.masks import read_index_mask
from fsdistill.errors import DataError
from fsdistill.models.build import load_model

from helpers import TINY_MODEL, TINY_TRAIN, SynData

README = Path(__file__).resolve().parents[1] / "README.md"


def _images(folder: Path) -> list[Path]:
    """Three RGB images of different sizes with some structure, written as PNG."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(50, 70), (64, 64), (33, 90)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[h // 4 : h // 2, w // 3 :] = (200, 40 * i, 10)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(image).save(paths[-1])
    return paths


def test_load_predict_equals_the_cli_masks(shaken_multi_student, tmp_path) -> None:
    """Arrays, PIL images and paths all give the mask predict writes for that file, at the image's own size."""
    paths = _images(tmp_path / "images")
    api.predict([tmp_path / "images"], tmp_path / "out", model=shaken_multi_student, device="cpu", workers=0)
    model = fsdistill.load(shaken_multi_student, device="cpu")
    assert model.kind == "student" and model.classes[0] == "background" and len(model.classes) == 4
    written = [read_index_mask(tmp_path / "out" / "masks" / f"{p.stem}.png") for p in paths]
    assert len({int(v) for m in written for v in np.unique(m)}) > 1, "the fixture must predict more than one class"
    array = np.asarray(Image.open(paths[0]).convert("RGB"))
    for given in (array, Image.open(paths[0]), paths[0], str(paths[0])):
        mask = model.predict(given)
        assert mask.dtype == np.uint8 and mask.shape == array.shape[:2]
        np.testing.assert_array_equal(mask, written[0])
    batch = model.predict_batch(paths, batch_size=2)
    for mask, expected in zip(batch, written):
        np.testing.assert_array_equal(mask, expected)


def test_load_predict_decodes_files_as_predict_does(shaken_multi_student, tmp_path) -> None:
    """A large turned JPEG (decoded at a reduced scale, EXIF applied) and a 16-bit PNG (scaled by its own range):
    paths, and the PIL image of the PNG, give the masks predict writes."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (260, 330, 3), dtype=np.uint8)
    photo[60:200, 100:300] = (200, 80, 10)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(folder / "photo.jpg", exif=exif, quality=90)
    deep = (rng.integers(0, 4096, (48, 61)) + np.arange(61) * 40).astype(np.uint16)  # 12 bits of a 16-bit PNG
    Image.fromarray(deep).save(folder / "deep.png")
    api.predict(folder, tmp_path / "out", model=shaken_multi_student, device="cpu", workers=0)  # one input
    model = fsdistill.load(shaken_multi_student, device="cpu")
    for name, shape in (("photo.jpg", (330, 260)), ("deep.png", (48, 61))):
        written = read_index_mask(tmp_path / "out" / "masks" / f"{Path(name).stem}.png")
        assert written.shape == shape
        np.testing.assert_array_equal(model.predict(folder / name), written)
    np.testing.assert_array_equal(model.predict(Image.open(folder / "deep.png")), written)


def test_load_teacher_and_grey_images(tiny_multi_run, shaken_multi_student) -> None:
    """teacher=True loads the run's teacher; a grey H×W array is segmented like its RGB copy."""
    teacher = fsdistill.load(tiny_multi_run.run_dir, teacher=True, device="cpu")
    assert teacher.kind == "teacher" and teacher.classes == ["background", "red", "green", "blue"]
    grey = np.random.default_rng(1).integers(0, 256, (40, 52), dtype=np.uint8)
    assert teacher.predict(grey).shape == (40, 52)
    # The tiny teacher predicts background everywhere, so grey and RGB are compared on the shaken student.
    student = fsdistill.load(shaken_multi_student, device="cpu")
    mask = student.predict(grey)
    assert len(np.unique(mask)) > 1, "the comparison would be trivial: one class everywhere"
    np.testing.assert_array_equal(mask, student.predict(np.repeat(grey[..., None], 3, axis=2)))


def test_arrays_are_read_as_their_user_means_them(shaken_multi_student) -> None:
    """Thin H×W×3 images (3 rows, 2 columns) were read as channels-first: masks transposed or of the wrong size; an
    array / 255 or an int64 copy of 8-bit pixels was rescaled by its own min/max, changing the mask."""
    model = fsdistill.load(shaken_multi_student, device="cpu")
    rgb = np.random.default_rng(3).integers(10, 240, (40, 52, 3), dtype=np.uint8)
    strip, column, pixel = rgb[10:13], rgb[:, 20:22], rgb[:1, :1]
    assert model.predict(strip).shape == (3, 52) and model.predict(column).shape == (40, 2)
    assert model.predict(pixel).shape == (1, 1)
    np.testing.assert_array_equal(model.predict(strip), model.predict(Image.fromarray(np.ascontiguousarray(strip))))
    mask = model.predict(rgb)
    assert len(np.unique(mask)) > 1, "the comparison would be trivial: one class everywhere"
    for same in (rgb / 255.0, (rgb / 255.0).astype(np.float32), rgb.astype(np.int64), rgb.astype(np.uint16)):
        np.testing.assert_array_equal(model.predict(same), mask)
    np.testing.assert_array_equal(model.predict(np.moveaxis(rgb, -1, 0)), mask)  # C×H×W still read


@pytest.mark.parametrize(
    "bad, message",
    [
        (42, "Cannot segment a int; pass a numpy array"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "Cannot segment this array"),
        (np.zeros((20, 20, 3), dtype=np.complex64), "Cannot segment an array of complex64"),
        (np.array([[None, None]]), "Cannot segment an array of object"),
    ],
)
def test_bad_images_are_refused_in_one_sentence(shaken_multi_student, bad, message) -> None:
    model = fsdistill.load(shaken_multi_student, device="cpu")
    with pytest.raises(DataError, match=re.escape(message)):
        model.predict(bad)


def test_readme_python_example_runs(shaken_multi_student, tmp_path, monkeypatch) -> None:
    """The README's first Python block, run as written in a folder holding its files (the run is the fixture)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    example = next(b for b in blocks if "fsdistill.load(" in b)
    paths = _images(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    for name, source in (("image.png", paths[0]), ("a.png", paths[1])):
        (tmp_path / name).write_bytes(source.read_bytes())
    Image.open(paths[2]).save(tmp_path / "b.tif")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "x").symlink_to(shaken_multi_student, target_is_directory=True)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert namespace["mask"].shape == Image.open("image.png").size[::-1]
    assert [m.shape for m in namespace["masks"]] == [(64, 64), (33, 90)]


def test_the_commands_are_functions_of_the_package() -> None:
    """cli.md's Python API: fsdistill.adapt, distill, predict, evaluate, profile (and export, suggest) are the
    library's functions, imported on first use."""
    for name in ("adapt", "distill", "predict", "evaluate", "profile", "export", "suggest"):
        assert getattr(fsdistill, name) is getattr(api, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fsdistill.nope  # noqa: B018


def test_training_leaves_the_callers_random_states_as_they_were(tiny_data, tmp_path) -> None:
    """api.adapt / api.distill seed their run, not the caller's later draws (they reseeded all three to the run's
    seed)."""
    import random

    import torch

    from fsdistill.config import AdaptCfg, DistillCfg, load_config

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    for cls, fn in ((AdaptCfg, fsdistill.adapt), (DistillCfg, fsdistill.distill)):
        overrides = {"support": tiny_data.binary, "out": tmp_path / cls.__name__, "device": "cpu"}
        cfg = load_config(cls, None, {**overrides, "model": TINY_MODEL, "train": {**TINY_TRAIN, "seed": 0}})
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        expected = draws()
        random.seed(7), np.random.seed(7), torch.manual_seed(7)
        fn(cfg, quiet=True)
        assert draws() == expected


def test_training_functions_take_a_mapping_and_refuse_other_types(tiny_data, tmp_path) -> None:
    from fsdistill.config import DistillCfg
    from fsdistill.errors import ConfigError

    options = {"support": str(tiny_data.binary), "out": str(tmp_path / "run"), "device": "cpu",
               "model": TINY_MODEL, "train": {"steps": 0}}  # fmt: skip
    run = fsdistill.distill(options, quiet=True)
    assert run.student_dir is not None and run.student_dir.is_dir()
    with pytest.raises(ConfigError, match="fsdistill.adapt takes an AdaptCfg or a mapping .* not a DistillCfg"):
        fsdistill.adapt(DistillCfg(**options))
    with pytest.raises(ConfigError, match="not a str"):
        fsdistill.distill("support/")
    with pytest.raises(ConfigError, match="stepz"):
        fsdistill.distill({**options, "train": {"stepz": 1}})


def test_a_home_relative_support_path_is_expanded(tiny_data, tmp_path, monkeypatch) -> None:
    """``support: ~/…`` (YAML, Python) became <cwd>/~/… once the recorded paths were made absolute."""
    monkeypatch.setenv("HOME", str(tiny_data.binary.parent))
    options = {"support": f"~/{tiny_data.binary.name}", "out": str(tmp_path / "run"), "device": "cpu",
               "model": TINY_MODEL, "train": {"steps": 0}}  # fmt: skip
    run = fsdistill.distill(options, quiet=True)
    import yaml

    assert yaml.safe_load((run.run_dir / "config.resolved.yaml").read_text())["support"] == str(tiny_data.binary)


def test_bad_counts_are_refused_before_anything_is_written(shaken_multi_student, tmp_path) -> None:
    """fsdistill.predict(batch_size=0) raised torch's DataLoader ValueError after writing the output manifest."""
    from fsdistill.errors import ConfigError

    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(image)
    for kwargs, message in (
        ({"batch_size": 0}, "batch_size must be an integer of at least 1, got 0"),
        ({"workers": -1}, "workers"),
    ):
        with pytest.raises(ConfigError, match=message):
            fsdistill.predict(image.parent, tmp_path / "out", model=shaken_multi_student, device="cpu", **kwargs)
        with pytest.raises(ConfigError, match=message):
            fsdistill.evaluate(image.parent, model=shaken_multi_student, device="cpu", **kwargs)
    assert not (tmp_path / "out").exists()


def test_evaluate_matches_the_same_classes_listed_in_another_order(shaken_multi_student, tmp_path) -> None:
    """A held-out folder whose names file lists the model's classes in another order (its masks numbered that way)
    was refused ("evaluate on a folder labelled with the same classes"); the classes are matched by name."""
    model = fsdistill.load(shaken_multi_student, device="cpu")
    names = model.classes  # background, red, green, blue
    rng = np.random.default_rng(0)
    ordered, swapped = tmp_path / "ordered", tmp_path / "swapped"
    order = [0, 3, 1, 2]  # swapped's class k is the model's class order[k]
    for root, names_listed in ((ordered, names), (swapped, [names[k] for k in order])):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        (root / "classes.txt").write_text("\n".join(names_listed) + "\n")
    for i in range(3):
        image = rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)
        truth = model.predict(image)
        truth[:5] = (truth[:5] + 1) % 4  # not the prediction everywhere: IoUs below 1
        inverse = np.argsort(order).astype(np.uint8)
        for root, mask in ((ordered, truth), (swapped, inverse[truth])):
            Image.fromarray(image).save(root / "images" / f"q{i}.png")
            Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"q{i}.png")
    a = fsdistill.evaluate(ordered, model=shaken_multi_student, device="cpu", workers=0)
    b = fsdistill.evaluate(swapped, model=shaken_multi_student, device="cpu", workers=0)
    assert a.iou == b.iou and a.miou == b.miou and 0 < a.miou < 1
    # The background spelled otherwise ("Background", "bg") is id 0 all the same: it was refused as another class.
    (swapped / "classes.txt").write_text("\n".join(["Background", *[names[k] for k in order[1:]]]) + "\n")
    assert fsdistill.evaluate(swapped, model=shaken_multi_student, device="cpu", workers=0).iou == a.iou
    # Without a names file the classes are the model's by id (default names "class_1", ... were refused).
    (ordered / "classes.txt").unlink()
    assert fsdistill.evaluate(ordered, model=shaken_multi_student, device="cpu", workers=0).iou == a.iou
    # ... but not against a model of unnamed classes of other values (class_7 is not this folder's class_3)
    from dataclasses import replace

    from fsdistill.api import inference

    loaded = load_model(shaken_multi_student)
    gapped = replace(loaded, config={**loaded.config, "class_names": ["background", "class_1", "class_2", "class_7"]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inference, "load_model", lambda *args, **kwargs: gapped)
        with pytest.raises(DataError, match=r"not the model's: \['class_3'\]; not here: \['class_7'\]"):
            fsdistill.evaluate(ordered, model=shaken_multi_student, device="cpu", workers=0)
    (swapped / "classes.txt").write_text("background\nred\ngreen\nyellow\n")
    with pytest.raises(DataError, match=r"not the model's: \['yellow'\]; not here: \['blue'\]"):
        fsdistill.evaluate(swapped, model=shaken_multi_student, device="cpu", workers=0)


def test_a_mapping_is_read_as_a_yaml_file_is(tmp_path) -> None:
    """fsdistill.distill({...}) dropped explicit None values (student_width: None is the paper's width, not the
    default 8; max_minutes: None is no cap), kept relative weight paths in the recorded config, and refused a run's
    own `command:` key; dotted keys got "Extra inputs are not permitted"."""
    from fsdistill.api.training import _as_config
    from fsdistill.config import AdaptCfg, DistillCfg, load_config
    from fsdistill.errors import ConfigError

    mapping = {"command": "distill", "support": "s", "out": "r", "model": {"student_width": None,
               "backbone_weights": "w.pth"}, "train": {"max_minutes": None}}  # fmt: skip
    cfg = _as_config(mapping, DistillCfg)
    assert cfg.model.student_width is None and cfg.train.max_minutes is None
    assert cfg.model.backbone_weights == (Path.cwd() / "w.pth") and cfg.support.is_absolute()
    with pytest.raises(ConfigError, match="The options are for fsdistill distill"):
        _as_config(mapping, AdaptCfg)
    with pytest.raises(ConfigError, match=r"train.steps is not an option; .*\{'train': \{'steps': ...\}\}"):
        load_config(DistillCfg, overrides={"support": "s", "train.steps": 5})
    with pytest.raises(ConfigError, match="No support given"):
        load_config(DistillCfg, data={"support": None})
    with pytest.raises(ConfigError, match="support: is empty; give a path"):
        load_config(DistillCfg, data={"support": " "})
    # a run's own config.resolved.yaml, without naming the command: the class says it
    resolved = tmp_path / "config.resolved.yaml"
    resolved.write_text("command: adapt\nsupport: s\n")
    assert load_config(AdaptCfg, resolved).support == Path("s")


def test_home_paths_and_a_lone_path_in_the_python_api(tiny_binary_run, tmp_path, monkeypatch) -> None:
    """suggest's outputs and profile's out went into a folder named "~", Segmenter.predict("~/x.png") was "does not
    exist", and predict_batch("x.png") read each character as an image."""
    from fsdistill.errors import ConfigError

    home = tmp_path / "home"
    SynData.save(home / "pool" / "a.png", SynData.image(20, 24, 0))
    shutil.copytree(tiny_binary_run.run_dir, home / "run")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    fsdistill.suggest("~/pool", model="~/run", out="~/rank.csv", json_out="~/rank.json", student_only=True)
    assert (home / "rank.csv").is_file() and (home / "rank.json").is_file() and not (tmp_path / "~").exists()
    segmenter = fsdistill.load("~/run", device="cpu")
    assert segmenter.predict("~/pool/a.png").shape == (20, 24)
    with pytest.raises(ConfigError, match="predict_batch takes a list of images"):
        segmenter.predict_batch("~/pool/a.png")
    with pytest.raises(ConfigError, match="batch_size must be an integer of at least 1"):
        segmenter.predict_batch(["~/pool/a.png"], batch_size=0)


def test_wrong_types_are_the_librarys_errors(tiny_binary_run, tmp_path) -> None:
    """load(123), predict(123, ...), evaluate(batch_size="8"), predict(device=1), export(tolerance="x"),
    suggest(top="3") were TypeErrors and AttributeErrors from deep inside."""
    from fsdistill.errors import CheckpointError, ConfigError, DeviceError

    run = tiny_binary_run.run_dir
    with pytest.raises(CheckpointError, match="not int 123"):
        fsdistill.load(123)
    with pytest.raises(ConfigError, match=r"inputs is a path or paths \(a list, a glob, ...\), not int 123"):
        fsdistill.predict(123, tmp_path / "out", model=run)
    with pytest.raises(ConfigError, match="batch_size must be an integer of at least 1, got '8'"):
        fsdistill.evaluate(tmp_path, model=run, batch_size="8")
    with pytest.raises(DeviceError, match="A device is a name"):
        fsdistill.load(run, device=1)
    with pytest.raises(ConfigError, match="--tolerance must be >= 0"):
        fsdistill.export(run, tmp_path / "x.onnx", tolerance="x")
    with pytest.raises(ConfigError, match="--top must be an integer of at least 1 \\(got '3'\\)"):
        fsdistill.suggest(tmp_path, model=run, top="3")
    with pytest.raises(ConfigError, match="A path is a str or Path"):
        fsdistill.predict([tmp_path, 5], tmp_path / "out", model=run)


def test_globs_and_numpy_numbers_are_accepted(tiny_binary_run, tmp_path) -> None:
    """The type checks refused a generator of paths (Path.glob) and numpy numbers that had worked before."""
    folder = tmp_path / "in"
    for k in range(2):
        SynData.save(folder / f"{k}.png", SynData.image(20, 24, k))
    result = fsdistill.predict(folder.glob("*.png"), tmp_path / "out", model=tiny_binary_run.run_dir, device="cpu")
    assert result.written == 2
    out = tmp_path / "x.onnx"
    pytest.importorskip("onnxruntime")
    fsdistill.export(tiny_binary_run.run_dir, out, tolerance=np.float32(1e-2), min_agreement=np.float64(0.99))
    assert out.is_file()
