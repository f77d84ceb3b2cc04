"""ONNX export: parity on the default backbone, metadata, dynamic axes, and the onnx predict backend vs torch."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from helpers import SynData, assert_user_error, interrupt_mask_writes_after, perturb_head

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from fsdistill import api  # noqa: E402
from fsdistill.api import inference as inference_api  # noqa: E402
from fsdistill.checkpoint import config_sha256  # noqa: E402
from fsdistill.cli import app  # noqa: E402
from fsdistill.infer import predictor as predictor_module  # noqa: E402
from fsdistill.infer.export import export_onnx  # noqa: E402
from fsdistill.models.build import load_model  # noqa: E402


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _input_dims(path) -> list:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.get_inputs()[0].shape


@pytest.fixture(scope="module")
def exported(shaken_multi_student, tmp_path_factory):
    """``shaken_multi_student`` exported once through the library (the ONNX file in a folder of its own)."""
    out = tmp_path_factory.mktemp("onnx") / "multi.onnx"
    result = api.export(shaken_multi_student, out, threads=1)
    assert result.passed, result
    return out


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    """Images of awkward sizes and modes (grey, RGBA, 16-bit, JPEG) and a nested one."""
    root = tmp_path_factory.mktemp("odd_inputs")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(37, 53), (211, 97), (64, 64), (45, 61)]):
        img = SynData.image(h, w, i)
        img[h // 4 : h // 2, w // 3 : 2 * w // 3] = rng.integers(0, 255, 3)
        SynData.save(root / f"rgb{i}.png", img)
    SynData.save(root / "grey.png", SynData.image(50, 70, 7)[..., 0])
    rgba = np.concatenate([SynData.image(40, 33, 8), np.full((40, 33, 1), 200, np.uint8)], axis=-1)
    SynData.save(root / "rgba.png", rgba)
    SynData.save(root / "deep16.png", np.linspace(0, 65535, 29 * 71).reshape(29, 71).astype(np.uint16))
    SynData.save(root / "photo.jpg", SynData.image(64, 80, 9), quality=90)
    SynData.save(root / "nested" / "inner.png", SynData.image(33, 65, 10))
    return root


# --- parity ----------------------------------------------------------------------------------------------------


def test_default_backbone_parity(tmp_path) -> None:
    """efficientnet-lite0 (embedded weights) at its default 384 px, 2 classes, random decoder: ≥ 99.9% agreement."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.transforms import normalize
    from fsdistill.models.build import build_student, build_teacher

    cfg = ModelCfg()
    assert cfg.backbone == "efficientnet-lite0"
    torch.manual_seed(0)
    student = build_student(build_teacher(cfg, 2), None, cfg.refiner).eval()
    generator = torch.Generator().manual_seed(0)
    perturb_head(student, generator)  # a random decoder whose output varies over the image
    spec = student.backbone.spec
    probe = torch.randint(0, 256, (1, 3, cfg.size, cfg.size), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        classes = student(normalize(probe, spec.mean, spec.std)).argmax(1).unique()
    assert len(classes) >= 2, "the check would be trivial: the model predicts one class everywhere"

    result = export_onnx(
        student,
        tmp_path / "lite0.onnx",
        input_size=cfg.size,
        mean=spec.mean,
        std=spec.std,
        class_names=["background", "a", "b"],
        palette=[(0, 0, 0), (255, 0, 0), (0, 255, 0)],
        threads=1,
    )
    assert result.passed, result
    assert result.agreement >= 0.999
    assert result.max_abs_diff_stable <= 1e-3
    assert result.dynamic_hw and result.note == ""
    assert result.samples == 5  # 4 at 384 px (two batches of two) + 1 at another size
    assert _input_dims(result.path) == ["batch", 3, "height", "width"]
    assert [p.name for p in tmp_path.iterdir()] == ["lite0.onnx"]  # no temporary file left


def test_shared_decoder_parity(tmp_path) -> None:
    """The shared decoder's student (ConvDist groups shared by the classes and read out densely, stride-8 classes
    upsampled bilinearly, the refiner reading their softmax at stride 8) exports with dynamic height and width and
    agrees with PyTorch: Lite0, 384 px, 6 classes (more than its 4 ConvDist groups), random head."""
    from fsdistill.config import ModelCfg
    from fsdistill.data.transforms import normalize
    from fsdistill.models.build import build_student, build_teacher

    cfg = ModelCfg(decoder="shared")
    torch.manual_seed(0)
    student = build_student(build_teacher(cfg, 6), cfg.student_width, cfg.refiner).eval()
    generator = torch.Generator().manual_seed(1)
    perturb_head(student, generator)
    spec = student.backbone.spec
    probe = torch.randint(0, 256, (1, 3, cfg.size, cfg.size), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        assert len(student(normalize(probe, spec.mean, spec.std)).argmax(1).unique()) >= 2
    result = export_onnx(
        student,
        tmp_path / "shared.onnx",
        input_size=cfg.size,
        mean=spec.mean,
        std=spec.std,
        class_names=["background", *"abcdef"],
        palette=[(0, 0, 0), *[(40 * i, 255 - 40 * i, 0) for i in range(6)]],
        threads=1,
    )
    assert result.passed, result
    assert result.agreement >= 0.999 and result.max_abs_diff_stable <= 1e-3
    assert result.dynamic_hw and result.note == ""


def test_fixed_grid_backbone_falls_back_to_a_fixed_size(tmp_path) -> None:
    """Swin's window grid only takes its own size: the other-size check fails and the export is redone fixed."""
    from fsdistill.config import ModelCfg
    from fsdistill.models.build import build_student, build_teacher

    cfg = ModelCfg(backbone="test-swin", size=128)
    student = build_student(build_teacher(cfg, 1), None, cfg.refiner).eval()
    spec = student.backbone.spec
    result = export_onnx(
        student, tmp_path / "swin.onnx", input_size=128, mean=spec.mean, std=spec.std,
        class_names=["background", "fg"], palette=[(0, 0, 0), (255, 0, 0)], dynamic_hw=True, threads=1,
    )  # fmt: skip
    assert result.passed and not result.dynamic_hw
    assert "fixed 128x128" in result.note and "192x160" in result.note
    assert _input_dims(result.path) == ["batch", 3, 128, 128]
    assert _props(result.path)["fsdistill.dynamic_hw"] == "false"


class _BakedShape(torch.nn.Module):
    """Reads H and W as Python ints: the trace bakes them in, so onnxruntime rejects any other size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[2]), int(x.shape[3])
        return self.conv(x).reshape(-1, 2, h * w).reshape(-1, 2, h, w)


def test_shape_baked_into_the_trace_falls_back_to_a_fixed_size(tmp_path) -> None:
    result = export_onnx(
        _BakedShape(), tmp_path / "baked.onnx", input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3,
        class_names=["background", "fg"], palette=[(0, 0, 0), (255, 0, 0)], threads=1,
    )  # fmt: skip
    assert result.passed and not result.dynamic_hw
    assert "did not reproduce PyTorch at 128x96" in result.note
    assert _input_dims(result.path) == ["batch", 3, 64, 64]


def test_cli_export_prints_parity_and_writes_metadata(runner, tiny_multi_run, tmp_path) -> None:
    out = tmp_path / "models" / "multi.onnx"
    result = runner.invoke(app, ["export", "--model", str(tiny_multi_run.run_dir), "-o", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "max |logit diff|" in result.stdout and "argmax agreement 100.0000%" in result.stdout
    assert "(4 real)" in result.stdout  # the run's own support images joined the random ones
    assert sorted(p.name for p in out.parent.iterdir()) == ["multi.onnx"]

    loaded = load_model(tiny_multi_run.run_dir, kind="student")
    props = _props(out)
    assert props["fsdistill.format"] == "fsdistill-onnx"
    assert props["fsdistill.kind"] == "student"
    assert props["fsdistill.input_size"] == "64"
    assert props["fsdistill.dynamic_hw"] == "true"
    assert props["fsdistill.config_sha256"] == config_sha256(loaded.config)
    assert json.loads(props["fsdistill.class_names"]) == ["background", "red", "green", "blue"]
    assert [tuple(c) for c in json.loads(props["fsdistill.palette"])] == loaded.palette
    assert json.loads(props["fsdistill.mean"]) == pytest.approx(loaded.mean)
    assert json.loads(props["fsdistill.std"]) == pytest.approx(loaded.std)
    assert "(x - mean) / std" in props["fsdistill.input"]
    onnx.checker.check_model(onnx.load(str(out)))


def test_export_with_given_images_into_a_folder(runner, tiny_binary_run, tmp_path) -> None:
    for i in range(2):
        SynData.save(tmp_path / "samples" / f"x{i}.png", SynData.image(50 + i, 70, i))
    (tmp_path / "models").mkdir()
    args = ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(tmp_path / "models")]
    result = runner.invoke(app, [*args, "--images", str(tmp_path / "samples")])
    assert result.exit_code == 0, result.output
    assert "(2 real)" in result.stdout and "on 7 images" in result.stdout  # 4 random + 2 given + 1 at another size
    assert (tmp_path / "models" / "student.onnx").is_file()


def _manifest(out) -> dict:
    return json.loads((out / predictor_module.MANIFEST_NAME).read_text())


def test_default_output_sits_beside_the_artifact_and_predict_finds_it(runner, tiny_binary_run, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_binary_run.run_dir, run)
    result = api.export(run, threads=1)
    assert result.path == run / "student.onnx" and result.path.is_file() and result.passed
    image = SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0))
    out = tmp_path / "out"
    args = ["predict", str(image), "-o", str(out), "--model", str(run), "--backend", "onnx", "--workers", "0"]
    assert runner.invoke(app, args).exit_code == 0
    assert _manifest(out)["model"] == str((run / "student.onnx").resolve())


def test_parity_failure_exits_1_and_keeps_the_file(runner, tiny_binary_run, tmp_path, monkeypatch) -> None:
    from fsdistill.infer import export as export_module

    real = export_module._torch_logits
    monkeypatch.setattr(export_module, "_torch_logits", lambda *a: real(*a) + 0.5)  # a reference 0.5 away
    out = tmp_path / "x.onnx"
    result = runner.invoke(app, ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "error: onnxruntime does not reproduce PyTorch" in result.stderr
    assert "5.00e-01" in result.stderr and "Traceback" not in result.output
    assert out.is_file()


# --- the onnx predict backend ----------------------------------------------------------------------------------


def _read_masks(root) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


def _csv(path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_onnx_predict_equals_torch_predict_without_torch_model_code(
    runner, exported, shaken_multi_student, odd_folder, tmp_path, monkeypatch
) -> None:
    torch_out, onnx_out = tmp_path / "torch", tmp_path / "onnx"
    common = ["--batch-size", "3", "--workers", "0", "--overlay", "--quiet"]
    model = str(shaken_multi_student)
    torch_args = ["predict", str(odd_folder), "-o", str(torch_out), "--model", model, "--device", "cpu"]
    result = runner.invoke(app, [*torch_args, *common])
    assert result.exit_code == 0, result.output

    # The .onnx alone, away from its artifact, and no PyTorch model may be built on the way.
    lone = tmp_path / "elsewhere" / "model.onnx"
    lone.parent.mkdir()
    shutil.copy(exported, lone)

    def no_torch_model(*args, **kwargs):
        raise AssertionError("the onnx backend loaded a PyTorch model")

    import fsdistill.models.build as build_module

    monkeypatch.setattr(inference_api, "load_model", no_torch_model)
    monkeypatch.setattr(build_module, "load_model", no_torch_model)
    result = runner.invoke(app, ["predict", str(odd_folder), "-o", str(onnx_out), "--model", str(lone), *common])
    assert result.exit_code == 0, (result.output, result.exception)

    torch_masks, onnx_masks = _read_masks(torch_out / "masks"), _read_masks(onnx_out / "masks")
    assert set(torch_masks) == set(onnx_masks) and len(torch_masks) == 9
    assert len(np.unique(np.concatenate([m.ravel() for m in torch_masks.values()]))) == 4  # not all background
    total = sum(m.size for m in torch_masks.values())
    differing = sum(int((torch_masks[k] != onnx_masks[k]).sum()) for k in torch_masks)
    assert differing <= total // 1000, f"{differing} of {total} pixels differ"
    for name in torch_masks:
        with Image.open(torch_out / "masks" / name) as a, Image.open(onnx_out / "masks" / name) as b:
            assert b.mode == "P" and a.getpalette() == b.getpalette() and a.size == b.size
    assert sorted(_read_masks(onnx_out / "overlays")) == sorted(torch_masks)
    torch_rows, onnx_rows = _csv(torch_out / "predictions.csv"), _csv(onnx_out / "predictions.csv")
    assert [r[:4] for r in torch_rows] == [r[:4] for r in onnx_rows]  # image, width, height, class
    if differing == 0:
        assert torch_rows == onnx_rows


def test_the_readme_recipe_for_onnxruntime_gives_predicts_masks(exported, shaken_multi_student, odd_folder, tmp_path):
    """A user's own onnxruntime code, as README's "Export to ONNX" and the file's metadata describe the input and
    output, gives the masks `predict` writes (feeding the images at their own size changed 1–9 % of the pixels)."""
    import cv2

    from fsdistill.data.images import read_image

    api.predict([odd_folder], tmp_path / "torch", shaken_multi_student, device="cpu", workers=0)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    size = int(props["fsdistill.input_size"])
    mean, std = (np.array(json.loads(props[f"fsdistill.{key}"]), np.float32) for key in ("mean", "std"))
    assert "INTER_AREA if" in props["fsdistill.input"] and "align_corners=False" in props["fsdistill.output"]
    differing = total = 0
    for path in sorted(odd_folder.rglob("*.*")):
        rgb = read_image(path)
        h, w = rgb.shape[:2]
        resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR)
        x = ((resized.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
        logits = session.run(None, {session.get_inputs()[0].name: x})[0]
        up = torch.nn.functional.interpolate(
            torch.from_numpy(logits), size=(h, w), mode="bilinear", align_corners=False
        )
        mask = up[0].argmax(0).numpy()
        rel = path.relative_to(odd_folder).with_suffix(".png")
        expected = np.array(Image.open(tmp_path / "torch" / "masks" / rel))
        differing, total = differing + int((mask != expected).sum()), total + mask.size
    assert differing <= total // 1000, f"{differing} of {total} pixels differ"


def test_export_from_inside_the_artifact_and_into_a_folder_without_suffix(
    runner, shaken_multi_student, exported, tmp_path, monkeypatch
) -> None:
    """``export --model .`` in the artifact writes ../student.onnx (a ValueError traceback before); ``-o DIR``
    (a trailing "/" never reaches the program) writes DIR/student.onnx; predict --backend onnx takes a file of any
    name."""
    artifact = tmp_path / "run" / "student"
    shutil.copytree(shaken_multi_student, artifact)
    monkeypatch.chdir(artifact)
    args = ["export", "--model", ".", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "student.onnx").is_file()
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "exported")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "exported" / "student.onnx").is_file()
    unnamed = tmp_path / "model-file"
    shutil.copy(exported, unnamed)
    image = SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0))
    result = runner.invoke(
        app, ["predict", str(image), "-o", str(tmp_path / "out"), "--backend", "onnx", "--model", str(unnamed), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "masks" / "a.png").is_file()


def test_onnx_predict_resumes_after_an_interruption(exported, odd_folder, tmp_path, monkeypatch) -> None:
    kw = dict(device="cpu", batch_size=2, workers=0)
    reference = api.predict([odd_folder], tmp_path / "ref", exported, **kw)
    interrupt_mask_writes_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        api.predict([odd_folder], tmp_path / "out", exported, **kw)
    monkeypatch.undo()
    resumed = api.predict([odd_folder], tmp_path / "out", exported, **kw)
    assert (resumed.skipped, resumed.written) == (4, reference.written - 4)
    ref_files = {p.relative_to(tmp_path / "ref"): p.read_bytes() for p in (tmp_path / "ref" / "masks").rglob("*.png")}
    out_files = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in (tmp_path / "out" / "masks").rglob("*.png")}
    assert ref_files == out_files
    assert _csv(tmp_path / "ref" / "predictions.csv") == _csv(tmp_path / "out" / "predictions.csv")


def test_backends_do_not_mix_in_one_output_folder(runner, exported, shaken_multi_student, tmp_path) -> None:
    image = SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0))
    out = str(tmp_path / "out")
    torch_run = ["predict", str(image), "-o", out, "--model", str(shaken_multi_student), "--device", "cpu", "-q"]
    assert runner.invoke(app, torch_run).exit_code == 0
    onnx_run = ["predict", str(image), "-o", out, "--model", str(exported), "-q"]
    assert_user_error(runner.invoke(app, onnx_run), "torch backend", "--overwrite")
    assert runner.invoke(app, [*onnx_run, "--overwrite"]).exit_code == 0


# --- user errors (exit 2) ---------------------------------------------------------------------------------------


def _foreign_onnx(path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _with_props(source, path, **changes):
    proto = onnx.load(str(source))
    for entry in proto.metadata_props:
        if entry.key in changes:
            entry.value = changes[entry.key]
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("garbage-file", ["not an ONNX model", "export it again"]),
        ("foreign-onnx", ["not exported by fsdistill"]),
        ("newer-format", ["upgrade fsdistill"]),
        ("damaged-metadata", ["damaged fsdistill metadata"]),
        ("missing-file", ["does not exist"]),
        ("run-without-export", ["fsdistill export --model"]),
        ("onnx-with-torch-backend", ["--backend onnx"]),
        ("unknown-backend", ["tensorrt", "torch, onnx"]),
        ("mps-device", ["mps", "--device cpu"]),
    ],
)
def test_onnx_predict_user_errors(runner, exported, tiny_multi_run, tmp_path, case, fragments) -> None:
    image = SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0))
    extra: list[str] = []
    if case == "garbage-file":
        model = tmp_path / "bad.onnx"
        model.write_bytes(b"\x08\x07 definitely not protobuf" * 10)
    elif case == "foreign-onnx":
        model = _foreign_onnx(tmp_path / "foreign.onnx")
    elif case == "newer-format":
        model = _with_props(exported, tmp_path / "newer.onnx", **{"fsdistill.format_version": "99"})
    elif case == "damaged-metadata":
        model = _with_props(exported, tmp_path / "damaged.onnx", **{"fsdistill.palette": "[[0, 0"})
    elif case == "missing-file":
        model = tmp_path / "gone.onnx"
    elif case == "run-without-export":
        model, extra = tiny_multi_run.run_dir, ["--backend", "onnx"]
    elif case == "onnx-with-torch-backend":
        model, extra = exported, ["--backend", "torch"]
    elif case == "unknown-backend":
        model, extra = exported, ["--backend", "tensorrt"]
    else:
        model, extra = exported, ["--device", "mps"]
    result = runner.invoke(app, ["predict", str(image), "-o", str(tmp_path / "out"), "--model", str(model), *extra])
    assert_user_error(result, *fragments)
    assert not (tmp_path / "out" / "masks").exists()


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("teacher", ["teacher", "student is needed"]),
        ("format", ["tflite", "onnx"]),
        ("tolerance", ["tolerance"]),
        ("nan-tolerance", ["--tolerance must be >= 0"]),  # accepted, then every check failed with exit 1
        ("weights-file", ["model.safetensors is a file of the artifact", "pass that folder"]),
    ],
)
def test_export_user_errors(runner, tiny_binary_run, tmp_path, case, fragments) -> None:
    args = ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(tmp_path / "x.onnx")]
    if case == "teacher":
        args[2] = str(tiny_binary_run.teacher_dir)
    elif case == "format":
        args += ["--format", "tflite"]
    elif case == "nan-tolerance":
        args += ["--tolerance", "nan"]
    elif case == "weights-file":
        args[2] = str(tiny_binary_run.run_dir / "student" / "model.safetensors")
    else:
        args += ["--tolerance", "-1"]
    assert_user_error(runner.invoke(app, args), *fragments)
    assert not (tmp_path / "x.onnx").exists()


def test_export_never_overwrites_a_file_that_is_not_an_onnx_model(runner, tiny_binary_run, tmp_path) -> None:
    """-o RUN/student/model.safetensors replaced the trained weights with the ONNX file (exit 0, the run broken);
    -o v1.2/ (the "/" lost on the way) wrote a file named v1.2."""
    run = tmp_path / "run"
    shutil.copytree(tiny_binary_run.run_dir, run)
    weights = run / "student" / "model.safetensors"
    before = weights.read_bytes()
    args = ["export", "--model", str(run), "--device", "cpu", "-q"]
    assert_user_error(runner.invoke(app, [*args, "-o", str(weights)]), "is an existing file that is not an .onnx")
    assert weights.read_bytes() == before
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "v1.2")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v1.2" / "student.onnx").is_file()
    # A link to a model (even one named without .onnx) is written through and stays a link.
    (tmp_path / "current").symlink_to(tmp_path / "v1.2" / "student.onnx")
    before = (tmp_path / "v1.2" / "student.onnx").stat().st_mtime_ns
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "current")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "current").is_symlink() and (tmp_path / "v1.2" / "student.onnx").stat().st_mtime_ns != before


def test_a_strict_tolerance_keeps_the_dynamic_input(runner, tiny_binary_run, tmp_path) -> None:
    """--tolerance 0: the other size's tiny float difference (no larger than at the input size) made the export
    fall back to a fixed input; the tolerance was printed rounded to one digit (1.4e-3 as 1e-03)."""
    out = tmp_path / "x.onnx"
    args = ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(out), "--device", "cpu"]
    result = runner.invoke(app, [*args, "--tolerance", "0"])
    assert "dynamic batch and height/width" in result.stdout and "note:" not in result.stdout
    assert _input_dims(out)[2:] != [64, 64]
    result = runner.invoke(app, [*args, "--tolerance", "1.4e-3"])
    assert result.exit_code == 0 and "tolerance 0.0014)" in result.stdout


def test_export_says_when_the_supports_are_gone(runner, tiny_binary_run, tmp_path, monkeypatch) -> None:
    """With the run's support folder moved away the parity check silently used random images only."""
    from fsdistill.api import inference

    monkeypatch.setattr(inference, "discover", lambda root: (_ for _ in ()).throw(inference.DataError("gone")))
    args = ["export", "--model", str(tiny_binary_run.run_dir), "-o", str(tmp_path / "x.onnx"), "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and "(0 real)" in result.stdout
    assert "are not there any more, so the check used random images only; pass --images" in result.stdout


def test_export_without_model_names_the_run_it_chose(runner, tiny_binary_run, tmp_path, monkeypatch) -> None:
    shutil.copytree(tiny_binary_run.run_dir, tmp_path / "runs" / "r1")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "-o", "x.onnx", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (
        f"model: {Path('runs') / 'r1' / 'student'} (newest run under ./runs; pass --model to choose)" in result.stderr
    )
