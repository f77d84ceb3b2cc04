"""predict and evaluate through the library API: original sizes, odd inputs, CSV, resume, failures, evaluation."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsdistill import api
from fsdistill.api import inference as inference_api
from fsdistill.errors import CheckpointError, DataError

from helpers import SynData, interrupt_mask_writes_after

CSV_COLUMNS = ["image", "width", "height", "class", "pixels", "fraction"]


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    img = SynData.image(h, w, seed)
    img[h // 4 : h // 2, w // 4 : w // 2] = (230, 60, 60)
    return img


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """A folder of awkward inputs: odd sizes, grey, RGBA, 16-bit, JPEG, and a nested subfolder."""
    root = tmp_path_factory.mktemp("odd")
    sizes = {}

    def put(rel: str, arr: np.ndarray, mode: str | None = None, **kw):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
        img.save(path, **kw)
        sizes[rel] = (arr.shape[1], arr.shape[0])  # (width, height)

    put("odd_37x53.png", _rgb(37, 53, 1))
    put("odd_211x97.png", _rgb(211, 97, 2))
    put("grey.png", _rgb(45, 61, 3)[..., 0])
    rgba = np.concatenate([_rgb(50, 33, 4), np.full((50, 33, 1), 128, np.uint8)], axis=-1)
    put("rgba.png", rgba)
    put("deep16.png", (np.linspace(0, 65535, 29 * 71).reshape(29, 71)).astype(np.uint16))
    put("photo.jpg", _rgb(64, 80, 5), quality=90)
    put("nested/inner.png", _rgb(33, 65, 6))
    # A JPEG large enough to be decoded at a reduced scale, stored 450×320 (w×h) and displayed turned 90°.
    exif = Image.Exif()
    exif[0x0112] = 6
    put("big_turned.jpg", _rgb(320, 450, 7), quality=90, exif=exif)
    sizes["big_turned.jpg"] = (320, 450)  # (width, height) as displayed: the mask must have this size
    return root, sizes


def _predict(inputs, out, model, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("workers", 0)
    return api.predict(list(inputs) if isinstance(inputs, (list, tuple)) else [inputs], out, model, **kw)


def _read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def _pngs(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png") if p.is_file())


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- predict ---------------------------------------------------------------------------------------------------


def test_masks_at_original_size_for_odd_inputs(tiny_multi_run, odd_images, tmp_path) -> None:
    root, sizes = odd_images
    result = _predict(root, tmp_path / "out", tiny_multi_run.run_dir, batch_size=3)
    assert result.written == len(sizes) and result.skipped == 0 and result.failed == []
    for rel, (w, h) in sizes.items():
        mask_path = tmp_path / "out" / "masks" / f"{rel.rsplit('.', 1)[0]}.png"
        assert mask_path.is_file(), rel
        with Image.open(mask_path) as mask:
            assert mask.mode == "P", rel  # index PNG with an embedded palette
            assert mask.size == (w, h), rel
            palette = mask.getpalette()
            values = np.asarray(mask)
        assert palette is not None, rel
        assert values.max() <= 3, rel  # background + 3 classes
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out" / "masks").rglob("*.png"))
    assert len(files) == len(sizes)


def test_mask_palette_is_the_models(tiny_multi_run, odd_images, tmp_path) -> None:
    root, _ = odd_images
    _predict(root / "odd_37x53.png", tmp_path / "out", tiny_multi_run.run_dir)
    from fsdistill.models.build import load_model

    palette = load_model(tiny_multi_run.run_dir).palette
    with Image.open(tmp_path / "out" / "masks" / "odd_37x53.png") as mask:
        stored = mask.getpalette()[: 3 * len(palette)]
    assert stored == [c for rgb in palette for c in rgb]


def test_predictions_csv_has_one_row_per_image_and_class(tiny_multi_run, odd_images, tmp_path) -> None:
    root, sizes = odd_images
    result = _predict(root, tmp_path / "out", tiny_multi_run.run_dir)
    rows = _read_csv(result.csv_path)
    assert result.csv_path == tmp_path / "out" / "predictions.csv"
    assert rows[0] == CSV_COLUMNS
    body = rows[1:]
    classes = ["background", "red", "green", "blue"]
    assert len(body) == len(sizes) * len(classes)
    by_image: dict[str, list[list[str]]] = {}
    for row in body:
        by_image.setdefault(row[0], []).append(row)
    assert len(by_image) == len(sizes)
    for image, image_rows in by_image.items():
        rel = image[len(str(root)) + 1 :]
        w, h = sizes[rel]
        assert [r[3] for r in image_rows] == classes
        assert all(int(r[1]) == w and int(r[2]) == h for r in image_rows)
        assert sum(int(r[4]) for r in image_rows) == w * h
        assert sum(float(r[5]) for r in image_rows) == pytest.approx(1.0, abs=1e-4)
        mask = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{rel.rsplit('.', 1)[0]}.png"))
        assert [int(r[4]) for r in image_rows] == np.bincount(mask.ravel(), minlength=4).tolist()


def test_resume_skips_done_images_and_matches_an_uninterrupted_run(
    shaken_multi_student, odd_images, tmp_path, monkeypatch
) -> None:
    root, sizes = odd_images
    model = shaken_multi_student  # the tiny runs predict background everywhere: any two runs' masks would match
    reference = _predict(root, tmp_path / "ref", model, batch_size=4)
    assert reference.written == len(sizes)
    classes = {
        int(v) for p in (tmp_path / "ref" / "masks").rglob("*.png") for v in np.unique(np.asarray(Image.open(p)))
    }
    assert classes == {0, 1, 2, 3}  # the byte comparison below can tell masks apart

    interrupt_mask_writes_after(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _predict(root, tmp_path / "out", model, batch_size=4)
    monkeypatch.undo()
    assert len(list((tmp_path / "out" / "masks").rglob("*.png"))) == 3
    assert not list((tmp_path / "out").rglob("*.tmp"))  # no half-written file

    resumed = _predict(root, tmp_path / "out", model, batch_size=4)
    assert resumed.skipped == 3 and resumed.written == len(sizes) - 3 and resumed.failed == []
    again = _predict(root, tmp_path / "out", model, batch_size=4)
    assert again.written == 0 and again.skipped == len(sizes)

    ref_tree, out_tree = _tree(tmp_path / "ref"), _tree(tmp_path / "out")
    assert set(ref_tree) == set(out_tree)
    for name in ref_tree:
        if name.startswith("masks/"):
            assert ref_tree[name] == out_tree[name], name
    assert _read_csv(tmp_path / "ref" / "predictions.csv") == _read_csv(tmp_path / "out" / "predictions.csv")


def test_resume_redoes_masks_of_another_model_or_of_a_replaced_image(
    shaken_multi_student, tiny_multi_run, odd_images, tmp_path
) -> None:
    """An --overwrite with model B stopped after rewriting the manifest, then resumed, kept model A's masks as done
    (each mask now names its model); an image replaced by another (of a different size, or of the same size
    after its mask was written) kept its old mask; an
    image that no longer reads kept its old mask under --overwrite, listed in the CSV."""
    import shutil

    from fsdistill.infer.predictor import MANIFEST_NAME

    root, sizes = odd_images
    model_a, model_b = tiny_multi_run.run_dir, shaken_multi_student
    _predict(root, tmp_path / "a", model_a, overlay=True)
    _predict(root, tmp_path / "b", model_b)
    shutil.copytree(tmp_path / "a", tmp_path / "mixed")
    shutil.copy(tmp_path / "b" / MANIFEST_NAME, tmp_path / "mixed" / MANIFEST_NAME)  # as the stopped overwrite left it
    resumed = _predict(root, tmp_path / "mixed", model_b)
    assert resumed.written == len(sizes) and resumed.skipped == 0
    masks = lambda out: {k: v for k, v in _tree(out).items() if k.startswith("masks/")}  # noqa: E731
    assert masks(tmp_path / "mixed") == masks(tmp_path / "b")
    assert not list((tmp_path / "mixed" / "overlays").rglob("*.png"))  # model A's overlays would show other masks
    # an image replaced in place by one of another size: predicted again, at its new size
    replaced = next(p for p in sorted(root.rglob("*.png")) if p.name != "grey.png")
    Image.fromarray(np.zeros((17, 23, 3), np.uint8)).save(replaced)
    again = _predict(root, tmp_path / "mixed", model_b)
    assert again.written == 1
    rel = replaced.relative_to(root).with_suffix(".png")
    assert Image.open(tmp_path / "mixed" / "masks" / rel).size == (23, 17)
    # replaced by another image of the same size (modified after its mask was written): predicted again
    import time

    before = (tmp_path / "mixed" / "masks" / rel).read_bytes()
    mask = tmp_path / "mixed" / "masks" / rel
    os.utime(mask, ns=(mask.stat().st_mtime_ns - 10**10,) * 2)  # written 10 s before the image is replaced
    Image.fromarray(np.full((17, 23, 3), 200, np.uint8)).save(replaced)
    assert _predict(root, tmp_path / "mixed", model_b).written == 1
    assert (tmp_path / "mixed" / "masks" / rel).read_bytes() != before
    assert _predict(root, tmp_path / "mixed", model_b).written == 0  # and then done
    # an image dated in the future (a camera's or a share's clock): predicted once more, then done
    future = time.time_ns() + 10**12
    os.utime(replaced, ns=(future, future))
    assert _predict(root, tmp_path / "mixed", model_b).written == 1
    assert _predict(root, tmp_path / "mixed", model_b).written == 0
    # an image that no longer reads: with --overwrite its old mask goes, and the CSV does not list it
    replaced.write_bytes(b"not an image")
    broken = _predict(root, tmp_path / "mixed", model_b, overwrite=True)
    assert len(broken.failed) == 1 and not (tmp_path / "mixed" / "masks" / rel).exists()
    assert str(replaced) not in {row[0] for row in _read_csv(tmp_path / "mixed" / "predictions.csv")}


def test_a_stopped_overwrite_leaves_no_table_of_the_old_model(
    shaken_multi_student, tiny_multi_run, odd_images, tmp_path, monkeypatch
) -> None:
    """predict --overwrite with model B stopped half-way kept model A's whole predictions.csv beside B's manifest: a
    script reading the table got the other model's numbers."""
    root, _ = odd_images
    out = tmp_path / "out"
    _predict(root, out, tiny_multi_run.run_dir)
    assert (out / "predictions.csv").is_file()
    interrupt_mask_writes_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _predict(root, out, shaken_multi_student, overwrite=True)
    monkeypatch.undo()
    assert not (out / "predictions.csv").exists()
    finished = _predict(root, out, shaken_multi_student)
    fresh = _predict(root, tmp_path / "fresh", shaken_multi_student)
    assert finished.written == fresh.written - 2 and finished.skipped == 2
    assert _read_csv(out / "predictions.csv") == _read_csv(tmp_path / "fresh" / "predictions.csv")


