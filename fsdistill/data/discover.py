"""Find the image/mask pairs and the classes in a support folder, whatever layout the user already has.

Layouts (``SupportIndex.layout``), tried in this order in the folder, then in each of its subfolders:

- ``coco``: one COCO ``*.json`` (images, annotations, categories) beside the images or an ``images/`` folder
  (also ``annotations/*.json``).
- ``paired`` / ``cvat``: an image folder and a mask folder side by side, matched by relative path and stem:
  ``images/``+``masks/``, ``img/``+``gt/``, ``JPEGImages/``+``SegmentationClass[PNG]/``, Kvasir-SEG, ISIC 2018
  ``*_Input/``+``*_GroundTruth/``. Mask stems may end in ``_mask``, ``_segmentation``, ``_gt``, ``_label(s)``,
  ``-mask`` (stripped). With a ``labelmap.txt`` and a ``SegmentationClass/`` folder the layout is ``cvat``.
- ``dsb2018``: ``<id>/images/<one image>`` + ``<id>/masks/*.png`` (one file per object, unioned).
- ``class-folders`` (FSS-1000): ``<class>/x.jpg`` + ``<class>/x.png``; class ids follow the sorted folder names.
- ``paired`` (flat): ``x.jpg`` + ``x.png`` (or ``x_mask.png``) in the folder itself.

Mask kinds (``SupportIndex.mask_kind``) for paired folders are read off the mask values of all masks: 0/1 or
0/255 → ``binary``; other values → ``index`` (value = class id, 255 = ignore); colours → ``rgb``; JPEG files →
``jpeg-binary`` (threshold 128); 16-bit label images with values > 255 → ``instances`` (every label > 0 is
foreground). Anti-aliased binary masks (mostly 0/255 with a fringe of greys, common after resizing) are
thresholded at 128 with a warning rather than read as dozens of classes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fsdistill.data.coco import CocoData, load_coco, read_coco_json
from fsdistill.data.images import _PIL_ERRORS, IMAGE_SUFFIXES, exif_quarter_turn, image_size, read_image
from fsdistill.data.masks import (
    BACKGROUND_NAMES,
    IGNORE_INDEX,
    Rgb,
    colours_to_index,
    decode_binary,
    default_palette,
    edge_pixels,
    pack_rgb,
    parse_labelmap,
    read_binary_source,
    read_index_mask,
    read_mask_array,
    read_rgb_mask,
    resolve_blends,
    union_instances,
)
from fsdistill.errors import DataError

__all__ = ["Sample", "SupportIndex", "discover", "read_class_names", "LAYOUTS", "MASK_KINDS", "MASK_STEM_SUFFIXES"]

LAYOUTS = ("paired", "dsb2018", "class-folders", "coco", "cvat")
MASK_KINDS = ("binary", "index", "rgb", "coco", "instances", "jpeg-binary")

# Suffixes annotation tools append to a mask's stem; stripped (case-insensitively) to find its image.
MASK_STEM_SUFFIXES = ("_segmentation", "_masks", "_mask", "-masks", "-mask", "_labels", "_label", "_gt", "_seg")
JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
# Folder names, best first. A candidate only counts if it holds image files (a YOLO "labels/" of .txt does not).
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "jpegimages", "inputs", "input", "originals", "raw")
MASK_DIR_NAMES = (
    "masks", "mask", "gt", "gts", "groundtruth", "ground_truth", "ground-truth", "segmentationclass",
    "segmentationclasspng", "segmentationclassaug", "segmentationclassraw", "segmentations", "segmentation",
    "labels", "label", "annotations", "targets",
)  # fmt: skip
# VOC paints "difficult/boundary" pixels in this colour; in colour masks without a label map it means ignore.
VOC_IGNORE_COLOUR = (224, 224, 192)
MAX_AUTO_COLOURS = 64  # more real colours than this without a label map means noise or lossy saving
# Distinct colours read from the masks before giving up on them (smoothed edges of a few classes stay far below:
# at most 256 mixtures per pair of colours).
MAX_SCANNED_COLOURS = 4096
LOOKED_FOR = (
    "images/+masks/ (also img/+gt/, JPEGImages/+SegmentationClass/, Kvasir-SEG, ISIC *_Input/+*_GroundTruth/), "
    "a COCO *.json, DSB2018 <id>/images/+<id>/masks/, class folders with x.jpg+x.png, and x.jpg+x_mask.png side "
    "by side, in the folder and one level down"
)


@dataclass(frozen=True)
class Sample:
    """One image with its annotation.

    ``key`` is unique and stable: the image's path relative to its image folder without suffix ("x", "cat/x",
    a DSB2018 id), used for leakage checks and output names. The other fields are for decoding the mask:
    ``mask_paths`` (one file; several for DSB2018 instances; the JSON for COCO), ``coco_id`` and ``class_id``
    (the class a binary mask's foreground becomes: the folder's class for class folders, else 1).
    """

    key: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    coco_id: int | None = None
    class_id: int = 1


@dataclass
class SupportIndex:
    """All usable pairs of a support folder and how to decode their masks.

    Masks decode to H×W uint8 class ids (0 = background, 1..N-1 the classes, 255 = ignore).
    The fields after ``warnings`` are decoding details set by :func:`discover`.
    """

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
    # Pixels of each class over all masks at full resolution, where the folder scan counts them (index and colour
    # masks); None elsewhere (binary, COCO, DSB2018, class folders).
    class_pixels: list[int] | None = field(default=None, repr=False)
    coco: CocoData | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> np.ndarray:
        """H×W×3 uint8 RGB of sample ``i`` (EXIF orientation applied)."""
        return read_image(self.samples[i].image_path)

    def load_mask(self, i: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """H×W uint8 class ids of sample ``i``; 255 = ignore.

        Args:
            size: the image's (width, height) when already known; read from the image header otherwise.

        Raises:
            DataError: unreadable mask, a size that differs from the image's, an unknown colour, or a class id
                ≥ len(class_names) other than 255.
        """
        s = self.samples[i]
        where = s.mask_paths[0] if s.mask_paths else s.image_path
        w, h = size if size is not None else image_size(s.image_path)
        if self.layout == "coco":
            assert self.coco is not None and s.coco_id is not None
            m = self.coco.mask(s.coco_id, h, w)
        elif self.layout == "dsb2018":
            m = union_instances(s.mask_paths, s.class_id)
        elif self.mask_kind in ("binary", "jpeg-binary", "instances"):
            m = decode_binary(read_binary_source(where), self.binary_threshold, s.class_id)
        elif self.mask_kind == "index":
            m = read_index_mask(where)
            if self.value_map is not None:
                m = self.value_map[m]
        elif self.mask_kind == "rgb":
            assert self.colour_table is not None
            m = colours_to_index(read_rgb_mask(where), self.colour_table, where)
        else:  # pragma: no cover - discover never produces another kind
            raise ValueError(f"unknown mask kind {self.mask_kind!r}")
        if m.shape != (h, w) and self.layout == "coco":
            raise DataError(
                f"COCO file {where} gives {s.image_path.name} the size {m.shape[1]}×{m.shape[0]} but the image is "
                f"{w}×{h}; fix width/height in its images entry (or the image's EXIF rotation)."
            )
        if m.shape != (h, w) and m.shape == (w, h):
            # Same size turned by 90°: usually one of the two files carries an EXIF rotation the other lacks (a
            # phone photo whose mask was drawn on the stored pixels); resizing would only distort the mask.
            turned = self._quarter_turn_note(s.image_path, where)
            if turned:
                raise DataError(
                    f"Mask {where} is {m.shape[1]}×{m.shape[0]} but its image {s.image_path} is {w}×{h}, the same "
                    f"size turned by 90°: {turned}; save the mask in the image's displayed orientation (rotate it "
                    "by 90°) or re-export the pair with the same orientation, do not resize it."
                )
        if m.shape != (h, w):
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

    def drop_class_hint(self) -> str:
        """How to drop a listed class, in the terms of where the class names came from (for messages)."""
        source = self.names_source
        if source == "class folder names":
            return "remove its folder"
        if source.startswith("COCO categories"):
            return f"remove it from the {source}"
        if source in ("defaults", "mask values"):
            return "check the mask values"
        return f"remove it from {source} (and renumber the masks)"

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H×W×3 uint8 RGB image, H×W uint8 class-id mask) of sample ``i``, sizes checked."""
        img = self.load_image(i)
        return img, self.load_mask(i, size=(img.shape[1], img.shape[0]))

    def fingerprint(self) -> str:
        """sha256 hex over the class names and, sorted by key, each (key, image bytes sha256, mask sha256).

        Mask sha256 is over the mask file's bytes (DSB2018: over its instance files' hashes in name order; COCO:
        over the image's annotations as canonical JSON), so renaming a folder keeps it and editing a pixel
        changes it.
        """
        h = hashlib.sha256()
        h.update(("\n".join(self.class_names) + "\n\n").encode())
        for s in sorted(self.samples, key=lambda s: s.key):
            if self.layout == "coco":
                assert self.coco is not None and s.coco_id is not None
                entry = {
                    "image": self.coco.images[s.coco_id].__dict__,
                    "anns": self.coco.annotations.get(s.coco_id, []),
                }
                mask_sha = hashlib.sha256(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()
            elif len(s.mask_paths) == 1:
                mask_sha = _file_sha256(s.mask_paths[0])
            else:
                mask_sha = hashlib.sha256("".join(_file_sha256(p) for p in s.mask_paths).encode()).hexdigest()
            h.update(f"{s.key}\t{_file_sha256(s.image_path)}\t{mask_sha}\t{s.class_id}\n".encode())
        return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}; check that the file exists and is readable.") from e
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- file listing


