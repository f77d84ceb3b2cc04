"""Annotation-tool exports as support folders: Label Studio JSON (brush RLE, polygons) and CVAT "Segmentation
mask 1.1" (unpacked or zip), built with predict's own writers (the labelling loop) and by hand."""

from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.cli import app
from fsdistill.data.brush_rle import encode_brush_rle
from fsdistill.data.coco import rasterize_polygons
from fsdistill.data.discover import discover
from fsdistill.data.masks import read_index_mask
from fsdistill.errors import DataError
from fsdistill.infer.formats import CVAT_FILE, LABELSTUDIO_CONFIG_FILE, LABELSTUDIO_TASKS_FILE
from fsdistill.models.build import load_model

from helpers import TINY_MODEL, SynData, assert_user_error

NAMES = {"a.png": (40, 48), "b.jpg": (57, 33), "sub/c.png": (35, 90), "d e.png": (64, 64)}  # (height, width)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> None:
    """Unpacked zips go to a per-test cache, not the user's."""
    monkeypatch.setenv("FSDISTILL_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pictures")
    for k, (name, (h, w)) in enumerate(NAMES.items()):
        img = SynData.image(h, w, k)
        rng = np.random.default_rng(k)
        for _ in range(2):
            y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
        SynData.save(root / name, img, **({"quality": 95} if name.endswith(".jpg") else {}))
    return root