def test_an_image_of_another_folder_with_the_same_name_is_predicted(tiny_binary_run, tmp_path) -> None:
    """day1/IMG_0001.png, then day2/IMG_0001.png (another image, an older date as cp -p leaves it) into the same
    -o: the second run kept day1's mask as done and listed it under day2's image, exit 0. A mask names the file it
    was made from (size and date); a moved folder still resumes."""
    for day, seed in (("day1", 1), ("day2", 2)):
        (tmp_path / day).mkdir()
        Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 52, 3), np.uint8)).save(
            tmp_path / day / "IMG_0001.png"
        )
    os.utime(tmp_path / "day2" / "IMG_0001.png", ns=(10**18, 10**18))  # 2001: older than day1's mask
    model, out = tiny_binary_run.run_dir, tmp_path / "out"
    assert _predict(tmp_path / "day1", out, model).written == 1
    second = _predict(tmp_path / "day2", out, model)
    assert second.written == 1 and second.skipped == 0
    fresh = _predict(tmp_path / "day2", tmp_path / "fresh", model)
    assert fresh.written == 1
    assert (out / "masks" / "IMG_0001.png").read_bytes() == (tmp_path / "fresh" / "masks" / "IMG_0001.png").read_bytes()
    # the folder moved (mv keeps the dates): resumed, nothing predicted again
    (tmp_path / "day2").rename(tmp_path / "moved")
    assert _predict(tmp_path / "moved", out, model).written == 0


