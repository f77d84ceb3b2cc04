"""predict --format coco|cvat|labelstudio: each format read back to the index masks by its tool's own reader.

COCO through pycocotools, Label Studio through label-studio-sdk's brush decoder (both test-only dependencies of
the ``dev`` extra; the tests that need one skip without it), CVAT by reading its PNGs through its labelmap.txt.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsdistill import api
from fsdistill.checkpoint import config_sha256
from fsdistill.cli import app
from fsdistill.data.brush_rle import decode_brush_rle, encode_brush_rle
from fsdistill.data.masks import parse_labelmap, read_index_mask
from fsdistill.errors import ConfigError
from fsdistill.infer import formats as formats_module
from fsdistill.infer.formats import (
    COCO_FILE,
    CVAT_FILE,
    LABELSTUDIO_CONFIG_FILE,
    LABELSTUDIO_TASKS_FILE,
    FormatOptions,
    read_scores,
)
from fsdistill.models.build import load_model

from helpers import SynData, assert_user_error

# pycocotools (compiled against an older NumPy) warns on every decode under NumPy 2.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZES = [(40, 48), (57, 33), (64, 64), (35, 90), (72, 50), (48, 61)]  # (height, width)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth background with two coloured squares (the shaken student segments such squares)."""
    img = SynData.image(h, w, seed)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        img[y : y + h // 3, x : x + w // 3] = rng.integers(0, 255, 3)
    return img


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    """Six images of odd sizes, one in a subfolder and one with a space in its name."""
    root = tmp_path_factory.mktemp("pictures")
    names = ["a.png", "b.png", "c.jpg", "sub/d.png", "e f.png", "g.png"]
    for k, (name, (h, w)) in enumerate(zip(names, SIZES)):
        SynData.save(root / name, _image(h, w, k), **({"quality": 95} if name.endswith(".jpg") else {}))
    return root


@pytest.fixture(scope="module")
def predicted(shaken_multi_student, pictures, tmp_path_factory) -> Path:
    """predict with all formats (polygons), once for the module."""
    out = tmp_path_factory.mktemp("predicted")
    api.predict(
        [pictures], out, shaken_multi_student, device="cpu", workers=0, batch_size=4,
        formats=["coco,cvat", "labelstudio"], image_root_url="http://files.example/data/",
    )  # fmt: skip
    return out


def _masks(out: Path) -> dict[str, np.ndarray]:
    """Index masks by input-relative path without suffix."""
    root = out / "masks"
    return {p.relative_to(root).with_suffix("").as_posix(): read_index_mask(p) for p in sorted(root.rglob("*.png"))}


def _classes(student: Path) -> list[str]:
    return load_model(student, kind="student").class_names


def test_the_masks_show_every_class(predicted, shaken_multi_student) -> None:
    """The round trips below are only worth something when the masks hold every class and several objects."""
    masks = _masks(predicted)
    assert len(masks) == len(SIZES)
    present = set(np.unique(np.concatenate([m.ravel() for m in masks.values()])).tolist())
    assert present == set(range(len(_classes(shaken_multi_student))))


# --- COCO ------------------------------------------------------------------------------------------------------


def _coco_round_trip(out: Path, classes: list[str], exact: bool) -> int:
    coco_module = pytest.importorskip("pycocotools.coco")
    from fsdistill.data.coco import annotation_mask
    from fsdistill.infer.formats import _components

    coco = coco_module.COCO(str(out / COCO_FILE))
    assert [coco.cats[k]["name"] for k in sorted(coco.cats)] == classes[1:]
    masks = _masks(out)
    assert sorted(Path(im["file_name"]).with_suffix("").as_posix() for im in coco.imgs.values()) == sorted(masks)
    checked = 0
    for image_id, im in coco.imgs.items():
        mask = masks[Path(im["file_name"]).with_suffix("").as_posix()]
        assert (im["height"], im["width"]) == mask.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        for cls in range(1, len(classes)):
            count, labels, _ = _components(mask, cls)
            mine = sorted((a for a in anns if a["category_id"] == cls), key=lambda a: a["id"])
            assert len(mine) == count - 1  # one annotation per connected component
            for k, ann in enumerate(mine, 1):
                decoded = coco.annToMask(ann).astype(bool)
                component = labels == k
                # fsdistill reads the file back (check, distill) as pycocotools does (it grew each object by a pixel)
                assert np.array_equal(annotation_mask(ann, *mask.shape), decoded), (im["file_name"], cls, k)
                if exact:
                    assert np.array_equal(decoded, component), (im["file_name"], cls, k)
                else:
                    iou = (decoded & component).sum() / (decoded | component).sum()
                    assert iou >= 0.98, (im["file_name"], cls, k, iou)
                assert ann["area"] == component.sum() and ann["iscrowd"] == 0
                x, y, w, h = ann["bbox"]
                ys, xs = np.nonzero(component)
                assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
                assert 0.0 < ann["score"] <= 1.0
                checked += 1
    return checked


def test_coco_polygons_round_trip_through_pycocotools(predicted, shaken_multi_student) -> None:
    assert _coco_round_trip(predicted, _classes(shaken_multi_student), exact=False) >= 6


def test_coco_rle_round_trips_pixel_exact(shaken_multi_student, pictures, tmp_path) -> None:
    api.predict([pictures], tmp_path, shaken_multi_student, device="cpu", workers=0, formats="coco", coco_rle=True)
    data = json.loads((tmp_path / COCO_FILE).read_text())
    assert data["annotations"] and all(isinstance(a["segmentation"], dict) for a in data["annotations"])
    assert _coco_round_trip(tmp_path, _classes(shaken_multi_student), exact=True) >= 6


@pytest.mark.parametrize("seed", range(4))
def test_polygons_and_rle_of_random_components(seed: int) -> None:
    """Blobs with holes, diagonal contacts, one-pixel lines: polygons within IoU 0.98, RLE exact; holes → RLE."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    import cv2

    from fsdistill.infer.formats import _component_polygons, _component_rle, _components

    rng = np.random.default_rng(seed)
    holes = polygons = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(4, 50, size=2))
        noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), float(rng.uniform(0.4, 3)))
        mask = (noise > rng.uniform(0.45, 0.6)).astype(np.uint8)
        count, labels, stats = _components(mask, 1)
        for k in range(1, count):
            box = tuple(int(v) for v in stats[k][:4])
            component = labels == k
            rle = _component_rle(labels, k, box)
            assert np.array_equal(mask_utils.decode({**rle, "counts": rle["counts"].encode()}).astype(bool), component)
            polys = _component_polygons(labels, k, box)
            if polys is None:  # a hole: COCO polygons cannot hold it, the annotation is RLE
                holes += 1
                continue
            decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))).astype(bool)
            assert (decoded & component).sum() / (decoded | component).sum() >= 0.98
            polygons += 1
    assert polygons > 20 and holes > 0


# --- Label Studio ----------------------------------------------------------------------------------------------


def test_brush_rle_decodes_with_label_studio_sdk() -> None:
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    rng = np.random.default_rng(0)
    cases = [np.zeros((1, 1), bool), np.ones((3, 5), bool), rng.random((40, 37)) < 0.5, rng.random((64, 80)) < 0.02]
    big = np.zeros((300, 400), bool)  # runs longer than 65536 values must be split
    big[20:280, 10:390] = True
    cases.append(big)
    for mask in cases:
        rle = encode_brush_rle(mask)
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
        decoded = brush.decode_rle(rle).reshape(*mask.shape, 4)
        assert np.array_equal(decoded[..., 3] > 0, mask)
        assert set(np.unique(decoded).tolist()) <= {0, 255}
        assert np.array_equal(decode_brush_rle(rle, *mask.shape), mask)
        # and our decoder reads the SDK's encoder (as a Label Studio export holds it)
        sdk = brush.mask2rle((mask * 255).astype(np.uint8))
        assert np.array_equal(decode_brush_rle(sdk, *mask.shape), mask)


def test_labelstudio_tasks_round_trip_through_the_sdk_decoder(predicted, shaken_multi_student, pictures) -> None:
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    classes = _classes(shaken_multi_student)
    loaded = load_model(shaken_multi_student, kind="student")
    config = ElementTree.parse(predicted / LABELSTUDIO_CONFIG_FILE).getroot()
    labels_tag = config.find("BrushLabels")
    image_tag = config.find("Image")
    assert [label.get("value") for label in labels_tag.iter("Label")] == classes[1:]
    assert [label.get("background") for label in labels_tag.iter("Label")] == [
        "#{:02x}{:02x}{:02x}".format(*c) for c in loaded.palette[1:]
    ]
    tasks = json.loads((predicted / LABELSTUDIO_TASKS_FILE).read_text())
    masks = _masks(predicted)
    assert len(tasks) == len(masks)
    seen = set()
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith("http://files.example/data/")
        rel = url[len("http://files.example/data/") :].replace("%20", " ")
        assert (pictures / rel).is_file()
        mask = masks[Path(rel).with_suffix("").as_posix()]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == config_sha256(loaded.config)
        assert 0.0 < prediction["score"] <= 1.0
        assert [r["value"]["brushlabels"][0] for r in prediction["result"]] == [
            classes[c] for c in range(1, len(classes)) if (mask == c).any()
        ]
        for result in prediction["result"]:
            assert result["type"] == "brushlabels" and result["value"]["format"] == "rle"
            assert result["from_name"] == labels_tag.get("name") and result["to_name"] == image_tag.get("name")
            assert labels_tag.get("toName") == image_tag.get("name") and image_tag.get("value") == "$image"
            assert (result["original_width"], result["original_height"]) == (mask.shape[1], mask.shape[0])
            assert 0.0 < result["score"] <= 1.0
            cls = classes.index(result["value"]["brushlabels"][0])
            decoded = brush.decode_rle(result["value"]["rle"]).reshape(*mask.shape, 4)[..., 3]
            assert np.array_equal(decoded > 0, mask == cls)
            seen.add(cls)
    assert seen == set(range(1, len(classes)))


def test_default_image_url_is_label_studio_local_files(shaken_multi_student, pictures, tmp_path) -> None:
    api.predict([pictures / "e f.png"], tmp_path, shaken_multi_student, device="cpu", workers=0, formats="labelstudio")
    (task,) = json.loads((tmp_path / LABELSTUDIO_TASKS_FILE).read_text())
    assert task["data"]["image"] == "/data/local-files/?d=e%20f.png"


# --- CVAT ------------------------------------------------------------------------------------------------------


def _read_colours(path: Path, colours: list[tuple[int, int, int]]) -> np.ndarray:
    """An RGB PNG → H×W indices into ``colours``; every pixel must have one of them (CVAT refuses others)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in colours])
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], packed).clip(0, len(keys) - 1)
    assert (keys[order][pos] == packed).all(), f"{path} has colours outside the label map"
    return order[pos]


