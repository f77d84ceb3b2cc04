"""Image reading, mask decoding/encoding and COCO rasterisation (fsdistill.data.images/masks/coco)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fsdistill.data.coco import (
    annotation_mask,
    counts_to_rle_string,
    decode_rle,
    encode_rle,
    load_coco,
    rasterize_polygons,
    rle_string_to_counts,
)
from fsdistill.data.images import IMAGE_SUFFIXES, image_size, read_image, to_uint8_rgb
from fsdistill.data.masks import (
    colours_to_index,
    decode_binary,
    default_palette,
    parse_labelmap,
    read_binary_source,
    read_index_mask,
    read_mask_array,
    read_rgb_mask,
    union_instances,
    write_index_png,
)
from fsdistill.errors import DataError

# ------------------------------------------------------------------------------ a test-only COCO RLE encoder
# Written independently of fsdistill.data.coco so that decoding is checked against a second implementation.


def _runs_column_major(mask: np.ndarray) -> list[int]:
    flat = [int(v) for v in np.asarray(mask, bool).T.reshape(-1)]  # transpose: COCO runs go down columns
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return runs


def _compress(runs: list[int]) -> str:
    chars = []
    for i, r in enumerate(runs):
        x = r - runs[i - 2] if i > 2 else r
        while True:
            c = x & 31
            x >>= 5
            done = (x == -1) if (c & 16) else (x == 0)
            chars.append(chr((c if done else c | 32) + 48))
            if done:
                break
    return "".join(chars)


# ------------------------------------------------------------------------------------------------- images


def test_image_suffixes() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == set(IMAGE_SUFFIXES)


def test_exif_rotated_jpeg(tmp_path: Path, syn_data) -> None:
    arr = syn_data.image(20, 30)
    arr[:5, :5] = (255, 0, 0)  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    out = read_image(p)
    assert out.shape == (30, 20, 3) and out.dtype == np.uint8
    assert image_size(p) == (20, 30)  # (width, height) after rotation, from the header
    # Rotating 90° clockwise moves the stored top-left corner to the top-right.
    assert out[:4, -4:, 0].mean() > 200 and out[:4, -4:, 1].mean() < 60


def test_an_image_over_pillows_pixel_limit_is_named_as_too_large(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 2400 pixels: over twice the limit, an error
    with pytest.raises(DataError, match=r"huge\.png: Image size \(2400 pixels\) exceeds limit .*cut it into tiles"):
        read_image(path)


def test_read_image_reduced_of_a_near_square_turned_jpeg_reports_the_turned_size(tmp_path: Path) -> None:
    """Stored 514×513 (w×h) with orientation 6: its 1/8 decode is 65×65, square, yet the full size is 513 wide."""
    from fsdistill.data.images import read_image_reduced

    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "near_square.jpg"
    Image.fromarray(np.zeros((513, 514, 3), np.uint8)).save(path, exif=exif)
    small, size = read_image_reduced(path, 64)
    assert small.shape[:2] == (65, 65) and size == (514, 513) == read_image(path).shape[:2]


@pytest.mark.parametrize("orientation", [1, 6])  # 6: stored 400×200 (w×h), displayed 200×400
def test_read_image_reduced_decodes_jpegs_smaller_but_reports_the_full_size(tmp_path: Path, orientation) -> None:
    from fsdistill.data.images import read_image_reduced

    yy, xx = np.mgrid[0:200, 0:400]
    arr = np.stack([xx * 255 // 399, yy * 255 // 199, np.full_like(xx, 90)], axis=-1).astype(np.uint8)  # smooth ramps
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "big.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    full = read_image(path)
    small, (height, width) = read_image_reduced(path, 48)
    assert (height, width) == full.shape[:2] == ((400, 200) if orientation == 6 else (200, 400))
    # libjpeg's 1/4 scale: the largest reduction keeping both sides >= 48, in display orientation.
    assert small.shape == (full.shape[0] // 4, full.shape[1] // 4, 3)
    # The same picture: the full decode shrunk by area averaging differs from the DCT-scaled one by a few levels.
    shrunk = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - small.astype(int)).mean() < 3
    # Without a size, or for other formats, the full image.
    assert read_image_reduced(path, None)[0].shape == full.shape
    png = tmp_path / "big.png"
    Image.fromarray(arr).save(png)
    png_image, png_size = read_image_reduced(png, 48)
    assert png_image.shape == (200, 400, 3) and png_size == (200, 400)


def test_grey_rgba_palette_to_rgb(tmp_path: Path, syn_data) -> None:
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = read_image(syn_data.save(tmp_path / "g.png", g))
    assert out.shape == (3, 4, 3) and (out == g[..., None]).all()

    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent: alpha is dropped, not composited
    out = read_image(syn_data.save(tmp_path / "a.png", rgba))
    assert out.shape == (3, 4, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()

    p = syn_data.save_palette(tmp_path / "p.png", np.array([[0, 1], [2, 3]], np.uint8))
    pal = Image.open(p).getpalette()
    out = read_image(p)
    assert out.shape == (2, 2, 3) and tuple(out[1, 0]) == tuple(pal[6:9])


def test_16bit_scaled_by_own_range(tmp_path: Path) -> None:
    a = np.full((8, 9), 1000, np.uint16)
    a[0, 0], a[-1, -1] = 100, 900 + 100  # dim 12-bit data in a 16-bit file
    a[2, 2] = 550
    p = tmp_path / "dim16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (8, 9, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255 and 120 < out[2, 2, 0] < 135


def test_tiff_fallbacks(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    multi = np.random.default_rng(0).random((6, 10, 12)).astype(np.float32)  # C×H×W, 6 bands
    tifffile.imwrite(tmp_path / "multi.tif", multi)
    out = read_image(tmp_path / "multi.tif")
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    assert out.min() >= 0 and out.max() == 255
    assert image_size(tmp_path / "multi.tif") == (12, 10)
    tifffile.imwrite(tmp_path / "rgb16.tif", (np.arange(5 * 7 * 3) * 100).astype(np.uint16).reshape(5, 7, 3))
    assert read_image(tmp_path / "rgb16.tif").shape == (5, 7, 3)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("orientation", [3, 5, 6, 7, 8])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_turned_tiff_read_in_display_orientation(tmp_path: Path, orientation: int, compression, dtype) -> None:
    """An uncompressed grey TIFF tagged 5–8 decoded as stripes (Pillow memory-maps a file opened by name at its
    display size, the strip holds the stored one); the same pixels zlib-compressed, or tagged 3, were right."""
    tifffile = pytest.importorskip("tifffile")
    from fsdistill.data.masks import read_mask_array

    stored = (np.arange(11 * 17).reshape(11, 17) % 251).astype(dtype)
    path = tmp_path / "turned.tif"
    tifffile.imwrite(path, stored, extratags=[(274, "H", 1, orientation, True)], compression=compression)
    turn = {
        3: Image.Transpose.ROTATE_180,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }[orientation]
    shown = np.asarray(Image.fromarray(stored).transpose(turn))
    assert image_size(path) == (shown.shape[1], shown.shape[0])
    assert np.array_equal(read_mask_array(path), shown)
    image = read_image(path)[..., 0]
    assert image.shape == shown.shape
    # the same pixels: the image is scaled by its own range, so compare the order of the values
    assert np.array_equal(np.argsort(image, axis=None, kind="stable"), np.argsort(shown, axis=None, kind="stable"))


def test_transparent_mask_pixels_are_background(tmp_path: Path, syn_data) -> None:
    """Masks with an alpha channel: a white-on-transparent LA layer read as foreground everywhere, a red object on a
    transparent white RGBA canvas gave the background a class of its own, black strokes on a transparent layer
    were empty; each with exit 0. Fully transparent pixels are background."""
    from fsdistill.data.discover import discover
    from fsdistill.data.masks import read_mask_array

    truth = np.zeros((20, 24), np.uint8)
    truth[3:9, 4:12] = 1
    truth[12:18, 14:22] = 1
    opaque = np.where(truth > 0, 255, 0).astype(np.uint8)
    layers = {
        "la": Image.fromarray(np.dstack([np.full_like(truth, 255), opaque]), "LA"),
        "rgba": Image.fromarray(np.dstack([np.where(truth[..., None] > 0, (255, 0, 0), 255), opaque]).astype(np.uint8)),
        "strokes": Image.fromarray(np.dstack([np.zeros((20, 24, 3), np.uint8), opaque]), "RGBA"),
    }
    for name, layer in layers.items():
        root = tmp_path / name
        (root / "masks").mkdir(parents=True)
        for i in range(2):
            syn_data.save(root / "images" / f"s{i}.png", syn_data.image(20, 24, i))
            layer.save(root / "masks" / f"s{i}.png")
        index = discover(root)
        assert index.class_names == ["background", "foreground"], name
        assert np.array_equal(index.load_mask(0), truth), name
    # alpha that is opaque everywhere says nothing: the colours are read as they are
    full = np.dstack([np.where(truth[..., None] > 0, (0, 0, 255), 0), np.full_like(truth, 255)]).astype(np.uint8)
    Image.fromarray(full).save(tmp_path / "opaque.png")
    assert np.array_equal(read_mask_array(tmp_path / "opaque.png"), full[..., :3])


def test_to_uint8_rgb_shapes() -> None:
    assert to_uint8_rgb(np.zeros((4, 5), bool)).shape == (4, 5, 3)
    assert to_uint8_rgb(np.zeros((2, 4, 5), np.uint8)).shape == (4, 5, 3)  # 2 channels: first used
    assert to_uint8_rgb(np.zeros((30, 20, 25), np.uint16)).shape == (20, 25, 3)  # a stack: first plane


def test_a_broken_link_or_a_folder_given_as_an_image_is_named_so(tmp_path: Path) -> None:
    """A dangling symlink listed in its folder was said not to exist; a folder given as an image was "no such
    file"."""
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"dangling\.png is a broken symbolic link \(to .*gone\.png\); fix the link"):
        read_image(link)
    with pytest.raises(DataError, match=r"is a folder, not an image file"):
        read_image(tmp_path)


