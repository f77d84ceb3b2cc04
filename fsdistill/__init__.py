"""fsdistill: few-shot segmentation (DCAMA teacher) distilled into a fast support-free student (DistillFSS).

Python use::

    import fsdistill
    model = fsdistill.load("runs/my-run")      # the student; teacher=True for the teacher
    mask = model.predict(image)                # H×W uint8 class ids at the image's own size
    model.classes                              # class names, background first

Each command is also a function: ``fsdistill.distill(cfg)``, ``fsdistill.predict(inputs, out_dir)``,
``fsdistill.evaluate``, ``fsdistill.profile``, ``fsdistill.adapt``, ``fsdistill.export``, ``fsdistill.suggest``
(those of :mod:`fsdistill.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"
# The commands as library functions (cli.md's Python API), imported from fsdistill.api on first use.
_COMMANDS = ("adapt", "distill", "predict", "evaluate", "profile", "export", "suggest")
__all__ = ["load", "__version__", *_COMMANDS]

if TYPE_CHECKING:
    from fsdistill.api import adapt, distill, evaluate, export, predict, profile, suggest  # noqa: F401
    from fsdistill.infer.segmenter import Segmenter


def __getattr__(name: str):
    """``fsdistill.distill`` and the other commands: :mod:`fsdistill.api`'s, imported only when asked for, so that
    ``import fsdistill`` (and the CLI's start-up) does not pull in torch."""
    if name in _COMMANDS:
        from fsdistill import api

        return getattr(api, name)
    raise AttributeError(f"module 'fsdistill' has no attribute {name!r}")


def load(path, teacher: bool = False, device: str = "auto") -> Segmenter:
    """Load a trained run for Python use (see :func:`fsdistill.infer.segmenter.load`)."""
    # Imported here so that ``import fsdistill`` (and the CLI's start-up) does not pull in torch.
    from fsdistill.infer.segmenter import load as _load

    return _load(path, teacher=teacher, device=device)
