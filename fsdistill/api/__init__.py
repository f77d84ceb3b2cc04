"""The library's verbs as plain functions: typed config in, results out. No printing, no ``sys.exit``.

``adapt`` (TransferFSS) and ``distill`` (DistillFSS) train from a support folder and write artifacts into a run
directory (:mod:`fsdistill.api.training`, run folders in :mod:`fsdistill.api.runs`); ``predict``, ``evaluate``,
``export`` and ``profile`` load artifacts (:mod:`fsdistill.api.inference`). The CLI (``fsdistill.cli``) only
parses options and calls these.
"""

from __future__ import annotations

from fsdistill.api.inference import (
    PREDICT_BACKENDS,
    EvalResult,
    confusion_on_folder,
    evaluate,
    export,
    predict,
    profile,
    resolve_onnx_file,
)
from fsdistill.api.runs import RunResult, check_run_dir, new_run_dir, pixel_sha256
from fsdistill.api.suggest import SuggestResult, suggest
from fsdistill.api.training import adapt, distill
from fsdistill.config import AdaptCfg, DistillCfg

__all__ = [
    "RunResult",
    "EvalResult",
    "AdaptCfg",
    "DistillCfg",
    "PREDICT_BACKENDS",
    "new_run_dir",
    "check_run_dir",
    "pixel_sha256",
    "adapt",
    "distill",
    "evaluate",
    "confusion_on_folder",
    "predict",
    "profile",
    "export",
    "resolve_onnx_file",
    "SuggestResult",
    "suggest",
]