def test_an_output_folder_with_masks_predict_did_not_write_is_refused(tiny_binary_run, tmp_path) -> None:
    """-o a labelled folder (images/ + masks/, ground truth newer than the images): its masks counted as done and
    predictions.csv was built from them; older ones were overwritten by predictions. Refused, --overwrite too."""
    labelled = tmp_path / "lab"
    (labelled / "images").mkdir(parents=True)
    (labelled / "masks").mkdir()
    Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(labelled / "images" / "a.png")
    Image.fromarray(np.full((40, 52), 255, np.uint8)).save(labelled / "masks" / "a.png")
    truth = (labelled / "masks" / "a.png").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(DataError, match=r"already holds masks/ or overlays/ that fsdistill predict did not write"):
            _predict(labelled / "images", labelled, tiny_binary_run.run_dir, overwrite=overwrite)
    assert (labelled / "masks" / "a.png").read_bytes() == truth
    assert not (labelled / ".fsdistill-predict.json").exists()


def test_a_file_name_that_is_not_utf8(tiny_binary_run, tmp_path) -> None:
    """A Latin-1 name (b"caf\xe9.png", from an old zip or share): the masks were written, then predictions.csv
    crashed with a traceback on every run. The CSV keeps the name's bytes; --format, whose files are UTF-8, is
    refused before anything is written."""
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    Image.fromarray(np.zeros((40, 52, 3), np.uint8)).save(folder / name)
    result = _predict(folder, tmp_path / "out", tiny_binary_run.run_dir)
    assert result.written == 1 and (tmp_path / "out" / "masks" / name).is_file()
    assert b"caf\xe9.png" in (tmp_path / "out" / "predictions.csv").read_bytes()
    with pytest.raises(DataError, match=r"not valid UTF-8, which --format coco cannot hold"):
        _predict(folder, tmp_path / "formats", tiny_binary_run.run_dir, formats="coco")
    assert not (tmp_path / "formats").exists()


