"""Find the image/mask pairs of a support folder in the folder layouts users already have (README's table), from
file names and annotation JSON only."""

from __future__ import annotations

import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fsdistill.data.coco import CocoData, load_coco, read_coco_json
from fsdistill.data.images import IMAGE_SUFFIXES, exported_path
from fsdistill.data.labelstudio import (
    LabelingConfig,
    LabelStudioData,
    image_candidates,
    load_labelstudio,
    parse_labelstudio_json,
    read_labeling_config,
)
from fsdistill.data.support_index import Sample
from fsdistill.errors import DataError

__all__ = ["FoundPairs", "find_pairs", "is_hidden", "mask_files", "mask_folders", "relative_name", "subdirs"]

# Suffixes annotation tools append to a mask's stem; stripped (case-insensitively) to find its image.
MASK_STEM_SUFFIXES = ("_segmentation", "_masks", "_mask", "-masks", "-mask", "_labels", "_label", "_gt", "_seg")
# Folder names, best first. A candidate only counts if it holds image files (a YOLO "labels/" of .txt does not).
IMAGE_DIR_NAMES = ("images", "image", "imgs", "img", "jpegimages", "inputs", "input", "originals", "raw")
MASK_DIR_NAMES = (
    "masks", "mask", "gt", "gts", "groundtruth", "ground_truth", "ground-truth", "segmentationclass",
    "segmentationclasspng", "segmentationclassaug", "segmentationclassraw", "segmentations", "segmentation",
    "labels", "label", "annotations", "targets",
)  # fmt: skip
LOOKED_FOR = (
    "images/+masks/ (also img/+gt/, JPEGImages/+SegmentationClass/, Kvasir-SEG, ISIC *_Input/+*_GroundTruth/), "
    "a COCO *.json, a Label Studio JSON export, DSB2018 <id>/images/+<id>/masks/, class folders with x.jpg+x.png, and x.jpg+x_mask.png side "
    "by side, in the folder and one level down"
)


@dataclass(frozen=True)
class FoundPairs:
    """The pairs one layout detector found in one folder; ``unmatched_hint``: why a recognised layout has none."""

    layout: str
    data_root: Path
    samples: tuple[Sample, ...]
    orphan_images: tuple[Path, ...] = ()
    orphan_masks: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    class_folders: tuple[str, ...] | None = None  # class ids 1.. in this order
    coco: CocoData | None = None
    labelstudio: LabelStudioData | None = None
    mask_dir: Path | None = None  # the mask folder of an images/+masks/ layout
    unmatched_hint: str = ""


def is_hidden(p: Path) -> bool:
    """macOS resource forks (._x.png), .DS_Store, __MACOSX/ and editor backups are never data."""
    return p.name.startswith((".", "~")) or p.name == "__MACOSX"


def relative_name(path: Path, root: Path) -> str:
    """``path`` as a report names it: below ``root`` (a bare file name is ambiguous, sub/x.jpg beside x.jpg), else
    whole."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not is_hidden(p))


def _image_files(d: Path, recursive: bool = False) -> list[Path]:
    return sorted(
        p
        for p in (d.rglob("*") if recursive else d.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(is_hidden(Path(part)) for part in p.relative_to(d).parts)
        and p.is_file()
    )


def _strip_mask_suffix(stem: str) -> str:
    low = stem.lower()
    for suf in MASK_STEM_SUFFIXES:
        if low.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def _dir_rank(name: str, names: Sequence[str], pattern: str) -> int | None:
    low = name.lower()
    if low in names:
        return names.index(low)
    if pattern in low.replace("_", "").replace("-", ""):
        return len(names)  # ISIC-style "ISIC2018_Task1-2_Training_Input" / "..._GroundTruth"
    return None


# Sibling folders that are a labelled folder's images and masks beyond doubt (mask_folders): the support layouts'
# names less those that also name folders of photographs (originals/, raw/, input/; labels/, annotations/,
# targets/, segmentation/), so a folder of real images is never left out of predict because of its name; plus VOC's
# instance masks (SegmentationObject/, not a support layout: its ids are instances, not classes).
_ALSO_PHOTOGRAPHS = frozenset((
    "inputs", "input", "originals", "raw", "segmentations", "segmentation", "labels", "label", "annotations", "targets",
))  # fmt: skip
_PAIRED_IMAGE_DIRS = tuple(name for name in IMAGE_DIR_NAMES if name not in _ALSO_PHOTOGRAPHS)
_PAIRED_MASK_DIRS = (*(name for name in MASK_DIR_NAMES if name not in _ALSO_PHOTOGRAPHS), "segmentationobject")


def mask_folders(names: Sequence[str]) -> set[str]:
    """Of sibling folder ``names``, those holding a labelled folder's masks: masks/, gt/, SegmentationClass/ (or
    SegmentationObject/) beside images/, img/ or JPEGImages/, and ISIC's *_GroundTruth/ beside *_Input/."""
    lower = {name: name.lower().replace("_", "").replace("-", "") for name in names}
    masks = set()
    if any(name.lower() in _PAIRED_IMAGE_DIRS for name in names):
        masks |= {name for name in names if name.lower() in _PAIRED_MASK_DIRS}
    if any(low.endswith("input") for low in lower.values()):
        masks |= {name for name, low in lower.items() if low.endswith("groundtruth")}
    return masks


