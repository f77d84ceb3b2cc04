"""Find the image/mask pairs and the classes in a support folder, whatever layout the user already has.

:func:`discover` composes three steps: :mod:`fsdistill.data.layouts` finds the pairs in the folder layout,
:mod:`fsdistill.data.classes` reads the names file, and :mod:`fsdistill.data.mask_kinds` decides how the masks
encode classes. The result is a :class:`~fsdistill.data.support_index.SupportIndex`, built once.
"""

from __future__ import annotations

from pathlib import Path

from fsdistill.data.archive import is_zip, unpack_zip
from fsdistill.data.classes import find_names_file, is_labelmap, read_class_names
from fsdistill.data.layouts import LAYOUTS, MASK_STEM_SUFFIXES, FoundPairs, find_pairs, is_hidden
from fsdistill.data.mask_kinds import (
    MASK_KINDS,
    MaskDecoding,
    coco_decoding,
    decide_mask_kind,
    instance_files_decoding,
    labelstudio_decoding,
)
from fsdistill.data.masks import IGNORE_INDEX
from fsdistill.data.support_index import Sample, SupportIndex
from fsdistill.errors import DataError

__all__ = ["Sample", "SupportIndex", "discover", "read_class_names", "LAYOUTS", "MASK_KINDS", "MASK_STEM_SUFFIXES"]


def discover(root: Path | str) -> SupportIndex:
    """Detect the layout of a support folder and index its image/mask pairs.

    Reads every mask once (PNG masks only; COCO, Label Studio and DSB2018 are not scanned) to tell binary from
    index and colour masks and to count classes; images are not decoded. A ``.zip`` (a CVAT export as
    downloaded) is unpacked once into a cache folder (:mod:`fsdistill.data.archive`) and read from there; the
    index's ``root`` stays the zip.

    Raises:
        DataError: the folder is missing, a file, empty, or holds no image/mask pairs in any known layout.
    """
    root = Path(root).expanduser()
    folder = unpack_zip(root) if is_zip(root) else root
    _check_folder(folder)
    found = find_pairs(folder)
    samples = sorted(found.samples, key=lambda s: s.key)  # keys are unique: each detector keys by relative path
    layout, decoding = _decide_decoding(found, folder)
    if len(decoding.class_names) > IGNORE_INDEX:
        raise DataError(
            f"{root} defines {len(decoding.class_names) - 1} classes but masks hold at most {IGNORE_INDEX - 1} (255 "
            "means ignore); split the support folder into smaller sets of classes."
        )
    orphan_images, orphan_masks = sorted(found.orphan_images), sorted(found.orphan_masks)
    warnings = [*found.warnings, *decoding.warnings]
    if orphan_images:
        warnings.append(f"{len(orphan_images)} images have no mask (e.g. {orphan_images[0].name}); they are not used.")
    if orphan_masks:
        warnings.append(f"{len(orphan_masks)} masks have no image (e.g. {orphan_masks[0].name}); they are not used.")
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
    """The final layout name and how the found masks decode; names files are looked for in the data root, then root.

    The layout is ``cvat`` (CVAT/Datumaro "Segmentation mask 1.1" export) for paired masks in a
    SegmentationClass*/ folder beside a labelmap.txt.
    """
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
