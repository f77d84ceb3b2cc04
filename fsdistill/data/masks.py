"""Decode masks to H×W uint8 class ids (255 = ignore, as in VOC) and encode them as palette PNGs.

Masks are read with Pillow, never OpenCV: OpenCV expands palette PNGs to colour and the class ids are lost.
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from fsdistill.data.images import (
    _EXIF_ERRORS,
    _PIL_ERRORS,
    TIFF_SUFFIXES,
    _tiff_header,
    open_pil,
    read_tiff_array,
)
from fsdistill.errors import DataError

__all__ = [
    "IGNORE_INDEX",
    "default_palette",
    "read_mask_array",
    "read_index_mask",
    "read_rgb_mask",
    "jpeg_threshold",
    "read_binary_source",
    "decode_binary",
    "colours_to_index",
    "pack_rgb",
    "unpack_rgb",
    "edge_pixels",
    "resolve_blends",
    "union_instances",
    "parse_labelmap",
    "encode_index_png",
    "write_index_png",
]

IGNORE_INDEX = 255
Rgb = tuple[int, int, int]
BACKGROUND_NAMES = frozenset({"background", "bg", "_background_", "__background__", "backgroud", "back_ground"})

# Said by check and by adapt / distill when no support mask has a background (0) pixel.
NO_BACKGROUND_WARNING = (
    "No mask has a background (0) pixel: every labelled pixel is a class, so the model never learns background "
    "and labels every pixel of new images with one of the classes; paint the background 0 where it is (255 marks "
    "pixels to ignore)."
)


def default_palette(n: int) -> list[Rgb]:
    """VOC-style palette of ``n`` colours: index 0 black, then the bit-interleaved colours VOC viewers expect."""
    palette: list[Rgb] = []
    for i in range(n):
        rgb = [0, 0, 0]
        for j, ch in itertools.product(range(8), range(3)):  # bit 3j + ch of the index → bit 7 - j of channel ch
            rgb[ch] |= ((i >> (3 * j + ch)) & 1) << (7 - j)
        palette.append((rgb[0], rgb[1], rgb[2]))
    return palette


def _cannot_read_mask(path: Path, reason: str) -> DataError:
    reason = reason.strip().rstrip(".") or "unknown format"
    if "Permission denied" in reason:  # re-exporting would not help
        return DataError(f"Cannot read mask {path}: permission denied. Make it readable (chmod) or remove it.")
    return DataError(f"Cannot read mask {path}: {reason}. Re-export it as PNG or remove it.")


def _open_mask(path: Path) -> Image.Image | np.ndarray:
    """Open and fully decode a mask with Pillow, EXIF orientation applied (masks drawn on a rotated photo); a TIFF
    that Pillow cannot decode comes back as tifffile's array."""
    if not path.is_file():
        raise _cannot_read_mask(path, "no such file")
    try:
        with open_pil(path) as img:
            img.load()
            try:
                out = ImageOps.exif_transpose(img) or img
            except _EXIF_ERRORS:
                out = img
            return out.copy() if out is img else out
    except _PIL_ERRORS as e:
        if path.suffix.lower() in TIFF_SUFFIXES and _tiff_header(path):
            return _read_tiff_mask(path)
        raise _cannot_read_mask(path, str(e) or type(e).__name__) from e