@pytest.mark.parametrize("kind", ["truncated-jpeg", "truncated-png", "not-an-image", "missing"])
def test_unreadable_image(tmp_path: Path, syn_data, kind: str) -> None:
    arr = syn_data.image(64, 64)
    if kind == "truncated-jpeg":
        p = syn_data.save(tmp_path / "t.jpg", arr)
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    elif kind == "truncated-png":
        p = syn_data.save(tmp_path / "t.png", np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
        p.write_bytes(p.read_bytes()[:200])
    elif kind == "not-an-image":
        p = tmp_path / "t.png"
        p.write_text("hello")
    else:
        p = tmp_path / "nope.png"
    with pytest.raises(DataError, match=r"Cannot read image .*t?\.(png|jpg)|nope\.png") as e:
        read_image(p)
    # a missing file is said to be missing ("Re-export it as PNG" was the advice for a file not there)
    advice = "does not exist; check the path" if kind == "missing" else "Re-export"
    assert str(p) in str(e.value) and advice in str(e.value)


# -------------------------------------------------------------------------------------------------- masks


def test_default_palette_voc() -> None:
    pal = default_palette(22)
    assert pal[:5] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)]
    assert pal[15] == (192, 128, 128) and pal[20] == (0, 64, 128)  # VOC person, tvmonitor
    assert len(set(pal)) == 22


