"""The Python entry point: ``fsdistill.load(run).predict(image)``, a mask at the image's own size, from numpy
arrays, PIL images or file paths. A file path gives the PNG ``fsdistill predict`` writes for it (the same
:class:`~fsdistill.infer.predictor.Predictor` and decoding: a large JPEG at a reduced scale); an array or PIL image
is used at its full resolution (a PIL image read as its file would be: EXIF orientation, 16-bit range)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fsdistill.data.images import pil_image_to_rgb, read_image_reduced, to_uint8_rgb
from fsdistill.data.transforms import resize_image, to_chw_tensor
from fsdistill.errors import ConfigError, DataError
from fsdistill.infer.postprocess import logits_to_mask
from fsdistill.infer.predictor import Predictor
from fsdistill.models.build import load_model
from fsdistill.runtime import is_count, resolve_device

__all__ = ["Segmenter", "load"]

# An H×W×3 / H×W numpy array (uint8; floats in 0..1 and integers in 0..255 read alike, other ranges scaled by their
# own min/max), a PIL.Image.Image, or a path to an image file.
ImageLike = Any


def _decode(image: ImageLike, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image in any accepted form → (H'×W'×3 uint8 RGB, (H, W) of the image): decoded as ``fsdistill predict``
    decodes it, a JPEG file at a reduced scale still ≥ ``size`` (the model's input), the mask due at (H, W)."""
    if isinstance(image, (str, Path)):
        return read_image_reduced(Path(image).expanduser(), size)
    if isinstance(image, Image.Image):
        rgb = pil_image_to_rgb(image)
    elif isinstance(image, np.ndarray):
        if image.ndim < 2 or image.size == 0:
            raise DataError(
                f"Cannot segment this array: shape {image.shape} holds no image; pass an H×W×3 or H×W image."
            )
        if image.dtype.kind not in "biuf":
            raise DataError(
                f"Cannot segment an array of {image.dtype}; pass uint8 pixels (or floats in 0..1, integers in 0..255)."
            )
        try:
            rgb = to_uint8_rgb(_as_8bit_range(image))
        except ValueError as err:
            raise DataError(f"Cannot segment this array: {err}; pass an H×W×3 or H×W image.") from None
    else:
        raise DataError(
            f"Cannot segment a {type(image).__name__}; pass a numpy array (H×W×3 or H×W), a PIL image or a file path."
        )
    return rgb, rgb.shape[:2]


def _as_8bit_range(image: np.ndarray) -> np.ndarray:
    """An in-memory image in the usual ranges → uint8 as it means them: floats in 0..1 (``array / 255``) times 255,
    integers in 0..255 (an ``int64`` copy of 8-bit pixels) as they are. Other ranges stay for :func:`to_uint8_rgb`,
    which scales them by their own min/max (16-bit or float data, as files of them are read); scaling an 8-bit
    image that way changed its mask (its darkest pixel became 0, its brightest 255)."""
    if image.dtype.kind == "f" and np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1:
        return np.round(image * 255.0).astype(np.uint8)
    if image.dtype.kind in "iu" and image.dtype != np.uint8 and image.min() >= 0 and image.max() <= 255:
        return image.astype(np.uint8)
    return image


class Segmenter:
    """A trained fsdistill model ready to segment images in Python.

    Attributes:
        classes: class names, background first (index i of a predicted mask = ``classes[i]``).
        kind: "student" (no supports needed) or "teacher" (runs with the supports stored in its artifact).
        path: the artifact folder it was loaded from.
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self.classes: list[str] = list(predictor.class_names)
        self.kind: str = predictor.loaded.kind
        self.path: Path = predictor.loaded.path
        self.device: torch.device = predictor.device

    def __repr__(self) -> str:
        return f"Segmenter({self.kind} at {self.path}, classes={self.classes}, device={self.device})"

    def predict(self, image: ImageLike) -> np.ndarray:
        """One image (any size) → H×W uint8 class ids at that image's own size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Iterable[ImageLike], batch_size: int = 8) -> list[np.ndarray]:
        """Images of any sizes → one H×W uint8 class-id mask each, in order; the model runs ``batch_size`` at a time.

        Raises:
            ConfigError: ``batch_size`` below 1, or one path given where a list of images is due.
        """
        if not is_count(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer of at least 1, got {batch_size!r}.")
        if isinstance(images, (str, Path)):  # iterated, a path was one "image" per character
            raise ConfigError(f"predict_batch takes a list of images; for the one image {images} use predict().")
        size = self._predictor.size
        decoded = [_decode(image, size) for image in images]
        masks: list[np.ndarray] = []
        for start in range(0, len(decoded), batch_size):
            chunk = decoded[start : start + batch_size]
            batch = torch.stack([to_chw_tensor(resize_image(rgb, size)) for rgb, _ in chunk])
            logits = self._predictor.logits(batch)
            masks += [logits_to_mask(lg, *full) for lg, (_, full) in zip(logits, chunk)]
        return masks


def load(path: str | Path, teacher: bool = False, device: str = "auto") -> Segmenter:
    """Load a trained model for Python use.

    Args:
        path: a run folder (``RUN``, its student or teacher inside) or an artifact folder.
        teacher: load the run's teacher (slower; segments with its stored supports) instead of the student.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
    """
    loaded = load_model(path, kind="teacher" if teacher else "student")
    return Segmenter(Predictor(loaded, resolve_device(device)))
