"""Find the image/mask pairs and the classes in a support folder, whatever layout the user already has.

The folder layouts are found in :mod:`fsdistill.data.layouts`.

Mask kinds (``SupportIndex.mask_kind``) for paired folders are read off the mask values of all masks: 0/1 or
0/255 → ``binary``; other values → ``index`` (value = class id, 255 = ignore); colours → ``rgb``; JPEG files →
``jpeg-binary`` (threshold 128); 16-bit label images with values > 255 → ``instances`` (every label > 0 is
foreground). Anti-aliased binary masks (mostly 0/255 with a fringe of greys, common after resizing) are
thresholded at 128 with a warning rather than read as dozens of classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fsdistill.data.classes import (
    coco_class_names,
    find_names_file,
    instance_class_names,
    names_source,
    read_class_names,
)
from fsdistill.data.images import _PIL_ERRORS
from fsdistill.data.layouts import LAYOUTS, MASK_STEM_SUFFIXES, FoundPairs, find_pairs, is_hidden
from fsdistill.data.masks import (
    IGNORE_INDEX,
    Rgb,
    default_palette,
    edge_pixels,
    pack_rgb,
    parse_labelmap,
    read_binary_source,
    read_mask_array,
    resolve_blends,
)
from fsdistill.data.support_index import Sample, SupportIndex
from fsdistill.errors import DataError

__all__ = ["Sample", "SupportIndex", "discover", "read_class_names", "LAYOUTS", "MASK_KINDS", "MASK_STEM_SUFFIXES"]

MASK_KINDS = ("binary", "index", "rgb", "coco", "instances", "jpeg-binary")

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# VOC paints "difficult/boundary" pixels in this colour; in colour masks without a label map it means ignore.
VOC_IGNORE_COLOUR = (224, 224, 192)
MAX_AUTO_COLOURS = 64  # more real colours than this without a label map means noise or lossy saving
# Distinct colours read from the masks before giving up on them (smoothed edges of a few classes stay far below:
# at most 256 mixtures per pair of colours).
MAX_SCANNED_COLOURS = 4096


# --------------------------------------------------------------------------------------------- mask kinds


@dataclass
class _MaskStats:
    hist: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    colours: set[int] = field(default_factory=set)
    pixels: dict[int, int] = field(default_factory=dict)  # packed colour -> pixels over all masks
    edges: dict[int, int] = field(default_factory=dict)  # packed colour -> those of its pixels on a boundary
    colour_example: Path | None = None
    too_many_colours: Path | None = None
    wide_max: int = 0
    wide_example: Path | None = None
    palette_mode: bool = False


def _scan_masks(paths: Sequence[Path]) -> _MaskStats:
    """Read every mask once: value histogram of grey/palette masks, colours of colour masks, 16-bit maxima."""
    st = _MaskStats()
    grey_colours: set[int] = set()
    grey_pixels = np.zeros(256, np.int64)
    for p in paths:
        try:
            with Image.open(p) as im:
                st.palette_mode |= im.mode in ("P", "PA")
        except _PIL_ERRORS:
            pass  # decoding the pair reports it with the file name
        try:
            a = read_mask_array(p)
        except DataError:
            # Left out of the kind decision only: decoding the pair raises the same error, and check collects
            # every such error instead of stopping at the first unreadable mask here.
            continue
        if a.ndim == 3:
            if st.too_many_colours is None:
                packed = pack_rgb(a)
                colours, counts = np.unique(packed, return_counts=True)
                on_edge, edge_counts = np.unique(packed[edge_pixels(packed)], return_counts=True)
                for table, keys, values in ((st.pixels, colours, counts), (st.edges, on_edge, edge_counts)):
                    for c, n in zip(keys.tolist(), values.tolist()):
                        table[c] = table.get(c, 0) + n
                st.colours.update(colours.tolist())
                st.colour_example = st.colour_example or p
                if len(st.colours) > MAX_SCANNED_COLOURS:
                    st.too_many_colours = p
            continue
        if a.dtype != np.uint8:
            mx = int(a.max(initial=0))
            if a.size and int(a.min()) < 0:
                raise DataError(f"Mask {p} has negative values; class ids and instance labels must be ≥ 0.")
            if mx > 255:
                st.wide_max, st.wide_example = max(st.wide_max, mx), st.wide_example or p
                continue
            a = a.astype(np.uint8)
        h = np.bincount(a.ravel(), minlength=256)
        st.hist += h
        grey_pixels += h
        grey_colours.update(int(v) * 0x010101 for v in np.flatnonzero(h))
    if st.colours:
        st.colours |= grey_colours  # grey masks in a colour-mask set: their greys are colours too
        for v in np.flatnonzero(grey_pixels).tolist():  # (no edge counts: never taken for blends)
            st.pixels[v * 0x010101] = st.pixels.get(v * 0x010101, 0) + int(grey_pixels[v])
    return st


def _unpack(c: int) -> Rgb:
    return ((c >> 16) & 255, (c >> 8) & 255, c & 255)


def _blend_warning(blends: dict[Rgb, Rgb], pixels: dict[Rgb, int], real_count: int, what: str) -> str:
    example = max(blends, key=lambda c: pixels[c])
    return (
        f"{len(blends)} colours in the masks lie between {what} on object edges, as smoothing or resizing a colour "
        f"mask leaves them (e.g. {example} on {pixels[example]} pixels, read as {blends[example]}); each was mapped "
        f"to the nearest of the {real_count} real colours, not made a class: resize masks with nearest-neighbour "
        "to keep exact colours."
    )


def _index_pixels(hist: np.ndarray, n: int) -> list[int]:
    """Pixels of class ids 0..n-1 from a value histogram of index masks."""
    return [int(hist[k]) for k in range(min(n, IGNORE_INDEX))] + [0] * max(0, n - IGNORE_INDEX)


def _table_pixels(st: _MaskStats, table: dict[Rgb, int], n: int) -> list[int]:
    """Pixels of class ids 0..n-1 of colour masks through their colour table (unknown colours not counted)."""
    out = [0] * n
    for c, count in st.pixels.items():
        k = table.get(_unpack(c))
        if k is not None and k < n:
            out[k] += count
    return out


def _spans(values: list[int]) -> str:
    """[3, 4, 5, 6, 9] → "3-6, 9"."""
    parts: list[str] = []
    for v in values:
        if parts and int(parts[-1].split("-")[-1]) == v - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{v}"
        else:
            parts.append(str(v))
    return ", ".join(parts)


def _looks_antialiased(hist: np.ndarray, palette_mode: bool) -> bool:
    """0/255 masks with a fringe of intermediate greys (resized or blurred binary masks).

    Index masks use a few small ids and, when 255 appears, it is a thin ignore border; anti-aliased binary
    masks have many distinct greys and far more 255 (object) pixels than grey ones.
    """
    if palette_mode or hist[255] == 0:
        return False
    mid = hist[2:255]
    return int(np.count_nonzero(mid)) >= 4 and int(mid.sum()) < int(hist[255])


def _decide_kind(found: FoundPairs, names_file: Path | None, warnings: list[str]) -> dict[str, Any]:
    """Mask kind, class names, palette, threshold and colour table of a paired/flat/class-folder set."""
    masks = [s.mask_paths[0] for s in found.samples]
    file_names = read_class_names(names_file) if names_file and names_file.name.lower() != "labelmap.txt" else None
    src = names_file.name if names_file else "defaults"
    jpeg = [m for m in masks if m.suffix.lower() in JPEG_SUFFIXES]
    if jpeg:
        warnings.append(
            f"{len(jpeg)} of {len(masks)} masks are JPEG (e.g. {jpeg[0].name}); JPEG blurs mask edges, so they are "
            "thresholded at 128 as binary masks. Save masks as PNG to keep exact edges."
        )

    if found.layout == "class-folders":
        assert found.class_folders is not None
        if jpeg:
            thr = 128
        else:
            hist = np.zeros(256, np.int64)
            for m in masks:
                hist += np.bincount(read_binary_source(m).ravel(), minlength=256)
            thr = 1 if hist[2:].sum() == 0 else 128
        names = ["background", *found.class_folders]
        return dict(kind="jpeg-binary" if jpeg else "binary", names=names, palette=default_palette(len(names)),
                    threshold=thr, table=None, source="class folder names")  # fmt: skip

    st: _MaskStats | None = None
    if names_file is not None and names_file.name.lower() == "labelmap.txt":
        names, colours = parse_labelmap(names_file)
        st = None if jpeg else _scan_masks(masks)
        if st is not None and not st.colours and not st.palette_mode and not st.wide_max:
            # Grey index masks beside a label map: the values are the class ids and the label map names them.
            return dict(kind="index", names=names, palette=colours, threshold=128, table=None, source=names_file.name,
                        class_pixels=_index_pixels(st.hist, len(names)))  # fmt: skip
        if jpeg:
            raise DataError(
                f"Masks in {found.mask_dir or found.data_root} are JPEG but {names_file} maps colours to classes; "
                "JPEG changes colours, so export the colour masks as PNG."
            )
        table = {c: k for k, c in enumerate(colours)}
        if st is not None and any(_unpack(c) not in table for c in st.pixels):
            # Blends of label-map colours (smoothed edges) go to the nearest one; other unknown colours stay
            # unknown, and decoding reports them with the file and a pixel.
            pixels = {_unpack(c): n for c, n in st.pixels.items()}
            _, blends = resolve_blends(pixels, {_unpack(c): n for c, n in st.edges.items()}, real=colours)
            if blends:
                table.update({c: table[target] for c, target in blends.items()})
                warnings.append(_blend_warning(blends, pixels, len(colours), f"the colours of {names_file.name}"))
        return dict(kind="rgb", names=names, palette=colours, threshold=128, table=table, source=names_file.name,
                    class_pixels=None if st is None else _table_pixels(st, table, len(names)))  # fmt: skip

    def binary_names() -> list[str]:
        if file_names is not None and len(file_names) != 2:
            return []
        return file_names or ["background", "foreground"]

    if jpeg:
        names = binary_names()
        if not names:
            raise DataError(
                f"Masks in {found.mask_dir or found.data_root} are JPEG, which can only hold binary masks, but "
                f"{names_file} lists {len(file_names or [])} classes; save the masks as index PNGs."
            )
        return dict(kind="jpeg-binary", names=names, palette=default_palette(2), threshold=128, table=None, source=src)

    st = st or _scan_masks(masks)
    if st.colours:
        if st.too_many_colours is not None:
            raise DataError(
                f"Mask {st.too_many_colours} has more than {MAX_SCANNED_COLOURS} colours, too many for class colours "
                "(lossy saving or noise?); add a labelmap.txt (name:r,g,b::) or save index PNG masks."
            )
        pixels = {_unpack(c): n for c, n in st.pixels.items()}
        # Smoothed edges hold dozens of mixtures of the real colours; each became a "class" before (24 classes
        # from a 2-colour mask resized bilinearly, with only tiny-class warnings).
        real, blends = resolve_blends(pixels, {_unpack(c): n for c, n in st.edges.items()})
        if len(set(real) - {(0, 0, 0), VOC_IGNORE_COLOUR}) > MAX_AUTO_COLOURS:
            raise DataError(
                f"Masks such as {st.colour_example} have {len(real)} distinct colours besides edge blends, too many "
                f"for class colours (more than {MAX_AUTO_COLOURS}; lossy saving or noise?); add a labelmap.txt "
                "(name:r,g,b::) or save index PNG masks."
            )
        if blends:
            warnings.append(_blend_warning(blends, pixels, len(real), "the real colours"))
        cols = sorted(set(real) - {(0, 0, 0)})
        table: dict[Rgb, int] = {(0, 0, 0): 0}
        if VOC_IGNORE_COLOUR in cols:
            cols.remove(VOC_IGNORE_COLOUR)
            table[VOC_IGNORE_COLOUR] = IGNORE_INDEX
            warnings.append(f"Colour {VOC_IGNORE_COLOUR} in the masks is read as ignore (255), as in Pascal VOC.")
        table.update({c: k for k, c in enumerate(cols, 1)})
        table.update({c: table[target] for c, target in blends.items()})
        if len(cols) == 1:
            names = binary_names() or ["background", "foreground"]
        elif file_names is not None:
            raise DataError(
                f"Masks in {found.mask_dir or found.data_root} use {len(cols)} colours but {names_file} does not say "
                "which colour is which class; replace it with a labelmap.txt (name:r,g,b:: per line)."
            )
        else:
            names = ["background", *(f"class_{k}" for k in range(1, len(cols) + 1))]
            warnings.append(
                f"Colour masks without a labelmap.txt: {len(cols)} colours became classes class_1..class_{len(cols)} "
                "in RGB order; add labelmap.txt (name:r,g,b::) to name them."
            )
        return dict(kind="rgb", names=names, palette=[(0, 0, 0), *cols], threshold=128, table=table, source=src,
                    class_pixels=_table_pixels(st, table, len(names)))  # fmt: skip

    if st.wide_max:
        names = binary_names() or ["background", "foreground"]
        warnings.append(
            f"Masks such as {st.wide_example.name if st.wide_example else '?'} hold 16-bit labels up to {st.wide_max}; "
            "they are read as instance labels and every label > 0 becomes foreground."
        )
        return dict(kind="instances", names=names, palette=default_palette(2), threshold=1, table=None, source=src)

    hist = st.hist
    values = set(np.flatnonzero(hist).tolist())
    anti = _looks_antialiased(hist, st.palette_mode)
    if anti:
        warnings.append(
            "Masks are mostly 0/255 with some grey edge pixels (resized or blurred?); they are read as binary "
            "masks thresholded at 128."
        )
    if file_names is not None and len(file_names) > 2:
        return dict(kind="index", names=file_names, palette=default_palette(len(file_names)), threshold=128,
                    table=None, source=src, class_pixels=_index_pixels(hist, len(file_names)))  # fmt: skip
    if values <= {0, 1}:
        return dict(kind="binary", names=binary_names(), palette=default_palette(2), threshold=1, table=None,
                    source=src)  # fmt: skip
    if values <= {0, 255} or anti:
        return dict(kind="binary", names=binary_names(), palette=default_palette(2), threshold=128, table=None,
                    source=src)  # fmt: skip
    if file_names is not None:
        return dict(kind="index", names=file_names, palette=default_palette(len(file_names)), threshold=128,
                    table=None, source=src, class_pixels=_index_pixels(hist, len(file_names)))  # fmt: skip
    ids = sorted(values - {IGNORE_INDEX, 0})
    if ids != list(range(1, len(ids) + 1)):
        # Values with gaps ({0, 1, 2, 7}): every value up to the largest used to be a class, so 3..6 became empty
        # classes that were trained as "never present". The values that occur become the classes, in order, and
        # keep their value in their name.
        value_map = np.arange(256, dtype=np.uint8)
        value_map[ids] = np.arange(1, len(ids) + 1)
        names = ["background", *(f"class_{v}" for v in ids)]
        missing = sorted(set(range(1, ids[-1])) - set(ids))
        warnings.append(
            f"No names file and mask values {', '.join(map(str, ids))} with gaps ({_spans(missing)} unused): the "
            f"classes are {', '.join(names[1:])}, numbered 1..{len(ids)} in the model and its predicted masks; add "
            "classes.txt (one name per line, background first) to name them, or renumber the masks to 1.."
            f"{len(ids)}."
        )
        return dict(kind="index", names=names, palette=default_palette(len(names)), threshold=128, table=None,
                    source="mask values", value_map=value_map,
                    class_pixels=[int(hist[0]), *(int(hist[v]) for v in ids)])  # fmt: skip
    top = ids[-1] if ids else 0
    n = top + 1
    names = ["background", "foreground"] if n == 2 else ["background", *(f"class_{k}" for k in range(1, n))]
    if n > 2:
        warnings.append(
            f"No names file: mask values 1..{top} became classes class_1..class_{top}; add classes.txt (one name per "
            "line, background first) to name them."
        )
    return dict(kind="index", names=names, palette=default_palette(n), threshold=128, table=None,
                source="mask values", class_pixels=_index_pixels(hist, n))  # fmt: skip


# ------------------------------------------------------------------------------------------------- discover


def discover(root: Path | str) -> SupportIndex:
    """Detect the layout of a support folder and index its image/mask pairs.

    Reads every mask once (PNG masks only; COCO and DSB2018 are not scanned) to tell binary from index and
    colour masks and to count classes; images are not decoded.

    Raises:
        DataError: the folder is missing, a file, empty, or holds no image/mask pairs in any known layout.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"Support folder {root} does not exist; check the path.")
    if not root.is_dir():
        raise DataError(f"{root} is a file, not a folder; pass the folder that holds the images and masks.")
    try:
        entries = [p for p in root.iterdir() if not is_hidden(p)]
    except OSError as e:
        raise DataError(f"Cannot list support folder {root}: {e.strerror or e}; check its permissions.") from e
    if not entries:
        raise DataError(f"Support folder {root} is empty; put images and masks in it (for example images/ + masks/).")

    found = find_pairs(root)

    warnings = list(found.warnings)
    samples = sorted(found.samples, key=lambda s: s.key)
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):  # pragma: no cover - detectors key by unique relative paths
        dup = next(k for k in keys if keys.count(k) > 1)
        raise DataError(f"Two images in {found.data_root} have the key {dup!r}; rename one.")

    idx = SupportIndex(
        root=root,
        layout=found.layout,
        mask_kind="binary",
        class_names=[],
        palette=[],
        samples=samples,
        orphan_images=sorted(found.orphan_images),
        orphan_masks=sorted(found.orphan_masks),
        warnings=warnings,
        data_root=found.data_root,
    )
    if found.layout == "coco":
        assert found.coco is not None
        idx.mask_kind, idx.coco, idx.names_source = "coco", found.coco, f"COCO categories of {found.coco.path.name}"
        idx.class_names = coco_class_names(found.coco)
        idx.palette = default_palette(len(idx.class_names))
    elif found.layout == "dsb2018":
        names_file = find_names_file([found.data_root, root])
        names = instance_class_names(names_file)
        idx.mask_kind, idx.class_names, idx.palette = "instances", names, default_palette(2)
        idx.names_source = names_source(names_file)
    else:
        names_file = None if found.layout == "class-folders" else find_names_file([found.data_root, root])
        d = _decide_kind(found, names_file, warnings)
        idx.mask_kind, idx.class_names, idx.palette = d["kind"], d["names"], [tuple(c) for c in d["palette"]]
        idx.binary_threshold, idx.colour_table, idx.names_source = d["threshold"], d["table"], d["source"]
        idx.value_map, idx.class_pixels = d.get("value_map"), d.get("class_pixels")
        from_labelmap = names_file is not None and names_file.name.lower() == "labelmap.txt"
        if from_labelmap and found.mask_dir is not None and found.mask_dir.name.lower().startswith("segmentationclass"):
            idx.layout = "cvat"  # CVAT/Datumaro "Segmentation mask 1.1" export
    if len(idx.class_names) > IGNORE_INDEX:
        raise DataError(
            f"{root} defines {len(idx.class_names) - 1} classes but masks hold at most {IGNORE_INDEX - 1} (255 means "
            "ignore); split the support folder into smaller sets of classes."
        )
    if idx.orphan_images:
        warnings.append(
            f"{len(idx.orphan_images)} images have no mask (e.g. {idx.orphan_images[0].name}); they are not used."
        )
    if idx.orphan_masks:
        warnings.append(
            f"{len(idx.orphan_masks)} masks have no image (e.g. {idx.orphan_masks[0].name}); they are not used."
        )
    return idx