def test_cvat_zip_round_trips_through_its_labelmap(predicted, shaken_multi_student, tmp_path) -> None:
    from fsdistill.data.masks import default_palette
    from fsdistill.infer.formats import _components

    classes = _classes(shaken_multi_student)
    masks = _masks(predicted)
    with zipfile.ZipFile(predicted / CVAT_FILE) as archive:
        archive.extractall(tmp_path)
    names, colours = parse_labelmap(tmp_path / "labelmap.txt")
    assert names == classes
    assert len(set(colours)) == len(colours)
    assert colours == [tuple(c) for c in load_model(shaken_multi_student, kind="student").palette]
    ids = (tmp_path / "ImageSets" / "Segmentation" / "default.txt").read_text().split("\n")[:-1]
    assert sorted(ids) == sorted(masks)
    for item, mask in masks.items():
        decoded = _read_colours(tmp_path / "SegmentationClass" / f"{item}.png", colours)
        assert np.array_equal(decoded, mask), item
        # SegmentationObject: one VOC instance colour per connected component (CVAT imports each as a region)
        instances = _read_colours(tmp_path / "SegmentationObject" / f"{item}.png", default_palette(256))
        assert np.array_equal(instances == 0, mask == 0)
        components = sum(_components(mask, c)[0] - 1 for c in range(1, len(classes)))
        assert len(np.unique(instances)) - 1 == components
        for value in set(np.unique(instances).tolist()) - {0}:
            assert len(np.unique(mask[instances == value])) == 1
            assert _components((instances == value).view(np.uint8), 1)[0] == 2  # one connected piece


