"""Label Studio JSON exports (brush and polygon regions) → H×W uint8 class-id masks, without its SDK.

Per task the latest annotation that was not cancelled is used (a ``ground_truth`` one first); a later region wins
where two overlap.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse
from xml.etree import ElementTree

import numpy as np

from fsdistill.data.brush_rle import BrushRleError, decode_brush_rle
from fsdistill.data.coco import rasterize_polygons
from fsdistill.data.images import IMAGE_SUFFIXES, exported_path
from fsdistill.data.masks import BACKGROUND_NAMES
from fsdistill.errors import DataError

__all__ = [
    "LabelingConfig",
    "LabelStudioTask",
    "LabelStudioData",
    "parse_labelstudio_json",
    "load_labelstudio",
    "image_candidates",
    "read_labeling_config",
]

MASK_TYPES = ("brushlabels", "polygonlabels")  # other result types (rectangles, choices, ...) are counted, not used
# Label Studio prefixes uploaded files with 8 hex digits and a dash: /data/upload/3/1a2b3c4d-photo.jpg.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-", re.IGNORECASE)
_HEX = re.compile(r"#([0-9a-fA-F]{6})")


@dataclass(frozen=True)
class LabelStudioTask:
    """One annotated task: how messages name it, where its image is named, and the mask regions of its chosen
    annotation."""

    name: str
    image_ref: str
    results: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class LabelingConfig:
    """What fsdistill reads of a labelling config: its brush/polygon label values in order, their ``background``
    colours (None unless every label has a ``#rrggbb`` one), and the task data key of its ``<Image>``."""

    path: Path
    labels: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None
    image_key: str | None


@dataclass
class LabelStudioData:
    """A parsed export: its annotated tasks, the labels its regions use (first-seen order), what was skipped, and
    the labelling config found beside it, if any."""

    path: Path
    tasks: list[LabelStudioTask]
    labels: list[str]
    unannotated: int = 0  # tasks without a usable annotation (no annotation, or only cancelled ones)
    several: int = 0  # tasks with several usable annotations (the latest is used)
    ignored_types: dict[str, int] = field(default_factory=dict)  # result type → count, non-mask results
    config: LabelingConfig | None = None

    def first_task_with(self, label: str) -> str:
        """The name of the first task that uses ``label`` (for messages)."""
        return next((t.name for t in self.tasks if any(_label(r) == label for r in t.results)), "?")

    def mask(self, index: int, height: int, width: int, class_names: list[str]) -> np.ndarray:
        """H×W uint8 class ids of ``tasks[index]``, its labels mapped by name to ``class_names``.

        Raises:
            DataError: an unknown label, a region whose size differs from the image's, or an RLE that does not decode.
        """
        task = self.tasks[index]
        class_of = {name: k for k, name in enumerate(class_names)}
        out = np.zeros((height, width), np.uint8)
        for result in task.results:
            label = _label(result)
            if label not in class_of and label.lower() in BACKGROUND_NAMES:
                label = class_names[0]  # a "Background" brush erases: it paints class 0
            if label not in class_of:
                raise DataError(
                    f"Label Studio export {self.path.name} gives {task.name} the label {label!r}, which is not one of "
                    f"the classes {', '.join(class_names[1:])}; add it to the labelling config or relabel the region."
                )
            out[self._region(task, result, height, width)] = class_of[label]
        return out

    def _region(self, task: LabelStudioTask, result: dict[str, Any], height: int, width: int) -> np.ndarray:
        value = result["value"]
        if result["type"] == "polygonlabels":
            points = np.asarray(value["points"], dtype=np.float64).reshape(-1, 2) / 100.0 * (width, height)
            try:
                return rasterize_polygons([points.reshape(-1).tolist()], height, width)
            except ValueError as exc:  # NaN or Infinity (which JSON readers accept)
                raise _bad(self.path, f"has a polygon of {task.name} that cannot be drawn ({exc})") from None
        w, h = result.get("original_width"), result.get("original_height")
        if (h, w) != (height, width):
            raise DataError(
                f"Label Studio export {self.path.name} has a brush region of {w}×{h} px for {task.name} but its image "
                f"is {width}×{height}; export the annotations of this image again (or use the image they were drawn on)."
            )
        try:
            return decode_brush_rle(value["rle"], height, width)
        except BrushRleError as exc:
            raise DataError(
                f"Label Studio export {self.path.name} has a brush region of {task.name} that does not decode ({exc}); "
                "export the project again as JSON."
            ) from None


def parse_labelstudio_json(path: Path | str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """(the export, None) if ``path`` is a Label Studio export (a list of tasks, dicts with a ``data`` dict and an
    ``annotations`` or ``predictions`` list); (None, why it is not valid JSON) for a file that starts like a JSON
    list (an export cut short) but does not parse; (None, None) for anything else. Files that do not start with
    ``[`` (COCO files, names files) are not parsed at all.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            if head and not head.startswith(b"["):
                return None, None
            f.seek(0)
            raw = f.read()
    except OSError:
        return None, None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        return None, (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    is_export = (
        isinstance(data, list)
        and data
        and all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in data)
        and any(isinstance(t.get("annotations"), list) or isinstance(t.get("predictions"), list) for t in data)
    )
    return (data, None) if is_export else (None, None)


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"Label Studio export {path} {what}; export the project again as JSON (not JSON-MIN).")


def _label(result: dict[str, Any]) -> str:
    return str(result["value"][result["type"]][0])


def _check_result(path: Path, task_name: str, result: Any) -> bool:
    """Whether ``result`` is a mask region; raises for a mask region that lacks what it needs."""
    if not isinstance(result, dict) or result.get("type") not in MASK_TYPES:
        return False
    kind = result["type"]
    value = result.get("value")
    labels = value.get(kind) if isinstance(value, dict) else None
    if not isinstance(labels, list) or not labels:
        raise _bad(path, f"has a {kind} result of {task_name} without a label")
    if kind == "brushlabels":
        if not isinstance(value.get("rle"), list):
            raise _bad(path, f"has a brush result of {task_name} without an rle list (format {value.get('format')!r})")
        for key in ("original_width", "original_height"):
            if isinstance(result.get(key), bool) or not isinstance(result.get(key), int) or result[key] <= 0:
                raise _bad(path, f"has a brush result of {task_name} without {key}")
    else:
        points = value.get("points")
        if (
            not isinstance(points, list)
            or not all(isinstance(p, list | tuple) and len(p) == 2 for p in points)
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for p in points for c in p)
        ):
            raise _bad(path, f"has a polygon result of {task_name} whose points are not [x, y] pairs")
    return True


def _pick_annotation(annotations: list[Any]) -> tuple[dict[str, Any] | None, int]:
    """The annotation to use (ground truth first, then the latest updated) and how many were usable."""
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    if not usable:
        return None, 0
    # Equal flags and dates: the later in the list wins.
    order = [
        (bool(a.get("ground_truth")), str(a.get("updated_at") or a.get("created_at") or ""), k)
        for k, a in enumerate(usable)
    ]
    return usable[max(order)[2]], len(usable)


def load_labelstudio(path: Path, data: list[dict[str, Any]], config: LabelingConfig | None) -> LabelStudioData:
    """Validate the parsed export ``data`` (:func:`parse_labelstudio_json`) of ``path``; a task's image is the data
    field that the ``config``'s ``<Image value="$...">`` names, else ``image``, else the one naming an image file.

    Raises:
        DataError: a task without an image field, or a mask region without label, rle or points.
    """
    tasks: list[LabelStudioTask] = []
    labels: dict[str, None] = {}
    ignored: dict[str, int] = {}
    unannotated = several = 0
    for index, raw in enumerate(data):
        task_name = f"task {raw['id']}" if raw.get("id") is not None else f"task #{index + 1}"
        annotations = raw.get("annotations")
        chosen, usable = _pick_annotation(annotations if isinstance(annotations, list) else [])
        if chosen is None:
            unannotated += 1
            continue
        several += usable > 1
        results = chosen.get("result", [])
        if not isinstance(results, list):
            raise _bad(path, f"has an annotation of {task_name} whose result is not a list")
        regions = []
        for result in results:
            if _check_result(path, task_name, result):
                regions.append(result)
                labels.setdefault(_label(result), None)
            elif isinstance(result, dict) and result.get("type"):
                ignored[str(result["type"])] = ignored.get(str(result["type"]), 0) + 1
        ref = _image_ref(raw["data"], config.image_key if config is not None else None)
        if ref is None:
            raise _bad(
                path,
                f"has {task_name} without an image in its data ({', '.join(map(str, raw['data'])) or 'empty'})",
            )
        tasks.append(LabelStudioTask(task_name, ref, tuple(regions)))
    return LabelStudioData(path, tasks, list(labels), unannotated, several, ignored, config)


def _image_ref(data: dict[str, Any], key: str | None) -> str | None:
    if key is not None:
        value = data.get(key)
        return value if isinstance(value, str) and value else None
    if isinstance(data.get("image"), str) and data["image"]:
        return data["image"]
    named = [
        v for v in data.values() if isinstance(v, str) and PurePosixPath(_path_part(v)).suffix.lower() in IMAGE_SUFFIXES
    ]
    return named[0] if len(named) == 1 else None


def _path_part(ref: str) -> str:
    """The file path a task's image reference names (the ``d=`` of a local-files URL, else the URL's path)."""
    parsed = urlparse(ref)
    query = parse_qs(parsed.query)
    if "d" in query and query["d"]:
        return query["d"][0]
    return unquote(parsed.path) if parsed.scheme or ref.startswith("/data/") else ref


def image_candidates(ref: str) -> list[PurePosixPath]:
    """Relative paths to try for a task's image, best first.

    ``/data/local-files/?d=sub/x.png`` → ``sub/x.png``, then ``x.png``; ``/data/upload/3/1a2b3c4d-x.png`` →
    ``1a2b3c4d-x.png``, then ``x.png`` (the upload prefix stripped); ``https://host/a/x.png``, ``s3://b/a/x.png``
    → ``a/x.png``, ``x.png``; a plain relative path → itself, then its file name. Every shorter tail of the path
    comes between (``pool/b/x.png`` → ``pool/b/x.png``, ``b/x.png``, ``x.png``): a URL prefix that names the
    images' folder (``--image-root-url https://host/pool/``) must not pair ``b/x.png``'s task with ``x.png``.
    """
    path = exported_path(_path_part(ref))
    path = PurePosixPath(*path.parts[1:]) if path.is_absolute() else path
    out: list[PurePosixPath] = []
    if not ref.startswith("/data/upload/"):
        out += [PurePosixPath(*path.parts[start:]) for start in range(len(path.parts))]
    out.append(PurePosixPath(path.name))
    stripped = _UPLOAD_PREFIX.sub("", path.name)
    if stripped != path.name:
        out.append(PurePosixPath(stripped))
    return list(dict.fromkeys(p for p in out if p.parts and ".." not in p.parts))


def read_labeling_config(path: Path) -> LabelingConfig | None:
    """The brush/polygon labels, their colours and the image key of a Label Studio labelling config, or None when
    ``path`` is not one (not XML, or no ``<View>`` root).

    Raises:
        DataError: a config that names no label of those kinds.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    if root.tag != "View":
        return None
    labels: dict[str, str] = {}
    for tag in root.iter():
        if tag.tag in ("BrushLabels", "PolygonLabels"):
            for label in tag.iter("Label"):
                if label.get("value"):
                    labels.setdefault(label.get("value"), label.get("background", ""))
    image = next((t.get("value", "") for t in root.iter("Image")), "")
    if not labels:
        raise DataError(
            f"Labelling config {path} has no BrushLabels or PolygonLabels labels; add <Label value=...> entries or "
            "remove the file."
        )
    hexes = [_HEX.fullmatch(c) for c in labels.values()]
    colours = tuple(tuple(int(m.group(1)[i : i + 2], 16) for i in (0, 2, 4)) for m in hexes) if all(hexes) else None
    return LabelingConfig(path, tuple(labels), colours, image[1:] if image.startswith("$") else None)  # type: ignore[arg-type]