@pytest.fixture(scope="module")
def predicted(shaken_multi_student, pictures, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predicted")
    api.predict([pictures], out, shaken_multi_student, device="cpu", workers=0, formats="labelstudio,cvat")
    return out


def _predicted_masks(out: Path) -> dict[str, np.ndarray]:
    root = out / "masks"
    return {p.relative_to(root).with_suffix("").as_posix(): read_index_mask(p) for p in sorted(root.rglob("*.png"))}


def _accept_predictions(tasks: list[dict]) -> list[dict]:
    """What Label Studio exports once an annotator submitted each pre-label unchanged."""
    return [
        {**t, "id": 100 + k, "annotations": [{"id": k + 1, "result": t["predictions"][0]["result"],
                                              "was_cancelled": False, "created_at": "2026-01-01T00:00:00Z"}]}
        for k, t in enumerate(tasks)
    ]  # fmt: skip


def _ls_folder(predicted: Path, pictures: Path, dest: Path, config: bool = True) -> Path:
    """A support folder as a user makes it from a Label Studio export: the JSON, the config, the images."""
    tasks = json.loads((predicted / LABELSTUDIO_TASKS_FILE).read_text())
    dest.mkdir(parents=True)
    (dest / "project-1-at-2026.json").write_text(json.dumps(_accept_predictions(tasks)))
    if config:
        shutil.copy(predicted / LABELSTUDIO_CONFIG_FILE, dest / LABELSTUDIO_CONFIG_FILE)
    shutil.copytree(pictures, dest / "images")
    return dest


def _by_key(index) -> dict[str, np.ndarray]:
    return {s.key: index.load_mask(i) for i, s in enumerate(index.samples)}


def _assert_same_masks(index, expected: dict[str, np.ndarray]) -> None:
    got = _by_key(index)
    assert sorted(got) == sorted(expected)
    for key, mask in expected.items():
        assert np.array_equal(got[key], mask), key


# --- Label Studio ----------------------------------------------------------------------------------------------


def test_labelstudio_export_of_predict_tasks_is_a_support_folder(predicted, pictures, shaken_multi_student, tmp_path):
    loaded = load_model(shaken_multi_student, kind="student")
    index = discover(_ls_folder(predicted, pictures, tmp_path / "ls"))
    assert index.layout == "labelstudio" and index.mask_kind == "labelstudio"
    assert index.class_names == loaded.class_names  # from the labelling config, in the model's order
    assert [tuple(c) for c in index.palette] == [tuple(c) for c in loaded.palette]
    assert index.names_source == LABELSTUDIO_CONFIG_FILE
    _assert_same_masks(index, _predicted_masks(predicted))
    assert not index.orphan_images and not index.warnings


def test_labelstudio_without_config_orders_classes_by_name(predicted, pictures, shaken_multi_student, tmp_path):
    index = discover(_ls_folder(predicted, pictures, tmp_path / "ls", config=False))
    classes = load_model(shaken_multi_student, kind="student").class_names
    assert index.class_names == ["background", *sorted(classes[1:])]
    assert any("name order" in w for w in index.warnings)
    remap = np.array([index.class_names.index(n) for n in classes], np.uint8)
    _assert_same_masks(index, {k: remap[m] for k, m in _predicted_masks(predicted).items()})


def test_labelstudio_export_trains_a_student(predicted, pictures, tmp_path):
    from fsdistill.config import DistillCfg, load_config

    folder = _ls_folder(predicted, pictures, tmp_path / "ls")
    cfg = load_config(
        DistillCfg, None,
        {"support": folder, "out": tmp_path / "run", "device": "cpu", "model": TINY_MODEL, "train": {"steps": 1}},
    )  # fmt: skip
    result = api.distill(cfg, quiet=True)
    assert load_model(result.run_dir, kind="student").config["support"]["layout"] == "labelstudio"


def _handmade(root: Path) -> dict[str, np.ndarray]:
    """A hand-written export: upload-prefixed and local-files URLs, a cloud URL, polygons, a cancelled and a
    superseded annotation, a rectangle (ignored) and a task with predictions only. Returns the expected masks
    with classes background, cat, dog (name order)."""
    cat = np.zeros((20, 30), bool)
    cat[2:9, 5:12] = True
    # The polygon spans 10..50 % of 30 px and 20..80 % of 20 px: pixels x 3..14, y 4..15, drawn by the COCO
    # layout's rasteriser, which also takes the pixels its right and bottom edges touch (one pixel more at most).
    dog_rect = rasterize_polygons([[3, 4, 15, 4, 15, 16, 3, 16]], 20, 30)
    assert dog_rect[4:16, 3:15].all() and dog_rect.sum() <= 13 * 13
    brush = lambda m, label: {"type": "brushlabels", "from_name": "tag", "to_name": "image",  # noqa: E731
                              "original_width": m.shape[1], "original_height": m.shape[0],
                              "value": {"format": "rle", "rle": encode_brush_rle(m), "brushlabels": [label]}}  # fmt: skip
    polygon = {"type": "polygonlabels", "from_name": "poly", "to_name": "image", "original_width": 30,
               "original_height": 20, "value": {"points": [[10, 20], [50, 20], [50, 80], [10, 80]],
                                                "polygonlabels": ["dog"]}}  # fmt: skip
    rectangle = {
        "type": "rectanglelabels",
        "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["cat"]},
    }
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/1/1a2b3c4d-x.png"},
         "annotations": [{"id": 1, "was_cancelled": True, "result": [brush(~cat, "cat")]},
                         {"id": 2, "result": [polygon, brush(cat, "cat"), rectangle]}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=photos%2Fy.png"},
         "annotations": [{"id": 3, "result": [brush(cat, "dog")]}]},
        {"id": 3, "data": {"image": "/data/upload/1/0badf00d-z.png"}, "predictions": [{"result": []}]},
        {"id": 4, "data": {"image": "https://bucket.example/raw/w.png?token=1"},
         "annotations": [{"id": 5, "updated_at": "2026-02-01T10:00:00Z", "result": [brush(cat, "cat")]},
                         {"id": 4, "updated_at": "2026-03-01T10:00:00Z", "result": []}]},
    ]  # fmt: skip
    root.mkdir(parents=True)
    (root / "export.json").write_text(json.dumps(tasks))
    for rel in ("x.png", "photos/y.png", "images/w.png"):
        SynData.save(root / rel, SynData.image(20, 30, len(rel)))
    both = np.where(cat, 1, np.where(dog_rect, 2, 0)).astype(np.uint8)  # cat painted after the dog polygon
    return {"x": both, "photos/y": cat.astype(np.uint8) * 2, "w": np.zeros((20, 30), np.uint8)}


def test_handmade_labelstudio_export(tmp_path) -> None:
    expected = _handmade(tmp_path / "ls")
    index = discover(tmp_path / "ls")
    assert index.layout == "labelstudio"
    assert index.class_names == ["background", "cat", "dog"]
    _assert_same_masks(index, expected)
    text = " ".join(index.warnings)
    assert "1 tasks" in text and "predictions alone" in text  # task 3
    assert "several annotations" in text  # task 4: the later update (empty) wins
    assert "1 rectanglelabels" in text