def _hidden(p: Path) -> bool:
    # macOS resource forks (._x.png), .DS_Store, __MACOSX/ and editor backups are never data.
    return p.name.startswith((".", "~")) or p.name == "__MACOSX"


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not _hidden(p))


def _image_files(d: Path, recursive: bool = False) -> list[Path]:
    it = d.rglob("*") if recursive else d.iterdir()
    out = [
        p
        for p in it
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(_hidden(Path(part)) for part in p.relative_to(d).parts)
        and p.is_file()
    ]
    return sorted(out)


def _strip_mask_suffix(stem: str) -> str:
    low = stem.lower()
    for suf in MASK_STEM_SUFFIXES:
        if low.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def _key(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


# ------------------------------------------------------------------------------------------ layout detectors


@dataclass
class _Found:
    """What a detector found, before mask kinds and class names are decided."""

    layout: str
    data_root: Path
    samples: list[Sample]
    orphan_images: list[Path] = field(default_factory=list)
    orphan_masks: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_folders: list[str] | None = None
    coco: CocoData | None = None
    image_dir: Path | None = None
    mask_dir: Path | None = None
    unmatched_hint: str = ""  # set when folders were found but no names matched


def _dir_rank(name: str, names: Sequence[str], pattern: str) -> int | None:
    low = name.lower()
    if low in names:
        return names.index(low)
    if pattern in low.replace("_", "").replace("-", ""):
        return len(names)  # ISIC-style "ISIC2018_Task1-2_Training_Input" / "..._GroundTruth"
    return None


def _match_paired(img_dir: Path, mask_dir: Path, images: list[Path], masks: list[Path]) -> _Found:
    """Pair images and masks by relative path and stem (mask suffixes stripped)."""
    by_key: dict[str, Path] = {}
    for p in images:
        k = _key(p, img_dir)
        if k in by_key:
            raise DataError(
                f"Images {by_key[k]} and {p} have the same name apart from the extension; remove or rename one."
            )
        by_key[k] = p
    mask_of: dict[str, Path] = {}
    orphan_masks: list[Path] = []
    for m in masks:
        rel = m.relative_to(mask_dir).with_suffix("")
        full = rel.as_posix()
        stripped = (rel.parent / _strip_mask_suffix(rel.name)).as_posix()
        k = full if full in by_key else stripped if stripped in by_key else None
        if k is None:
            orphan_masks.append(m)
            continue
        if k in mask_of:
            raise DataError(f"Masks {mask_of[k]} and {m} both belong to image {by_key[k]}; keep one mask per image.")
        mask_of[k] = m
    samples = [Sample(k, by_key[k], (mask_of[k],)) for k in sorted(mask_of)]
    orphan_images = [p for k, p in sorted(by_key.items()) if k not in mask_of]
    return _Found("paired", img_dir.parent, samples, orphan_images, orphan_masks, image_dir=img_dir, mask_dir=mask_dir)


def _find_paired(d: Path) -> _Found | None:
    subs = _subdirs(d)
    img_c = [(r, s) for s in subs if (r := _dir_rank(s.name, IMAGE_DIR_NAMES, "input")) is not None]
    mask_c = [(r, s) for s in subs if (r := _dir_rank(s.name, MASK_DIR_NAMES, "groundtruth")) is not None]
    img_c = [(r, s, f) for r, s in img_c if (f := _image_files(s, recursive=True))]
    mask_c = [(r, s, f) for r, s in mask_c if s not in [x[1] for x in img_c] and (f := _image_files(s, True))]
    if not img_c or not mask_c:
        return None
    # Score every (image folder, mask folder) pair by matched names; the best wins, folder-name rank breaks ties.
    # This picks ISIC's Task1 ground truth over Task2's attribute masks, and SegmentationClass over
    # SegmentationClassAug, without hard-coding either.
    tried = []
    for ri, si, fi in img_c:
        for rm, sm, fm in mask_c:
            found = _match_paired(si, sm, fi, fm)
            tried.append((-len(found.samples), ri + rm, si.name, sm.name, found))
    tried.sort(key=lambda t: t[:4])
    best = tried[0][4]
    if not best.samples:
        ri, si, fi = img_c[0]
        rm, sm, fm = mask_c[0]
        best.unmatched_hint = (
            f"found {si.name}/ and {sm.name}/ in {d} but no file names match (e.g. image {fi[0].name}, mask "
            f"{fm[0].name}); name each mask like its image (suffixes {', '.join(MASK_STEM_SUFFIXES[:5])} are ignored)"
        )
        return best
    for n_neg, _, a, b, other in tried[1:]:
        if other.samples and {s.image_path for s in other.samples}.isdisjoint({s.image_path for s in best.samples}):
            best.warnings.append(
                f"Also found {a}/ + {b}/ with {-n_neg} pairs in {d}; only {best.image_dir.name}/ + "  # type: ignore[union-attr]
                f"{best.mask_dir.name}/ is used, so move the other pair to its own folder."  # type: ignore[union-attr]
            )
    return best


def _pairs_in_folder(d: Path) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pairs of image + mask side by side in one folder: (stem, image, mask), orphan images, orphan masks.

    ``x.jpg`` + ``x.png`` (the PNG is the mask, FSS-1000) or ``x.<ext>`` + ``x_mask.<ext>`` (the suffixed one is).
    """
    groups: dict[str, list[Path]] = {}
    for p in _image_files(d):
        groups.setdefault(_strip_mask_suffix(p.stem), []).append(p)
    pairs, lone = [], []
    for base, files in sorted(groups.items()):
        named = [f for f in files if f.stem != base]  # carries a mask suffix
        plain = [f for f in files if f.stem == base]
        if named and len(named) == 1 and len(plain) == 1:
            pairs.append((base, plain[0], named[0]))
        elif not named and len(plain) == 2 and sum(f.suffix.lower() == ".png" for f in plain) == 1:
            img, msk = sorted(plain, key=lambda f: f.suffix.lower() == ".png")
            pairs.append((base, img, msk))
        elif len(files) == 1:
            lone.append(files[0])
        else:
            raise DataError(
                f"Cannot tell image from mask among {', '.join(f.name for f in files)} in {d}; keep one image and "
                "one mask per name (x.jpg + x.png, or x.png + x_mask.png)."
            )
    # A lone file is a mask without image if it looks like the folder's masks (suffix or extension), else an image.
    mask_ext = {m.suffix.lower() for _, _, m in pairs}
    img_ext = {i.suffix.lower() for _, i, _ in pairs}
    orphan_masks = [f for f in lone if f.stem != _strip_mask_suffix(f.stem) or (f.suffix.lower() in mask_ext - img_ext)]
    orphan_images = [f for f in lone if f not in orphan_masks]
    return pairs, orphan_images, orphan_masks


def _find_class_folders(d: Path) -> _Found | None:
    samples: list[Sample] = []
    classes: list[str] = []
    oi: list[Path] = []
    om: list[Path] = []
    per_class: list[tuple[str, list[tuple[str, Path, Path]]]] = []
    for s in _subdirs(d):
        pairs, a, b = _pairs_in_folder(s)
        oi += a
        om += b
        if pairs:
            per_class.append((s.name, pairs))
    if not per_class:
        return None
    for cid, (name, pairs) in enumerate(per_class, 1):
        classes.append(name)
        samples += [Sample(f"{name}/{base}", img, (msk,), class_id=cid) for base, img, msk in pairs]
    return _Found("class-folders", d, samples, oi, om, class_folders=classes)


def _find_flat(d: Path) -> _Found | None:
    pairs, oi, om = _pairs_in_folder(d)
    if not pairs:
        return None
    return _Found("paired", d, [Sample(base, img, (msk,)) for base, img, msk in pairs], oi, om)


def _find_dsb(d: Path) -> _Found | None:
    samples, oi, om = [], [], []
    seen = False
    for s in _subdirs(d):
        idir, mdir = s / "images", s / "masks"
        if not idir.is_dir():
            continue
        imgs = _image_files(idir)
        if len(imgs) > 1:
            return None  # many images per folder: a paired layout one level down, not DSB2018
        masks = _image_files(mdir) if mdir.is_dir() else []
        if imgs and any(_strip_mask_suffix(m.stem) == imgs[0].stem for m in masks):
            return None  # masks named like the image: a paired folder (e.g. train/, val/), not per-object files
        seen = seen or bool(masks)
        if imgs and masks:
            samples.append(Sample(s.name, imgs[0], tuple(masks)))
        elif imgs:
            oi.append(imgs[0])
        else:
            om += masks
    if not seen:
        return None
    return _Found("dsb2018", d, samples, oi, om)


def _find_coco(d: Path) -> _Found | None:
    cands = [p for p in sorted(d.glob("*.json")) if not _hidden(p)]
    if (d / "annotations").is_dir():
        cands += [p for p in sorted((d / "annotations").glob("*.json")) if not _hidden(p)]
    found = [(p, data) for p in cands if (data := read_coco_json(p)) is not None]
    if not found:
        return None
    if len(found) > 1:
        raise DataError(
            f"Found several COCO files in {d} ({', '.join(p.name for p, _ in found)}); keep the one for this "
            "support set, or move each to its own folder with its images."
        )
    jpath, data = found[0]
    coco = load_coco(jpath, data)
    # file_name is relative to some image root the JSON does not name: try the usual ones, then every subfolder.
    bases = list(dict.fromkeys([jpath.parent, d, d / "images", *_subdirs(d)]))
    samples: list[Sample] = []
    warnings: list[str] = []
    missing: list[str] = []
    used: set[Path] = set()
    keys: dict[str, str] = {}
    for iid, im in sorted(coco.images.items(), key=lambda kv: kv[1].file_name):
        rel = Path(im.file_name)
        path = next(
            (p for b in bases for p in (b / rel, b / rel.name) if not rel.is_absolute() and p.is_file()),
            rel if rel.is_absolute() and rel.is_file() else None,
        )
        if path is None:
            missing.append(im.file_name)
            continue
        key = rel.with_suffix("").as_posix() if not rel.is_absolute() and ".." not in rel.parts else rel.stem
        if key in keys:
            raise DataError(f"COCO file {jpath} lists {im.file_name!r} twice; keep one entry per image.")
        keys[key] = im.file_name
        used.add(path.resolve())
        samples.append(Sample(key, path, (jpath,), coco_id=iid))
    if missing:
        warnings.append(
            f"{len(missing)} images listed in {jpath.name} were not found (e.g. {missing[0]}); put them beside the "
            "JSON or in images/."
        )
    pool = _image_files(d) + (_image_files(d / "images", recursive=True) if (d / "images").is_dir() else [])
    orphans = sorted({p for p in pool if p.resolve() not in used})
    found_ = _Found("coco", d, samples, orphans, [], warnings, coco=coco)
    if not samples and missing:
        found_.unmatched_hint = (
            f"COCO file {jpath.name} lists {len(missing)} images but none was found (e.g. {missing[0]}); put the "
            "images beside the JSON or in images/"
        )
    return found_


def _detect(d: Path, top: bool) -> _Found | None:
    detectors = [_find_coco, _find_paired, _find_dsb, _find_class_folders] + ([_find_flat] if top else [])
    hint: _Found | None = None
    for det in detectors:
        f = det(d)
        if f is not None and f.samples:
            return f
        if f is not None and hint is None:
            hint = f
    return hint


# ------------------------------------------------------------------------------------------------ class names


def _background_first(names: list[str], path: Path) -> list[str]:
    names = [n.strip() for n in names]
    if any(not n for n in names):
        raise DataError(f"Names file {path} has an empty class name; give every class a name.")
    bg = [k for k, n in enumerate(names) if n.lower() in BACKGROUND_NAMES]
    if bg and bg != [0]:
        raise DataError(f"Names file {path} lists background at position {bg[0]}; move it to the first line (id 0).")
    if not bg:
        names = ["background", *names]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"Names file {path} lists {dup!r} twice; each class needs its own name.")
    return names


def read_class_names(path: Path | str) -> list[str]:
    """Class names from ``classes.txt`` (one per line, line = id), ``labelmap.txt`` or a YAML/JSON with
    ``names:`` (a list, or {id: name}). "background" is put first at id 0 when the file does not start with it;
    ids missing from a {id: name} mapping are named ``class_<id>``.

    Raises:
        DataError: unreadable file, no names, duplicates, or background not first.
    """
    path = Path(path)
    if path.name.lower() == "labelmap.txt":
        return parse_labelmap(path)[0]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read names file {path}: {e}; save it as UTF-8 text.") from e
    if path.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        names = [ln for ln in lines if not ln.startswith("#")]
    else:
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as e:
            raise DataError(f"Cannot parse names file {path}: {str(e).splitlines()[0]}; fix its syntax.") from e
        raw = data.get("names") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            try:
                by_id = {int(k): str(v) for k, v in raw.items()}
            except (TypeError, ValueError) as e:
                raise DataError(
                    f"Names file {path} has a non-integer id in names:; use {{0: background, 1: ...}}."
                ) from e
            if not by_id or min(by_id) < 0:
                raise DataError(f"Names file {path} has no names or a negative id; use ids 0, 1, 2, ...")
            start = 0 if 0 in by_id else 1  # {1: polyp} leaves 0 to background
            names = ([] if start == 0 else ["background"]) + [
                by_id.get(i, f"class_{i}") for i in range(start, max(by_id) + 1)
            ]
        elif isinstance(raw, list):
            names = [str(n) for n in raw]
        else:
            raise DataError(f"Names file {path} has no names: list or mapping; add names: [background, ...].")
    if not names:
        raise DataError(f"Names file {path} lists no class names; add one name per line.")
    return _background_first(names, path)


def _find_names_file(dirs: Iterable[Path]) -> Path | None:
    for d in dict.fromkeys(dirs):
        for name in ("labelmap.txt", "classes.txt", "class_names.txt", "names.txt"):
            p = d / name
            if p.is_file():
                return p
        for p in sorted(d.iterdir()):
            if p.is_file() and not _hidden(p) and p.suffix.lower() in (".yaml", ".yml", ".json"):
                if p.suffix.lower() == ".json" and p.stat().st_size > 1 << 20:
                    continue  # COCO files and other big JSON: not a names file, and slow to parse
                try:
                    txt = p.read_text(encoding="utf-8-sig")
                    data = json.loads(txt) if p.suffix.lower() == ".json" else yaml.safe_load(txt)
                except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError):
                    continue
                if isinstance(data, dict) and "names" in data:
                    return p
    return None


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


def _decide_kind(found: _Found, names_file: Path | None, warnings: list[str]) -> dict[str, Any]:
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
        entries = [p for p in root.iterdir() if not _hidden(p)]
    except OSError as e:
        raise DataError(f"Cannot list support folder {root}: {e.strerror or e}; check its permissions.") from e
    if not entries:
        raise DataError(f"Support folder {root} is empty; put images and masks in it (for example images/ + masks/).")

    found = _detect(root, top=True)
    if found is None or not found.samples:
        hits = []
        for s in _subdirs(root):
            f = _detect(s, top=False)
            if f is not None and f.samples:
                hits.append(f)
            elif f is not None and found is None:
                found = f  # keep the "names do not match" hint
        if len(hits) > 1:
            raise DataError(
                f"Found support data in several subfolders of {root} ({', '.join(h.data_root.name for h in hits)}); "
                "pass one of them as the support folder."
            )
        if hits:
            found = hits[0]
            found.warnings.insert(0, f"Using subfolder {found.data_root.name}/ of {root}.")
    if found is None or not found.samples:
        if found is not None and found.unmatched_hint:
            raise DataError(f"No image/mask pairs in {root}: {found.unmatched_hint}.")
        raise DataError(f"No image/mask pairs found in {root}; looked for {LOOKED_FOR}.")

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
        idx.class_names = _background_first(list(found.coco.names), found.coco.path)
        if len(idx.class_names) != len(found.coco.names) + 1:
            raise DataError(
                f"COCO file {found.coco.path} has a category named background; rename it (background is id 0)."
            )
        idx.palette = default_palette(len(idx.class_names))
    elif found.layout == "dsb2018":
        names_file = _find_names_file([found.data_root, root])
        names = read_class_names(names_file) if names_file else ["background", "foreground"]
        if len(names) != 2:
            raise DataError(
                f"DSB2018 instance masks are binary but {names_file} lists {len(names)} classes; list one class."
            )
        idx.mask_kind, idx.class_names, idx.palette = "instances", names, default_palette(2)
        idx.names_source = names_file.name if names_file else "defaults"
    else:
        names_file = None if found.layout == "class-folders" else _find_names_file([found.data_root, root])
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