def test_resume_skips_a_turned_tiff(tiny_binary_run, tmp_path) -> None:
    """A TIFF with a 90° orientation tag: recent Pillow turns its size itself, so the header size swapped once
    more never matched its mask, and the image was predicted again on every resume."""
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "turned.tif", np.zeros((40, 70, 3), np.uint8), photometric="rgb",
                     extratags=[(274, 3, 1, 6, True)])  # fmt: skip
    first = _predict(folder, tmp_path / "out", tiny_binary_run.run_dir)
    again = _predict(folder, tmp_path / "out", tiny_binary_run.run_dir)
    assert first.written == 1 and again.written == 0 and again.skipped == 1


def test_overwrite_redoes_everything(tiny_binary_run, odd_images, tmp_path) -> None:
    root, sizes = odd_images
    _predict(root / "grey.png", tmp_path / "out", tiny_binary_run.run_dir)
    redo = _predict(root / "grey.png", tmp_path / "out", tiny_binary_run.run_dir, overwrite=True)
    assert redo.written == 1 and redo.skipped == 0


def test_corrupt_image_is_reported_and_the_rest_written(tiny_binary_run, tmp_path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(30 + i, 40, i)).save(folder / f"good{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    good = (folder / "good0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    result = _predict(folder, tmp_path / "out", tiny_binary_run.run_dir, batch_size=2)
    assert result.written == 3
    failed = sorted(p for p, _ in result.failed)
    assert failed == [str(folder / "broken.png"), str(folder / "truncated.png")]
    assert all(reason for _, reason in result.failed)
    masks = sorted(p.name for p in (tmp_path / "out" / "masks").iterdir())
    assert masks == ["good0.png", "good1.png", "good2.png"]
    rows = _read_csv(result.csv_path)[1:]
    assert {r[0] for r in rows} == {str(folder / f"good{i}.png") for i in range(3)}


def test_overlay_writes_overlays(tiny_binary_run, odd_images, tmp_path) -> None:
    root, sizes = odd_images
    inputs = [root / "odd_37x53.png", root / "nested"]
    result = _predict(inputs, tmp_path / "out", tiny_binary_run.run_dir, overlay=True)
    assert result.written == 2
    overlays = _pngs(tmp_path / "out" / "overlays")
    masks = _pngs(tmp_path / "out" / "masks")
    # a file input's outputs sit at the top level (not in a folder named after the file), a folder's under its name
    assert overlays == masks == ["nested/inner.png", "odd_37x53.png"]
    assert (tmp_path / "out" / "masks" / "odd_37x53.png").is_file()
    with Image.open(tmp_path / "out" / "overlays" / overlays[0]) as ov:
        assert ov.mode == "RGB"
    for rel in overlays:
        with Image.open(tmp_path / "out" / "overlays" / rel) as ov, Image.open(tmp_path / "out" / "masks" / rel) as m:
            assert ov.size == m.size


def test_output_folder_of_another_model_needs_overwrite(tiny_binary_run, tiny_multi_run, odd_images, tmp_path) -> None:
    root, _ = odd_images
    image = root / "odd_37x53.png"
    _predict(image, tmp_path / "out", tiny_binary_run.run_dir)
    with pytest.raises(DataError, match="overwrite"):
        _predict(image, tmp_path / "out", tiny_multi_run.run_dir)
    result = _predict(image, tmp_path / "out", tiny_multi_run.run_dir, overwrite=True)
    assert result.written == 1
    rows = _read_csv(tmp_path / "out" / "predictions.csv")[1:]
    assert [r[3] for r in rows] == ["background", "red", "green", "blue"]


def test_missing_input_and_empty_folder(tiny_binary_run, tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _predict(tmp_path / "nope", tmp_path / "out", tiny_binary_run.run_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        _predict(tmp_path / "empty", tmp_path / "out", tiny_binary_run.run_dir)


def test_predict_with_a_non_artifact_model(tmp_path, odd_images) -> None:
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(CheckpointError):
        _predict(odd_images[0], tmp_path / "out", tmp_path / "notamodel")


def test_predict_with_the_teacher_artifact(tiny_binary_run, odd_images, tmp_path, caplog) -> None:
    root, _ = odd_images
    with caplog.at_level("WARNING", logger="fsdistill"):
        result = _predict(root / "odd_211x97.png", tmp_path / "out", tiny_binary_run.teacher_dir)
    assert result.written == 1
    # said, as predict is for the support-free student (it was silent)
    assert "is a teacher: each image is segmented against its" in caplog.text
    with Image.open(tmp_path / "out" / "masks" / "odd_211x97.png") as m:
        assert m.size == (97, 211) and m.mode == "P"


# --- evaluate --------------------------------------------------------------------------------------------------


def test_evaluate_json_shape(tiny_multi_run, tiny_data) -> None:
    result = api.evaluate(tiny_data.multi_heldout, tiny_multi_run.run_dir, device="cpu", workers=0)
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {"model", "images", "iou", "miou"}
    assert data["model"] == str(tiny_multi_run.student_dir)
    assert data["images"] == 3
    assert list(data["iou"]) == ["background", "red", "green", "blue"]
    assert all(v is None or 0.0 <= v <= 1.0 for v in data["iou"].values())
    assert isinstance(data["miou"], float) and 0.0 <= data["miou"] <= 1.0
    fg = [v for k, v in data["iou"].items() if k != "background" and v is not None]
    assert data["miou"] == pytest.approx(sum(fg) / len(fg))


def test_evaluate_teacher_with_its_supports(tiny_binary_run, tiny_data) -> None:
    result = api.evaluate(tiny_data.binary_heldout, tiny_binary_run.run_dir, teacher=True, device="cpu", workers=0)
    assert result.model == str(tiny_binary_run.teacher_dir)
    assert result.images == 3 and 0.0 <= result.miou <= 1.0


def test_evaluate_on_the_support_folder_is_refused(tiny_binary_run, tiny_data) -> None:
    with pytest.raises(DataError) as info:
        api.evaluate(tiny_data.binary, tiny_binary_run.run_dir, device="cpu", workers=0)
    message = str(info.value)
    assert str(tiny_data.binary) in message
    assert "support" in message and "s0" in message


def test_evaluate_with_other_class_names_is_refused(tiny_binary_run, tiny_data) -> None:
    with pytest.raises(DataError) as info:
        api.evaluate(tiny_data.multi_heldout, tiny_binary_run.run_dir, device="cpu", workers=0)
    assert "classes" in str(info.value)


def test_inputs_that_would_write_the_same_mask_are_refused(tmp_path) -> None:
    from fsdistill.errors import DataError
    from fsdistill.infer.predictor import list_images

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / folder / "x.png")
    with pytest.raises(DataError, match="would both write masks/x.png"):
        list_images([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"])
    # Folders keep their own prefix, so equal names inside different folders are fine.
    assert len(list_images([tmp_path / "a", tmp_path / "b"])) == 2
    # A pool (suggest, distill --unlabeled) writes no masks: x.jpg beside x.png is two images.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a" / "x.jpg")
    with pytest.raises(DataError, match="would both write masks/x.png"):
        list_images([tmp_path / "a"])
    assert len(list_images([tmp_path / "a"], writes_masks=False)) == 2


def test_the_masks_of_a_labelled_folder_are_not_images_to_segment(tmp_path) -> None:
    """A held-out or pool folder in the support layout (images/ + masks/, DSB2018's per-id pairs, ISIC's
    *_Input/ + *_GroundTruth/): predict, suggest and distill --unlabeled read its images only (its masks were
    predicted, ranked and copied as images). A mask-named folder with no image folder beside it is images."""
    from fsdistill.infer.predictor import list_images

    files = ["images/a.png", "masks/a.png", "dsb/id1/images/b.png", "dsb/id1/masks/b_0.png", "ISIC_Task1_Input/c.png",
             "ISIC_Task1_GroundTruth/c_segmentation.png", "shots/labels/d.png",
             "voc/JPEGImages/e.png", "voc/SegmentationClass/e.png", "voc/SegmentationObject/e.png",
             # folders of photographs whose names a support layout also uses: kept
             "shop/originals/f.png", "shop/labels/f.png", "exp/user_inputs/g.png", "exp/targets/g.png"]  # fmt: skip
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    listed = sorted(rel.as_posix() for _, rel in list_images([tmp_path], writes_masks=False))
    assert listed == ["ISIC_Task1_Input/c.png", "dsb/id1/images/b.png", "exp/targets/g.png", "exp/user_inputs/g.png",
                      "images/a.png", "shop/labels/f.png", "shop/originals/f.png", "shots/labels/d.png",
                      "voc/JPEGImages/e.png"]  # fmt: skip


def test_an_input_given_as_dot_dot_is_prefixed_by_its_folder_name(tmp_path, monkeypatch) -> None:
    """``predict .. b`` from inside a/sub: the first input's masks go under masks/a/, never masks/../."""
    from fsdistill.infer.predictor import list_images

    for rel in ("a/top.png", "a/sub/s.png", "b/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    monkeypatch.chdir(tmp_path / "a" / "sub")
    listed = [rel.as_posix() for _, rel in list_images([Path(".."), tmp_path / "b"])]
    assert listed == ["a/sub/s.png", "a/top.png", "b/x.png"]


def test_a_file_in_the_way_of_the_masks_folder_is_one_sentence(shaken_multi_student, tmp_path) -> None:
    image = SynData.save(tmp_path / "in" / "a.png", SynData.image(30, 41, 0))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "masks").write_text("not a folder")
    with pytest.raises(DataError, match=r"Cannot write .*masks.*move what is in the way"):
        api.predict([image], tmp_path / "out", shaken_multi_student, device="cpu", workers=0)


def test_channel_argmax_equals_argmax_including_ties() -> None:
    from fsdistill.infer.postprocess import channel_argmax

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (5, 40, 30), generator=g).float()  # many ties: the first channel must win
    assert torch.equal(channel_argmax(scores), scores.argmax(dim=0).to(torch.uint8))
    scores = torch.randn(2, 17, 9, generator=g)
    assert torch.equal(channel_argmax(scores), scores.argmax(dim=0).to(torch.uint8))


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("band_pixels", [1 << 24, 300])  # 300: the banded grid_sample path, a few rows per band
def test_logits_to_mask_is_the_argmax_of_the_upsampled_logits(classes: int, band_pixels: int) -> None:
    """Binary models upsample fg − bg once; the mask must still be the argmax of both upsampled channels."""
    from fsdistill.infer.postprocess import logits_to_mask

    g = torch.Generator().manual_seed(classes)
    logits = torch.randn(classes, 12, 16, generator=g) * 3
    height, width = 37, 53
    expected = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0].argmax(0)
    got = torch.from_numpy(logits_to_mask(logits, height, width, band_pixels=band_pixels)).long()
    # Float rounding may flip a pixel whose two logits are equal to ~1e-6; none of these random maps has one.
    assert got.shape == (height, width)
    assert (got != expected).float().mean() < 1e-3
    if classes == 2:  # a tie goes to the background, as argmax's first-index rule
        assert logits_to_mask(torch.zeros(2, 4, 4), 8, 8).max() == 0


@pytest.mark.parametrize("classes", [2, 5, 40])  # 40: above the per-class comparison path, np.bincount
def test_mask_counts_are_pixels_per_class(classes: int) -> None:
    from fsdistill.infer.predictor import _mask_counts

    mask = np.random.default_rng(classes).integers(0, classes, (37, 53)).astype(np.uint8)
    mask[0, :3] = 255  # an id outside the classes (ignore) is not counted as any class
    h, w, counts = _mask_counts(mask, classes)
    assert (h, w) == (37, 53) and counts.shape == (classes,)
    assert counts.tolist() == [int((mask == c).sum()) for c in range(classes)]


def test_to_chw_tensor_is_the_channel_first_copy() -> None:
    from fsdistill.data.transforms import to_chw_tensor

    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3)).astype(np.uint8)
    chw = to_chw_tensor(image)
    assert chw.dtype == torch.uint8 and chw.is_contiguous()
    assert torch.equal(chw, torch.from_numpy(image).permute(2, 0, 1))


