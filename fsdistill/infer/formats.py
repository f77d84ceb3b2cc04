"""Pre-labels for annotation tools (``predict --format``): COCO, CVAT and Label Studio files, derived from the
index masks on disk after all masks are written, so a resumed run writes the same files as an uninterrupted one.

File layouts and the scores they carry: README, "The labelling loop". Scores are stored in each mask PNG (text
chunk ``fsdistill:scores``) when a scored format is asked for; earlier masks without them are scored again.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import cv2
import numpy as np
from PIL import Image

from fsdistill import __version__
from fsdistill.data.brush_rle import encode_brush_rle
from fsdistill.data.coco import counts_to_rle_string
from fsdistill.data.masks import Rgb, default_palette, read_index_mask, write_index_png
from fsdistill.errors import ConfigError, DataError
from fsdistill.runtime import new_file_mode, process_temp_path, remove_dead_temps, write_atomic

__all__ = [
    "FORMATS",
    "DEFAULT_IMAGE_ROOT_URL",
    "SCORES_KEY",
    "FormatOptions",
    "check_class_names",
    "component_scores",
    "read_scores",
    "scores_text",
    "add_missing_scores",
    "remove_format_files",
    "write_formats",
    "COCO_FILE",
    "CVAT_FILE",
    "LABELSTUDIO_TASKS_FILE",
    "LABELSTUDIO_CONFIG_FILE",
]

FORMATS = ("png", "coco", "cvat", "labelstudio")
SCORED_FORMATS = frozenset({"coco", "labelstudio"})
# Label Studio's local-files URL: with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to the predicted folder, ``d=``
# is the image's path inside it.
DEFAULT_IMAGE_ROOT_URL = "/data/local-files/?d="
SCORES_KEY = "fsdistill:scores"
COCO_FILE = "coco.json"
CVAT_FILE = "cvat.zip"
LABELSTUDIO_TASKS_FILE = "labelstudio_tasks.json"
LABELSTUDIO_CONFIG_FILE = "labelstudio_config.xml"
LS_FROM_NAME, LS_TO_NAME = "label", "image"  # the names of the labelling config's BrushLabels and Image tags
MAX_INSTANCES = 254  # SegmentationObject colours per image: VOC instance ids 1..254 (255 is VOC's "void")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same masks give the same archive bytes


@dataclass(frozen=True)
class FormatOptions:
    """What ``predict`` writes besides ``masks/`` and ``predictions.csv`` (validated by :meth:`parse`)."""

    formats: tuple[str, ...] = ("png",)
    coco_rle: bool = False
    image_root_url: str = DEFAULT_IMAGE_ROOT_URL

    @classmethod
    def parse(
        cls, formats: str | Iterable[str] | None = None, coco_rle: bool = False, image_root_url: str | None = None
    ) -> FormatOptions:
        """Validate ``--format`` values (each may be a comma list), ``--coco-rle`` and ``--image-root-url``; ``png``
        (the index masks) is always written: the other formats and resuming are derived from it.

        Raises:
            ConfigError: an unknown or empty format, or an option for a format that was not asked for.
        """
        given = [formats] if isinstance(formats, str) else list(formats or [])
        names: list[str] = []
        for value in given:
            parts = [p for p in (p.strip().lower() for p in str(value).split(",")) if p]
            if not parts:
                raise ConfigError(f"--format got no format name; use {_choices()} (several: --format coco,cvat).")
            for part in parts:
                if part not in FORMATS:
                    raise ConfigError(f"Unknown --format '{part}'; use {_choices()} (several: --format coco,cvat).")
            names += parts
        chosen = tuple(f for f in FORMATS if f == "png" or f in names)
        if coco_rle and "coco" not in chosen:
            raise ConfigError("--coco-rle applies to --format coco; add --format coco or drop --coco-rle.")
        if image_root_url is not None:
            if "labelstudio" not in chosen:
                raise ConfigError(
                    "--image-root-url applies to --format labelstudio; add --format labelstudio or drop it."
                )
            if not image_root_url.strip():
                raise ConfigError(f"--image-root-url is empty; pass a URL prefix such as {DEFAULT_IMAGE_ROOT_URL}.")
            if not image_root_url.endswith(("/", "=")) and "?" not in image_root_url:
                # A folder URL given without its slash: `https://host/pool` + `a.png` named `https://host/poola.png`.
                image_root_url += "/"
        return cls(chosen, bool(coco_rle), image_root_url or DEFAULT_IMAGE_ROOT_URL)

    @property
    def scored(self) -> bool:
        """Whether a requested format carries scores (masks then keep theirs)."""
        return bool(SCORED_FORMATS & set(self.formats))


def _choices() -> str:
    return ", ".join(FORMATS[:-1]) + f" or {FORMATS[-1]}"


# ---------------------------------------------------------------------------------------------------- scores


def _components(mask: np.ndarray, cls: int) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of class ``cls``: (count + 1, H×W int32 labels (0 = elsewhere), stats rows
    ``x, y, w, h, area`` per label). Labels follow the raster order of each component's first pixel."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats((mask == cls).view(np.uint8), connectivity=8)
    return count, labels, stats


def _present(mask: np.ndarray, num_classes: int) -> list[int]:
    """Foreground classes with at least one pixel, in class order."""
    return [c for c in range(1, num_classes) if np.count_nonzero(mask == c)]


def component_scores(mask: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """Scores of one mask: ``{"image": float, "classes": {"<class id>": [score per component]}}``.

    Args:
        mask: H×W uint8 class ids (as written). probs: K×h×w float32 softmax on the model's output grid.
    """
    height, width = mask.shape
    classes: dict[str, list[float]] = {}
    for cls in _present(mask, probs.shape[0]):
        count, labels, stats = _components(mask, cls)
        prob = cv2.resize(probs[cls], (width, height), interpolation=cv2.INTER_LINEAR)
        scores = []
        for k in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[k])
            inside = labels[y : y + h, x : x + w] == k
            scores.append(round(float(prob[y : y + h, x : x + w][inside].sum(dtype=np.float64)) / area, 4))
        classes[str(cls)] = scores
    return {"image": round(float(probs.max(axis=0).mean()), 4), "classes": classes}


def scores_text(mask: np.ndarray, probs: np.ndarray) -> dict[str, str]:
    """The PNG text chunk that stores a mask's :func:`component_scores`."""
    return {SCORES_KEY: json.dumps(component_scores(mask, probs), separators=(",", ":"), sort_keys=True)}


