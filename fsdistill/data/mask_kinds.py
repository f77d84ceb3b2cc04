"""Decide how the mask files of a support folder encode classes (``SupportIndex.mask_kind``), and which classes;
paired masks are read once (:func:`scan_masks`) and classified by their values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image

from fsdistill.data.classes import (
    BINARY_NAMES,
    background_first,
    binary_class_names,
    is_labelmap,
    names_source,
    read_class_names,
)
from fsdistill.data.coco import CocoData
from fsdistill.data.images import _PIL_ERRORS
from fsdistill.data.labelstudio import LabelStudioData
from fsdistill.data.masks import (
    BACKGROUND_NAMES,
    IGNORE_INDEX,
    Rgb,
    default_palette,
    edge_pixels,
    pack_rgb,
    parse_labelmap,
    read_binary_source,
    read_mask_array,
    read_rgb_mask,
    resolve_blends,
    unpack_rgb,
)
from fsdistill.errors import DataError

__all__ = [
    "MaskDecoding",
    "coco_decoding",
    "decide_mask_kind",
    "instance_files_decoding",
    "labelstudio_decoding",
]

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# VOC paints "difficult/boundary" pixels in this colour; in colour masks without a label map it means ignore.
VOC_IGNORE_COLOUR = (224, 224, 192)
MAX_AUTO_COLOURS = 64  # more real colours than this without a label map means noise or lossy saving
# Distinct colours read from the masks before giving up on them (smoothed edges of a few classes stay far below:
# at most 256 mixtures per pair of colours).
MAX_SCANNED_COLOURS = 4096
# Grey values 1..k with k at most this are read as class ids, never as the fringe of a resized binary mask (a blur
# leaves most values 1..254; a resize by area averaging 64 / 128 / 191).
MAX_INDEX_RUN = 32


@dataclass(frozen=True)
class MaskDecoding:
    """How a folder's masks decode to class ids, the classes they hold, and the warnings deciding it gave; the
    fields are :class:`~fsdistill.data.support_index.SupportIndex`'s of the same names (``kind``: ``mask_kind``).
    """

    kind: str
    class_names: tuple[str, ...]
    palette: tuple[Rgb, ...]
    names_source: str
    binary_threshold: int = 128
    colour_table: dict[Rgb, int] | None = None
    value_map: np.ndarray | None = None
    class_pixels: tuple[int, ...] | None = None
    warnings: tuple[str, ...] = ()


def _decoding(kind: str, names: Sequence[str], source: str, **details) -> MaskDecoding:
    """A MaskDecoding whose palette is the default one for its classes."""
    return MaskDecoding(kind, tuple(names), tuple(default_palette(len(names))), source, **details)


def _blend_warning(blends: dict[Rgb, Rgb], pixels: dict[Rgb, int], real_count: int, what: str) -> str:
    example = max(blends, key=lambda c: pixels[c])
    return (
        f"{len(blends)} colours in the masks lie between {what} on object edges, as smoothing or resizing a colour "
        f"mask leaves them (e.g. {example} on {pixels[example]} pixels, read as {blends[example]}); each was mapped "
        f"to the nearest of the {real_count} real colours, not made a class: resize masks with nearest-neighbour "
        "to keep exact colours."
    )


def _spans(values: list[int]) -> str:
    """[3, 4, 5, 6, 9] → "3-6, 9"."""
    runs = [[v for _, v in run] for _, run in groupby(enumerate(values), lambda kv: kv[1] - kv[0])]
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


@dataclass(frozen=True)
class MaskStats:
    """What one read of every mask saw. ``hist``: (256,) pixels per value of grey/palette masks. ``pixels``/``edges``:
    colour → its pixels over all masks / on an object boundary (empty without colour masks). ``too_many_colours``:
    the mask at which MAX_SCANNED_COLOURS was passed. ``wide_max``: the largest label above 255 (0 if none).
    ``grey_edges``: (256,) pixels per value of grey masks that have a 4-neighbour of another value.
    """

    hist: np.ndarray
    pixels: Mapping[Rgb, int]
    edges: Mapping[Rgb, int]
    colour_example: Path | None
    too_many_colours: Path | None
    wide_max: int
    wide_example: Path | None
    palette_mode: bool
    grey_edges: np.ndarray
    # Grey files whose values are {0, 1} / {0, 255} / anything else (a folder gathered from two tools mixes the
    # first two: each file is binary in its own encoding).
    binary_encodings: tuple[int, int, int] = (0, 0, 0)

    def index_pixels(self, n: int) -> tuple[int, ...]:
        """Pixels of class ids 0..n-1, reading the grey values as class ids."""
        return tuple([int(self.hist[k]) for k in range(min(n, IGNORE_INDEX))] + [0] * max(0, n - IGNORE_INDEX))

    def table_pixels(self, table: Mapping[Rgb, int], n: int) -> tuple[int, ...]:
        """Pixels of class ids 0..n-1 of colour masks through their colour table (unknown colours not counted)."""
        out = [0] * n
        for c, count in self.pixels.items():
            k = table.get(c)
            if k is not None and k < n:
                out[k] += count
        return tuple(out)

    def looks_antialiased(self) -> bool:
        """0/255 masks with a fringe of greys (resized or blurred binary masks): more 255 pixels than grey ones, and
        the greys lie on boundaries (at least half of their pixels have a neighbour of another value), unlike the
        ids of index masks, which fill regions; nor are the greys ids 1..k, however large the 255 (ignore) areas.
        A halving with area averaging leaves only 64, 128 and 191; a blur, most values 1..254."""
        hist = self.hist
        if self.palette_mode or hist[255] == 0:
            return False
        greys = np.flatnonzero(hist[1:255]) + 1
        grey_pixels = int(hist[2:255].sum())
        if grey_pixels == 0 or grey_pixels >= int(hist[255]):
            return False
        if greys[-1] == len(greys) and len(greys) <= MAX_INDEX_RUN:  # 1..k: class ids beside ignore areas
            return False
        return 2 * int(self.grey_edges[2:255].sum()) >= grey_pixels


def scan_masks(paths: Sequence[Path]) -> MaskStats:
    """Read every mask once: value histogram of grey/palette masks, colours of colour masks, 16-bit maxima.

    Palette masks are read by index (VOC: index = class) while every file gives each index it uses the same colour;
    when their palettes disagree (a PNG optimiser orders each file's palette its own way) or colour masks are among
    them, they are read by colour, as colour masks (``palette_mode`` False then).

    Raises:
        DataError: a mask with negative values (unreadable masks are skipped: decoding reports them).
    """
    hist = np.zeros(256, np.int64)
    grey_edges = np.zeros(256, np.int64)
    encodings = [0, 0, 0]  # grey files of values {0, 1}, {0, 255}, other
    pixels: Counter[int] = Counter()  # packed colour → pixels (keys: every colour seen)
    edges: Counter[int] = Counter()
    colour_example: Path | None = None
    too_many_colours: Path | None = None
    wide_example: Path | None = None
    wide_max, palette_mode = 0, False
    palette_files: list[Path] = []
    palette_hist, palette_edges = np.zeros(256, np.int64), np.zeros(256, np.int64)
    index_colours: dict[int, set[Rgb]] = {}  # palette index → the colours files give it

    def add_colours(rgb: np.ndarray) -> None:
        packed = pack_rgb(rgb)
        found, counts = np.unique(packed, return_counts=True)
        pixels.update(dict(zip(found.tolist(), counts.tolist())))
        on_edge, edge_counts = np.unique(packed[edge_pixels(packed)], return_counts=True)
        edges.update(dict(zip(on_edge.tolist(), edge_counts.tolist())))

    for p in paths:
        palette: list[int] | None = None
        try:
            with Image.open(p) as im:
                if im.mode in ("P", "PA"):
                    palette_mode, palette = True, im.getpalette() or []
        except _PIL_ERRORS:
            pass  # decoding the pair reports it with the file name
        try:
            a = read_mask_array(p)
        except DataError:
            # Decoding the pair raises the same error, and check collects them all instead of stopping here.
            continue
        if palette is not None:
            counts = np.bincount(a.ravel(), minlength=256)
            palette_files.append(p)
            palette_hist += counts
            palette_edges += np.bincount(a[edge_pixels(a)], minlength=256)
            for k in np.flatnonzero(counts).tolist():
                colour = tuple(palette[3 * k : 3 * k + 3])
                index_colours.setdefault(k, set()).add(colour if len(colour) == 3 else (k, k, k))
        if a.ndim == 3:
            if too_many_colours is None:
                add_colours(a)
                colour_example = colour_example or p
                if len(pixels) > MAX_SCANNED_COLOURS:
                    too_many_colours = p
            continue
        if a.dtype != np.uint8:
            mx = int(a.max(initial=0))
            if a.size and int(a.min()) < 0:
                raise DataError(f"Mask {p} has negative values; class ids and instance labels must be ≥ 0.")
            if mx > 255:
                wide_max, wide_example = max(wide_max, mx), wide_example or p
                continue
            a = a.astype(np.uint8)
        counts = np.bincount(a.ravel(), minlength=256)
        hist += counts
        grey_edges += np.bincount(a[edge_pixels(a)], minlength=256)
        found = set(np.flatnonzero(counts).tolist()) - {0}
        encodings[0 if found == {1} else 1 if found == {255} else 2] += 1
    if palette_files and (pixels or any(len(colours) > 1 for colours in index_colours.values())):
        # Indices that mean other colours in other files (or beside colour masks): the colours are the classes.
        hist -= palette_hist
        grey_edges -= palette_edges
        palette_mode = False
        for p in palette_files:
            add_colours(read_rgb_mask(p))
            colour_example = colour_example or p
    if pixels:  # grey masks in a colour-mask set: their greys are colours too (no edge counts: never blends)
        pixels.update({v * 0x010101: int(hist[v]) for v in np.flatnonzero(hist).tolist()})
    by_rgb = {unpack_rgb(c): n for c, n in pixels.items()}
    edges_by_rgb = {unpack_rgb(c): n for c, n in edges.items()}
    return MaskStats(
        hist, by_rgb, edges_by_rgb, colour_example, too_many_colours, wide_max, wide_example, palette_mode, grey_edges,
        tuple(encodings),
    )  # fmt: skip


def coco_decoding(coco: CocoData) -> MaskDecoding:
    """COCO polygons and RLE: the categories, in file order, are the classes after background.

    Raises:
        DataError: an empty or duplicate name, or a category named background (id 0 is background).
    """
    names = background_first(list(coco.names), coco.path)
    if len(names) != len(coco.names) + 1:
        raise DataError(f"COCO file {coco.path} has a category named background; rename it (background is id 0).")
    return _decoding("coco", names, f"COCO categories of {coco.path.name}")


def labelstudio_decoding(export: LabelStudioData, names_file: Path | None) -> MaskDecoding:
    """Label Studio regions: the classes of the labelling config beside the export, else of a names file, else the
    labels its regions use in name order (with a warning).

    Raises:
        DataError: a region label that the config or names file does not list.
    """
    warnings: tuple[str, ...] = ()
    palette: list[Rgb] | None = None
    if export.config is not None:
        names = ["background", *(n for n in export.config.labels if n.lower() not in BACKGROUND_NAMES)]
        source = export.config.path.name
        if export.config.colours is not None and len(export.config.colours) == len(names) - 1:
            palette = [(0, 0, 0), *export.config.colours]
    elif names_file is not None:
        names = read_class_names(names_file)
        source = names_source(names_file)
        if is_labelmap(names_file):
            palette = parse_labelmap(names_file)[1]
    else:
        names = ["background", *sorted(n for n in export.labels if n.lower() not in BACKGROUND_NAMES)]
        source = f"the labels of {export.path.name}"
        if len(names) > 2:
            warnings = (
                f"The classes are the labels of {export.path.name} in name order ({', '.join(names[1:])}); put the "
                "project's labelling config (labelstudio_config.xml) or a classes.txt beside it to keep its order.",
            )
    unknown = [n for n in export.labels if n not in names and n.lower() not in BACKGROUND_NAMES]
    if unknown:
        raise DataError(
            f"Label Studio export {export.path.name} uses the label {unknown[0]!r} ({export.first_task_with(unknown[0])}) "
            f"that {source} does not list; add it there or relabel those regions."
        )
    if palette is None or len(set(palette)) != len(palette):
        palette = default_palette(len(names))
    return MaskDecoding("labelstudio", tuple(names), tuple(palette), source, warnings=warnings)


def instance_files_decoding(names_file: Path | None) -> MaskDecoding:
    """DSB2018 per-object mask files, unioned into one foreground class.

    Raises:
        DataError: the names file lists more or fewer than one class.
    """
    names = read_class_names(names_file) if names_file else list(BINARY_NAMES)
    if len(names) != 2:
        raise DataError(
            f"DSB2018 instance masks are binary but {names_file} lists {len(names)} classes; list one class."
        )
    return _decoding("instances", names, names_source(names_file))


def decide_mask_kind(
    masks: Sequence[Path], where: Path, names_file: Path | None, class_folders: Sequence[str] | None = None
) -> MaskDecoding:
    """How the masks of a paired, flat or class-folder set decode (``masks``: one per pair, in layout order).

    Args:
        where: the mask folder (or the folder of the pairs), named in messages.
        class_folders: the class folder names of a class-folders layout (class ids 1.. in this order), else None.

    Raises:
        DataError: a names file or label map that does not fit the masks, or masks that cannot be classes
            (JPEG colour masks, too many colours, negative values).
    """
    file_names = read_class_names(names_file) if names_file and not is_labelmap(names_file) else None
    jpeg = [m for m in masks if m.suffix.lower() in JPEG_SUFFIXES]
    first: tuple[str, ...] = ()
    if jpeg:
        first = (
            f"{len(jpeg)} of {len(masks)} masks are JPEG (e.g. {jpeg[0].name}); JPEG blurs mask edges, so they are "
            "read as binary masks, each thresholded at half its brightest value. Save masks as PNG to keep exact "
            "edges.",
        )
    if class_folders is not None:
        decoding = _class_folder_decoding(masks, class_folders, bool(jpeg))
    elif names_file is not None and is_labelmap(names_file):
        decoding = _labelmap_decoding(masks, names_file, where, bool(jpeg))
    elif jpeg:
        names = binary_class_names(file_names)
        if not names:
            raise DataError(
                f"Masks in {where} are JPEG, which can only hold binary masks, but {names_file} lists "
                f"{len(file_names or [])} classes; save the masks as index PNGs."
            )
        decoding = _decoding("jpeg-binary", names, names_source(names_file))
    else:
        st = scan_masks(masks)
        if st.pixels:
            decoding = _colour_decoding(st, file_names, names_file, where)
        elif st.wide_max:
            wide = (
                f"Masks such as {st.wide_example.name if st.wide_example else '?'} hold 16-bit labels up to "
                f"{st.wide_max}; they are read as instance labels and every label > 0 becomes foreground."
            )
            names = binary_class_names(file_names)
            if not names:  # the names file lists classes that instance labels cannot tell apart
                raise DataError(
                    f"Masks in {where} hold 16-bit values up to {st.wide_max} (e.g. "
                    f"{st.wide_example.name if st.wide_example else '?'}), read as instance labels of one class, but "
                    f"{names_file} lists {len(file_names or [])} classes; save the masks with class ids 0.."
                    f"{len(file_names or []) - 1} (8-bit PNG)."
                )
            decoding = _decoding("instances", names, names_source(names_file), binary_threshold=1, warnings=(wide,))
        else:
            decoding = _grey_decoding(st, file_names, names_source(names_file))
    return replace(decoding, warnings=(*first, *decoding.warnings))


def _class_folder_decoding(masks: Sequence[Path], class_folders: Sequence[str], jpeg: bool) -> MaskDecoding:
    """Binary masks whose foreground is their folder's class; 0/1 masks get threshold 1 (each 0/1 file among 0/255
    ones too: :meth:`~fsdistill.data.support_index.SupportIndex.load_mask`)."""
    thr = 128 if jpeg or max(int(read_binary_source(m).max(initial=0)) for m in masks) > 1 else 1
    names = ("background", *class_folders)
    return _decoding("jpeg-binary" if jpeg else "binary", names, "class folder names", binary_threshold=thr)


def _labelmap_decoding(masks: Sequence[Path], labelmap: Path, where: Path, jpeg: bool) -> MaskDecoding:
    """Masks beside a CVAT ``labelmap.txt``: colour masks through its colours, or grey index masks it names."""
    names, colours = parse_labelmap(labelmap)
    if jpeg:
        raise DataError(
            f"Masks in {where} are JPEG but {labelmap} maps colours to classes; JPEG changes colours, so export the "
            "colour masks as PNG."
        )
    st = scan_masks(masks)
    if not st.pixels and not st.palette_mode and not st.wide_max:
        # Grey index masks beside a label map: the values are the class ids and the label map names them.
        return MaskDecoding(
            "index", tuple(names), tuple(colours), labelmap.name, class_pixels=st.index_pixels(len(names))
        )
    table = {c: k for k, c in enumerate(colours)}
    warnings: tuple[str, ...] = ()
    if any(c not in table for c in st.pixels):
        # Blends of label-map colours (smoothed edges) go to the nearest one; other unknown colours stay
        # unknown, and decoding reports them with the file and a pixel.
        _, blends = resolve_blends(st.pixels, st.edges, real=colours)
        if blends:
            table.update({c: table[target] for c, target in blends.items()})
            warnings = (_blend_warning(blends, st.pixels, len(colours), f"the colours of {labelmap.name}"),)
    return MaskDecoding(
        "rgb",
        tuple(names),
        tuple(colours),
        labelmap.name,
        colour_table=table,
        class_pixels=st.table_pixels(table, len(names)),
        warnings=warnings,
    )


def _colour_decoding(st: MaskStats, file_names: list[str] | None, names_file: Path | None, where: Path) -> MaskDecoding:
    """Colour masks without a label map: each real colour is a class, in RGB order; edge blends join the nearest."""
    if st.too_many_colours is not None:
        raise DataError(
            f"Mask {st.too_many_colours} has more than {MAX_SCANNED_COLOURS} colours, too many for class colours "
            "(lossy saving or noise?); add a labelmap.txt (name:r,g,b::) or save index PNG masks."
        )
    # Smoothed edges hold dozens of mixtures of the real colours; each would otherwise become a class (a 2-colour
    # mask resized bilinearly gives dozens), with only tiny-class warnings to show for it.
    real, blends = resolve_blends(st.pixels, st.edges)
    if len(set(real) - {(0, 0, 0), VOC_IGNORE_COLOUR}) > MAX_AUTO_COLOURS:
        raise DataError(
            f"Masks such as {st.colour_example} have {len(real)} distinct colours besides edge blends, too many "
            f"for class colours (more than {MAX_AUTO_COLOURS}; lossy saving or noise?); add a labelmap.txt "
            "(name:r,g,b::) or save index PNG masks."
        )
    warnings: list[str] = []
    if blends:
        warnings.append(_blend_warning(blends, st.pixels, len(real), "the real colours"))
    cols = sorted(set(real) - {(0, 0, 0)})
    table: dict[Rgb, int] = {(0, 0, 0): 0}
    if VOC_IGNORE_COLOUR in cols:
        cols.remove(VOC_IGNORE_COLOUR)
        table[VOC_IGNORE_COLOUR] = IGNORE_INDEX
        warnings.append(f"Colour {VOC_IGNORE_COLOUR} in the masks is read as ignore (255), as in Pascal VOC.")
    table.update({c: k for k, c in enumerate(cols, 1)})
    table.update({c: table[target] for c, target in blends.items()})
    if len(cols) == 1:
        names = binary_class_names(file_names)
        if not names:
            raise DataError(
                f"Masks in {where} use one colour besides black but {names_file} lists {len(file_names or [])} "
                "classes; give each class its own colour, or list background and the one class."
            )
    elif file_names is not None:
        raise DataError(
            f"Masks in {where} use {len(cols)} colours but {names_file} does not say which colour is which class; "
            "replace it with a labelmap.txt (name:r,g,b:: per line)."
        )
    else:
        names = ["background", *(f"class_{k}" for k in range(1, len(cols) + 1))]
        warnings.append(
            f"Colour masks without a labelmap.txt: {len(cols)} colours became classes class_1..class_{len(cols)} "
            "in RGB order; add labelmap.txt (name:r,g,b::) to name them."
        )
    return MaskDecoding(
        "rgb",
        tuple(names),
        ((0, 0, 0), *cols),
        names_source(names_file),
        colour_table=table,
        class_pixels=st.table_pixels(table, len(names)),
        warnings=tuple(warnings),
    )


# Grey masks whose values other than 0 and 255 are all at least this are grey levels, 255 the brightest of them.
GREY_LEVEL_MIN = 64


def _grey_decoding(st: MaskStats, file_names: list[str] | None, source: str) -> MaskDecoding:
    """Grey or palette masks: binary (0/1, 0/255, anti-aliased 0/255) or index masks (value = class id)."""
    hist = st.hist
    values = set(np.flatnonzero(hist).tolist())
    anti = st.looks_antialiased()
    warnings: tuple[str, ...] = ()
    if anti:
        warnings = (
            "Masks are mostly 0/255 with some grey edge pixels (resized or blurred?); they are read as binary "
            "masks thresholded at 128.",
        )
    ones, whites, others = st.binary_encodings
    # 0/1 files beside 0/255 ones, nothing else: binary, each file by its own encoding (SupportIndex.load_mask).
    mixed = ones and whites and not others and not st.palette_mode
    if (file_names is None or len(file_names) <= 2) and (values <= {0, 1} or values <= {0, 255} or anti or mixed):
        names = binary_class_names(file_names)
        thr = 1 if values <= {0, 1} else 128
        return _decoding("binary", names, source, binary_threshold=thr, warnings=warnings)
    if file_names is not None:  # index masks whose values are the class ids of a names file
        return _decoding("index", file_names, source, class_pixels=st.index_pixels(len(file_names)), warnings=warnings)
    ids = sorted(values - {IGNORE_INDEX, 0})
    if IGNORE_INDEX in values and ids and ids[0] >= GREY_LEVEL_MIN:
        # Grey levels, not class ids ({0, 128, 255}: a colour mask of greys and white collapses to these): 255 is
        # the brightest class, not VOC's ignore border, which comes with ids 1, 2, ... (as does Cityscapes' void).
        ids.append(IGNORE_INDEX)
        warnings = (
            *warnings,
            f"Mask values {', '.join(map(str, ids))} are grey levels, not class ids 1, 2, ...; 255 is read as a "
            "class, not as ignore.",
        )
    if ids != list(range(1, len(ids) + 1)):
        # Values with gaps ({0, 1, 2, 7}): only the values that occur become classes (in order, named by value), so
        # 3..6 are not empty classes trained as "never present".
        value_map = np.arange(256, dtype=np.uint8)
        value_map[ids] = np.arange(1, len(ids) + 1)
        names = ("background", *(f"class_{v}" for v in ids))
        missing = sorted(set(range(1, ids[-1])) - set(ids))
        gaps = (
            f"No names file and mask values {', '.join(map(str, ids))} with gaps ({_spans(missing)} unused): the "
            f"classes are {', '.join(names[1:])}, numbered 1..{len(ids)} in the model and its predicted masks; add "
            "classes.txt (one name per line, background first) to name them, or renumber the masks to 1.."
            f"{len(ids)}."
        )
        return _decoding(
            "index", names, "mask values", value_map=value_map,
            class_pixels=(int(hist[0]), *(int(hist[v]) for v in ids)), warnings=(*warnings, gaps),
        )  # fmt: skip
    top = ids[-1] if ids else 0
    n = top + 1
    names = BINARY_NAMES if n == 2 else ("background", *(f"class_{k}" for k in range(1, n)))
    if n > 2:
        warnings = (
            *warnings,
            f"No names file: mask values 1..{top} became classes class_1..class_{top}; add classes.txt (one name "
            "per line, background first) to name them.",
        )
    return _decoding("index", names, "mask values", class_pixels=st.index_pixels(n), warnings=warnings)