def test_normalize_matches_the_formula() -> None:
    from fsdistill.data.transforms import normalize

    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    formula = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(images, mean, std), formula, atol=1e-5)
    channels_last = images.permute(0, 2, 3, 1)
    assert torch.allclose(normalize(channels_last, mean, std), formula, atol=1e-5)


_FORK_AFTER_RESIZE = """
import sys
from pathlib import Path

import numpy as np
import torch

from fsdistill.data.transforms import resize_image
from fsdistill.infer.predictor import Runner


class Zeros(Runner):
    size, class_names, palette = 32, ["background", "object"], [(0, 0, 0), (255, 0, 0)]

    def logits(self, images):
        return torch.zeros(images.shape[0], 2, 8, 8)

    def identity(self):
        return {}


paths = sorted(Path(sys.argv[1]).glob("*.png"))
big = np.zeros((1024, 1024, 3), np.uint8)
for _ in range(6):
    resize_image(big, 384)  # OpenCV's thread pool now runs in this process
    assert len(list(Zeros().outputs(paths, batch_size=1, workers=1))) == len(paths)
print("ok")
"""


def test_decode_workers_do_not_deadlock_after_opencv_ran_in_this_process(tmp_path) -> None:
    """Regression: a worker setting its own OpenCV thread count hung ~half the forks once the parent had resized."""
    import subprocess
    import sys

    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_rgb(40, 48, i)).save(folder / f"{i}.png")
    script = tmp_path / "fork_after_resize.py"
    script.write_text(_FORK_AFTER_RESIZE)
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 0), (4, 1), (8, 2), (64, 2)])
def test_cpu_decode_workers_leave_small_machines_to_the_model(cores, expected) -> None:
    assert inference_api._decode_workers(False, cores) == expected
    assert inference_api._decode_workers(True, cores) == 2


