"""``check_support``: the report's numbers and warnings, and a DataError naming the file for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fsdistill.data.check import CheckReport, check_support
from fsdistill.errors import DataError


def test_report_numbers(syn_binary) -> None:
    root, discs = syn_binary
    calls = []
    rep = check_support(root, progress=lambda done, total: calls.append((done, total)))
    assert isinstance(rep, CheckReport)
    assert (rep.layout, rep.mask_kind, rep.num_pairs) == ("paired", "binary", 3)
    assert rep.class_names == ["background", "foreground"]
    assert rep.images_per_class == {"background": 3, "foreground": 3}
    fg = sum(int(d.sum()) for d in discs) / (3 * 32 * 40)
    assert rep.pixels_per_class["foreground"] == pytest.approx(fg)
    assert sum(rep.pixels_per_class.values()) == pytest.approx(1.0)
    assert (rep.min_width, rep.max_width, rep.min_height, rep.max_height) == (40, 40, 32, 32)
    assert rep.warnings == [] and rep.empty_masks == []
    assert calls[-1] == (3, 3)
    d = rep.to_dict()
    assert json.loads(json.dumps(d)) == d
    text = rep.to_text()
    assert "paired" in text and "foreground" in text and 6 <= len(text.splitlines()) <= 20


def test_warnings(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "warn"
    syn_data.paired(root, n=3, img_ext=".jpg", size=(64, 64))
    h = w = 64
    tiny = np.zeros((h, w), np.uint8)
    tiny[10, 10] = 2  # one pixel of class 2: tiny (< 0.1% of 4096 px) and in only one image
    tiny[40:50, 40:50] = 1
    syn_data.save(root / "masks" / "s0.png", tiny)
    syn_data.save(root / "masks" / "s1.png", np.zeros((h, w), np.uint8))  # empty
    syn_data.save(root / "images" / "orphan.jpg", syn_data.image(h, w))
    (root / "classes.txt").write_text("background\npolyp\nspot\nnever\n")
    rep = check_support(root)
    assert rep.mask_kind == "index" and rep.class_names == ["background", "polyp", "spot", "never"]
    assert rep.images_per_class == {"background": 3, "polyp": 1, "spot": 1, "never": 0}
    # s2 keeps its 0/255 disc: with three names, 255 reads as ignore, so it has no foreground either.
    assert rep.empty_masks == ["s1", "s2"] and rep.orphan_images == ["images/orphan.jpg"]
    assert rep.tiny_per_class == {"spot": 1} and 0 < rep.ignore_fraction < 1
    text = " | ".join(rep.warnings)
    for needle in (
        "2 of 3 masks are empty",
        "1 masks have no class pixels but some ignore (255) pixels, e.g. s2",
        "'spot' covers less than 0.1%",
        "'polyp' appears in only 1 image",
        "'never' (classes.txt) appears in no mask",
        "or remove it from classes.txt",
        "1 images have no mask",
    ):
        assert needle in text, needle
    assert "Images without masks: 1 (images/orphan.jpg)" in rep.to_text()


def test_folders_that_teach_no_background_or_repeat_an_image_are_named(tmp_path: Path, syn_data, caplog) -> None:
    """Masks labelling every pixel with a class (or ignoring the rest): "No warnings", and the model then labelled
    every pixel of every new image foreground; copies of one image passed unremarked; a GIF image was reported as
    its mask having no image."""
    from fsdistill.data.discover import discover
    from fsdistill.data.support_tensors import load_support_tensors

    root = tmp_path / "nobg"
    syn_data.paired(root, n=3, size=(32, 32))
    (root / "classes.txt").write_text("background\ncell\n")
    for k in range(3):
        mask = np.full((32, 32), 255, np.uint8)
        mask[10:14, 10 + k : 14 + k] = 1
        syn_data.save(root / "masks" / f"s{k}.png", mask)
    (root / "images" / "s2.png").write_bytes((root / "images" / "s0.png").read_bytes())
    (root / "images" / "anim.gif").write_bytes(b"GIF89a")
    syn_data.save(root / "masks" / "anim.png", np.zeros((32, 32), np.uint8))
    text = " | ".join(check_support(root).warnings)
    assert "No mask has a background (0) pixel" in text
    assert "1 support image(s) are byte-for-byte copies of others (e.g. s2 = s0)" in text
    assert "1 image(s) in " in text and "are of a format fsdistill does not read (.gif; e.g. images/anim.gif)" in text
    with caplog.at_level("WARNING"):
        load_support_tensors(discover(root), 64)
    assert "No mask has a background (0) pixel" in caplog.text
    syn_data.paired(tmp_path / "fine", n=2)
    assert not any("background" in w or "copies" in w for w in check_support(tmp_path / "fine").warnings)


def test_jpeg_mask_warning(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "kv"
    syn_data.paired(root, n=2, img_ext=".jpg", mask_ext=".jpg")
    rep = check_support(root)
    assert rep.mask_kind == "jpeg-binary" and any("JPEG" in w for w in rep.warnings)


def test_all_masks_empty(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "empty_masks"
    syn_data.paired(root, n=2, fg=0)
    with pytest.raises(DataError, match=r"All 2 masks in .*empty_masks are empty: .*\(e\.g\. s0, s1\)"):
        check_support(root)


def test_unreadable_image(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "trunc"
    syn_data.paired(root, n=2, img_ext=".jpg", size=(64, 64))
    p = root / "images" / "s1.jpg"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match=r"Cannot read image .*s1\.jpg"):
        check_support(root)


def test_size_mismatch(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "mism"
    syn_data.paired(root, n=2)
    syn_data.save(root / "masks" / "s0.png", np.zeros((40, 32), np.uint8))
    with pytest.raises(DataError, match=r"s0\.png is 32×40 but its image"):
        check_support(root)


def test_class_id_beyond_names(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "ids"
    syn_data.paired(root, n=2, fg=1)
    m = np.zeros((32, 40), np.uint8)
    m[:4, :4] = 7
    syn_data.save(root / "masks" / "s1.png", m)
    (root / "classes.txt").write_text("background\ncell\nnucleus\n")
    with pytest.raises(DataError, match=r"s1\.png has class id 7 but classes\.txt lists 3 classes"):
        check_support(root)


def test_unknown_colour(tmp_path: Path, syn_data) -> None:
    root = tmp_path / "cv"
    (root).mkdir()
    (root / "labelmap.txt").write_text("background:0,0,0::\ncar:255,0,0::\n")
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[2:4, 2:4] = (255, 0, 0)
    rgb[6, 6] = (0, 255, 0)
    syn_data.save(root / "JPEGImages" / "f.jpg", syn_data.image(8, 8))
    syn_data.save(root / "SegmentationClass" / "f.png", rgb)
    with pytest.raises(DataError, match=r"f\.png has colour \(0, 255, 0\)"):
        check_support(root)


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        check_support(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="is empty"):
        check_support(tmp_path / "e")


@pytest.mark.examples
@pytest.mark.parametrize("name", ["nuclei", "brain"])
def test_examples_check(examples_root: Path, name: str) -> None:
    root = examples_root / name / "support"
    rep = check_support(root)
    assert rep.layout == "paired" and rep.num_pairs >= 2
    assert all(rep.images_per_class[c] >= 1 for c in rep.class_names[1:])
    assert len(rep.class_names) == (2 if name == "nuclei" else 3)
