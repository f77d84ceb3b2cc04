"""COCO JSON annotations (polygons, uncompressed and compressed RLE) → H×W uint8 class-id masks, without
pycocotools."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.errors import DataError

__all__ = [
    "CocoImage",
    "CocoData",
    "read_coco_json",
    "load_coco",
    "rle_string_to_counts",
    "counts_to_rle_string",
    "encode_rle",
    "decode_rle",
    "rasterize_polygons",
    "annotation_mask",
]


@dataclass(frozen=True)
class CocoImage:
    """One ``images`` entry. ``width``/``height`` are None when the file omits them (read from the image then)."""

    id: int
    file_name: str
    width: int | None
    height: int | None


@dataclass
class CocoData:
    """A parsed COCO file: categories in file order, images by id and their annotations by image id."""

    path: Path
    category_ids: list[int]
    names: list[str]
    images: dict[int, CocoImage]
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def class_of(self) -> dict[int, int]:
        """COCO category id → class id 1..N."""
        return {cid: k + 1 for k, cid in enumerate(self.category_ids)}

    def mask(self, image_id: int, height: int | None = None, width: int | None = None) -> np.ndarray:
        """H×W uint8 class ids of one image (255 crowd); ``height``/``width`` are used where the entry lacks them."""
        img = self.images[image_id]
        h = img.height if img.height is not None else height
        w = img.width if img.width is not None else width
        if h is None or w is None:
            raise DataError(
                f"COCO file {self.path} gives no width/height for image {img.file_name!r}; add them to its entry."
            )
        class_of = self.class_of
        # (0 for crowd, -area, mask, value): crowd is painted first, then objects largest first, so a small object
        # lying on a large one stays visible.
        layers: list[tuple[int, int, np.ndarray, int]] = []
        for ann in self.annotations.get(image_id, []):
            m = annotation_mask(ann, h, w, self.path)
            if m is None:
                continue
            # Nobody drew a crowd region's exact extent: it should teach neither foreground nor background.
            crowd = bool(ann.get("iscrowd", 0))
            value = IGNORE_INDEX if crowd else class_of[int(ann["category_id"])]
            layers.append((0 if crowd else 1, -int(m.sum()), m, value))
        out = np.zeros((h, w), np.uint8)
        for _, _, m, value in sorted(layers, key=lambda t: t[:2]):
            out[m] = value
        return out


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"COCO file {path} {what}; fix the file or re-export it from the annotation tool.")


def read_coco_json(path: Path | str) -> dict[str, Any] | None:
    """The parsed JSON if ``path`` is a COCO annotation file (a dict with list-valued ``images``,
    ``annotations`` and ``categories``), else None. Unparseable JSON is also None (it may be anything).

    Raises:
        DataError: a JSON file too large for the memory at hand (it may be this folder's annotations).
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        return None
    except MemoryError:  # a JSON of hundreds of MB of objects: a traceback before
        raise DataError(
            f"{path} ({Path(path).stat().st_size / 2**20:.0f} MB) is too large to read in this much memory; split it, "
            "or move it out of the folder if it is not this folder's annotations."
        ) from None
    if isinstance(d, dict) and all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        return d
    return None


def _int(v: Any, path: Path, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float) or int(v) != v:
        raise _bad(path, f"has {what} {v!r}, which is not an integer")
    return int(v)


def load_coco(path: Path, data: dict[str, Any]) -> CocoData:
    """Validate the parsed JSON (:func:`read_coco_json`) of the COCO file ``path``.

    Raises:
        DataError: missing keys, duplicate ids, an annotation pointing at an unknown image or category, or
            annotations that are all boxes without masks.
    """
    cat_ids: list[int] = []
    names: list[str] = []
    for c in data["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise _bad(path, f"has a category without id or name ({c!r})")
        cid = _int(c["id"], path, "category id")
        if cid in cat_ids:
            raise _bad(path, f"lists category id {cid} twice")
        cat_ids.append(cid)
        names.append(str(c["name"]))
    if not cat_ids:
        raise _bad(path, "lists no categories")
    images: dict[int, CocoImage] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise _bad(path, f"has an image entry without id or file_name ({str(im)[:80]})")
        iid = _int(im["id"], path, "image id")
        if iid in images:
            raise _bad(path, f"lists image id {iid} twice")
        w, h = (None if im.get(k) is None else _int(im[k], path, f"image {k}") for k in ("width", "height"))
        images[iid] = CocoImage(iid, str(im["file_name"]), w, h)
    known_cats = set(cat_ids)
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in data["annotations"]:
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            raise _bad(path, f"has an annotation without image_id or category_id ({str(a)[:80]})")
        iid = _int(a["image_id"], path, "annotation image_id")
        cid = _int(a["category_id"], path, "annotation category_id")
        if iid not in images:
            raise _bad(path, f"has annotation {a.get('id', '?')} for image id {iid}, which is not in images")
        if cid not in known_cats:
            raise _bad(path, f"has annotation {a.get('id', '?')} with category id {cid}, which is not in categories")
        anns.setdefault(iid, []).append(a)
    if data["annotations"] and not any(a.get("segmentation") for a in data["annotations"]):
        raise DataError(
            f"COCO file {path} has only boxes, no segmentation polygons or RLE masks; export segmentation masks."
        )
    return CocoData(path, cat_ids, names, images, anns)


def rle_string_to_counts(s: str | bytes) -> list[int]:
    """Decode a compressed COCO RLE string into run lengths."""
    b = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p, n = 0, len(b)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE string ends inside a number")
            c = b[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE string has character {chr(b[p])!r} outside the code range")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)  # sign-extend: the last chunk's 0x10 bit marks a negative number
        if len(counts) > 2:
            x += counts[-2]  # counts from the fourth on are stored relative to the count two before
        counts.append(x)
    return counts


def counts_to_rle_string(counts: Sequence[int]) -> str:
    """Encode run lengths as a compressed COCO RLE string (inverse of :func:`rle_string_to_counts`)."""
    out = bytearray()
    for i, cnt in enumerate(counts):
        x = int(cnt) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative numbers end at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict[str, Any]:
    """H×W mask (nonzero = object) → COCO RLE ``{"size": [h, w], "counts": str | list[int]}``."""
    m = np.asarray(mask).astype(bool)
    h, w = m.shape
    flat = m.reshape(-1, order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]  # RLE always starts with a (possibly empty) run of zeros
    return {"size": [int(h), int(w)], "counts": counts_to_rle_string(runs) if compressed else runs}


def decode_rle(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Run lengths (zeros first, column-major) → H×W bool. Raises ValueError if they do not cover H×W."""
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any():
        raise ValueError("negative run length")
    if int(runs.sum()) != height * width:
        raise ValueError(f"run lengths sum to {int(runs.sum())}, not height×width = {height * width}")
    values = (np.arange(len(runs)) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return flat.reshape((width, height)).T.copy()


# Far beyond any image (a pixel coordinate of 10¹²), and small enough that an edge's slope stays finite.
_MAX_COORDINATE = 1e12


def rasterize_polygons(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """COCO polygons (each a flat ``[x1, y1, x2, y2, ...]`` in pixel-edge coordinates) → H×W bool: the union of the
    polygons, a pixel inside when its centre is (even-odd rule, edges half-open), as pycocotools draws them.

    ``cv2.fillPoly`` drew the boundary pixels too, growing every object by one column and one row (a 3×4 block
    read as 4×5). Scanlines: each edge's crossings with the pixel-centre rows, sorted, filled between pairs.
    """
    starts: list[np.ndarray] = []
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1)
        if xy.size < 6 or xy.size % 2:
            continue  # fewer than 3 points has no area
        if not np.isfinite(xy).all() or np.abs(xy).max() > _MAX_COORDINATE:
            raise ValueError("a polygon coordinate is not a finite number of pixels")
        p = xy.reshape(-1, 2)
        (x0, y0), (x1, y1) = p.T, np.roll(p, -1, axis=0).T
        # Rows r whose centre r + 0.5 lies in [min(y0, y1), max(y0, y1)), within the image (a row is dropped
        # whole, so its crossings stay paired): each closed polygon crosses a row an even number of times, and a
        # horizontal edge none.
        first = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, height).astype(np.int64)
        count = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, height).astype(np.int64) - first
        edge = np.repeat(np.arange(len(p)), count)
        rows = np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        xs = x0[edge] + (rows + 0.5 - y0[edge]) * (x1 - x0)[edge] / (y1 - y0)[edge]
        order = np.lexsort((xs, rows))
        rows, xs = rows[order], xs[order]
        # Consecutive crossings of a row bound one span: the pixels whose centres lie in [x_a, x_b).
        span_rows = rows[0::2]
        left = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)
        right = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)
        starts.append(np.stack([span_rows, left, right]))
    # Spans as +1 at their start and −1 at their end, summed along the row: the union of all polygons.
    edges = np.zeros((height, width + 1), np.int32)
    for span_rows, left, right in starts:
        np.add.at(edges, (span_rows, left), 1)
        np.add.at(edges, (span_rows, right), -1)
    return np.cumsum(edges, axis=1)[:, :width] > 0


def annotation_mask(ann: dict[str, Any], height: int, width: int, path: Path | str = "<coco>") -> np.ndarray | None:
    """H×W bool mask of one annotation, or None when it has no segmentation (a box-only annotation).

    Raises:
        DataError: malformed segmentation or an RLE whose size differs from the image's.
    """
    seg = ann.get("segmentation")
    if not seg:
        return None
    aid = ann.get("id", "?")
    try:
        if isinstance(seg, list):
            if seg and not isinstance(seg[0], list | tuple):
                seg = [seg]  # a single polygon given flat
            return rasterize_polygons(seg, height, width)
        if isinstance(seg, dict) and "counts" in seg and "size" in seg:
            h, w = (int(v) for v in seg["size"])
            if (h, w) != (height, width):
                raise _bad(path, f"has annotation {aid} with RLE size {h}×{w} (h×w) but its image is {height}×{width}")
            counts = seg["counts"]
            runs = rle_string_to_counts(counts) if isinstance(counts, str | bytes) else counts
            return decode_rle(runs, h, w)
    except (ValueError, TypeError) as e:
        raise _bad(path, f"has annotation {aid} with an unreadable segmentation ({e})") from e
    raise _bad(path, f"has annotation {aid} whose segmentation is neither polygons nor RLE")