def test_predict_decodes_at_reduced_scale_and_keeps_the_original_size(odd_images, monkeypatch) -> None:
    """The decode for the model asks for the model's input size (JPEGs then decode at 1/2-1/8 scale)."""
    from fsdistill.infer import predictor as predictor_module

    root, sizes = odd_images
    asked = []
    real = predictor_module.read_image_reduced

    def spy(path, min_side):
        asked.append(min_side)
        image, size = real(path, min_side)
        asked.append(image.shape[:2])
        return image, size

    monkeypatch.setattr(predictor_module, "read_image_reduced", spy)
    item = predictor_module._ImageDataset([root / "big_turned.jpg"], 64)[0]
    assert asked == [64, (113, 80)]  # 1/4 scale (rounded up) of the displayed 450×320 (h×w), both sides >= 64
    assert (item["height"], item["width"]) == (450, 320) and item["image"].shape == (3, 64, 64)


def test_cpu_student_runs_channels_last_with_the_same_logits(tiny_binary_run) -> None:
    """On the CPU the student runs channels-last (oneDNN's fast layout); its logits must not change."""
    from fsdistill.infer.predictor import Predictor
    from fsdistill.models.build import load_model

    reference = load_model(tiny_binary_run.run_dir)
    images = torch.randint(0, 256, (3, 3, reference.size, reference.size), dtype=torch.uint8)
    with torch.inference_mode():
        expected = reference.logits(images)
    runner = Predictor(load_model(tiny_binary_run.run_dir), torch.device("cpu"))
    assert runner.channels_last
    assert runner.loaded.model.decoder.mixer2[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(runner.logits(images), expected, rtol=1e-4, atol=1e-4)
    teacher = Predictor(load_model(tiny_binary_run.run_dir, kind="teacher"), torch.device("cpu"))
    assert not teacher.channels_last


def test_overlays_are_blended_in_bands_as_the_float_formula_did() -> None:
    """The overlay of a 12,000 × 9,000 image took 7 GB in float32 copies of the whole image; it is blended in
    integer bands now, to the same pixels (the mean of image and class colour, rounded half to even)."""
    from fsdistill.infer.predictor import _overlay

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1100, 37, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (1100, 37), dtype=np.uint8)
    palette = [(0, 0, 0), (255, 0, 0), (3, 77, 201), (128, 128, 129)]
    colours = np.array(palette, dtype=np.float32)[mask]
    float_formula = np.where(mask[..., None] > 0, image * np.float32(0.5) + colours * 0.5, image.astype(np.float32))
    expected = float_formula.round().astype(np.uint8)
    assert np.array_equal(_overlay(image, mask, palette), expected)
    assert np.array_equal(_overlay(image, mask, palette, rows=7), expected)


