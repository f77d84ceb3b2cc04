"""Find the image/mask pairs (:mod:`.layouts`) and the classes (:mod:`.classes`, :mod:`.mask_kinds`) of a support
folder, whatever layout the user already has."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fsdistill.data.classes import find_names_file, is_labelmap, read_class_names
from fsdistill.data.images import OTHER_IMAGE_SUFFIXES, unread_images_note
from fsdistill.data.layouts import FoundPairs, find_pairs, is_hidden, relative_name
from fsdistill.data.mask_kinds import (
    MaskDecoding,
    coco_decoding,
    decide_mask_kind,
    instance_files_decoding,
    labelstudio_decoding,
)
from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.data.support_index import Sample, SupportIndex
from fsdistill.errors import DataError, disk_full

__all__ = ["Sample", "SupportIndex", "discover", "read_class_names", "recorded_category_ids"]


log = logging.getLogger(__name__)


def recorded_category_ids(config: Mapping[str, Any]) -> list[int] | None:
    """The COCO category ids of classes 1..N of a model trained on a COCO folder (an artifact's ``config``), for
    ``predict --format coco``; None for other folders.

    Artifacts written before the ids were recorded: read from the recorded COCO folder when it is still there
    with the model's classes; else a warning that the classes are numbered 1..N (a merge by id with the folder's
    own categories would swap classes)."""
    support = config.get("support") or {}
    if support.get("category_ids"):
        return [int(i) for i in support["category_ids"]]
    if support.get("layout") != "coco":
        return None
    root = support.get("root")
    try:
        index = discover(root)
        if index.coco is not None and index.class_names == list(config.get("class_names") or []):
            return list(index.coco.category_ids)
    except (DataError, OSError, TypeError):
        pass
    log.warning(
        "this model was trained on a COCO folder by an earlier fsdistill, which did not record its category ids, "
        "and that folder (%s) is gone or changed: its classes get the ids 1..N; distill it again to keep the "
        "folder's ids.", root,
    )  # fmt: skip
    return None


def discover(root: Path | str) -> SupportIndex:
    """Detect the layout of a support folder and index its image/mask pairs.

    Reads every PNG mask once to tell binary from index and colour masks; images are not decoded. A ``.zip`` is
    read from its unpacked copy (:func:`unpack_zip`); the index's ``root`` stays the zip.

    Raises:
        DataError: the folder is missing, a file, empty, or holds no image/mask pairs in any known layout.
    """
    root = Path(root).expanduser()
    folder = unpack_zip(root) if root.suffix.lower() == ".zip" and root.is_file() else root
    _check_folder(folder)
    try:
        found = find_pairs(folder)
        layout, decoding = _decide_decoding(found, folder)
    except PermissionError as exc:  # a sub-folder or file that may not be listed or read: a traceback before
        # The path is what was probed (masks/images when masks/ may not be searched): its folder is the one to open.
        raise DataError(
            f"Cannot read {Path(exc.filename).parent} or a file in it (permission denied); make it readable "
            f"(chmod), or move it out of {root}."
        ) from None
    except DataError as exc:
        if folder == root:
            raise
        # A zip's messages name the zip the user gave (its members as ZIP/member), not the cache folder it is in.
        raise DataError(str(exc).replace(str(folder), str(root))) from None
    samples = sorted(found.samples, key=lambda s: s.key)  # keys are unique: each detector keys by relative path
    if len(decoding.class_names) > IGNORE_INDEX:
        raise DataError(
            f"{root} defines {len(decoding.class_names) - 1} classes but masks hold at most {IGNORE_INDEX - 1} (255 "
            "means ignore); split the support folder into smaller sets of classes."
        )
    orphan_images, orphan_masks = sorted(found.orphan_images), sorted(found.orphan_masks)
    warnings = [*found.warnings, *decoding.warnings]
    if found.data_root is not None:
        unread = sorted(
            relative_name(p, found.data_root)
            for p in found.data_root.rglob("*")
            if p.suffix.lower() in OTHER_IMAGE_SUFFIXES and not is_hidden(p) and p.is_file()
        )
        if unread:
            warnings.append(unread_images_note(unread, str(root)))
    for lone, what in ((orphan_images, "images have no mask"), (orphan_masks, "masks have no image")):
        if lone:
            warnings.append(f"{len(lone)} {what} (e.g. {relative_name(lone[0], found.data_root)}); they are not used.")
    return SupportIndex(
        root=root,
        layout=layout,
        mask_kind=decoding.kind,
        class_names=list(decoding.class_names),
        palette=[tuple(c) for c in decoding.palette],
        samples=samples,
        orphan_images=orphan_images,
        orphan_masks=orphan_masks,
        warnings=warnings,
        data_root=found.data_root,
        names_source=decoding.names_source,
        binary_threshold=decoding.binary_threshold,
        colour_table=decoding.colour_table,
        value_map=decoding.value_map,
        class_pixels=None if decoding.class_pixels is None else list(decoding.class_pixels),
        coco=found.coco,
        labelstudio=found.labelstudio,
    )


def _check_folder(root: Path) -> None:
    """Raise a DataError unless ``root`` is a readable folder with something visible in it."""
    if not root.exists():
        raise DataError(f"Support folder {root} does not exist; check the path.")
    if not root.is_dir():
        raise DataError(
            f"{root} is a file, not a folder; pass the folder that holds the images and masks (or a .zip of it)."
        )
    try:
        entries = [p for p in root.iterdir() if not is_hidden(p)]
    except OSError as e:
        raise DataError(f"Cannot list support folder {root}: {e.strerror or e}; check its permissions.") from e
    if not entries:
        raise DataError(f"Support folder {root} is empty; put images and masks in it (for example images/ + masks/).")


def _decide_decoding(found: FoundPairs, root: Path) -> tuple[str, MaskDecoding]:
    """The final layout name (``cvat``: paired masks in SegmentationClass*/ beside a labelmap.txt) and how the
    masks decode; names files are looked for in the data root, then root."""
    if found.layout == "coco":
        assert found.coco is not None
        return "coco", coco_decoding(found.coco)
    names_file = None if found.layout == "class-folders" else find_names_file([found.data_root, root])
    if found.layout == "labelstudio":
        assert found.labelstudio is not None
        return "labelstudio", labelstudio_decoding(found.labelstudio, names_file)
    if found.layout == "dsb2018":
        return "dsb2018", instance_files_decoding(names_file)
    masks = [s.mask_paths[0] for s in found.samples]  # layout order: warnings name the first example
    decoding = decide_mask_kind(masks, found.mask_dir or found.data_root, names_file, found.class_folders)
    in_class_dir = found.mask_dir is not None and found.mask_dir.name.lower().startswith("segmentationclass")
    layout = "cvat" if is_labelmap(names_file) and in_class_dir else found.layout
    return layout, decoding


def cache_root() -> Path:
    """``$FSDISTILL_CACHE``, else ``$XDG_CACHE_HOME/fsdistill``, else ``~/.cache/fsdistill``."""
    if os.environ.get("FSDISTILL_CACHE"):
        return Path(os.environ["FSDISTILL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fsdistill"


def unpack_zip(path: Path) -> Path:
    """The folder holding the contents of the zip archive ``path``, unpacked on first use into a cache folder keyed
    by the zip's path, size and mtime that appears complete or not at all (unpacked elsewhere, then renamed).

    Raises:
        DataError: not a zip archive, an encrypted one or one in a compression zipfile cannot read, a member outside
            the archive's folder, or no room to unpack it.
    """
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_root() / "unpacked" / f"{path.stem}-{key}"
    if target.is_dir():
        return target
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(
                        f"Zip archive {path} holds {name!r}, which would unpack outside its folder; unpack it by hand "
                        "and pass the folder."
                    )
            target.parent.mkdir(parents=True, exist_ok=True)
            # A zip bomb (a few MB holding gigabytes) would fill the disk the cache is on: its size is known first.
            unpacked = sum(info.file_size for info in archive.infolist())
            free = shutil.disk_usage(target.parent).free
            if unpacked > free:
                raise DataError(
                    f"Zip archive {path} unpacks to {unpacked / 2**20:,.0f} MB but {target.parent} has "
                    f"{free / 2**20:,.0f} MB free; set FSDISTILL_CACHE to a folder with room, or unpack what you "
                    "need by hand and pass the folder."
                )
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                for info in archive.infolist():
                    # A zip made on Windows (PowerShell's Compress-Archive) separates folders with "\": unpacked
                    # as written, JPEGImages\x.png was one flat file and no layout was found.
                    info.filename = info.filename.replace("\\", "/")
                    archive.extract(info, staging)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except zipfile.BadZipFile as exc:
        raise DataError(
            f"{path} is not a readable zip archive ({exc}); download it again or unpack it by hand."
        ) from None
    except (RuntimeError, NotImplementedError) as exc:  # zipfile's words for a password or an unknown compression
        raise DataError(
            f"Cannot unpack {path}: it is encrypted or uses a compression Python cannot read ({exc}); unpack it by "
            "hand and pass the folder."
        ) from None
    except OSError as exc:
        if target.is_dir():  # another process unpacked the same archive first
            return target
        space = "free some space, " if disk_full(exc) else ""
        raise DataError(
            f"Cannot unpack {path} into {target.parent} ({exc.strerror or exc}); {space}set FSDISTILL_CACHE to a "
            "writable folder, or unpack it by hand and pass the folder."
        ) from None
    return target