def test_write_index_png_round_trip(tmp_path: Path) -> None:
    m = np.zeros((7, 9), np.uint8)
    m[1:3, 2:5], m[4:, 6:], m[0, 0] = 1, 2, 255
    pal = default_palette(3)
    p = tmp_path / "sub" / "m.png"
    write_index_png(p, m, pal)
    img = Image.open(p)
    assert img.mode == "P"
    assert img.getpalette()[:9] == [c for rgb in pal for c in rgb]
    assert (read_index_mask(p) == m).all() and read_index_mask(p).dtype == np.uint8
    assert sorted(os.listdir(p.parent)) == ["m.png"]  # no temporary file left behind
    write_index_png(p, np.zeros((2, 2), np.uint8), pal)  # overwrite in place
    assert read_index_mask(p).shape == (2, 2)
    with pytest.raises(ValueError):
        write_index_png(p, np.zeros((2, 2, 3), np.uint8), pal)


def test_read_index_mask_modes(tmp_path: Path, syn_data) -> None:
    m = np.array([[0, 1], [2, 255]], np.uint8)
    assert (read_index_mask(syn_data.save(tmp_path / "l.png", m)) == m).all()
    assert (read_index_mask(syn_data.save_palette(tmp_path / "p.png", m)) == m).all()
    grey_rgb = np.repeat(m[..., None], 3, -1)  # a grey mask saved as RGB collapses to H×W
    assert (read_index_mask(syn_data.save(tmp_path / "rgb.png", grey_rgb)) == m).all()
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(DataError, match=r"colour\.png is a colour image"):
        read_index_mask(syn_data.save(tmp_path / "colour.png", colour))
    assert read_mask_array(tmp_path / "colour.png").shape == (2, 2, 3)