# --- consistency -----------------------------------------------------------------------------------------------


def _format_files(out: Path) -> dict[str, bytes]:
    return {
        name: (out / name).read_bytes()
        for name in (COCO_FILE, CVAT_FILE, LABELSTUDIO_TASKS_FILE, LABELSTUDIO_CONFIG_FILE)
    }


def test_resumed_run_writes_the_same_format_files(shaken_multi_student, pictures, tmp_path, monkeypatch) -> None:
    """A run interrupted after two masks and resumed writes the format files of an uninterrupted run, byte for byte.
    Both run one image per batch: the resumed run batches other images together, and a batch's composition may
    move a logit in its last bits (one pixel of a 64 px image flipped at a tie in one of this fixture's weights)."""
    from fsdistill.infer import predictor as predictor_module

    real_write = predictor_module.write_mask
    count = []

    def dies_after_two(out, key, mask, palette, text=None):
        if len(count) == 2:
            raise KeyboardInterrupt
        real_write(out, key, mask, palette, text)
        count.append(key)

    options = dict(device="cpu", workers=0, batch_size=1, formats="coco,cvat,labelstudio",
                   image_root_url="http://files.example/data/")  # fmt: skip
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    api.predict([pictures], whole, shaken_multi_student, **options)
    monkeypatch.setattr(predictor_module, "write_mask", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        api.predict([pictures], out, shaken_multi_student, **options)
    monkeypatch.undo()
    assert not (out / COCO_FILE).exists() and not (out / CVAT_FILE).exists()
    resumed = api.predict([pictures], out, shaken_multi_student, **options)
    assert resumed.skipped == 2 and resumed.written == len(SIZES) - 2
    assert _format_files(out) == _format_files(whole)
    assert not list(out.glob(".*.tmp"))


def test_masks_predicted_without_scores_are_scored_later(shaken_multi_student, pictures, predicted, tmp_path) -> None:
    """A png-only run, then --format: the masks get their scores (model run again), pixels untouched."""
    api.predict([pictures], tmp_path, shaken_multi_student, device="cpu", workers=0)
    before = _masks(tmp_path)
    assert all(read_scores(p) is None for p in (tmp_path / "masks").rglob("*.png"))
    again = api.predict(
        [pictures], tmp_path, shaken_multi_student, device="cpu", workers=0, formats=["coco", "labelstudio", "cvat"],
        image_root_url="http://files.example/data/",
    )  # fmt: skip
    assert again.written == 0 and again.skipped == len(SIZES)
    assert set(again.format_paths) == {"coco", "cvat", "labelstudio"}
    after = _masks(tmp_path)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert all(read_scores(p) is not None for p in (tmp_path / "masks").rglob("*.png"))
    assert _format_files(tmp_path) == _format_files(predicted)


def test_png_only_writes_no_format_files_and_no_scores(shaken_multi_student, pictures, tmp_path) -> None:
    result = api.predict([pictures / "a.png"], tmp_path, shaken_multi_student, device="cpu", workers=0)
    assert result.format_paths == {}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["masks", "predictions.csv"]
    assert read_scores(tmp_path / "masks" / "a.png") is None


# --- options ---------------------------------------------------------------------------------------------------


def test_format_options_parse() -> None:
    assert FormatOptions.parse(None).formats == ("png",)
    assert FormatOptions.parse(["labelstudio,coco", "COCO"]).formats == ("png", "coco", "labelstudio")
    assert FormatOptions.parse("cvat").scored is False and FormatOptions.parse("coco").scored is True
    for bad, match in [("xml", "Unknown --format 'xml'"), ("", "no format"), (["coco", " , "], "no format")]:
        with pytest.raises(ConfigError, match=match):
            FormatOptions.parse(bad)
    with pytest.raises(ConfigError, match="--coco-rle"):
        FormatOptions.parse("cvat", coco_rle=True)
    with pytest.raises(ConfigError, match="--image-root-url"):
        FormatOptions.parse("coco", image_root_url="http://x/")
    with pytest.raises(ConfigError, match="empty"):
        FormatOptions.parse("labelstudio", image_root_url=" ")
    # a folder URL without its slash named https://host/poola.png; query forms are kept as given
    assert FormatOptions.parse("labelstudio", image_root_url="https://host/pool").image_root_url == "https://host/pool/"
    for kept in ("https://host/pool/", "/data/local-files/?d=", "https://host/get?file="):
        assert FormatOptions.parse("labelstudio", image_root_url=kept).image_root_url == kept


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--format", "yolo"], "unknown --format 'yolo'"),
        (["--format", "coco,,"], None),
        (["--format", ","], "no format"),
        (["--coco-rle"], "--coco-rle applies to --format coco"),
        (["--format", "cvat", "--image-root-url", "http://x/"], "--image-root-url applies"),
    ],
)
def test_bad_format_options_are_one_sentence_and_exit_2(
    shaken_multi_student, pictures, tmp_path, extra, fragment
) -> None:
    result = CliRunner().invoke(
        app, ["predict", str(pictures / "a.png"), "-o", str(tmp_path / "out"), "--model", str(shaken_multi_student),
              "--device", "cpu", "-q", *extra],
    )  # fmt: skip
    if fragment is None:  # empty items of a comma list are ignored
        assert result.exit_code == 0, result.output
        assert (tmp_path / "out" / COCO_FILE).is_file()
        return
    assert_user_error(result, fragment)
    assert not (tmp_path / "out").exists()  # refused before any image was predicted


