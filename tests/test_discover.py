"""Support-folder discovery: every layout detected and decoded, every bad folder a DataError naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fsdistill.data.coco import encode_rle
from fsdistill.data.discover import discover, read_class_names
from fsdistill.errors import DataError

from helpers import SynData

# ------------------------------------------------------------------------------------------------ paired


def test_paired_binary_0_255(syn_binary) -> None:
    root, discs = syn_binary
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("paired", "binary")
    assert idx.class_names == ["background", "foreground"]
    assert idx.palette[:2] == [(0, 0, 0), (128, 0, 0)]
    assert [s.key for s in idx.samples] == ["s0", "s1", "s2"] and len(idx) == 3
    assert not idx.orphan_images and not idx.orphan_masks
    for i, d in enumerate(discs):
        img, m = idx.load_pair(i)
        assert img.shape == (32, 40, 3) and img.dtype == np.uint8
        assert m.dtype == np.uint8 and (m == d.astype(np.uint8)).all()


def test_paired_binary_0_1_with_suffixes_and_orphans(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "sup"
    discs = syn_data.paired(root, n=2, img_dir="img", mask_dir="gt", img_ext=".jpg", suffix="_mask", fg=1)
    syn_data.save(root / "img" / "lonely.jpg", syn_data.image(32, 40))
    syn_data.save(root / "gt" / "ghost_mask.png", np.zeros((32, 40), np.uint8))
    (root / "gt" / "notes.txt").write_text("not a mask")
    syn_data.save(root / "img" / "._s0.jpg", syn_data.image(4, 4))  # macOS resource fork: ignored
    idx = discover(root)
    assert (idx.layout, idx.mask_kind, idx.binary_threshold) == ("paired", "binary", 1)
    assert [s.key for s in idx.samples] == ["s0", "s1"]
    assert [p.name for p in idx.orphan_images] == ["lonely.jpg"]
    assert [p.name for p in idx.orphan_masks] == ["ghost_mask.png"]
    assert any("have no mask" in w for w in idx.warnings)
    assert (idx.load_mask(1) == discs[1]).all()


def test_masks_named_in_another_case_or_with_a_doubled_extension_pair(tmp_path: Path, syn_data) -> None:
    """Windows and macOS ignore case, and some tools write "x.png.png": such masks were orphans."""
    root = tmp_path / "sup"
    discs = syn_data.paired(root, n=3)
    (root / "masks" / "s0.png").rename(root / "masks" / "S0.PNG")
    (root / "masks" / "s1.png").rename(root / "masks" / "s1.png.png")
    idx = discover(root)
    assert [s.key for s in idx.samples] == ["s0", "s1", "s2"] and not idx.orphan_masks
    assert (idx.load_mask(0) > 0).sum() == discs[0].sum() and (idx.load_mask(1) > 0).sum() == discs[1].sum()
    # Two images differing in case only: a mask of a third spelling is not guessed.
    for name in ("Ab.png", "aB.png"):
        syn_data.save(root / "images" / name, syn_data.image(32, 40))
    syn_data.save(root / "masks" / "AB.png", discs[2].astype(np.uint8) * 255)
    assert [p.name for p in discover(root).orphan_masks] == ["AB.png"]


def test_paired_binary_mixing_0_1_and_0_255_files(tmp_path: Path, syn_data) -> None:
    """A folder gathered from two tools, one writing 0/1 masks and one 0/255: read as index masks, the 0/255
    objects became ignore (255) and foreground showed in the 0/1 files only, with exit 0. Each file is binary in
    its own encoding."""
    root = tmp_path / "mixed"
    discs = syn_data.paired(root, n=4, fg=255)
    for i in (0, 1):  # two of the four from the other tool
        syn_data.save(root / "masks" / f"s{i}.png", discs[i].astype(np.uint8))
    index = discover(root)
    assert (index.mask_kind, index.class_names) == ("binary", ["background", "foreground"])
    for i, disc in enumerate(discs):
        assert np.array_equal(index.load_mask(i), disc.astype(np.uint8)), i


def test_an_unused_image_is_named_by_its_path_in_the_folder(tmp_path: Path, syn_data) -> None:
    """The warning named images/sub/s0.png "s0.png", the name of an image that is used."""
    root = tmp_path / "sup"
    syn_data.paired(root, n=2)
    syn_data.save(root / "images" / "sub" / "s0.png", syn_data.image(32, 40))
    warning = next(w for w in discover(root).warnings if "have no mask" in w)
    assert "(e.g. images/sub/s0.png)" in warning


def test_nested_image_folders_keep_relative_keys(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "sup"
    for sub in ("a", "b"):
        syn_data.save(root / "images" / sub / "x.png", syn_data.image(8, 8))
        syn_data.save(root / "masks" / sub / "x.png", np.full((8, 8), 255, np.uint8))
    idx = discover(root)
    assert [s.key for s in idx.samples] == ["a/x", "b/x"]


def test_kvasir_one_level_down_jpeg_masks(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "kvasir"
    discs = syn_data.paired(root / "Kvasir-SEG", n=2, img_ext=".jpg", mask_ext=".jpg", size=(48, 48))
    (root / "Kvasir-SEG" / "kavsir_bboxes.json").write_text(json.dumps({"s0": {"height": 48, "bbox": []}}))
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("paired", "jpeg-binary")
    assert idx.data_root == root / "Kvasir-SEG"
    assert any("JPEG" in w for w in idx.warnings) and any("subfolder Kvasir-SEG" in w for w in idx.warnings)
    m = idx.load_mask(0)
    assert set(np.unique(m)) <= {0, 1} and (m.astype(bool) ^ discs[0]).sum() <= 6


def test_isic_folders_pick_task1_ground_truth(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "isic"
    syn_data.paired(root, n=2, img_dir="ISIC2018_Task1-2_Training_Input", img_ext=".jpg",
                    mask_dir="ISIC2018_Task1_Training_GroundTruth", suffix="_segmentation")  # fmt: skip
    syn_data.paired(root, n=2, mask_dir="ISIC2018_Task2_Training_GroundTruth_v3", suffix="_attribute_globules",
                    img_dir="ISIC2018_Task1-2_Training_Input", img_ext=".jpg")  # fmt: skip
    idx = discover(root)
    assert idx.layout == "paired" and len(idx) == 2
    assert all(s.mask_paths[0].parent.name == "ISIC2018_Task1_Training_GroundTruth" for s in idx.samples)


def test_voc_palette_index_masks_with_classes_txt(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "voc"
    masks = []
    for i in range(2):
        m = np.zeros((20, 24), np.uint8)
        m[2:8, 2:8] = 1
        m[10:16, 10:20] = 2 + i  # ids 2 and 3
        m[8, :] = 255  # VOC ignore border
        masks.append(m)
        syn_data.save(root / "JPEGImages" / f"2007_{i}.jpg", syn_data.image(20, 24, i))
        syn_data.save_palette(root / "SegmentationClass" / f"2007_{i}.png", m)
    (root / "classes.txt").write_text("aeroplane\nbicycle\nbird\n\n")
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("paired", "index")
    assert idx.class_names == ["background", "aeroplane", "bicycle", "bird"]
    assert idx.names_source == "classes.txt"
    assert (idx.load_mask(1) == masks[1]).all()

    (root / "classes.txt").unlink()
    idx = discover(root)
    assert idx.class_names == ["background", "class_1", "class_2", "class_3"]  # max id 3 → 4 classes
    assert idx.names_source == "mask values"

    (root / "classes.txt").write_text("background\nplane\nbike\n")  # id 3 has no name
    idx = discover(root)
    assert idx.load_mask(0).max() == 255
    with pytest.raises(DataError, match=r"2007_1\.png has class id 3 but classes\.txt lists 3 classes"):
        idx.load_mask(1)


def test_a_names_file_the_masks_cannot_tell_apart_is_refused(tmp_path: Path, syn_data) -> None:
    """16-bit label masks (read as instances of one class) or one-colour masks beside a classes.txt of 3 classes:
    the names file was dropped and a binary model trained, with exit 0."""
    wide, colour = tmp_path / "wide", tmp_path / "colour"
    for i in range(2):
        labels = np.zeros((20, 24), np.uint16)
        labels[2:8, 2:8], labels[10:16, 10:20] = 300, 600
        syn_data.save(wide / "images" / f"s{i}.png", syn_data.image(20, 24, i))
        (wide / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(wide / "masks" / f"s{i}.png")
        syn_data.save(colour / "images" / f"s{i}.png", syn_data.image(20, 24, i))
        rgb = np.zeros((20, 24, 3), np.uint8)
        rgb[2:8, 2:8] = (200, 30, 40)
        (colour / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(colour / "masks" / f"s{i}.png")
    for root in (wide, colour):
        (root / "classes.txt").write_text("background\ngrey_matter\nwhite_matter\n")
    with pytest.raises(DataError, match=r"16-bit values up to 600 .*classes\.txt lists 3 classes; save the masks"):
        discover(wide)
    with pytest.raises(DataError, match=r"one colour besides black but .*classes\.txt lists 3 classes"):
        discover(colour)
    for root in (wide, colour):  # two names fit: the one class is named
        (root / "classes.txt").write_text("background\nlesion\n")
        assert discover(root).class_names == ["background", "lesion"]


def test_grey_levels_with_white_are_classes(tmp_path: Path, syn_data) -> None:
    """RGB masks coloured (128, 128, 128) and white collapse to grey 128 and 255: white was read as VOC's ignore and
    its class dropped (exit 0). Grey levels (no value below 64 besides 0) keep 255 as a class; ids 1, 2 with a
    large 255 region (Cityscapes' void) still read 255 as ignore."""
    levels, void = tmp_path / "levels", tmp_path / "void"
    for root in (levels, void):
        (root / "masks").mkdir(parents=True)
    for i in range(2):
        rgb = np.zeros((20, 24, 3), np.uint8)
        rgb[1:11, 1:13], rgb[13:18, 15:21] = 128, 255
        syn_data.save(levels / "images" / f"s{i}.png", syn_data.image(20, 24, i))
        Image.fromarray(rgb).save(levels / "masks" / f"s{i}.png")
        ids = np.zeros((20, 24), np.uint8)
        ids[2:8, 2:10], ids[10:18, 12:22], ids[:, :2] = 1, 2, 255
        syn_data.save(void / "images" / f"s{i}.png", syn_data.image(20, 24, i))
        Image.fromarray(ids).save(void / "masks" / f"s{i}.png")
    index = discover(levels)
    assert index.class_names == ["background", "class_128", "class_255"]
    assert np.array_equal(np.unique(index.load_mask(0)), [0, 1, 2])
    assert any("255 is read as a class" in w for w in index.warnings)
    index = discover(void)
    assert index.class_names == ["background", "class_1", "class_2"] and index.load_mask(0)[0, 0] == 255


def test_cvat_colour_masks_with_labelmap(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "cvat"
    (root / "labelmap.txt").parent.mkdir(parents=True)
    (root / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nroad:51,221,255::\n"
    )
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[:5] = (51, 221, 255)
    rgb[6:8, 2:4] = (250, 50, 83)
    syn_data.save(root / "JPEGImages" / "frame_000.jpg", syn_data.image(10, 12))
    syn_data.save(root / "SegmentationClass" / "frame_000.png", rgb)
    syn_data.save(root / "SegmentationObject" / "frame_000.png", rgb)  # instance colours: not a class mask
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("cvat", "rgb")
    assert idx.class_names == ["background", "car", "road"]
    assert idx.palette == [(0, 0, 0), (250, 50, 83), (51, 221, 255)]
    m = idx.load_mask(0)
    assert (m[:5] == 2).all() and (m[6:8, 2:4] == 1).all() and m[9, 11] == 0

    # Not a mixture of label-map colours ((1, 2, 3), used here before, is: a near-black edge blend, now mapped to
    # black with a warning; see tests/test_first_hour.py).
    rgb[9, 11] = (10, 200, 10)
    syn_data.save(root / "SegmentationClass" / "frame_000.png", rgb)
    with pytest.raises(DataError, match=r"frame_000\.png has colour \(10, 200, 10\)"):
        discover(root).load_mask(0)


def test_labelmap_with_grey_index_masks(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "lm"
    m = np.zeros((6, 6), np.uint8)
    m[:2], m[4:] = 1, 2
    syn_data.save(root / "images" / "a.png", syn_data.image(6, 6))
    syn_data.save(root / "masks" / "a.png", m)
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:250,50,83::\nroad:0,255,0::\n")
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("paired", "index")
    assert idx.class_names == ["background", "car", "road"] and idx.palette[1] == (250, 50, 83)
    assert (idx.load_mask(0) == m).all()


def test_binary_with_ignore_border(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "ign"
    m = np.zeros((6, 6), np.uint8)
    m[2:4, 2:4], m[0] = 1, 255
    syn_data.save(root / "images" / "a.png", syn_data.image(6, 6))
    syn_data.save(root / "masks" / "a.png", m)
    idx = discover(root)
    assert idx.mask_kind == "index" and idx.class_names == ["background", "foreground"]
    assert (idx.load_mask(0) == m).all()  # 255 stays ignore instead of becoming foreground


def test_exif_rotated_image_with_mask(tmp_path: Path, syn_data) -> None:

    root = tmp_path / "exif"
    exif = Image.Exif()
    exif[0x0112] = 8  # stored 30×20 (w×h), displayed 20×30
    (root / "images").mkdir(parents=True)
    Image.fromarray(syn_data.image(20, 30)).save(root / "images" / "a.jpg", exif=exif)
    syn_data.save(root / "masks" / "a.png", np.full((30, 20), 255, np.uint8))  # drawn on the displayed image
    img, m = discover(root).load_pair(0)
    assert img.shape == (30, 20, 3) and m.shape == (30, 20)


def test_too_many_classes(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "many"
    syn_data.paired(root, n=1)
    (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(300)))
    with pytest.raises(DataError, match="defines 300 classes but masks hold at most 254"):
        discover(root)


def test_colour_masks_without_labelmap(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "col"
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[:2] = (0, 0, 200)
    rgb[4:] = (200, 0, 0)
    rgb[3, 3] = (224, 224, 192)
    syn_data.save(root / "images" / "a.png", syn_data.image(6, 6))
    syn_data.save(root / "masks" / "a.png", rgb)
    idx = discover(root)
    assert idx.mask_kind == "rgb" and idx.class_names == ["background", "class_1", "class_2"]
    assert idx.palette == [(0, 0, 0), (0, 0, 200), (200, 0, 0)]
    m = idx.load_mask(0)
    assert (m[:2] == 1).all() and (m[4:] == 2).all() and m[3, 3] == 255


def test_antialiased_binary_masks(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "aa"
    soft = syn_data.disc(30, 30, 15, 15, 9).astype(np.uint8) * 255
    soft[6, 6:14] = np.arange(20, 180, 20)  # a fringe of greys, as left by resizing
    syn_data.save(root / "images" / "a.png", syn_data.image(30, 30))
    syn_data.save(root / "masks" / "a.png", soft.astype(np.uint8))
    idx = discover(root)
    assert (idx.mask_kind, idx.binary_threshold) == ("binary", 128)
    assert any("grey edge" in w for w in idx.warnings)


def test_binary_masks_halved_by_area_averaging_stay_binary(tmp_path: Path, syn_data) -> None:
    """A 2× area-averaging resize leaves only the greys 64 / 128 / 191, on the discs' rims: binary, not 3 classes."""
    root = tmp_path / "area"
    for i in range(2):
        big = syn_data.disc(64, 64, 30 + i, 33, 20 + 3 * i).astype(np.float32) * 255
        small = big.reshape(32, 2, 32, 2).mean(axis=(1, 3))
        small = np.round(np.where(np.isin(small, (63.75, 127.5, 191.25)), small + 0.01, small)).astype(np.uint8)
        syn_data.save(root / "images" / f"{i}.png", syn_data.image(32, 32, i))
        syn_data.save(root / "masks" / f"{i}.png", small)
    idx = discover(root)
    assert set(np.unique(idx.load_mask(0))) == {0, 1}
    assert (idx.mask_kind, idx.class_names, idx.binary_threshold) == ("binary", ["background", "foreground"], 128)


def test_index_masks_with_large_ignore_areas_stay_index_masks(tmp_path: Path, syn_data) -> None:
    """Scribbled classes 1..5 in a mask that is mostly 255 (unlabelled) are class ids, not an anti-aliased fringe."""
    root = tmp_path / "scribbles"
    m = np.full((64, 64), 255, np.uint8)
    m[:8] = 0
    for c in range(1, 6):
        m[10 + 8 * c : 14 + 8 * c, 5:13] = c
    syn_data.save(root / "images" / "a.png", syn_data.image(64, 64))
    syn_data.save(root / "masks" / "a.png", m)
    idx = discover(root)
    assert idx.mask_kind == "index" and len(idx.class_names) == 6
    assert (idx.load_mask(0) == m).all()


@pytest.mark.parametrize("palette_files", ["all", "some"])
def test_palette_masks_whose_palettes_disagree_are_read_by_colour(tmp_path: Path, syn_data, palette_files) -> None:
    """A PNG optimiser orders each file's palette its own way (red is index 1 here, 2 there), or leaves some files
    RGB: the index means nothing across files, so the colours are the classes, the same in every mask."""
    red, green = (255, 0, 0), (0, 255, 0)
    root = tmp_path / "optimised"
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[2:7, 2:7], rgb[9:14, 9:14] = red, green
    for i in range(4):
        syn_data.save(root / "images" / f"{i}.png", syn_data.image(16, 16, i))
        if palette_files == "some" and i < 2:
            syn_data.save(root / "masks" / f"{i}.png", rgb)
            continue
        order = [(0, 0, 0), red, green] if i % 2 else [(0, 0, 0), green, red]
        index = np.zeros((16, 16), np.uint8)
        for k, colour in enumerate(order):
            index[(rgb == colour).all(-1)] = k
        (root / "masks").mkdir(exist_ok=True)
        mask = Image.fromarray(index, "P")
        mask.putpalette([v for colour in order for v in colour])
        mask.save(root / "masks" / f"{i}.png")
    idx = discover(root)
    assert idx.mask_kind == "rgb" and len(idx.class_names) == 3
    masks = [idx.load_mask(i) for i in range(4)]
    assert all((m == masks[0]).all() for m in masks) and masks[0][4, 4] != masks[0][11, 11] != 0


def test_16bit_instance_label_mask(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "inst"
    lab = np.zeros((12, 12), np.uint16)
    lab[1:4, 1:4], lab[6:9, 6:9] = 300, 1201
    syn_data.save(root / "images" / "a.png", syn_data.image(12, 12))
    syn_data.save(root / "masks" / "a.png", lab)
    idx = discover(root)
    assert idx.mask_kind == "instances" and idx.class_names == ["background", "foreground"]
    assert (idx.load_mask(0) == (lab > 0)).all()


@pytest.mark.parametrize("form", ["yaml-dict", "yaml-list", "json-list"])
def test_names_from_yaml_or_json(tmp_path: Path, syn_data, form: str) -> None:
    root = tmp_path / "y"
    syn_data.paired(root, n=1, fg=1)
    if form == "yaml-dict":
        (root / "data.yaml").write_text(yaml.safe_dump({"names": {0: "background", 1: "polyp"}}))
    elif form == "yaml-list":
        (root / "data.yml").write_text("names: [polyp]\n")
    else:
        (root / "meta.json").write_text(json.dumps({"names": ["background", "polyp"]}))
    idx = discover(root)
    assert idx.class_names == ["background", "polyp"] and idx.mask_kind == "binary"


def test_read_class_names_rules(tmp_path: Path) -> None:
    p = tmp_path / "names.yaml"
    p.write_text("names: {1: polyp, 3: tumour}\n")
    assert read_class_names(p) == ["background", "polyp", "class_2", "tumour"]
    t = tmp_path / "classes.txt"
    t.write_text("cat\nbackground\n")
    with pytest.raises(DataError, match=r"classes\.txt lists background at position 1"):
        read_class_names(t)
    t.write_text("cat\ncat\n")
    with pytest.raises(DataError, match="twice"):
        read_class_names(t)
    # Whole lines starting with "#" are comments; a "#" inside a name is part of it ("cell #1", "cell #2").
    t.write_text("# atlas labels\ncell #1\ncell #2\n")
    assert read_class_names(t) == ["background", "cell #1", "cell #2"]
    # A word that means background in another language may be a class ("fondo": a seabed): it stays one.
    t.write_text("Fondo\nPez\n")
    assert read_class_names(t) == ["background", "Fondo", "Pez"]


def test_names_file_in_another_case_is_found(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "sup"
    syn_data.paired(root, n=2)
    (root / "Classes.TXT").write_text("polyp\n")
    assert discover(root).class_names == ["background", "polyp"]


# --------------------------------------------------------------------------------------------- other layouts


def test_coco_folder(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "coco"
    h, w = 16, 20
    blob = np.zeros((h, w), bool)
    blob[8:14, 10:18] = True
    for name in ("a.jpg", "b.jpg", "stray.jpg"):
        syn_data.save(root / "images" / name, syn_data.image(h, w))
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": w, "height": h},
            {"id": 2, "file_name": "images/b.jpg", "width": w, "height": h},
            {"id": 3, "file_name": "gone.jpg", "width": w, "height": h},
        ],
        "categories": [{"id": 10, "name": "dog"}, {"id": 4, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 4, "iscrowd": 0, "segmentation": [[1, 1, 6, 1, 6, 5, 1, 5]]},
            {"id": 2, "image_id": 2, "category_id": 10, "iscrowd": 0, "segmentation": encode_rle(blob)},
            {"id": 3, "image_id": 2, "category_id": 4, "iscrowd": 0,
             "segmentation": encode_rle(np.eye(h, w, dtype=bool), compressed=False)},
        ],
    }  # fmt: skip
    (root / "instances_default.json").write_text(json.dumps(data))
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("coco", "coco")
    assert idx.class_names == ["background", "dog", "cat"]
    assert [s.key for s in idx.samples] == ["a", "images/b"]
    assert [p.name for p in idx.orphan_images] == ["stray.jpg"]
    assert any("gone.jpg" in w for w in idx.warnings)
    a = idx.load_mask(0)
    assert (a[1:5, 1:6] == 2).all() and a.sum() == 2 * 4 * 5  # corners (1, 1)-(6, 5): 5 columns, 4 rows
    b = idx.load_mask(1)
    assert (b[blob & ~np.eye(h, w, dtype=bool)] == 1).all() and (b[np.eye(h, w, dtype=bool)] == 2).all()


def test_coco_file_name_is_not_matched_by_its_base_name_in_another_split(tmp_path: Path, syn_data) -> None:
    """val.json names val/0001.jpg; only train/0001.jpg is here: a missing image, not the train split's."""
    root = tmp_path / "coco_split"
    for name in ("0001.jpg", "0002.jpg"):
        syn_data.save(root / "train" / name, syn_data.image(10, 12))
    syn_data.save(root / "images" / "0002.jpg", syn_data.image(10, 12))
    data = {
        "images": [{"id": k, "file_name": f"val/000{k}.jpg", "width": 12, "height": 10} for k in (1, 2)],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": k, "image_id": k, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]} for k in (1, 2)
        ],
    }
    (root / "val.json").write_text(json.dumps(data))
    idx = discover(root)
    # The usual image folder (images/) still matches by base name; a sibling split never does.
    assert [s.image_path.relative_to(root).as_posix() for s in idx.samples] == ["images/0002.jpg"]
    assert any("val/0001.jpg" in w for w in idx.warnings)


def test_coco_file_names_from_windows_or_another_machine_pair_by_name(tmp_path: Path, syn_data) -> None:
    """Backslash paths, a drive, or an absolute path of the machine that exported the JSON: each image is found by
    its path or file name in the usual image folders (none was found; a mix trained on part of the labels)."""
    root = tmp_path / "coco_win"
    decoy = tmp_path / "decoy" / "e.png"  # what C:\<tmp>\decoy\e.png would be without its drive: never read
    syn_data.save(decoy, syn_data.image(10, 12))
    names = [
        "C:\\Users\\bob\\data\\images\\a.png",
        "images\\b.png",
        "/home/alice/proj/c.png",
        "d.png",
        "C:" + str(decoy).replace("/", "\\"),
        "D:\\proj\\images\\train\\f.png",  # found by its tail images/train/f.png
    ]
    for name in "abcde":
        syn_data.save(root / "images" / f"{name}.png", syn_data.image(10, 12))
    syn_data.save(root / "images" / "train" / "f.png", syn_data.image(10, 12))
    data = {
        "images": [{"id": k, "file_name": n, "width": 12, "height": 10} for k, n in enumerate(names)],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": k, "image_id": k, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]} for k in range(6)
        ],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    idx = discover(root)
    found = sorted(s.image_path.relative_to(root).as_posix() for s in idx.samples)
    assert found == [f"images/{n}.png" for n in "abcde"] + ["images/train/f.png"]
    assert not idx.orphan_images and not idx.warnings


def test_only_crowd_annotations_say_so(tmp_path: Path, syn_data) -> None:
    """Every region exported as crowd (iscrowd 1) is ignored: the message named mask values and names files."""
    from fsdistill.data.check import check_support

    root = tmp_path / "crowd"
    for k in range(2):
        syn_data.save(root / "images" / f"{k}.png", syn_data.image(10, 12))
    data = {
        "images": [{"id": k, "file_name": f"{k}.png", "width": 12, "height": 10} for k in range(2)],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {"id": k, "image_id": k, "category_id": 1, "iscrowd": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]}
            for k in range(2)
        ],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"all 2 annotations of annotations\.json are crowd regions \(iscrowd 1\)"):
        check_support(root)


def test_coco_size_disagrees_with_image(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "coco_size"
    syn_data.save(root / "a.png", syn_data.image(10, 12))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 99, "height": 10}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 3, 0, 3, 3]]}],
    }
    (root / "ann.json").write_text(json.dumps(data))
    idx = discover(root)
    with pytest.raises(DataError, match=r"COCO file .*ann\.json gives a\.png the size 99×10 but the image is 12×10"):
        idx.load_mask(0)