def read_scores(path: Path) -> dict[str, Any] | None:
    """The scores stored in a mask PNG, or None (written without a scored format, or unreadable)."""
    try:
        with Image.open(path) as img:  # the header's text chunks (``.text`` would decode the pixels)
            raw = img.info.get(SCORES_KEY)
        return json.loads(raw) if raw else None
    except (OSError, ValueError, SyntaxError):
        return None


def add_missing_scores(
    runner: Any, items: Sequence[tuple[Path, Path]], out_dir: Path, batch_size: int, workers: int
) -> int:
    """Score the written masks of ``items`` ((image, relative path)) that carry no scores, by running ``runner``
    (a :class:`~fsdistill.infer.predictor.Runner`) on their images; the masks' pixels stay as written, and an
    image that no longer reads stays unscored. Returns how many masks were scored (each a model run)."""
    masks = [(s, out_dir / "masks" / rel.with_suffix(".png")) for s, rel in items]
    todo = [(s, path) for s, path in masks if path.is_file() and read_scores(path) is None]
    scored = 0
    for index, _, probs, error in runner.outputs([s for s, _ in todo], batch_size, workers, scored=True):
        if error is None:
            path = todo[index][1]
            with Image.open(path) as image:  # one decode: .text after the pixels; the model that made it stays
                mask = np.asarray(image, dtype=np.uint8)
                text = dict(image.text)
            write_index_png(path, mask, runner.palette, text=text | scores_text(mask, probs))
            scored += 1
    return scored


# ------------------------------------------------------------------------------------------------ geometry


def _component_polygons(labels: np.ndarray, k: int, box: tuple[int, int, int, int]) -> list[list[int]] | None:
    """Polygons along the pixel edges of component ``k`` (COCO ``[x1, y1, x2, y2, ...]``), or None when it has
    holes. The crop is doubled (nearest) so that OpenCV's contour through boundary pixel centres, mapped back
    with ``(u + 1) // 2``, runs along the original pixels' outer edges."""
    x, y, w, h = box
    crop = np.pad((labels[y : y + h, x : x + w] == k).view(np.uint8), 1)
    doubled = np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
        return None  # a contour with a parent is a hole
    polygons = []
    for contour in contours:
        pts = (contour.reshape(-1, 2) + 1) // 2 - 1 + np.array([x, y])
        keep = np.ones(len(pts), bool)
        keep[1:] = (pts[1:] != pts[:-1]).any(axis=1)
        pts = pts[keep]
        if len(pts) > 1 and (pts[0] == pts[-1]).all():
            pts = pts[:-1]
        if len(pts) >= 3:
            polygons.append([int(v) for v in pts.reshape(-1)])
    return polygons


