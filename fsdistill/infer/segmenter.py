"""The Python entry point: ``fsdistill.load(run).predict(image)``, a mask at the image's own size, equal to the
PNG ``fsdistill predict`` writes (the same :class:`~fsdistill.infer.predictor.Predictor`), from numpy arrays,
PIL images or file paths."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsdistill.data.images import read_image, to_uint8_rgb
from fsdistill.data.transforms import resize_image, to_chw_tensor
from fsdistill.errors import DataError
from fsdistill.infer.postprocess import logits_to_mask
from fsdistill.infer.predictor import Predictor
from fsdistill.models.build import load_model
from fsdistill.runtime import resolve_device

__all__ = ["Segmenter", "load"]

ImageLike = Any  # H×W×3 / H×W numpy array, PIL.Image.Image, or a path to an image file


def _as_rgb(image: ImageLike) -> np.ndarray:
    """An image in any accepted form → H×W×3 uint8 RGB."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image (Pillow stays an optional import here)
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim < 2 or image.size == 0:
            raise DataError(
                f"Cannot segment this array: shape {image.shape} holds no image; pass an H×W×3 or H×W image."
            )
        try:
            return to_uint8_rgb(image)
        except ValueError as err:
            raise DataError(f"Cannot segment this array: {err}; pass an H×W×3 or H×W image.") from None
    raise DataError(
        f"Cannot segment a {type(image).__name__}; pass a numpy array (H×W×3 or H×W), a PIL image or a file path."
    )


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
        """Images of any sizes → one H×W uint8 class-id mask each, in order; the model runs ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        rgb = [_as_rgb(image) for image in images]
        masks: list[np.ndarray] = []
        size = self._predictor.size
        for start in range(0, len(rgb), batch_size):
            chunk = rgb[start : start + batch_size]
            batch = torch.stack([to_chw_tensor(resize_image(image, size)) for image in chunk])
            logits = self._predictor.logits(batch)
            masks += [logits_to_mask(lg, *image.shape[:2]) for lg, image in zip(logits, chunk)]
        return masks


def load(path: str | Path, teacher: bool = False, device: str = "auto") -> Segmenter:
    """Load a trained model for Python use.

    Args:
        path: a run folder (``RUN``, its student or teacher inside) or an artifact folder.
        teacher: load the run's teacher (slower; segments with its stored supports) instead of the student.
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1", "mps".
    """
    loaded = load_model(Path(path), kind="teacher" if teacher else "student")
    return Segmenter(Predictor(loaded, resolve_device(device)))
