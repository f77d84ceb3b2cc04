"""fsdistill: few-shot segmentation (DCAMA teacher) distilled into a fast support-free student (DistillFSS).

Python use::

    import fsdistill
    model = fsdistill.load("runs/my-run")      # the student; teacher=True for the teacher
    mask = model.predict(image)                # H×W uint8 class ids at the image's own size
    model.classes                              # class names, background first
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["load", "__version__"]

if TYPE_CHECKING:
    from fsdistill.infer.segmenter import Segmenter


def load(path, teacher: bool = False, device: str = "auto") -> Segmenter:
    """Load a trained run for Python use (see :func:`fsdistill.infer.segmenter.load`)."""
    # Imported here so that ``import fsdistill`` (and the CLI's start-up) does not pull in torch.
    from fsdistill.infer.segmenter import load as _load

    return _load(path, teacher=teacher, device=device)