def _component_rle(labels: np.ndarray, k: int, box: tuple[int, int, int, int]) -> dict[str, Any]:
    """Compressed COCO RLE of component ``k`` over the whole image, from its bounding box only."""
    height, width = labels.shape
    x, y, w, h = box
    cols, rows = np.nonzero((labels[y : y + h, x : x + w] == k).T)  # column-major order, as COCO counts
    flat = (cols + x).astype(np.int64) * height + rows + y
    breaks = np.flatnonzero(np.diff(flat) != 1) + 1
    starts = flat[np.concatenate([[0], breaks])]
    ends = flat[np.concatenate([breaks - 1, [flat.size - 1]])] + 1
    # Alternating runs: zeros up to each start (from the previous end), then ones up to its end; zeros to the end.
    counts = np.stack([starts - np.concatenate([[0], ends[:-1]]), ends - starts], axis=1).ravel().tolist()
    counts.append(height * width - int(ends[-1]))
    return {"size": [height, width], "counts": counts_to_rle_string(counts)}


def _unique_palette(palette: Sequence[Rgb], n: int) -> list[Rgb]:
    """``n`` distinct colours: the model's where they are distinct, VOC colours for repeats or missing ones."""
    out: list[Rgb] = []
    spare = (c for c in default_palette(256) if c not in set(map(tuple, palette)))
    for k in range(n):
        colour = tuple(int(v) for v in palette[k]) if k < len(palette) else None
        if colour is None or colour in out:
            colour = next(c for c in spare if c not in out)
        out.append(colour)  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------------------------- writers


@dataclass
class _Image:
    """One predicted image as the writers see it."""

    number: int  # 1-based, in input order
    rel: Path  # the input-relative path (original suffix)
    mask: np.ndarray
    scores: dict[str, Any] | None
    components: dict[int, tuple[int, np.ndarray, np.ndarray]]  # class → _components()

    def score(self, cls: int, k: int) -> float | None:
        if self.scores is None:
            return None
        values = self.scores.get("classes", {}).get(str(cls), [])
        return values[k - 1] if k - 1 < len(values) else None


class _Coco:
    def __init__(
        self, class_names: Sequence[str], rle: bool, model_version: str, category_ids: Sequence[int] | None = None
    ) -> None:
        self.class_names, self.rle = list(class_names), rle
        # A model trained on a COCO folder keeps its category ids (matched by id on import and in COCOeval); else
        # the class ids 1..N.
        ids = list(category_ids) if category_ids and len(category_ids) == len(class_names) - 1 else None
        self.category_id = ids if ids is not None else list(range(1, len(class_names)))
        self.data: dict[str, Any] = {
            "info": {"description": "fsdistill predictions", "version": __version__, "model_version": model_version},
            "images": [],
            "annotations": [],
            "categories": [
                {"id": self.category_id[k - 1], "name": n, "supercategory": ""}
                for k, n in enumerate(self.class_names)
                if k
            ],
        }

    def add(self, im: _Image) -> None:
        height, width = im.mask.shape
        self.data["images"].append({"id": im.number, "file_name": im.rel.as_posix(), "width": width, "height": height})
        annotations = self.data["annotations"]
        for cls, (count, labels, stats) in im.components.items():
            for k in range(1, count):
                x, y, w, h, area = (int(v) for v in stats[k])
                polygons = None if self.rle else _component_polygons(labels, k, (x, y, w, h))
                segmentation = polygons if polygons else _component_rle(labels, k, (x, y, w, h))
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": im.number,
                    "category_id": self.category_id[cls - 1],
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
                score = im.score(cls, k)
                if score is not None:
                    ann["score"] = score
                annotations.append(ann)

    def finish(self, out_dir: Path) -> list[Path]:
        return [write_atomic(out_dir / COCO_FILE, json.dumps(self.data, separators=(",", ":")) + "\n")]