def test_binary_decoding(tmp_path: Path, syn_data) -> None:
    raw = np.array([[0, 127, 128, 255]], np.uint8)
    assert decode_binary(raw, 128).tolist() == [[0, 0, 1, 1]]
    assert decode_binary(np.array([[0, 1]], np.uint8), 1, class_id=3).tolist() == [[0, 3]]
    # A pure-blue foreground on black stays foreground (brightest channel, not luminance).
    c = np.zeros((2, 2, 3), np.uint8)
    c[0, 0] = (0, 0, 255)
    src = read_binary_source(syn_data.save(tmp_path / "blue.png", c))
    assert decode_binary(src, 128).tolist() == [[1, 0], [0, 0]]


def test_jpeg_mask_thresholded(tmp_path: Path, syn_data) -> None:
    d = syn_data.disc(40, 40, 20, 20, 10)
    p = syn_data.save(tmp_path / "m.jpg", d.astype(np.uint8) * 255, quality=75)
    raw = read_binary_source(p)
    assert len(np.unique(raw)) > 2  # JPEG noise
    got = decode_binary(raw, 128).astype(bool)
    assert (got ^ d).sum() <= 4


def test_dark_jpeg_masks_keep_their_objects(tmp_path: Path, syn_data) -> None:
    """JPEG masks in VOC's dark red (128, 0, 0): a fixed threshold of 128 kept ~40 % of the object; each mask is
    thresholded at half its own brightest value, and an empty mask's ringing stays background."""
    from fsdistill.data.discover import discover

    root = tmp_path / "voc"
    (root / "masks").mkdir(parents=True)
    discs = [syn_data.disc(48, 56, 20 + 6 * i, 24, 12) for i in range(2)]
    for i, disc in enumerate(discs):
        syn_data.save(root / "images" / f"s{i}.png", syn_data.image(48, 56, i))
        rgb = np.zeros((48, 56, 3), np.uint8)
        rgb[disc] = (128, 0, 0)
        Image.fromarray(rgb).save(root / "masks" / f"s{i}.jpg", quality=90)
    index = discover(root)
    assert index.mask_kind == "jpeg-binary"
    for i, disc in enumerate(discs):
        got = index.load_mask(i).astype(bool)
        assert (got ^ disc).sum() <= 0.05 * disc.sum(), i
    # a JPEG mask with nothing in it: its ringing is not an object
    noise = np.random.default_rng(0).integers(0, 12, (48, 56), np.uint8)
    Image.fromarray(noise).save(root / "masks" / "s1.jpg", quality=90)
    assert not discover(root).load_mask(1).any()


def test_colours_to_index(tmp_path: Path, syn_data) -> None:
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[0, 1] = (250, 50, 83)
    rgb[2, 3] = (0, 255, 0)
    table = {(0, 0, 0): 0, (250, 50, 83): 1, (0, 255, 0): 2}
    p = syn_data.save(tmp_path / "c.png", rgb)
    out = colours_to_index(read_rgb_mask(p), table, p)
    assert out.dtype == np.uint8 and out[0, 1] == 1 and out[2, 3] == 2 and out.sum() == 3
    rgb[1, 2] = (9, 9, 200)
    p2 = syn_data.save(tmp_path / "bad.png", rgb)
    with pytest.raises(DataError, match=r"bad\.png has colour \(9, 9, 200\) \(first at x=2, y=1\)"):
        colours_to_index(read_rgb_mask(p2), table, p2)


def test_union_instances(tmp_path: Path, syn_data) -> None:
    a = syn_data.disc(20, 20, 5, 5, 3)
    b = syn_data.disc(20, 20, 14, 14, 4)
    pa = syn_data.save(tmp_path / "a.png", a.astype(np.uint8) * 255)
    pb = syn_data.save(tmp_path / "b.png", b.astype(np.uint8))  # a 0/1 instance file
    assert (union_instances([pa, pb]) == (a | b)).all()
    pc = syn_data.save(tmp_path / "c.png", np.zeros((10, 20), np.uint8))
    with pytest.raises(DataError, match=r"c\.png is 20×10"):
        union_instances([pa, pc])