# Mask-file suffixes no photograph's name carries (beach_seg.jpg and carnival_label.jpg may be photographs).
_STRONG_MASK_SUFFIXES = ("_mask", "_masks", "-mask", "-masks", "_gt")


def mask_files(root: Path, images: Sequence[Path]) -> set[Path]:
    """Of ``images`` (image files found under ``root``), the masks: those a labelled layout in ``root`` or any
    folder below it (``train/`` + ``val/`` splits, each ``images/`` + ``labels/``) pairs with an image or leaves
    without one, as ``check`` reads such a folder, and files named like the mask of an image beside them
    (``x_mask.png`` beside ``x.jpg``). Unless the folder or file is named as only masks are (``masks/``, ``gt/``,
    ``SegmentationClass/``, ``x_mask``, ``x_gt``), names also fit photographs (``inputs/`` + ``targets/``,
    ``labels/``, ``x_seg``), so there a file counts only if its pixels look like a label map (:func:`_label_map`).
    A labelled folder given as a pool of unlabeled images yields its images only: its masks would be trained on,
    or ranked, as photographs."""
    candidates: set[Path] = set()
    below = (d for d in root.rglob("*") if d.is_dir())
    folders = [root, *(d for d in below if not any(is_hidden(Path(part)) for part in d.relative_to(root).parts))]
    for folder in folders:
        try:
            found = _detect(folder, top=True)
        except (DataError, OSError):  # files that cannot be told apart, an unreadable export: no masks known here
            continue
        if found is not None:
            candidates |= {p.resolve() for s in found.samples for p in s.mask_paths}
            candidates |= {p.resolve() for p in found.orphan_masks}
    stems = {(p.parent, p.stem.lower()) for p in images}
    for p in images:
        base = _strip_mask_suffix(p.stem)
        if base != p.stem and (p.parent, base.lower()) in stems:
            candidates.add(p.resolve())

    def named_as_a_mask(path: Path) -> bool:  # masks/, gt/, x_mask.png, x_gt.png: names photographs never carry
        folders = path.relative_to(root).parts[:-1]
        return any(part.lower() in _PAIRED_MASK_DIRS for part in folders) or path.stem.lower().endswith(
            _STRONG_MASK_SUFFIXES
        )

    return {p for p in images if p.resolve() in candidates and (named_as_a_mask(p) or _label_map(p))}