def test_classes_txt_orders_labelstudio_classes(tmp_path) -> None:
    expected = _handmade(tmp_path / "ls")
    (tmp_path / "ls" / "classes.txt").write_text("background\ndog\ncat\n")
    index = discover(tmp_path / "ls")
    assert index.class_names == ["background", "dog", "cat"]
    swap = np.array([0, 2, 1], np.uint8)
    _assert_same_masks(index, {k: swap[m] for k, m in expected.items()})


def test_export_written_by_label_studio_sdk_encoder(tmp_path) -> None:
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    mask = np.zeros((25, 31), np.uint8)
    mask[3:20, 4:9] = 255
    mask[10, :] = 255
    result = {"type": "brushlabels", "original_width": 31, "original_height": 25,
              "value": {"format": "rle", "rle": brush.mask2rle(mask), "brushlabels": ["vessel"]}}  # fmt: skip
    (tmp_path / "ls").mkdir()
    (tmp_path / "ls" / "tasks.json").write_text(
        json.dumps([{"data": {"image": "v.png"}, "annotations": [{"result": [result]}]}])
    )
    SynData.save(tmp_path / "ls" / "v.png", SynData.image(25, 31, 0))
    index = discover(tmp_path / "ls")
    assert index.class_names == ["background", "vessel"]
    assert np.array_equal(index.load_mask(0), (mask > 0).astype(np.uint8))


# --- CVAT ------------------------------------------------------------------------------------------------------


def _cvat_with_images(predicted: Path, pictures: Path, dest: Path) -> Path:
    """CVAT's export with "Save images": our cvat.zip's files plus JPEGImages/."""
    with zipfile.ZipFile(predicted / CVAT_FILE) as archive:
        archive.extractall(dest)
    shutil.copytree(pictures, dest / "JPEGImages")
    return dest


def _zip(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                archive.write(p, p.relative_to(folder).as_posix())
    return target


def test_cvat_export_folder_and_zip_are_support_folders(predicted, pictures, shaken_multi_student, tmp_path) -> None:
    loaded = load_model(shaken_multi_student, kind="student")
    folder = _cvat_with_images(predicted, pictures, tmp_path / "cvat")
    expected = _predicted_masks(predicted)
    for source in (folder, _zip(folder, tmp_path / "task_1-segmentation mask 1.1.zip")):
        index = discover(source)
        assert index.root == source
        assert index.layout == "cvat" and index.mask_kind == "rgb"
        assert index.class_names == loaded.class_names and index.names_source == "labelmap.txt"
        assert [tuple(c) for c in index.palette] == [tuple(c) for c in loaded.palette]
        _assert_same_masks(index, expected)
    unpacked = list((tmp_path / "cache" / "unpacked").iterdir())
    assert len(unpacked) == 1
    discover(tmp_path / "task_1-segmentation mask 1.1.zip")  # unpacked once, read again from the cache
    assert list((tmp_path / "cache" / "unpacked").iterdir()) == unpacked


def test_check_and_distill_read_a_cvat_zip(predicted, pictures, tmp_path) -> None:
    archive = _zip(_cvat_with_images(predicted, pictures, tmp_path / "cvat"), tmp_path / "export.zip")
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(archive)])
    assert result.exit_code == 0, result.output
    assert "Layout: cvat" in result.output
    result = runner.invoke(
        app, ["distill", "--support", str(archive), "--backbone", "test-resnet", "--size", "64", "--device", "cpu",
              "--steps", "1", "--out", str(tmp_path / "run"), "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert load_model(tmp_path / "run", kind="student").config["support"]["root"] == str(archive)


def test_handmade_cvat_export_with_background_listed_last(tmp_path) -> None:
    """labelmap.txt as CVAT writes it (comment line; here background after the label, as CVAT#1736 shows)."""
    root = tmp_path / "cvat"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nleaf:48,112,32::\nbackground:0,0,0::\n")
    (root / "ImageSets" / "Segmentation" / "default.txt").write_text("p1\np2\n")
    masks = {}
    for k in (1, 2):
        leaf = SynData.disc(30, 40, 15, 10 * k + 5, 6)
        rgb = np.zeros((30, 40, 3), np.uint8)
        rgb[leaf] = (48, 112, 32)
        SynData.save(root / "SegmentationClass" / f"p{k}.png", rgb)
        SynData.save(
            root / "SegmentationObject" / f"p{k}.png", (leaf[..., None] * np.array([128, 0, 0])).astype(np.uint8)
        )
        SynData.save(root / "JPEGImages" / f"p{k}.jpg", SynData.image(30, 40, k), quality=95)
        masks[f"p{k}"] = leaf.astype(np.uint8)
    index = discover(root)
    assert index.layout == "cvat" and index.class_names == ["background", "leaf"]
    _assert_same_masks(index, masks)


def test_zip_member_outside_the_archive_is_refused(tmp_path) -> None:
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="outside its folder"):
        discover(tmp_path / "evil.zip")
    assert not (tmp_path / "cache" / "outside.txt").exists()


def test_a_zip_without_pairs_is_named_by_its_own_path(tmp_path) -> None:
    """The message named the cache folder the zip was unpacked into (twice), never the zip the user gave."""
    with zipfile.ZipFile(tmp_path / "notes.zip", "w") as archive:
        archive.writestr("readme.txt", "no masks here")
        archive.writestr("a.png", b"an image without a mask")
    with pytest.raises(DataError) as err:
        discover(tmp_path / "notes.zip")
    assert str(tmp_path / "notes.zip") in str(err.value) and "unpacked" not in str(err.value)


def test_an_unusable_cache_folder_is_not_called_a_full_disk(tmp_path, monkeypatch) -> None:
    """With HOME (so the cache) unwritable the message said to "free some space"."""
    with zipfile.ZipFile(tmp_path / "labels.zip", "w") as archive:
        archive.writestr("a.png", b"x")
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("FSDISTILL_CACHE", str(tmp_path / "afile" / "cache"))
    with pytest.raises(DataError, match="set FSDISTILL_CACHE to a writable folder") as err:
        discover(tmp_path / "labels.zip")
    assert "free some space" not in str(err.value)


def test_a_broken_zip_is_a_user_error(tmp_path) -> None:
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="not a readable zip"):
        discover(tmp_path / "broken.zip")