def test_parse_labelmap(tmp_path: Path) -> None:
    p = tmp_path / "labelmap.txt"
    p.write_text("# label:color_rgb:parts:actions\ncar:250,50,83::\nbackground:0,0,0::\nroad: 0,255,0 ::\n")
    names, colours = parse_labelmap(p)
    assert names == ["background", "car", "road"]
    assert colours == [(0, 0, 0), (250, 50, 83), (0, 255, 0)]
    p.write_text("car:250,50,83::\n")
    assert parse_labelmap(p) == (["background", "car"], [(0, 0, 0), (250, 50, 83)])
    p.write_text("car:250,50::\n")
    with pytest.raises(DataError, match=r"labelmap\.txt line 1"):
        parse_labelmap(p)
    p.write_text("car:1,2,3::\nbus:1,2,3::\n")
    with pytest.raises(DataError, match="twice"):
        parse_labelmap(p)


# --------------------------------------------------------------------------------------------------- COCO


def _shape_mask() -> np.ndarray:
    m = np.zeros((13, 17), bool)
    m[2:9, 3:7] = True
    m[0, 16] = True  # touches the last column, first row
    m[12, 0] = True  # last row, first column
    m[5:7, 10:16] = True
    return m


def test_rle_round_trip_against_test_encoder() -> None:
    m = _shape_mask()
    runs = _runs_column_major(m)
    s = _compress(runs)
    assert rle_string_to_counts(s) == runs
    assert (decode_rle(rle_string_to_counts(s), *m.shape) == m).all()
    assert counts_to_rle_string(runs) == s  # the library encoder agrees with the independent one
    enc = encode_rle(m)
    assert enc == {"size": [13, 17], "counts": s}
    assert encode_rle(m, compressed=False)["counts"] == runs
    full = np.ones((4, 5), bool)  # starts with a zero-length run of zeros
    assert (decode_rle(rle_string_to_counts(_compress(_runs_column_major(full))), 4, 5) == full).all()


def test_rle_known_string_and_big_counts() -> None:
    # Runs with large and decreasing values exercise multi-chunk and negative (sign-extended) deltas.
    runs = [70000, 3, 1, 40, 2, 5]
    assert rle_string_to_counts(_compress(runs)) == runs
    # By hand: '5'→5, '2'→2, '2'→2, then deltas to the count two before: '0'→0+2=2, '3'→3+2=5.
    assert rle_string_to_counts("52203") == [5, 2, 2, 2, 5]
    assert rle_string_to_counts("O") == [-1]  # 'O'-48 = 31: one chunk with the sign bit 0x10 set
    with pytest.raises(ValueError):
        decode_rle([5, 2], 3, 3)


def test_polygon_raster() -> None:
    # A box with pixel-edge corners (3, 2)-(8, 6) covers columns 3..7 and rows 2..5 (cv2.fillPoly drew 3..8 and
    # 2..6: every object one column and one row too big).
    m = rasterize_polygons([[3, 2, 8, 2, 8, 6, 3, 6]], 10, 12)
    expected = np.zeros((10, 12), bool)
    expected[2:6, 3:8] = True
    assert (m == expected).all()
    assert not rasterize_polygons([[1, 1, 5, 5]], 10, 12).any()  # two points: no area
    # a polygon partly outside the image, and two polygons of one object: clipped, united
    two = rasterize_polygons([[-3, -3, 2, -3, 2, 2, -3, 2], [1, 1, 4, 1, 4, 3, 1, 3]], 10, 12)
    assert two.sum() == 4 + 6 - 1 and two[0, 0] and two[2, 3] and not two[2, 4]


def test_polygon_raster_draws_as_pycocotools_does() -> None:
    """Simple polygons with float and integer corners: the same pixels as pycocotools within its own rounding
    (it samples edges at a fifth of a pixel); the cv2 raster was 14-19 % of the pixels off."""
    coco_mask = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    pixels = differ = 0
    for i in range(200):
        h, w = (int(v) for v in rng.integers(10, 100, 2))
        n = int(rng.integers(3, 20))
        angle, radius = np.sort(rng.uniform(0, 2 * np.pi, n)), rng.uniform(1, min(h, w) / 2, n)
        centre = rng.uniform(0, [w, h])
        points = np.stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle)], 1)
        polygon = (np.round(points) if i % 2 else points).reshape(-1).tolist()
        theirs = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([polygon], h, w))).astype(bool)
        pixels += theirs.sum()
        differ += (rasterize_polygons([polygon], h, w) != theirs).sum()
    assert differ < 0.03 * pixels, (differ, pixels)