def check_class_names(options: FormatOptions, class_names: Sequence[str]) -> None:
    """Refuse class names a requested format cannot hold, before any image is predicted (not after the last).

    Raises:
        DataError: a name with ':' or a line break for CVAT (its labelmap.txt is ``name:colour::``).
    """
    if "cvat" not in options.formats:
        return
    for name in class_names:
        if ":" in name or "\n" in name:
            raise DataError(
                f"Class name {name!r} holds ':' or a line break, which CVAT's labelmap.txt cannot; rename the class "
                "(names file of the support folder) and distill again, or drop --format cvat."
            )


def check_file_names(options: FormatOptions, names: Sequence[str]) -> None:
    """Refuse image file names the requested formats cannot hold, before any image is predicted: names that are not
    valid UTF-8 (a Latin-1 name from an old zip or share; COCO's JSON, CVAT's zip and Label Studio's URLs are
    UTF-8). ``names``: the images' relative paths as Python reads them (undecodable bytes as surrogates).

    Raises:
        DataError: the first such name.
    """
    if options.formats == ("png",):
        return
    for name in names:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise DataError(
                f"Image {shown} has a file name that is not valid UTF-8, which --format "
                f"{','.join(f for f in options.formats if f != 'png')} cannot hold; rename it, or drop --format."
            ) from None


class _Cvat:
    def __init__(self, out_dir: Path, class_names: Sequence[str], palette: Sequence[Rgb]) -> None:
        self.class_names = list(class_names)
        self.colours = np.array(_unique_palette(palette, len(self.class_names)), np.uint8)
        self.instance_colours = np.array(default_palette(256), np.uint8)
        self.target = out_dir / CVAT_FILE
        # A name of this process's own, so a killed run's (a large file) is removed by the next one.
        remove_dead_temps(self.target)
        self.tmp = process_temp_path(self.target)
        self.zip = zipfile.ZipFile(self.tmp, "w")
        self.ids: list[str] = []

    def _put(self, name: str, payload: bytes, compress: bool) -> None:
        info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self.zip.writestr(info, payload)

    def add(self, im: _Image) -> None:
        item = im.rel.with_suffix("").as_posix()
        self.ids.append(item)
        self._put(f"SegmentationClass/{item}.png", png_bytes(self.colours[im.mask], compress_level=3), compress=False)
        instances = png_bytes(self.instance_colours[_instances(im)], compress_level=3)
        self._put(f"SegmentationObject/{item}.png", instances, compress=False)

    def finish(self, out_dir: Path) -> list[Path]:
        try:
            lines = ["# label:color_rgb:parts:actions"]
            lines += [f"{n}:{r},{g},{b}::" for n, (r, g, b) in zip(self.class_names, self.colours.tolist())]
            self._put("labelmap.txt", ("\n".join(lines) + "\n").encode(), compress=True)
            self._put("ImageSets/Segmentation/default.txt", "".join(f"{i}\n" for i in self.ids).encode(), True)
            self.zip.close()
            os.chmod(self.tmp, new_file_mode())
            os.replace(self.tmp, self.target)
        finally:
            self.discard()
        return [self.target]

    def discard(self) -> None:
        self.zip.close()
        self.tmp.unlink(missing_ok=True)