def _label_map(path: Path) -> bool:
    """Whether an image file's pixels look like a mask: a palette or bilevel image, one of few distinct values (at
    most 64 colours; 160 grey levels, as class-index maps; 1024 values of 16 bits, as instance masks), or one
    whose pixels lie at the two ends of the grey scale (a binary mask saved as JPEG or resized smoothly). A file
    that cannot be read is no mask (it is reported as an unreadable image)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("1", "P"):
                return True
            levels = {"L": 160, "I": 1024, "I;16": 1024, "F": 1024}.get(img.mode, 64)
            if img.getcolors(maxcolors=levels) is not None:
                return True
            grey = np.asarray(img.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    return float(np.mean((grey < 32) | (grey > 223))) >= 0.9


def _loose(name: str) -> str:
    """``name`` as Windows and macOS compare file names: in one Unicode form (NFC), in lower case (not casefold:
    neither system takes "ß" for "ss")."""
    return unicodedata.normalize("NFC", name).lower()


def _match_paired(img_dir: Path, mask_dir: Path, images: list[Path], masks: list[Path]) -> FoundPairs:
    """Pair images and masks by relative path and stem (mask suffixes stripped)."""
    by_key: dict[str, Path] = {}
    for p in images:
        k = p.relative_to(img_dir).with_suffix("").as_posix()
        if k in by_key:
            raise DataError(
                f"Images {by_key[k]} and {p} have the same name apart from the extension; remove or rename one."
            )
        by_key[k] = p
    # Windows and macOS ignore case, macOS writes "é" as e + accent where other systems write one character, and
    # some tools append an extension to a full file name ("x.png.png"): a mask matches such a name when nothing
    # matches exactly (case- and form-blind only where that is unambiguous).
    lowered = Counter(_loose(k) for k in by_key)
    by_lower_key = {_loose(k): k for k in by_key if lowered[_loose(k)] == 1}
    mask_of: dict[str, Path] = {}
    orphan_masks: list[Path] = []
    for m in masks:
        rel = m.relative_to(mask_dir).with_suffix("")
        stems = [rel, rel.with_suffix("")] if rel.suffix.lower() in IMAGE_SUFFIXES else [rel]
        names = [n for r in stems for n in (r.as_posix(), (r.parent / _strip_mask_suffix(r.name)).as_posix())]
        k = next((n for n in names if n in by_key), None)
        k = k or next((by_lower_key[_loose(n)] for n in names if _loose(n) in by_lower_key), None)
        if k is None:
            orphan_masks.append(m)
            continue
        if k in mask_of:
            raise DataError(f"Masks {mask_of[k]} and {m} both belong to image {by_key[k]}; keep one mask per image.")
        mask_of[k] = m
    samples = tuple(Sample(k, by_key[k], (mask_of[k],)) for k in sorted(mask_of))
    orphan_images = tuple(p for k, p in sorted(by_key.items()) if k not in mask_of)
    return FoundPairs("paired", img_dir.parent, samples, orphan_images, tuple(orphan_masks), mask_dir=mask_dir)


def _find_paired(d: Path) -> FoundPairs | None:
    subs = subdirs(d)
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
    _, _, best_images, best_masks, best = tried[0]
    if not best.samples:
        (_, si, fi), (_, sm, fm) = img_c[0], mask_c[0]
        return replace(
            best,
            unmatched_hint=(
                f"found {si.name}/ and {sm.name}/ in {d} but no file names match (e.g. image {fi[0].name}, mask "
                f"{fm[0].name}); name each mask like its image (suffixes {', '.join(MASK_STEM_SUFFIXES[:5])} are "
                "ignored)"
            ),
        )
    used = {s.image_path for s in best.samples}
    also = [
        f"Also found {a}/ + {b}/ with {-n_neg} pairs in {d}; only {best_images}/ + {best_masks}/ is used, so move "
        "the other pair to its own folder."
        for n_neg, _, a, b, other in tried[1:]
        if other.samples and {s.image_path for s in other.samples}.isdisjoint(used)
    ]
    return replace(best, warnings=(*best.warnings, *also))


def _pairs_in_folder(d: Path) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """(stem, image, mask) of the pairs side by side in one folder, then its images and masks without a partner.

    ``x.jpg`` + ``x.png`` (the PNG is the mask, FSS-1000) or ``x.<ext>`` + ``x_mask.<ext>`` (the suffixed one is).
    """
    groups: dict[str, list[Path]] = {}
    for p in _image_files(d):
        groups.setdefault(_strip_mask_suffix(p.stem), []).append(p)
    pairs, lone = [], []
    for base, files in sorted(groups.items()):
        named = [f for f in files if f.stem != base]  # carries a mask suffix
        plain = [f for f in files if f.stem == base]
        if len(named) == 1 and len(plain) == 1:
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


def _find_class_folders(d: Path) -> FoundPairs | None:
    oi: list[Path] = []
    om: list[Path] = []
    per_class: list[tuple[str, list[tuple[str, Path, Path]]]] = []
    for s in subdirs(d):
        pairs, lone_images, lone_masks = _pairs_in_folder(s)
        oi += lone_images
        om += lone_masks
        if pairs:
            per_class.append((s.name, pairs))
    if not per_class:
        return None
    samples = tuple(
        Sample(f"{name}/{base}", img, (msk,), class_id=cid)
        for cid, (name, pairs) in enumerate(per_class, 1)
        for base, img, msk in pairs
    )
    classes = tuple(name for name, _ in per_class)
    return FoundPairs("class-folders", d, samples, tuple(oi), tuple(om), class_folders=classes)


def _find_flat(d: Path) -> FoundPairs | None:
    pairs, lone_images, lone_masks = _pairs_in_folder(d)
    if not pairs:
        return None
    samples = tuple(Sample(base, img, (msk,)) for base, img, msk in pairs)
    return FoundPairs("paired", d, samples, tuple(lone_images), tuple(lone_masks))


def _find_dsb(d: Path) -> FoundPairs | None:
    samples: list[Sample] = []
    oi: list[Path] = []
    om: list[Path] = []
    for s in subdirs(d):
        idir, mdir = s / "images", s / "masks"
        if not idir.is_dir():
            continue
        imgs = _image_files(idir)
        if len(imgs) > 1:
            return None  # many images per folder: a paired layout one level down, not DSB2018
        masks = _image_files(mdir) if mdir.is_dir() else []
        if imgs and any(_strip_mask_suffix(m.stem) == imgs[0].stem for m in masks):
            return None  # masks named like the image: a paired folder (e.g. train/, val/), not per-object files
        if imgs and masks:
            samples.append(Sample(s.name, imgs[0], tuple(masks)))
        elif imgs:
            oi.append(imgs[0])
        else:
            om += masks
    if not samples and not om:  # no folder had per-object masks
        return None
    return FoundPairs("dsb2018", d, tuple(samples), tuple(oi), tuple(om))


def _visible(d: Path, pattern: str) -> list[Path]:
    return [p for p in sorted(d.glob(pattern)) if not is_hidden(p)]


def _case_blind_finder(folders: list[Path]) -> Callable[[str], Path | None]:
    """A lookup of a bare file name in ``folders`` (not below them) ignoring case, where one file alone matches:
    an export written on Windows or macOS may name ``IMG_01.PNG`` for ``img_01.png`` (both file systems ignore
    case). The folders are listed once, on the first lookup."""
    table: dict[str, Path | None] = {}

    def find(name: str) -> Path | None:
        if not table and folders:
            for folder in folders:
                if folder.is_dir():
                    for p in folder.iterdir():
                        if p.is_file():
                            key = _loose(p.name)
                            table[key] = None if key in table and table[key] != p else p
            table.setdefault("", None)  # listed, even when empty
        return table.get(_loose(name))

    return find


def _image_bases(jpath: Path, d: Path) -> list[Path]:
    """Where an annotation file's image names may be relative to: the usual folders, then every subfolder."""
    return list(dict.fromkeys([jpath.parent, d, d / "images", *subdirs(d)]))