def test_an_encrypted_zip_is_a_user_error(tmp_path) -> None:
    """zipfile raises RuntimeError for a password-protected member: one sentence, nothing left half unpacked."""
    with zipfile.ZipFile(tmp_path / "locked.zip", "w") as archive:
        archive.writestr("images/0.png", b"not read")
    data = bytearray((tmp_path / "locked.zip").read_bytes())
    entry = data.find(b"PK\x01\x02")  # the central directory entry: general-purpose flags at offset 8, bit 0
    data[entry + 8] |= 0x1
    (tmp_path / "locked.zip").write_bytes(data)
    with pytest.raises(DataError, match="encrypted or uses a compression"):
        discover(tmp_path / "locked.zip")
    assert not list((tmp_path / "cache" / "unpacked").iterdir())


# --- bad input through the CLI: one sentence, exit 2 -----------------------------------------------------------


def _check_error(folder: Path, *fragments: str) -> str:
    return assert_user_error(CliRunner().invoke(app, ["check", str(folder)]), *fragments)


def _one_task(root: Path, image: str, result: list, save: str | None = "x.png") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "export.json").write_text(
        json.dumps([{"id": 7, "data": {"image": image}, "annotations": [{"result": result}]}])
    )
    if save:
        SynData.save(root / save, SynData.image(20, 30, 0))
    return root


def _brush(label: str = "cat", rle: list | None = None) -> dict:
    m = np.zeros((20, 30), bool)
    m[5:10, 5:10] = True
    return {"type": "brushlabels", "original_width": 30, "original_height": 20,
            "value": {"format": "rle", "rle": encode_brush_rle(m) if rle is None else rle, "brushlabels": [label]}}  # fmt: skip


def test_an_export_of_predictions_alone_says_so(tmp_path) -> None:
    """predict --format labelstudio's tasks exported back before anyone submitted them: the generic "no pairs" list
    of layouts did not say why."""
    root = tmp_path / "ls"
    root.mkdir()
    tasks = [{"id": i, "data": {"image": f"/data/local-files/?d=x{i}.png"}, "predictions": [{"result": [_brush()]}]}
             for i in range(3)]  # fmt: skip
    (root / "export.json").write_text(json.dumps(tasks))
    for i in range(3):
        SynData.save(root / f"x{i}.png", SynData.image(20, 30, i))
    _check_error(root, "export.json has 3 tasks and none with a submitted annotation", "submit the tasks")


