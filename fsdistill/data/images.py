"""Read user images (EXIF-rotated JPEGs, 16-bit PNGs, RGBA, palette, many-channel TIFFs, ...) as H×W×3 uint8 RGB
in display orientation, once, so the rest of the library sees nothing else.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps

from fsdistill.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "OTHER_IMAGE_SUFFIXES",
    "unread_images_note",
    "pixel_sha256",
    "read_image",
    "read_image_reduced",
    "pil_image_to_rgb",
    "image_size",
    "to_uint8_rgb",
    "exif_quarter_turn",
    "open_pil",
    "exported_path",
]

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
TIFF_SUFFIXES: frozenset[str] = frozenset({".tif", ".tiff"})
# Image formats users have that fsdistill does not read (animations, camera and design formats): named when met,
# so a folder of them is not passed over in silence.
OTHER_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".gif", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".psd", ".svg", ".ico", ".dng", ".cr2", ".nef"}
)

# EXIF tag 0x0112 (Orientation) values 5..8 include a 90° turn, which swaps width and height.
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}

# Errors Pillow raises for files it cannot decode: truncated data (OSError), broken chunks (SyntaxError,
# ValueError), unknown formats (UnidentifiedImageError is an OSError) and oversized files.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, struct.error, EOFError)
# A malformed EXIF block must not make an otherwise fine image unreadable; it only loses its rotation.
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error)


def exported_path(name: str) -> PurePosixPath:
    """An image path as an annotation tool wrote it on any system, in POSIX form: Windows separators and roots
    (``images\\x.png``, ``C:\\data\\x.png``, ``\\\\server\\share\\x.png``) become ``images/x.png`` and the absolute
    ``/data/x.png``-like path, so a COCO or Label Studio export made on Windows pairs with its images here."""
    if "\\" not in name and not (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return PurePosixPath(name)
    windows = PureWindowsPath(name)
    if windows.anchor:
        return PurePosixPath("/", *windows.parts[1:])
    return PurePosixPath(*windows.parts)


class _StoredImage(Protocol):
    """A file in an object store (:class:`fsdistill.storage.StoredFile`), read whole with ``read_bytes()``."""

    suffix: str

    def read_bytes(self) -> bytes: ...


ImageSource = Path | str | _StoredImage


def _cannot_read(path: ImageSource, reason: str) -> DataError:
    if isinstance(path, (str, Path)) and not Path(path).exists():  # re-exporting a file that is not there: no help
        if Path(path).is_symlink():  # listed in its folder, so "does not exist" would puzzle
            return DataError(
                f"Image {path} is a broken symbolic link (to {os.readlink(path)}); fix the link or remove it."
            )
        return DataError(f"Image {path} does not exist; check the path.")
    if isinstance(path, (str, Path)) and Path(path).is_dir():
        return DataError(
            f"Image {path} is a folder, not an image file; pass the images in it (fsdistill.predict takes folders)."
        )
    reason = reason.strip().rstrip(".") or "unknown format"
    if reason.startswith("not a regular file"):
        return DataError(f"Image {path} is {reason}; pass image files.")
    if "Permission denied" in reason:  # re-exporting would not help
        return DataError(f"Cannot read image {path}: permission denied. Make it readable (chmod) or remove it.")
    return DataError(f"Cannot read image {path}: {reason}. Re-export it as PNG or JPEG or remove it.")


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any-dtype array → uint8 by the array's own min/max (constant arrays become 0), so a dim 12-bit
    fluorescence image stays visible instead of black."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float32)  # 4 bytes a value, not 8: an 8k × 8k 16-bit image took 1.8 GB to scale
    finite = np.isfinite(a)
    if not finite.all():
        # NaN/inf pixels (masked-out regions in float TIFFs) map to black instead of poisoning min/max.
        a = np.where(finite, a, np.nan)
        lo, hi = (np.nanmin(a), np.nanmax(a)) if finite.any() else (0.0, 0.0)
        a = np.nan_to_num(a, nan=lo)
    else:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip(np.round((a - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """A decoded pixel array of any dtype → H×W×3 uint8 RGB, scaled by its own min/max unless uint8.

    ``arr``: H×W, H×W×C (a last axis of 1–4 is the channels, however thin the image), C×H×W (else a first axis of
    1–4; else the smallest axis, if ≤ 16, as in many-band TIFFs), or a stack whose first plane is used. Grey is
    repeated, 2 channels use the first, 4 or more keep the first three.
    """
    a = np.asarray(arr)
    while a.ndim > 3:
        a = a[0]  # Z-stacks and time series: keep the first plane, as image viewers show it
    if a.ndim == 3:
        # An image 3 pixels high is H×W×3, not 3 channels of a W×3 image: the smallest axis alone misread thin
        # images (a mask of the wrong shape, from the wrong pixels).
        ch_axis = 2 if a.shape[2] <= 4 else 0 if a.shape[0] <= 4 else int(np.argmin(a.shape))
        if a.shape[ch_axis] > 16:
            a = a[0]  # all three axes are large: a stack of planes, not channels
        else:
            a = np.moveaxis(a, ch_axis, -1)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"not an image array: shape {np.shape(arr)}")
    a = a[..., :1] if a.shape[-1] in (1, 2) else a[..., :3]
    a = _scale_to_uint8(a)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "P"):
        # Alpha is dropped, not composited: DSB2018 images are RGBA with alpha 255, and compositing a transparent
        # region onto an arbitrary background colour would invent pixels.
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8)[..., :3])
    if mode.startswith("I") or mode == "F":
        # 16-bit grey (I;16, I;16B, I) and float images: scaled by the image's own range.
        return to_uint8_rgb(np.asarray(img))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def pil_image_to_rgb(img: Image.Image) -> np.ndarray:
    """An opened PIL image → H×W×3 uint8 RGB as :func:`read_image` reads its file: display orientation (EXIF
    applied to a copy), alpha dropped, 16-bit and float images scaled by their own min/max."""
    try:
        img = ImageOps.exif_transpose(img)
    except _EXIF_ERRORS:
        pass
    return _pil_to_rgb(img)


@contextmanager
def open_pil(source: Path | io.BytesIO) -> Iterator[Image.Image]:
    """``Image.open``, but a TIFF file by name is opened through a file object.

    Pillow memory-maps an uncompressed single-strip file it opens by name, at the image's *display* size, while the
    strip holds the stored size: a TIFF whose orientation tag turns it by 90° (5–8) came out scrambled (Pillow 13;
    its own decoder, used for file objects, turns it right)."""
    if isinstance(source, Path) and _tiff_header(source):
        with open(source, "rb") as handle, Image.open(handle) as img:
            yield img
    else:
        with Image.open(source) as img:
            yield img


def read_tiff_array(
    path: ImageSource, cannot_read: Callable[[Any, str], DataError], opened: Path | io.BytesIO | None = None
) -> np.ndarray:
    """The first page of a TIFF that Pillow cannot decode, read with tifffile (from ``opened``, its bytes in
    memory, when given); errors are ``cannot_read(path, reason)``."""
    try:
        import tifffile  # optional: only many-channel or float TIFFs that Pillow cannot decode need it
    except ImportError as e:
        raise cannot_read(
            path, "Pillow cannot decode this TIFF and tifffile is not installed (pip install tifffile)"
        ) from e
    try:
        if isinstance(opened, io.BytesIO):
            opened.seek(0)
        return np.asarray(tifffile.imread(opened if opened is not None else path, key=0))
    except Exception as e:  # tifffile raises many unrelated types for corrupt files; all mean "unreadable"
        raise cannot_read(path, f"{type(e).__name__}: {e}") from e


def _read_tiff(path: ImageSource, opened: Path | io.BytesIO) -> np.ndarray:
    try:
        return to_uint8_rgb(read_tiff_array(path, _cannot_read, opened))
    except ValueError as e:
        raise _cannot_read(path, str(e)) from e


def read_image(path: ImageSource) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB in display orientation (alpha dropped; 16-bit and float images
    scaled by their own min/max; TIFFs that Pillow cannot decode read with tifffile).

    Raises:
        DataError: the file is missing, truncated or not an image.
    """
    return read_image_reduced(path, None)[0]