def _unused_images(d: Path, samples: list[Sample]) -> tuple[Path, ...]:
    """Images in ``d`` or under ``d/images`` that no sample uses."""
    used = {s.image_path.resolve() for s in samples}
    pool = _image_files(d) + (_image_files(d / "images", recursive=True) if (d / "images").is_dir() else [])
    return tuple(sorted({p for p in pool if p.resolve() not in used}))


def _find_coco(d: Path) -> FoundPairs | None:
    cands = _visible(d, "*.json") + _visible(d / "annotations", "*.json")
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
    bases = _image_bases(jpath, d)  # file_name is relative to an image root the JSON does not name
    # A bare file name is looked up only in the usual image folders: found in any subfolder, "val/0001.jpg" would
    # pair the val split's annotations with train/0001.jpg.
    name_bases = list(dict.fromkeys([jpath.parent, d, d / "images"]))
    samples: list[Sample] = []
    warnings: list[str] = []
    missing: list[str] = []
    outside: list[str] = []
    keys: set[str] = set()
    by_name_any_case = _case_blind_finder(name_bases)
    root_here = Path(os.path.abspath(d))
    for iid, im in sorted(coco.images.items(), key=lambda kv: kv[1].file_name):
        rel = Path(exported_path(im.file_name))
        if rel.is_absolute():
            # A POSIX path is used where it exists here; a Windows one (a drive or a server) never is. Then, as for
            # a path of another machine, its tails of two or more parts under the image folders (C:/proj/images/
            # train/x.png: images/train/x.png); a bare name only in the usual folders, below.
            here = [rel] if rel.as_posix() == im.file_name else []
            parts = rel.parts[1:]
            tried = here + [b / Path(*parts[i:]) for i in range(len(parts) - 1) for b in bases]
        else:
            tried = [b / rel for b in bases]
        path = next((p for p in [*tried, *(b / rel.name for b in name_bases)] if p.is_file()), None)
        path = path or by_name_any_case(rel.name)
        if path is None:
            missing.append(im.file_name)
            continue
        # "../x.png", an absolute path elsewhere: the user should know (not a symlink of the folder's own, which
        # may lead into a shared image store)
        if not Path(os.path.abspath(path)).is_relative_to(root_here):
            outside.append(str(path))
        key = rel.with_suffix("").as_posix() if not rel.is_absolute() and ".." not in rel.parts else rel.stem
        if key in keys:
            raise DataError(f"COCO file {jpath} lists {im.file_name!r} twice; keep one entry per image.")
        keys.add(key)
        samples.append(Sample(key, path, (jpath,), coco_id=iid))
    if missing:
        warnings.append(
            f"{len(missing)} images listed in {jpath.name} were not found (e.g. {missing[0]}); put them beside the "
            "JSON or in images/."
        )
    if outside:
        warnings.append(
            f"{len(outside)} images listed in {jpath.name} lie outside {d} (e.g. {outside[0]}) and are used, their "
            "pixels kept in the teacher; copy them into the folder if that is not meant."
        )
    hint = ""
    if not samples and missing:
        hint = (
            f"COCO file {jpath.name} lists {len(missing)} images but none was found (e.g. {missing[0]}); put the "
            "images beside the JSON or in images/"
        )
    orphans = _unused_images(d, samples)
    return FoundPairs("coco", d, tuple(samples), orphans, (), tuple(warnings), coco=coco, unmatched_hint=hint)