def test_annotation_masks_all_forms(tmp_path: Path) -> None:
    m = _shape_mask()
    h, w = m.shape
    poly = {"id": 1, "segmentation": [[3, 2, 8, 2, 8, 6, 3, 6]]}
    rle_list = {"id": 2, "segmentation": {"size": [h, w], "counts": _runs_column_major(m)}}
    rle_str = {"id": 3, "segmentation": {"size": [h, w], "counts": _compress(_runs_column_major(m))}}
    box = {"id": 4, "bbox": [0, 0, 2, 2]}
    assert annotation_mask(poly, h, w)[2:6, 3:8].all()  # pixel-edge corners: columns 3..7, rows 2..5
    assert (annotation_mask(rle_list, h, w) == m).all()
    assert (annotation_mask(rle_str, h, w) == m).all()
    assert annotation_mask(box, h, w) is None
    wrong = {"id": 5, "segmentation": {"size": [h + 1, w], "counts": [1]}}
    with pytest.raises(DataError, match="annotation 5 with RLE size"):
        annotation_mask(wrong, h, w, tmp_path / "a.json")


def test_coco_mask_remap_crowd_and_order(tmp_path: Path) -> None:
    h, w = 12, 16
    big = np.zeros((h, w), bool)
    big[:, :8] = True
    crowd = np.zeros((h, w), bool)
    crowd[:, 12:] = True
    data = {
        "images": [{"id": 5, "file_name": "a.png", "width": w, "height": h}],
        "categories": [{"id": 7, "name": "car"}, {"id": 3, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": _compress(_runs_column_major(big))}},
            {"id": 3, "image_id": 5, "category_id": 7, "iscrowd": 1,
             "segmentation": {"size": [h, w], "counts": _runs_column_major(crowd)}},
        ],
    }  # fmt: skip
    coco = load_coco(tmp_path / "c.json", data)
    assert coco.names == ["car", "person"] and coco.class_of == {7: 1, 3: 2}
    out = coco.mask(5)
    assert (out[crowd] == 255).all()
    assert (out[2:5, 2:5] == 2).all()  # the small person lies on top of the big car
    assert out[0, 0] == 1 and out[0, 9] == 0
    bad = dict(data, annotations=[{"id": 9, "image_id": 99, "category_id": 7, "segmentation": [[0, 0, 1, 0, 1, 1]]}])
    with pytest.raises(DataError, match=r"c\.json has annotation 9 for image id 99"):
        load_coco(tmp_path / "c.json", bad)
    boxes = dict(data, annotations=[{"id": 1, "image_id": 5, "category_id": 7, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(DataError, match="only boxes"):
        load_coco(tmp_path / "c.json", boxes)


def test_polygon_raster_refuses_non_finite_and_clips_huge_coordinates() -> None:
    """NaN (which Python's json reads) ended in an IndexError traceback; a coordinate of 1e8 took 36 s and 9 GB."""
    with pytest.raises(ValueError, match="not a finite number"):
        rasterize_polygons([[2, 2, 10, 2, 10, 10, float("nan"), 10]], 20, 20)
    tall = rasterize_polygons([[1, 1, 4, 1, 4, 1e8]], 20, 20)  # clipped to the image's rows before expanding them
    assert tall.shape == (20, 20) and tall[19, 3] and not tall[0].any()


def test_a_large_image_reads_without_pillows_bomb_warning(tmp_path: Path, monkeypatch) -> None:
    """Images between Pillow's warning and error sizes printed its raw DecompressionBombWarning (with the source
    line) in every command; commands read them silently (the library leaves a Python caller's warnings alone), and
    an image above the error size is still refused."""
    import warnings

    from typer.testing import CliRunner

    from fsdistill.cli import app

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # warns above 100 pixels, refuses above 200
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "images" / "large.png")
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "masks" / "large.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_image(tmp_path / "images" / "large.png").shape == (12, 12, 3)
        assert image_size(tmp_path / "images" / "large.png") == (12, 12)
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]  # the library's caller's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CliRunner().invoke(app, ["check", str(tmp_path)])
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="decompression bombs; cut it into tiles"):
        read_image(tmp_path / "bomb.png")