def _read_tiff_mask(path: Path) -> np.ndarray:
    arr = np.squeeze(read_tiff_array(path, _cannot_read_mask))
    if arr.ndim == 3 and arr.shape[0] <= 4 < arr.shape[2]:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] >= 3:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise _cannot_read_mask(path, f"expected an integer H×W label image, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr


def read_mask_array(path: Path | str) -> np.ndarray:
    """Raw mask pixels as stored: H×W for grey, palette (the *indices*) and 16/32-bit label masks, H×W×3 uint8
    for colour masks (equal channels collapse to H×W, as many tools save grey masks as RGB); with an alpha channel,
    fully transparent pixels are background (:func:`_transparent_as_background`)."""
    path = Path(path)
    img = _open_mask(path)
    if isinstance(img, np.ndarray):
        return _collapse_grey_rgb(img)
    mode = img.mode
    if mode in ("P", "L"):
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in _ALPHA_MODES:
        if mode == "PA":
            values = np.asarray(img.getchannel(0), np.uint8)  # palette indices, kept
        else:
            values = _collapse_grey_rgb(np.asarray(img.convert("L" if mode[0] == "L" else "RGB"), np.uint8))
        return _transparent_as_background(values, np.asarray(img.getchannel("A"), np.uint8))
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I"):
        return np.asarray(img).copy()  # 16/32-bit labels: uint16 or int32, values kept
    if mode == "F":
        raise _cannot_read_mask(path, "it holds floating-point values, not class ids")
    return _collapse_grey_rgb(np.asarray(img.convert("RGB"), dtype=np.uint8))


# Pillow modes with an alpha channel (see _transparent_as_background).
_ALPHA_MODES = ("PA", "LA", "La", "RGBA", "RGBa")


def _transparent_as_background(values: np.ndarray, alpha: np.ndarray, collapse: bool = True) -> np.ndarray:
    """A mask with an alpha channel (H×W or H×W×3 ``values``, H×W ``alpha``): fully transparent pixels are
    background (0), whatever colour they store (editors keep white or the last brush colour there). Where the
    opaque pixels then hold nothing but 0 (black strokes on a transparent layer), the mask is the opaque pixels,
    255 (binary, H×W). A mask with no fully transparent pixel is its values as they are; ``collapse``: colours with
    equal channels become H×W grey."""
    transparent = alpha == 0
    if not transparent.any():
        return values
    out = values.copy()
    out[transparent] = 0
    if not out.any():
        return np.where(transparent, 0, 255).astype(np.uint8)
    return _collapse_grey_rgb(out) if collapse and out.ndim == 3 else out


def _collapse_grey_rgb(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
        return np.ascontiguousarray(rgb[..., 0])
    return np.ascontiguousarray(rgb)


def read_index_mask(path: Path | str) -> np.ndarray:
    """H×W uint8 mask values as stored: palette indices for mode-"P" PNGs, grey values for "L" masks.

    Raises:
        DataError: unreadable file, a colour (RGB) mask, or values above 255.
    """
    path = Path(path)
    arr = read_mask_array(path)
    if arr.ndim == 3:
        raise DataError(
            f"Mask {path} is a colour image, not an index mask; save it as a palette or grey PNG, or add a "
            "labelmap.txt (name:r,g,b::) that maps its colours to classes."
        )
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(
                f"Mask {path} has values up to {int(arr.max())}, more than an index mask can hold (0..255); "
                "save class ids as an 8-bit PNG."
            )
        arr = arr.astype(np.uint8)
    return arr


def read_rgb_mask(path: Path | str) -> np.ndarray:
    """H×W×3 uint8 colours of a mask (palette masks through their embedded palette, grey as r=g=b)."""
    path = Path(path)
    img = _open_mask(path)
    if isinstance(img, np.ndarray) and img.ndim == 3:
        return np.ascontiguousarray(img[..., :3].astype(np.uint8))
    if isinstance(img, np.ndarray) or img.mode.startswith("I") or img.mode == "F":
        return np.repeat(read_index_mask(path)[..., None], 3, axis=-1)
    if img.mode in _ALPHA_MODES:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        rgb = _transparent_as_background(rgba[..., :3], rgba[..., 3], collapse=False)
        return np.ascontiguousarray(rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, axis=-1))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def read_binary_source(path: Path | str) -> np.ndarray:
    """H×W grey values of a mask meant as binary: colour masks use their brightest channel (a pure-red or
    pure-blue foreground stays above 128); wider masks are clipped to 0..255 (any label > 0 stays ``>= 1``)."""
    arr = read_mask_array(path)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return arr


def decode_binary(raw: np.ndarray, threshold: int, class_id: int = 1) -> np.ndarray:
    """H×W uint8 class ids from a grey binary mask: ``class_id`` where ``raw >= threshold`` (128, or 1 for 0/1
    data), else 0."""
    out = np.zeros(np.shape(raw), np.uint8)
    out[np.asarray(raw) >= threshold] = class_id
    return out


# A JPEG mask's object is the pixels at or above half its own brightest value, never below this: a mask saved in a
# dark colour (VOC's (128, 0, 0)) loses half its object to a fixed 128, and the ringing of an empty mask stays out.
JPEG_MIN_THRESHOLD = 64


def jpeg_threshold(raw: np.ndarray) -> int:
    """The foreground threshold of one JPEG binary mask (H×W grey, its brightest channel): half its maximum, at least
    :data:`JPEG_MIN_THRESHOLD`."""
    return max(JPEG_MIN_THRESHOLD, (int(raw.max(initial=0)) + 1) // 2)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 uint8 → H×W uint32 ``r<<16 | g<<8 | b`` (one integer per colour, for fast unique/lookup)."""
    c = rgb.astype(np.uint32)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


def unpack_rgb(c: int) -> Rgb:
    """A :func:`pack_rgb` integer → (r, g, b)."""
    return ((c >> 16) & 255, (c >> 8) & 255, c & 255)


def edge_pixels(labels: np.ndarray) -> np.ndarray:
    """H×W bool: pixels with a 4-neighbour of another value (``labels``: H×W, e.g. packed colours)."""
    edge = np.zeros(labels.shape, bool)
    horizontal = labels[:, 1:] != labels[:, :-1]
    vertical = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


# A colour in smoothed or resized colour masks is a blend when it lies within BLEND_TOLERANCE (RGB distance) of the
# segment between two real colours (or the triangle of three), at least BLEND_EDGE_FRACTION of its pixels are on a
# boundary, and it has at most BLEND_MAX_SHARE of the pixels of each colour it mixes. 6 allows the rounding of
# 8-bit blends and blends computed in linear light, which curve slightly off the segment.
BLEND_TOLERANCE = 6.0
BLEND_EDGE_FRACTION = 0.5
BLEND_MAX_SHARE = 0.5
_MAX_TRIPLE_COLOURS = 12  # above this many real colours only pairs are tried (triples grow cubically)


def _blend_sources(colour: Rgb, real: Sequence[Rgb], pixels: Mapping[Rgb, int]) -> tuple[Rgb, ...] | None:
    """The real colours that ``colour`` is a mixture of (2 or 3), or None; see BLEND_TOLERANCE."""
    c = np.asarray(colour, np.float64)
    present = [r for r in real if pixels.get(r, 0) > 0 and r != colour]
    few = lambda *src: pixels[colour] <= BLEND_MAX_SHARE * min(pixels[r] for r in src)  # noqa: E731
    best: tuple[float, tuple[Rgb, ...]] | None = None
    for a, b in itertools.combinations(present, 2):
        pa = np.asarray(a, np.float64)
        d = np.asarray(b, np.float64) - pa
        t = float(np.dot(c - pa, d) / max(np.dot(d, d), 1e-9))
        if 0.0 <= t <= 1.0:
            dist = float(np.linalg.norm(pa + t * d - c))
            if dist <= BLEND_TOLERANCE and few(a, b) and (best is None or dist < best[0]):
                best = (dist, (a, b))
    if best is None and len(present) <= _MAX_TRIPLE_COLOURS:
        for a, b, d3 in itertools.combinations(present, 3):
            pa = np.asarray(a, np.float64)
            basis = np.stack([np.asarray(b, np.float64) - pa, np.asarray(d3, np.float64) - pa], axis=1)
            (u, v), *_ = np.linalg.lstsq(basis, c - pa, rcond=None)
            if u < -0.02 or v < -0.02 or u + v > 1.02:
                continue
            dist = float(np.linalg.norm(pa + basis @ np.array([u, v]) - c))
            if dist <= BLEND_TOLERANCE and few(a, b, d3) and (best is None or dist < best[0]):
                best = (dist, (a, b, d3))
    return None if best is None else best[1]


def resolve_blends(
    pixels: Mapping[Rgb, int], edges: Mapping[Rgb, int], real: Sequence[Rgb] | None = None
) -> tuple[list[Rgb], dict[Rgb, Rgb]]:
    """(real colours, {blend colour: the nearest real colour it mixes}) of colour masks whose edges smoothing or
    resizing blended; ``pixels``/``edges``: each colour's pixels over all masks / on a boundary.

    ``real``: the real colours when a label map gives them (other colours are then in neither result); None =
    found here, most pixels first: each colour is real unless it blends the real ones found before it, then
    re-checked against the final set (a tiny class can have fewer pixels than the blends along its own edge).
    """

    def is_blendlike(colour: Rgb) -> bool:
        return edges.get(colour, 0) >= BLEND_EDGE_FRACTION * pixels[colour] > 0

    by_count = sorted(pixels, key=lambda c: (-pixels[c], c))
    if real is None:
        found: list[Rgb] = []
        for colour in by_count:
            if not (len(found) >= 2 and is_blendlike(colour) and _blend_sources(colour, found, pixels)):
                found.append(colour)

        def blend_of_others(colour: Rgb) -> bool:
            return is_blendlike(colour) and bool(_blend_sources(colour, [r for r in found if r != colour], pixels))

        # Drop late "real" colours that are blends of the final set, rarest first, one at a time.
        while drop := next((c for c in sorted(found[2:], key=lambda c: pixels[c]) if blend_of_others(c)), None):
            found.remove(drop)
        real_list = found
    else:
        real_list = list(real)
    blends: dict[Rgb, Rgb] = {}
    for colour in by_count:
        if colour in real_list or not is_blendlike(colour):
            continue
        sources = _blend_sources(colour, real_list, pixels)
        if sources:  # the nearest of the colours it mixes
            blends[colour] = min(sources, key=lambda r: sum((x - y) ** 2 for x, y in zip(colour, r)))
    if real is None:  # a colour skipped as a blend of a colour that was dropped later is real after all
        real_list += [c for c in by_count if c not in blends and c not in real_list]
    return real_list, blends


def colours_to_index(rgb: np.ndarray, table: Mapping[Rgb, int], path: Path | str = "<array>") -> np.ndarray:
    """Map an H×W×3 uint8 colour mask to H×W uint8 class ids through ``table`` {(r, g, b): id}.

    Raises:
        DataError: a colour that is not in the table (naming the colour, the file and one pixel where it is).
    """
    packed = pack_rgb(np.asarray(rgb))
    colours, inverse = np.unique(packed, return_inverse=True)
    lut = np.empty(len(colours), np.uint8)
    for k, c in enumerate(colours.tolist()):
        colour = unpack_rgb(c)
        if colour not in table:
            ys, xs = np.nonzero(packed == c)
            known = ", ".join(f"{v}={k2}" for k2, v in sorted(table.items(), key=lambda kv: kv[1])[:6])
            raise DataError(
                f"Mask {path} has colour {colour} (first at x={int(xs[0])}, y={int(ys[0])}) that the label map "
                f"does not list (known: {known}); add it to labelmap.txt or repaint those pixels."
            )
        lut[k] = table[colour]
    return lut[inverse.reshape(packed.shape)]


def union_instances(paths: Sequence[Path | str], class_id: int = 1) -> np.ndarray:
    """H×W uint8: ``class_id`` wherever any per-instance mask file (DSB2018) is foreground, each thresholded on
    its own: ≥1 for 0/1 files, ≥128 otherwise (a file holds one object, so its maximum tells the encoding).

    Raises:
        DataError: no files, an unreadable file, or files of different sizes.
    """
    if not paths:
        raise DataError("No instance masks given; put one PNG per object in the masks/ folder.")
    out: np.ndarray | None = None
    for p in paths:
        raw = read_binary_source(p)
        fg = raw >= (1 if raw.size and raw.max() <= 1 else 128)
        if out is None:
            out = np.zeros(fg.shape, np.uint8)
        elif fg.shape != out.shape:
            raise DataError(
                f"Instance mask {p} is {fg.shape[1]}×{fg.shape[0]} but {Path(paths[0]).name} is {out.shape[1]}×"
                f"{out.shape[0]}; all masks of one image must have the image's size."
            )
        out[fg] = class_id
    return out


_LABELMAP_LINE = re.compile(r"^\s*([^:#][^:]*?)\s*:\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*(?::.*)?$")


def parse_labelmap(path: Path | str) -> tuple[list[str], list[Rgb]]:
    """(names, colours) of a CVAT/Datumaro ``labelmap.txt`` (``name:r,g,b::`` lines), in file order except the
    entry named background (else coloured 0,0,0; else a new ("background", (0, 0, 0))), which comes first.

    Raises:
        DataError: unreadable file, a malformed line, a channel above 255, a duplicate name or colour.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            f"Cannot read label map {path}: {e}; "
            + ("make it readable (chmod)." if isinstance(e, PermissionError) else "save it as UTF-8 text.")
        ) from e
    entries: list[tuple[str, Rgb]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _LABELMAP_LINE.match(line)
        if not m:
            raise DataError(
                f"Label map {path} line {lineno} ({line.strip()!r}) is not of the form name:r,g,b::; fix that line."
            )
        rgb = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
        if max(rgb) > 255:
            raise DataError(f"Label map {path} line {lineno} has colour {rgb} above 255; use 0..255 per channel.")
        entries.append((m.group(1).strip(), rgb))
    if not entries:
        raise DataError(f"Label map {path} lists no labels; add lines like background:0,0,0:: and polyp:255,0,0::.")
    bg = next((k for k, (n, _) in enumerate(entries) if n.lower() in BACKGROUND_NAMES), None)
    if bg is None:
        bg = next((k for k, (_, c) in enumerate(entries) if c == (0, 0, 0)), None)
    if bg is None:
        entries.insert(0, ("background", (0, 0, 0)))
    else:
        entries.insert(0, entries.pop(bg))
    names = [n for n, _ in entries]
    colours = [c for _, c in entries]
    _check_unique(names, path, "label name")
    _check_unique(colours, path, "colour")
    return names, colours


def _check_unique(items: list, path: Path, what: str) -> None:
    dup = next((it for k, it in enumerate(items) if it in items[:k]), None)
    if dup is not None:
        raise DataError(f"{path} lists {what} {dup!r} twice; each class needs its own {what}.")


def encode_index_png(mask: np.ndarray, palette: Sequence[Rgb], text: Mapping[str, str] | None = None) -> bytes:
    """An H×W uint8 class-id mask as the bytes of a mode-"P" PNG with ``palette`` embedded (255 gets VOC's cream
    unless the palette defines it), and the PNG text chunks ``text``."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be H×W, got shape {m.shape}")
    if m.dtype != np.uint8:
        if m.size and (m.min() < 0 or m.max() > 255):
            raise ValueError("mask values must fit in 0..255")
        m = m.astype(np.uint8)
    flat = np.zeros((256, 3), np.uint8)
    if len(palette) <= IGNORE_INDEX:
        flat[IGNORE_INDEX] = (224, 224, 192)
    flat[: len(palette)] = np.asarray(palette, dtype=np.int64).reshape(-1, 3).clip(0, 255)
    h, w = m.shape
    img = Image.frombytes("P", (w, h), np.ascontiguousarray(m).tobytes())
    img.putpalette(flat.reshape(-1).tolist())
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    # zlib level 3: half the time of the default 6 on masks, for somewhat bigger files.
    img.save(buffer, format="PNG", optimize=False, compress_level=3, pnginfo=info)
    return buffer.getvalue()


def write_index_png(
    path: Path | str, mask: np.ndarray, palette: Sequence[Rgb], text: Mapping[str, str] | None = None
) -> None:
    """Write :func:`encode_index_png`'s PNG of ``mask`` to ``path`` atomically (a crash never leaves half a mask)."""
    from fsdistill.runtime import write_atomic  # here: the data modules do not import torch otherwise

    path = Path(path)
    payload = encode_index_png(mask, palette, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, payload, unique=True)