def _labeling_config(d: Path) -> LabelingConfig | None:
    """The Label Studio labelling config in ``d``: ``labelstudio_config.xml`` first, else the one ``*.xml`` that is
    one (a ``<View>`` with brush or polygon labels)."""
    named = d / "labelstudio_config.xml"
    cands = [named] if named.is_file() else _visible(d, "*.xml")
    configs = [c for p in cands if (c := read_labeling_config(p)) is not None]
    if named.is_file() and not configs:  # the class order it holds would be lost in silence
        if not os.access(named, os.R_OK):
            raise DataError(f"Cannot read {named} (permission denied); make it readable (chmod).")
        raise DataError(
            f"{named} is not a Label Studio labelling config that can be read (cut short, or no <View> root); save "
            "it again from the project's Settings > Labeling Interface > Code."
        )
    if len(configs) > 1:
        raise DataError(
            f"Found several Label Studio labelling configs in {d} ({', '.join(c.path.name for c in configs)}); keep the "
            "project's one (or name it labelstudio_config.xml)."
        )
    return configs[0] if configs else None


def _find_labelstudio(d: Path) -> FoundPairs | None:
    parsed = [(p, *parse_labelstudio_json(p)) for p in _visible(d, "*.json")]
    found = [(p, data) for p, data, _ in parsed if data is not None]
    if not found:
        broken = [(p, err) for p, _, err in parsed if err is not None]
        if broken:
            p, err = broken[0]
            hint = f"{p.name} is not valid JSON ({err}); export it again from the annotation tool"
            return FoundPairs("labelstudio", d, (), unmatched_hint=hint)
        return None
    if len(found) > 1:
        raise DataError(
            f"Found several Label Studio exports in {d} ({', '.join(p.name for p, _ in found)}); keep the one for "
            "this support set, or move each to its own folder with its images."
        )
    jpath, data = found[0]
    config = _labeling_config(d)
    export = load_labelstudio(jpath, data, config)
    if not export.tasks and export.unannotated:  # the pre-labels exported back before anyone submitted them
        hint = (
            f"{jpath.name} has {export.unannotated} tasks and none with a submitted annotation (predictions alone "
            "are not used); correct and submit the tasks in Label Studio, then export again"
        )
        return FoundPairs("labelstudio", d, (), unmatched_hint=hint)
    bases = _image_bases(jpath, d)
    by_name_any_case = _case_blind_finder(list(dict.fromkeys([jpath.parent, d, d / "images"])))
    samples: list[Sample] = []
    missing: list[str] = []
    keys: dict[str, str] = {}
    for k, task in enumerate(export.tasks):
        cands_rel = image_candidates(task.image_ref)
        hit = next(((rel, b / rel) for rel in cands_rel for b in bases if (b / rel).is_file()), None)
        if hit is None and cands_rel and (found_path := by_name_any_case(cands_rel[-1].name)) is not None:
            hit = (PurePosixPath(found_path.name), found_path)
        if hit is None:
            # An upload's name is shown without Label Studio's prefix: the user's copy has the original name.
            if not cands_rel:  # a reference with no file name in it ("https://host/", "..")
                missing.append(f"{task.name}, whose image reference {task.image_ref!r} names no file")
                continue
            shown = (cands_rel[-1] if task.image_ref.startswith("/data/upload/") else cands_rel[0]).as_posix()
            missing.append(f"{shown!r} of {task.name}, from {task.image_ref}")
            continue
        rel, path = hit
        key = rel.with_suffix("").as_posix()
        if key in keys:
            raise DataError(
                f"Label Studio export {jpath} has two annotated tasks for the image {rel.as_posix()!r} ({keys[key]} "
                f"and {task.name}); delete one of them in the project and export again."
            )
        keys[key] = task.name
        samples.append(Sample(key, path, (jpath,), task_index=k))
    if missing:
        raise DataError(
            f"Label Studio export {jpath} names {len(missing)} image(s) not found beside it or in images/ (e.g. "
            f"{missing[0]}); copy the project's images there, as the export holds only annotations."
        )
    warnings: list[str] = []
    if export.unannotated:
        warnings.append(
            f"{export.unannotated} tasks in {jpath.name} have no submitted annotation (predictions alone are not "
            "used); they are left out."
        )
    if export.several:
        warnings.append(f"{export.several} tasks in {jpath.name} have several annotations; the latest of each is used.")
    if export.ignored_types:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(export.ignored_types.items()))
        warnings.append(
            f"Results that are not masks were ignored in {jpath.name} ({kinds}); draw brush or polygon regions."
        )
    orphans = _unused_images(d, samples)
    return FoundPairs("labelstudio", d, tuple(samples), orphans, (), tuple(warnings), labelstudio=export)


