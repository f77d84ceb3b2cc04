#!/usr/bin/env bash
# Create .venv (if missing) and install fsdistill with its pinned torch/torchvision pair. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The [dev] extra brings pytest and the readers of the real example data (tifffile, nibabel, scikit-image);
# [export] brings onnx, onnxscript and onnxruntime for fsdistill export / predict --backend onnx and their tests.
.venv/bin/python -m pip install --quiet -e ".[dev,export]"