def test_dsb2018_instances(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "stage1_train"
    unions = {}
    for k, cid in enumerate(["0a7d30b2", "1b2c3d4e"]):
        rgba = np.dstack([syn_data.image(24, 24, k), np.full((24, 24), 255, np.uint8)])
        syn_data.save(root / cid / "images" / f"{cid}.png", rgba)
        u = np.zeros((24, 24), bool)
        for j in range(3):
            d = syn_data.disc(24, 24, 5 + 6 * j, 6 + 5 * k, 3)
            syn_data.save(root / cid / "masks" / f"inst{j}.png", d.astype(np.uint8) * 255)
            u |= d
        unions[cid] = u
    syn_data.save(root / "ffff" / "images" / "ffff.png", syn_data.image(24, 24))  # no masks/
    idx = discover(tmp_path)  # one level above stage1_train
    assert (idx.layout, idx.mask_kind) == ("dsb2018", "instances")
    assert [s.key for s in idx.samples] == ["0a7d30b2", "1b2c3d4e"]
    assert [p.name for p in idx.orphan_images] == ["ffff.png"]
    img, m = idx.load_pair(1)
    assert img.shape == (24, 24, 3) and (m == unions["1b2c3d4e"]).all()


def test_class_folders(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "fss"
    for cls in ("zebra", "apple"):
        for i in range(2):
            syn_data.save(root / cls / f"{i + 1}.jpg", syn_data.image(16, 16, i))
            syn_data.save(root / cls / f"{i + 1}.png", syn_data.disc(16, 16, 8, 8, 4).astype(np.uint8) * 255)
    syn_data.save(root / "apple" / "3.jpg", syn_data.image(16, 16))
    idx = discover(root)
    assert (idx.layout, idx.mask_kind) == ("class-folders", "binary")
    assert idx.class_names == ["background", "apple", "zebra"]
    assert [s.key for s in idx.samples] == ["apple/1", "apple/2", "zebra/1", "zebra/2"]
    assert [p.name for p in idx.orphan_images] == ["3.jpg"]
    assert idx.load_mask(0).max() == 1 and idx.load_mask(3).max() == 2
    assert set(np.unique(idx.load_mask(2))) == {0, 2}


def test_class_folders_of_0_1_and_0_255_masks(tmp_path: Path, syn_data) -> None:
    """One class's masks 0/255, another's 0/1 (gathered from two tools): each file is read by its own encoding."""
    root = tmp_path / "mixed"
    disc = syn_data.disc(16, 16, 8, 8, 4).astype(np.uint8)
    for cls, fg in (("cat", 255), ("dog", 1)):
        for i in range(2):
            syn_data.save(root / cls / f"{i}.jpg", syn_data.image(16, 16, i))
            syn_data.save(root / cls / f"{i}.png", disc * fg)
    idx = discover(root)
    assert idx.class_names == ["background", "cat", "dog"]
    assert [int(idx.load_mask(k).sum()) for k in range(4)] == [disc.sum()] * 2 + [2 * disc.sum()] * 2


def test_flat_pairs_with_mask_suffix(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "flat"
    for i in range(2):
        syn_data.save(root / f"img{i}.png", syn_data.image(10, 10))
        syn_data.save(root / f"img{i}_mask.png", np.eye(10, dtype=np.uint8) * 255)
    idx = discover(root)
    assert idx.layout == "paired" and [s.key for s in idx.samples] == ["img0", "img1"]
    assert (idx.load_mask(0) == np.eye(10)).all()


# ------------------------------------------------------------------------------------------ fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "fp"
    syn_data.paired(root, n=2)
    fp = discover(root).fingerprint()
    assert fp == discover(root).fingerprint() and len(fp) == 64
    moved = tmp_path / "moved"
    os.rename(root, moved)
    assert discover(moved).fingerprint() == fp  # content, not location
    m = np.zeros((32, 40), np.uint8)
    m[0, 0] = 255
    syn_data.save(moved / "masks" / "s1.png", m)
    assert discover(moved).fingerprint() != fp


# ------------------------------------------------------------------------------------------------ errors


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"Support folder .*nope does not exist"):
        discover(tmp_path / "nope")


def test_file_instead_of_folder(tmp_path: Path) -> None:
    f = tmp_path / "x.png"
    f.write_bytes(b"")
    with pytest.raises(DataError, match=r"x\.png is a file, not a folder"):
        discover(f)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"\0")
    with pytest.raises(DataError, match=r"empty is empty"):
        discover(tmp_path / "empty")


def test_no_pairs(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "junk"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.txt").write_text("hi")
    syn_data.save(root / "photo.jpg", syn_data.image(8, 8))
    with pytest.raises(DataError, match=r"No image/mask pairs found in .*junk; looked for images/\+masks/"):
        discover(root)


def test_names_do_not_match(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "mismatch"
    syn_data.save(root / "images" / "a.png", syn_data.image(8, 8))
    syn_data.save(root / "masks" / "zzz.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"no file names match \(e\.g\. image a\.png, mask zzz\.png\)"):
        discover(root)


def test_several_candidate_subfolders(tmp_path: Path, syn_data) -> None:
    syn_data.paired(tmp_path / "d" / "train", n=1)
    syn_data.paired(tmp_path / "d" / "val", n=1)
    with pytest.raises(DataError, match=r"several subfolders .*\(train, val\)"):
        discover(tmp_path / "d")


def test_duplicate_image_names(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "dup"
    syn_data.paired(root, n=1)
    syn_data.save(root / "images" / "s0.jpg", syn_data.image(32, 40))
    with pytest.raises(DataError, match=r"s0\.jpg and .*s0\.png|s0\.png and .*s0\.jpg"):
        discover(root)


def test_mask_size_mismatch(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "size"
    syn_data.paired(root, n=2)
    syn_data.save(root / "masks" / "s1.png", np.zeros((10, 10), np.uint8))
    idx = discover(root)
    with pytest.raises(DataError, match=r"Mask .*s1\.png is 10×10 but its image .*s1\.png is 40×32"):
        idx.load_mask(1)


def test_unreadable_image_in_support(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "bad"
    syn_data.paired(root, n=2)
    (root / "images" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    idx = discover(root)
    with pytest.raises(DataError, match=r"Cannot read image .*s1\.png"):
        idx.load_pair(1)


# ----------------------------------------------------------------------------------------- real examples


@pytest.mark.examples
@pytest.mark.parametrize("name", ["nuclei", "brain"])
def test_examples_support_folders(examples_root: Path, name: str) -> None:
    root = examples_root / name / "support"
    idx = discover(root)
    assert idx.layout == "paired" and len(idx) >= 2
    assert idx.class_names[0] == "background" and len(idx.class_names) == (2 if name == "nuclei" else 3)
    img, m = idx.load_pair(0)
    assert img.shape[:2] == m.shape and img.dtype == np.uint8
    assert int(m[m != 255].max(initial=0)) < len(idx.class_names)


def test_mask_files_finds_the_masks_of_labelled_folders_and_spares_photographs(tmp_path) -> None:
    """A pool given as a labelled folder: its masks are no photographs to label. Splits (train/ + val/) and deeper
    folders were not looked into, and names alone (inputs/ + targets/, x_seg.jpg) took photographs for masks."""
    from fsdistill.data.layouts import mask_files

    def photo(path: Path, seed: int) -> Path:  # a photograph's many colours
        return SynData.save(path, np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8))

    def mask(path: Path) -> Path:
        return SynData.save(path, (SynData.disc(24, 32, 12, 16, 6) * 2).astype(np.uint8))

    masks = set()
    for split in ("train", "val"):
        for i in range(2):
            photo(tmp_path / split / "images" / f"{split}{i}.png", i)
            masks.add(mask(tmp_path / split / "labels" / f"{split}{i}.png"))
    photo(tmp_path / "site" / "day" / "images" / "d.png", 5)
    masks.add(mask(tmp_path / "site" / "day" / "masks" / "d.png"))
    photo(tmp_path / "flat" / "x.jpg", 6)
    masks.add(mask(tmp_path / "flat" / "x_mask.png"))
    photo(tmp_path / "colour" / "y.jpg", 16)  # a colour mask saved as JPEG: its name says what it is
    masks.add(
        SynData.save(
            tmp_path / "colour" / "y_mask.jpg", np.random.default_rng(17).integers(0, 256, (24, 32, 3), dtype=np.uint8)
        )
    )
    photos = {
        photo(tmp_path / "pix2pix" / "inputs" / "p.png", 7),  # pairs of photographs named like image/mask folders
        photo(tmp_path / "pix2pix" / "targets" / "p.png", 8),
        photo(tmp_path / "beach" / "b.jpg", 9),
        photo(tmp_path / "beach" / "b_seg.jpg", 10),  # a photograph's pixels, whatever its name
        photo(tmp_path / "party" / "carnival.jpg", 14),
        photo(tmp_path / "party" / "carnival_seg.jpg", 15),
        photo(tmp_path / "twins" / "t.jpg", 11),  # x.jpg + x.png: FSS-1000's pair, the PNG taken as the mask
    }
    twin = photo(tmp_path / "twins" / "t.png", 11)  # (a photograph saved twice: one copy stays)
    # a binary mask saved as JPEG in labels/, and a 150-class index map, are masks all the same
    jpeg_mask = tmp_path / "jpeg" / "labels" / "j.jpg"
    photo(tmp_path / "jpeg" / "images" / "j.jpg", 12)
    jpeg_mask.parent.mkdir(parents=True)
    Image.fromarray((SynData.disc(24, 32, 12, 16, 6) * 255).astype(np.uint8)).save(jpeg_mask, quality=80)
    many = np.arange(24 * 32, dtype=np.int64).reshape(24, 32) % 150
    photo(tmp_path / "classes" / "images" / "c.png", 13)
    index_map = SynData.save(tmp_path / "classes" / "labels" / "c.png", many.astype(np.uint8))
    masks |= {jpeg_mask, index_map}
    images = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    found = mask_files(tmp_path, images)
    assert found - {twin} == masks and not found & photos


def test_names_in_another_unicode_form_pair_and_yaml_names_stay_as_written(tmp_path) -> None:
    """macOS writes "é" as e + combining accent (NFD), other systems as one character (NFC): an image and its mask
    so named did not pair. And YAML read names: [background, no, 1.10] as False and 1.1 (010 as 8, 1:30 as 90)."""
    import unicodedata

    from fsdistill.data.classes import read_class_names

    nfd, nfc = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    SynData.save(tmp_path / "f" / "images" / f"{nfd}.png", SynData.image(20, 24, 0))
    SynData.save(tmp_path / "f" / "masks" / f"{nfc}.png", SynData.disc(20, 24, 10, 12, 5).astype(np.uint8))
    assert [s.image_path.name for s in discover(tmp_path / "f").samples] == [f"{nfd}.png"]
    names = tmp_path / "data.yaml"
    names.write_text("names: [background, no, 1.10, 010, 1:30]\n")
    assert read_class_names(names) == ["background", "no", "1.10", "010", "1:30"]
    names.write_text("names: {0: background, 1: on, 2: 0x1A}\n")
    assert read_class_names(names) == ["background", "on", "0x1A"]
    names.write_text("names: {1: cat, 010: no}\n")  # the ids as YAML reads them (010 is 8), the names as written
    read = read_class_names(names)
    assert read[1] == "cat" and read[8] == "no" and len(read) == 9
    # "ß" is not "ss" to any file system: no pairing across them (casefold made one)
    SynData.save(tmp_path / "g" / "images" / "straße.png", SynData.image(20, 24, 0))
    SynData.save(tmp_path / "g" / "masks" / "strasse.png", SynData.disc(20, 24, 10, 12, 5).astype(np.uint8))
    with pytest.raises(DataError):
        discover(tmp_path / "g")
    as_json = tmp_path / "data.json"
    as_json.write_text('{"names": ["background", 1.10, true]}')
    assert read_class_names(as_json) == ["background", "1.10", "true"]
    names.write_text("names: {0: background, 1: cat, true: no}\n")  # true is id 1 too: which name is which?
    with pytest.raises(DataError, match="quote the names"):
        read_class_names(names)
    names.write_text("names: [background, null]\n")  # still no name at all
    with pytest.raises(DataError, match="something other than plain names"):
        read_class_names(names)
