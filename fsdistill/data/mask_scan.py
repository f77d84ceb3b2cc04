"""Read every mask of a support folder once and keep what deciding their kind needs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fsdistill.data.images import _PIL_ERRORS
from fsdistill.data.masks import IGNORE_INDEX, Rgb, edge_pixels, pack_rgb, read_mask_array, unpack_rgb
from fsdistill.errors import DataError

__all__ = ["MAX_SCANNED_COLOURS", "MaskStats", "scan_masks"]

# Distinct colours read from the masks before giving up on them (smoothed edges of a few classes stay far below:
# at most 256 mixtures per pair of colours).
MAX_SCANNED_COLOURS = 4096


@dataclass(frozen=True)
class MaskStats:
    """What one read of every mask saw.

    ``hist``: (256,) int64 pixels per value of grey/palette masks. ``pixels``/``edges``: colour → its pixels
    over all colour masks (with the greys of grey masks beside them) / those on an object boundary, where
    resized masks hold blends; empty without colour masks. ``too_many_colours``: the mask at which the colours
    passed MAX_SCANNED_COLOURS. ``wide_max``: the largest label of 16-bit masks above 255 (0 if none).
    """

    hist: np.ndarray
    pixels: Mapping[Rgb, int]
    edges: Mapping[Rgb, int]
    colour_example: Path | None
    too_many_colours: Path | None
    wide_max: int
    wide_example: Path | None
    palette_mode: bool

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
        """0/255 masks with a fringe of intermediate greys (resized or blurred binary masks).

        Index masks use a few small ids and, when 255 appears, it is a thin ignore border; anti-aliased binary
        masks have many distinct greys and far more 255 (object) pixels than grey ones.
        """
        hist = self.hist
        if self.palette_mode or hist[255] == 0:
            return False
        mid = hist[2:255]
        return int(np.count_nonzero(mid)) >= 4 and int(mid.sum()) < int(hist[255])


def scan_masks(paths: Sequence[Path]) -> MaskStats:
    """Read every mask once: value histogram of grey/palette masks, colours of colour masks, 16-bit maxima.

    Raises:
        DataError: a mask with negative values (unreadable masks are skipped: decoding reports them).
    """
    hist = np.zeros(256, np.int64)
    pixels: Counter[int] = Counter()  # packed colour → pixels (keys: every colour seen)
    edges: Counter[int] = Counter()
    colour_example: Path | None = None
    too_many_colours: Path | None = None
    wide_example: Path | None = None
    wide_max, palette_mode = 0, False
    for p in paths:
        try:
            with Image.open(p) as im:
                palette_mode |= im.mode in ("P", "PA")
        except _PIL_ERRORS:
            pass  # decoding the pair reports it with the file name
        try:
            a = read_mask_array(p)
        except DataError:
            # Left out of the kind decision only: decoding the pair raises the same error, and check collects
            # every such error instead of stopping at the first unreadable mask here.
            continue
        if a.ndim == 3:
            if too_many_colours is None:
                packed = pack_rgb(a)
                found, counts = np.unique(packed, return_counts=True)
                pixels.update(dict(zip(found.tolist(), counts.tolist())))
                on_edge, edge_counts = np.unique(packed[edge_pixels(packed)], return_counts=True)
                edges.update(dict(zip(on_edge.tolist(), edge_counts.tolist())))
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
        hist += np.bincount(a.ravel(), minlength=256)
    if pixels:  # grey masks in a colour-mask set: their greys are colours too (no edge counts: never blends)
        pixels.update({v * 0x010101: int(hist[v]) for v in np.flatnonzero(hist).tolist()})
    by_rgb = {unpack_rgb(c): n for c, n in pixels.items()}
    edges_by_rgb = {unpack_rgb(c): n for c, n in edges.items()}
    return MaskStats(hist, by_rgb, edges_by_rgb, colour_example, too_many_colours, wide_max, wide_example, palette_mode)