def _find_cvat_without_images(d: Path) -> FoundPairs | None:
    """A CVAT "Segmentation mask" export downloaded without its images: recognised only to say so."""
    masks = [s for s in subdirs(d) if s.name.lower() == "segmentationclass"]
    if not masks or not (d / "labelmap.txt").is_file() or not _image_files(masks[0], recursive=True):
        return None
    hint = (
        f"{d} holds a CVAT Segmentation mask export ({masks[0].name}/ + labelmap.txt) without its images; export it "
        "again with Save images on, or copy the images into a JPEGImages/ folder beside SegmentationClass/"
    )
    return FoundPairs("cvat", d, (), unmatched_hint=hint)


def _detect(d: Path, top: bool) -> FoundPairs | None:
    """The first detector's pairs in ``d``; else the first layout recognised without pairs (for its hint)."""
    detectors = [_find_coco, _find_labelstudio, _find_paired, _find_cvat_without_images, _find_dsb,
                 _find_class_folders] + ([_find_flat] if top else [])  # fmt: skip
    hint: FoundPairs | None = None
    for det in detectors:
        f = det(d)
        if f is not None and f.samples:
            return f
        if f is not None and hint is None:
            hint = f
    return hint


def find_pairs(root: Path) -> FoundPairs:
    """The image/mask pairs of ``root``, in the first layout that has any, in ``root`` or one of its subfolders.

    Raises:
        DataError: pairs in several subfolders, none anywhere, or a layout whose files cannot be told apart.
    """
    found = _detect(root, top=True)
    if found is None or not found.samples:
        hits = []
        for s in subdirs(root):
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
            found = replace(
                hits[0], warnings=(f"Using subfolder {hits[0].data_root.name}/ of {root}.", *hits[0].warnings)
            )
    if found is None or not found.samples:
        if found is not None and found.unmatched_hint:
            raise DataError(f"No image/mask pairs in {root}: {found.unmatched_hint}.")
        raise DataError(f"No image/mask pairs found in {root}; looked for {LOOKED_FOR}.")
    return found
