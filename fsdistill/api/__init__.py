"""The library's verbs as plain functions: typed config in, results out, no printing and no ``sys.exit``; the CLI
only parses options and calls these. ``adapt`` and ``distill`` write run folders; the others load artifacts."""

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
