"""The result of discovering a support folder (:func:`fsdistill.data.discover.discover`): its image/mask pairs
and how to decode each mask."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsdistill.data.coco import CocoData
from fsdistill.data.images import exif_quarter_turn, image_size, read_image
from fsdistill.data.labelstudio import LabelStudioData
from fsdistill.data.masks import (
    IGNORE_INDEX,
    Rgb,
    colours_to_index,
    decode_binary,
    jpeg_threshold,
    read_binary_source,
    read_index_mask,
    read_rgb_mask,
    union_instances,
)
from fsdistill.errors import DataError

__all__ = ["Sample", "SupportIndex", "file_sha256"]


@dataclass(frozen=True)
class Sample:
    """One image with its annotation. ``key``: unique and stable (the image's path relative to its image folder
    without suffix), for leakage checks and output names. ``mask_paths``: one per object for DSB2018, the JSON
    for COCO and Label Studio. ``class_id``: the class a binary mask's foreground becomes.
    """

    key: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    coco_id: int | None = None
    class_id: int = 1
    task_index: int | None = None


@dataclass(frozen=True)
class SupportIndex:
    """All usable pairs of a support folder and how to decode their masks to H×W uint8 class ids (255 = ignore).
    The fields after ``warnings`` are decoding details."""

    root: Path
    layout: str
    mask_kind: str
    class_names: list[str]
    palette: list[Rgb]
    samples: list[Sample]
    orphan_images: list[Path] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    data_root: Path | None = None  # the folder the layout was found in (root or one of its subfolders)
    names_source: str = "defaults"  # where class_names came from, for messages and reports
    binary_threshold: int = 128  # binary kinds: foreground = value >= this (1 for 0/1 masks)
    colour_table: dict[Rgb, int] | None = field(default=None, repr=False)  # rgb kind: colour -> class id
    value_map: np.ndarray | None = field(default=None, repr=False)  # index kind: 256 mask values -> class ids
    # Pixels of each class over all masks where the folder scan counts them (index and colour masks), else None.
    class_pixels: list[int] | None = field(default=None, repr=False)
    coco: CocoData | None = field(default=None, repr=False)
    labelstudio: LabelStudioData | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> np.ndarray:
        """H×W×3 uint8 RGB of sample ``i`` (EXIF orientation applied)."""
        return read_image(self.samples[i].image_path)

    def load_mask(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """H×W uint8 class ids of sample ``i``; ``size``: the image's (width, height) if known (else read).

        Raises:
            DataError: unreadable mask, a size that differs from the image's, an unknown colour, or a class id
                ≥ len(class_names) other than 255.
        """
        s = self.samples[i]
        where = s.mask_paths[0]
        w, h = size if size is not None else image_size(s.image_path)
        if self.layout == "coco":
            assert self.coco is not None and s.coco_id is not None
            m = self.coco.mask(s.coco_id, h, w)
        elif self.layout == "labelstudio":
            assert self.labelstudio is not None and s.task_index is not None
            m = self.labelstudio.mask(s.task_index, h, w, self.class_names)
        elif self.layout == "dsb2018":
            m = union_instances(s.mask_paths, s.class_id)
        elif self.mask_kind in ("binary", "jpeg-binary", "instances"):
            raw = read_binary_source(where)
            # A 0/1 PNG among 0/255 ones (class folders gathered from two tools) is read by its own encoding.
            one = self.mask_kind == "binary" and raw.size and int(raw.max()) == 1
            threshold = jpeg_threshold(raw) if self.mask_kind == "jpeg-binary" else self.binary_threshold
            m = decode_binary(raw, 1 if one else threshold, s.class_id)
        elif self.mask_kind == "index":
            m = read_index_mask(where)
            if self.value_map is not None:
                m = self.value_map[m]
        else:
            assert self.mask_kind == "rgb" and self.colour_table is not None
            m = colours_to_index(read_rgb_mask(where), self.colour_table, where)
        if m.shape != (h, w):
            if self.layout == "coco":
                raise DataError(
                    f"COCO file {where} gives {s.image_path.name} the size {m.shape[1]}×{m.shape[0]} but the image "
                    f"is {w}×{h}; fix width/height in its images entry (or the image's EXIF rotation)."
                )
            # Same size turned by 90°: usually one of the two files carries an EXIF rotation the other lacks (a
            # phone photo whose mask was drawn on the stored pixels); resizing would only distort the mask.
            turned = self._quarter_turn_note(s.image_path, where) if m.shape == (w, h) else ""
            if turned:
                raise DataError(
                    f"Mask {where} is {m.shape[1]}×{m.shape[0]} but its image {s.image_path} is {w}×{h}, the same "
                    f"size turned by 90°: {turned}; save the mask in the image's displayed orientation (rotate it "
                    "by 90°) or re-export the pair with the same orientation, do not resize it."
                )
            raise DataError(
                f"Mask {where} is {m.shape[1]}×{m.shape[0]} but its image {s.image_path} is {w}×{h}; resize the "
                "mask to the image (nearest neighbour) or re-export the pair."
            )
        n = len(self.class_names)
        if n <= int(m.max(initial=0)):
            bad = m[(m >= n) & (m != IGNORE_INDEX)]
            if bad.size:
                raise DataError(
                    f"Mask {where} has class id {int(bad.min())} but {self.names_source} lists {n} classes "
                    f"({', '.join(self.class_names[:8])}); add the name or fix the mask."
                )
        return m

    @staticmethod
    def _quarter_turn_note(image_path: Path, mask_path: Path) -> str:
        """Why a mask and its image are the same size turned by 90°, if an EXIF orientation tag explains it."""
        image_turned, mask_turned = exif_quarter_turn(image_path), exif_quarter_turn(mask_path)
        if image_turned and not mask_turned:
            return "the image's EXIF orientation tag turns it by 90° for display and the mask has no such tag"
        if mask_turned and not image_turned:
            return "the mask's EXIF orientation tag turns it by 90° and the image has no such tag"
        return ""

    def unused_classes(self) -> list[str]:
        """Foreground classes without a single pixel in any mask (where the folder scan counts pixels, else [])."""
        if self.class_pixels is None:
            return []
        return [self.class_names[k] for k, n in enumerate(self.class_pixels) if k and not n]

    def drop_class_hint(self, unused: list[str] | None = None) -> str:
        """How to drop a listed class, in the terms of where the class names came from (for messages); with the
        ``unused`` classes, also a hint when they include the last name of a names file, the sign of names shifted
        by one (a background line in a word not known as background, taken as class 1)."""
        source = self.names_source
        if unused and unused[-1] == self.class_names[-1] and len(self.class_names) > 2:
            if source.lower().endswith((".txt", ".yaml", ".yml", ".json")) and not source.startswith("COCO"):
                return (
                    f"{self._drop_class_hint()}; if {source}'s names look shifted by one, its first name "
                    f"{self.class_names[1]!r} may be the background: call it 'background'"
                )
        return self._drop_class_hint()

    def empty_masks_hint(self) -> str:
        """What to check when no mask has a foreground pixel, in the terms of the layout (for messages)."""
        if (
            self.mask_kind == "index"
            and len(self.class_names) > 2
            and self.names_source not in ("defaults", "mask values")
        ):
            # 0/255 binary masks beside a names file of two or more classes: read as ids, 255 as ignore.
            return (
                f"with {len(self.class_names) - 1} classes in {self.names_source} the masks are read as class ids "
                "(255 = ignore), so 0/255 binary masks show no class; a binary folder lists one class"
            )
        if self.coco is not None:
            anns = [a for per_image in self.coco.annotations.values() for a in per_image]
            if anns and all(a.get("iscrowd", 0) for a in anns):
                return (
                    f"all {len(anns)} annotations of {self.coco.path.name} are crowd regions (iscrowd 1), which are "
                    "ignored in training and scoring; export the objects with iscrowd 0"
                )
        return "check the mask values (binary masks need 255 or 1 for the object) and the names file"

    def _drop_class_hint(self) -> str:
        source = self.names_source
        unused = [self.class_names.index(name) for name in self.unused_classes()]
        numbered = all(self.class_names[k] == f"class_{k}" for k in unused)
        in_use = [k for k in range(1, len(self.class_names)) if k not in unused]
        if (
            source.lower().endswith((".yaml", ".yml", ".json"))
            and unused
            and numbered
            and max(unused) < max(in_use, default=0)
        ):
            # names: {1: a, 7: b} skips ids 2-6, named class_2..class_6 and shown by no mask, below a class in use.
            return f"number the classes in {source} and the masks without gaps (ids 1, 2, 3, ...)"
        if source == "class folder names":
            return "remove its folder"
        if source.startswith("COCO categories"):
            return f"remove it from the {source}"
        if source in ("defaults", "mask values"):
            return "check the mask values"
        if self.layout in ("labelstudio", "cvat") or source.endswith(("labelmap.txt", ".xml")):
            return f"remove it from {source}"  # regions and colour masks: no class ids to renumber
        return f"remove it from {source} (and renumber the masks)"

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H×W×3 uint8 RGB image, H×W uint8 class-id mask) of sample ``i``, sizes checked."""
        img = self.load_image(i)
        return img, self.load_mask(i, size=(img.shape[1], img.shape[0]))

    def fingerprint(self) -> str:
        """sha256 hex over the class names and, sorted by key, each sample's key and the sha256 of its image and
        mask files (COCO, Label Studio: of its annotations), so moving a folder keeps it and editing a pixel
        changes it."""
        h = hashlib.sha256()
        h.update(("\n".join(self.class_names) + "\n\n").encode())
        for s in sorted(self.samples, key=lambda s: s.key):
            if self.layout == "coco":
                assert self.coco is not None and s.coco_id is not None
                image, anns = self.coco.images[s.coco_id], self.coco.annotations.get(s.coco_id, [])
                mask_sha = _json_sha256({"image": image.__dict__, "anns": anns})
            elif self.layout == "labelstudio":
                assert self.labelstudio is not None and s.task_index is not None
                task = self.labelstudio.tasks[s.task_index]
                mask_sha = _json_sha256({"image": task.image_ref, "results": list(task.results)})
            elif len(s.mask_paths) == 1:
                mask_sha = file_sha256(s.mask_paths[0])
            else:
                mask_sha = hashlib.sha256("".join(file_sha256(p) for p in s.mask_paths).encode()).hexdigest()
            h.update(f"{s.key}\t{file_sha256(s.image_path)}\t{mask_sha}\t{s.class_id}\n".encode())
        return h.hexdigest()


def _json_sha256(entry: dict) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB chunks.

    Raises:
        DataError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}; check that the file exists and is readable.") from e
    return h.hexdigest()