def test_a_url_prefix_with_folders_pairs_each_task_with_its_own_image(tmp_path) -> None:
    """``--image-root-url https://host/pool/`` on a pool with a/x.png, b/x.png and x.png: each task's image is found
    by the longest tail of its URL that exists (b/x.png's task was paired with x.png, or refused as a duplicate)."""
    root = tmp_path / "ls"
    tasks = [{"id": i, "data": {"image": f"https://host/pool/{rel}"}, "annotations": [{"result": [_brush()]}]}
             for i, rel in enumerate(["a/x.png", "b/x.png", "x.png"])]  # fmt: skip
    root.mkdir()
    (root / "export.json").write_text(json.dumps(tasks))
    for i, rel in enumerate(["a/x.png", "b/x.png", "x.png"]):
        SynData.save(root / rel, SynData.image(20, 30, i))
    index = discover(root)
    assert sorted((s.key, s.image_path.relative_to(root).as_posix()) for s in index.samples) == [
        ("a/x", "a/x.png"),
        ("b/x", "b/x.png"),
        ("x", "x.png"),
    ]


@pytest.mark.parametrize(
    "ref", ["/data/local-files/?d=C:\\Users\\bob\\images\\x.png", "images\\x.png", "D:/labels/x.png"]
)
def test_windows_paths_in_a_labelstudio_export_find_their_images(tmp_path, ref) -> None:
    """An export made on Windows names its images with backslashes or a drive: read as separators and roots, they
    pair with the image by its path tail (the error said to put the image where it already was)."""
    folder = _one_task(tmp_path / "ls", ref, [_brush()], save="images/x.png")
    index = discover(folder)
    assert [s.image_path.relative_to(folder).as_posix() for s in index.samples] == ["images/x.png"]


def test_missing_image_names_the_file(tmp_path) -> None:
    folder = _one_task(tmp_path / "ls", "/data/upload/2/deadbeef-gone.png", [_brush()])
    _check_error(folder, "gone.png", "task 7", "copy the project's images")


def test_an_image_reference_without_a_file_name_is_named(tmp_path) -> None:
    folder = _one_task(tmp_path / "ls", "https://storage.example.com/", [_brush()])
    _check_error(folder, "task 7", "names no file")


def test_unknown_label_names_the_label(tmp_path) -> None:
    folder = _one_task(tmp_path / "ls", "x.png", [_brush("dog")])
    (folder / LABELSTUDIO_CONFIG_FILE).write_text(
        '<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
        '<Label value="cat" background="#ff0000"/></BrushLabels></View>'
    )
    _check_error(folder, "'dog'", "task 7", LABELSTUDIO_CONFIG_FILE)


def test_malformed_json_is_named(tmp_path) -> None:
    folder = tmp_path / "ls"
    SynData.save(folder / "x.png", SynData.image(20, 30, 0))
    (folder / "export.json").write_text('[{"data": {"image": "x.png"}, "annotations": [')
    _check_error(folder, "export.json", "not valid JSON")


def test_brush_without_rle_is_refused(tmp_path) -> None:
    result = _brush()
    del result["value"]["rle"]
    _check_error(_one_task(tmp_path / "ls", "x.png", [result]), "without an rle", "task 7")


def test_brush_rle_that_does_not_decode_is_refused(tmp_path) -> None:
    truncated = _brush()["value"]["rle"][:-3]
    _check_error(_one_task(tmp_path / "ls", "x.png", [_brush(rle=truncated)]), "does not decode", "task 7")


def test_brush_of_another_size_is_refused(tmp_path) -> None:
    folder = _one_task(tmp_path / "ls", "x.png", [_brush()], save=None)
    SynData.save(folder / "x.png", SynData.image(21, 30, 0))
    _check_error(folder, "30×20", "30×21")


def test_cvat_export_without_images_says_so(predicted, tmp_path) -> None:
    _check_error(predicted / CVAT_FILE, "without its images", "Save images")