def read_image_reduced(path: ImageSource, min_side: int | None) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image` for an input that is resized to ``min_side`` × ``min_side`` anyway: JPEGs are decoded
    at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) while both sides stay ≥ ``min_side`` (None: in full).

    Returns:
        (H'×W'×3 uint8 RGB in display orientation, (height, width) of the full image in display orientation).
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        if not path.is_file():  # missing, a folder, or a pipe or device (not an image file either)
            raise _cannot_read(path, "not a regular file (a pipe or a device)" if path.exists() else "no such file")
        opened: Path | io.BytesIO = path
    else:
        try:
            opened = io.BytesIO(path.read_bytes())
        except OSError as e:  # missing object, refused read: that image's error, as a missing local file
            raise _cannot_read(path, str(e).split("\n")[0] or type(e).__name__) from None
    try:
        with open_pil(opened) as img:
            full_w, full_h = img.size
            if min_side is not None and img.format == "JPEG":
                img.draft(img.mode, (min_side, min_side))  # never below the requested size on either side
            img.load()  # Pillow decodes lazily; force it here so truncation surfaces as an error now
            if getattr(img, "n_frames", 1) > 1:
                log.warning(
                    "%s has %d pages or frames; only the first is read (save each page as an image of its own to use "
                    "the others).", path, img.n_frames,
                )  # fmt: skip
            try:
                # From the tag, not from the sides: a reduced decode of a near-square JPEG can be square.
                turned = img.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES
                # In place: without it Pillow copies the whole image even when there is nothing to turn.
                ImageOps.exif_transpose(img, in_place=True)
            except _EXIF_ERRORS:
                turned = False
            return _pil_to_rgb(img), ((full_w, full_h) if turned else (full_h, full_w))
    except Image.DecompressionBombError as e:
        # Another format would not help: the size is the problem.
        raise DataError(
            f"Cannot read image {path}: {str(e).split(',')[0]}, Pillow's guard against decompression bombs; cut it "
            "into tiles or downscale it first."
        ) from e
    except _PIL_ERRORS as e:
        if path.suffix.lower() in TIFF_SUFFIXES and _tiff_header(opened):
            # many-channel, float or 16-bit RGB TIFF: Pillow gives up, tifffile does not
            image = _read_tiff(path, opened)
            return image, image.shape[:2]
        # Pillow names what it opened: an object's bytes as "<_io.BytesIO object at 0x…>", so the URI instead.
        reason = (str(e) or type(e).__name__).replace(repr(opened), repr(str(path)))
        raise _cannot_read(path, reason) from e


def pixel_sha256(image: np.ndarray) -> str:
    """sha256 of an H×W×3 uint8 image's decoded pixels (its shape included): the same for a renamed or
    losslessly re-encoded copy of the file, different for any other image whatever its name."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha256(repr(image.shape).encode() + image.tobytes()).hexdigest()


def unread_images_note(files: list[str], where: str) -> str:
    """One sentence naming the image ``files`` (at least one) of a format fsdistill does not read
    (:data:`OTHER_IMAGE_SUFFIXES`) found in ``where``."""
    suffixes = ", ".join(sorted({Path(f).suffix.lower() for f in files}))
    return (
        f"{len(files)} image(s) in {where} are of a format fsdistill does not read ({suffixes}; e.g. {files[0]}), "
        "so they are not used; convert them to PNG to use them."
    )


def _tiff_header(path: Path | io.BytesIO) -> bool:
    """True when the file starts with a TIFF/BigTIFF byte-order mark (worth a second try with tifffile)."""
    if isinstance(path, io.BytesIO):
        return path.getvalue()[:2] in (b"II", b"MM")
    try:
        with open(path, "rb") as f:
            return f.read(2) in (b"II", b"MM")
    except OSError:
        return False


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) of an image in display orientation, from its header only (no pixel decoding).

    Raises:
        DataError: the file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise _cannot_read(path, "no such file")
    try:
        with open_pil(path) as img:
            w, h = img.size
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION)
            except _EXIF_ERRORS:
                orientation = None
            tiff = img.format == "TIFF"
    except _PIL_ERRORS as e:
        if path.suffix.lower() in TIFF_SUFFIXES and _tiff_header(path):
            h, w = read_image(path).shape[:2]  # rare exotic TIFF: decoding is the only reliable way
            return w, h
        raise _cannot_read(path, str(e) or type(e).__name__) from e
    if tiff and orientation in _SWAPS_AXES:
        # Recent Pillow turns a TIFF's size (and pixels) by its orientation tag itself, older ones do not: the
        # decoded image is the one size every reader agrees on (a turned TIFF is rare).
        h, w = read_image(path).shape[:2]
        return w, h
    if orientation in _SWAPS_AXES:
        w, h = h, w
    return int(w), int(h)


def exif_quarter_turn(path: Path | str) -> bool:
    """Whether the file's EXIF orientation turns it by 90° or 270° for display; unreadable files and broken EXIF
    blocks count as not turned (reading them reports those problems)."""
    try:
        with open_pil(Path(path)) as img:
            return img.getexif().get(_EXIF_ORIENTATION) in _SWAPS_AXES
    except (*_PIL_ERRORS, *_EXIF_ERRORS):
        return False