def test_cli_prints_where_the_format_files_are(shaken_multi_student, pictures, tmp_path) -> None:
    result = CliRunner().invoke(
        app, ["predict", str(pictures / "a.png"), "-o", str(tmp_path), "--model", str(shaken_multi_student),
              "--device", "cpu", "--workers", "0", "--format", "cvat", "--format", "coco", "--coco-rle"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"coco: {tmp_path / COCO_FILE}" in result.output and f"cvat: {tmp_path / CVAT_FILE}" in result.output
    # a png-only run, then --format coco: "0 written, 1 already done" hid that the model ran again to score it
    common = [str(pictures / "b.png"), "--model", str(shaken_multi_student), "--device", "cpu", "--workers", "0"]
    assert CliRunner().invoke(app, ["predict", *common, "-o", str(tmp_path / "b")]).exit_code == 0
    result = CliRunner().invoke(app, ["predict", *common, "-o", str(tmp_path / "b"), "--format", "coco"])
    assert result.exit_code == 0 and "0 written, 1 already done" in result.output
    assert "1 masks of an earlier run given the class scores --format needs" in result.output


def test_labelmap_refuses_a_class_name_with_a_colon(shaken_multi_student, pictures, tmp_path, monkeypatch) -> None:
    """Before any image is predicted: the refusal came after the whole pool, and coco.json was lost with it."""
    from fsdistill.errors import DataError
    from fsdistill.models.build import LoadedModel

    options = formats_module.FormatOptions.parse("coco,cvat")
    with pytest.raises(DataError, match="labelmap"):
        formats_module.check_class_names(options, ["background", "a:b"])
    formats_module.check_class_names(formats_module.FormatOptions.parse("coco"), ["background", "a:b"])
    monkeypatch.setattr(LoadedModel, "class_names", property(lambda self: ["background", "a:b", "green", "blue"]))
    with pytest.raises(DataError, match="labelmap"):
        api.predict([pictures], tmp_path / "out", shaken_multi_student, device="cpu", workers=0, formats="coco,cvat")
    assert not (tmp_path / "out" / "masks").exists()


def test_repeated_palette_colours_get_distinct_labelmap_colours() -> None:
    colours = formats_module._unique_palette([(0, 0, 0), (128, 0, 0), (128, 0, 0)], 4)
    assert len(set(colours)) == 4 and colours[:2] == [(0, 0, 0), (128, 0, 0)]


def test_png_text_chunk_keeps_pixels(tmp_path) -> None:
    from fsdistill.data.masks import write_index_png

    mask = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    write_index_png(tmp_path / "m.png", mask, [(0, 0, 0), (1, 1, 1), (2, 2, 2)], text={"fsdistill:scores": "{}"})
    assert np.array_equal(read_index_mask(tmp_path / "m.png"), mask)
    assert read_scores(tmp_path / "m.png") == {}
    with Image.open(io.BytesIO((tmp_path / "m.png").read_bytes())) as img:
        assert img.mode == "P"


def test_more_components_than_voc_instance_colours() -> None:
    """Past 254 components the largest keep their own instance; the rest share one id per class."""
    from fsdistill.infer.formats import MAX_INSTANCES, _components, _Image, _instances

    mask = np.zeros((60, 60), np.uint8)
    mask[::2, ::2] = 1  # 900 one-pixel components of class 1
    mask[1:5, 1:5] = 2  # a larger component of class 2 (overwrites a few class-1 pixels)
    components = {c: _components(mask, c) for c in (1, 2)}
    instances = _instances(_Image(1, Path("x.png"), mask, None, components))
    assert instances.max() <= MAX_INSTANCES
    assert np.array_equal(instances == 0, mask == 0)
    for value in np.unique(instances[instances > 0]).tolist():
        assert len(np.unique(mask[instances == value])) == 1  # every id stays inside one class
    assert len(np.unique(instances[mask == 2])) == 1 and (instances[mask == 2] < MAX_INSTANCES - 1).all()


def test_overwrite_drops_format_files_of_the_replaced_masks(shaken_multi_student, tiny_multi_run, pictures, tmp_path):
    """--overwrite with another model and no --format: the old coco.json would describe masks that are gone."""
    api.predict([pictures / "a.png"], tmp_path, shaken_multi_student, device="cpu", workers=0, formats="coco,cvat")
    assert (tmp_path / COCO_FILE).is_file() and (tmp_path / CVAT_FILE).is_file()
    api.predict([pictures / "a.png"], tmp_path, tiny_multi_run.run_dir, device="cpu", workers=0, overwrite=True)
    assert not (tmp_path / COCO_FILE).exists() and not (tmp_path / CVAT_FILE).exists()
    again = api.predict([pictures / "a.png"], tmp_path, tiny_multi_run.run_dir, device="cpu", workers=0, formats="cvat")
    assert again.skipped == 1 and (tmp_path / CVAT_FILE).is_file()


def test_a_resume_that_redoes_masks_drops_the_format_files_it_does_not_write(shaken_multi_student, pictures, tmp_path):
    """All formats, then an image replaced and a resume asking for coco only: labelstudio_tasks.json and cvat.zip
    stayed from the old image (1201 pixels off its new mask) beside a rewritten mask, exit 0."""
    import shutil

    folder = tmp_path / "in"
    shutil.copytree(pictures, folder)
    out = tmp_path / "out"
    api.predict([folder], out, shaken_multi_student, device="cpu", workers=0, formats="coco,cvat,labelstudio")
    assert (out / CVAT_FILE).is_file() and (out / LABELSTUDIO_TASKS_FILE).is_file()
    shutil.copy(folder / "b.png", folder / "a.png")  # replaced by another image (and so of another date)
    resumed = api.predict([folder], out, shaken_multi_student, device="cpu", workers=0, formats="coco")
    assert resumed.written == 1
    assert (
        (out / COCO_FILE).is_file() and not (out / CVAT_FILE).exists() and not (out / LABELSTUDIO_TASKS_FILE).exists()
    )
    # nothing to redo: the files there stay
    again = api.predict([folder], out, shaken_multi_student, device="cpu", workers=0, formats="cvat")
    assert again.written == 0 and (out / COCO_FILE).is_file() and (out / CVAT_FILE).is_file()