def test_a_model_of_a_coco_folder_writes_its_pre_labels_with_the_folders_category_ids(
    shaken_multi_student, pictures, tmp_path, caplog
) -> None:
    """A COCO folder whose categories are 7, 3, 12: the pre-labels renumbered them 1, 2, 3, so id 3 meant another
    class than in the user's dataset (COCOeval, merging, an import by id swapped classes). The artifact records the
    category ids, and --format coco (torch or onnx backend) writes them."""
    api.predict([pictures], tmp_path / "p", shaken_multi_student, device="cpu", workers=0, formats="coco")
    coco = json.loads((tmp_path / "p" / "coco.json").read_text())
    renumber = {1: 7, 2: 3, 3: 12}
    for category in coco["categories"]:
        category["id"] = renumber[category["id"]]
    for annotation in coco["annotations"]:
        annotation["category_id"] = renumber[annotation["category_id"]]
    folder = tmp_path / "coco"
    shutil.copytree(pictures, folder / "images")
    (folder / "annotations.json").write_text(json.dumps(coco))
    run = api.distill(
        {"support": folder, "out": tmp_path / "run", "device": "cpu", "model": TINY_MODEL, "train": {"steps": 1}},
        quiet=True,
    )
    assert load_model(run.student_dir).config["support"]["category_ids"] == [7, 3, 12]
    names = {c["name"]: c["id"] for c in coco["categories"]}
    api.predict([pictures], tmp_path / "again", run.run_dir, device="cpu", workers=0, formats="coco")
    written = json.loads((tmp_path / "again" / "coco.json").read_text())
    assert {c["name"]: c["id"] for c in written["categories"]} == names
    assert {a["category_id"] for a in written["annotations"]} <= {7, 3, 12}
    pytest.importorskip("onnxruntime")
    exported = api.export(run.run_dir, tmp_path / "m.onnx", threads=1)
    api.predict([pictures], tmp_path / "onnx", exported.path, device="cpu", workers=0, formats="coco")
    by_onnx = json.loads((tmp_path / "onnx" / "coco.json").read_text())
    assert {c["name"]: c["id"] for c in by_onnx["categories"]} == names
    # An artifact of an earlier version records no ids: they are read from its COCO folder while that is there
    # with the model's classes (--format coco renumbered them 1..N, silently), else a warning says 1..N.
    from fsdistill.data.discover import recorded_category_ids

    config = load_model(run.student_dir).config
    earlier = {**config, "support": {k: v for k, v in config["support"].items() if k != "category_ids"}}
    assert recorded_category_ids(earlier) == [7, 3, 12]
    gone = {**earlier, "support": {**earlier["support"], "root": str(tmp_path / "moved")}}
    with caplog.at_level(logging.WARNING, logger="fsdistill"):
        assert recorded_category_ids(gone) is None
    assert "did not record its category ids" in caplog.text and str(tmp_path / "moved") in caplog.text
    caplog.clear()
    paired = {**earlier, "support": {**earlier["support"], "layout": "paired"}}
    assert recorded_category_ids(paired) is None and caplog.text == ""
    # --engine ray's runner gives the driver's model's ids (it gave the Runner default, None: 1..N)
    from types import SimpleNamespace

    from fsdistill.infer.ray_engine import RayRunner

    ray_runner = RayRunner.__new__(RayRunner)  # no Ray needed to ask it
    ray_runner.local = SimpleNamespace(category_ids=[7, 3, 12])
    assert ray_runner.category_ids == [7, 3, 12]


def test_exports_naming_images_in_another_case_or_zipped_on_windows_are_read(tmp_path, monkeypatch) -> None:
    """COCO / Label Studio names in another case ("none was found", the images being there) and a zip whose
    members use "\\" (PowerShell's Compress-Archive: one flat file per member, no layout) were not read."""
    from fsdistill.data.coco import encode_rle

    coco = tmp_path / "coco"
    SynData.save(coco / "images" / "img_01.png", SynData.image(20, 30, 0))
    blob = np.zeros((20, 30), bool)
    blob[5:10, 5:10] = True
    data = {
        "images": [{"id": 1, "file_name": "IMG_01.PNG", "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": encode_rle(blob)}],
    }
    (coco / "annotations.json").write_text(json.dumps(data))
    assert [s.image_path.name for s in discover(coco).samples] == ["img_01.png"]

    ls = _one_task(tmp_path / "ls", "/data/local-files/?d=X.PNG", [_brush()], save="images/x.png")
    assert [s.image_path.name for s in discover(ls).samples] == ["x.png"]

    archive = tmp_path / "windows.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in coco.rglob("*"):
            if path.is_file():
                z.write(path, str(path.relative_to(coco)).replace("/", "\\"))
    assert [s.key for s in discover(archive).samples] == ["IMG_01"]