def png_bytes(rgb: np.ndarray, **options: Any) -> bytes:
    """An H×W×3 uint8 image (or H×W) as PNG bytes; ``options`` go to Pillow's PNG writer."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _instances(im: _Image) -> np.ndarray:
    """H×W uint8 instance ids (0 background): one per connected component; with more than
    :data:`MAX_INSTANCES` components the largest keep their own id and the rest share one id per class."""
    out = np.zeros(im.mask.shape, np.uint8)
    comps = [(int(stats[k][4]), cls, k) for cls, (count, _, stats) in im.components.items() for k in range(1, count)]
    own = {(cls, k) for _, cls, k in comps}
    if len(comps) > MAX_INSTANCES:
        ranked = sorted(comps, key=lambda t: (-t[0], t[1], t[2]))
        own = {(cls, k) for _, cls, k in ranked[: MAX_INSTANCES - len(im.components)]}
    shared: dict[int, int] = {}
    next_id = 1
    for _, cls, k in comps:
        if (cls, k) in own:
            value, next_id = next_id, next_id + 1
        else:
            value = shared.setdefault(cls, MAX_INSTANCES - len(shared))
        _, labels, stats = im.components[cls]
        x, y, w, h = (int(v) for v in stats[k][:4])
        out[y : y + h, x : x + w][labels[y : y + h, x : x + w] == k] = value
    return out


class _LabelStudio:
    def __init__(self, class_names: Sequence[str], palette: Sequence[Rgb], model_version: str, root_url: str) -> None:
        self.class_names, self.model_version, self.root_url = list(class_names), model_version, root_url
        self.palette = _unique_palette(palette, len(self.class_names))
        self.tasks: list[dict[str, Any]] = []

    def add(self, im: _Image) -> None:
        height, width = im.mask.shape
        results = []
        for cls, (count, _, stats) in im.components.items():
            result: dict[str, Any] = {
                "id": f"fsdistill-{cls}",
                "from_name": LS_FROM_NAME,
                "to_name": LS_TO_NAME,
                "type": "brushlabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": encode_brush_rle(im.mask == cls),
                    "brushlabels": [self.class_names[cls]],
                },
            }
            scores = [im.score(cls, k) for k in range(1, count)]
            if all(s is not None for s in scores):
                areas = stats[1:count, 4].astype(np.float64)
                result["score"] = round(float(np.dot(scores, areas) / areas.sum()), 4)
            results.append(result)
        prediction: dict[str, Any] = {"model_version": self.model_version, "result": results}
        if im.scores is not None:
            prediction["score"] = im.scores.get("image")
        url = self.root_url + quote(im.rel.as_posix(), errors="surrogateescape")
        self.tasks.append({"data": {"image": url}, "predictions": [prediction]})

    def finish(self, out_dir: Path) -> list[Path]:
        labels = "\n".join(
            f'    <Label value={quoteattr(name)} background="#{r:02x}{g:02x}{b:02x}"/>'
            for k, (name, (r, g, b)) in enumerate(zip(self.class_names, self.palette))
            if k
        )
        config = (
            "<View>\n"
            f'  <Image name="{LS_TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <BrushLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">\n{labels}\n  </BrushLabels>\n'
            "</View>\n"
        )
        return [
            write_atomic(out_dir / LABELSTUDIO_TASKS_FILE, json.dumps(self.tasks, separators=(",", ":")) + "\n"),
            write_atomic(out_dir / LABELSTUDIO_CONFIG_FILE, config),
        ]


FORMAT_FILES = (COCO_FILE, CVAT_FILE, LABELSTUDIO_TASKS_FILE, LABELSTUDIO_CONFIG_FILE)


def remove_format_files(out_dir: Path) -> None:
    """Delete every format file in ``out_dir`` (``predict --overwrite``: files derived from the masks it replaces
    must not stay beside the new ones)."""
    for name in FORMAT_FILES:
        (Path(out_dir) / name).unlink(missing_ok=True)


def write_formats(
    out_dir: Path,
    entries: Sequence[tuple[Path, Path]],
    class_names: Sequence[str],
    palette: Sequence[Rgb],
    model_version: str,
    options: FormatOptions,
    category_ids: Sequence[int] | None = None,
) -> dict[str, list[Path]]:
    """Write the requested formats for every image of ``entries`` ((image, relative path)) whose mask exists.

    Reads each mask once (and its stored scores), in ``entries`` order. Returns the files written per format.
    ``category_ids``: COCO category ids of classes 1..N (a model trained on a COCO folder), else 1..N.
    """
    out_dir = Path(out_dir)
    wanted = [f for f in options.formats if f != "png"]
    if not wanted:
        return {}
    makers = {
        "coco": lambda: _Coco(class_names, options.coco_rle, model_version, category_ids),
        "cvat": lambda: _Cvat(out_dir, class_names, palette),
        "labelstudio": lambda: _LabelStudio(class_names, palette, model_version, options.image_root_url),
    }
    check_class_names(options, class_names)
    writers = {name: makers[name]() for name in wanted}
    try:
        number = 0
        for _, rel in entries:
            path = out_dir / "masks" / rel.with_suffix(".png")
            if not path.is_file():
                continue  # failed images have no mask, as they have no rows in predictions.csv
            number += 1
            mask = read_index_mask(path)
            scores = read_scores(path) if options.scored else None
            components = {c: _components(mask, c) for c in _present(mask, len(class_names))}
            im = _Image(number, rel, mask, scores, components)
            for writer in writers.values():
                writer.add(im)
        return {name: writer.finish(out_dir) for name, writer in writers.items()}
    finally:
        if "cvat" in writers:
            writers["cvat"].discard()  # the archive's temporary file, when it was not finished