def test_images_it_cannot_use_whole_are_named(tiny_binary_run, tmp_path, caplog) -> None:
    """A GIF in the folder was passed over without a word ("1 written, 0 failed"), and a 2-page TIFF was predicted
    from its first page alone, silently."""
    folder = tmp_path / "in"
    SynData.save(folder / "a.png", SynData.image(20, 24, 0))
    (folder / "anim.gif").write_bytes(b"GIF89a")
    pages = [Image.fromarray(SynData.image(20, 24, k)) for k in range(2)]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    with caplog.at_level("WARNING"):
        result = api.predict(folder, tmp_path / "out", model=tiny_binary_run.run_dir, device="cpu", workers=0)
    assert result.written == 2
    assert "1 image(s) in " in caplog.text and "(.gif; e.g. anim.gif)" in caplog.text
    assert "stack.tif has 2 pages or frames; only the first is read" in caplog.text


def test_a_corrupt_exif_block_leaves_no_library_line(tiny_binary_run, tmp_path, recwarn) -> None:
    """Pillow's "Corrupt EXIF data" UserWarning reached stderr as a raw library line (four per support in
    distill, once per image in predict, also under --quiet); commands keep it off (a Python caller sees it)."""
    from typer.testing import CliRunner

    from fsdistill.cli import app

    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"
    (tmp_path / "in").mkdir()
    Image.fromarray(SynData.image(20, 24, 0)).save(tmp_path / "in" / "x.jpg", exif=exif)
    args = ["predict", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--model", str(tiny_binary_run.run_dir)]
    assert CliRunner().invoke(app, [*args, "--device", "cpu", "--workers", "0"]).exit_code == 0
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


def test_an_output_folder_removed_during_the_run_is_said_and_resumed(tiny_binary_run, tmp_path, monkeypatch) -> None:
    """-o removed while predict ran: "N written", exit 0, a table listing masks that were gone, and a rerun refused
    ("masks/ that fsdistill predict did not write")."""
    import shutil

    from fsdistill.infer import predictor as predictor_module

    folder = tmp_path / "in"
    for k in range(3):
        SynData.save(folder / f"{k}.png", SynData.image(20, 24, k))
    out = tmp_path / "out"
    real_write = predictor_module.write_mask
    calls = []

    def folder_removed_after_the_first(storage, key, mask, palette, text=None):
        calls.append(key)
        if len(calls) == 2:
            shutil.rmtree(out)
        real_write(storage, key, mask, palette, text)

    monkeypatch.setattr(predictor_module, "write_mask", folder_removed_after_the_first)
    with pytest.raises(DataError, match=r"was removed or emptied while predict wrote into it \(1 of the masks"):
        api.predict(folder, out, model=tiny_binary_run.run_dir, device="cpu", workers=0)
    monkeypatch.undo()
    again = api.predict(folder, out, model=tiny_binary_run.run_dir, device="cpu", workers=0)
    assert (again.written, again.skipped) == (1, 2)
    assert len((out / "predictions.csv").read_text().splitlines()) == 1 + 3 * 2


def test_a_pipe_given_as_an_input_is_named_as_one(tiny_binary_run, tmp_path) -> None:
    """predict <(cat x.png) or a FIFO given directly was "does not exist" (it is there)."""
    import os

    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"f\.png is not a regular file \(a pipe or a device\); pass image files"):
        api.predict(fifo, tmp_path / "out", model=tiny_binary_run.run_dir, device="cpu")
    with pytest.raises(DataError, match="does not exist"):
        api.predict(tmp_path / "gone.png", tmp_path / "out", model=tiny_binary_run.run_dir, device="cpu")
